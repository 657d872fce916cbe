"""Quiet model libraries: storybook reports in its own words and shows its own progress."""

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LIBRARY_VERBOSITY = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}  # read when they are imported


def quiet_library_logs() -> None:
    """Silence the notes the model libraries log (e.g. transformers' "requires torchvision") in this process and the
    ones it starts, for libraries imported from now on; nothing is imported, so every command can afford it."""
    for variable, level in LIBRARY_VERBOSITY.items():
        os.environ.setdefault(variable, level)


def quiet_libraries() -> None:
    """Silence the model libraries' own notes, warnings and loading bars in this process: the CLI's (unless
    `storybook --debug`), the app's and every Ray worker's (whose output the driver does not show)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    quiet_library_logs()
    diffusers_logging.set_verbosity_error()  # library notes such as "no LoRA keys for the text encoder"
    transformers_logging.set_verbosity_error()  # long prompts: `render` reports them in its own words
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components"
    transformers_logging.disable_progress_bar()  # "Loading weights" of every text and image encoder
    warnings.filterwarnings("ignore", module="(diffusers|transformers|peft|torch|accelerate)")


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Within the block, send what is written to the process's stderr (file descriptor 2) to /dev/null: Ray's C++
    core logs its retries there, past Python's logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
