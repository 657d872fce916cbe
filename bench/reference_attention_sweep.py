"""Reference attention on storybook-mini (tried, not kept): each identity field read right with and without it.

A1111's "reference-only" (diffusers' community `stable_diffusion_reference`) on top of the IP-Adapter image prompt:
before each UNet call, the character's prepared photos, noised to the step's timestep, go through the UNet once, and
every self-attention layer of the page then also attends to the photos' hidden states. Registers K held-out
characters with the product's registry, builds their image prompts, draws the 12 story pages of each with one seed per
setting, and prints identity consistency, pairwise agreement and each field's share (README, "Consistency lab").

Usage: python bench/reference_attention_sweep.py [--characters 3] PHOTOS,WEIGHT,STEPS,GUIDANCE,SCALE [...]
    PHOTOS: the photos attended to (0: reference attention off); WEIGHT: 0-1, the blend of the attention with and
    without them; STEPS: the share of the schedule, from the noisiest step, it is on for.
    e.g. python bench/reference_attention_sweep.py 0,1,1,7.5,1 5,1,1,7.5,1 5,0.5,1,7.5,1 5,1,0.5,7.5,1 5,1,1,5,1.5
"""

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

from storybook import registry
from storybook.lab.evaluator import load_evaluator
from storybook.lab.sweep import FieldTally, draw_pages, image_prompt_characters
from storybook.models import MINI_MODEL
from storybook.render.renderer import Renderer


@dataclass
class Reference:
    """The photos' latents and noise, how strongly and how long they are attended to, and the hidden states the
    write pass stored per self-attention layer."""

    latents: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    weight: float = 1.0
    steps: float = 1.0
    writing: bool = False
    reading: bool = False
    stored: dict = field(default_factory=dict)


class ReferenceAttention(AttnProcessor2_0):
    """Self-attention that, on the page's pass, also attends to the photos' hidden states of the same layer."""

    def __init__(self, reference: Reference, name: str):
        super().__init__()
        self.reference, self.name = reference, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        reference = self.reference
        if reference.writing:
            count, length, channels = hidden_states.shape
            reference.stored[self.name] = hidden_states.reshape(1, count * length, channels)
        if not reference.reading:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        photos = reference.stored[self.name].expand(hidden_states.shape[0], -1, -1)
        with_photos = super().__call__(attn, hidden_states, torch.cat([hidden_states, photos], dim=1), None, temb)
        if reference.weight == 1.0:
            return with_photos
        plain = super().__call__(attn, hidden_states, None, attention_mask, temb)
        return plain + reference.weight * (with_photos - plain)


def install(renderer: Renderer, reference: Reference) -> None:
    """Put reference attention on every self-attention layer of the renderer's UNet, and a write pass of the photos
    before each UNet call (a pre-hook) while `reference.latents` is set and the step is in `reference.steps`."""
    pipeline, unet = renderer.pipeline, renderer.pipeline.unet
    unet.set_attn_processor(
        {
            name: ReferenceAttention(reference, name) if name.endswith("attn1.processor") else processor
            for name, processor in unet.attn_processors.items()
        }
    )

    def write_photos(module, args, kwargs):
        timestep = args[1]
        reference.reading = False
        if reference.writing or reference.latents is None or float(timestep) < 1000 * (1 - reference.steps):
            return
        count = reference.latents.shape[0]
        timesteps = torch.full((count,), int(timestep), dtype=torch.long)
        noisy = pipeline.scheduler.add_noise(reference.latents, reference.noise, timesteps)
        text = kwargs["encoder_hidden_states"][-1:].expand(count, -1, -1)  # one prompt of the batch: its last page's
        added = {
            "image_embeds": [e[-1:].expand(count, *e.shape[1:]) for e in kwargs["added_cond_kwargs"]["image_embeds"]]
        }
        reference.writing = True
        try:
            module(noisy, timestep, encoder_hidden_states=text, added_cond_kwargs=added)
        finally:
            reference.writing = False
        reference.reading = True

    unet.register_forward_pre_hook(write_photos, with_kwargs=True)


def photo_latents(renderer: Renderer, home: Path, slug: str, count: int) -> torch.Tensor:
    """The VAE latents of the character's first `count` prepared photos at the model's size."""
    vae = renderer.pipeline.vae
    size = vae.config.sample_size
    paths = registry.prepared_photo_paths(home, registry.load_character(home, slug))[:count]
    pixels = [np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.LANCZOS)) for path in paths]
    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        return vae.encode(batch.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor


def sweep(work: Path, characters: int, settings: list[tuple[float, ...]]) -> None:
    """Print one line per setting: identity consistency, pairwise agreement and each field's share."""
    home, evaluator = work / "home", load_evaluator()
    characters_drawn = image_prompt_characters(home, characters)
    renderer = Renderer(home, MINI_MODEL)
    renderer.load_identities([character.slug for character in characters_drawn])
    reference = Reference()
    install(renderer, reference)
    for photos, weight, steps, guidance, scale in settings:
        reference.weight, reference.steps = weight, steps
        started, tally = time.perf_counter(), FieldTally()
        for character in characters_drawn:
            reference.latents = photo_latents(renderer, home, character.slug, int(photos)) if photos else None
            if photos:
                noise = torch.randn(reference.latents.shape, generator=torch.Generator().manual_seed(0))
                reference.noise = noise.to(reference.latents.device, reference.latents.dtype)
            tally.add(evaluator.read(draw_pages(renderer, character, guidance, scale)), character.toddler)
        print(
            f"photos {photos:g}, weight {weight:g}, steps {steps:g}, guidance {guidance:g}, scale {scale:g}: "
            f"{tally.summary()} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


def main() -> None:
    """Parse the arguments and run the sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="PHOTOS,WEIGHT,STEPS,GUIDANCE,SCALE, e.g. 5,1,1,7.5,1")
    parser.add_argument("--characters", type=int, default=3)
    args = parser.parse_args()
    settings = [tuple(float(value) for value in item.split(",")) for item in args.settings]
    with tempfile.TemporaryDirectory(prefix="reference-attention-") as work:
        sweep(Path(work), args.characters, settings)


if __name__ == "__main__":
    main()
