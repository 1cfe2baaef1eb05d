"""Which keys of a resolved recipe changed: for the messages of `--resume` and `--overwrite` checks.

One formatter, used by the run directory checks and the checkpoint checks alike, so both name changes the same way.
"""

from __future__ import annotations

# A message lists this many changed keys, then "…": enough to see what happened, one line still.
SHOWN_CHANGES = 8
# What a message says changed when the fingerprints differ but no key does (a recipe saved by another version).
UNNAMED_CHANGE = "recipe"


def diff_recipes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved recipes, as `key: old -> new`."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b, dotted = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changed += diff_recipes(a, b, dotted + ".")
        elif a != b:
            changed.append(f"{dotted}: {a!r} -> {b!r}")
    return changed


def format_recipe_changes(old: dict, new: dict) -> str:
    """`training.epochs: 3 -> 2; lora.r: 8 -> 16`, at most SHOWN_CHANGES keys then ` …`; "recipe" when no key differs."""
    changed = diff_recipes(old, new)
    shown = "; ".join(changed[:SHOWN_CHANGES]) + (" …" if len(changed) > SHOWN_CHANGES else "")
    return shown or UNNAMED_CHANGE
