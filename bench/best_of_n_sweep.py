"""Best of N on storybook-mini (tried, not kept): each page drawn with N seeds, the one most like the photos kept.

The way a product can trade compute for identity without training: draw every story page N times and keep the
picture whose image embedding (the IP-Adapter's own image encoder, as CLIP-I scores a subject) is closest to the
mean embedding of the character's photos. Registers K held-out characters with image prompts, draws their 12 story
pages with seeds 0..N-1, and prints for n = 1, 2, 4, ... and N: identity consistency, agreement and each field's
share of the pages picked, and the share of pages on which any of the n pictures reads whole (what a perfect picker
would reach). Also, within each page's N pictures (what a picker ranks), the correlation between the similarity and
the number of identity fields read right.

Usage: python bench/best_of_n_sweep.py [--characters 3] [--seeds 8] [--guidance 5] [--image-scale 1.5]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionModelWithProjection

from storybook.config import MINI_ADAPTER_SOURCE
from storybook.identities.image_prompt import adapter_files, image_processor
from storybook.lab import world
from storybook.lab.evaluator import load_evaluator
from storybook.lab.metrics import is_same_character
from storybook.lab.sweep import FieldTally, draw_pages, image_prompt_characters
from storybook.models import MINI_MODEL
from storybook.registry import load_character, prepared_photo_paths
from storybook.render.renderer import Renderer

PAGES = len(world.page_settings())


@torch.no_grad()
def unit_embeddings(encoder: CLIPVisionModelWithProjection, pictures: list[Image.Image]) -> torch.Tensor:
    """The encoder's image embeddings of `pictures`, each scaled to length 1: (N, D)."""
    pixels = image_processor(encoder.config.image_size)(pictures, return_tensors="pt").pixel_values
    return torch.nn.functional.normalize(encoder(pixels).image_embeds, dim=-1)


def sweep(work: Path, characters: int, seeds: int, guidance: float, image_scale: float) -> None:
    """Print one line per n in 1, 2, 4, ... and `seeds`: the picked pages' scores and the any-of-n share."""
    home, evaluator = work / "home", load_evaluator()
    encoder_folder = adapter_files(MINI_ADAPTER_SOURCE)[1]
    # In fp32, as the product embeds photos on the CPU (image_prompt.embed_photos); the folder keeps fp16 weights.
    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_folder, dtype=torch.float32).eval()
    characters_drawn = image_prompt_characters(home, characters)
    renderer = Renderer(home, MINI_MODEL)
    renderer.load_identities([character.slug for character in characters_drawn])
    books = []  # per character: (readings, similarities), both (page, seed)-indexed
    for character in characters_drawn:
        started = time.perf_counter()
        photos = prepared_photo_paths(home, load_character(home, character.slug))
        photo_embeddings = unit_embeddings(encoder, [Image.open(path).convert("RGB") for path in photos])
        target = torch.nn.functional.normalize(photo_embeddings.mean(0), dim=0)
        pictures = draw_pages(renderer, character, guidance, image_scale, seeds)
        readings = evaluator.read(pictures)
        similarities = (unit_embeddings(encoder, pictures) @ target).tolist()
        books.append(([readings[p * seeds : (p + 1) * seeds] for p in range(PAGES)], similarities))
        print(f"{character.slug}: {len(pictures)} pictures ({time.perf_counter() - started:.0f} s)", flush=True)
    # Per picture, (character, page)-major with seeds inner: fields read right, and similarity to the photos.
    fields_right = np.array(
        [
            sum(reading[name] == getattr(character.toddler, name) for name in [*world.ATTRIBUTES, *world.SIGNATURE])
            for character, (pages, _) in zip(characters_drawn, books, strict=True)
            for page in pages
            for reading in page
        ],
        dtype=float,
    ).reshape(-1, seeds)
    similarity = np.array([value for _, similarities in books for value in similarities]).reshape(-1, seeds)
    within = [(a - a.mean(), b - b.mean()) for a, b in zip(similarity, fields_right, strict=True)]
    correlation = np.corrcoef(np.concatenate([a for a, _ in within]), np.concatenate([b for _, b in within]))[0, 1]
    print(f"correlation of similarity and fields right within a page's {seeds} pictures: {correlation:.2f}")
    for n in sorted({2**k for k in range(seeds.bit_length()) if 2**k <= seeds} | {seeds}):
        tally, any_whole = FieldTally(), []
        for character, (pages, similarities) in zip(characters_drawn, books, strict=True):
            picked = []
            for page, readings in enumerate(pages):
                best = max(range(n), key=lambda seed: similarities[page * seeds + seed])
                picked.append(readings[best])
                any_whole.append(any(is_same_character(r, character.toddler) for r in readings[:n]))
            tally.add(picked, character.toddler)
        print(f"best of {n}: {tally.summary()}; any of {n} whole {np.mean(any_whole):.0%}", flush=True)


def main() -> None:
    """Parse the arguments and run the sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--characters", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--image-scale", type=float, default=1.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="best-of-n-") as work:
        sweep(Path(work), args.characters, args.seeds, args.guidance, args.image_scale)


if __name__ == "__main__":
    main()
