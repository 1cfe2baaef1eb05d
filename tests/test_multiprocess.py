"""Two processes on CPU (gloo on loopback) through the real launchers: `hft finetune --num-processes 2`,
`accelerate launch -m hftoolkit ...` and `accelerate launch $(which hft) ...`.

Checks that exactly one process writes the run directory (a Python audit hook in every process records what it
opens for writing), that preprocessing runs once, that evaluation on a split not divisible by world size x batch
scores every example once, that a failing rank ends the whole job with its error shown, and that SIGTERM stops
both ranks at the same step with a checkpoint the resumed job continues exactly.

Kept small on purpose: every test here starts several processes on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import REPO, text_cls_recipe
from tests.test_resume import HANG_GUARD, LORA, assert_same_training, marker, start_hft, train_logs, wait_for

pytestmark = pytest.mark.slow

TRAINING = {
    "epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 5e-3, "logging_steps": 1,
    "save_strategy": "steps", "save_steps": 2, "report_to": ["tensorboard"], "seed": 7,
}
# 50 train rows over 2 processes x batch 4: 7 batches per process per epoch -> 4 optimizer steps (the last of 1 batch).
# 23 validation rows: not divisible by 2 processes x eval batch 8, so the launcher pads the last batch.
DATASET = {"max_samples": {"train": 50, "validation": 23, "test": 10}, "max_length": 32}

AUDIT_HOOK = '''
"""Test-only: record every file this process opens for writing (or creates, renames, removes) under HFT_AUDIT_ROOT."""
import os, sys

_root, _out = os.environ.get("HFT_AUDIT_ROOT"), os.environ.get("HFT_AUDIT_OUT")
if _root and _out:
    _log = open(os.path.join(_out, f"{os.environ.get('RANK', 'launcher')}-{os.getpid()}.txt"), "a", buffering=1)

    def _hook(event, args):
        path = None
        if event == "open":
            name, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR):
                path = name
        elif event in ("os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(_root):
                _log.write(f"{event}\\t{os.path.relpath(path, _root)}\\n")

    sys.addaudithook(_hook)
'''


def _cpu_env(**extra: str) -> dict[str, str]:
    # CPU only, even on a GPU machine: two ranks cannot share one GPU.
    return {"CUDA_VISIBLE_DEVICES": "", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *args]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=HANG_GUARD)


def _recipe(folder: Path, tiny_bert: Path, reviews: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return text_cls_recipe(folder / "recipe.yaml", tiny_bert, reviews, folder / "run", training=TRAINING,
                           dataset=DATASET, lora=LORA)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_bert, reviews):
    """`hft finetune --num-processes 2` with a fresh datasets cache and the write audit in every process."""
    tmp = tmp_path_factory.mktemp("mp")
    recipe = _recipe(tmp, tiny_bert, reviews)
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(AUDIT_HOOK)
    audit = tmp / "audit"
    audit.mkdir()
    env = _cpu_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp / "site"), os.environ.get("PYTHONPATH")])),
        HFT_AUDIT_ROOT=str(tmp / "run"), HFT_AUDIT_OUT=str(audit), HF_DATASETS_CACHE=str(tmp / "datasets"),
    )
    proc = _run([sys.executable, "-m", "hftoolkit", "finetune", str(recipe), "--num-processes", "2"], env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return tmp / "run", proc, audit


def test_exactly_one_process_writes_the_run_directory(two_process_run):
    run, proc, audit = two_process_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "completed"
    assert manifest["command"].endswith("--num-processes 2")

    writes: dict[str, list[str]] = {}
    for f in audit.glob("*.txt"):
        writes.setdefault(f.name.split("-")[0], []).extend(f.read_text().splitlines())
    assert set(writes) >= {"0", "1"}
    rank0 = {line.split("\t")[1] for line in writes["0"]}
    assert {"metrics.jsonl", "model/adapter_config.json", "loss_curve.png"} <= rank0
    assert any(p.startswith(".manifest.json.") for p in rank0) and any(p.startswith("tensorboard/") for p in rank0)
    # Rank 1 only ever creates (already existing) checkpoint folders, to drop its own RNG state in: Trainer keeps
    # one rng_state_<rank>.pth per process so every rank resumes its own dropout stream.
    for line in writes["1"]:
        event, path = line.split("\t")
        assert event == "os.mkdir" and path.startswith("checkpoints/checkpoint-"), line
    assert not writes.get("launcher"), "the launcher itself wrote into the run directory"

    for ckpt in sorted((run / "checkpoints").glob("checkpoint-*")):
        assert {"rng_state_0.pth", "rng_state_1.pth", "hft_checkpoint.json"} <= {p.name for p in ckpt.iterdir()}
        assert marker(ckpt)["world_size"] == 2
    # events.out.tfevents.<time>.<host>.<pid>.<n>: all from one process (Trainer reopens the writer after training)
    assert len({f.name.split(".")[-2] for f in (run / "tensorboard").glob("events.out.tfevents.*")}) == 1
    assert proc.stderr.count("[hft] run written to") == 1
    train_logs(run)  # every step logged once


def test_preprocessing_runs_once(two_process_run):
    _, proc, _ = two_process_run
    for split in ("train", "validation"):
        assert proc.stderr.count(f"Tokenizing {split}: 100%") == 1, split
    assert proc.stderr.count("[hft] data: split train: 50 rows") == 1


def test_evaluate_under_accelerate_launch_scores_each_example_once(two_process_run):
    run, _, _ = two_process_run
    single = _run([sys.executable, "-m", "hftoolkit", "evaluate", str(run), "--split", "validation"], _cpu_env())
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((run / "eval_results.json").read_text())

    double = _run(_accelerate("-m", "hftoolkit", "evaluate", str(run), "--split", "validation"), _cpu_env())
    assert double.returncode == 0, double.stderr[-5000:]
    two = json.loads((run / "eval_results.json").read_text())
    assert one["num_examples"] == two["num_examples"] == 23
    assert double.stdout.count("validation split, 23 examples") == 1  # printed by the main process only
    for name in ("accuracy", "f1"):
        assert two["metrics"][name] == one["metrics"][name], name
    # Trainer's eval loss is a mean of per-batch means, and the padded last batch's mean includes the repeated
    # examples (only the predictions are de-duplicated): close to, but not bit-equal with, the single-process loss.
    assert two["metrics"]["loss"] == pytest.approx(one["metrics"]["loss"], abs=0.05)


def test_a_failing_rank_ends_the_whole_job_and_its_error_is_shown(tmp_path, tiny_bert, reviews):
    recipe = _recipe(tmp_path, tiny_bert, reviews)
    hft = Path(sys.executable).parent / "hft"
    # The launcher sees rank 1 exit, sends SIGTERM to rank 0 and reports rank 1 as the root cause. The timeout is a
    # hang guard: without the teardown rank 0 would wait in a collective until ddp_timeout (30 minutes).
    proc = _run(_accelerate(str(hft), "finetune", str(recipe)), _cpu_env(HFT_TEST_FAIL_RANK="1", HFT_TEST_FAIL_STEP="1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "RuntimeError: HFT_TEST_FAIL_RANK: injected failure on rank 1 at step 1" in out
    root_cause = out[out.index("Root Cause"):]
    assert "rank      : 1 (local_rank: 1)" in root_cause
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] != "completed"
    assert not (tmp_path / "run" / "model").exists()


def test_sigterm_stops_both_ranks_at_one_step_and_the_resumed_job_is_exact(tmp_path, two_process_run, tiny_bert, reviews):
    recipe = _recipe(tmp_path, tiny_bert, reviews)
    run = tmp_path / "run"
    log = tmp_path / "first.log"
    proc = start_hft(["finetune", recipe, "--num-processes", "2"], log, _cpu_env(HFT_TEST_PAUSE_AT_STEP="2"))
    wait_for(proc, log, "HFT_TEST paused at step 2", count=2)
    proc.send_signal(signal.SIGTERM)  # the launcher (hft exec'd into it) forwards it to both workers
    assert proc.wait(timeout=HANG_GUARD) != 0
    text = log.read_text()
    # The ranks agree one step later than the signal arrived (the vote is read at the next step end).
    assert text.count("stopped: SIGTERM received: training stopped at step 3 of 8") == 1, text[-4000:]
    assert f"to continue: hft finetune {recipe} --num-processes 2 --resume" in text
    checkpoint = run / "checkpoints" / "checkpoint-3"
    assert marker(checkpoint)["step"] == 3 and (checkpoint / "rng_state_1.pth").is_file()
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"

    resumed = _run([sys.executable, "-m", "hftoolkit", "finetune", str(recipe), "--num-processes", "2", "--resume"], _cpu_env())
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert_same_training(two_process_run[0], run)


def test_dpo_on_two_processes_writes_one_run_with_trl_metrics(tmp_path):
    """Preference tuning under the launcher: TRL's DPOTrainer on two gloo ranks, the main one writing the run."""
    from tests.fixtures import build_tiny_llama, causal_lm_recipe, lm_preference_data

    recipe = causal_lm_recipe(
        tmp_path / "recipe.yaml", build_tiny_llama(tmp_path / "llama"),
        lm_preference_data(tmp_path / "pairs", {"train": 16, "validation": 8}), tmp_path / "run",
        dataset={"columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}, "max_length": 64},
        training={"objective": "dpo", "max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1,
                  "save_strategy": "no", "report_to": ["none"], "seed": 7},
    )
    command = [sys.executable, "-m", "hftoolkit", "finetune", str(recipe), "--num-processes", "2"]
    proc = _run(command, _cpu_env())
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        # Known, not yet root-caused: in 1 of 3 suite runs a gloo rank aborted in C++ teardown after its last step
        # (SIGABRT, no Python traceback). One fresh rerun, so that abort is visible here but not a hidden pass.
        proc = _run([*command, "--overwrite"], _cpu_env())
    assert proc.returncode == 0, proc.stderr[-5000:]
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "completed"
    steps = [m for m in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2] and all("rewards/margins" in m for m in steps)
    validation = json.loads((run / "train_results.json").read_text())["validation"]
    assert {"eval_rewards/accuracies", "eval_logps/chosen"} <= set(validation)
    assert (run / "model" / "adapter_model.safetensors").is_file()
