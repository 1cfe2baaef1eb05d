"""Surviving faults in `hft finetune`: complete-marked checkpoints, exact resume, graceful stop on SIGTERM/SIGINT.

What lives here and why it is ours rather than the library's:
- `CheckpointMarker`: Trainer writes checkpoint folders file by file and never says when one is whole, so a run
  killed mid-save leaves a folder `get_last_checkpoint` would happily resume from. We add `hft_checkpoint.json`
  (step, run id, recipe and data fingerprints) once every rank has finished writing; only marked folders resume.
- `GracefulStop`: turns SIGTERM/SIGINT into "finish this step, save a checkpoint, stop". transformers'
  `enable_jit_checkpoint` covers SIGTERM only, waits a fixed 3 s, saves without the ranks agreeing on a step, and
  then lets `train()` return as if training had finished, so the caller cannot tell the run is incomplete.
- `ResumableTrainer` (hftoolkit/resumable.py): Trainer with an epoch-seeded length-grouped sampler that also keeps
  the running sum of training losses in the marker, so a resumed run reports the whole run's `train_loss`.
- `verify_checkpoint_files`: loads every pickle-based file of a checkpoint with `weights_only=True` (what Trainer
  uses too) and checks every JSON and safetensors file before resuming, so a tampered or truncated file is refused
  up front with its name instead of deep in the loop. hft never deletes such a checkpoint itself.
- Deleting: only real `checkpoint-N` folders inside the run's checkpoints folder, never through a symlink.
- `FaultInjection`: TEST-ONLY hooks driven by HFT_TEST_* environment variables (documented on the class).

Imports transformers and torch: load this module only inside commands.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from hftoolkit import __version__
from hftoolkit.errors import RunDirError
from hftoolkit.paths import require_no_escaping_links
from hftoolkit.rundir import RunDir, read_json, write_atomic, write_json

log = logging.getLogger("hftoolkit")

MARKER = "hft_checkpoint.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# Trainer's own pickle-based checkpoint files; training_args.bin is written but never loaded back by Trainer.
_PICKLED = (".pt", ".pth", ".bin")
_NOT_LOADED = {"training_args.bin"}
# Set by GracefulStop's handler; lets the test-only pause hook return as soon as a signal arrived.
_SIGNAL_SEEN = threading.Event()


# ----------------------------------------------------------------------------------------------------------------------
# Finding the checkpoint to resume from


@dataclass
class Checkpoint:
    path: Path
    step: int
    info: dict[str, Any] = field(default_factory=dict)  # the marker's content; empty when incomplete

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))


def scan(folder: Path) -> list[Checkpoint]:
    """Every checkpoint-N folder, oldest first, with its marker when it has a readable one."""
    found = []
    if not folder.is_dir():
        return found
    for child in folder.iterdir():
        m = _CHECKPOINT_DIR.match(child.name)
        if not m or not child.is_dir():
            continue
        if child.is_symlink():
            # Not a folder Trainer wrote: resuming from it would read, and removing it would delete, elsewhere.
            log.warning("ignoring %s: a symlink to %s, not a checkpoint this run wrote", child, os.path.realpath(child))
            continue
        found.append(Checkpoint(child, int(m.group(1)), read_marker(child)))
    return sorted(found, key=lambda c: c.step)


def read_marker(ckpt: Path) -> dict[str, Any]:
    """The marker of one checkpoint folder; {} when it has none or an unreadable one (an incomplete checkpoint)."""
    try:
        info = json.loads((ckpt / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def find_resume_checkpoint(
    run: RunDir, recipe: Any, *, data_fingerprint: str | None, allow_recipe_change: bool
) -> tuple[Checkpoint, list[Checkpoint]]:
    """The latest complete checkpoint of this run, and the incomplete ones written after it (to be removed).

    Refuses, with what to do: no complete checkpoint, a checkpoint of another run, a checkpoint written with another
    recipe or other training data (unless allow_recipe_change).
    """
    from hftoolkit.recipe import diff_recipes

    found = scan(run.checkpoints)
    complete = [c for c in found if c.complete]
    if not complete:
        partial = ", ".join(c.path.name for c in found)
        detail = f" (only incomplete ones: {partial}; they were being written when the run stopped)" if partial else ""
        raise RunDirError(
            f"--resume: no complete checkpoint in {run.checkpoints}{detail}; start over with --overwrite"
        )
    ckpt = complete[-1]
    newer = [c for c in found if c.step > ckpt.step]
    manifest = read_json(run.manifest) if run.manifest.is_file() else {}
    run_id = manifest.get("run_id")
    if run_id and ckpt.info.get("run_id") != run_id:
        raise RunDirError(
            f"--resume: {ckpt.path} belongs to another run (run id {ckpt.info.get('run_id')}, this run is {run_id}); "
            "it was copied or left over from an earlier run in this directory. Remove it or start over with --overwrite"
        )
    if ckpt.info.get("recipe_fingerprint") != recipe.fingerprint() and not allow_recipe_change:
        changed = diff_recipes(ckpt.info.get("recipe") or {}, recipe.model_dump(mode="json"))
        shown = "; ".join(changed[:8]) + (" …" if len(changed) > 8 else "")
        raise RunDirError(
            f"--resume: {ckpt.path.name} was written with another recipe (changed: {shown or 'recipe'}); the resumed "
            "run would not continue the same training. Pass --allow-recipe-change to resume with the new values"
        )
    saved_data = ckpt.info.get("data_fingerprint")
    if saved_data and data_fingerprint and saved_data != data_fingerprint and not allow_recipe_change:
        raise RunDirError(
            f"--resume: the training data changed since {ckpt.path.name} was written (dataset fingerprint "
            f"{saved_data} -> {data_fingerprint}). Pass --allow-recipe-change to resume on the new data anyway"
        )
    return ckpt, newer


def verify_checkpoint_files(ckpt: Path) -> None:
    """Check every file Trainer will read from `ckpt` before resuming: no symlink out of it, every JSON and safetensors
    file whole, and each pickle-based file loadable with `weights_only=True`.

    Same loader and allowlist as Trainer (its numpy globals for RNG state), so nothing is refused that Trainer would
    accept. `mmap=True` keeps this cheap for big optimizer states: only the pickle structure is read.
    """
    import pickle

    from transformers.trainer_pt_utils import safe_globals

    from hftoolkit.integrity import unreadable_file
    from hftoolkit.modeling import unpickling_reason

    require_no_escaping_links(ckpt, ckpt, "--resume: checkpoint file")
    bad = unreadable_file(ckpt)
    if bad is not None:
        raise _unreadable(ckpt, *bad)
    for path in sorted(ckpt.iterdir()):
        if not path.is_file() or not path.name.endswith(_PICKLED) or path.name in _NOT_LOADED:
            continue
        try:
            with safe_globals():
                # Legacy (non-zip) serialization cannot be memory-mapped; the restricted unpickler applies either way.
                torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as e:
            first = unpickling_reason(e)
            raise RunDirError(
                f"--resume: refusing to load {path}: it is not plain tensor data and loading it could run code "
                f"({first}). Delete this checkpoint folder to resume from an earlier one, or start over with --overwrite"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:  # what torch raises for a cut or damaged file
            detail = str(e).splitlines()[0] if str(e) else "no data"
            raise _unreadable(ckpt, path, f"{type(e).__name__}: {detail}") from None


def _unreadable(ckpt: Path, path: Path, reason: str) -> RunDirError:
    """A damaged checkpoint file: named, with the way out (hft leaves the folder as it is)."""
    earlier = [c for c in scan(ckpt.parent) if c.complete and c.step < _step_of(ckpt)]
    way_out = (
        f"delete {ckpt} and run --resume again to continue from {earlier[-1].path.name}" if earlier
        else f"delete {ckpt} and start over with --overwrite (there is no earlier complete checkpoint)"
    )
    return RunDirError(f"--resume: cannot read {path}: {reason}; hft leaves the checkpoint as it is: {way_out}")


def _step_of(ckpt: Path) -> int:
    m = _CHECKPOINT_DIR.match(ckpt.name)
    return int(m.group(1)) if m else 0


def remove_checkpoints(checkpoints: list[Checkpoint], folder: Path) -> None:
    """Delete incomplete checkpoints: only real `checkpoint-N` folders directly inside the run's `folder`."""
    root = Path(os.path.realpath(folder))
    for c in checkpoints:
        ours = _CHECKPOINT_DIR.match(c.path.name) and Path(os.path.realpath(c.path.parent)) == root
        if not ours or c.path.is_symlink() or not c.path.is_dir():
            log.warning("not removing %s: it is not a checkpoint folder of this run", c.path)
            continue
        log.warning("removing incomplete checkpoint %s (it was being written when the run stopped)", c.path)
        shutil.rmtree(c.path, ignore_errors=True)


