"""A damaged saved file is one line naming it and what to do, exit 2, never a traceback (issue 11).

One tiny LoRA run and one full fine-tuning run are trained once per module (in process) and copied per test; each test
cuts or garbles one file of the copy and runs `hft evaluate`, `hft predict` or `hft finetune --resume` on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.cli_helpers import hft_cli, refused
from tests.fixtures import text_cls_recipe

DATASET = {"max_samples": {"train": 48, "validation": 16, "test": 16}}
ADVICE = "re-run `hft finetune` or restore the file"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, reviews) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("corrupt")
    out = {}
    for kind, lora in (("lora", {"enabled": True}), ("full", {"enabled": False})):
        training = {"epochs": 2 if kind == "lora" else 1}
        recipe = text_cls_recipe(tmp / f"{kind}.yaml", tiny_bert, reviews, tmp / kind, dataset=DATASET, lora=lora,
                                 training=training)
        result = hft_cli("finetune", recipe)
        assert result.exit_code == 0, result.output
        out[kind] = tmp / kind
    return out


def copy_run(runs: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs[kind], tmp_path / kind, symlinks=True))


@pytest.mark.parametrize(
    ("kind", "name", "command"),
    [
        ("lora", "adapter_model.safetensors", "evaluate"),
        ("lora", "adapter_model.safetensors", "predict"),
        ("lora", "adapter_config.json", "predict"),
        ("lora", "config.json", "evaluate"),
        ("lora", "tokenizer.json", "predict"),
        ("full", "model.safetensors", "evaluate"),
        ("full", "model.safetensors", "predict"),
        ("full", "config.json", "predict"),
    ],
)
def test_truncated_model_file_is_named_on_evaluate_and_predict(runs, tmp_path, kind, name, command):
    run = copy_run(runs, kind, tmp_path)
    truncate(run / "model" / name)
    args = [command, run] + (["the kettle works perfectly."] if command == "predict" else [])
    refused(hft_cli(*args), f"{run / 'model' / name}: ", ADVICE)
    assert not (run / "eval_results.json").exists()


def test_garbled_or_missing_model_files_are_named(runs, tmp_path):
    run = copy_run(runs, "full", tmp_path)
    config = run / "model" / "config.json"
    original = config.read_bytes()
    config.write_text('{"architectures": ["BertForSequenceClassification"], oops')
    refused(hft_cli("predict", run, "a text"), f"{config}: not valid JSON: Expecting property name", ADVICE)
    config.write_text('{"architectures": ["BertForSequenceClassification"]}')  # valid JSON, no model_type
    refused(hft_cli("predict", run, "a text"), f"cannot load the trained model in {run / 'model'} (ValueError: ", "restore")
    config.unlink()
    refused(hft_cli("evaluate", run), f"{config}: missing; {ADVICE}")
    config.write_bytes(original)
    (run / "model" / "model.safetensors").write_bytes(b"")
    refused(hft_cli("predict", run, "a text"), f"{run / 'model' / 'model.safetensors'}: truncated or corrupt safetensors")


def _interrupted_copy(runs: dict[str, Path], tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    """The LoRA run copied and marked as stopped mid-training, with a recipe that writes to the copy."""
    run = copy_run(runs, "lora", tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    recipe = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**recipe, "output_dir": str(run)}))
    checkpoints = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 2
    return run, path, checkpoints


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_truncated_checkpoint_file_on_resume_is_named_and_the_checkpoint_kept(runs, tmp_path, name):
    run, recipe, (earlier, latest) = _interrupted_copy(runs, tmp_path)
    truncate(latest / name)
    before = sorted(p.name for p in latest.iterdir())
    # The recipe now names the copy as output_dir: a changed recipe, which --resume accepts only when told to.
    result = hft_cli("finetune", recipe, "--resume", "--allow-recipe-change")
    refused(
        result,
        f"--resume: cannot read {latest / name}: ",
        f"hft leaves the checkpoint as it is: delete {latest} and run --resume again to continue from {earlier.name}",
    )
    assert sorted(p.name for p in latest.iterdir()) == before


def test_truncated_only_checkpoint_suggests_starting_over(runs, tmp_path):
    run, recipe, (earlier, latest) = _interrupted_copy(runs, tmp_path)
    shutil.rmtree(earlier)
    truncate(latest / "adapter_model.safetensors")
    result = hft_cli("finetune", recipe, "--resume", "--allow-recipe-change")
    refused(result, f"delete {latest} and start over with --overwrite (there is no earlier complete checkpoint)")
    assert (latest / "adapter_model.safetensors").is_file()
