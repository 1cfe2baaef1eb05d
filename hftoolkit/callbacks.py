"""Trainer callbacks used by `hft finetune` (imports transformers: load only inside commands)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback


class MetricsFile(TrainerCallback):
    """Appends every Trainer log (loss, learning rate, eval metrics) to metrics.jsonl, main process only."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")
