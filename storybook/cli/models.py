"""`storybook models`: base models."""

from pathlib import Path

import typer

from storybook.cli.shell import app, console

models_app = typer.Typer(help="Base models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("make-tiny")
def make_tiny_command(directory: Path) -> None:
    """Write the tiny Stable-Diffusion-shaped pipeline (random UNet and text encoder, briefly trained VAE) to DIR."""
    from storybook.tiny_model import make_tiny

    console.print(f"Tiny model written to {make_tiny(directory)}")
