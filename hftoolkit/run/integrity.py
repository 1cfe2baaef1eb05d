"""Cheap whole-file checks of saved model and checkpoint folders: every JSON file parses and every safetensors
header covers its file, so a truncated or corrupt file is named before a loader trips over it with a traceback.

Only headers are read (safetensors validates that the header's offsets cover exactly the file's length), so this
costs milliseconds even for large weights. Light imports: safetensors is loaded only when a folder holds weights.
"""

from __future__ import annotations

import json
from pathlib import Path

CHECKED_SUFFIXES = (".json", ".safetensors")


def unreadable_file(folder: str | Path) -> tuple[Path, str] | None:
    """The first JSON or safetensors file directly in `folder` that cannot be read, with why; None when all can."""
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix in CHECKED_SUFFIXES:
            reason = _json_problem(path) if path.suffix == ".json" else _safetensors_problem(path)
            if reason:
                return path, reason
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        return f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {e.start})"
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except SafetensorError as e:
        return f"truncated or corrupt safetensors file ({e})"
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    return None
