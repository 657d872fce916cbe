"""Identity training, one loop for every method: sample cached latents of the photos (and of the class images), add
noise, predict it, weight the loss, step; checkpoint every N steps and on Ctrl-C; save the identity at the end. What
trains, how it is saved and how it loads is the method's part (storybook/training/methods/). Every random draw comes
from one CPU generator whose state is checkpointed, so a resumed run reaches the same weights as an unbroken one.
"""

import importlib.util
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.training_utils import cast_training_params
from PIL import Image
from pydantic import BaseModel, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from storybook.config import configured_model, load_config
from storybook.errors import TrainingError, TrainingInterrupted, describe_problems
from storybook.models import (
    check_model_on_disk,
    load_pipeline,
    model_family,
    model_fingerprint,
    parse_device,
    pick_device,
    unet_parameter_count,
)
from storybook.registry import Character, character_dir, check_not_removed, load_character, prepared_photo_paths
from storybook.storage import build_folder
from storybook.training import losses
from storybook.training.checkpoints import latest_checkpoint, load_checkpoint, read_state, save_checkpoint
from storybook.training.class_images import class_image_dir, class_prompt, ensure_class_images
from storybook.training.config import Method, MixedPrecision, Optimizer, TrainingConfig, resumed_config
from storybook.training.families import Conditioning, concatenated, pipeline_family, text_encoders
from storybook.training.identity import RECORD, IdentityMetadata
from storybook.training.latents import LatentSource, images_tensor
from storybook.training.methods import METHODS, resolve_config
from storybook.training.methods.base import SaveRequest, Trainable, freeze

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # frozen weights, by precision
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


@dataclass
class StepReport:
    """What the progress callback hears after each optimiser step."""

    step: int
    total: int
    loss: float
    elapsed_s: float


def validation_prompts(character: Character) -> list[str]:
    """Prompts rendered into the sample grid at each checkpoint: the token in a few picture-book situations."""
    subject = f"{character.token} {character.class_noun}"
    return [character.instance_prompt, f"a {subject} at the beach", f"a {subject} reading a book in bed"]


def photo_captions(character: Character, config: TrainingConfig) -> list[str]:
    """The caption each photo trains under: with the identifier ('a photo of zorv toddler') or the class noun alone
    ('a photo of toddler'), followed by the photo's own caption where the config trains on them and it has one."""
    bare = character.instance_prompt if config.captions == "identifier" else class_prompt(character.class_noun)
    own = [photo.caption if config.photo_captions else "" for photo in character.photos]
    return [f"{bare}, {caption}" if caption else bare for caption in own]


def fixed_noise_loss(unet, latents: torch.Tensor, conditioning: Conditioning, scheduler: DDPMScheduler) -> float:
    """Denoising loss on `latents` at 8 evenly spaced timesteps with fixed noise (seed 0): unlike the per-step
    training loss, which swings with the random timesteps, it is comparable before and after training."""
    generator = torch.Generator("cpu").manual_seed(0)
    timesteps = torch.linspace(50, scheduler.config.num_train_timesteps - 50, 8).long()
    total = 0.0
    with torch.no_grad():
        for timestep in timesteps:
            noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
            t = timestep.repeat(len(latents)).to(latents.device)
            prediction = unet(scheduler.add_noise(latents, noise, t), t, **conditioning.unet_inputs()).sample
            target = losses.diffusion_target(scheduler, latents, noise, t)
            total += losses.weighted_mse(prediction, target, torch.ones(len(latents), device=latents.device)).item()
    return total / len(timesteps)


def default_mixed_precision(device: torch.device) -> MixedPrecision:
    """The mixed precision a run trains with unless told: bf16 on a CUDA GPU that supports it, else fp16 there
    (frozen weights in half precision, trained ones and an upcast VAE in fp32); none elsewhere (bf16 autocast on
    this project's CPU trained a storybook-mini LoRA ten times slower, README "GPU memory and speed")."""
    if device.type != "cuda":
        return "no"
    return "bf16" if bf16_in_hardware() else "fp16"


def default_optimizer(device: torch.device) -> Optimizer:
    """AdamW with 8-bit states (bitsandbytes) on a CUDA GPU when bitsandbytes is installed, else torch's AdamW."""
    return "adamw-8bit" if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") else "adamw"