def truncate_metrics(path: Path, ckpt: Checkpoint) -> None:
    """Drop metrics.jsonl entries the resumed run will log again, so no step appears twice in the loss curve.

    Kept: everything logged before the checkpoint was saved (the marker counts those lines), and evaluations of the
    checkpoint's own step logged after it (the epoch-end evaluation follows a save_steps save; the resumed run
    starts after it and would not redo it). Dropped: later steps, and the summary a stopped run logs at its last step.
    """
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    counted = ckpt.info.get("metrics_lines")
    kept = []
    for i, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by the crash
        step = entry.get("step", 0)
        before_save = i < counted if isinstance(counted, int) else step <= ckpt.step
        if before_save or (step == ckpt.step and any(k.startswith("eval_") for k in entry)):
            kept.append(line)
    if len(kept) < len(lines):
        log.info("metrics.jsonl: dropping %d entries logged after step %d", len(lines) - len(kept), ckpt.step)
        write_atomic(path, "".join(kept))  # a fresh temp file: never writes through a link someone left there


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ----------------------------------------------------------------------------------------------------------------------
# Callbacks


class CheckpointMarker(TrainerCallback):
    """Writes hft_checkpoint.json into each checkpoint once it is whole; only marked checkpoints are resumed from.

    on_save runs after Trainer's `_save_checkpoint` returned on this rank; the barrier waits for the other ranks'
    own files (rng_state_<rank>.pth, FSDP/DeepSpeed shards), then the main process flushes everything to disk and
    writes the marker last, atomically. `loss_sum` (set by ResumableTrainer) gives the summed training loss so far.
    """

    def __init__(self, *, run_id: str, recipe: Any, data_fingerprint: str | None, metrics: Path):
        self.run_id = run_id
        self.recipe = recipe
        self.data_fingerprint = data_fingerprint
        self.metrics = metrics
        self.loss_sum: Callable[[], float] | None = None

    def on_save(self, args, state, control, **kwargs):
        if _is_distributed():
            import torch.distributed as dist

            dist.barrier()
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        for f in folder.rglob("*"):
            if f.is_file():
                _fsync(f)
        lines = len(self.metrics.read_text().splitlines()) if self.metrics.is_file() else 0
        marker = folder / MARKER
        write_json(
            marker,
            {
                "complete": True,
                "step": state.global_step,
                "epoch": state.epoch,
                "run_id": self.run_id,
                "recipe_fingerprint": self.recipe.fingerprint(),
                "data_fingerprint": self.data_fingerprint,
                "world_size": args.world_size,
                "metrics_lines": lines,
                "loss_sum": self.loss_sum() if self.loss_sum is not None else None,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "hftoolkit_version": __version__,
                "recipe": self.recipe.model_dump(mode="json"),
            },
        )
        _fsync(marker)
        _fsync(folder)


