"""The `storybook` command: a thin shell over the package's functions."""

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from tqdm import tqdm
from typer.core import TyperGroup

# Commands import the heavy parts they run (torch, diffusers, the lab) inside their functions, for start-up speed:
# `storybook --help` and the quick commands load no model library. Never to hide an import circle: `lint-imports`
# checks the layers, these imports included.
from storybook import registry
from storybook.book import (
    BOOK_FILE,
    MAX_PAGES,
    MIN_PAGES,
    Book,
    Pronouns,
    Scheduler,
    book_dir,
    list_books,
    load_book,
    save_book,
)
from storybook.config import H94_IMAGE_ENCODER, H94_WEIGHT, X4_UPSCALER, Dtype, configured_model, load_config
from storybook.errors import (
    BookError,
    CharacterError,
    ModelError,
    PhotoError,
    StorybookError,
    describe_problems,
    error_text,
)
from storybook.identities.training_config import IdentityMethod
from storybook.printing.book_pdf import Layout, Profile, Trim, export_book
from storybook.quiet import quiet_libraries, quiet_library_logs
from storybook.render.print_pictures import Upscaler
from storybook.storage import HOME_ENV, MINI_MODEL, MODEL_ENV, data_home, slugify
from storybook.story import book_edits
from storybook.story.llm_writer import DEFAULT_LLM_MODEL, LLMSettings
from storybook.story.stage import DEFAULT_STYLE, StoryRequest, Writer, default_writer, write_story
from storybook.text import shown

PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep
if TYPE_CHECKING:
    from storybook.captions import Captioner


class StorybookGroup(TyperGroup):
    """The `storybook` command group: a bad option or argument is said as every other error is, one line on stderr
    and exit code 1 (rather than click's usage box and exit code 2)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Run the command line given (see click's `main`)."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            outcome = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as error:  # click's errors: a bad option or argument, an unknown command
            if type(error).__name__ == "NoArgsIsHelpError":  # the help is shown already (typer tells it so too)
                sys.exit(error.exit_code)
            context = getattr(error, "ctx", None)
            hint = f" (`{context.command_path} --help` shows the options)" if context else ""
            say_error(error.format_message() + hint)
            sys.exit(1)
        except typer.Abort:  # a question answered no
            say_error("Stopped; nothing was changed.")
            sys.exit(1)
        sys.exit(outcome if isinstance(outcome, int) else 0)  # an Exit's code (click returns it here), else 0


app = typer.Typer(
    cls=StorybookGroup, help="Make personalised picture books from a few photos of a child.", no_args_is_help=True
)
character_app = typer.Typer(help="Register, train, inspect and remove characters.", no_args_is_help=True)
models_app = typer.Typer(help="Base models.", no_args_is_help=True)
story_app = typer.Typer(help="Write stories and edit their pages.", no_args_is_help=True)
app.add_typer(character_app, name="character")
app.add_typer(story_app, name="story")
app.add_typer(models_app, name="models")
lab_app = typer.Typer(
    help="The consistency lab: storybook-mini, the evaluator and the benchmark.", no_args_is_help=True
)
app.add_typer(lab_app, name="lab")
console = Console(markup=False)  # user text ("[/x]" in a title) is printed as it is
stderr = Console(markup=False, stderr=True)  # error and warning lines
state = {"home": None, "debug": False}

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Base model: storybook-mini, tiny, a local diffusers folder or a hub id (default: the data root's "
        f"config, else ${MODEL_ENV}, else storybook-mini).",
    ),
]
CaptionerOption = Annotated[
    str | None,
    typer.Option(
        help="BLIP captioning weights that caption the photos: a local folder or a downloaded hub id, e.g. "
        "Salesforce/blip-image-captioning-base (never downloaded here).",
    ),
]


def ray_address_option(address: str | None) -> str | None:
    """The --ray-address given, when it is a Ray cluster's address."""
    from storybook.cluster import check_ray_address

    try:
        return check_ray_address(address)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


RayAddressOption = Annotated[
    str | None,
    typer.Option(
        callback=ray_address_option, help="A Ray cluster's address, as `ray start --head` prints it (HOST:PORT)."
    ),
]


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
    if not debug:
        quiet_library_logs()  # before any command imports a model library


def run(action, loads_models: bool = False):
    """Run `action()`; any error becomes a message saying what happened and what to do, and exit code 1 (a
    traceback only with --debug), and storybook's own warnings (a damaged character skipped) become "Warning:" lines.
    `loads_models`: the action loads models, whose libraries are quieted first."""
    if loads_models and not state["debug"]:
        quiet_libraries()
    if state["debug"]:
        return action()  # every warning and the traceback as they are
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                return action()
            finally:
                for message in dict.fromkeys(str(w.message) for w in caught if w.filename.startswith(PACKAGE_DIR)):
                    say_warning(message)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:
        say_error(error_message(error))
        raise typer.Exit(1) from None


def say_error(message: str) -> None:
    """Print `message` as a red "Error:" line on stderr, unwrapped, its hidden characters escaped (storybook/text.py:
    an error may quote a file name or a server's words)."""
    stderr.print(Text.assemble(("Error: ", "red"), shown(message)), soft_wrap=True)


def say_warning(message: str) -> None:
    """Print `message` as a yellow "Warning:" line on stderr, unwrapped, its hidden characters escaped."""
    stderr.print(Text.assemble(("Warning: ", "yellow"), shown(message)), soft_wrap=True)


def error_message(error: Exception) -> str:
    """What to tell a user about `error`: storybook's own message, a bad value by field, a file-system problem in
    plain words, or (for a bug) its type and text with how to see more."""
    if isinstance(error, StorybookError):
        return str(error)
    if isinstance(error, ValidationError):
        return f"Bad value: {describe_problems(error)}."
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}: check the path, its permissions and the free disk space."
    return f"Unexpected {type(error).__name__}: {error}. Run again with --debug to see where, and report it."


@models_app.command("make-tiny")
def make_tiny_command(directory: Path) -> None:
    """Write the tiny Stable-Diffusion-shaped pipeline (random UNet and text encoder, briefly trained VAE) to DIR."""
    from storybook.tiny_model import make_tiny

    console.print(f"Tiny model written to {make_tiny(directory)}")


