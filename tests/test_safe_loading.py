"""Security defaults when loading: pickle weights refused unless opted in, checkpoint state loaded weights_only,
remote code only with a pinned commit (and a warning naming the code), tokenizer configs that reach outside the
model folder refused. Every malicious file here would create a canary file if it were ever unpickled."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_hft
from tests.fixtures import text_cls_recipe

SHA = "0123456789abcdef0123456789abcdef01234567"


class _Canary:
    """Unpickling this calls open(path, "w"): the canary file appears iff some loader ran the pickle's code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _model_copy(tiny_bert: Path, dest: Path, *, weights: bool = True) -> Path:
    shutil.copytree(tiny_bert, dest)
    if not weights:
        for f in dest.glob("*.safetensors"):
            f.unlink()
    return dest


def _recipe(tmp_path: Path, model: Path, reviews, **model_keys) -> Path:
    return text_cls_recipe(
        tmp_path / "r.yaml", model, reviews, tmp_path / "run", model={"name": str(model), **model_keys},
        dataset={"max_samples": 20},
    )


# ----------------------------------------------------------------------------------------------------------------------
# Pickle weights


def test_validate_refuses_a_pickle_only_model_and_never_unpickles_it(tmp_path, tiny_bert, reviews):
    model = _model_copy(tiny_bert, tmp_path / "pickled", weights=False)
    canary = tmp_path / "canary"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Canary(canary)))

    proc = run_hft("validate", _recipe(tmp_path, model, reviews), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "only pickle weights (pytorch_model.bin)" in proc.stderr and "model.allow_pickle: true" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not canary.exists()


def test_load_model_pickle_policy(tmp_path, tiny_bert):
    """Refused by default; with allow_pickle the loader still uses weights_only, so plain tensors load and code does not run."""
    import torch
    from safetensors.torch import load_file

    from hftoolkit.errors import ModelError
    from hftoolkit.modeling import load_model
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.tasks.registry import get_task

    task = get_task("text-classification")
    labels = ["negative", "positive"]

    def recipe(model: Path, allow: bool) -> Recipe:
        return Recipe.model_validate({
            "task": "text-classification", "model": {"name": str(model), "allow_pickle": allow},
            "dataset": {"files": {"train": "x.jsonl"}}, "output_dir": str(tmp_path / "run"),
        })

    plain = _model_copy(tiny_bert, tmp_path / "plain", weights=False)
    state = load_file(str(tiny_bert / "model.safetensors"))
    torch.save(state, plain / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only pickle weights"):
        load_model(task, recipe(plain, False), labels)
    loaded = load_model(task, recipe(plain, True), labels)
    key = next(k for k in state if k.endswith("word_embeddings.weight"))
    assert torch.equal(loaded.state_dict()["bert." + key.removeprefix("bert.")], state[key])

    evil = _model_copy(tiny_bert, tmp_path / "evil", weights=False)
    canary = tmp_path / "canary"
    torch.save({"w": _Canary(canary)}, evil / "pytorch_model.bin")
    with pytest.raises(ModelError):
        load_model(task, recipe(evil, True), labels)
    assert not canary.exists()


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint state (what --resume loads)


def _legit_checkpoint(folder: Path) -> None:
    import random

    import numpy as np
    import torch

    folder.mkdir()
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = torch.optim.AdamW(params)
    params[0].grad = torch.ones(3)
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0).state_dict(), folder / "scheduler.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(rng, folder / "rng_state.pth")
    torch.save({"anything": _Canary(folder / "never-loaded")}, folder / "training_args.bin")  # Trainer never loads it


@pytest.mark.parametrize("tampered", ["rng_state.pth", "optimizer.pt", "scheduler.pt"])
def test_tampered_checkpoint_file_is_refused_by_name(tmp_path, tampered):
    import torch

    from hftoolkit.training.resume import verify_checkpoint_files
    from hftoolkit.errors import RunDirError

    ckpt = tmp_path / "checkpoint-4"
    _legit_checkpoint(ckpt)
    verify_checkpoint_files(ckpt)  # Trainer's real files (numpy RNG state included) pass

    canary = tmp_path / "canary"
    torch.save({"state": _Canary(canary)}, ckpt / tampered)
    with pytest.raises(RunDirError) as err:
        verify_checkpoint_files(ckpt)
    assert str(ckpt / tampered) in str(err.value) and "could run code" in str(err.value)
    assert not canary.exists() and not (ckpt / "never-loaded").exists()


def test_corrupt_checkpoint_file_is_a_clear_error(tmp_path):
    from hftoolkit.training.resume import verify_checkpoint_files
    from hftoolkit.errors import RunDirError

    ckpt = tmp_path / "checkpoint-2"
    _legit_checkpoint(ckpt)
    data = (ckpt / "optimizer.pt").read_bytes()
    (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="cannot read .*optimizer.pt"):
        verify_checkpoint_files(ckpt)


# ----------------------------------------------------------------------------------------------------------------------
# Remote code


def test_trust_remote_code_needs_a_pinned_commit(tmp_path):
    from hftoolkit.errors import RecipeError
    from hftoolkit.recipe.schema import load_recipe

    base = "task: text-classification\ndataset: {files: {train: t.jsonl}}\noutput_dir: out\n"
    for model in ("{name: org/m, trust_remote_code: true}", "{name: org/m, trust_remote_code: true, revision: main}"):
        path = tmp_path / "r.yaml"
        path.write_text(base + f"model: {model}\n")
        with pytest.raises(RecipeError, match="pin model.revision to a full 40-character commit sha"):
            load_recipe(path)
    path.write_text(base + f"model: {{name: org/m, trust_remote_code: true, revision: '{SHA}'}}\n")
    assert load_recipe(path).model.trust_remote_code is True
    path.write_text(base + "model: {name: org/m}\n")
    assert load_recipe(path).model.trust_remote_code is False  # off unless the recipe says so


def test_remote_code_warning_names_the_code_that_will_run(tmp_path, caplog):
    from hftoolkit import modeling
    from hftoolkit.recipe.schema import ModelSection

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "modeling_custom.py").write_text("raise SystemExit('never imported by this test')\n")
    (folder / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_custom.CustomModel"}}))
    section = ModelSection(name=str(folder), trust_remote_code=True, revision=SHA)
    with caplog.at_level("WARNING", logger="hftoolkit"):
        kwargs = modeling.load_kwargs(section)
        modeling.load_kwargs(section)  # said once per model, not once per loader
    assert kwargs["trust_remote_code"] is True and kwargs["revision"] == SHA
    warnings = [r.getMessage() for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert len(warnings) == 1
    assert "modeling_custom.py" in warnings[0] and "modeling_custom.CustomModel" in warnings[0] and SHA in warnings[0]
    assert modeling.load_kwargs(ModelSection(name=str(folder)))["trust_remote_code"] is False


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer configs pointing outside the model folder


def test_tokenizer_config_escaping_the_model_folder_is_refused_before_loading(tmp_path, tiny_bert, reviews):
    model = _model_copy(tiny_bert, tmp_path / "model")
    (tmp_path / ".env").write_text("HF_TOKEN=hf_secret_never_read\n")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["vocab_file"] = "../.env"
    (model / "tokenizer_config.json").write_text(json.dumps(config))

    proc = run_hft("validate", _recipe(tmp_path, model, reviews), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tokenizer_config.json: vocab_file = '../.env' points outside the model folder" in proc.stderr
    assert "hf_secret_never_read" not in proc.stdout + proc.stderr


def test_file_reference_check_cases(tmp_path):
    from hftoolkit.errors import ModelError
    from hftoolkit.modeling import check_file_references

    folder = tmp_path / "m"
    folder.mkdir()
    cases = {
        "absolute": ({"merges_file": "/etc/passwd"}, "merges_file"),
        "nested": ({"processor": {"spm_file": "../../id_rsa"}}, "processor.spm_file"),
        "list": ({"extra_files": ["ok.txt", "sub/../../x"]}, "extra_files"),
    }
    for name, (content, key) in cases.items():
        (folder / "tokenizer_config.json").write_text(json.dumps(content))
        with pytest.raises(ModelError, match=key.replace(".", r"\.")):
            check_file_references(folder)
    # Files inside the folder, and keys that are not file references, are fine.
    (folder / "tokenizer_config.json").write_text(json.dumps({"vocab_file": "vocab.txt", "sub_file": "a/b.json", "name": "../x"}))
    check_file_references(folder)