class GracefulStop(TrainerCallback):
    """SIGTERM/SIGINT -> finish the current optimizer step, save a checkpoint, stop; the caller then reports it.

    Use as a context manager around `trainer.train()` (signal handlers can only be installed from the main thread).
    With several processes the ranks agree on the step to stop at (an all-reduce of the signal number over a gloo
    group, started at one step and read at the next so it never stalls the GPU); otherwise one rank could save while
    another trains on. Outside a launcher a second signal stops at once. Under torchrun/accelerate launch a repeated
    signal is ignored: the launcher forwards the user's signal to every worker, and ends them itself (SIGKILL after
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default) if they take too long.
    """

    def __init__(self) -> None:
        self.received: int | None = None  # first signal this process got
        self.stopped_by: str | None = None  # signal name the ranks agreed to stop on
        self.stopped_step: int | None = None
        self._previous: dict[int, Any] = {}
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._distributed = False

    def __enter__(self) -> GracefulStop:
        _SIGNAL_SEEN.clear()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.stopped_by or "SIGTERM"))

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            _SIGNAL_SEEN.set()
            if int(os.environ.get("RANK", "0")) == 0:
                log.warning(
                    "%s received: finishing the current step, saving a checkpoint, then stopping%s",
                    signal.Signals(signum).name,
                    "" if _under_launcher() else " (send it again to stop at once, without a checkpoint)",
                )
            return
        if _under_launcher():
            return
        self.__exit__()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)

    def on_train_begin(self, args, state, control, **kwargs):
        self._distributed = _is_distributed()
        if self._distributed:
            import torch.distributed as dist

            # A CPU-side group: the flag exchange must not queue behind (or synchronise with) NCCL work.
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def on_step_end(self, args, state, control, **kwargs):
        agreed = self._agree(self.received or 0)
        if agreed:
            self.stopped_by = signal.Signals(agreed).name
            self.stopped_step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_by:
            # Leaving the loop still ends the epoch; its evaluation would only spend the shutdown grace period.
            control.should_evaluate = False
            control.should_save = False
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None

    def _agree(self, local: int) -> int:
        if not self._distributed:
            return local
        import torch.distributed as dist

        agreed = 0
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            agreed = int(flag.item())
        flag = torch.tensor([local], dtype=torch.int64)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return agreed


