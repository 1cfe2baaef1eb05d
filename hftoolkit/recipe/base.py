"""What every recipe section shares, for the schema (recipe/schema.py) and for tasks that add their own options.

Kept apart from the schema because the schema imports the task modules (to ask them for their columns and
options), and a task module that declares a section imports this: the dependency points one way.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A recipe section: unknown keys are errors (with the nearest valid key suggested by recipe/loading.py)."""

    # inf and nan (`.inf`, `1e400`) are refused: no setting means them, and they crash or hang later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def no_blank_entries(values: list[str] | None, what: str, hint: str) -> list[str] | None:
    """Names and texts in lists must say something: an empty one is read as `.` (a folder) or matches nothing."""
    blank = [i for i, value in enumerate(values or []) if not value.strip()]
    if blank:
        raise ValueError(f"{what} {blank[0]} is empty or only whitespace; {hint}")
    return values
