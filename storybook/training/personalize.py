"""Building a character's identity by any method: trained weights (LoRA, DreamBooth, ...), an image prompt
(IP-Adapter, no training), or a LoRA or pivotal tuning with an image prompt. Everything lands in the character's
identity/ folder."""

import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from filelock import Timeout

from storybook.config import MINI_ADAPTER_SOURCE, AdapterSource, configured_adapter, configured_model
from storybook.errors import ModelError, TrainingError
from storybook.identities import RECIPES
from storybook.identities.image_prompt import (
    MINI_ADAPTER_SCALE,
    ImagePrompt,
    check_adapter,
    default_adapter,
    write_image_prompt,
)
from storybook.identities.record import IdentityMetadata
from storybook.identities.training_config import IdentityMethod
from storybook.registry import (
    Character,
    character_dir,
    character_lock,
    check_not_removed,
    identity_folder,
    load_character,
)
from storybook.storage import build_folder, file_lock, remove_stale_builds
from storybook.training.loop import train_identity

RECOMMENDED_METHOD: IdentityMethod = "ip-adapter"  # on storybook-mini: no worse than any measured, ready in 0.2 s
USER_ADAPTER_SCALE = 0.6  # a common starting strength for an IP-Adapter beside a text prompt


def recommended_method(model: str) -> IdentityMethod:
    """The method to offer first for base `model`: RECOMMENDED_METHOD where the model has an IP-Adapter of its own,
    else a LoRA (a user's adapter must be named)."""
    return RECOMMENDED_METHOD if default_adapter(model) else "lora"


@contextmanager
def identity_lock(home: Path, character: Character) -> Iterator[None]:
    """Hold the character's lock (`character_lock`) for one build of its identity. Raises TrainingError when another
    build holds it (two runs would write over each other's checkpoints and identity), CharacterError when the
    character is being removed."""
    with ExitStack() as held:
        try:
            held.enter_context(file_lock(character_lock(home, character.slug)))
        except Timeout:
            raise TrainingError(
                f"{character.name} is already being trained or prepared by another storybook run, or removed; wait "
                "for it to finish (or stop it), then try again."
            ) from None
        check_not_removed(home, character)
        yield


def build_identity(
    home: Path,
    name: str,
    method: IdentityMethod = "lora",
    model: str | None = None,
    overrides: dict | None = None,
    adapter: AdapterSource | None = None,
    image_scale: float | None = None,
    **training_options,
) -> tuple[IdentityMetadata | None, ImagePrompt | None]:
    """Build the identity of character `name` for base `model` by `method`; return (training metadata, image prompt),
    each None where the method has none.

    `overrides` and `training_options` go to the trainer (`train_identity`); `adapter` is the IP-Adapter (default:
    the data root's configured one, else the base model's own, see `default_adapter`) and `image_scale` its
    strength. Raises what the trainer raises, and ModelError when an image prompt has no adapter to use.
    """
    model = model or configured_model(home)
    recipe = RECIPES[method]
    image_adapter = None
    if recipe.image_prompt:
        configured = configured_adapter(home) if model == configured_model(home) else None  # its model's adapter
        image_adapter = adapter or configured or default_adapter(model)
        if image_adapter is None:
            raise ModelError(
                f"{model} has no IP-Adapter of its own: give one with --ip-adapter (a local folder or a downloaded hub "
                "id such as h94/IP-Adapter) and --ip-adapter-weight (e.g. models/ip-adapter_sd15.safetensors)."
            )
        check_adapter(image_adapter)  # before any training: say now when it is not on this machine, or no adapter
    if image_scale is not None and not 0 <= image_scale <= 4:  # NaN too: checked before any training
        raise ModelError(f"The image-prompt scale must be a number from 0 to 4, not {image_scale}.")
    if image_scale is None:
        image_scale = MINI_ADAPTER_SCALE if image_adapter == MINI_ADAPTER_SOURCE else USER_ADAPTER_SCALE
    character = load_character(home, name)
    folder = character_dir(home, character.slug)
    with identity_lock(home, character):
        remove_stale_builds(identity_folder(home, character.slug))  # left by a build that was killed
        if recipe.trained is None:
            with build_folder(identity_folder(home, character.slug)) as built:
                record = write_image_prompt(home, built, character, model, image_adapter, image_scale)
            shutil.rmtree(folder / "samples", ignore_errors=True)  # sample grids of an earlier trained identity
            return None, record
        metadata = train_identity(
            home, character.slug, recipe.trained, model, overrides, command_method=method, **training_options
        )
        if image_adapter is None:
            return metadata, None
        # The trained weights are in place; the image prompt joins them (its record written last).
        return metadata, write_image_prompt(
            home, identity_folder(home, character.slug), character, model, image_adapter, image_scale
        )
