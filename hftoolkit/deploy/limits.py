"""`hft serve` settings and their defaults, in a module light enough for the CLI to import at start-up."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_INPUTS = 64
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = DEFAULT_MAX_BATCH  # inputs per model call; 1 turns micro-batching off
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS  # longest the first request of a batch waits for others
    max_inputs: int = DEFAULT_MAX_INPUTS  # per request (more: 422)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # per request (more: 413)
