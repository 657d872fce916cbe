"""The data root's own settings (`storybook config`, the app's Settings page): the base model, device, dtype and the
helper models every command, the app and batch specs use where no flag or spec names one.

Precedence, everywhere: a flag (or a spec's or book's own setting) > the data root's config.json > the default
($STORYBOOK_MODEL, else storybook-mini; the best device; fp16 on GPUs).
"""

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from filelock import FileLock
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from storybook.errors import ModelError, describe_problems
from storybook.storage import MINI_MODEL, MODEL_ENV, InsidePath, atomic_write_text, default_model
from storybook.text import hidden_characters

if TYPE_CHECKING:
    from storybook.image_prompt import AdapterSource

CONFIG_FILE = "config.json"
H94_WEIGHT = "models/ip-adapter_sd15.safetensors"  # an IP-Adapter's files, as h94/IP-Adapter lays out SD 1.5's
H94_IMAGE_ENCODER = "models/image_encoder"
Dtype = Literal["fp32", "fp16", "bf16"]


def plain_line(value: str) -> str:
    """`value` when it is one line without control characters, line separators or surrounding spaces."""
    if hidden_characters(value) or value != value.strip():
        raise ValueError("must be one line without control characters or surrounding spaces")
    return value


def absolute_if_local(value: str) -> str:
    """A local folder as an absolute path (the app and every command find it from any working directory); a hub
    id or alias as it is."""
    if value in ("tiny", MINI_MODEL, "off"):  # the aliases, and "off" (no safety checker)
        return value
    try:
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() or value.startswith((".", "/", "~")) else value
    except (OSError, RuntimeError) as error:  # a name too long for the file system, an unknown ~user
        raise ValueError(f"is not a usable path ({error})") from None


# A base model, IP-Adapter or upscaler: an alias, a hub id or a local folder.
ModelSource = Annotated[
    str, Field(min_length=1, max_length=500), AfterValidator(plain_line), AfterValidator(absolute_if_local)
]
FileInside = Annotated[InsidePath, Field(max_length=500), AfterValidator(plain_line)]  # a path inside its folder


class DataRootConfig(BaseModel):
    """What config.json holds; None: not set (the default applies). An unknown field is an error."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource | None = None  # storybook-mini, tiny, a folder or a hub id
    device: str | None = None  # cuda, cuda:1, mps or cpu
    dtype: Dtype | None = None  # the weights' dtype when drawing
    ip_adapter: ModelSource | None = None  # IP-Adapter: storybook-mini, a folder or a hub id
    ip_adapter_weight: FileInside | None = None  # its weights file, inside it
    image_encoder: FileInside | None = None  # its image encoder folder, inside it
    upscaler: ModelSource | None = None  # the x4 upscaler for print files
    safety_checker: ModelSource | None = None  # "off", or a StableDiffusionSafetyChecker folder or hub id
    # The GPU memory (GiB) the memory plans use instead of what CUDA reports: a card shared with other programs, or
    # a card to plan for (`storybook doctor`, the tests).
    gpu_memory: float | None = Field(None, gt=0, le=1024, allow_inf_nan=False)

    @field_validator("device")
    @classmethod
    def known_device(cls, value: str | None) -> str | None:
        """cuda, cuda:N, mps or cpu."""
        if value is not None and not re.fullmatch(r"cuda(:(0|[1-9][0-9]{0,2}))?|mps|cpu", value, re.ASCII):
            raise ValueError(f"{value!r} is not a device: use cuda, cuda:1, mps or cpu")
        return value


def config_path(home: Path) -> Path:
    """Where the data root keeps its settings."""
    return home / CONFIG_FILE


def load_config(home: Path) -> DataRootConfig:
    """The data root's settings (all unset when it has no config.json). Raises ModelError for a damaged file,
    saying how to mend it."""
    path = config_path(home)
    if not path.exists() and not path.is_symlink():
        return DataRootConfig()
    try:
        return DataRootConfig.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        if isinstance(error, ValidationError):
            problem = describe_problems(error)
        elif isinstance(error, json.JSONDecodeError):
            problem = f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        else:
            problem = getattr(error, "strerror", None) or str(error)
        raise ModelError(
            f"{path} cannot be read ({problem}): correct it, or delete it (the defaults apply) and set what you need "
            "with `storybook config`."
        ) from None


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
    from storybook.image_prompt import check_adapter
    from storybook.models import check_model_on_disk, local_snapshot, model_family, pipeline_class
    from storybook.printing.print_pictures import UPSCALER_CLASS, X4_UPSCALER
    from storybook.safety import SAFETY_OFF, named_checker_folders

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


def configured_model(home: Path) -> str:
    """The base model of the data root: its config's, else $STORYBOOK_MODEL, else storybook-mini."""
    return load_config(home).model or default_model()


def configured_adapter(home: Path) -> "AdapterSource | None":
    """The data root's IP-Adapter (with h94/IP-Adapter's SD 1.5 file layout where its paths are not set), or None."""
    return adapter_of(load_config(home))


def adapter_of(config: DataRootConfig) -> "AdapterSource | None":
    """The IP-Adapter `config` names (with h94/IP-Adapter's SD 1.5 file layout where its paths are not set), or
    None."""
    from storybook.image_prompt import MINI_ADAPTER, MINI_ADAPTER_SOURCE, AdapterSource

    if config.ip_adapter is None:
        return None
    if config.ip_adapter == MINI_ADAPTER and not (config.ip_adapter_weight or config.image_encoder):
        return MINI_ADAPTER_SOURCE  # storybook-mini's own adapter, in its own layout
    return AdapterSource(
        source=config.ip_adapter,
        weight_name=config.ip_adapter_weight or H94_WEIGHT,
        image_encoder=config.image_encoder or H94_IMAGE_ENCODER,
    )


def described_settings(home: Path) -> list[tuple[str, str, str]]:
    """(setting, value in use, where it comes from) for each setting of the data root, for `storybook config` and
    the app's Settings page."""
    from storybook.printing.print_pictures import X4_UPSCALER

    config = load_config(home)
    defaults = {
        "model": (default_model(), f"${MODEL_ENV}" if os.environ.get(MODEL_ENV) else "default"),
        "device": ("the best available (cuda, mps, cpu)", "default"),
        "dtype": ("fp16 on a GPU, fp32 on the CPU", "default"),
        "ip_adapter": ("the base model's own", "default"),
        "ip_adapter_weight": (H94_WEIGHT, "default"),
        "image_encoder": (H94_IMAGE_ENCODER, "default"),
        "upscaler": (X4_UPSCALER, "default"),
        "safety_checker": ("the base model's own (SD 1.5 ships one; SDXL and the models built here none)", "default"),
        "gpu_memory": ("what CUDA reports of the card", "default"),
    }
    return [
        (name, str(value), CONFIG_FILE) if (value := getattr(config, name)) is not None else (name, *defaults[name])
        for name in DataRootConfig.model_fields
    ]
