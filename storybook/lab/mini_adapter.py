"""storybook-mini's image-prompt adapter: a CLIP image encoder and an IP-Adapter, trained on the lab's world.

Two resumable stages, then the files, in exactly the layout of h94/IP-Adapter so that the renderer loads them through
diffusers' `load_ip_adapter` as it loads a real adapter:
1. The image encoder (a small `CLIPVisionModelWithProjection`) learns to see who is in a registration photo: a linear
   head per identity field (hair colour and style, skin, shirt, hat shape and colour, pattern) on its image embedding,
   as face-identity encoders are trained on identity labels. Training-family toddlers only; every single value is
   seen, the held-out combinations never are.
2. The adapter (image projection to 4 context tokens, to_k_ip / to_v_ip per cross-attention layer, initialised from
   to_k / to_v) and the whole UNet learn together to draw a story scene of a toddler from its caption and the image
   embedding of one of its registration photos. The image condition is dropped a quarter of the time: half of those
   as a zero embedding (what classifier-free guidance draws its negative with), half with the image branch off (a
   zero IP-Adapter mask: the same as scale 0, how pages without an image prompt are drawn), so text-only generation
   keeps working. The loss is the text stage's (`MiniRecipe`: weighted where the toddler is, Min-SNR-gamma). The text
   encoder and VAE stay as they are.
"""

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from storybook.config import MINI_ADAPTER_FILE
from storybook.errors import LabError
from storybook.identities.adapter_format import (
    adapter_weights,
    load_adapter_weights,
    new_adapter_weights,
    save_adapter_weights,
)
from storybook.identities.image_prompt import image_processor
from storybook.lab import world
from storybook.lab.mini_model import (
    SCHEDULE,
    MiniRecipe,
    check_recipe,
    cpu_state,
    denoising_loss,
    encode_scenes,
    save_state,
    snr_per_timestep,
    training_caption,
    warmup_cosine,
)
from storybook.models import MINI_MODEL_FOLDER
from storybook.storage import atomic_write_text
from storybook.training.losses import diffusion_target

ENCODER_SIZE = 64  # pixels the image encoder sees (CLIP's processor resizes and centre-crops to it)
IMAGE_EMBED_DIM = 64
IMAGE_DROP_SHARE = 0.25  # of training scenes drawn without their image condition (half zero embedding, half off)
IDENTITY_FIELDS = {**world.ATTRIBUTES, **world.SIGNATURE}
PHOTO_SIDE = 256  # registration photos are drawn as the registry receives them


def build_image_encoder() -> CLIPVisionModelWithProjection:
    """A 4-layer, 128-wide CLIP vision transformer on 64 px pictures (8 px patches) with a 64-wide projection."""
    config = CLIPVisionConfig(
        image_size=ENCODER_SIZE,
        patch_size=8,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        projection_dim=IMAGE_EMBED_DIM,
    )
    return CLIPVisionModelWithProjection(config)


def photo_pixels(toddlers: list[world.Toddler], indices: list[int]) -> torch.Tensor:
    """Registration photo `indices[i]` of `toddlers[i]`, preprocessed for the image encoder: (N, 3, 64, 64)."""
    photos = [world.draw_scene(world.photo_scene(t, i), PHOTO_SIDE) for t, i in zip(toddlers, indices, strict=True)]
    return image_processor(ENCODER_SIZE)(photos, return_tensors="pt").pixel_values


def field_targets(toddlers: list[world.Toddler]) -> dict[str, torch.Tensor]:
    """The index of each toddler's value, per identity field."""
    return {
        field: torch.tensor([values.index(getattr(t, field)) for t in toddlers])
        for field, values in IDENTITY_FIELDS.items()
    }


