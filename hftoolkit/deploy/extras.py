"""The optional packages `hft export` and `hft serve` need, checked before any work so a missing one is one line."""

from __future__ import annotations

from importlib.util import find_spec

from hftoolkit.errors import HftError

EXTRAS = {
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "serve": ("fastapi", "uvicorn", "prometheus_client"),  # + onnxruntime for export folders (the caller asks)
}


def require_extra(extra: str, *, also: tuple[str, ...] = ()) -> None:
    missing = [name for name in (*EXTRAS[extra], *also) if find_spec(name) is None]
    if missing:
        raise HftError(
            f"`hft {extra}` needs {', '.join(missing)}, which are not installed: pip install 'hftoolkit[{extra}]'"
        )
