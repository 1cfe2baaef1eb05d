"""`hft serve TARGET`: a run directory, an ONNX export or a Hub repo behind an HTTP API, with metrics and access log.

The model is loaded before the port is opened, so a wrong target fails at once with one line. SIGTERM (and the
first Ctrl-C) stops accepting connections, lets every request already accepted finish, then exits; after SIGTERM
the exit code is 0, because a drained shutdown is the normal way a server stops (Kubernetes, systemd).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from hftoolkit.deploy.limits import ServeSettings

log = logging.getLogger("hftoolkit")

GRACEFUL_SHUTDOWN_S = 60  # the longest a drain waits for in-flight requests before cancelling them
UVICORN_STARTUP_FAILED = 1  # uvicorn's exit status when it cannot listen


def serve(target: str | Path, settings: ServeSettings, *, int8: bool = False) -> None:
    from hftoolkit.deploy.extras import require_extra
    from hftoolkit.deploy.report import REPORT

    # An export folder is served with ONNX Runtime; a run directory needs only the web stack.
    require_extra("serve", also=("onnxruntime",) if (Path(target) / REPORT).is_file() else ())
    import uvicorn

    from hftoolkit.deploy.backends import open_backend
    from hftoolkit.deploy.monitoring import configure_access_log
    from hftoolkit.deploy.server import create_app
    from hftoolkit.errors import ServeError

    backend = open_backend(str(target), int8=int8)
    app = create_app(backend, settings)
    configure_access_log()
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    info = backend.info
    log.info(
        "serving %s (%s, %s) on http://%s:%d: POST /v1/predict%s, GET /healthz /metrics /docs; micro-batching up to %d "
        "inputs or %g ms", info.source, info.task, info.backend, settings.host, settings.port,
        ", POST /v1/chat/completions" if info.chat else "", settings.max_batch, settings.max_wait_ms,
    )
    # uvicorn re-raises the signal it stopped on once it has drained; this handler makes that a normal return.
    previous = signal.signal(signal.SIGTERM, _drained)
    try:
        server.run()
    except SystemExit as e:
        if e.code == UVICORN_STARTUP_FAILED:
            raise ServeError(f"cannot listen on {settings.host}:{settings.port} (see the message above); choose another --port") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    log.info("stopped: every accepted request was answered")


def _drained(signum: int, frame: Any) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""
