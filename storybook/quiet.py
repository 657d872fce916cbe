"""Quiet model libraries: storybook reports in its own words and shows its own progress."""

import warnings


def quiet_libraries() -> None:
    """Silence the model libraries' own notes, warnings and loading bars in this process: the CLI's (unless
    `storybook --debug`), the app's and every Ray worker's (whose output the driver does not show)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # library notes such as "no LoRA keys for the text encoder"
    transformers_logging.set_verbosity_error()  # long prompts: `render` reports them in its own words
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components"
    transformers_logging.disable_progress_bar()  # "Loading weights" of every text and image encoder
    warnings.filterwarnings("ignore", module="(diffusers|transformers|peft|torch|accelerate)")
