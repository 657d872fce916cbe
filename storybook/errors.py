"""One exception hierarchy: every message says what happened and what to do next."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class StorybookError(Exception):
    """Base of all errors the CLI and the app show to a user without a traceback."""


def error_text(error: BaseException) -> str:
    """An error as a summary line shows it: storybook's own message, else the exception's type and text (a bug in
    one book or one character must not cost the others, and the line says what it was)."""
    return str(error) if isinstance(error, StorybookError) else f"{type(error).__name__}: {error}"


class InvalidNameError(StorybookError):
    """A character or book name that cannot become a safe folder name."""


class PhotoError(StorybookError):
    """One or more photos cannot be used; `problems` maps each file to what is wrong with it."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        lines = [f"{path}: {problem}" for path, problem in problems.items()]
        super().__init__("Some photos cannot be used:\n  " + "\n  ".join(lines))


class CharacterError(StorybookError):
    """A character is missing, already exists, or its files are damaged."""


class ModelError(StorybookError):
    """A base model or identity cannot be found or does not fit."""


class TrainingError(StorybookError):
    """Identity training cannot start or continue."""


class TrainingInterrupted(TrainingError):
    """Training stopped early (Ctrl-C); a checkpoint was saved and `--resume` continues from it."""


class BookError(StorybookError):
    """A book project is missing, damaged, from a newer version, or an edit would break it."""


class StoryError(StorybookError):
    """A story could not be written: the writer failed, or its story broke the rules after every retry."""


class OutputError(StorybookError):
    """A file the user asked for cannot be written there (a folder, a device, a read-only or full disk)."""


class LabError(StorybookError):
    """A consistency-lab run that cannot start: an unknown method, or a work folder already used."""


def describe_problems(error: "ValidationError") -> str:
    """A pydantic ValidationError as 'field: what is wrong; ...', without pydantic's links and input echoes."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()
    )