def _under_launcher() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


# ----------------------------------------------------------------------------------------------------------------------
# TEST-ONLY fault injection


class FaultInjection(TrainerCallback):
    """TEST-ONLY: simulated faults for the resume and multi-process tests. Never set these in real runs.

    HFT_TEST_FAIL_RANK=R          raise on rank R only, at the end of step HFT_TEST_FAIL_STEP (default 1)
    HFT_TEST_FAIL_AFTER_EVAL=S    raise (every rank) right after the evaluation at step S was logged (with
                                  eval_strategy epoch: an exception at that epoch's boundary)
    HFT_TEST_PAUSE_AT_STEP=S      at the end of step S, print "HFT_TEST paused at step S" to stderr and sleep until a
                                  signal arrives (SIGTERM/SIGINT tests) or the process is killed (SIGKILL tests)

    Installed only when one of these variables is set (`from_env`), after CheckpointMarker and before GracefulStop.
    """

    def __init__(self, env: dict[str, str]):
        self.fail_rank = int(env["HFT_TEST_FAIL_RANK"]) if "HFT_TEST_FAIL_RANK" in env else None
        self.fail_step = int(env.get("HFT_TEST_FAIL_STEP", "1"))
        self.fail_after_eval = int(env["HFT_TEST_FAIL_AFTER_EVAL"]) if "HFT_TEST_FAIL_AFTER_EVAL" in env else None
        self.pause_at = int(env["HFT_TEST_PAUSE_AT_STEP"]) if "HFT_TEST_PAUSE_AT_STEP" in env else None

    @classmethod
    def from_env(cls) -> FaultInjection | None:
        keys = ("HFT_TEST_FAIL_RANK", "HFT_TEST_FAIL_AFTER_EVAL", "HFT_TEST_PAUSE_AT_STEP")
        return cls(dict(os.environ)) if any(k in os.environ for k in keys) else None

    def on_step_end(self, args, state, control, **kwargs):
        if self.fail_rank is not None and args.process_index == self.fail_rank and state.global_step == self.fail_step:
            raise RuntimeError(f"HFT_TEST_FAIL_RANK: injected failure on rank {self.fail_rank} at step {state.global_step}")
        if self.pause_at is not None and state.global_step == self.pause_at:
            print(f"HFT_TEST paused at step {state.global_step}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 120
            while not _SIGNAL_SEEN.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.fail_after_eval is not None and state.global_step == self.fail_after_eval:
            raise RuntimeError(f"HFT_TEST_FAIL_AFTER_EVAL: injected failure after the evaluation at step {state.global_step}")
