"""The `storybook` command: a thin shell over the package's functions."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from storybook import registry
from storybook.errors import StorybookError
from storybook.models import DEFAULT_MODEL, load_tokenizer
from storybook.storage import HOME_ENV, data_home
from storybook.train_config import Method

app = typer.Typer(help="Make personalised picture books from a few photos of a child.", no_args_is_help=True)
character_app = typer.Typer(help="Register, train, inspect and remove characters.", no_args_is_help=True)
models_app = typer.Typer(help="Base models.", no_args_is_help=True)
app.add_typer(character_app, name="character")
app.add_typer(models_app, name="models")
console = Console()
state = {"home": None, "debug": False}

ModelOption = Annotated[str, typer.Option("--model", help="Base model: 'tiny', a local diffusers folder or a hub id.")]


@app.callback()
def main(
    home: Annotated[
        Path | None, typer.Option(help=f"Data root holding characters/ and books/ (default: ${HOME_ENV} or the cwd).")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Global options."""
    state["home"] = data_home(home)
    state["debug"] = debug


def run(action):
    """Run `action()`, printing a StorybookError as a one-line message (a traceback only with --debug)."""
    try:
        return action()
    except StorybookError as error:
        if state["debug"]:
            raise
        console.print(f"[red]Error:[/red] {error}", highlight=False)
        raise typer.Exit(1) from None


@models_app.command("make-tiny")
def make_tiny_command(directory: Path) -> None:
    """Write the tiny Stable-Diffusion-shaped pipeline (random UNet and text encoder, briefly trained VAE) to DIR."""
    from storybook.tiny_model import make_tiny

    console.print(f"Tiny model written to {make_tiny(directory)}")


@character_app.command("add")
def character_add(
    name: str,
    photos: Annotated[list[Path], typer.Option("--photos", help="3-30 photos of the child (JPEG, PNG, HEIC, ...).")],
    class_noun: Annotated[str, typer.Option(help="What it is: toddler, baby, girl, dog...")] = "toddler",
    description: Annotated[str, typer.Option(help="Appearance in words, e.g. 'curly red hair, yellow raincoat'.")] = "",
    model: ModelOption = DEFAULT_MODEL,
) -> None:
    """Register a character from photos: checks them, keeps the originals, crops them and picks its token."""

    def add():
        character = registry.add_character(
            state["home"],
            name,
            photos,
            load_tokenizer(model, state["home"]),
            class_noun=class_noun,
            description=description,
        )
        folder = registry.character_dir(state["home"], character.slug)
        console.print(f"Added [bold]{character.name}[/bold] with token '{character.token}' in {folder}")
        console.print(f"Next: storybook character train {character.slug}")

    run(add)


@character_app.command("list")
def character_list() -> None:
    """List registered characters."""

    def show_list():
        table = Table("name", "slug", "token", "class", "photos", "identity")
        for character in registry.list_characters(state["home"]):
            identity = registry.character_dir(state["home"], character.slug) / "identity" / "identity.json"
            table.add_row(
                character.name,
                character.slug,
                character.token,
                character.class_noun,
                str(len(character.photos)),
                "trained" if identity.exists() else "-",
            )
        console.print(table)

    run(show_list)


@character_app.command("show")
def character_show(name: str) -> None:
    """Show a character's record and, when trained, its identity metadata."""

    def show():
        from storybook.identity import read_identity

        character = registry.load_character(state["home"], name)
        console.print_json(character.model_dump_json())
        identity_folder = registry.character_dir(state["home"], character.slug) / "identity"
        if (identity_folder / "identity.json").exists():
            console.print_json(read_identity(identity_folder).model_dump_json(exclude={"loss_history"}))

    run(show)


@character_app.command("remove")
def character_remove(
    name: str, yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False
) -> None:
    """Delete a character and every file of it (photos, crops, identity, samples)."""
    if not yes:
        typer.confirm(f"Delete {name} and all of its photos?", abort=True)
    run(lambda: console.print(f"Removed {registry.remove_character(state['home'], name)}"))


