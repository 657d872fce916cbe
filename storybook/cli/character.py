"""`storybook character`: register, caption, list, show, remove and train characters."""

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from storybook import registry
from storybook.cli.shell import CaptionerOption, ModelOption, RayAddressOption, app, console, run, state
from storybook.cli.training_options import with_training_options
from storybook.config import H94_IMAGE_ENCODER, H94_WEIGHT, configured_model, load_config
from storybook.errors import CharacterError, ModelError, PhotoError, error_text
from storybook.identities import RECIPES
from storybook.identities.training_config import IdentityMethod
from storybook.text import shown

if TYPE_CHECKING:
    from storybook.captions import Captioner

character_app = typer.Typer(help="Register, train, inspect and remove characters.", no_args_is_help=True)
app.add_typer(character_app, name="character")


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
@with_training_options
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
        typer.Option(help=", ".join(f"{name} ({recipe.summary})" for name, recipe in RECIPES.items()) + "."),
    ] = "lora",
    model: ModelOption = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    restart: Annotated[bool, typer.Option(help="Discard an unfinished run's checkpoint and start over.")] = False,
    export_kohya: Annotated[bool, typer.Option(help="Also write a kohya/A1111-format LoRA file.")] = False,
    samples: Annotated[
        bool, typer.Option(help="Draw sample pictures at each checkpoint and at the end (--no-samples: none).")
    ] = True,
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
    overrides: dict | None = None,  # the training flags given (with_training_options)
) -> None:
    """Build the character's identity (defaults follow published practice and shrink for small models)."""
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
        options = {
            "resume": resume,
            "restart": restart,
            "export_kohya": export_kohya,
            "device": device,
            "sample_grids": samples,
        }
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
            if samples:
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
