"""The model card `hft push` renders: pinned by a golden file, deterministic, parsable by huggingface_hub, validated.

The run directory here is written from fixed JSON (no training), so the card is byte-for-byte reproducible. Its
files carry absolute paths of the temp dir on purpose: the card must not depend on where the run lives.
Regenerate the golden file after an intended change with `HFT_UPDATE_GOLDEN=1 pytest tests/test_card.py`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import yaml

from hftoolkit.errors import PushError

GOLDEN = Path(__file__).parent / "golden" / "model_card.md"
REPO_ID = "org/tiny-bert-reviews"
BASE_COMMIT = "3f2c8a1b9d4e5f60718293a4b5c6d7e8f9012345"
DATA_COMMIT = "8e7d6c5b4a3928170615243342516070a9b8c7d6"

RECIPE = {
    "task": "text-classification",
    "model": {"name": "org/tiny-bert", "revision": "main", "license": "apache-2.0"},
    "dataset": {
        "name": "org/reviews", "revision": "main", "columns": {"text": "text", "label": "label"}, "max_length": 32,
    },
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "training": {"epochs": 2, "batch_size": 16, "learning_rate": 0.005, "logging_steps": 2, "report_to": ["none"], "seed": 7},
    "evaluation": {"metrics": ["accuracy", "f1"]},
}
DATA_REPORT = {
    "columns": {"train": ["text", "label"], "validation": ["text", "label"], "test": ["text", "label"]},
    "split_sizes": {"train": 197, "validation": 60, "test": 60},
    "label_counts": {
        "train": {"negative": 101, "positive": 96},
        "validation": {"negative": 28, "positive": 32},
        "test": {"negative": 24, "positive": 36},
    },
    "token_lengths": {"sample": 197, "mean": 18.46, "p50": 18, "p95": 26, "max": 32},
    "truncated_share": {"train": 0.005, "validation": 0.0, "test": 0.0},
    "dropped": {"empty text": 3},
    "notes": [],
}
VERSIONS = {
    "python": "3.11.7", "hftoolkit": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.23.0", "datasets": "5.2.0",
    "accelerate": "1.15.0", "peft": "0.21.2", "evaluate": "0.4.6", "huggingface_hub": "2.4.0",
}


def write_fixed_run(root: Path, **recipe_changes) -> Path:
    """A finished adapter run of the tiny BERT, written from the constants above (plus local paths of `root`)."""
    from hftoolkit.recipe.schema import Recipe, recipe_to_yaml

    run = root / "run"
    model = run / "model"
    model.mkdir(parents=True)
    raw = json.loads(json.dumps(RECIPE))
    for section, values in recipe_changes.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    raw["output_dir"] = str(run)
    (run / "recipe.resolved.yaml").write_text(recipe_to_yaml(Recipe.model_validate(raw)))
    labels = ["negative", "positive"]
    source = {
        "id": "org/reviews", "revision": "main", "commit": DATA_COMMIT,
        "split_names": {"train": "train", "validation": "validation", "test": "test"},
    }
    manifest = {
        "status": "completed", "hftoolkit_version": "0.1.0", "recipe_fingerprint": "0123456789abcdef",
        "command": f"hft finetune {root}/recipes/reviews.yaml --set training.epochs=2", "task": "text-classification",
        "seed": 7, "precision": "fp32", "world_size": 1, "device": "cpu: x86_64", "started": "2026-01-02T03:04:05Z",
        "model": {"name": "org/tiny-bert", "revision": "main", "commit": BASE_COMMIT},
        "dataset": {**source, "fingerprints": {"train": "a1", "validation": "b2", "test": "c3"}},
        "labels": labels, "adapter": True, "parameters": {"trainable": 1090, "total": 30724}, "versions": VERSIONS,
        "finished": "2026-01-02T03:09:05Z", "resume": {"checkpoint": f"{run}/checkpoints/checkpoint-4"},
    }
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (run / "data_report.json").write_text(json.dumps(DATA_REPORT, indent=2))
    eval_results = {
        "split": "test", "num_examples": 60, "metrics": {"loss": 0.412345, "accuracy": 0.85, "f1": 0.857142857},
        "dataset": source, "model": manifest["model"], "run": str(run), "labels": labels,
        "artifacts": ["confusion_matrix.png"],
    }
    (run / "eval_results.json").write_text(json.dumps(eval_results, indent=2))
    (run / "train_results.json").write_text(json.dumps({"best_checkpoint": f"{run}/checkpoints/checkpoint-4"}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 0.69}) + "\n")
    (run / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-4" / "optimizer.pt").write_bytes(pickle.dumps({"state": [1, 2, 3]}, protocol=4))
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"\0" * 16)
    adapter_config = {
        "base_model_name_or_path": f"{root}/hub-cache/models--org--tiny-bert/snapshots/{BASE_COMMIT}",
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"],
        "modules_to_save": ["classifier", "score"], "revision": None,
    }
    (model / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    (model / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\1" * 64)
    (model / "config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "model_type": "bert", "id2label": {"0": "negative", "1": "positive"},
        "label2id": {"negative": 0, "positive": 1}, "_name_or_path": f"{root}/tiny-bert",
    }, indent=2))
    (model / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}))
    (model / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "model_max_length": 128}))
    (model / "README.md").write_text("PEFT placeholder card\n")
    return run


def dry_run_card(root: Path, repo_id: str = REPO_ID, **kwargs) -> str:
    from hftoolkit.commands.push import push

    return push(write_fixed_run(root, **kwargs), repo_id, dry_run=True).card


def split_recipe_block(card: str) -> tuple[str, str]:
    """(card with the embedded recipe replaced by a marker, the recipe text)."""
    head, rest = card.split("```yaml\n", 1)
    block, tail = rest.split("\n```", 1)
    return head + "```yaml\n" + RECIPE_MARKER + "\n```" + tail, block + "\n"


# The embedded recipe lists every key of the schema, which grows with every feature; the golden file keeps a marker
# in its place so adding a recipe key does not churn it. The block itself is checked against the published file.
RECIPE_MARKER = "<recipe.resolved.yaml exactly as published in the repo>"


def test_card_matches_the_golden_file(tmp_path):
    from hftoolkit.commands.push import push

    result = push(write_fixed_run(tmp_path), REPO_ID, dry_run=True)
    card, recipe_block = split_recipe_block(result.card)
    published = {u.path_in_repo: u.read() for u in result.uploads}
    assert recipe_block.encode() == published["recipe.resolved.yaml"]
    assert published["README.md"] == result.card.encode()
    if os.environ.get("HFT_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(card, encoding="utf-8")
    assert card == GOLDEN.read_text(encoding="utf-8"), "card changed; if intended, regenerate with HFT_UPDATE_GOLDEN=1"


def test_card_is_deterministic_and_names_no_local_path(tmp_path):
    a = dry_run_card(tmp_path / "one")
    b = dry_run_card(tmp_path / "elsewhere" / "two")
    assert a == b
    assert str(tmp_path) not in a and "/tmp" not in a and "hub-cache" not in a
    # No dates or times: the same run renders the same bytes whenever it is pushed.
    assert not re.search(r"20\d\d-\d\d-\d\d", a)


def test_card_metadata_parses_with_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard

    card = ModelCard(dry_run_card(tmp_path))
    data = card.data
    assert data.base_model == "org/tiny-bert"
    assert data.library_name == "peft"
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == "text-classification"
    assert data.datasets == ["org/reviews"]
    assert {"hftoolkit", "lora", "peft"} <= set(data.tags)
    assert data.model_name == "tiny-bert-reviews"
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"accuracy", "f1"}  # loss is shown in the table, not claimed as a metric
    acc = results["accuracy"]
    assert acc.metric_value == 0.85 and results["f1"].metric_value == 0.8571
    assert (acc.task_type, acc.task_name) == ("text-classification", "Text Classification")
    assert (acc.dataset_type, acc.dataset_name, acc.dataset_split) == ("org/reviews", "org/reviews", "test")
    assert acc.dataset_revision == DATA_COMMIT
    body = card.text
    # The usage code loads exactly what an adapter push publishes: the base at the run's commit, then the adapter.
    assert f'from_pretrained("org/tiny-bert", revision="{BASE_COMMIT}", config=config)' in body
    assert f'PeftModel.from_pretrained(base, repo)' in body and f'repo = "{REPO_ID}"' in body
    assert "| 0 | negative | 101 | 28 | 24 |" in body
    assert "- 3 rows: empty text" in body
    assert "![Training and evaluation loss by optimizer step](loss_curve.png)" in body
    assert "| f1 | 0.8571 |" in body and "- peft 0.21.2" in body
    published = yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert published["model"]["revision"] == BASE_COMMIT and published["dataset"]["revision"] == DATA_COMMIT
    assert published["output_dir"] == "run"


def test_merged_card_loads_with_transformers_only(tmp_path):
    from huggingface_hub import ModelCard

    from hftoolkit.commands.push import push

    result = push(write_fixed_run(tmp_path), REPO_ID, merge=True, dry_run=True)
    card = ModelCard(result.card)
    assert card.data.library_name == "transformers"
    assert "PeftModel" not in card.text
    assert f'AutoModelForSequenceClassification.from_pretrained(repo)' in card.text
    names = [u.path_in_repo for u in result.uploads]
    assert "model.safetensors" in names and "adapter_config.json" not in names


@pytest.mark.parametrize(
    ("license_id", "expected"),
    [
        (None, "model.license"),
        ("Apache-2.0", "lowercase"),
        ("my-own-license", "not a license id the Hub knows"),
        ("apache-2.0 OR mit", "single license id"),
    ],
)
def test_license_must_be_a_known_hub_id(tmp_path, license_id, expected):
    with pytest.raises(PushError, match=expected):
        dry_run_card(tmp_path, model={"license": license_id})


def test_known_licenses_pass():
    from hftoolkit.publish.card import license_problem

    for ok in ("apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-sa-4.0", "llama3.1", "openrail++", "gpl-3.0"):
        assert license_problem(ok) is None, ok


def test_validation_names_the_missing_model_index_field(tmp_path):
    from hftoolkit.publish.card import validate_card

    card = dry_run_card(tmp_path)
    with pytest.raises(PushError, match=r"model-index\[0\]\.results\[0\]\.dataset\.type: missing"):
        validate_card(card.replace("      type: org/reviews\n", "", 1), kind="adapter")
    no_results = re.sub(r"model-index:.*?\n---", "---", card, count=1, flags=re.S)
    with pytest.raises(PushError, match="model-index: no evaluation results"):
        validate_card(no_results, kind="adapter")
    with pytest.raises(PushError, match="base_model: missing"):
        validate_card(card.replace("base_model: org/tiny-bert\n", ""), kind="adapter")


def test_full_fine_tune_publishes_weights_and_refuses_merge(tmp_path):
    from huggingface_hub import ModelCard

    from hftoolkit.commands.push import push

    run = write_fixed_run(tmp_path, lora={"enabled": False})
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (run / "model" / name).unlink()
    (run / "model" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\2" * 64)
    result = push(run, REPO_ID, dry_run=True)
    assert result.kind == "full"
    assert [u.path_in_repo for u in result.uploads if "safetensors" in u.path_in_repo] == ["model.safetensors"]
    card = ModelCard(result.card)
    assert card.data.library_name == "transformers" and "lora" not in card.data.tags
    assert "fully fine-tuned" in card.text and "LoRA rank" not in card.text
    with pytest.raises(PushError, match="full fine-tune"):
        push(run, REPO_ID, merge=True, dry_run=True)