def train_image_encoder(
    encoder: CLIPVisionModelWithProjection, steps: int, rng: random.Random, progress: Callable[[str], None]
) -> float:
    """Train `encoder` so that its image embedding tells every identity field (a linear head each, then dropped);
    return the share of fresh training-family photos whose seven fields all read right."""
    heads = torch.nn.ModuleDict({f: torch.nn.Linear(IMAGE_EMBED_DIM, len(v)) for f, v in IDENTITY_FIELDS.items()})
    heads.to(encoder.device)
    parameters = [*encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    encoder.train()
    for step in range(steps):
        toddlers = [world.random_toddler(rng, held_out=False) for _ in range(64)]
        pixels = photo_pixels(toddlers, [rng.randrange(100) for _ in toddlers]).to(encoder.device)
        embeddings = encoder(pixels).image_embeds
        targets = {name: target.to(encoder.device) for name, target in field_targets(toddlers).items()}
        loss = sum(F.cross_entropy(heads[f](embeddings), targets[f]) for f in IDENTITY_FIELDS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            progress(f"image encoder step {step + 1}/{steps} loss {loss.item():.4f}")
    encoder.eval()
    with torch.no_grad():
        toddlers = [world.random_toddler(rng, held_out=False) for _ in range(256)]
        pixels = photo_pixels(toddlers, [rng.randrange(100) for _ in toddlers]).to(encoder.device)
        embeddings = encoder(pixels).image_embeds
        targets = {name: target.to(encoder.device) for name, target in field_targets(toddlers).items()}
        right = torch.stack([heads[f](embeddings).argmax(1) == targets[f] for f in IDENTITY_FIELDS]).all(0)
    return right.float().mean().item()


@torch.no_grad()
def encode_pairs(
    vae: AutoencoderKL,
    encoder: CLIPVisionModelWithProjection,
    count: int,
    rng: random.Random,
    recipe: MiniRecipe = MiniRecipe(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[world.Scene]]:
    """`count` story scenes of training-family toddlers in `recipe`'s framing: their scaled latents (count, 4, h, w),
    where the toddler and its hat are on the latent grid (count, 2, h, w), the image embedding of one registration
    photo of each scene's toddler (count, 64), on the VAE's and the encoder's devices, and the scenes (for captions)."""
    scenes = [
        world.random_scene(rng, world.random_toddler(rng, held_out=False), heights=recipe.heights) for _ in range(count)
    ]
    latents, coverage, embeddings = [], [], []
    for start in range(0, count, 256):
        chunk = scenes[start : start + 256]
        chunk_latents, chunk_coverage = encode_scenes(vae, chunk, recipe.resolution)
        latents.append(chunk_latents)
        coverage.append(chunk_coverage)
        pixels = photo_pixels([scene.toddler for scene in chunk], [rng.randrange(100) for _ in chunk])
        embeddings.append(encoder(pixels.to(encoder.device)).image_embeds)
    return torch.cat(latents), torch.cat(coverage), torch.cat(embeddings), scenes


def image_condition(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How each training sample sees its image, from uniform `draws` in [0, 1): (the embedding's multiplier, the
    IP-Adapter mask value). `IMAGE_DROP_SHARE` of the samples drop the image, half as a zero embedding with the
    branch on (what classifier-free guidance draws its negative with), half with the branch off (a zero mask: the
    same as scale 0, how a page without an image prompt is drawn)."""
    zero_embedding = draws < IMAGE_DROP_SHARE / 2
    branch_off = (draws >= IMAGE_DROP_SHARE / 2) & (draws < IMAGE_DROP_SHARE)
    return (~zero_embedding).float(), (~branch_off).float()


def train_mini_adapter(
    out: Path,
    adapter_out: Path,
    work: Path,
    base: Path = MINI_MODEL_FOLDER,
    encoder_steps: int = 1200,
    unet_steps: int = 2400,
    dataset_size: int = 12000,
    batch_size: int = 24,
    learning_rate: float = 2e-4,
    seed: int = 0,
    checkpoint_every: int = 250,
    device: str = "cpu",
    recipe: MiniRecipe = MiniRecipe(),
    progress: Callable[[str], None] = print,
) -> tuple[Path, Path]:
    """Train the image encoder and the adapter with the UNet of the pipeline in `base`, on `device`; save the pipeline
    with its new UNet to `out` and the adapter (weights file and `image_encoder/`) to `adapter_out`; return both
    folders.

    `work` keeps each finished stage and UNet checkpoints with `recipe` (the loss and framing): run again after an
    interruption (on this device or another) and it resumes; a run with another recipe is refused. Noise, timesteps
    and image drops come from CPU generators, as in `train_mini`.
    """
    if not (base / "model_index.json").is_file():
        raise LabError(
            f"{base} holds no text-only storybook-mini to start from: train it first with "
            f"`storybook lab train-mini --out {base}` (see docs/lab.md, 'storybook-mini')."
        )
    checkpoint_file = work / "adapter-checkpoint.pt"
    if checkpoint_file.exists() and not (work / "recipe.json").exists():
        raise LabError(
            f"{work} holds an adapter run from before the adapter stage took v4's recipe (plain loss, v3's framing): "
            "use another --work folder, or delete it to start again."
        )
    torch.manual_seed(seed)
    work.mkdir(parents=True, exist_ok=True)
    check_recipe(work / "recipe.json", recipe)
    encoder = build_image_encoder().to(device)
    encoder_file = work / "image-encoder.safetensors"
    if encoder_file.exists():
        encoder.load_state_dict(load_file(encoder_file, device=device))
    else:
        started = time.perf_counter()
        accuracy = train_image_encoder(encoder, encoder_steps, random.Random(f"encoder-{seed}"), progress)
        save_file(cpu_state(encoder), encoder_file)
        progress(f"image encoder trained in {time.perf_counter() - started:.0f} s; all fields read on {accuracy:.0%}")
    encoder.eval().requires_grad_(False)

    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", dtype=torch.float32).requires_grad_(False).to(device)
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=torch.float32)
    text_encoder.requires_grad_(False).to(device)
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", dtype=torch.float32)
    base_config = dict(unet.config)

    dataset_file = work / "story-pairs.pt"
    if dataset_file.exists():
        latents, coverage, embeddings, scenes = torch.load(dataset_file, map_location=device, weights_only=False)
    else:
        pairs_rng = random.Random(f"pairs-{seed}")
        latents, coverage, embeddings, scenes = encode_pairs(vae, encoder, dataset_size, pairs_rng, recipe)
        torch.save((latents.cpu(), coverage.cpu(), embeddings.cpu(), scenes), dataset_file)
        progress(f"encoded {len(scenes)} training pairs")

    load_adapter_weights(unet, new_adapter_weights(unet, IMAGE_EMBED_DIM, torch.Generator().manual_seed(seed)))
    unet.to(device)
    scheduler = DDPMScheduler(**SCHEDULE)
    snr_of = snr_per_timestep(scheduler, device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=1e-2)
    rng, generator, step = random.Random(f"adapter-{seed}"), torch.Generator().manual_seed(seed), 0
    if checkpoint_file.exists():
        state = torch.load(checkpoint_file, map_location="cpu", weights_only=False)  # step counts stay on the CPU
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        generator.set_state(state["generator"].cpu())
        step = state["step"]
        progress(f"resumed at step {step}")
    started = time.perf_counter()
    unet.train()
    while step < unet_steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * warmup_cosine(step, 100, unet_steps)
        indices = [rng.randrange(len(scenes)) for _ in range(batch_size)]
        captions = [training_caption(scenes[i], rng, recipe.varied_captions) for i in indices]
        keep_image, branch_on = image_condition(torch.tensor([rng.random() for _ in indices], device=device))
        token_ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with torch.no_grad():
            text = text_encoder(token_ids.input_ids.to(device))[0]
        image = (embeddings[indices] * keep_image[:, None])[:, None, :]  # (B, 1 image, 64)
        batch = latents[indices]
        noise = torch.randn(batch.shape, generator=generator).to(device)
        timesteps = torch.randint(SCHEDULE["num_train_timesteps"], (batch_size,), generator=generator).to(device)
        noisy = scheduler.add_noise(batch, noise, timesteps)
        masks = branch_on[:, None, None, None].expand(-1, 1, *batch.shape[2:])  # (B, 1 image, 16, 16)
        prediction = unet(
            noisy,
            timesteps,
            text,
            added_cond_kwargs={"image_embeds": [image]},
            cross_attention_kwargs={"ip_adapter_masks": [masks]},
        ).sample
        # The identity trainer's loss target with the text stage's weights; its own step, because the adapter trains
        # with the base model's UNet on the world's scenes, not an identity's photos.
        target = diffusion_target(scheduler, batch, noise, timesteps)
        loss = denoising_loss(prediction, target, snr_of[timesteps], coverage[indices], recipe)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            seconds = (time.perf_counter() - started) / 50
            started = time.perf_counter()
            progress(f"adapter step {step}/{unet_steps} loss {loss.item():.4f} ({seconds:.2f} s/step)")
        if step % checkpoint_every == 0 or step == unet_steps:
            state = {
                "unet": unet.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng.getstate(),
                "generator": generator.get_state(),
                "step": step,
            }
            save_state(checkpoint_file, state)
    return save_mini_adapter(unet.cpu(), base_config, encoder.cpu(), base, out, adapter_out)


def save_mini_adapter(
    unet: UNet2DConditionModel,
    base_config: dict,
    encoder: CLIPVisionModelWithProjection,
    base: Path,
    out: Path,
    adapter_out: Path,
) -> tuple[Path, Path]:
    """Save the pipeline of `base` with `unet`'s own weights (without the adapter) to `out`, and the adapter with its
    image encoder to `adapter_out` (fp16, h94/IP-Adapter's layout)."""
    from diffusers import DiffusionPipeline

    plain = UNet2DConditionModel.from_config(base_config)
    own = {key: value for key, value in unet.state_dict().items() if key in plain.state_dict()}
    plain.load_state_dict(own)
    pipeline = DiffusionPipeline.from_pretrained(base, dtype=torch.float32)
    pipeline.unet = plain
    pipeline.to(torch.float16).save_pretrained(out, safe_serialization=True)
    for config_file in [out / "model_index.json", *out.glob("*/config.json")]:
        config = json.loads(config_file.read_text())
        if config.pop("_name_or_path", None) is not None:  # the trainer's own folder: nothing a user's machine has
            atomic_write_text(config_file, json.dumps(config, indent=2) + "\n")
    save_adapter_weights(adapter_out / MINI_ADAPTER_FILE, adapter_weights(unet))
    encoder.to(torch.float16).save_pretrained(adapter_out / "image_encoder", safe_serialization=True)
    image_processor(ENCODER_SIZE).save_pretrained(adapter_out / "image_encoder")
    return out, adapter_out