def optimizer_class(name: Optimizer) -> type[torch.optim.Optimizer]:
    """torch's AdamW, or bitsandbytes' AdamW8bit for 'adamw-8bit'. Raises TrainingError when bitsandbytes is not
    installed."""
    if name == "adamw":
        return torch.optim.AdamW
    try:
        import bitsandbytes
    except ImportError as error:
        raise TrainingError(
            f"--optimizer adamw-8bit needs bitsandbytes, which cannot be imported here ({error}): install it with "
            "`pip install 'storybook[gpu]'` on a CUDA machine, or train with --optimizer adamw."
        ) from None
    return bitsandbytes.optim.AdamW8bit


def class_image_dtype(device: torch.device) -> str:
    """The dtype of the pipeline that draws class images: half precision on a GPU, fp32 on the CPU."""
    if device.type == "cpu":
        return "fp32"
    return "bf16" if device.type == "cuda" and bf16_in_hardware() else "fp16"


def bf16_in_hardware() -> bool:
    """Whether the current CUDA GPU computes in bf16 natively (Ampere and later; torch's own check also says yes
    where bf16 is only emulated, slowly, as on a T4 or V100)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def make_accelerator(mixed_precision: str, cpu: bool) -> Accelerator:
    """A fresh Accelerator for one training run.

    accelerate keeps one process-wide state and refuses a second run with another mixed-precision setting (the
    Streamlit app trains several characters in one process), so each run starts from a reset state.
    """
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


@contextmanager
def interrupts_between_steps() -> Iterator[Callable[[], bool]]:
    """Within the block a first Ctrl-C only asks to stop, and the loop stops between steps, so that a step is never
    split from its bookkeeping and the final save is never cut short; a second Ctrl-C interrupts at once.

    Yields a function telling whether a stop was asked. Signals reach only the main thread, so elsewhere (the
    Streamlit app) it never is.
    """
    requested = False

    def on_sigint(signum, frame):
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


def resume_command(character: Character, method: str, model: str, home: Path) -> str:
    """The command that continues `character`'s interrupted run (its settings come from the checkpoint)."""
    model_option = "" if model == configured_model(home) else f" --model {model}"
    return f"storybook character train {character.slug} --method {method}{model_option} --resume"


def diverged_message(character: Character, method: Method, step: int, checkpoint_root: Path) -> str:
    """What to say when the loss or the weights became NaN or infinite at `step`: nothing of it was saved."""
    last = latest_checkpoint(checkpoint_root)
    kept = (
        f"the last good checkpoint ({last.name}) is kept: `--resume` goes on from it"
        if last
        else "no checkpoint was saved before it"
    )
    return (
        f"Training of {character.name} diverged at step {step} (the loss or the weights became NaN or infinite) and "
        f"nothing of it was saved; {kept}. The learning rate is usually too high: start over with a lower --lr and "
        f"--restart (`storybook character train {character.slug} --method {method} --restart --lr ...`)."
    )


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


@dataclass
class Batches:
    """What one optimiser step's loss is computed from: the photos' latents and captions, and with prior preservation
    the class images' (the second half of each batch)."""

    pipeline: DiffusionPipeline
    character: Character
    config: TrainingConfig
    resolution: int  # of the photos and class images, in pixels
    instance_latents: LatentSource
    class_latents: LatentSource | None
    cached_embeddings: tuple[Conditioning, Conditioning | None] | None = None  # while the text encoders are frozen
    captions: list[str] = field(init=False)  # the caption of each photo (`photo_captions`)
    distinct: list[str] = field(init=False)  # each caption once, however many photos share it: encoded once
    caption_of_photo: torch.Tensor = field(init=False)  # (photos,): the index in `distinct` of each photo's caption

    def __post_init__(self) -> None:
        """Each photo's caption, and which distinct caption it is."""
        self.captions = photo_captions(self.character, self.config)
        self.distinct = sorted(set(self.captions))
        self.caption_of_photo = torch.tensor([self.distinct.index(caption) for caption in self.captions])

    def text_embeddings(self) -> tuple[Conditioning, Conditioning | None]:
        """The conditioning of each distinct photo caption, and of the class caption (one row; None without prior
        preservation), encoded the way the pipeline's family conditions its UNet."""
        if self.cached_embeddings is not None:
            return self.cached_embeddings
        encode = pipeline_family(self.pipeline).encode
        photos = encode(self.pipeline, self.distinct, self.resolution)
        if self.class_latents is None:
            return photos, None
        return photos, encode(self.pipeline, [class_prompt(self.character.class_noun)], self.resolution)

    def photo_embeddings(self, photo_indices: torch.Tensor) -> Conditioning:
        """The caption conditioning of each photo drawn (len(photo_indices) rows)."""
        return self.text_embeddings()[0][self.caption_of_photo[photo_indices]]

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning]:
        """One batch: (B or 2B, 4, h, w) latents of photos (then class images when preserving the prior) and the
        conditioning of their captions (B or 2B rows)."""
        latents, photo_indices = self.instance_latents.sample(self.config.batch_size, generator)
        captions, class_caption = self.text_embeddings()
        conditioning = captions[self.caption_of_photo[photo_indices]]
        if self.class_latents is not None:
            class_latents, _ = self.class_latents.sample(self.config.batch_size, generator)
            latents = torch.cat([latents, class_latents])
            conditioning = concatenated([conditioning, class_caption.expand(self.config.batch_size)])
        return latents, conditioning


