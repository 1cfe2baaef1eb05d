"""In-process CLI helpers shared by the hardening tests: run `hft` through typer's CliRunner and check a refusal."""

from __future__ import annotations

import logging


def hft_cli(*args: object):
    """The CLI in process; the logger it points at the captured stderr is restored afterwards."""
    from typer.testing import CliRunner

    from hftoolkit.cli import app

    logger = logging.getLogger("hftoolkit")
    handlers = logger.handlers[:]
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        logger.handlers[:] = handlers


def refused(result, *fragments: str) -> str:
    """Exit code 2, exactly one `error:` line, no traceback, every fragment in the output; returns the output."""
    text = result.output
    assert result.exit_code == 2, text
    assert "Traceback" not in text and text.count("error: ") == 1, text
    for fragment in fragments:
        assert fragment in text, text
    return text


def refused_line(result, *expected: str) -> str:
    """Exit code 2, no traceback, and every expected fragment in the `error:` line; returns that line."""
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out, out
    line = next(line for line in out.splitlines() if line.startswith("error: "))
    for fragment in expected:
        assert fragment in line, line
    return line
