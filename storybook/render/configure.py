"""Changing the data root's settings (`storybook config`, the app's Settings page): each change checked against the
models on this machine before it is saved, so that no render fails later on a setting that cannot work. The settings
themselves, and how they are read, are in storybook/config.py (the bottom layer, which imports none of the models)."""

from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock
from pydantic import ValidationError

from storybook.config import CONFIG_FILE, SAFETY_OFF, X4_UPSCALER, DataRootConfig, adapter_of, config_path, load_config
from storybook.errors import ModelError, describe_problems
from storybook.identities.image_prompt import check_adapter
from storybook.models import check_model_on_disk, local_snapshot, model_family, pipeline_class
from storybook.render.print_pictures import UPSCALER_CLASS
from storybook.render.safety import named_checker_folders
from storybook.storage import atomic_write_text


def update_config(home: Path, changes: dict) -> DataRootConfig:
    """Apply `changes` (field -> value; None unsets a field) to the data root's settings, check them and save them
    atomically; return the result. Raises ModelError, and writes nothing, for a bad value, and for a model set that is
    not on this machine or of the wrong kind (see `check_kinds`)."""
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(home / f".{CONFIG_FILE}.lock"):  # the CLI and the app saving at once: neither loses the other's
        try:
            config = DataRootConfig.model_validate(load_config(home).model_dump() | changes)
        except ValidationError as error:
            raise ModelError(f"Bad setting: {describe_problems(error)}. Nothing was changed.") from None
        check_kinds(home, config, changes.keys())
        atomic_write_text(config_path(home), config.model_dump_json(indent=2, exclude_none=True) + "\n")
    return config


def check_kinds(home: Path, config: DataRootConfig, changed: Iterable[str]) -> None:
    """Raises ModelError when a model setting among `changed` names what is not on this machine or is of the wrong
    kind, where every render would fail: the base model (a text-to-image Stable Diffusion pipeline), the safety
    checker (a StableDiffusionSafetyChecker), the IP-Adapter with its weights file and image encoder, and the
    upscaler when it is here (an x4 upscaler; one not downloaded yet is allowed: export falls back to lanczos)."""
    changed = set(changed)
    if "model" in changed and config.model:
        model_family(check_model_on_disk(config.model, home))
    if "safety_checker" in changed and config.safety_checker not in (None, SAFETY_OFF):
        named_checker_folders(config.safety_checker)
    if changed & {"ip_adapter", "ip_adapter_weight", "image_encoder"} and (adapter := adapter_of(config)):
        check_adapter(adapter)
    upscaler = local_snapshot(config.upscaler) if "upscaler" in changed and config.upscaler else None
    if upscaler is not None and (kind := pipeline_class(upscaler)) != UPSCALER_CLASS:
        raise ModelError(f"{config.upscaler} is a {kind}, not an x4 upscaler ({UPSCALER_CLASS}, e.g. {X4_UPSCALER}).")
