"""Loading metrics through the `evaluate` library.

Metrics shipped in `hftoolkit/metric_modules/` load from their local folder (offline, pinned to this code);
any other name goes to `evaluate.load(name)` as usual, which needs the Hub. Offline, that is a clear error
instead of evaluate's retries and a stack trace.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from hftoolkit.errors import MetricError
from hftoolkit.refs import OFFLINE_FLAG, hub_offline

SHIPPED_DIR = Path(__file__).parent / "metric_modules"
SHIPPED = (
    "accuracy", "f1", "precision", "recall", "perplexity", "next_token_accuracy", "seqeval", "multilabel_f1",
    "exact_match_accuracy", "mse", "pearsonr", "spearmanr",
)
# Metrics that take an `average` argument for multi-class problems.
AVERAGED = {"f1", "precision", "recall"}


@lru_cache(maxsize=None)
def load_metric(name: str) -> Any:
    import evaluate

    local = SHIPPED_DIR / name
    if (local / f"{name}.py").is_file():
        return evaluate.load(str(local))
    if Path(name).is_dir():
        if not any(Path(name).glob("*.py")):
            raise MetricError(f"metric {name!r} is a folder but not an evaluate module (no .py script in it)")
        try:
            return evaluate.load(name)
        except (OSError, ImportError, ValueError) as e:
            raise MetricError(f"cannot load the local evaluate module {name!r} ({type(e).__name__}: {e})") from None
    if hub_offline():
        raise MetricError(
            f"metric {name!r} is not shipped with hftoolkit (shipped: {', '.join(SHIPPED)}) and {OFFLINE_FLAG} "
            "stops evaluate from fetching it from the Hub; unset HF_HUB_OFFLINE, or give a local evaluate module folder"
        )
    try:
        return evaluate.load(name)
    except Exception as e:  # evaluate raises FileNotFoundError/ConnectionError/… depending on where it failed
        raise MetricError(f"cannot load metric {name!r} through evaluate.load ({type(e).__name__}: {e})") from e


def compute(names: list[str] | tuple[str, ...], predictions, references, num_labels: int | None = None, average: str = "auto") -> dict[str, float]:
    """Compute each metric; f1/precision/recall average binary for 2 classes and macro otherwise (unless told)."""
    results: dict[str, float] = {}
    for name in names:
        kwargs: dict[str, Any] = {}
        if name in AVERAGED:
            kwargs["average"] = average if average != "auto" else ("binary" if num_labels == 2 else "macro")
        try:
            out = load_metric(name).compute(predictions=predictions, references=references, **kwargs)
        except MetricError:
            raise
        except Exception as e:
            raise MetricError(f"metric {name!r} failed: {type(e).__name__}: {e}") from e
        for k, v in (out or {}).items():
            if isinstance(v, (int, float)):
                results[k] = float(v)
    return results


def recipe_metrics(recipe: Any, task: Any) -> list[str]:
    """The metrics a run scores: the recipe's `evaluation.metrics`, else the task's defaults."""
    return list(recipe.evaluation.metrics or task.default_metrics)


def check_available(names: list[str] | tuple[str, ...]) -> None:
    """Fail before training (not after hours of it) when a metric cannot be loaded."""
    for name in names:
        load_metric(name)
