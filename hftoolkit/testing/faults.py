"""TEST-ONLY fault injection for the resume and multi-process tests, driven by HFT_TEST_* environment variables.

Never set these in real runs. `hft finetune` imports this module only when one of them is set
(training/callbacks.py `extra_callbacks_from_env`, asked through launch.extra_callbacks_requested):

    HFT_TEST_FAIL_RANK=R          raise on rank R only, at the end of step HFT_TEST_FAIL_STEP (default 1)
    HFT_TEST_FAIL_AFTER_EVAL=S    raise (every rank) right after the evaluation at step S was logged (with
                                  eval_strategy epoch: an exception at that epoch's boundary)
    HFT_TEST_PAUSE_AT_STEP=S      at the end of step S, print "HFT_TEST paused at step S" to stderr and sleep until a
                                  signal arrives (SIGTERM/SIGINT tests) or the process is killed (SIGKILL tests)

The callback runs after CheckpointMarker (a checkpoint is marked complete before a fault hits) and before
GracefulStop (which then sees a signal that arrived during the pause).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Mapping

from transformers import TrainerCallback

FAIL_RANK, FAIL_STEP = "HFT_TEST_FAIL_RANK", "HFT_TEST_FAIL_STEP"
FAIL_AFTER_EVAL = "HFT_TEST_FAIL_AFTER_EVAL"
PAUSE_AT_STEP = "HFT_TEST_PAUSE_AT_STEP"
PAUSE_LIMIT_S = 120  # a paused test run that no signal reaches ends on its own
PAUSE_POLL_S = 0.05


def _int(env: Mapping[str, str], key: str) -> int | None:
    return int(env[key]) if key in env else None


class FaultInjection(TrainerCallback):
    """Simulated faults (see the module docstring for the variables)."""

    def __init__(self, env: Mapping[str, str], signal_seen: threading.Event):
        self.fail_rank = _int(env, FAIL_RANK)
        self.fail_step = int(env.get(FAIL_STEP, "1"))
        self.fail_after_eval = _int(env, FAIL_AFTER_EVAL)
        self.pause_at = _int(env, PAUSE_AT_STEP)
        self.signal_seen = signal_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.fail_rank is not None and args.process_index == self.fail_rank and state.global_step == self.fail_step:
            raise RuntimeError(f"{FAIL_RANK}: injected failure on rank {self.fail_rank} at step {state.global_step}")
        if self.pause_at is not None and state.global_step == self.pause_at:
            print(f"HFT_TEST paused at step {state.global_step}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + PAUSE_LIMIT_S
            while not self.signal_seen.is_set() and time.monotonic() < deadline:
                time.sleep(PAUSE_POLL_S)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.fail_after_eval is not None and state.global_step == self.fail_after_eval:
            raise RuntimeError(f"{FAIL_AFTER_EVAL}: injected failure after the evaluation at step {state.global_step}")


def callbacks_from_env(signal_seen: threading.Event) -> list[TrainerCallback]:
    """The fault callbacks this process's environment asks for."""
    return [FaultInjection(os.environ, signal_seen)]
