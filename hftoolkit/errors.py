"""Error types the user can cause. The CLI prints them as one line and exits with code 2.

Anything that is not an `HftError` is a bug (or an unexpected library failure) and is shown with its traceback.
"""

from __future__ import annotations


class HftError(Exception):
    """Base for user-facing errors: the message must say what is wrong and what to do about it."""

    exit_code = 2


class RecipeError(HftError):
    """The recipe file or a --set override is invalid. Holds every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        n = len(problems)
        head = f"{source}: {n} problem{'s' if n != 1 else ''} in the recipe"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


class DataError(HftError):
    """The dataset is missing, unreadable, or has the wrong columns or values."""


class ModelError(HftError):
    """The model cannot be found, loaded or adapted as the recipe asks."""


class HubOfflineError(HftError):
    """Something needs the Hugging Face Hub but the Hub is unreachable or HF_HUB_OFFLINE is set."""


class MetricError(HftError):
    """A metric cannot be loaded or computed."""


class RunDirError(HftError):
    """The run directory is missing, incomplete, or holds a different run."""


class UnsafePathError(HftError):
    """A path would read, write, publish or delete something outside the folder hft owns or was pointed at."""


class PushError(HftError):
    """Publishing to the Hub was refused or failed; the remote repo is left as it was."""


class RepoIdError(HftError):
    """A Hub repo id breaks the Hub's naming rules (checked before any network call)."""


class CommandLineError(HftError):
    """A command-line argument or option has a value the command cannot use (checked before anything loads)."""


class PlanError(HftError):
    """The training plan cannot be what was meant: too many optimizer steps, or accumulation over more than the data."""


class ExportError(HftError):
    """`hft export` was refused (parity, metric drop, opset, OUT_DIR) or failed; nothing was written."""


class ServeError(HftError):
    """`hft serve` cannot serve this target (e.g. a causal-LM ONNX export, which has no KV cache for generation)."""


class TrainingInterrupted(HftError):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; `hft finetune RECIPE --resume` continues it.

    The exit code is the shell's for the signal (130 for SIGINT, 143 for SIGTERM): the run did not finish.
    """

    def __init__(self, message: str, *, exit_code: int, checkpoint: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.checkpoint = checkpoint
