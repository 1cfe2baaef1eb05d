"""`--overwrite` and every other place hft deletes: only hft's own files, never through a symlink (issue 11).

Through the real CLI, in process (typer's CliRunner): each output_dir that would take user files with it is refused
before anything is read, and the folders involved are byte-for-byte the same afterwards; a real run is still
replaced by `--overwrite`, and a symlink inside it is removed as a link while its target survives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_hft
from tests.cli_helpers import hft_cli, refused
from tests.fixtures import text_cls_recipe

FAST = {"training": {"epochs": 1}, "dataset": {"max_samples": {"train": 48, "validation": 16, "test": 16}}}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file and link below `folder`, with its bytes (or where the link points)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = f"-> {p.readlink()}".encode()
        elif p.is_file():
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


@pytest.fixture
def layout(tmp_path, monkeypatch, tiny_bert, reviews):
    """cwd = work/, HOME = home/, the recipe in recipes/, the data in data/; a sentinel file in each."""
    folders = {name: tmp_path / name for name in ("work", "home", "recipes", "data")}
    for name, folder in folders.items():
        folder.mkdir()
        (folder / f"{name}-sentinel.txt").write_text(f"{name} belongs to the user\n")
    data = {role: Path(shutil.copy(path, folders["data"])) for role, path in reviews.items()}
    recipe = text_cls_recipe(folders["recipes"] / "r.yaml", tiny_bert, data, tmp_path / "run")
    monkeypatch.chdir(folders["work"])
    monkeypatch.setenv("HOME", str(folders["home"]))

    def never(*args, **kwargs):
        raise AssertionError("RunDir.clear reached: nothing may be deleted here")

    monkeypatch.setattr("hftoolkit.run.layout.RunDir.clear", never)  # a safety net should a check ever regress
    return {**folders, "recipe": recipe, "model": tiny_bert, "tmp": tmp_path}


# Each case: the output_dir given with --set, the folder whose files must survive, the message expected.
CASES = {
    "empty": ("", "tmp", "output_dir is empty (an unset shell variable in `--set output_dir=$X`?)"),
    "root": ("/", "tmp", "output_dir '/' is the filesystem root"),
    "dot": (".", "work", "output_dir '.' is the current directory"),
    "dotdot": ("..", "tmp", "output_dir '..' contains the current directory"),
    "home": ("{home}", "home", "is your home directory"),
    "cwd": ("{work}", "work", "is the current directory"),
    "recipe-parent": ("{recipes}", "recipes", "contains the recipe file"),
    "data-folder": ("{data}", "data", "contains dataset.files.train"),
    "model-folder": ("{model}", "model", "is the model folder (model.name)"),
}


@pytest.mark.parametrize("command", ["finetune", "validate"])
@pytest.mark.parametrize("case", list(CASES))
def test_unsafe_output_dir_is_refused_before_anything(layout, case, command):
    value, guarded, message = CASES[case]
    value = value.format(**{k: v for k, v in layout.items() if isinstance(v, Path)})
    before = snapshot(layout[guarded])
    extra = ["--overwrite"] if command == "finetune" else []
    refused(hft_cli(command, layout["recipe"], "--set", f"output_dir={value}", *extra), message)
    assert snapshot(layout[guarded]) == before
    assert not (layout["tmp"] / "run").exists()


def test_overwrite_refuses_a_folder_that_holds_no_hft_run(layout, tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "sub" / "data.csv").write_bytes(b"a,b\n1,2\n")
    before = snapshot(mine)
    result = hft_cli("finetune", layout["recipe"], "--set", f"output_dir={mine}", "--overwrite")
    refused(result, f"output_dir {mine} holds no hft run (no manifest.json) but notes.txt, sub/", "nothing was deleted")
    assert snapshot(mine) == before


def test_overwrite_refuses_an_hft_run_holding_user_files_and_names_them(layout, tmp_path):
    run, outside = tmp_path / "old-run", tmp_path / "outside"
    (run / "model").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.txt").write_text("not hft's\n")
    (run / "manifest.json").write_text(json.dumps({"status": "completed"}))
    (run / "model" / "config.json").write_text("{}")
    (run / "my_notes.md").write_text("results I wrote down\n")
    (run / "shared").symlink_to(outside)
    before = snapshot(run)
    result = hft_cli("finetune", layout["recipe"], "--set", f"output_dir={run}", "--overwrite")
    refused(result, "holds an hft run plus files hft did not write: my_notes.md, shared -> ", "nothing was deleted")
    assert snapshot(run) == before and (outside / "keep.txt").read_text() == "not hft's\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, reviews):
    tmp = tmp_path_factory.mktemp("overwrite")
    recipe = text_cls_recipe(tmp / "r.yaml", tiny_bert, reviews, tmp / "run", **FAST)
    result = hft_cli("finetune", recipe)
    assert result.exit_code == 0, result.output
    return recipe, tmp / "run"


def test_overwrite_replaces_a_real_run_and_removes_links_without_following_them(trained, tmp_path):
    recipe, run = trained
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "precious.txt").write_text("the user's\n")
    (run / "tensorboard").symlink_to(outside, target_is_directory=True)  # an hft name, but a link out of the run
    (run / "checkpoints" / "checkpoint-99").symlink_to(outside, target_is_directory=True)
    (run / "model" / "extra.safetensors").symlink_to(outside / "deep" / "precious.txt")
    (run / ".manifest.json.k2j4x9.tmp").write_text("{")  # what a kill during write_atomic leaves behind
    before = snapshot(outside)
    old_id = json.loads((run / "manifest.json").read_text())["run_id"]

    result = hft_cli("finetune", recipe, "--overwrite")
    assert result.exit_code == 0, result.output
    assert snapshot(outside) == before
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["run_id"] != old_id
    assert not (run / "tensorboard").exists() and not (run / "checkpoints" / "checkpoint-99").exists()
    assert not (run / "model" / "extra.safetensors").exists() and not (run / ".manifest.json.k2j4x9.tmp").exists()


def test_resume_refuses_run_entries_that_link_out_of_the_run(tmp_path):
    from hftoolkit.errors import UnsafePathError
    from hftoolkit.run.layout import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (tmp_path / "elsewhere.jsonl").write_text("")
    (run.path / "metrics.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(UnsafePathError, match=r"metrics.jsonl is a symlink to .*elsewhere.jsonl, outside"):
        run.check_links()


def test_checkpoint_cleanup_never_follows_or_deletes_outside_the_run(tmp_path, caplog):
    from hftoolkit.training.resume import Checkpoint, remove_checkpoints, scan, truncate_metrics

    folder, outside = tmp_path / "run" / "checkpoints", tmp_path / "outside"
    (folder / "checkpoint-2").mkdir(parents=True)
    outside.mkdir()
    (outside / "precious.txt").write_text("the user's\n")
    (folder / "checkpoint-9").symlink_to(outside, target_is_directory=True)
    with caplog.at_level("WARNING", logger="hftoolkit"):
        found = scan(folder)
    assert [c.path.name for c in found] == ["checkpoint-2"] and "ignoring" in caplog.text
    remove_checkpoints([Checkpoint(outside, 3), Checkpoint(folder / "checkpoint-9", 9), *found], folder)
    assert (outside / "precious.txt").is_file() and not (folder / "checkpoint-2").exists()

    # A temp-file name someone linked elsewhere is never written through when metrics.jsonl is cut back.
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 1.0}\n{"step": 5, "loss": 0.5}\n')
    (tmp_path / "run" / ".metrics.jsonl.tmp").symlink_to(outside / "precious.txt")
    truncate_metrics(metrics, Checkpoint(folder / "checkpoint-2", 2, {"complete": True}))
    assert metrics.read_text() == '{"step": 1, "loss": 1.0}\n' and (outside / "precious.txt").read_text() == "the user's\n"


def test_empty_output_dir_from_an_unset_shell_variable_subprocess(tmp_path, tiny_bert, reviews):
    recipe = text_cls_recipe(tmp_path / "r.yaml", tiny_bert, reviews, tmp_path / "run")
    proc = run_hft("finetune", recipe, "--set", "output_dir=", "--overwrite", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: output_dir is empty") and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]