@app.command("config")
def config_command(
    model: Annotated[
        str | None,
        typer.Option(
            help="The base model of this data root: storybook-mini, tiny, a local folder or a downloaded hub id."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:1, mps or cpu.")] = None,
    dtype: Annotated[Dtype | None, typer.Option(help="The weights' dtype when drawing: fp32, fp16 or bf16.")] = None,
    ip_adapter: Annotated[str | None, typer.Option(help="IP-Adapter: a local folder or downloaded hub id.")] = None,
    ip_adapter_weight: Annotated[str | None, typer.Option(help="The IP-Adapter's weights file inside it.")] = None,
    image_encoder: Annotated[str | None, typer.Option(help="The IP-Adapter's image encoder folder inside it.")] = None,
    upscaler: Annotated[str | None, typer.Option(help="The x4 upscaler for print files: folder or hub id.")] = None,
    safety_checker: Annotated[
        str | None,
        typer.Option(
            help="The safety checker every picture passes: a StableDiffusionSafetyChecker folder or hub id (e.g. "
            "CompVis/stable-diffusion-safety-checker for SDXL), or off (default: the base model's own)."
        ),
    ] = None,
    gpu_memory: Annotated[
        float | None,
        typer.Option(help="GiB of GPU memory the memory plans use instead of the card's (a card shared with others)."),
    ] = None,
    unset: Annotated[
        list[str] | None, typer.Option(help="Forget a setting, back to its default (repeatable), e.g. --unset device.")
    ] = None,
) -> None:
    """Show or change this data root's settings (config.json): the base model, device, dtype and helper models that
    every command, the app and batch specs use where no flag names one."""

    def configure():
        """Apply the settings given (checked first, written atomically), then show them all."""
        from storybook.config import DataRootConfig, config_path, described_settings
        from storybook.render.configure import update_config

        given = {
            "model": model,
            "device": device,
            "dtype": dtype,
            "ip_adapter": ip_adapter,
            "ip_adapter_weight": ip_adapter_weight,
            "image_encoder": image_encoder,
            "upscaler": upscaler,
            "safety_checker": safety_checker,
            "gpu_memory": gpu_memory,
        }
        changes = {key: value for key, value in given.items() if value is not None}
        for name in unset or []:
            key = name.replace("-", "_")
            if key not in DataRootConfig.model_fields:
                raise ModelError(
                    f"--unset {name}: no such setting; settings: {', '.join(DataRootConfig.model_fields)}."
                )
            if key in changes:
                raise ModelError(f"{name} is both set and unset: give one or the other.")
            changes[key] = None
        if changes:
            update_config(state["home"], changes)
            console.print(f"Saved {config_path(state['home'])}")
        table = Table("setting", "value", "from", title=f"Settings of {state['home']}")
        for name, value, source in described_settings(state["home"]):
            table.add_row(name.replace("_", "-"), value, source)
        console.print(table)

    run(configure, loads_models=bool(model))


@character_app.command("add")
def character_add(
    name: str,
    more_photos: Annotated[
        list[Path] | None, typer.Argument(help="More photos, e.g. what the shell makes of `--photos photos/*.jpg`.")
    ] = None,
    photos: Annotated[
        list[Path] | None,
        typer.Option("--photos", help="3-30 photos of the child (JPEG, PNG, HEIC, ...), or a folder of them."),
    ] = None,
    class_noun: Annotated[str, typer.Option(help="What it is: toddler, baby, girl, dog...")] = "toddler",
    description: Annotated[str, typer.Option(help="Appearance in words, e.g. 'curly red hair, yellow raincoat'.")] = "",
    model: ModelOption = None,
    captioner: CaptionerOption = None,
) -> None:
    """Register a character from photos: checks them, keeps the originals, crops them and picks its token."""

    def add():
        from storybook.captions import load_captioner
        from storybook.models import load_tokenizer

        paths = photo_files([*(photos or []), *(more_photos or [])])
        # A missing captioner is said before registering; it runs on the data root's device.
        loaded = load_captioner(captioner, load_config(state["home"]).device) if captioner else None
        character = registry.add_character(
            state["home"],
            name,
            paths,
            load_tokenizer(model or configured_model(state["home"]), state["home"]),
            class_noun=class_noun,
            description=description,
        )
        folder = registry.character_dir(state["home"], character.slug)
        console.print(Text.assemble("Added ", (character.name, "bold"), f" with token '{character.token}' in {folder}"))
        if loaded:
            show_captions(caption_photos(character.slug, loaded, replace=False))
        console.print(f"Next: storybook character train {character.slug}")

    run(add, loads_models=True)


def photo_files(items: list[Path]) -> list[Path]:
    """The photos named by `items`: files as given, and the image files in a folder (sorted by name). Raises
    PhotoError when none are named."""
    from storybook.photos import PHOTO_SUFFIXES

    files = []
    for item in items:
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        else:
            files.append(item)
    if not files:
        raise PhotoError({"--photos": "no photos given: name 3-30 photos or a folder of them (--photos photos/)."})
    return files


def caption_photos(name: str, captioner: "Captioner", replace: bool) -> registry.Character:
    """Caption character `name`'s photos with a loaded BLIP `captioner`, with a spinner; return it."""
    from storybook.captions import caption_character

    with console.status("Captioning the photos..."):
        return caption_character(state["home"], name, captioner, replace)


def show_captions(character: registry.Character) -> None:
    """Print each photo's caption."""
    table = Table("photo", "file", "caption", title=f"{character.name}'s photo captions")
    for number, photo in enumerate(character.photos, 1):
        table.add_row(str(number), photo.original_name, photo.caption or "-")
    console.print(table)


@character_app.command("caption")
def character_caption(
    name: str,
    photo: Annotated[int | None, typer.Option(help="The photo (from 1, as listed) whose caption --text sets.")] = None,
    text: Annotated[str | None, typer.Option(help="Its new caption ('' clears it).")] = None,
    captioner: CaptionerOption = None,
    replace: Annotated[
        bool, typer.Option(help="With --captioner: caption every photo, also those that have a caption.")
    ] = False,
) -> None:
    """Show the captions of a character's photos, write them with BLIP (--captioner), or set one (--photo, --text).
    Methods that train on captions (the hypernetwork) use them."""

    def caption():
        from storybook.captions import load_captioner

        if (photo is None) != (text is None):
            raise CharacterError("Give --photo and --text together, e.g. --photo 2 --text 'a little girl waving'.")
        if replace and not captioner:
            raise CharacterError("--replace re-captions with BLIP: give the weights with --captioner too.")
        character = registry.load_character(state["home"], name)
        if captioner:
            character = caption_photos(name, load_captioner(captioner, load_config(state["home"]).device), replace)
        if photo is not None:
            character = registry.set_photo_captions(state["home"], name, {photo: text})
        show_captions(character)

    run(caption, loads_models=bool(captioner))


@character_app.command("list")
def character_list() -> None:
    """List registered characters."""

    def show_list():
        table = Table("name", "slug", "token", "class", "photos", "identity")
        for character in registry.list_characters(state["home"]):
            table.add_row(
                character.name,
                character.slug,
                character.token,
                character.class_noun,
                str(len(character.photos)),
                "trained" if registry.is_trained(state["home"], character.slug) else "-",
            )
        console.print(table)

    run(show_list)


@character_app.command("show")
def character_show(name: str) -> None:
    """Show a character's record and its identity: training metadata, image prompt."""

    def show():
        from storybook.identities.image_prompt import ImagePrompt
        from storybook.identities.record import IdentityMetadata

        character = registry.load_character(state["home"], name)
        console.print_json(character.model_dump_json())
        for record in registry.identity_records(state["home"], character.slug):
            kind = IdentityMetadata if record.name == "identity.json" else ImagePrompt
            console.print_json(kind.model_validate_json(record.read_text()).model_dump_json(exclude={"loss_history"}))

    run(show)


@character_app.command("remove")
def character_remove(
    name: str, yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False
) -> None:
    """Delete a character and every file of it (photos, crops, identity, samples); a training of it that is running
    is stopped first."""
    if not yes:
        typer.confirm(f"Delete {name} and all of its photos?", abort=True)

    def waiting() -> None:
        console.print(f"{name} is being trained or prepared: it stops at its next step, then {name} is removed...")

    run(lambda: console.print(f"Removed {registry.remove_character(state['home'], name, waiting)}"))


@character_app.command("train")
def character_train(
    name: Annotated[str | None, typer.Argument(help="The character (or --all).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every registered character, one after another.")] = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="With --all: one Ray task per character, on the cluster at --ray-address (or $RAY_ADDRESS), else a "
            "local instance (pip install 'storybook[ray]').",
        ),
    ] = False,
    ray_address: RayAddressOption = None,
    gpus_per_task: Annotated[
        float | None, typer.Option(min=0.0, help="--ray: GPUs each build takes (default 1 when the cluster has GPUs).")
    ] = None,
    method: Annotated[
        IdentityMethod,
        typer.Option(
            help="lora (small file), dreambooth (full fine-tune), textual-inversion (a new word's embedding, a few "
            "KB), hypernetwork (A1111's), pivotal (Textual Inversion + LoRA), ip-adapter (the photos as an image "
            "prompt: ready in seconds, no training), lora+ip-adapter or pivotal+ip-adapter."
        ),
    ] = "lora",
    model: ModelOption = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    lora_convolutions: Annotated[
        bool | None,
        typer.Option("--lora-convolutions/--no-lora-convolutions", help="LoRA on the UNet's convolutions too."),
    ] = None,
    vectors: Annotated[
        int | None, typer.Option(help="Textual Inversion: embedding vectors learned for the identifier (1-4).")
    ] = None,
    captions: Annotated[
        str | None,
        typer.Option(
            help="identifier ('a photo of zorv toddler', default) or class ('a photo of toddler', as the "
            "hypernetwork paper trained: the identity then changes every toddler drawn)."
        ),
    ] = None,
    embedding_steps: Annotated[
        int | None,
        typer.Option(
            help="Pivotal tuning: train the identifier's embeddings alone for this many steps first (AttnDreamBooth's "
            "order), then with the LoRA (default 0: together)."
        ),
    ] = None,
    embedding_lr: Annotated[
        float | None, typer.Option(help="Pivotal tuning: the embeddings' learning rate (default: --lr).")
    ] = None,
    photo_captions: Annotated[
        bool | None,
        typer.Option(
            "--photo-captions/--no-photo-captions",
            help="Train each photo under its own caption too (`storybook character caption`; default: on for the "
            "hypernetwork, as the webui's [filewords]).",
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps.")] = None,
    prior_preservation: Annotated[bool | None, typer.Option("--prior-preservation/--no-prior-preservation")] = None,
    num_class_images: Annotated[int | None, typer.Option()] = None,
    train_text_encoder: Annotated[bool | None, typer.Option("--train-text-encoder/--no-train-text-encoder")] = None,
    mixed_precision: Annotated[
        str | None, typer.Option(help="no, fp16 or bf16 (GPU only; default there bf16 where supported, else fp16).")
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute activations to save memory (default: on for full DreamBooth on real models).",
        ),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            help="adamw, adamw-8bit (bitsandbytes; default on CUDA when it is installed) or adafactor (factored "
            "moments, almost no state)."
        ),
    ] = None,
    fused_backward: Annotated[
        bool | None,
        typer.Option(
            "--fused-backward/--no-fused-backward",
            help="DreamBooth with adafactor: update each weight inside the backward pass (no model-sized gradients).",
        ),
    ] = None,
    full_bf16: Annotated[
        bool | None,
        typer.Option(
            "--full-bf16/--no-full-bf16",
            help="DreamBooth with adafactor and bf16: the trained weights in bf16, stochastically rounded.",
        ),
    ] = None,
    snr_gamma: Annotated[float | None, typer.Option(help="Min-SNR weighting gamma (5 is common).")] = None,
    offset_noise: Annotated[float | None, typer.Option(help="Offset-noise strength (~0.1).")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Save a checkpoint every N steps.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    restart: Annotated[bool, typer.Option(help="Discard an unfinished run's checkpoint and start over.")] = False,
    export_kohya: Annotated[bool, typer.Option(help="Also write a kohya/A1111-format LoRA file.")] = False,
    device: Annotated[
        str | None, typer.Option(help="cuda, mps or cpu (default: the config's, else the best available).")
    ] = None,
    ip_adapter: Annotated[
        str | None,
        typer.Option(
            help="IP-Adapter: a local folder or downloaded hub id (default: the data root's config, else the base "
            "model's own)."
        ),
    ] = None,
    ip_adapter_weight: Annotated[
        str | None, typer.Option(help=f"The --ip-adapter's weights file inside it (default {H94_WEIGHT}).")
    ] = None,
    image_encoder: Annotated[
        str | None, typer.Option(help=f"The --ip-adapter's image encoder folder in it (default {H94_IMAGE_ENCODER}).")
    ] = None,
    image_scale: Annotated[
        float | None,
        typer.Option(min=0.0, max=4.0, help="Image-prompt strength (default 1 storybook-mini, 0.6 others)."),
    ] = None,
) -> None:
    """Build the character's identity (defaults follow published practice and shrink for small models)."""
    given = {
        "steps": steps,
        "learning_rate": lr,
        "rank": rank,
        "lora_convolutions": lora_convolutions,
        "num_vectors": vectors,
        "captions": captions,
        "photo_captions": photo_captions,
        "embedding_steps": embedding_steps,
        "embedding_learning_rate": embedding_lr,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "prior_preservation": prior_preservation,
        "num_class_images": num_class_images,
        "train_text_encoder": train_text_encoder,
        "mixed_precision": mixed_precision,
        "gradient_checkpointing": gradient_checkpointing,
        "optimizer": optimizer,
        "fused_backward": fused_backward,
        "full_bf16": full_bf16,
        "snr_gamma": snr_gamma,
        "offset_noise": offset_noise,
        "seed": seed,
        "checkpoint_every": checkpoint_every,
    }
    overrides = {key: value for key, value in given.items() if value is not None}
    if (name is None) == (not every):
        raise typer.BadParameter("Give a character's name, or --all for every character (not both).")
    if not every and (ray or ray_address or gpus_per_task is not None):
        raise typer.BadParameter("--ray, --ray-address and --gpus-per-task go with --all.")

    def train():
        from storybook.config import AdapterSource
        from storybook.training.personalize import build_identity

        adapter = None
        if (ip_adapter_weight or image_encoder) and not ip_adapter:
            raise ModelError(
                "--ip-adapter-weight and --image-encoder name files inside --ip-adapter: give it too (or set all three "
                "once with `storybook config`)."
            )
        if ip_adapter:
            try:
                adapter = AdapterSource(
                    source=ip_adapter,
                    weight_name=ip_adapter_weight or H94_WEIGHT,
                    image_encoder=image_encoder or H94_IMAGE_ENCODER,
                )
            except ValidationError as error:
                problems = "; ".join(problem["msg"] for problem in error.errors())
                raise ModelError(f"Bad IP-Adapter paths: {problems}.") from None
        options = {"resume": resume, "restart": restart, "export_kohya": export_kohya, "device": device}
        if every:
            train_every(method, model, overrides, adapter, image_scale, options, ray, ray_address, gpus_per_task)
            return
        metadata, image_prompt = build_identity(
            state["home"], name, method, model, overrides, adapter, image_scale, **options
        )
        folder = registry.character_dir(state["home"], (metadata or image_prompt).character)
        if metadata:
            console.print(
                f"Trained {metadata.method} identity of {metadata.character} in {metadata.wall_time_s:.0f} s "
                f"(photo loss {metadata.photo_loss_before:.4f} -> {metadata.photo_loss_after:.4f}): "
                f"{folder / 'identity'}"
            )
            console.print(f"Samples: {folder / 'samples' / 'final.png'}")
        if image_prompt:
            console.print(
                f"Image prompt of {image_prompt.character} from {len(image_prompt.photo_sha256)} photos with the "
                f"IP-Adapter {image_prompt.adapter.source} in {image_prompt.wall_time_s:.1f} s (scale "
                f"{image_prompt.scale:g}): {folder / 'identity'}"
            )

    run(train, loads_models=True)


def train_every(
    method: str,
    model: str | None,
    overrides: dict,
    adapter,
    image_scale: float | None,
    options: dict,
    ray: bool,
    ray_address: str | None,
    gpus_per_task: float | None,
) -> None:
    """Build every registered character's identity, in turn here or as Ray tasks; a table of the outcomes, and exit
    code 1 when any failed (the others are built all the same)."""
    names = [character.name for character in registry.list_characters(state["home"])]
    if not names:
        raise ModelError("No characters yet: add one with `storybook character add NAME PHOTOS...`.")
    if ray:
        from storybook.scale_out import build_identities_on_ray

        if adapter is not None or image_scale is not None:
            options = options | {"adapter": adapter, "image_scale": image_scale}
        built = build_identities_on_ray(
            state["home"], names, method, model, overrides, ray_address, gpus_per_task, **options
        )
        outcomes = [(b.name, b.error, b.seconds) for b in built]
    else:
        from storybook.training.personalize import build_identity

        outcomes = []
        for character in names:
            started = time.perf_counter()
            try:
                build_identity(state["home"], character, method, model, overrides, adapter, image_scale, **options)
                outcomes.append((character, None, time.perf_counter() - started))
            except Exception as error:  # one character's failure (a GPU out of memory too) costs only its build
                outcomes.append((character, error_text(error), time.perf_counter() - started))
    table = Table("character", "result", "seconds")
    for character, error, seconds in outcomes:
        outcome = Text(f"failed: {shown(error)}", "red") if error else Text(method, "green")
        table.add_row(character, outcome, f"{seconds:.0f}")
    console.print(table)
    if failed := sum(error is not None for _, error, _ in outcomes):
        console.print(Text(f"{failed} of {len(outcomes)} identities failed.", "red"))
        raise typer.Exit(1)


@story_app.command("write")
def story_write(
    child: Annotated[str, typer.Option(help="The child's name, as the story says it.")],
    theme: Annotated[str, typer.Option(help="What the story is about, e.g. 'a day at the beach'.")],
    character: Annotated[
        list[str] | None, typer.Option(help="A registered character in the story (1-3; default: the child's own).")
    ] = None,
    pages: Annotated[int, typer.Option(min=MIN_PAGES, max=MAX_PAGES)] = 12,
    age: Annotated[int, typer.Option(min=0, max=6, help="The child's age in years.")] = 2,
    pronouns: Annotated[Pronouns, typer.Option(help="she, he or they.")] = "they",
    style: Annotated[str, typer.Option(help="The art style of every picture.")] = DEFAULT_STYLE,
    max_words: Annotated[int | None, typer.Option(help="Words a page may hold (default: by age).")] = None,
    dedication: Annotated[str | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option(help="Fixes the offline story and the pictures' seeds.")] = None,
    writer: Annotated[
        Writer | None, typer.Option(help="llm or offline (default: llm when OPENAI_API_KEY or OPENAI_BASE_URL is set).")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="The LLM to ask (any model the server has).")
    ] = DEFAULT_LLM_MODEL,
    llm_deadline: Annotated[
        float, typer.Option(min=1, max=3600, help="Seconds the LLM may take for the whole story, retries included.")
    ] = 300.0,
) -> None:
    """Write a story about the child and their characters, and save it as a new book project."""

    def write():
        request = StoryRequest(
            child=child,
            characters=character or [],
            theme=theme,
            pages=pages,
            age=age,
            pronouns=pronouns,
            style=style,
            max_words_per_page=max_words,
            dedication=dedication,
            seed=seed,
        )
        chosen = writer or default_writer()
        console.print(f"Writing with the {chosen} writer" + (f" ({model})" if chosen == "llm" else ""))
        folder, book = write_story(state["home"], request, chosen, LLMSettings(model=model, deadline_s=llm_deadline))
        console.print(Text.assemble((book.title, "bold"), f": {len(book.pages)} pages in {folder}"))
        warn_about_glyphs(book)
        console.print(f"Next: storybook story show {folder.name}")

    run(write)