@character_app.command("train")
def character_train(
    name: str,
    method: Annotated[Method, typer.Option(help="lora (small file) or dreambooth (full fine-tune).")] = "lora",
    model: ModelOption = DEFAULT_MODEL,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps.")] = None,
    prior_preservation: Annotated[bool | None, typer.Option("--prior-preservation/--no-prior-preservation")] = None,
    num_class_images: Annotated[int | None, typer.Option()] = None,
    train_text_encoder: Annotated[bool | None, typer.Option("--train-text-encoder/--no-train-text-encoder")] = None,
    mixed_precision: Annotated[str | None, typer.Option(help="no, fp16 or bf16 (GPU).")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing")] = None,
    snr_gamma: Annotated[float | None, typer.Option(help="Min-SNR weighting gamma (5 is common).")] = None,
    offset_noise: Annotated[float | None, typer.Option(help="Offset-noise strength (~0.1).")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Save a checkpoint every N steps.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    restart: Annotated[bool, typer.Option(help="Discard an unfinished run's checkpoint and start over.")] = False,
    export_kohya: Annotated[bool, typer.Option(help="Also write a kohya/A1111-format LoRA file.")] = False,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: the best available).")] = None,
) -> None:
    """Train the character's identity (defaults follow published practice and shrink for tiny models)."""
    given = {
        "steps": steps,
        "learning_rate": lr,
        "rank": rank,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "prior_preservation": prior_preservation,
        "num_class_images": num_class_images,
        "train_text_encoder": train_text_encoder,
        "mixed_precision": mixed_precision,
        "gradient_checkpointing": gradient_checkpointing,
        "snr_gamma": snr_gamma,
        "offset_noise": offset_noise,
        "seed": seed,
        "checkpoint_every": checkpoint_every,
    }
    overrides = {key: value for key, value in given.items() if value is not None}

    def train():
        from storybook.trainer import train_identity

        metadata = train_identity(
            state["home"],
            name,
            method,
            model,
            overrides,
            resume=resume,
            restart=restart,
            export_kohya=export_kohya,
            device=device,
        )
        folder = registry.character_dir(state["home"], metadata.character)
        console.print(
            f"Trained {metadata.method} identity of {metadata.character} in {metadata.wall_time_s:.0f} s "
            f"(photo loss {metadata.photo_loss_before:.4f} -> {metadata.photo_loss_after:.4f}): {folder / 'identity'}"
        )
        console.print(f"Samples: {folder / 'samples' / 'final.png'}")

    run(train)


@app.command()
def demo() -> None:
    """Offline demo on the CPU: build the tiny model, register a sample toddler from drawn photos, train it briefly."""

    def run_demo():
        from storybook.sample_photos import write_sample_photos
        from storybook.trainer import train_identity

        home = state["home"]
        console.print(f"Data root: {home}")
        tokenizer = load_tokenizer(DEFAULT_MODEL, home)
        if (registry.character_dir(home, "Mia") / "character.json").exists():
            registry.remove_character(home, "Mia")
        photos = write_sample_photos(home / "demo-photos")
        character = registry.add_character(
            home, "Mia", photos, tokenizer, description="2-year-old girl, curly red hair, yellow raincoat"
        )
        console.print(f"Registered Mia (token '{character.token}') from {len(photos)} sample photos")
        metadata = train_identity(home, "Mia", "lora", DEFAULT_MODEL)
        folder = registry.character_dir(home, "Mia")
        console.print(
            f"Trained Mia's LoRA: photo loss {metadata.photo_loss_before:.3f} -> {metadata.photo_loss_after:.3f} "
            f"in {metadata.wall_time_s:.0f} s\n  identity: {folder / 'identity'}\n"
            f"  samples:  {folder / 'samples' / 'final.png'}"
        )

    run(run_demo)
