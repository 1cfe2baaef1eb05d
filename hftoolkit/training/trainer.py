"""The trainer `hft finetune` runs: a resumed run follows the uninterrupted one step for step and reports the same
`train_loss`.

- `ResumableMixin`: put it before any `transformers.Trainer` subclass (TRL's SFTTrainer, DPOTrainer ...) to get the
  epoch-seeded length-grouped sampler, RNG-neutral evaluation and the running sum of training losses.
  `ResumableTrainer(ResumableMixin, Trainer)` is the plain one. Trainer restarts its loss sum at zero on resume and
  reports the mean over the resumed steps only; the sum so far is written into each checkpoint's marker
  (training/callbacks.py CheckpointMarker) and picked up again by `train(resume_from_checkpoint)`.
- `EpochSeededLengthGroupedSampler`: length-grouped order drawn from (seed, epoch) alone.

Graceful stop (training/callbacks.py GracefulStop) is a callback, so it works with any of these trainers too.
Imports transformers and torch: load this module only inside commands.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import TrainOutput

from hftoolkit.run.records import CheckpointInfo
from hftoolkit.training.callbacks import CheckpointMarker

log = logging.getLogger("hftoolkit")
# Trainer's guard against dividing by zero steps in its own train_loss formula.
MIN_STEPS = 0.001


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch) alone; the training loop calls `set_epoch` before each epoch."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class ResumableMixin:
    """Trainer behaviour a resumed run needs to follow the uninterrupted one: epoch-seeded length grouping,
    RNG-neutral evaluation, and train_loss over the whole run. Mix into any transformers.Trainer subclass.

    Trainer's LengthGroupedSampler shuffles with the global torch RNG at the moment an epoch's iterator is created.
    A run resumed in the middle of a later epoch creates that iterator in a freshly seeded process (the checkpoint's
    RNG state is restored only after the skipped batches), so it would see a different order than the uninterrupted
    run did. accelerate's seedable sampler covers RandomSampler only; this is the same idea for length grouping.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._epoch_sampler: EpochSeededLengthGroupedSampler | None = None
        # The data loader's own set_epoch does not reach the sampler through accelerate's skip-batches wrapper
        # around a multi-process shard (a resumed epoch), so the epoch is also handed over at each epoch's start.
        self.add_callback(_SamplerEpoch(self))
        # Summed loss of the steps before the checkpoint this call resumed from (from its marker), and that step.
        self._loss_before, self._step_before = 0.0, 0
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, CheckpointMarker):
                callback.loss_sum = self.loss_sum

    def loss_sum(self) -> float:
        """Summed per-step training loss of every step so far, the steps of earlier (interrupted) calls included.

        Trainer's own running sum: `_total_loss_scalar` (drained at each logging step) plus `_tr_loss` (not yet logged).
        """
        pending = getattr(self, "_tr_loss", None)
        unlogged = float(pending.item()) if pending is not None else 0.0
        return self._loss_before + getattr(self, "_total_loss_scalar", 0.0) + unlogged

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> TrainOutput:
        """Trainer.train, reporting `train_loss` as the mean over the whole run's steps when resuming."""
        self._loss_before, self._step_before = 0.0, 0
        if isinstance(resume_from_checkpoint, str):
            info = CheckpointInfo.read_or_empty(Path(resume_from_checkpoint))
            if info.loss_sum is not None:
                self._loss_before, self._step_before = info.loss_sum, info.step
            else:
                log.warning(
                    "%s has no loss sum (older hft): train_loss covers the resumed steps only", resume_from_checkpoint
                )
        out = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if not self._step_before:
            return out
        loss = self._whole_run_loss()
        return TrainOutput(out.global_step, loss, {**out.metrics, "train_loss": loss})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The end-of-training summary (metrics.jsonl) says what train_results.json says.
        if self._step_before and "train_loss" in logs:
            logs["train_loss"] = self._whole_run_loss()  # in place, as Trainer.log itself adds `epoch`
        super().log(logs, start_time)

    def _whole_run_loss(self) -> float:
        # Trainer's own formula (sum / steps), over every step of the run rather than this call's.
        return (self._loss_before + self._total_loss_scalar) / max(self.state.global_step, MIN_STEPS)

    def evaluate(self, *args: Any, **kwargs: Any):
        """Evaluation leaves the training RNG streams as it found them.

        Each DataLoader iterator draws a seed from the global torch RNG. A checkpoint saved at the last step of an
        epoch (save_steps) holds the state before the epoch-end evaluation, so a run resumed from it would start
        the next epoch one draw behind the uninterrupted run (other dropout masks). Forking also means adding or
        removing evaluations does not change what training does.
        """
        accel = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
        devices = [torch.accelerator.current_device_index()] if accel is not None else []
        with torch.random.fork_rng(devices=devices):
            return super().evaluate(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            self._epoch_sampler = EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)
            return self._epoch_sampler
        return sampler


class ResumableTrainer(ResumableMixin, Trainer):
    """transformers.Trainer with hft's resume behaviour (ResumableMixin)."""


class _SamplerEpoch(TrainerCallback):
    def __init__(self, trainer: ResumableMixin):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer._epoch_sampler is not None:
            # state.epoch is the fraction of epochs done: whole at an epoch start, 1.33 when resuming into epoch 1.
            self.trainer._epoch_sampler.set_epoch(int(state.epoch or 0))
