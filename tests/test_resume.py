"""Exact resume through the real CLI: a run interrupted by SIGTERM, SIGKILL or an exception and then resumed with
`--resume` logs the same per-step losses and ends with the same LoRA and head weights as an uninterrupted run.

The recipe is chosen to make that hard: gradient accumulation 3, 42 training rows in batches of 4 (11 batches per
epoch, so the last optimizer step of an epoch has 2 batches), length-grouped sampling, LoRA dropout and BERT dropout.
Faults come from the test-only HFT_TEST_* hooks (hftoolkit/checkpoints.py, FaultInjection).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_hft
from tests.fixtures import REPO, text_cls_recipe

TRAINING = {
    "epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 3, "learning_rate": 5e-3, "logging_steps": 1,
    "save_strategy": "steps", "save_steps": 2, "eval_strategy": "epoch", "report_to": ["none"], "seed": 7,
}
# 42 rows / batch 4 = 11 batches -> 4 optimizer steps per epoch (3 of 3 batches, 1 of 2): 8 steps, epoch ends at 4.
DATASET = {"max_samples": {"train": 42, "validation": 20, "test": 10}, "max_length": 32}
LORA = {"r": 4, "alpha": 8, "dropout": 0.1}
HANG_GUARD = 300  # seconds; only there so a broken run fails the test instead of hanging it


def make_recipe(folder: Path, tiny_bert: Path, reviews: dict, **training) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return text_cls_recipe(
        folder / "recipe.yaml", tiny_bert, reviews, folder / "run", training={**TRAINING, **training}, dataset=DATASET,
        lora=LORA,
    )


def start_hft(args: list, log: Path, env: dict | None = None) -> subprocess.Popen:
    """The CLI in the background, output to `log` (for runs the test interrupts)."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hftoolkit", *map(str, args)], cwd=REPO, env={**os.environ, **(env or {})},
            stdout=out, stderr=subprocess.STDOUT,
        )


def wait_for(proc: subprocess.Popen, log: Path, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        if log.read_text(errors="replace").count(text) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before printing {text!r}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{text!r} not printed:\n{log.read_text()[-4000:]}")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_logs(run: Path) -> dict[int, dict]:
    """Per-step training logs (loss, grad_norm, learning_rate); a step logged twice is an error."""
    rows = [m for m in metrics(run) if "loss" in m]
    steps = [m["step"] for m in rows]
    assert len(steps) == len(set(steps)), f"duplicated steps in metrics.jsonl: {steps}"
    return {m["step"]: m for m in rows}


def assert_same_training(expected: Path, got: Path) -> None:
    """Same per-step losses, grad norms, learning rates and eval losses, and the same final adapter + head weights."""
    from safetensors.torch import load_file

    a, b = train_logs(expected), train_logs(got)
    assert sorted(a) == sorted(b) == list(range(1, max(a) + 1))
    for step in a:
        for key in ("loss", "grad_norm", "learning_rate"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-6, rel=0), (step, key)
    evals_a = [(m["step"], m["eval_loss"]) for m in metrics(expected) if "eval_loss" in m]
    evals_b = [(m["step"], m["eval_loss"]) for m in metrics(got) if "eval_loss" in m]
    assert [s for s, _ in evals_a] == [s for s, _ in evals_b]
    assert [v for _, v in evals_b] == pytest.approx([v for _, v in evals_a], abs=1e-6, rel=0)

    wa = load_file(str(expected / "model" / "adapter_model.safetensors"))
    wb = load_file(str(got / "model" / "adapter_model.safetensors"))
    assert sorted(wa) == sorted(wb)
    assert any("lora_A" in k for k in wa) and any("classifier" in k for k in wa)  # LoRA weights and the trained head
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-6, k


def assert_same_train_loss(expected: Path, got: Path) -> None:
    """train_results.json's train_loss is the mean over the whole run, also when it was resumed (and in metrics.jsonl)."""
    want = json.loads((expected / "train_results.json").read_text())["train"]["train_loss"]
    have = json.loads((got / "train_results.json").read_text())["train"]["train_loss"]
    assert have == pytest.approx(want, rel=1e-6)
    assert [m["train_loss"] for m in metrics(got) if "train_loss" in m][-1] == pytest.approx(want, rel=1e-6)


def marker(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "hft_checkpoint.json").read_text())


class _Canary:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_bert, reviews) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    recipe = make_recipe(tmp_path_factory.mktemp("baseline"), tiny_bert, reviews)
    run_hft("finetune", recipe)
    run = recipe.parent / "run"
    assert max(train_logs(run)) == 8
    return run


# ----------------------------------------------------------------------------------------------------------------------
# Through the CLI


