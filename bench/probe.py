"""Instrumentation inside a child run: step times, tokens, samples, memory, MFU, for hft and baseline alike.

`Probe.install()` wraps `transformers.Trainer` itself (training_step counts each batch, a callback stamps each
optimizer step), so the hft pipeline and the baseline script are measured by exactly the same code without
either of them knowing about it.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any

# Dense bf16 tensor-core peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name(). Override with
# BENCH_PEAK_TFLOPS for other devices or precisions.
GPU_PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM; checked after "H100 PCIe"
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "V100": 125.0,  # fp16 tensor cores; V100 has no bf16
    "T4": 65.0,  # fp16 tensor cores
}


def gpu_peak_flops(device_name: str) -> float | None:
    if os.environ.get("BENCH_PEAK_TFLOPS"):
        return float(os.environ["BENCH_PEAK_TFLOPS"]) * 1e12
    for key, tflops in GPU_PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None


def rss_mb() -> float:
    import psutil  # an accelerate dependency

    return psutil.Process().memory_info().rss / 2**20


class Probe:
    def __init__(self) -> None:
        self.launched_at = float(os.environ.get("BENCH_LAUNCHED_AT", time.time()))
        self.tokens = 0  # non-padding tokens seen by training steps
        self.padded_tokens = 0  # every position of every batch, padding included
        self.samples = 0
        self.steps: list[tuple[float, int, int, int]] = []  # (time, tokens, padded tokens, samples) after each step
        self.train_begin: float | None = None
        self.params: int | None = None
        self.rss_at_train_start: float | None = None
        self.rss_peak_in_training = 0.0
        self._sampling = threading.Event()
        self.cuda = False
        self.extra: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------------------------

    def count(self, inputs: dict[str, Any]) -> None:
        ids = inputs.get("input_ids")
        if ids is None:  # images: samples only
            first = next((v for v in inputs.values() if hasattr(v, "shape")), None)
            self.samples += int(first.shape[0]) if first is not None else 0
            return
        self.padded_tokens += ids.numel()
        mask = inputs.get("attention_mask")
        if mask is not None:
            self.tokens += int(mask.sum())
            self.samples += int(ids.shape[0])
        elif inputs.get("position_ids") is not None:
            # Packed rows: each example starts at position 0; a row's trailing segment whose labels are all -100 is
            # the padding that fills it to the batch's width (hftoolkit.tasks._packing.pack_rows).
            positions, labels = inputs["position_ids"], inputs.get("labels")
            pad_tokens = pad_segments = 0
            for r in range(positions.shape[0]):
                start = int((positions[r] == 0).nonzero().max())
                if start > 0 and labels is not None and bool((labels[r, start:] == -100).all()):
                    pad_tokens += positions.shape[1] - start
                    pad_segments += 1
            self.tokens += ids.numel() - pad_tokens
            self.samples += int((positions == 0).sum()) - pad_segments
        else:
            self.tokens += ids.numel()
            self.samples += int(ids.shape[0])

    def install(self) -> None:
        """Instrument every Trainer created in this process from now on."""
        import transformers
        from transformers import Trainer, TrainerCallback

        probe = self

        class _Stamp(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                probe._train_begin(model)

            def on_step_end(self, args, state, control, **kwargs):
                if probe.cuda:
                    import torch

                    torch.cuda.synchronize()
                probe.steps.append((time.time(), probe.tokens, probe.padded_tokens, probe.samples))

            def on_train_end(self, args, state, control, **kwargs):
                probe._sampling.clear()

        original_step = Trainer.training_step
        original_init = Trainer.__init__

        @functools.wraps(original_step)
        def training_step(trainer, model, inputs, num_items_in_batch=None):
            probe.count(inputs)
            return original_step(trainer, model, inputs, num_items_in_batch)

        @functools.wraps(original_init)
        def init(trainer, *args, **kwargs):
            original_init(trainer, *args, **kwargs)
            trainer.add_callback(_Stamp())

        Trainer.training_step = training_step
        Trainer.__init__ = init
        self.extra["transformers"] = transformers.__version__

    def _train_begin(self, model: Any) -> None:
        import torch

        self.train_begin = time.time()
        self.cuda = torch.cuda.is_available()
        if model is not None:
            self.params = sum(p.numel() for p in model.parameters())
            # Bytes of the weights and buffers as loaded (4-bit layers count as stored), whatever RSS says of them.
            footprint = getattr(model, "get_memory_footprint", None)
            if footprint is not None:
                self.extra["weights_mb"] = footprint() / 2**20
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.rss_at_train_start = rss_mb()
        self.rss_peak_in_training = self.rss_at_train_start
        self._sampling.set()

        def sample() -> None:
            # Peak RSS of the training loop alone (the process peak also covers data loading and model loading).
            while self._sampling.is_set():
                self.rss_peak_in_training = max(self.rss_peak_in_training, rss_mb())
                time.sleep(0.01)

        threading.Thread(target=sample, daemon=True).start()

    # ------------------------------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        self._sampling.clear()
        out: dict[str, Any] = dict(self.extra)
        if not self.steps:
            return out
        t1, tok1, pad1, s1 = self.steps[0]
        tn, tokn, padn, sn = self.steps[-1]
        out["steps"] = len(self.steps)
        out["time_to_first_step_s"] = t1 - self.launched_at
        if len(self.steps) >= 2 and tn > t1:
            # Steady state: from the end of step 1 to the end of the last step (data loading between steps included;
            # step 1's one-off costs are in time_to_first_step_s).
            dt = tn - t1
            out["samples_per_s"] = (sn - s1) / dt
            out["tokens_per_s"] = (tokn - tok1) / dt
            out["padded_tokens_per_s"] = (padn - pad1) / dt
        out["tokens_total"] = tokn
        out["padded_tokens_total"] = padn
        out["samples_total"] = sn
        out["train_loop_s"] = tn - (self.train_begin or t1)
        if self.rss_at_train_start is not None:
            out["rss_at_train_start_mb"] = self.rss_at_train_start
            out["train_peak_rss_mb"] = self.rss_peak_in_training
            out["train_rss_increase_mb"] = self.rss_peak_in_training - self.rss_at_train_start
        if self.params:
            out["parameters"] = self.params
        if self.cuda:
            import torch

            name = torch.cuda.get_device_name(0)
            out["gpu"] = name
            out["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            peak = gpu_peak_flops(name)
            if peak and self.params and "tokens_per_s" in out:
                # 6·N FLOPs per token (forward + backward) with N every parameter, frozen ones included: the usual
                # convention. With LoRA the frozen weights need no weight gradients, so this overstates the work.
                out["mfu"] = 6 * self.params * out["tokens_per_s"] / peak
        return out
