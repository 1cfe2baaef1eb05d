"""Tiny trained runs, their ONNX exports and HTTP servers for tests/test_export.py and tests/test_serve.py.

Runs and exports are built once per test session in the session's base temp folder, whichever module asks first
(`session_built`), so the two modules share one training and one export. Servers are real HTTP on 127.0.0.1:
`hft serve` in a subprocess (`CliServer`, the command as users run it), or the same app under uvicorn in a thread
of the test process (`ThreadServer`, no second copy of torch to import) where only the app is under test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
from typer.testing import CliRunner

from hftoolkit.cli import app
from tests.fixtures import REPO, build_tiny_llama, causal_lm_recipe, image_cls_recipe, lm_chat_data, text_cls_recipe

FAST = {"epochs": 1, "save_strategy": "no", "report_to": ["none"], "seed": 7}
SERVER_START_S = 180  # loading torch and the model in a fresh process on a busy 2-core machine
runner = CliRunner()


def hft(*args: Any) -> Any:
    """The real CLI in this process (typer's CliRunner); raises with its output unless it exits 0."""
    result = runner.invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        raise AssertionError(f"hft {' '.join(map(str, args))} exited {result.exit_code}\n{result.output}\n{result.exception!r}")
    return result


def hft_fails(*args: Any) -> Any:
    """The CLI in this process, expected to refuse with one `error:` line and exit code 2."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def session_built(tmp_path_factory: Any, name: str, build: Callable[[Path], None]) -> Path:
    """`build(folder)` once per session; later callers (other modules) get the finished folder."""
    base = tmp_path_factory.getbasetemp()
    folder, done = base / f"deploy-{name}", base / f"deploy-{name}.done"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        build(folder)
        done.touch()
    return folder


def text_run(tmp_path_factory: Any, tiny_bert: Path, reviews: dict[str, Path]) -> Path:
    def build(run: Path) -> None:
        recipe = text_cls_recipe(run.parent / "deploy-text.yaml", tiny_bert, reviews, run, training=FAST)
        hft("finetune", recipe)

    return session_built(tmp_path_factory, "text-run", build)


def text_export(tmp_path_factory: Any, run: Path) -> Path:
    return session_built(tmp_path_factory, "text-export", lambda out: hft("export", run, "--onnx", out, "--quantize", "int8"))


def chat_run(tmp_path_factory: Any) -> Path:
    def build(run: Path) -> None:
        tmp = run.parent / "deploy-chat-inputs"
        model, data = build_tiny_llama(tmp / "llama"), lm_chat_data(tmp / "chat")
        recipe = causal_lm_recipe(
            tmp / "chat.yaml", model, data, run, dataset={"columns": {"messages": "messages"}},
            training={**FAST, "eval_strategy": "no"}, generation={"max_new_tokens": 8},
        )
        hft("finetune", recipe)

    return session_built(tmp_path_factory, "chat-run", build)


def chat_export(tmp_path_factory: Any, run: Path) -> Path:
    return session_built(tmp_path_factory, "chat-export", lambda out: hft("export", run, "--onnx", out))


def image_run(tmp_path_factory: Any, tiny_vit: Path, colour_images: Path) -> Path:
    def build(run: Path) -> None:
        hft("finetune", image_cls_recipe(run.parent / "deploy-image.yaml", tiny_vit, colour_images, run, training=FAST))

    return session_built(tmp_path_factory, "image-run", build)


def predict_json(run: Path, *inputs: str, options: tuple[str, ...] = ()) -> list[dict]:
    """What `hft predict RUN INPUT... --json` prints, parsed."""
    out = hft("predict", run, *inputs, *options, "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliServer:
    """`python -m hftoolkit serve TARGET --port P ...` in a subprocess; stderr (log + access log) goes to a file."""

    def __init__(self, target: Path, log: Path, *args: str):
        self.port = free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hftoolkit", "serve", str(target), "--port", str(self.port), *args],
                cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=stderr,
            )
        wait_healthy(self.url, lambda: self.proc.poll() is None, log)

    def access_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith('{"time"')]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


class ThreadServer:
    """The serve app (create_app) under uvicorn in a daemon thread, on a socket bound before it starts."""

    def __init__(self, app_: Any):
        import uvicorn

        from hftoolkit.deploy.monitoring import configure_access_log

        configure_access_log()  # as `hft serve` does (else the lines go to whatever handler a CLI run left behind)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app_, log_config=None, access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        wait_healthy(self.url, self.thread.is_alive, None)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def wait_healthy(url: str, alive: Callable[[], bool], log: Path | None) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"the server at {url} exited while starting:\n{log.read_text()[-3000:] if log else ''}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server at {url} did not become healthy in {SERVER_START_S} s")