def test_sigterm_then_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, baseline, tiny_bert, reviews):
    recipe = make_recipe(tmp_path, tiny_bert, reviews)
    run = tmp_path / "run"

    # 1. SIGTERM in the second epoch: checkpoint at the current step, then a clean stop that says how to resume.
    log = tmp_path / "first.log"
    proc = start_hft(["finetune", recipe], log, {"HFT_TEST_PAUSE_AT_STEP": "5"})
    wait_for(proc, log, "HFT_TEST paused at step 5")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=HANG_GUARD) == 143
    text = log.read_text()
    assert "stopped: SIGTERM received: training stopped at step 5 of 8" in text
    assert f"to continue: hft finetune {recipe} --resume" in text
    assert "Traceback" not in text
    assert marker(run / "checkpoints" / "checkpoint-5")["step"] == 5
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"

    # 2. Resume, then SIGKILL from outside mid-epoch: step 7 is logged, checkpoint-6 is the latest written.
    log = tmp_path / "second.log"
    proc = start_hft(["finetune", recipe, "--resume"], log, {"HFT_TEST_PAUSE_AT_STEP": "8"})
    wait_for(proc, log, "HFT_TEST paused at step 8")
    proc.kill()
    proc.wait(timeout=HANG_GUARD)
    assert marker(run / "checkpoints" / "checkpoint-6")["complete"] is True
    assert any(m["step"] == 7 for m in metrics(run))  # logged before the kill: must not appear twice later
    # What a kill during a save leaves behind: a newer checkpoint folder without the completion marker.
    partial = run / "checkpoints" / "checkpoint-7"
    shutil.copytree(run / "checkpoints" / "checkpoint-6", partial)
    (partial / "hft_checkpoint.json").unlink()
    (partial / "optimizer.pt").write_bytes(b"half written")

    # 3. Resume to the end: from checkpoint-6, not the incomplete 7.
    proc = run_hft("finetune", recipe, "--resume")
    assert f"resuming from {run / 'checkpoints' / 'checkpoint-6'} (step 6)" in proc.stderr
    assert f"removing incomplete checkpoint {partial}" in proc.stderr
    assert not partial.exists()
    assert_same_training(baseline, run)
    assert_same_train_loss(baseline, run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert [r["step"] for r in manifest["resumed_from"]] == [5, 6]


def test_exception_at_epoch_boundary_then_resume_equals_uninterrupted(tmp_path, baseline, tiny_bert, reviews):
    import torch

    recipe = make_recipe(tmp_path, tiny_bert, reviews)
    run = tmp_path / "run"
    # Step 4 ends epoch 1: checkpoint-4 is saved (save_steps), then the epoch-end evaluation is logged, then it fails.
    proc = run_hft("finetune", recipe, env={"HFT_TEST_FAIL_AFTER_EVAL": "4"}, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "HFT_TEST_FAIL_AFTER_EVAL: injected failure after the evaluation at step 4" in proc.stderr
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    checkpoint = run / "checkpoints" / "checkpoint-4"
    assert marker(checkpoint)["epoch"] == 1.0  # the epoch boundary

    # A tampered checkpoint file is refused by name before anything loads it; its code never runs.
    rng = checkpoint / "rng_state.pth"
    original = rng.read_bytes()
    canary = tmp_path / "canary"
    torch.save({"python": _Canary(canary)}, rng)
    proc = run_hft("finetune", recipe, "--resume", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"refusing to load {rng}" in proc.stderr and "Traceback" not in proc.stderr
    assert not canary.exists()
    rng.write_bytes(original)

    # A changed recipe is refused with the changed key, unless --allow-recipe-change.
    proc = run_hft("finetune", recipe, "--resume", "--set", "training.learning_rate=0.001", check=False)
    assert proc.returncode == 2
    assert "training.learning_rate: 0.005 -> 0.001" in proc.stderr and "--allow-recipe-change" in proc.stderr

    run_hft("finetune", recipe, "--resume")
    assert_same_training(baseline, run)
    assert_same_train_loss(baseline, run)


# ----------------------------------------------------------------------------------------------------------------------
# In process: which checkpoint --resume picks, and what it refuses


def _recipe_obj(tmp_path: Path, **training):
    from hftoolkit.recipe.schema import Recipe

    return Recipe.model_validate({
        "task": "text-classification", "model": {"name": "m"}, "dataset": {"files": {"train": "t.jsonl"}},
        "training": training, "output_dir": str(tmp_path / "run"),
    })


def _checkpoint(run: Path, step: int, **info) -> Path:
    folder = run / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if info:
        (folder / "hft_checkpoint.json").write_text(json.dumps({"complete": True, "step": step, **info}))
    return folder


def test_resume_picks_the_latest_complete_checkpoint_and_refuses_others(tmp_path):
    from hftoolkit.training.resume import find_resume_checkpoint
    from hftoolkit.errors import RunDirError
    from hftoolkit.run.layout import RunDir

    recipe = _recipe_obj(tmp_path)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.update_manifest(run_id="this-run")
    mine = {"run_id": "this-run", "recipe_fingerprint": recipe.fingerprint(), "recipe": recipe.model_dump(mode="json"),
            "data_fingerprint": "data-1"}

    def find(**kw):
        return find_resume_checkpoint(run, kw.pop("recipe", recipe), data_fingerprint=kw.pop("data", "data-1"),
                                      allow_recipe_change=kw.pop("allow", False))

    with pytest.raises(RunDirError, match="no complete checkpoint in"):
        find()
    _checkpoint(run.path, 3)
    with pytest.raises(RunDirError, match="only incomplete ones: checkpoint-3"):
        find()

    _checkpoint(run.path, 2, **mine)
    _checkpoint(run.path, 10, **mine)
    _checkpoint(run.path, 12)  # being written when the run died
    ckpt, newer = find()
    assert ckpt.step == 10 and [c.step for c in newer] == [12]

    _checkpoint(run.path, 11, **{**mine, "run_id": "other-run"})
    with pytest.raises(RunDirError, match="checkpoint-11 belongs to another run"):
        find()
    shutil.rmtree(run.checkpoints / "checkpoint-11")

    changed = _recipe_obj(tmp_path, seed=1)
    with pytest.raises(RunDirError, match=r"written with another recipe \(changed: training.seed: 42 -> 1\)"):
        find(recipe=changed)
    assert find(recipe=changed, allow=True)[0].step == 10
    with pytest.raises(RunDirError, match="the training data changed"):
        find(data="data-2")


def test_truncate_metrics_keeps_what_was_logged_up_to_the_checkpoint(tmp_path):
    from hftoolkit.training.resume import Checkpoint, truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}, {"step": 2, "eval_loss": 0.8}, {"step": 3, "loss": 0.7}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    truncate_metrics(path, Checkpoint(tmp_path, 2, {"complete": True, "metrics_lines": 2}))
    # The evaluation of step 2 was logged after the save (epoch end) and stays; step 3 is redone by the resumed run.
    assert [json.loads(x) for x in path.read_text().splitlines()] == lines[:3]
    summary = {"step": 2, "train_runtime": 1.0}  # what a stopped run logs at its last step: not kept
    path.write_text(path.read_text() + json.dumps(summary) + "\n")
    truncate_metrics(path, Checkpoint(tmp_path, 2, {"complete": True, "metrics_lines": 2}))
    assert [json.loads(x) for x in path.read_text().splitlines()] == lines[:3]
    truncate_metrics(path, Checkpoint(tmp_path, 1, {"complete": True}))  # a marker without a line count: by step
    assert [json.loads(x) for x in path.read_text().splitlines()] == lines[:1]


def test_sigint_asks_for_a_checkpoint_and_a_second_one_stops_at_once(monkeypatch):
    from transformers import TrainerControl, TrainerState

    from hftoolkit.training.callbacks import GracefulStop

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    before = signal.getsignal(signal.SIGINT)
    stop = GracefulStop()
    control = TrainerControl()
    with stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # let the handler run; it must not raise on the first signal
        stop.on_step_end(None, TrainerState(global_step=3), control)
        assert control.should_save and control.should_training_stop
        assert (stop.stopped_by, stop.stopped_step, stop.exit_code) == ("SIGINT", 3, 130)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------------------------------------------------------------------
# Preference tuning (DPO through TRL's DPOTrainer): the same resume guarantees


def test_dpo_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    from tests.fixtures import build_tiny_llama, causal_lm_recipe, lm_preference_data

    llama = build_tiny_llama(tmp_path / "llama")
    files = lm_preference_data(tmp_path / "pairs", {"train": 12, "validation": 4})
    # 12 pairs in batches of 2 with accumulation 2: 3 optimizer steps per epoch, 6 in all; length-grouped batches;
    # SIGTERM in the second epoch.
    training = {
        "objective": "dpo", "epochs": 2, "batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 5e-3,
        "logging_steps": 1, "save_strategy": "steps", "save_steps": 2, "eval_strategy": "epoch", "report_to": ["none"],
        "seed": 7,
    }

    def recipe(name: str) -> Path:
        return causal_lm_recipe(
            tmp_path / f"{name}.yaml", llama, files, tmp_path / name,
            dataset={"columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}, "max_length": 64},
            training=training,
        )

    run_hft("finetune", recipe("baseline"))
    log = tmp_path / "first.log"
    proc = start_hft(["finetune", recipe("resumed")], log, {"HFT_TEST_PAUSE_AT_STEP": "4"})
    wait_for(proc, log, "HFT_TEST paused at step 4")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=HANG_GUARD) == 143, log.read_text()[-3000:]
    assert marker(tmp_path / "resumed" / "checkpoints" / "checkpoint-4")["step"] == 4
    run_hft("finetune", recipe("resumed"), "--resume")

    a, b = train_logs(tmp_path / "baseline"), train_logs(tmp_path / "resumed")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        for key in ("loss", "grad_norm", "learning_rate", "rewards/margins", "logps/chosen"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-6, rel=0), (step, key)
    assert_same_train_loss(tmp_path / "baseline", tmp_path / "resumed")
    wa = load_file(str(tmp_path / "baseline" / "model" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "resumed" / "model" / "adapter_model.safetensors"))
    assert sorted(wa) == sorted(wb) and any("lora_B" in k for k in wa)
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-6, k
