"""Trainer callbacks of `hft finetune`: metrics.jsonl, complete-marked checkpoints, graceful stop, TensorBoard in
the run directory. Imports transformers and torch: load this module only inside commands.

- `MetricsFile`: every Trainer log as one JSON line (the loss curve and `--resume`'s truncation read it).
- `CheckpointMarker`: Trainer writes checkpoint folders file by file and never says when one is whole, so a run
  killed mid-save leaves a folder `get_last_checkpoint` would happily resume from. We add `hft_checkpoint.json`
  (run/records.py `CheckpointInfo`) once every rank has finished writing; only marked folders resume.
- `GracefulStop`: turns SIGTERM/SIGINT into "finish this step, save a checkpoint, stop". transformers'
  `enable_jit_checkpoint` covers SIGTERM only, waits a fixed 3 s, saves without the ranks agreeing on a step, and
  then lets `train()` return as if training had finished, so the caller cannot tell the run is incomplete.
- `RunTensorBoard`: transformers' TensorBoardCallback writing into the run's tensorboard/ folder.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from hftoolkit import __version__
from hftoolkit.launch import extra_callbacks_requested, is_main_process, under_launcher
from hftoolkit.run.records import CheckpointInfo, utc_now

log = logging.getLogger("hftoolkit")

# Set by GracefulStop's handler: anything waiting inside a training step can return as soon as a signal arrived.
SIGNAL_SEEN = threading.Event()


class MetricsFile(TrainerCallback):
    """Appends every Trainer log (loss, learning rate, eval metrics) to metrics.jsonl, main process only."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class RunTensorBoard(TensorBoardCallback):
    """TensorBoard events in the run's own folder (the `logging_dir` TensorBoardCallback otherwise takes from the
    TENSORBOARD_LOGGING_DIR variable). A resumed run logs the steps after its checkpoint again: `purge_step` makes
    TensorBoard hide the first attempt's events from that step on."""

    def __init__(self, logging_dir: Path, purge_step: int | None = None):
        super().__init__()
        self.logging_dir = str(logging_dir)
        self.purge_step = purge_step

    def _init_summary_writer(self, args):
        self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)


def extra_callbacks_from_env() -> list[TrainerCallback]:
    """Callbacks the process environment asks for (the test suite's fault injection); none in a real run.

    The module is imported only when one of its variables is set, so a real run never loads it.
    """
    if not extra_callbacks_requested():
        return []
    from hftoolkit.testing.faults import callbacks_from_env

    return callbacks_from_env(SIGNAL_SEEN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CheckpointMarker(TrainerCallback):
    """Writes hft_checkpoint.json into each checkpoint once it is whole; only marked checkpoints are resumed from.

    on_save runs after Trainer's `_save_checkpoint` returned on this rank; the barrier waits for the other ranks'
    own files (rng_state_<rank>.pth, FSDP/DeepSpeed shards), then the main process flushes everything to disk and
    writes the marker last, atomically. `loss_sum` (set by ResumableMixin) gives the summed training loss so far.
    """

    def __init__(self, *, run_id: str, recipe: Any, data_fingerprint: str | None, metrics: Path):
        self.run_id = run_id
        self.recipe = recipe
        self.data_fingerprint = data_fingerprint
        self.metrics = metrics
        self.loss_sum: Callable[[], float] | None = None

    def on_save(self, args, state, control, **kwargs):
        if is_distributed():
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
        marker = CheckpointInfo(
            complete=True,
            step=state.global_step,
            epoch=state.epoch,
            run_id=self.run_id,
            recipe_fingerprint=self.recipe.fingerprint(),
            data_fingerprint=self.data_fingerprint,
            world_size=args.world_size,
            metrics_lines=len(self.metrics.read_text().splitlines()) if self.metrics.is_file() else 0,
            loss_sum=self.loss_sum() if self.loss_sum is not None else None,
            saved=utc_now(),
            hftoolkit_version=__version__,
            recipe=self.recipe.model_dump(mode="json"),
        )
        marker.write(folder / CheckpointInfo.filename)
        _fsync(folder / CheckpointInfo.filename)
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
        SIGNAL_SEEN.clear()
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
            SIGNAL_SEEN.set()
            if is_main_process():
                log.warning(
                    "%s received: finishing the current step, saving a checkpoint, then stopping%s",
                    signal.Signals(signum).name,
                    "" if under_launcher() else " (send it again to stop at once, without a checkpoint)",
                )
            return
        if under_launcher():
            return
        self.__exit__()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)

    def on_train_begin(self, args, state, control, **kwargs):
        self._distributed = is_distributed()
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
