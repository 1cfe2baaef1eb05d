"""The run contract, references, relaunch arguments and the trainer layer, checked without training anything."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hftoolkit.run.records import DataReport, EvalResults, Manifest

MANIFEST = {
    "status": "completed", "run_id": "abc", "resumed_from": [], "hftoolkit_version": "0.1.0",
    "recipe_fingerprint": "f00", "command": "hft finetune /home/me/r.yaml --set output_dir=/home/me/runs/x",
    "task": "causal-lm", "seed": 7, "precision": "fp32", "world_size": 1, "device": "cpu: x86_64",
    "started": "2026-01-02T03:04:05Z", "model": {"name": "/home/me/gpt2", "revision": None, "commit": None},
    "dataset": {"id": "local files", "files": {"train": "/home/me/a.jsonl"}, "fingerprints": {"train": "t1"}},
    "labels": None, "adapter": True, "parameters": {"trainable": 1, "total": 2}, "versions": {"python": "3.11"},
    "finished": "2026-01-02T03:09:05Z",
}


def short(path: str) -> str:
    return path.rsplit("/", 1)[-1] if path.startswith("/") else path


def test_public_manifest_lists_exactly_the_published_fields_in_order(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(MANIFEST))
    public = Manifest.read(path).public(kind="merged", model_name="gpt2", shorten=short, command=lambda c: "hft …")
    assert list(public.as_json()) == [
        "status", "hftoolkit_version", "recipe_fingerprint", "task", "seed", "precision", "world_size", "device",
        "labels", "adapter", "parameters", "versions", "command", "model", "dataset", "published_as",
    ]
    out = public.as_json()
    assert out["labels"] is None  # given (a causal LM has none), so published as given
    assert out["model"] == {"name": "gpt2", "revision": None, "commit": None}
    assert out["dataset"] == {"id": "local files", "files": {"train": "a.jsonl"}, "fingerprints": {"train": "t1"}}


def test_a_record_read_and_written_again_keeps_its_keys(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"status": "running", "model": {"name": "m", "revision": None}}))
    manifest = Manifest.read(path)
    manifest.status = "completed"
    manifest.write(path)
    assert json.loads(path.read_text()) == {"status": "completed", "model": {"name": "m", "revision": None}}


def test_eval_results_public_drops_local_fields():
    results = EvalResults(split="test", num_examples=3, metrics={"accuracy": 1.0}, labels=["a", "b"],
                          run="/home/me/runs/x", dataset={"id": "/home/me/data"}, model={"name": "/home/me/m"})
    out = results.public(short).as_json()
    assert out == {"split": "test", "num_examples": 3, "metrics": {"accuracy": 1.0}, "labels": ["a", "b"],
                   "dataset": {"id": "data"}, "model": {"name": "m"}}


def test_data_report_file_has_every_section(tmp_path):
    report = DataReport(split_sizes={"train": 4})
    report.token_lengths = {"sample": 4, "mean": 3.5, "p50": 3, "p95": 5, "max": 5}
    report.write(tmp_path / "data_report.json")
    data = json.loads((tmp_path / "data_report.json").read_text())
    assert set(data) == set(DataReport.model_fields) and data["token_lengths"]["p50"] == 3
    assert "token length (train sample of 4): mean 3.5, p50 3, p95 5, max 5" in DataReport.read(tmp_path / "data_report.json").lines()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["finetune", "r.yaml", "--num-processes", "2", "--set", "a=1"], ["finetune", "r.yaml", "--set", "a=1"]),
        (["--debug", "finetune", "r.yaml", "--num-processes=4", "--resume"], ["--debug", "finetune", "r.yaml", "--resume"]),
        (["finetune", "r.yaml", "--unset", "x", "--set", "b=--num-processes"], ["finetune", "r.yaml", "--unset", "x", "--set", "b=--num-processes"]),
    ],
)
def test_relaunch_passes_the_users_arguments_through_without_num_processes(argv, expected):
    from hftoolkit.launch import worker_args

    assert worker_args(argv) == expected


def test_references_are_decided_in_one_place(tmp_path, monkeypatch):
    from hftoolkit.errors import DataError
    from hftoolkit.refs import dataset_path, is_hub_id, is_local, is_local_dataset, is_local_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert is_hub_id("org/other") and not is_local("org/other")
    assert is_local("org/name")  # an existing local path wins over the Hub id it looks like
    assert is_local_model("package:hft_models") and is_local_dataset(None) and not is_hub_id("a/b/c")
    with pytest.raises(DataError, match="dataset path './missing' does not exist"):
        dataset_path("./missing")
    assert dataset_path("org/other") is None


def test_evaluation_uses_the_training_mapping_without_a_schedule(tmp_path, make_recipe):
    from hftoolkit.recipe.schema import load_recipe
    from hftoolkit.training.args import prediction_arguments, training_arguments

    recipe = load_recipe(make_recipe())
    train = training_arguments(recipe, str(tmp_path / "a"))
    predict = prediction_arguments(recipe, str(tmp_path / "b"), per_device_eval_batch_size=3)
    assert (predict.bf16, predict.fp16, predict.use_cpu) == (train.bf16, train.fp16, train.use_cpu)
    assert predict.eval_strategy == "no" and predict.save_strategy == "no" and predict.report_to == []
    assert predict.per_device_eval_batch_size == 3 and train.per_device_eval_batch_size == 2 * recipe.training.batch_size


def test_resumable_mixin_sits_on_any_trainer_subclass():
    from transformers import Trainer

    from hftoolkit.training.trainer import ResumableMixin, ResumableTrainer

    class OtherTrainer(Trainer):  # stands for TRL's SFTTrainer / DPOTrainer, which subclass Trainer
        pass

    class ResumableOther(ResumableMixin, OtherTrainer):
        pass

    mro = ResumableOther.__mro__
    assert mro.index(ResumableMixin) < mro.index(OtherTrainer) < mro.index(Trainer)
    for name in ("train", "evaluate", "log", "_get_train_sampler"):
        assert getattr(ResumableOther, name) is getattr(ResumableMixin, name)
    assert issubclass(ResumableTrainer, Trainer)


def test_fault_injection_is_not_imported_in_a_real_run():
    code = (
        "import os, sys; [os.environ.pop(k) for k in list(os.environ) if k.startswith('HFT_TEST_')]; "
        "from hftoolkit.training.callbacks import extra_callbacks_from_env; "
        "assert extra_callbacks_from_env() == []; assert 'hftoolkit.testing.faults' not in sys.modules; "
        "os.environ['HFT_TEST_PAUSE_AT_STEP'] = '3'; [cb] = extra_callbacks_from_env(); assert cb.pause_at == 3; "
        "assert 'hftoolkit.testing.faults' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
