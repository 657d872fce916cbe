"""The data root's own settings (`storybook config`, the app's Settings page): the base model, device, dtype and the
helper models every command, the app and batch specs use where no flag or spec names one.

Precedence, everywhere: a flag (or a spec's or book's own setting) > the data root's config.json > the default
($STORYBOOK_MODEL, else storybook-mini; the best device; fp16 on GPUs).
"""

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from storybook.errors import ModelError, describe_problems
from storybook.storage import MINI_MODEL, MODEL_ENV, InsidePath, default_model
from storybook.text import hidden_characters

CONFIG_FILE = "config.json"
H94_WEIGHT = "models/ip-adapter_sd15.safetensors"  # an IP-Adapter's files, as h94/IP-Adapter lays out SD 1.5's
H94_IMAGE_ENCODER = "models/image_encoder"
MINI_ADAPTER = "storybook-mini"  # alias of the committed adapter of storybook-mini
MINI_ADAPTER_FILE = "ip-adapter_storybook-mini.safetensors"
X4_UPSCALER = "stabilityai/stable-diffusion-x4-upscaler"  # the upscaler for print files, unless one is set
SAFETY_OFF = "off"  # the config's value for "no safety checker"
Dtype = Literal["fp32", "fp16", "bf16"]


def plain_line(value: str) -> str:
    """`value` when it is one line without control characters, line separators or surrounding spaces."""
    if hidden_characters(value) or value != value.strip():
        raise ValueError("must be one line without control characters or surrounding spaces")
    return value


def absolute_if_local(value: str) -> str:
    """A local folder as an absolute path (the app and every command find it from any working directory); a hub
    id or alias as it is."""
    if value in ("tiny", MINI_MODEL, SAFETY_OFF):  # the aliases, and "off" (no safety checker)
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


class AdapterSource(BaseModel):
    """Where an IP-Adapter is: a hub id or local folder (or 'storybook-mini'), its weights file and image encoder
    as paths inside it (h94/IP-Adapter: 'models/ip-adapter_sd15.safetensors' and 'models/image_encoder')."""

    source: str
    weight_name: str
    image_encoder: str = "image_encoder"

    @field_validator("source")
    @classmethod
    def local_folders_are_absolute(cls, source: str) -> str:
        """A local folder is kept as an absolute path, so the app and other working directories find it too."""
        folder = Path(source).expanduser()
        return str(folder.resolve()) if folder.is_dir() else source

    @field_validator("weight_name", "image_encoder")
    @classmethod
    def stays_inside_the_adapter(cls, path: str) -> str:
        """Paths inside the adapter's folder: relative, without '..'."""
        if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            raise ValueError(f"{path!r} must be a path inside the adapter's folder (relative, without '..')")
        return path


MINI_ADAPTER_SOURCE = AdapterSource(source=MINI_ADAPTER, weight_name=MINI_ADAPTER_FILE)


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


def configured_model(home: Path) -> str:
    """The base model of the data root: its config's, else $STORYBOOK_MODEL, else storybook-mini."""
    return load_config(home).model or default_model()


def configured_adapter(home: Path) -> AdapterSource | None:
    """The data root's IP-Adapter (with h94/IP-Adapter's SD 1.5 file layout where its paths are not set), or None."""
    return adapter_of(load_config(home))


def adapter_of(config: DataRootConfig) -> AdapterSource | None:
    """The IP-Adapter `config` names (with h94/IP-Adapter's SD 1.5 file layout where its paths are not set), or
    None."""
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
