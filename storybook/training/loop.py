"""Identity training, one loop for every method: sample cached latents of the photos (and of the class images), add
noise, predict it under the run's autocast, weight the loss, step; checkpoint every N steps and on Ctrl-C; save the
identity at the end. What trains, how it is saved and how it loads is the method's part
(storybook/identities/); what the model family conditions on is its part (families.py). Every random draw comes
from one CPU generator whose state is checkpointed, so a resumed run reaches the same weights as an unbroken one.

Mixed precision is written out here with torch.amp: the forward pass, captions' encoding included, runs under
`torch.autocast`, and fp16's gradients are scaled by a `GradScaler`; nothing depends on a library wrapping a model's
forward. Frozen parts a step does not use (the text encoders once captions are encoded, the VAE once latents are
cached) wait on the CPU and come to the card only for the moments that need them.
"""

import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.training_utils import cast_training_params
from PIL import Image
from tqdm.auto import tqdm

from storybook.config import configured_model, load_config
from storybook.errors import TrainingError, TrainingInterrupted
from storybook.identities import METHODS
from storybook.identities.base import SaveRequest, Trainable, freeze
from storybook.identities.families import pipeline_family, text_encoders
from storybook.identities.record import RECORD, IdentityMetadata
from storybook.identities.training_config import Method, MixedPrecision, TrainingConfig
from storybook.models import load_pipeline, pick_dtype
from storybook.registry import Character, character_dir, check_not_removed, load_character, prepared_photo_paths
from storybook.storage import build_folder
from storybook.training.batches import Batches, batch_loss, fixed_noise_loss, image_sides
from storybook.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from storybook.training.class_images import class_image_dir, ensure_class_images
from storybook.training.latents import LatentSource, images_tensor
from storybook.training.optimizers import WEIGHT_DECAY, fuse_into_backward, optimizer_class
from storybook.training.plan import RunPlan, class_image_dtype, plan_run
from storybook.training.vram import gib

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # frozen weights, by precision
MAX_GRAD_NORM = 1.0  # as diffusers' example scripts clip


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


def autocast(device: torch.device, mixed_precision: MixedPrecision) -> torch.autocast:
    """The run's autocast on `device`: fp16 or bf16 compute for the frozen and trained weights alike, off for 'no'."""
    enabled = mixed_precision != "no"
    dtype = WEIGHT_DTYPES[mixed_precision] if enabled else torch.bfloat16  # a dtype autocast knows, even when off
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


