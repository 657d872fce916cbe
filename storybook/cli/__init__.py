"""The `storybook` command (pyproject: storybook = "storybook.cli:app"): a thin shell over the package's functions,
one module per command group: character, story, make (render, choose, export, make, demo), config (config, doctor),
lab, models and serve (the app); shell.py holds the group itself and how every command runs.

Commands import the heavy parts they run (torch, diffusers, the lab) inside their functions, for start-up speed:
`storybook --help` and the quick commands load no model library. Never to hide an import circle: `lint-imports`
checks the layers, these imports included."""

from storybook.cli import character, config, lab, make, models, serve, story  # noqa: F401  (each adds its commands)
from storybook.cli.serve import app_command_line
from storybook.cli.shell import app

__all__ = ["app", "app_command_line"]