@story_app.command("list")
def story_list() -> None:
    """List the books of the data root."""

    def show_list():
        table = Table("book", "title", "pages", "writer")
        for folder in list_books(state["home"]):
            try:
                book = load_book(folder)
            except BookError as error:  # a folder name and an error are not checked text: escaped
                table.add_row(shown(folder.name), Text(shown(str(error)), "red"), "-", "-")
                continue
            table.add_row(shown(folder.name), book.title, str(len(book.pages)), book.writer)
        console.print(table)

    run(show_list)


@story_app.command("show")
def story_show(book: Annotated[str, typer.Argument(help="A book name under books/, or a book folder.")]) -> None:
    """Show a book's pages: text, characters and scene prompt."""

    def show():
        story = load_book(book_dir(state["home"], book))
        console.print(
            Text.assemble((story.title, "bold"), f" ({story.dedication}) - {story.style}, written by {story.writer}")
        )
        table = Table("page", "text", "characters", "scene prompt", show_lines=True)
        for number, page in enumerate(story.pages, start=1):
            table.add_row(str(number), page.text, ", ".join(page.characters), page.prompt)
        console.print(table)

    run(show)


def warn_about_glyphs(book: Book) -> None:
    """Say which of the book's texts have characters its font lacks, and how they will print (see
    storybook.printing.fonts)."""
    from storybook.printing.fonts import glyph_warnings

    for warning in glyph_warnings(book):
        say_warning(warning)


