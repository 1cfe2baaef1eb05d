"""Task registry: recipe `task:` name -> the module implementing it (the only registry in hft).

Each task is one file exposing `TASK`, an instance of a `hftoolkit.tasks.base.TaskBase` subclass. Modules are
imported on first use; they import only light modules at their top, because the recipe schema asks them for their
column roles and recipe checks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hftoolkit.tasks.base import Task

TASKS: dict[str, str] = {
    "text-classification": "hftoolkit.tasks.text_classification",
    "causal-lm": "hftoolkit.tasks.causal_lm",
    "image-classification": "hftoolkit.tasks.image_classification",
    "token-classification": "hftoolkit.tasks.token_classification",
}


def get_task(name: str) -> Task:
    from hftoolkit.errors import HftError

    if name not in TASKS:
        raise HftError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    try:
        module = importlib.import_module(TASKS[name])
    except ModuleNotFoundError as e:
        if e.name == TASKS[name]:
            raise HftError(f"task {name!r} is not implemented in this version of hftoolkit") from None
        raise
    return module.TASK