def batch_loss(
    unet, batches: Batches, scheduler: DDPMScheduler, generator: torch.Generator, accelerator: Accelerator
) -> torch.Tensor:
    """The denoising loss of one batch: noised latents, the UNet's prediction, Min-SNR weights, and DreamBooth's prior
    preservation when there are class images."""
    config = batches.config
    latents, conditioning = batches.draw(generator)
    latents = latents.to(accelerator.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    noise = losses.offset_noise(noise, config.offset_noise, generator)
    timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    timesteps = timesteps.to(latents.device)
    with accelerator.autocast():
        prediction = unet(
            scheduler.add_noise(latents, noise, timesteps), timesteps, **conditioning.unet_inputs()
        ).sample
    target = losses.diffusion_target(scheduler, latents, noise, timesteps)
    weights = losses.min_snr_weights(scheduler, timesteps, config.snr_gamma)
    if batches.class_latents is None:
        return losses.weighted_mse(prediction, target, weights)
    b = config.batch_size
    return losses.prior_preservation_loss(
        losses.weighted_mse(prediction[:b], target[:b], weights[:b]),
        losses.weighted_mse(prediction[b:], target[b:], weights[b:]),
        config.prior_loss_weight,
    )


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


def plan_run(
    home: Path,
    character: Character,
    method: Method,
    model: str | None,
    device: str | None,
    overrides: dict | None,
    resume: bool,
    restart: bool,
) -> RunPlan:
    """Check everything about a run that can be refused, from the model's configs alone: the device, the model's
    family and size, the settings (the method's defaults for them, mixed precision and optimizer for the device), the
    checkpoint to resume. Raises TrainingError and ModelError."""
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
    unet_parameters = unet_parameter_count(model_path)
    torch_device = pick_device(device)
    fingerprint = model_fingerprint(model_path, home)
    checkpoint = latest_checkpoint(character_dir(home, character.slug) / "checkpoints")
    on_this_device = {
        "mixed_precision": default_mixed_precision(torch_device),
        "optimizer": default_optimizer(torch_device),
    }
    fresh = resolve_config(method, unet_parameters, on_this_device | (overrides or {}), family)
    config, state = run_settings(character, method, model, fingerprint, checkpoint, fresh, overrides, resume, restart)
    if config.mixed_precision != "no" and torch_device.type == "cpu":
        raise TrainingError(
            "Mixed precision needs a GPU (bf16 autocast on this project's CPU trained ten times slower, measured); "
            "on the CPU train with --mixed-precision no."
        )
    optimizer_class(config.optimizer)  # bitsandbytes is there when it is asked for
    return RunPlan(model, model_path, torch_device, fingerprint, config, checkpoint, state)


def load_for_training(home: Path, character: Character, plan: RunPlan) -> tuple[DiffusionPipeline, Trainable]:
    """The base pipeline set up to train: loaded in fp32 on the CPU, frozen weights cast to the run's precision (the
    VAE kept in fp32 where its config asks, as SD's and SDXL's do: SDXL's overflows in fp16), the method's trainable
    parts added in fp32, then moved to the run's device, so the GPU never holds the whole model in fp32."""
    config = plan.config
    pipeline, _ = load_pipeline(plan.model, home, "cpu", "fp32")
    frozen_dtype = WEIGHT_DTYPES[config.mixed_precision]
    freeze(pipeline.vae, torch.float32 if pipeline.vae.config.force_upcast else frozen_dtype)
    torch.manual_seed(config.seed)  # a LoRA's initial A matrices
    trainable = METHODS[config.method].prepare(pipeline, character, config, frozen_dtype)
    if config.gradient_checkpointing:
        pipeline.unet.enable_gradient_checkpointing()
    cast_training_params([pipeline.unet, *text_encoders(pipeline).values(), *trainable.modules.values()], torch.float32)
    pipeline.to(plan.device)
    for module in trainable.modules.values():
        module.to(plan.device)
    return pipeline, trainable


def train_identity(
    home: Path,
    name: str,
    method: Method = "lora",
    model: str | None = None,
    overrides: dict | None = None,
    resume: bool = False,
    restart: bool = False,
    export_kohya: bool = False,
    device: str | None = None,
    show_progress: bool = True,
    on_step: Callable[[StepReport], None] | None = None,
    command_method: str | None = None,
    sample_grids: bool = True,
) -> IdentityMetadata:
    """Train the identity of character `name` by `method` on base `model` and save it under its identity/ folder.

    `overrides` replaces the method's defaults (`resolve_config`, e.g. {"steps": 200}). Returns the saved metadata.
    `resume` continues the last checkpoint; `restart` discards it. `command_method` is the --method the resume
    command printed after Ctrl-C names (default `method`; 'lora+ip-adapter' trains a 'lora', 'pivotal+ip-adapter' a
    'pivotal'). `sample_grids` saves a grid of the token in three prompts at each checkpoint and at the end (the
    benchmarks turn it off). Raises TrainingError for impossible settings, resume mismatches or an unfinished run
    given neither, TrainingInterrupted after Ctrl-C (with a checkpoint saved), and ModelError when the base model
    cannot be loaded.
    """
    character = load_character(home, name)
    started = time.perf_counter()
    plan = plan_run(home, character, method, model, device, overrides, resume, restart)
    config, state, checkpoint, fingerprint = plan.config, plan.state, plan.checkpoint, plan.fingerprint
    model, part = plan.model, METHODS[method]
    folder = character_dir(home, character.slug)
    checkpoint_root = folder / "checkpoints"

    # Class images come from the untouched base model, drawn before the training pipeline loads (on a GPU by a
    # half-precision pipeline of their own, freed afterwards).
    class_paths = []
    if config.prior_preservation and config.num_class_images > 0:
        class_paths = ensure_class_images(
            lambda: load_pipeline(model, home, str(plan.device), class_image_dtype(plan.device))[0],
            class_image_dir(home, fingerprint, character.class_noun),
            character.class_noun,
            config.num_class_images,
            config.class_image_steps,
            show_progress,
        )

    pipeline, trainable = load_for_training(home, character, plan)
    accelerator = make_accelerator(config.mixed_precision, cpu=plan.device.type == "cpu")
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    resolution = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    class_latents = None
    if class_paths:
        class_latents = LatentSource(pipeline.vae, images_tensor(class_paths, resolution), config.cache_latents)
    photos = images_tensor(prepared_photo_paths(home, character), resolution)
    batches = Batches(
        pipeline, character, config, resolution, LatentSource(pipeline.vae, photos, config.cache_latents), class_latents
    )
    trained = {"unet": pipeline.unet, **text_encoders(pipeline), **trainable.modules}  # their requires_grad ones train
    parameters = [p for module in trained.values() for p in module.parameters() if p.requires_grad]
    rates = [trainable.learning_rates.get(p, config.learning_rate) for p in parameters]
    groups = [
        {"params": [p for p, r in zip(parameters, rates, strict=True) if r == rate], "lr": rate}
        for rate in sorted(set(rates))
    ]
    optimizer = optimizer_class(config.optimizer)(groups, lr=config.learning_rate, weight_decay=1e-2)  # as diffusers
    unet, *_, optimizer = accelerator.prepare(pipeline.unet, *text_encoders(pipeline).values(), optimizer)
    if not trainable.text_changes:
        with torch.no_grad():
            batches.cached_embeddings = batches.text_embeddings()

    def photo_loss() -> float:
        """`fixed_noise_loss` of the character's photos under their caption: falls as the identity is learned."""
        with torch.no_grad():
            latents = batches.instance_latents.means()  # the VAE outside autocast: SDXL's overflows in fp16
            conditioning = batches.photo_embeddings(torch.arange(len(character.photos)))
            with accelerator.autocast():
                return fixed_noise_loss(unet, latents, conditioning, noise_scheduler)

    generator = torch.Generator("cpu").manual_seed(config.seed)
    step, loss_history = 0, []
    if state is not None:
        load_checkpoint(checkpoint, trained, optimizer, accelerator.scaler, generator)
        step, loss_history, photo_loss_before = state.step, state.loss_history, state.photo_loss_before
        started -= state.elapsed_s
    else:
        shutil.rmtree(checkpoint_root, ignore_errors=True)
        photo_loss_before = photo_loss()
        if not math.isfinite(photo_loss_before):  # before any step: not the learning rate, the model
            raise TrainingError(
                f"{model} gives NaN or infinite values before any training, so nothing was trained: its weights are "
                "damaged (download it again), or half precision overflowed (train with --mixed-precision no)."
            )

    def checkpoint_now(rng_state: torch.Tensor) -> None:
        """Save a checkpoint of the run so far, with the RNG state the next step must start from."""
        state = {
            "loss_history": loss_history,
            "photo_loss_before": photo_loss_before,
            "elapsed_s": time.perf_counter() - started,
            "config": config.model_dump(),
            "base": fingerprint,
            "captions": batches.captions,
        }
        save_checkpoint(checkpoint_root, step, trained, optimizer, accelerator.scaler, rng_state, state)

    def diverged(at_step: int) -> TrainingError:
        return TrainingError(diverged_message(character, method, at_step, checkpoint_root))

    with interrupts_between_steps() as stop_requested:
        progress = tqdm(total=config.steps, initial=step, desc=f"training {character.name}", disable=not show_progress)
        unet.train()
        try:
            rng_state = generator.get_state()  # the state the next step starts from: saved with `step` in checkpoints
            while step < config.steps:
                check_not_removed(home, character)  # a removal waits for this run: it stops here, saving nothing
                step_loss = 0.0
                for _ in range(config.grad_accum):
                    loss = batch_loss(unet, batches, noise_scheduler, generator, accelerator)
                    accelerator.backward(loss / config.grad_accum)
                    step_loss += loss.item() / config.grad_accum
                if not math.isfinite(step_loss):
                    raise diverged(step + 1)
                trainable.before_update(step)
                accelerator.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                trainable.after_step()
                step, rng_state = step + 1, generator.get_state()
                loss_history.append(step_loss)
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}")
                if on_step:
                    on_step(StepReport(step, config.steps, step_loss, time.perf_counter() - started))
                if step % config.checkpoint_every == 0 and step < config.steps:
                    if not all(torch.isfinite(p).all() for p in parameters):  # never checkpoint poisoned weights
                        raise diverged(step)
                    checkpoint_now(rng_state)
                    if sample_grids:
                        save_samples(pipeline, character, folder / "samples" / f"step-{step:06d}.png", accelerator)
                if stop_requested():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            checkpoint_now(rng_state)
            raise TrainingInterrupted(
                f"Training of {character.name} stopped at step {step}/{config.steps}; a checkpoint was saved. "
                f"Continue with `{resume_command(character, command_method or method, model, home)}`."
            ) from None
        finally:
            progress.close()

        photo_loss_after = photo_loss()
        if not (math.isfinite(photo_loss_after) and all(torch.isfinite(p).all() for p in parameters)):
            raise diverged(step)
        check_not_removed(home, character)
        with build_folder(folder / "identity") as partial:
            files = part.save(partial, pipeline, character, config, SaveRequest(model, fingerprint, step, export_kohya))
            metadata = IdentityMetadata(
                character=character.slug,
                token=character.token,
                class_noun=character.class_noun,
                method=method,
                base_model=model,
                base_model_fingerprint=fingerprint,
                cross_attention_dim=pipeline.unet.config.cross_attention_dim,
                resolution=resolution,
                config=config,
                steps_done=step,
                final_loss=loss_history[-1],
                loss_history=loss_history,
                photo_loss_before=photo_loss_before,
                photo_loss_after=photo_loss_after,
                wall_time_s=time.perf_counter() - started,
                photo_sha256=[record.sha256 for record in character.photos],
                captions=batches.captions,
                files=files,
                created_at=datetime.now(timezone.utc),
            )
            (partial / RECORD).write_text(metadata.model_dump_json(indent=2))
            if sample_grids:
                save_samples(pipeline, character, folder / "samples" / "final.png", accelerator)
        shutil.rmtree(checkpoint_root, ignore_errors=True)
        return metadata


def save_samples(
    pipeline: DiffusionPipeline, character: Character, path: Path, accelerator: Accelerator, steps: int = 20
) -> Path:
    """Render the validation prompts with the current weights (seeds 0..n-1) and save them side by side at `path`:
    denoised under the run's mixed precision, decoded outside it in the VAE's own dtype (SDXL's overflows in fp16)."""
    prompts = validation_prompts(character)
    was_training = pipeline.unet.training
    pipeline.unet.eval()
    with accelerator.autocast():
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in range(len(prompts))]
        latents = pipeline(prompts, num_inference_steps=steps, generator=generators, output_type="latent").images
    pipeline.unet.train(was_training)
    vae = pipeline.vae
    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    images = pipeline.image_processor.postprocess(pixels, output_type="pil")
    grid = Image.new("RGB", (sum(image.width for image in images), images[0].height))
    for index, image in enumerate(images):
        grid.paste(image, (index * image.width, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
