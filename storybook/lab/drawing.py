"""How well a base model draws what a caption says, and the ceiling its VAE sets: the figures storybook-mini's
training is steered by (per field, since all fields at once is roughly the product of the single ones)."""

import random

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from PIL import Image

from storybook.lab import world
from storybook.lab.evaluator import Evaluator, labels_of

WORDED_FIELDS = ["setting", *world.ATTRIBUTES]  # what a caption says
IDENTITY_FIELDS = [*world.ATTRIBUTES, *world.SIGNATURE]


def check_scenes(
    count: int, seed: int = 0, held_out: bool = False, heights: tuple[float, float] = world.STORY_HEIGHTS
) -> list[world.Scene]:
    """`count` story scenes, each of its own toddler (training family unless `held_out`), in turn in every setting."""
    rng = random.Random(f"check-{seed}-{held_out}")
    return [
        world.random_scene(rng, world.random_toddler(rng, held_out), world.SETTINGS[i % len(world.SETTINGS)], heights)
        for i in range(count)
    ]


def field_shares(readings: list[dict[str, str]], scenes: list[world.Scene], fields: list[str]) -> dict[str, float]:
    """Share of pictures whose reading matches its scene, per field of `fields` and for all of them at once ('all')."""
    truths = [labels_of(scene) for scene in scenes]
    shares = {name: sum(r[name] == t[name] for r, t in zip(readings, truths, strict=True)) for name in fields}
    shares["all"] = sum(all(r[n] == t[n] for n in fields) for r, t in zip(readings, truths, strict=True))
    return {name: right / len(scenes) for name, right in shares.items()}


@torch.no_grad()
def read_captions(
    pipeline: DiffusionPipeline,
    evaluator: Evaluator,
    scenes: list[world.Scene],
    guidance: float = 7.5,
    steps: int = 25,
    batch: int = 16,
) -> dict[str, float]:
    """Draw each scene from its caption alone (seed = its index) and read the worded fields: the base model's share
    right per field, and of all of them at once."""
    pictures: list[Image.Image] = []
    for start in range(0, len(scenes), batch):
        chunk = range(start, min(start + batch, len(scenes)))
        pictures += pipeline(
            [world.caption(scenes[i]) for i in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(i) for i in chunk],
        ).images
    return field_shares(evaluator.read(pictures), scenes, WORDED_FIELDS)


@torch.no_grad()
def read_round_trips(
    vae: AutoencoderKL, evaluator: Evaluator, scenes: list[world.Scene], size: int
) -> dict[str, float]:
    """The true `size` px pictures of `scenes` through `vae` and back, read: the ceiling for every identity field
    (no drawing through this VAE reads better) and for all seven at once."""
    pixels = world.to_tensor([world.draw_scene(scene, size) for scene in scenes]).to(vae.device, vae.dtype)
    decoded = torch.cat([vae.decode(vae.encode(part).latent_dist.mean).sample for part in pixels.split(64)])
    pictures = [
        Image.fromarray(((p.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()) for p in decoded
    ]
    return field_shares(evaluator.read(pictures), scenes, IDENTITY_FIELDS)
