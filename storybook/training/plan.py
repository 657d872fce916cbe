"""A training run as checked before any weights load: the device, the model's family and shape, the settings (the
method's defaults for the model, the device's mixed precision and optimiser, a resumed run's own), and the memory plan
that fits them to the card (storybook/training/fit.py) or refuses them."""

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from pydantic import BaseModel, Field, ValidationError, model_validator

from storybook.config import configured_model, load_config
from storybook.errors import TrainingError, describe_problems
from storybook.identities import METHODS, resolve_config
from storybook.identities.base import ModelShape
from storybook.identities.training_config import Method, MixedPrecision, Optimizer, TrainingConfig, resumed_config
from storybook.models import (
    check_model_on_disk,
    model_family,
    model_fingerprint,
    parse_device,
    pick_device,
)
from storybook.registry import Character, character_dir
from storybook.training.batches import photo_captions
from storybook.training.checkpoints import latest_checkpoint, read_state
from storybook.training.class_images import BATCH as CLASS_BATCH
from storybook.training.fit import Card, fit_to_card
from storybook.training.optimizers import optimizer_class
from storybook.training.vram import GIB, MemoryNeed, model_shape, render_need

Finite = Annotated[float, Field(allow_inf_nan=False)]


class SavedRun(BaseModel):
    """What `--resume` reads of a checkpoint's state.json (see `checkpoint_now` in `train_identity`), checked, so that
    a damaged file is refused rather than resumed."""

    step: int = Field(ge=0)
    loss_history: list[Finite]  # one loss a step
    photo_loss_before: Finite
    elapsed_s: Finite = Field(ge=0)
    config: TrainingConfig
    base: str  # the base model's fingerprint
    captions: list[str] | None = None  # each photo's caption (older checkpoints did not record them)

    @model_validator(mode="after")
    def one_loss_a_step(self) -> "SavedRun":
        """A loss for every step done."""
        if len(self.loss_history) != self.step:
            raise ValueError(f"{len(self.loss_history)} losses recorded for {self.step} steps")
        return self


def default_mixed_precision(device: torch.device) -> MixedPrecision:
    """The mixed precision a run trains with unless told: bf16 on a CUDA GPU that supports it, else fp16 there
    (frozen weights in half precision, trained ones and an upcast VAE in fp32); none elsewhere (bf16 autocast on
    this project's CPU trained a storybook-mini LoRA ten times slower, docs/gpu.md)."""
    if device.type != "cuda":
        return "no"
    return "bf16" if bf16_in_hardware() else "fp16"


def default_optimizer(device: torch.device) -> Optimizer:
    """AdamW with 8-bit states (bitsandbytes) on a CUDA GPU when bitsandbytes is installed, else torch's AdamW."""
    return "adamw-8bit" if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") else "adamw"


def class_image_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the pipeline that draws class images: half precision on a GPU, fp32 on the CPU."""
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if device.type == "cuda" and bf16_in_hardware() else torch.float16


def bf16_in_hardware() -> bool:
    """Whether the current CUDA GPU computes in bf16 natively (Ampere and later; torch's own check also says yes
    where bf16 is only emulated, slowly, as on a T4 or V100)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def card_for(home: Path, device: torch.device) -> Card | None:
    """The card a run on `device` plans for: its memory is the data root's `gpu_memory` setting when set (a card
    shared with other programs, or a test's card), else what CUDA reports; None off CUDA (nothing to fit)."""
    setting = load_config(home).gpu_memory
    if device.type != "cuda":
        return None
    memory = int(setting * GIB) if setting else torch.cuda.get_device_properties(device.index or 0).total_memory
    return Card(memory, bf16_in_hardware(), importlib.util.find_spec("bitsandbytes") is not None)


def run_settings(
    character: Character,
    method: Method,
    model: str,
    fingerprint: str,
    checkpoint: Path | None,
    fresh: TrainingConfig,
    overrides: dict | None,
    resume: bool,
    restart: bool,
) -> tuple[TrainingConfig, SavedRun | None]:
    """The settings of this run (`fresh`, the method's defaults with the overrides, unless it resumes), and the
    checkpoint's saved state when it resumes (else None).

    Raises TrainingError for a resume without checkpoint, an unfinished run given neither `resume` nor `restart`, or a
    checkpoint of another base model, damaged, or past the steps asked for.
    """
    if resume and checkpoint is None:
        raise TrainingError(f"No checkpoint to resume for {character.name}; train without --resume.")
    if checkpoint is not None and not (resume or restart):
        raise TrainingError(
            f"{character.name} has an unfinished training run ({checkpoint.name}): continue it with --resume, "
            "or start over with --restart."
        )
    if not resume:
        return fresh, None
    try:
        state = SavedRun.model_validate(read_state(checkpoint))
    except ValidationError as error:
        raise TrainingError(
            f"{checkpoint} is damaged ({describe_problems(error)}); start over with --restart."
        ) from None
    if state.base != fingerprint:
        raise TrainingError(
            f"{checkpoint} was made with another base model than {model}; resume with that model's --model, or "
            "start over with --restart."
        )
    config = resumed_config(state.config, method, overrides)
    captions = photo_captions(character, config)
    if (state.captions or captions) != captions:  # older checkpoints did not record them
        raise TrainingError(
            f"The captions of {character.name}'s photos changed since {checkpoint.name} was saved, so a resumed run "
            "would learn from both; start over with --restart (or put the captions back and resume)."
        )
    if state.step > config.steps:
        raise TrainingError(f"{checkpoint} is already past --steps {config.steps}; give at least {state.step}.")
    return config, state


