"""storybook-mini: a small text-to-image model trained from scratch on the lab's world, saved in diffusers' layout.

Training has three phases, each resumable: the VAE learns to autoencode world pictures (64 px <-> 16x16x4 latents),
its decoder is refined on full pictures, then the UNet and the CLIP text encoder learn together to denoise the
latents from the captions, with an EMA copy kept for the saved weights. `train_mini` writes a pipeline that
`DiffusionPipeline.from_pretrained` loads like any Stable Diffusion model; the committed one lives in
storybook/weights/storybook-mini (see README, "storybook-mini").
"""

import copy
import functools
import io
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save, save_file

from storybook.errors import LabError
from storybook.lab import world
from storybook.storage import atomic_write_bytes
from storybook.story.checks import DEFAULT_NEGATIVE_PROMPT
from storybook.story.stage import DEFAULT_STYLE
from storybook.tiny_model import PROMPT_WORDS, assemble_pipeline, build_text_encoder, build_tokenizer
from storybook.training.losses import diffusion_target

RESOLUTION = 64  # pixels; the VAE divides by 4, so the UNet works on 16x16 latents
PHOTO_SHARE = 0.15  # of training pictures that are plain-backdrop "photos", as parents upload
UNDESCRIBED_SHARE = 0.25  # captions that say only "a toddler": the class prior that DreamBooth preserves
UNCONDITIONAL_SHARE = 0.1  # captions dropped (to "" or the negative prompt) for classifier-free guidance
# Varied captions (MiniRecipe.varied_captions): story pages are worded unlike the world's captions, so some captions
# take the story stage's form, and some carry words the world never draws, which the model learns to pass over.
STORY_FORM_SHARE = 0.3
FILLER_SHARE = 0.5
SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
}


@dataclass(frozen=True)
class MiniRecipe:
    """What a storybook-mini run draws and how its UNet learns; saved beside its checkpoints so a resume keeps it.

    `heights`: the toddler's height in story scenes (a share of the picture). `part_weight`: the loss on the latent
    pixels the toddler covers counts 1 + part_weight times (the renderer knows where the toddler is); `hat_weight`
    adds to that on the hat's (a few latent pixels, the signature's shape). `min_snr_gamma`:
    Min-SNR-gamma weighting of timesteps (Hang et al. 2023, arXiv 2303.09556), None for the plain loss.
    `varied_captions`: some captions in the story stage's form, some with words no caption uses (`training_caption`).
    """

    resolution: int = RESOLUTION
    heights: tuple[float, float] = world.STORY_HEIGHTS
    part_weight: float = 4.0  # v4's choice so far: the pilot's best attributes at 500 steps (README, "v4")
    min_snr_gamma: float | None = 5.0
    varied_captions: bool = True  # story-form captions and filler words (`training_caption`); v4 from step 6,000
    hat_weight: float = 0.0  # the loss on the hat's latent pixels counts 1 + part_weight + hat_weight times


# What a run saved before a field existed trained as: a recipe.json or snapshot without them reads with these values.
LEGACY_RECIPE_FIELDS = {"varied_captions": False, "hat_weight": 0.0}


def saved_recipe(fields: dict) -> dict:
    """A saved recipe's `fields`, those it predates filled in with how it trained (`LEGACY_RECIPE_FIELDS`)."""
    return {**LEGACY_RECIPE_FIELDS, **fields}


def mini_words() -> list[str]:
    """Every word of the world's captions, the tiny model's prompt words and the default negative prompt."""
    phrases = [
        *world.SETTING_PHRASES.values(),
        *world.OBJECTS.values(),
        *world.POSES,
        *world.FRIENDS,
        world.STYLE,
        *world.HAIR_COLOURS,
        *world.HAIR_STYLES,
        *world.SKIN_TONES,
        *world.OUTFIT_COLOURS,
        "a photo of toddler with hair and skin in shirt pigtails",
        DEFAULT_NEGATIVE_PROMPT.replace(",", " "),
    ]
    return sorted(set(PROMPT_WORDS) | {word for phrase in phrases for word in phrase.split()})