@contextmanager
def on_card(modules: list[torch.nn.Module], device: torch.device) -> Iterator[None]:
    """Within the block `modules` (frozen parts that wait on the CPU) are on `device`; afterwards back on the CPU,
    their GPU memory returned."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


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


@dataclass
class Loaded:
    """The pipeline set up to train, what trains in it, and its frozen parts that wait on the CPU."""

    pipeline: DiffusionPipeline
    trainable: Trainable
    parked_text: list[torch.nn.Module]  # frozen text encoders: on the card only to encode captions and prompts
    parked_vae: list[torch.nn.Module]  # the VAE, when latents are cached: on the card to cache and decode samples


def load_for_training(home: Path, character: Character, plan: RunPlan) -> Loaded:
    """The base pipeline set up to train: loaded in fp32 on the CPU, frozen weights cast to the run's precision (the
    VAE kept in fp32 where its config asks, as SD's and SDXL's do: SDXL's overflows in fp16), the method's trainable
    parts added in fp32 (bf16 with full_bf16); then the UNet and what trains moved to the run's device, the frozen
    text encoders and the VAE too unless the step does not use them. The GPU never holds the whole model in fp32."""
    config = plan.config
    pipeline, _ = load_pipeline(plan.model, home, torch.device("cpu"), torch.float32)
    frozen_dtype = WEIGHT_DTYPES[config.mixed_precision]
    freeze(pipeline.vae, torch.float32 if pipeline.vae.config.force_upcast else frozen_dtype)
    pipeline.vae.enable_slicing()  # encodes and decodes one picture at a time
    torch.manual_seed(config.seed)  # a LoRA's initial A matrices
    trainable = METHODS[config.method].prepare(pipeline, character, config, frozen_dtype)
    if config.gradient_checkpointing:
        pipeline.unet.enable_gradient_checkpointing()
    trained_dtype = torch.bfloat16 if config.full_bf16 else torch.float32
    cast_training_params([pipeline.unet, *text_encoders(pipeline).values(), *trainable.modules.values()], trained_dtype)
    parked_text = [] if trainable.text_changes else list(text_encoders(pipeline).values())
    parked_vae = [pipeline.vae] if config.cache_latents else []
    resident = [pipeline.unet, *text_encoders(pipeline).values(), pipeline.vae, *trainable.modules.values()]
    for module in resident:
        if not any(module is parked for parked in parked_text + parked_vae):
            module.to(plan.device)
    return Loaded(pipeline, trainable, parked_text, parked_vae)


def make_optimizer(config: TrainingConfig, parameters: list, rates: dict) -> torch.optim.Optimizer:
    """The run's optimiser over `parameters`, a parameter group per learning rate (`rates`: parameter -> its rate
    where it is not the config's)."""
    chosen = [rates.get(p, config.learning_rate) for p in parameters]
    groups = [
        {"params": [p for p, r in zip(parameters, chosen, strict=True) if r == rate], "lr": rate}
        for rate in sorted(set(chosen))
    ]
    extra = {"seed": config.seed} if config.optimizer == "adafactor" else {}
    return optimizer_class(config.optimizer)(groups, lr=config.learning_rate, weight_decay=WEIGHT_DECAY, **extra)


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
    benchmarks turn it off). On a CUDA card the memory plan may switch settings not given to policies that fit
    (printed with the progress). Raises TrainingError for impossible settings, a run that fits no policy on the card,
    resume mismatches or an unfinished run given neither, TrainingInterrupted after Ctrl-C (with a checkpoint saved),
    and ModelError when the base model cannot be loaded.
    """
    character = load_character(home, name)
    started = time.perf_counter()
    plan = plan_run(home, character, method, model, device, overrides, resume, restart, sample_grids)
    config, state, checkpoint, fingerprint = plan.config, plan.state, plan.checkpoint, plan.fingerprint
    model, part, run_device = plan.model, METHODS[method], plan.device
    folder = character_dir(home, character.slug)
    checkpoint_root = folder / "checkpoints"
    if plan.switches and show_progress:
        tqdm.write(f"To fit this card, training with {', '.join(plan.switches)} (about {gib(plan.need.on_card)}).")

    # Class images come from the untouched base model, drawn before the training pipeline loads (on a GPU by a
    # half-precision pipeline of their own that decodes one picture at a time, freed afterwards).
    class_paths = []
    if config.prior_preservation and config.num_class_images > 0:
        class_paths = ensure_class_images(
            lambda: load_pipeline(model, home, run_device, class_image_dtype(run_device))[0],
            class_image_dir(home, fingerprint, character.class_noun),
            character.class_noun,
            config.num_class_images,
            config.class_image_steps,
            show_progress,
            plan.class_batch,
        )

    loaded = load_for_training(home, character, plan)
    pipeline, trainable = loaded.pipeline, loaded.trainable
    precision = partial(autocast, run_device, config.mixed_precision)  # a fresh context at each use
    scaler = torch.amp.GradScaler(run_device.type, enabled=config.mixed_precision == "fp16")
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    resolution = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    photo_paths = prepared_photo_paths(home, character)
    with on_card(loaded.parked_vae, run_device):  # latents cached in the VAE's own dtype, outside autocast
        class_latents = None
        if class_paths:
            class_latents = LatentSource(pipeline.vae, images_tensor(class_paths, resolution), config.cache_latents)
        photos = LatentSource(pipeline.vae, images_tensor(photo_paths, resolution), config.cache_latents)
    batches = Batches(
        pipeline,
        character,
        config,
        resolution,
        photos,
        class_latents,
        image_sides(photo_paths),
        image_sides(class_paths) if class_paths else None,
    )
    trained = {"unet": pipeline.unet, **text_encoders(pipeline), **trainable.modules}  # their requires_grad ones train
    parameters = [p for module in trained.values() for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, parameters, trainable.learning_rates)
    unet = pipeline.unet
    sample_inputs = None  # the sample prompts' encodings, while the text encoders are frozen
    with torch.no_grad(), on_card(loaded.parked_text, run_device), precision():
        if not trainable.text_changes:
            batches.cached_embeddings = batches.text_embeddings()
            if sample_grids:
                sample_inputs = prompt_inputs(pipeline, character)

    def photo_loss() -> float:
        """`fixed_noise_loss` of the character's photos under their caption: falls as the identity is learned."""
        with torch.no_grad():
            latents = batches.instance_latents.means()  # the VAE outside autocast: SDXL's overflows in fp16
            with precision():
                conditioning = batches.photo_conditioning(torch.arange(len(character.photos)))
                return fixed_noise_loss(unet, latents, conditioning, noise_scheduler)

    def samples(path: Path) -> None:
        """The sample grid at `path`: the VAE back on the card to decode."""
        with torch.no_grad(), precision():  # a trained text encoder encodes the prompts now, under autocast
            inputs = sample_inputs or prompt_inputs(pipeline, character)
        with on_card(loaded.parked_vae, run_device):
            save_samples(pipeline, inputs, path, precision)

    saved_scaler = scaler if scaler.is_enabled() else None
    generator = torch.Generator("cpu").manual_seed(config.seed)
    step, loss_history = 0, []
    if state is not None:
        load_checkpoint(checkpoint, trained, optimizer, saved_scaler, generator)
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
    if config.fused_backward:  # each parameter steps as its gradient is ready; no gradient of the model is held
        fuse_into_backward(optimizer, parameters, MAX_GRAD_NORM)

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
        save_checkpoint(checkpoint_root, step, trained, optimizer, saved_scaler, rng_state, state)

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
                    with precision():
                        loss = batch_loss(unet, batches, noise_scheduler, generator)
                    scaler.scale(loss / config.grad_accum).backward()
                    step_loss += loss.item() / config.grad_accum
                if not math.isfinite(step_loss):
                    raise diverged(step + 1)
                if not config.fused_backward:
                    trainable.before_update(step)
                    scaler.unscale_(optimizer)  # clip the true gradients (fp16's are scaled)
                    torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
                    scaler.step(optimizer)  # skipped when fp16's gradients overflowed
                    scaler.update()
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
                        samples(folder / "samples" / f"step-{step:06d}.png")
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
        drawing_dtype = pick_dtype(run_device, load_config(home).dtype)  # what the renderer will load it in
        request = SaveRequest(model, fingerprint, step, export_kohya, drawing_dtype)
        check_not_removed(home, character)
        with build_folder(folder / "identity") as building:
            files = part.save(building, pipeline, character, config, request)
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
            (building / RECORD).write_text(metadata.model_dump_json(indent=2))
            if sample_grids:
                samples(folder / "samples" / "final.png")
        if not sample_grids:  # an earlier identity's grids would pass for this one's
            shutil.rmtree(folder / "samples", ignore_errors=True)
        shutil.rmtree(checkpoint_root, ignore_errors=True)
        return metadata


