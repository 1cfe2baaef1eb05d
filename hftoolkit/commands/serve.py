"""`hft serve TARGET`: a run directory, an ONNX export or a Hub repo behind an HTTP API, with metrics and access log.

The model is loaded and the port bound before anything is announced, so a wrong target or a busy port is one
line. SIGTERM (and the first Ctrl-C) stops accepting connections, lets every request already accepted finish,
then exits; after SIGTERM the exit code is 0, because a drained shutdown is how a server normally stops
(Kubernetes, systemd).
"""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path
from typing import Any

from hftoolkit.deploy.limits import ServeSettings

log = logging.getLogger("hftoolkit")

GRACEFUL_SHUTDOWN_S = 60  # the longest a drain waits for in-flight requests before cancelling them


def serve(target: str | Path, settings: ServeSettings, *, int8: bool = False) -> None:
    from hftoolkit.deploy.extras import require_extra
    from hftoolkit.deploy.report import REPORT

    # An export folder is served with ONNX Runtime; a run directory needs only the web stack.
    require_extra("serve", also=("onnxruntime",) if (Path(target) / REPORT).is_file() else ())
    import uvicorn

    from hftoolkit.deploy.backends import open_backend
    from hftoolkit.deploy.monitoring import configure_access_log
    from hftoolkit.deploy.server import create_app

    backend = open_backend(str(target), int8=int8)
    app = create_app(backend, settings)
    configure_access_log()
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    sock = _listen(settings.host, settings.port)  # before the banner: a busy port is one line, not a half start
    info = backend.info
    log.info(
        "serving %s (%s, %s) on http://%s:%d: POST /v1/predict%s, GET /healthz /metrics /docs; micro-batching up to %d "
        "inputs or %g ms", info.source, info.task, info.backend, settings.host, settings.port,
        ", POST /v1/chat/completions" if info.chat else "", settings.max_batch, settings.max_wait_ms,
    )
    # uvicorn re-raises the signal it stopped on once it has drained; this handler makes that a normal return.
    previous = signal.signal(signal.SIGTERM, _drained)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    log.info("stopped: every accepted request was answered")


def _listen(host: str, port: int) -> socket.socket:
    from hftoolkit.errors import ServeError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    return sock


def _drained(signum: int, frame: Any) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""