def build_vae(resolution: int = RESOLUTION) -> AutoencoderKL:
    """A three-level VAE (32, 64, 128 channels, one ResNet per level): 64 px pictures to 4x16x16 latents."""
    return AutoencoderKL(
        sample_size=resolution,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
    )


def build_unet(resolution: int = RESOLUTION) -> UNet2DConditionModel:
    """A 5.8 M-parameter UNet (64, 128, 128 channels) with cross-attention to the 64-wide text encoder."""
    return UNet2DConditionModel(
        sample_size=resolution // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def training_scene(rng: random.Random, heights: tuple[float, float] = world.STORY_HEIGHTS) -> world.Scene:
    """A scene of a training-family toddler: a story scene (the toddler's height drawn from `heights`), or now and
    then a plain registration-style photo."""
    toddler = world.random_toddler(rng, held_out=False)
    if rng.random() < PHOTO_SHARE:
        return world.photo_scene(toddler, rng.randrange(100))
    return world.random_scene(rng, toddler, heights=heights)


def training_caption(scene: world.Scene, rng: random.Random, varied: bool = True) -> str:
    """The caption to train `scene` with: described, class-only ('a toddler ...'), or dropped for guidance; when
    `varied`, a story scene's caption takes the story stage's form (`world.story_caption`) STORY_FORM_SHARE of the
    time, and FILLER_SHARE of the captions carry words no caption uses (`with_fillers`)."""
    if rng.random() < UNCONDITIONAL_SHARE:
        return rng.choice(["", DEFAULT_NEGATIVE_PROMPT])
    describe = rng.random() >= UNDESCRIBED_SHARE
    if not varied:
        return world.caption(scene, describe=describe)
    if scene.setting != world.PLAIN and rng.random() < STORY_FORM_SHARE:
        caption = world.story_caption(scene, describe, style=rng.choice([world.STYLE, DEFAULT_STYLE]))
    else:
        caption = world.caption(scene, describe=describe)
    return with_fillers(caption, rng, scene.toddler.description) if rng.random() < FILLER_SHARE else caption


@functools.cache
def filler_words() -> tuple[str, ...]:
    """Common English words that no caption uses and that bring none of the captions' tokens with them: not a word
    of the tokenizer's vocabulary or of the signature (which no caption names), and no piece of them a caption word's
    token ('that' would read as 't' + 'hat'). Some name things the world draws (sun, water), uncorrelated with the
    picture: the model learns to pass over what the world's captions never say."""
    from wordfreq import top_n_list  # 0.4 s to import: only when a run trains with varied captions

    tokenizer = build_tokenizer(mini_words(), whole_words=True)
    known = {*mini_words(), *world.HAT_SHAPES, *world.HAT_COLOURS, *world.PATTERNS, "hat", "stripe", "dot"}
    known_tokens = {f"{word}</w>" for word in known}
    return tuple(
        word
        for word in top_n_list("en", 2000)
        if word.isalpha() and len(word) > 1 and word not in known and not known_tokens & set(tokenizer.tokenize(word))
    )


def with_fillers(caption: str, rng: random.Random, keep: str) -> str:
    """`caption` with one to four `filler_words` slipped in between its words, as a story's wording brings words
    that the model has never seen drawn; none inside the words of `keep` (the toddler's description: its attributes
    stay bound to their nouns)."""
    head, kept, tail = caption.partition(keep) if keep else (caption, "", "")
    words = [*head.split(" "), kept, *tail.split(" ")] if kept else caption.split(" ")
    for _ in range(rng.randint(1, 4)):
        words.insert(rng.randint(0, len(words)), rng.choice(filler_words()))
    return " ".join(word for word in words if word)


def train_vae(
    vae: AutoencoderKL,
    steps: int,
    rng: random.Random,
    progress: Callable[[str], None],
    heights: tuple[float, float] = world.STORY_HEIGHTS,
) -> None:
    """Fit the VAE as an autoencoder (L1 on the posterior mean) on random 32 px crops of fresh world pictures.

    The VAE is convolutional, so crops teach it the full-size pictures at a quarter of the cost. Afterwards the
    encoder is made deterministic (as real SD VAEs nearly are) and `scaling_factor` set so latents have unit variance.
    """
    size = vae.config.sample_size
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    vae.train()
    for step in range(steps):
        pictures = world.to_tensor([world.draw_scene(training_scene(rng, heights), size) for _ in range(32)])
        pictures = pictures.to(vae.device)
        x, y = rng.randrange(0, size - 31, 4), rng.randrange(0, size - 31, 4)
        crops = pictures[:, :, y : y + 32, x : x + 32]
        loss = F.l1_loss(vae.decode(vae.encode(crops).latent_dist.mean).sample, crops)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            progress(f"vae step {step + 1}/{steps} l1 {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        vae.quant_conv.weight[vae.config.latent_channels :] = 0
        vae.quant_conv.bias[vae.config.latent_channels :] = -30
        sample = world.to_tensor([world.draw_scene(training_scene(rng, heights), size) for _ in range(64)])
        latents = vae.encode(sample.to(vae.device)).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))


