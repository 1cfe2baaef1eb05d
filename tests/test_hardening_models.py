"""Models that used to train silently wrong or crash at step 1 (issue 11), through the real CLI.

A folder without tokenizer files or without weights, a max_length beyond the position limit; GPT-2 and Llama as
text classifiers (pad token, pad_token_id in the saved config, the `score` head saved with the adapter, reloads
that reproduce predictions); `hft evaluate` noticing that the evaluation data changed; `hft predict` on a text run
given an image path.
"""

from __future__ import annotations

import json
import shutil

import datasets  # noqa: F401  (imported before any CliRunner run: its log handler must not bind to a runner's stream)
import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from hftoolkit.cli import app
from tests.conftest import run_hft
from tests.cli_helpers import refused_line as refused
from tests.fixtures import build_tiny_gpt2, build_tiny_llama, small_reviews, text_cls_recipe

runner = CliRunner()
TEXTS = ["the kettle works perfectly.", "broke after two days, very disappointed and angry about it.", "great"]


def hft(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def predictions(result) -> list[dict]:
    """The `--json` lines of `hft predict` (stderr progress bars may share a line with them in CliRunner output)."""
    assert result.exit_code == 0, result.output
    return [json.loads(line[line.index('{"input"'):]) for line in result.output.splitlines() if '{"input"' in line]


@pytest.fixture
def bert_copy(tmp_path, tiny_bert):
    def make(keep: tuple[str, ...]):
        folder = tmp_path / "model"
        shutil.copytree(tiny_bert, folder)
        for p in folder.iterdir():
            if p.name not in keep:
                p.unlink()
        return folder

    return make


def test_folder_without_tokenizer_files_is_refused(tmp_path, bert_copy, reviews):
    folder = bert_copy(("config.json", "model.safetensors"))
    recipe = text_cls_recipe(tmp_path / "r.yaml", folder, reviews, tmp_path / "run")
    for command in ("validate", "finetune"):
        refused(hft(command, recipe), f"model folder {folder} has no tokenizer files", "tokenizer.json", "vocab.txt",
                "vocab.json + merges.txt", "tokenizer.model")
    assert not (tmp_path / "run").exists()


def test_folder_with_only_a_config_is_refused_by_validate(tmp_path, bert_copy, reviews):
    folder = bert_copy(("config.json",))
    recipe = text_cls_recipe(tmp_path / "r.yaml", folder, reviews, tmp_path / "run")
    proc = run_hft("validate", recipe, check=False)  # the real entry point, in a subprocess
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"model folder {folder} has no weights (no *.safetensors file; it holds config.json)" in proc.stderr


def test_max_length_above_the_position_limit_is_refused(make_recipe, tmp_path):
    recipe = make_recipe(dataset={"max_length": 256})
    for command in ("validate", "finetune"):
        refused(hft(command, recipe), "dataset.max_length is 256 but model", "takes at most 128 tokens",
                "(max_position_embeddings = 128 in its config)")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Decoder models as text classifiers


def _train(root, build, name: str):
    model = build(root / name)
    data = small_reviews(root / f"data_{name}", n_train=48, n_val=16, n_test=16)
    recipe = text_cls_recipe(
        root / f"{name}.yaml", model, data, root / f"run_{name}",
        dataset={"max_length": 96}, training={"epochs": 1, "precision": "fp32"},
    )
    result = hft("finetune", recipe)
    assert result.exit_code == 0, result.output
    assert "the tokenizer has no pad token: padding with its EOS token" in result.output
    return root / f"run_{name}", data


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("gpt2_cls"), build_tiny_gpt2, "gpt2")


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("llama_cls"), build_tiny_llama, "llama")


def _check_decoder_classifier(run) -> None:
    model = run / "model"
    config = json.loads((model / "config.json").read_text())
    tokenizer = json.loads((model / "tokenizer_config.json").read_text())
    assert config["pad_token_id"] is not None and tokenizer["pad_token"] == tokenizer["eos_token"]
    with safe_open(str(model / "adapter_model.safetensors"), "pt") as f:
        assert any(".score." in k for k in f.keys()), list(f.keys())  # the new head travels with the adapter
    adapter = json.loads((model / "adapter_config.json").read_text())
    assert "score" in adapter["modules_to_save"]

    # Reloaded, the model scores validation exactly as the trained model did at the end of finetune.
    trained = json.loads((run / "train_results.json").read_text())["validation"]
    result = hft("evaluate", run, "--split", "validation")
    assert result.exit_code == 0, result.output
    scored = json.loads((run / "eval_results.json").read_text())["metrics"]
    assert scored["loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)
    assert scored["accuracy"] == trained["eval_accuracy"]

    # Padded batch == one row at a time: the head reads each row's last real token, not the padding.
    together = predictions(hft("predict", run, *TEXTS, "--json"))
    assert [row["input"] for row in together] == TEXTS
    for text, row in zip(TEXTS, together):
        [single] = predictions(hft("predict", run, text, "--json"))
        assert single["label"] == row["label"] and single["score"] == pytest.approx(row["score"], abs=1e-5)


def test_gpt2_text_classification_end_to_end(gpt2_run):
    run, _ = gpt2_run
    _check_decoder_classifier(run)
    assert "c_attn" in json.loads((run / "model/adapter_config.json").read_text())["target_modules"]


def test_llama_text_classification_end_to_end(llama_run):
    run, _ = llama_run
    _check_decoder_classifier(run)
    assert set(json.loads((run / "model/adapter_config.json").read_text())["target_modules"]) == {"q_proj", "v_proj"}


def test_predict_on_a_text_run_warns_about_an_image_path(gpt2_run):
    run, _ = gpt2_run
    result = hft("predict", run, "a fine kettle", "photos/leaf.JPG")
    assert result.exit_code == 0, result.output
    assert "input 2 looks like an image path; this run takes text" in result.output
    assert "input 1 looks like" not in result.output


def test_evaluate_notices_changed_data(gpt2_run):
    run, data = gpt2_run
    result = hft("evaluate", run)
    assert result.exit_code == 0, result.output
    recorded = json.loads((run / "manifest.json").read_text())["dataset"]["fingerprints"]["test"]
    fingerprint = json.loads((run / "eval_results.json").read_text())["data_fingerprint"]
    assert fingerprint == {"split": "test", "fingerprint": recorded, "recorded": recorded, "matched": True}
    assert "changed since training" not in result.output

    original = data["test"].read_text()
    try:
        data["test"].write_text(original + json.dumps({"text": "an extra review.", "label": "positive"}) + "\n")
        result = hft("evaluate", run)
        assert result.exit_code == 0, result.output
        fingerprint = json.loads((run / "eval_results.json").read_text())["data_fingerprint"]
        assert fingerprint["matched"] is False and fingerprint["recorded"] == recorded
        assert f"split 'test' changed since training: fingerprint {fingerprint['fingerprint']}, the run recorded {recorded}" in result.output
        written = (run / "eval_results.json").read_text()
        refused(hft("evaluate", run, "--strict"), "split 'test' changed since training", recorded, "--strict")
        assert (run / "eval_results.json").read_text() == written  # refused: nothing rewritten
    finally:
        data["test"].write_text(original)