def prompt_inputs(pipeline: DiffusionPipeline, character: Character) -> list[dict[str, torch.Tensor]]:
    """The pipeline's inputs for each validation prompt, encoded by the family's text encoders (with guidance)."""
    encode = pipeline_family(pipeline).sample_inputs
    return [encode(pipeline, prompt) for prompt in validation_prompts(character)]


def save_samples(
    pipeline: DiffusionPipeline,
    inputs: list[dict[str, torch.Tensor]],
    path: Path,
    precision: Callable[[], torch.autocast],
    steps: int = 20,
) -> Path:
    """Render the encoded validation prompts `inputs` with the current weights (seeds 0..n-1) and save them side by
    side at `path`: denoised under the run's mixed `precision`, decoded outside it in the VAE's own dtype (SDXL's
    overflows in fp16). On the CPU the prompts are drawn as one batch (about half the time of one at a time); on a
    card one at a time, within the memory the run was planned for (`storybook.vram`)."""
    was_training = pipeline.unet.training
    pipeline.unet.eval()
    vae, images = pipeline.vae, []
    together = pipeline.unet.device.type == "cpu"
    groups = [list(range(len(inputs)))] if together else [[index] for index in range(len(inputs))]
    for seeds in groups:
        batch = {key: torch.cat([inputs[seed][key] for seed in seeds]) for key in inputs[0]}
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        with precision():
            latents = pipeline(**batch, num_inference_steps=steps, generator=generators, output_type="latent").images
        with torch.no_grad():
            pixels = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
        images += pipeline.image_processor.postprocess(pixels, output_type="pil")
    pipeline.unet.train(was_training)
    grid = Image.new("RGB", (sum(image.width for image in images), images[0].height))
    for index, image in enumerate(images):
        grid.paste(image, (index * image.width, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