def edit_book(book: str, edit: Callable[[Book], Book]) -> None:
    """Load `book`, apply `edit` (Book -> Book), save it and say so; a refused edit leaves book.json as it was."""

    def apply():
        folder = book_dir(state["home"], book)
        edited = edit(load_book(folder))
        save_book(folder, edited)
        console.print(f"Saved {folder / BOOK_FILE}")
        warn_about_glyphs(edited)

    run(apply)


@story_app.command("edit")
def story_edit(
    book: str,
    page: int,
    text: Annotated[str | None, typer.Option(help="New text for the page.")] = None,
    scene: Annotated[
        str | None, typer.Option(help="New scene; name characters by their phrase ('zorv toddler').")
    ] = None,
    character: Annotated[
        list[str] | None, typer.Option(help="A character drawn (default: those the scene names).")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Replace the whole scene prompt (experts).")] = None,
) -> None:
    """Change a page's text, scene, characters or prompt."""

    def edit(story: Book) -> Book:
        slugs = [slugify(name) for name in character] if character is not None else None
        return book_edits.edit_page(story, page, text, scene, slugs, prompt)

    edit_book(book, edit)


@story_app.command("retitle")
def story_retitle(
    book: str,
    title: Annotated[str | None, typer.Option(help="The new title (also on the cover).")] = None,
    dedication: Annotated[str | None, typer.Option(help="The new dedication.")] = None,
) -> None:
    """Change the book's title or dedication (the pictures stay)."""
    edit_book(book, lambda story: book_edits.edit_front(story, title, dedication))


@story_app.command("add-page")
def story_add_page(
    book: str,
    text: Annotated[str, typer.Option()],
    scene: Annotated[str, typer.Option(help="What the picture shows, naming characters by their phrase.")],
    at: Annotated[int | None, typer.Option(help="The new page's number (default: at the end).")] = None,
) -> None:
    """Add a page."""
    edit_book(book, lambda story: book_edits.add_page(story, len(story.pages) + 1 if at is None else at, text, scene))


@story_app.command("remove-page")
def story_remove_page(book: str, page: int) -> None:
    """Remove a page."""
    edit_book(book, lambda story: book_edits.remove_page(story, page))


@story_app.command("move-page")
def story_move_page(book: str, page: int, to: int) -> None:
    """Move a page so that it becomes page TO."""
    edit_book(book, lambda story: book_edits.move_page(story, page, to))


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar for `description`, given as a `progress(done, total)` callback; shown from the first report on, so
    that a run refused before any work prints its message alone."""
    bars: list[tqdm] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=description, unit="page", total=total))
        bars[0].total = total
        bars[0].n = done
        bars[0].refresh()

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


def render_and_report(folder: Path, **options) -> None:
    """Render the book in `folder` with a progress bar, then say what was drawn and warn about long prompts; pictures
    the safety checker withheld end it with an error."""
    from storybook.render.pages import render_book, withheld_message

    try:
        with progress_bar("rendering") as progress:
            report, _ = render_book(state["home"], folder, progress=progress, **options)
    except KeyboardInterrupt:
        console.print("Stopped. Every finished picture is saved: render again to go on.")
        raise typer.Exit(130) from None
    console.print(f"{report.drawn} pictures drawn, {report.reused} already drawn: {folder / BOOK_FILE}")
    for warning in report.warnings:
        say_warning(warning)
    if report.withheld:
        raise BookError(withheld_message(report.withheld))


@app.command()
def render(
    book: Annotated[str, typer.Argument(help="A book name under books/, or a book folder.")],
    model: Annotated[str | None, typer.Option(help="Base model: 'tiny', a local diffusers folder or a hub id.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (0 for SD-Turbo).")] = None,
    width: Annotated[int | None, typer.Option(help="Picture width in pixels (default: the model's own size).")] = None,
    height: Annotated[int | None, typer.Option(help="Picture height in pixels.")] = None,
    native_size: Annotated[
        bool, typer.Option("--native-size", help="Back to the model's own size (forget --width and --height).")
    ] = False,
    scheduler: Annotated[Scheduler | None, typer.Option(help="Sampler (default dpm++: DPM-Solver++ Karras).")] = None,
    weight: Annotated[
        list[str] | None, typer.Option(help="A character's identity weight, NAME=0.8 (default 1.0); repeatable.")
    ] = None,
    image_scale: Annotated[
        list[str] | None,
        typer.Option(help="A character's image-prompt (IP-Adapter) strength, NAME=0.8; repeatable."),
    ] = None,
    preview: Annotated[bool, typer.Option(help="Fast low-step drafts (their own files; export uses finals).")] = False,
    candidates: Annotated[int, typer.Option(min=1, max=8, help="Draw N seeds per page to choose from.")] = 1,
    page: Annotated[list[int] | None, typer.Option(help="Only this page (0: the cover); repeatable.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Pictures per pipeline call.")] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, mps or cpu (default: the config's, else the best available).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="fp32, fp16 or bf16 (default: the config's, else fp16 on GPUs).")
    ] = None,
) -> None:
    """Draw the book's pictures; drawing again redraws only what changed. Settings given are kept in book.json once
    a picture is drawn with them."""

    def draw():
        from storybook.render.pages import with_settings

        folder = book_dir(state["home"], book)
        given = {"model": model, "steps": steps, "guidance": guidance, "width": width, "height": height}
        overrides = {key: value for key, value in given.items() if value is not None}
        if native_size:
            if width is not None or height is not None:
                raise BookError("--native-size forgets --width and --height: give one or the other.")
            overrides |= {"width": None, "height": None}
        if scheduler:
            overrides["scheduler"] = scheduler
        if weight:
            overrides["weights"] = dict(parse_weight(item, "--weight") for item in weight)
        if image_scale:
            overrides["image_scales"] = dict(parse_weight(item, "--image-scale") for item in image_scale)
        with_settings(load_book(folder), overrides)  # a bad value is refused before any work
        render_and_report(
            folder,
            settings=overrides,
            preview=preview,
            candidates=candidates,
            only=page,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
        )

    run(draw, loads_models=True)


def parse_weight(item: str, option: str) -> tuple[str, float]:
    """'Mia=0.8' -> ('Mia', 0.8). Raises BookError, naming `option`, for anything else."""
    name, _, value = item.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise BookError(f"{option} takes NAME=NUMBER, e.g. Mia=0.8, not {item!r}.")
    return name.strip(), number


@app.command()
def choose(
    book: str,
    page: Annotated[int, typer.Argument(help="The page (0: the cover).")],
    candidate: Annotated[int, typer.Argument(help="The candidate's number, from 1.")],
) -> None:
    """Keep one of the candidates drawn by `render --candidates N` as the page's picture."""
    edit_book(book, lambda story: book_edits.choose_candidate(story, page, candidate))


@app.command()
def export(
    book: Annotated[str, typer.Argument(help="A book name under books/, or a book folder.")],
    out: Annotated[Path, typer.Option(help="The PDF to write.")] = Path("book.pdf"),
    profile: Annotated[Profile, typer.Option(help="kdp, lulu (bleed for print) or screen (no bleed).")] = "kdp",
    trim: Annotated[Trim, typer.Option(help="Trim size in inches.")] = "8.5x8.5",
    layout: Annotated[Layout, typer.Option(help="Text on a soft band over the picture, or below it.")] = "band",
    upscaler: Annotated[
        Upscaler, typer.Option(help="auto: the x4 upscaler on a GPU when its weights are here, else lanczos.")
    ] = "auto",
    upscaler_model: Annotated[
        str | None,
        typer.Option(
            help=f"The x4 upscaler: hub id or local folder (default: the data root's config, else {X4_UPSCALER})."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Where the x4 upscaler runs (default: the config's, else the best).")
    ] = None,
    cover: Annotated[
        bool,
        typer.Option("--cover/--no-cover", help="--no-cover: the interior only (KDP and Lulu take the cover apart)."),
    ] = True,
) -> None:
    """Write the print-ready PDF: cover, dedication, pages, The End; even page count; fonts embedded; 300 DPI."""

    def write():
        folder = book_dir(state["home"], book)
        with progress_bar("exporting") as progress:
            pages = export_book(
                folder, out, profile, trim, layout, upscaler, upscaler_model, device, progress, cover, state["home"]
            )
        console.print(f"Wrote {out} ({pages} pages, {trim} in, {profile})")

    run(write, loads_models=True)


@contextmanager
def books_progress(specs: list[Path]) -> Iterator[Callable[[int, int, int], None]]:
    """Progress of many books as a `progress(book, done, total)` callback (`book`: its index in `specs`): pictures
    done / total over all books, and a bar per book being drawn, which gives way to the book's line when it is
    finished."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(
        TextColumn("{task.description}", markup=False),  # spec file names are the user's text
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    tasks, counts = {}, {}

    def update(book: int, done: int, total: int) -> None:
        if not tasks:
            bars.start()
            tasks["all"] = bars.add_task("all books", total=0)
        if book not in tasks:
            tasks[book] = bars.add_task(shown(specs[book].name), total=total)
        counts[book] = (done, total)
        bars.update(tasks[book], completed=done, total=total, visible=done < total)
        all_done, all_total = (sum(column) for column in zip(*counts.values(), strict=True))
        bars.update(tasks["all"], completed=all_done, total=all_total)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


@app.command()
def make(
    specs: Annotated[list[Path], typer.Argument(help="Spec files (YAML or JSON), one book each.")],
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Draw every book's pages on Ray: the cluster at --ray-address (or $RAY_ADDRESS), else a local "
            "instance (pip install 'storybook[ray]'). Without it, the specs that say `ray:` are drawn on Ray.",
        ),
    ] = False,
    ray_address: RayAddressOption = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="--ray: actors drawing pages (default: one per GPU, else 2).")
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(min=0.0, help="--ray: GPUs each actor takes (default 1 when the cluster has GPUs).")
    ] = None,
    shared_root: Annotated[
        bool,
        typer.Option(
            "--shared-root",
            help="--ray: the data root is shared by every node at the same path; workers write the pictures into "
            "the books themselves.",
        ),
    ] = False,
) -> None:
    """Make many books: write, render and export the book of each spec; a failing book does not stop the others."""
    from storybook.cluster import RaySettings

    if not ray and (ray_address or workers or gpus_per_worker is not None or shared_root):
        raise typer.BadParameter("--ray-address, --workers, --gpus-per-worker and --shared-root go with --ray.")
    try:
        settings = (
            RaySettings(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker, shared=shared_root)
            if ray
            else None
        )
    except ValidationError as error:
        raise typer.BadParameter(describe_problems(error)) from None
    if not state["debug"]:
        quiet_libraries()  # before storybook.batch imports the model libraries
    from storybook.dispatch import make_specs

    def say(line: str) -> None:
        """Print a line of the run (it names spec files and quotes writers): hidden characters escaped."""
        console.print(shown(line))

    try:
        with books_progress(specs) as progress:
            made = run(lambda: make_specs(state["home"], specs, settings, say=say, progress=progress))
    except KeyboardInterrupt:
        console.print("Stopped. Every finished picture is saved: make the books again to go on.")
        raise typer.Exit(130) from None
    table = Table("spec", "result", "pages", "seconds")
    for result in made:
        if result.error is None:
            outcome = Text(shown(str(result.output)), "green")
        else:
            outcome = Text(f"failed: {shown(result.error)}", "red")
        table.add_row(shown(result.spec.name), outcome, str(result.pages or "-"), f"{result.seconds:.0f}")
    console.print(table)
    failed = sum(result.error is not None for result in made)
    if failed:
        console.print(Text(f"{failed} of {len(made)} books failed.", "red"))
        raise typer.Exit(1)


@app.command()
def doctor(
    gpu_memory: Annotated[
        float | None,
        typer.Option(min=1.0, help="Plan for a card of this many GiB (default: this machine's card, or the config's)."),
    ] = None,
) -> None:
    """What this machine's GPU can do before anything runs: each method and model family at its defaults fits as it
    is, fits with a memory policy, or is refused; and drawing pages. From parameter counts alone: nothing loads."""

    def examine():
        from storybook.doctor import doctor_report

        line, verdicts = doctor_report(state["home"], gpu_memory)
        console.print(f"GPU: {line}")
        if not verdicts:
            return
        table = Table("model", "what", "fits", "GiB", "how", title="Memory plan (estimates; see README, GPU memory)")
        for verdict in verdicts:
            fits = {True: "yes", False: "no", None: "-"}[verdict.fits]
            table.add_row(
                verdict.model, verdict.what, fits, f"{verdict.need / 2**30:.1f}" if verdict.need else "", verdict.how
            )
        console.print(table)

    run(examine)


@app.command()
def demo() -> None:
    """Offline demo on the CPU: register a toddler of the lab's world, build its identity on storybook-mini, write,
    render, export."""

    def run_demo():
        from storybook.lab.world import DEMO_TODDLER, write_photos
        from storybook.models import load_tokenizer
        from storybook.render.pages import with_settings
        from storybook.training.personalize import build_identity, recommended_method

        home = state["home"]
        console.print(f"Data root: {home}")
        tokenizer = load_tokenizer(MINI_MODEL, home)
        if (registry.character_dir(home, "Mia") / "character.json").exists():
            registry.remove_character(home, "Mia")
        photos = write_photos(home / "demo-photos", DEMO_TODDLER)
        character = registry.add_character(home, "Mia", photos, tokenizer, description=DEMO_TODDLER.description)
        console.print(f"Registered Mia (token '{character.token}') from {len(photos)} sample photos")
        method = recommended_method(MINI_MODEL)
        metadata, image_prompt = build_identity(home, "Mia", method, MINI_MODEL)
        seconds = (metadata.wall_time_s if metadata else 0) + (image_prompt.wall_time_s if image_prompt else 0)
        console.print(
            f"Built Mia's {method} identity on {MINI_MODEL} in {seconds:.1f} s: {registry.identity_folder(home, 'Mia')}"
        )
        request = StoryRequest(child="Mia", theme="a day at the beach", pages=12, pronouns="she", seed=1)
        book_folder, book = write_story(home, request, "offline")
        save_book(book_folder, with_settings(book, {"model": MINI_MODEL}))
        console.print(f"Wrote '{book.title}' ({len(book.pages)} pages, offline writer): {book_folder / BOOK_FILE}")
        render_and_report(book_folder)
        pdf = home / "mia-at-the-beach.pdf"
        with progress_bar("exporting") as progress:
            pages = export_book(book_folder, pdf, progress=progress, home=home)
        console.print(Text.assemble(("Your book: ", "bold"), f"{pdf} ({pages} pages, 8.5x8.5 in with KDP bleed)"))

    run(run_demo, loads_models=True)


APP_FILE = Path(__file__).resolve().parent.parent / "streamlit_app.py"
APP_CONFIG = APP_FILE.parent / ".streamlit" / "config.toml"


def app_command_line(port: int) -> list[str]:
    """The `streamlit run` command of the app with every setting of the project's .streamlit/config.toml given as
    a flag, so that the upload limit, usage statistics and toolbar do not depend on the folder it starts from."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    settings = tomllib.loads(APP_CONFIG.read_text(encoding="utf-8"))
    flags = [
        f"--{section}.{key}={str(value).lower() if isinstance(value, bool) else value}"
        for section, values in settings.items()
        for key, value in values.items()
    ]
    return [sys.executable, "-m", "streamlit", "run", str(APP_FILE), *flags, f"--server.port={port}"]


def run_server(command: list[str], env: dict[str, str]) -> int:
    """Run the server `command` until it ends; return its exit code (128 + N when signal N stopped it). SIGTERM and
    SIGHUP to this process (`kill`, a closed terminal, a service manager) stop the server too, and it is stopped when
    this process stops for any other reason (Ctrl-C), so that it never outlives the command that started it."""
    import signal
    import subprocess

    server = subprocess.Popen(command, env=env)
    stopped_by: list[int] = []

    def stop_server(signum: int, frame: object) -> None:
        stopped_by.append(signum)
        server.send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop_server) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = server.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    if stopped_by:
        return 128 + stopped_by[0]
    return 128 - code if code < 0 else code


@app.command("app")
def start_app(port: Annotated[int, typer.Option(min=1, max=65535, help="The port to serve on.")] = 8501) -> None:
    """Start the app for parents in the browser (its data root: --home, $STORYBOOK_HOME or the current folder)."""

    def serve() -> int:
        if not APP_FILE.is_file():
            raise StorybookError(f"The app is not here ({APP_FILE}): run it from a clone of the project (README).")
        return run_server(app_command_line(port), os.environ | {HOME_ENV: str(state["home"])})

    raise typer.Exit(run(serve))


@lab_app.command("run")
def lab_run(
    work: Annotated[Path, typer.Option(help="Folder for the benchmark's characters, identities and results.")] = Path(
        "lab-run"
    ),
    model: Annotated[str, typer.Option(help="Base model (default: storybook-mini).")] = MINI_MODEL,
    characters: Annotated[int, typer.Option(min=1, help="Held-out characters.")] = 3,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per page prompt.")] = 2,
    method: Annotated[list[str] | None, typer.Option(help="A method to measure (repeatable; default: all).")] = None,
    train_steps: Annotated[int | None, typer.Option(help="Training steps for every method.")] = None,
    train_lr: Annotated[float | None, typer.Option(help="Learning rate for every method.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps per picture.")] = 25,
    pairs: Annotated[int, typer.Option(min=0, help="Also draw N pairs of toddlers on one page (image prompts).")] = 0,
    image_scale: Annotated[float | None, typer.Option(min=0.0, max=4.0, help="Image-prompt strength.")] = None,
) -> None:
    """Benchmark identity consistency: held-out characters x methods x 12 story pages, read by the evaluator."""

    def run_lab():
        import json
        from dataclasses import asdict

        from storybook.lab.benchmark import results_json, results_table, run_benchmark
        from storybook.lab.pairs import pairs_table, run_pairs

        results = run_benchmark(
            work,
            model,
            characters,
            seeds,
            method,
            {"steps": train_steps, "learning_rate": train_lr},
            steps,
            image_scale,
            progress=lambda message: console.print(message),
        )
        table = results_table(results)
        rows = results_json(results)
        if pairs:
            pair_results = run_pairs(
                work, model, pairs, seeds, steps=steps, image_scale=image_scale, progress=console.print
            )
            table += "\n\n" + pairs_table(pair_results)
            rows += [asdict(result) for result in pair_results]
        (work / "results.md").write_text(table + "\n")
        (work / "results.json").write_text(json.dumps(rows, indent=1))
        console.print(table)
        console.print(f"Written to {work / 'results.md'} and results.json")

    run(run_lab, loads_models=True)


@lab_app.command("train-mini")
def lab_train_mini(
    out: Annotated[
        Path, typer.Option(help="Where to save the text-only pipeline (`lab train-adapter` goes on from it).")
    ] = Path(".cache/storybook-mini-text"),
    work: Annotated[Path, typer.Option(help="Checkpoints; run again to resume.")] = Path(".cache/storybook-mini"),
    unet_steps: Annotated[int, typer.Option(min=1, help="Resume a finished run with more to train it longer.")] = 4000,
    schedule_steps: Annotated[
        int | None,
        typer.Option(min=1, help="The learning rate's schedule length, if longer than --unet-steps (a run to go on)."),
    ] = None,
    snapshot: Annotated[
        Path | None,
        typer.Option(
            help="A weights-only snapshot folder: started from when --work holds no checkpoint (a new machine), "
            "rewritten at every checkpoint (commit it to carry a long run to another machine)."
        ),
    ] = None,
    vae_from: Annotated[
        Path | None, typer.Option(help="A storybook-mini folder whose trained VAE to use instead of training one.")
    ] = None,
    seed: int = 0,
    device: Annotated[
        str, typer.Option(help="Train on this device, e.g. cuda (the pictures are drawn on the CPU).")
    ] = "cpu",
) -> None:
    """Train storybook-mini from scratch on the lab's world (resumable; README "storybook-mini" gives the times)."""

    def train() -> None:
        from storybook.lab.mini_model import train_mini
        from storybook.models import pick_device

        on = str(pick_device(device))
        train_mini(
            out,
            work,
            unet_steps=unet_steps,
            seed=seed,
            device=on,
            progress=console.print,
            vae_from=vae_from,
            schedule_steps=schedule_steps,
            snapshot=snapshot,
        )

    run(train, loads_models=True)


@lab_app.command("train-adapter")
def lab_train_adapter(
    out: Annotated[Path, typer.Option(help="Where to save storybook-mini with its retrained UNet.")] = Path(
        "storybook/weights/storybook-mini"
    ),
    adapter_out: Annotated[Path, typer.Option(help="Where to save the IP-Adapter and its image encoder.")] = Path(
        "storybook/weights/storybook-mini-ip-adapter"
    ),
    work: Annotated[Path, typer.Option(help="Checkpoints; run again to resume.")] = Path(
        ".cache/storybook-mini-adapter"
    ),
    base: Annotated[
        Path, typer.Option(help="The text-only storybook-mini to start from (what `lab train-mini` writes).")
    ] = Path(".cache/storybook-mini-text"),
    unet_steps: Annotated[int, typer.Option(min=1, help="Adapter + UNet steps.")] = 2400,
    seed: int = 0,
    device: Annotated[
        str, typer.Option(help="Train on this device, e.g. cuda (the pictures are drawn on the CPU).")
    ] = "cpu",
) -> None:
    """Train storybook-mini's image encoder and IP-Adapter with its UNet (about 1.2 h on 2 CPU cores; resumable)."""

    def train() -> None:
        from storybook.lab.mini_adapter import train_mini_adapter
        from storybook.models import pick_device

        on = str(pick_device(device))
        train_mini_adapter(
            out, adapter_out, work, base, unet_steps=unet_steps, seed=seed, device=on, progress=console.print
        )

    run(train, loads_models=True)


@lab_app.command("train-evaluator")
def lab_train_evaluator(
    out: Annotated[Path, typer.Option(help="Where to save the evaluator.")] = Path("storybook/weights/evaluator"),
    steps: Annotated[int, typer.Option(min=1)] = 3000,
    seed: int = 0,
) -> None:
    """Train the lab's evaluator (about 15 min on 2 CPU cores) and print its accuracy on fresh renders."""
    from storybook.lab.evaluator import train_evaluator

    run(lambda: console.print(train_evaluator(out, steps, seed=seed, progress=console.print)), loads_models=True)