def encode_dataset(
    vae: AutoencoderKL, count: int, rng: random.Random, recipe: MiniRecipe = MiniRecipe()
) -> tuple[torch.Tensor, torch.Tensor, list[world.Scene]]:
    """`count` training scenes of `recipe`, their scaled VAE latents (count, 4, h, w, on the VAE's device) and where
    the toddler and its hat are on the latent grid (count, 2, h, w: the share of each latent pixel they cover),
    computed once."""
    size, heights = recipe.resolution, recipe.heights
    scenes = [training_scene(rng, heights) for _ in range(count)]
    latents, masks = [], []
    for start in range(0, count, 256):
        chunk_latents, chunk_masks = encode_scenes(vae, scenes[start : start + 256], size)
        latents.append(chunk_latents)
        masks.append(chunk_masks)
    return torch.cat(latents), torch.cat(masks), scenes


@torch.no_grad()
def encode_scenes(vae: AutoencoderKL, scenes: list[world.Scene], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`scenes` drawn at `size` px: their scaled VAE latents (N, 4, h, w) and the share of each latent pixel the
    toddler covers and the hat covers (N, 2, h, w: where `denoising_loss` weighs the loss more), on the VAE's
    device."""
    pictures = world.to_tensor([world.draw_scene(scene, size) for scene in scenes]).to(vae.device)
    latents = vae.encode(pictures).latent_dist.mean * vae.config.scaling_factor
    toddler = world.to_tensor([world.toddler_mask(scene, size).convert("RGB") for scene in scenes])[:, :1]
    hat = world.to_tensor([world.hat_mask(scene, size).convert("RGB") for scene in scenes])[:, :1]
    covered = F.avg_pool2d((torch.cat([toddler, hat], dim=1) + 1) / 2, size // latents.shape[-1])
    return latents, covered.to(vae.device)


def snr_per_timestep(scheduler: DDPMScheduler, device: torch.device | str) -> torch.Tensor:
    """The signal-to-noise ratio of each of `scheduler`'s training timesteps (what Min-SNR-gamma weighs by)."""
    return (scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)).to(device)


def refine_decoder(
    vae: AutoencoderKL,
    latents: torch.Tensor,
    scenes: list[world.Scene],
    steps: int,
    rng: random.Random,
    progress: Callable[[str], None],
) -> None:
    """Fine-tune the VAE decoder alone (L1 + MSE, full 64 px pictures) on the dataset's latents.

    The encoder, and so every latent the UNet learns, stays as it is; only the pictures drawn from latents get sharper
    (the way Stability refined SD's decoder, "ft-MSE"). The crop-trained decoder smears the toddler's small details.
    """
    size = vae.config.sample_size
    decoder = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    optimizer = torch.optim.AdamW(decoder, lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    unscaled = latents / vae.config.scaling_factor
    vae.requires_grad_(False)
    for parameter in decoder:
        parameter.requires_grad_(True)
    vae.train()
    for step in range(steps):
        indices = [rng.randrange(len(scenes)) for _ in range(32)]
        pictures = world.to_tensor([world.draw_scene(scenes[i], size) for i in indices]).to(vae.device)
        drawn = vae.decode(unscaled[indices]).sample
        loss = F.l1_loss(drawn, pictures) + F.mse_loss(drawn, pictures)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            progress(f"decoder step {step + 1}/{steps} loss {loss.item():.4f}")
    vae.eval().requires_grad_(False)


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float = 0.999) -> None:
    """Move the EMA weights toward the model's; the decay ramps up over the first steps (as in diffusers' EMAModel)."""
    rate = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for ema_parameter, parameter in zip(ema.parameters(), model.parameters(), strict=True):
            ema_parameter.lerp_(parameter, 1 - rate)