@dataclass(frozen=True)
class RunPlan:
    """A training run as checked before any weights load."""

    model: str  # as the user named it
    model_path: str  # where it is on this machine
    device: torch.device
    fingerprint: str  # of the base model's UNet weights
    config: TrainingConfig
    checkpoint: Path | None  # the unfinished run's last checkpoint
    state: SavedRun | None  # its saved state, when the run resumes
    need: MemoryNeed | None = None  # the expected GPU memory, on a CUDA card
    switches: list[str] = field(default_factory=list)  # the memory policies applied to fit the card
    class_batch: int = CLASS_BATCH  # class images drawn at a time (fewer where the card is small)


def plan_run(
    home: Path,
    character: Character,
    method: Method,
    model: str | None,
    device: str | None,
    overrides: dict | None,
    resume: bool,
    restart: bool,
    sample_grids: bool = True,
) -> RunPlan:
    """Check everything about a run that can be refused, from the model's configs alone: the device, the model's
    family and size, the settings (the method's defaults for them, mixed precision and optimizer for the device), the
    checkpoint to resume, and on a CUDA card the memory plan, which may switch settings the user did not give to
    policies that fit (announced in `switches`). Raises TrainingError and ModelError."""
    if resume and restart:
        raise TrainingError("Give --resume (go on with the unfinished run) or --restart (start over), not both.")
    device = device or load_config(home).device
    requested = parse_device(device) if device else None
    if requested is not None and requested.type == "cuda" and requested.index not in (None, 0):
        raise TrainingError(
            f"Training runs on the current GPU; to train on {device}, run with "
            f"CUDA_VISIBLE_DEVICES={requested.index} and --device cuda."
        )
    model = model or configured_model(home)
    model_path = check_model_on_disk(model, home)
    family = model_family(model_path)
    if family not in METHODS[method].families:
        trainable_there = " or ".join(name for name, part in METHODS.items() if family in part.families)
        raise TrainingError(
            f"{method} identities train on Stable Diffusion 1.x/2.x only, and {model} is an SDXL model: use "
            f"--method {trainable_there}."
        )
    shape = model_shape(model_path)
    torch_device = pick_device(device)
    fingerprint = model_fingerprint(model_path, home)
    checkpoint = latest_checkpoint(character_dir(home, character.slug) / "checkpoints")
    on_this_device = {
        "mixed_precision": default_mixed_precision(torch_device),
        "optimizer": default_optimizer(torch_device),
    }
    fresh = resolve_config(method, shape.unet, on_this_device | (overrides or {}), family)
    config, state = run_settings(character, method, model, fingerprint, checkpoint, fresh, overrides, resume, restart)
    check_precision_on(torch_device, config)
    need, switches, class_batch = None, [], CLASS_BATCH
    if card := card_for(home, torch_device):
        fixed = frozenset(TrainingConfig.model_fields) if state is not None else frozenset(overrides or {})
        fitted = fit_to_card(shape, config, card, fixed, sample_grids=sample_grids)
        config, need, switches = fitted.config, fitted.need, fitted.switches
        class_batch = class_images_at_a_time(shape, card)
    optimizer_class(config.optimizer)  # bitsandbytes is there when it is asked for
    return RunPlan(model, model_path, torch_device, fingerprint, config, checkpoint, state, need, switches, class_batch)


def class_images_at_a_time(shape: ModelShape, card: Card) -> int:
    """How many class images the half-precision base pipeline draws at once on `card`: up to CLASS_BATCH, as many as
    its plan fits (an SDXL batch of 4 needs ~15 GiB, one ~12 GiB)."""
    fitting = [size for size in range(CLASS_BATCH, 0, -1) if render_need(shape, 2, batch=size).on_card <= card.memory]
    return fitting[0] if fitting else 1


def check_precision_on(device: torch.device, config: TrainingConfig) -> None:
    """Raises TrainingError for mixed precision on the CPU: bf16 autocast on this project's CPU trained ten times
    slower (measured, docs/gpu.md)."""
    if config.mixed_precision != "no" and device.type == "cpu":
        raise TrainingError(
            "Mixed precision needs a GPU (bf16 autocast on this project's CPU trained ten times slower, measured); "
            "on the CPU train with --mixed-precision no."
        )
