"""End to end through the real CLI on a tiny BERT: finetune -> evaluate, and the run-directory contract."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_hft

CONTRACT = [
    "recipe.resolved.yaml", "manifest.json", "data_report.json", "metrics.jsonl", "train_results.json",
    "loss_curve.png", "model/adapter_config.json", "model/adapter_model.safetensors", "model/config.json",
    "model/tokenizer.json", "model/tokenizer_config.json",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, reviews):
    from tests.fixtures import text_cls_recipe

    tmp = tmp_path_factory.mktemp("e2e")
    recipe = text_cls_recipe(tmp / "r.yaml", tiny_bert, reviews, tmp / "run")
    proc = run_hft("finetune", recipe)
    return recipe, tmp / "run", proc


def test_finetune_writes_the_run_directory_contract(trained):
    recipe, run, proc = trained
    for name in CONTRACT:
        assert (run / name).is_file(), f"missing {name}"
    # Trainer checkpoints keep its own training_args.bin (needed to resume); the model folder has no pickle.
    assert not [p for p in run.rglob("*.bin") if "checkpoints" not in p.parts], "pickle outside checkpoints/"
    config = json.loads((run / "model/config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["seed"] == 7
    assert manifest["labels"] == ["negative", "positive"]
    assert manifest["command"].startswith("hft finetune")
    assert set(manifest["dataset"]["fingerprints"]) == {"train", "validation", "test"}
    for pkg in ("torch", "transformers", "datasets", "peft", "accelerate", "evaluate"):
        assert pkg in manifest["versions"]
    resolved = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    assert resolved["training"]["learning_rate"] == 5e-3
    assert resolved["lora"]["enabled"] is True and resolved["training"]["precision"] == "auto"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in s for s in steps) and any("eval_accuracy" in s for s in steps)
    results = json.loads((run / "train_results.json").read_text())
    assert results["split_sizes"] == {"train": 200, "validation": 60, "test": 60}
    assert "eval_accuracy" in results["validation"]
    assert "truncated (train)" in proc.stderr


def test_evaluate_scores_the_test_split_through_evaluate(trained):
    _, run, _ = trained
    proc = run_hft("evaluate", run)
    assert "test split, 60 examples" in proc.stdout
    results = json.loads((run / "eval_results.json").read_text())
    assert results["split"] == "test" and results["num_examples"] == 60
    assert set(results["metrics"]) >= {"accuracy", "f1", "loss"}
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0
    assert results["dataset"]["files"]["test"].endswith("test.jsonl")
    assert (run / "confusion_matrix.png").stat().st_size > 1000

    proc = run_hft("evaluate", run, "--split", "validation")
    assert json.loads((run / "eval_results.json").read_text())["num_examples"] == 60


def test_reloaded_adapter_reproduces_predictions_exactly(trained):
    """Saved adapter + head, loaded on a fresh base, gives bit-identical logits to the model at the end of training."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from hftoolkit.modeling import load_trained
    from hftoolkit.run.layout import RunDir
    from hftoolkit.tasks.registry import get_task

    _, run, _ = trained
    rd = RunDir(run)
    recipe = rd.load_recipe()
    task = get_task(recipe.task)
    model_a, tok = load_trained(task, recipe, rd.model)
    model_b, _ = load_trained(task, recipe, rd.model)
    texts = ["the kettle works perfectly.", "the tent broke after two days. never again."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = model_a(**enc).logits, model_b(**enc).logits
    assert torch.equal(a, b)
    # And the adapter really changed the model: a fresh base with a new head would score differently.
    base = AutoModelForSequenceClassification.from_pretrained(recipe.model.name, num_labels=2)
    with torch.no_grad():
        assert not torch.allclose(base(**enc).logits, a)
    # The head was trained and saved inside the adapter (modules_to_save), not re-initialised at load.
    from safetensors.torch import load_file

    keys = load_file(str(rd.model / "adapter_model.safetensors")).keys()
    assert any("classifier" in k for k in keys)


def test_rerun_refused_without_overwrite_and_tokenization_is_cached(trained, tmp_path):
    recipe, run, _ = trained
    proc = run_hft("finetune", recipe, check=False)
    assert proc.returncode == 2
    assert "already holds a finished run" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_hft("finetune", recipe, "--set", "training.max_steps=2", check=False)
    # A changed recipe in the same directory is a different run: refused, with the changed key named.
    assert "holds a different run" in proc.stderr
    assert proc.returncode == 2 and "training.max_steps" in proc.stderr

    proc = run_hft("finetune", recipe, "--overwrite")
    # Same recipe, same data: datasets finds the cached features instead of tokenizing again.
    assert "Tokenizing train" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    import torch

    from hftoolkit.training.args import choose_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert choose_precision("auto") == expected
    assert choose_precision("fp32") == "fp32"  # an explicit choice is never rewritten