def warmup_stable_decay(step: int, warmup: int, total: int, decay: float = 0.2) -> float:
    """The learning-rate factor at `step`: linear warm-up over `warmup` steps, constant, then cosine decay to 0.1 over
    the last `decay` share of `total`. A run stopped before its decay goes on unchanged with a larger `total`."""
    decay_start = total - int(decay * total)
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - decay_start) / max(1, total - decay_start)))


def denoising_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    snr: torch.Tensor,
    covered: torch.Tensor,
    recipe: MiniRecipe,
) -> torch.Tensor:
    """The v-prediction MSE, each latent pixel weighted 1 + part_weight x the share of it the toddler covers
    + hat_weight x the share the hat covers (`covered`, (B, 2, h, w), `encode_scenes`; a dataset from before the hat's
    share has one channel, and trains only with hat_weight 0), and each sample by Min-SNR-gamma (min(SNR, gamma) /
    (SNR + 1) for v-prediction)."""
    pixel_weight = 1 + recipe.part_weight * covered[:, :1]
    if recipe.hat_weight:
        if covered.shape[1] < 2:
            raise LabError("This dataset has no hat coverage (made before it): hat_weight needs a new --work folder.")
        pixel_weight = pixel_weight + recipe.hat_weight * covered[:, 1:2]
    per_sample = ((prediction - target) ** 2 * pixel_weight).mean(dim=(1, 2, 3)) / pixel_weight.mean(dim=(1, 2, 3))
    if recipe.min_snr_gamma is not None:
        per_sample = per_sample * snr.clamp(max=recipe.min_snr_gamma) / (snr + 1)
    return per_sample.mean()


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor at `step`: linear warm-up over `warmup` steps, then cosine decay to 0.1 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def save_state(path: Path, state: dict) -> None:
    """Save a training checkpoint with `torch.save`, atomically (see `storage.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def train_mini(
    out: Path,
    work: Path,
    vae_steps: int = 1800,
    decoder_steps: int = 1000,
    unet_steps: int = 4000,
    dataset_size: int = 20000,
    batch_size: int = 32,
    seed: int = 0,
    checkpoint_every: int = 250,
    device: str = "cpu",
    progress: Callable[[str], None] = print,
    recipe: MiniRecipe = MiniRecipe(),
    vae_from: Path | None = None,
    schedule_steps: int | None = None,
    snapshot: Path | None = None,
) -> Path:
    """Train storybook-mini from scratch and save it to `out` (fp16 safetensors, diffusers layout); return `out`.

    Stages: VAE (`vae_steps`), dataset encoding, decoder refinement (`decoder_steps`), UNet + text encoder
    (`unet_steps`), each on `device` (the world's pictures are drawn on the CPU; noise and timesteps come from a CPU
    generator, so a run draws the same samples on any device). `vae_from`, a saved pipeline, gives a trained VAE
    instead of the first and third stages. The learning rate warms up, stays, and decays over the last fifth of
    `schedule_steps` (default `unet_steps`): a run stopped before then goes on unchanged. `work` keeps each finished
    stage, the recipe and UNet checkpoints: run again after an interruption, on this device or another, and it resumes
    where it stopped (with another recipe it refuses). Where `work` holds no checkpoint, a weights-only `snapshot`
    folder (`save_snapshot`) starts the UNet and text encoder at its step with a fresh optimiser: how a new machine
    goes on with a long run; every checkpoint then rewrites it. On the CPU the same arguments give the same weights
    on the same machine (a GPU's cuDNN kernels need not be deterministic).
    """
    torch.manual_seed(seed)
    work.mkdir(parents=True, exist_ok=True)
    check_recipe(work / "recipe.json", recipe)
    tokenizer = build_tokenizer(mini_words(), whole_words=True)
    text_encoder = build_text_encoder(tokenizer, width=64, layers=3).to(device)
    unet = build_unet(recipe.resolution).to(device)
    vae = trained_vae(work, vae_from, vae_steps, recipe, seed, device, progress)

    dataset_file = work / "dataset.pt"
    if dataset_file.exists():
        latents, masks, scenes = torch.load(dataset_file, map_location=device, weights_only=False)
    else:
        latents, masks, scenes = encode_dataset(vae, dataset_size, random.Random(f"data-{seed}"), recipe)
        torch.save((latents.cpu(), masks.cpu(), scenes), dataset_file)
        progress(f"encoded {len(scenes)} training pictures")

    decoder_file = work / "vae-refined.safetensors"
    if vae_from is None and decoder_file.exists():
        vae.load_state_dict(load_file(decoder_file, device=device))
    elif vae_from is None:
        started = time.perf_counter()
        refine_decoder(vae, latents, scenes, decoder_steps, random.Random(f"decoder-{seed}"), progress)
        save_file(cpu_state(vae), decoder_file)
        progress(f"decoder refined in {time.perf_counter() - started:.0f} s")

    scheduler = DDPMScheduler(**SCHEDULE)
    snr_of = snr_per_timestep(scheduler, device)
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=5e-4, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    rng, generator, step = random.Random(f"unet-{seed}"), torch.Generator().manual_seed(seed), 0
    checkpoint_file = work / "unet-checkpoint.pt"
    if checkpoint_file.exists():
        state = torch.load(checkpoint_file, map_location="cpu", weights_only=False)  # step counts stay on the CPU
        for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            module.load_state_dict(state[key])
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        generator.set_state(state["generator"].cpu())
        step = state["step"]
        progress(f"resumed at step {step}")
    elif snapshot is not None:
        step = load_snapshot(snapshot, recipe, (unet, ema_unet), (text_encoder, ema_text))
        rng, generator = random.Random(f"unet-{seed}-{step}"), torch.Generator().manual_seed(seed + step)
        progress(f"resumed at step {step} from the snapshot {snapshot} (fresh optimiser)")
    started = time.perf_counter()
    unet.train()
    text_encoder.train()
    while step < unet_steps:
        for group in optimizer.param_groups:
            group["lr"] = 5e-4 * warmup_stable_decay(step, 200, schedule_steps or unet_steps)
        indices = [rng.randrange(len(scenes)) for _ in range(batch_size)]
        captions = [training_caption(scenes[i], rng, recipe.varied_captions) for i in indices]
        token_ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        batch = latents[indices]  # (B, 4, h, w)
        noise = torch.randn(batch.shape, generator=generator).to(device)
        timesteps = torch.randint(SCHEDULE["num_train_timesteps"], (batch_size,), generator=generator).to(device)
        embeddings = text_encoder(token_ids.input_ids.to(device))[0]
        prediction = unet(scheduler.add_noise(batch, noise, timesteps), timesteps, embeddings).sample
        # The identity trainer's loss target; its own step, because a base model trains every weight from scratch
        # with its caption drawn per scene and its loss weighted where the toddler is (`denoising_loss`).
        target = diffusion_target(scheduler, batch, noise, timesteps)
        loss = denoising_loss(prediction, target, snr_of[timesteps], masks[indices], recipe)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        update_ema(ema_unet, unet, step)
        update_ema(ema_text, text_encoder, step)
        step += 1
        if step % 50 == 0:
            rate = (time.perf_counter() - started) / 50
            started = time.perf_counter()
            progress(f"unet step {step}/{unet_steps} loss {loss.item():.4f} ({rate:.2f} s/step)")
        if step % checkpoint_every == 0 or step == unet_steps:
            state = {
                "unet": unet.state_dict(),
                "text": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng.getstate(),
                "generator": generator.get_state(),
                "step": step,
            }
            save_state(checkpoint_file, state)
            if snapshot is not None:
                save_snapshot(work, snapshot)

    scheduler = DPMSolverMultistepScheduler(**SCHEDULE, steps_offset=1)
    pipeline = assemble_pipeline(vae, ema_text, tokenizer, ema_unet, scheduler)
    pipeline.to("cpu", torch.float16, silence_dtype_warnings=True).save_pretrained(out, safe_serialization=True)
    return out


def save_snapshot(work: Path, folder: Path) -> int:
    """Save the EMA weights of `work`'s last UNet checkpoint in fp16, with its step and recipe, to `folder` (what a
    new machine resumes from: `train_mini(..., snapshot=folder)`); return the step. Written atomically, file by file.
    """
    state = torch.load(work / "unet-checkpoint.pt", map_location="cpu", weights_only=False)
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in (("ema_unet", "unet"), ("ema_text", "text_encoder")):
        weights = {k: v.to(torch.float16).contiguous() for k, v in state[key].items()}
        atomic_write_bytes(folder / f"{name}.safetensors", save(weights))
    recipe = json.loads((work / "recipe.json").read_text())
    atomic_write_bytes(folder / "snapshot.json", json.dumps({"step": state["step"], "recipe": recipe}).encode())
    return state["step"]


def load_snapshot(
    folder: Path, recipe: MiniRecipe, unets: tuple[torch.nn.Module, ...], texts: tuple[torch.nn.Module, ...]
) -> int:
    """Load a `save_snapshot` folder into every module of `unets` and `texts` (the trained and EMA copies); return its
    step. A snapshot of another recipe is refused."""
    saved = json.loads((folder / "snapshot.json").read_text())
    if saved_recipe(saved["recipe"]) != json.loads(json.dumps(asdict(recipe))):
        raise LabError(f"The snapshot {folder} was trained with another recipe ({saved['recipe']}); use its recipe.")
    for modules, name in ((unets, "unet"), (texts, "text_encoder")):
        weights = load_file(folder / f"{name}.safetensors")
        for module in modules:
            module.load_state_dict({key: value.float() for key, value in weights.items()})
    return saved["step"]


def check_recipe(path: Path, recipe: MiniRecipe) -> None:
    """Write `recipe` to `path` for a new run; refuse to resume a run that was started with another recipe."""
    wanted = json.loads(json.dumps(asdict(recipe)))
    if path.exists() and saved_recipe(json.loads(path.read_text())) != wanted:
        raise LabError(
            f"{path.parent} holds a run with another recipe ({path.read_text().strip()}); "
            "use another --work folder or the same recipe."
        )
    atomic_write_bytes(path, json.dumps(wanted).encode())


def trained_vae(
    work: Path,
    vae_from: Path | None,
    steps: int,
    recipe: MiniRecipe,
    seed: int,
    device: str,
    progress: Callable[[str], None],
) -> AutoencoderKL:
    """The run's VAE: `vae_from`'s (a saved pipeline), else the one trained in `work` (trained there first if new)."""
    if vae_from is not None:
        vae = AutoencoderKL.from_pretrained(vae_from, subfolder="vae", torch_dtype=torch.float32).to(device)
        return vae.eval().requires_grad_(False)
    vae = build_vae(recipe.resolution).to(device)
    vae_file = work / "vae.safetensors"
    if vae_file.exists():
        vae.load_state_dict(load_file(vae_file, device=device))
        vae.register_to_config(scaling_factor=float(vae_file.with_suffix(".scaling.txt").read_text()))
    else:
        started = time.perf_counter()
        train_vae(vae, steps, random.Random(f"vae-{seed}"), progress, recipe.heights)
        save_file(cpu_state(vae), vae_file)
        vae_file.with_suffix(".scaling.txt").write_text(str(vae.config.scaling_factor))
        progress(f"vae trained in {time.perf_counter() - started:.0f} s")
    return vae.eval().requires_grad_(False)


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s weights on the CPU (what a checkpoint file keeps, whatever device trained it)."""
    return {key: value.cpu() for key, value in module.state_dict().items()}
