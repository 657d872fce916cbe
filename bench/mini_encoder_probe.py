"""What storybook-mini's image encoder tells of a toddler (issue 29): a linear probe per identity field on its image
embeddings, trained on 3,000 photos of training-family toddlers and read on fresh ones (one photo; the mean of five,
as an image prompt averages a character's photos) and on held-out toddlers (the mean of five). The adapter cannot
draw what the embedding does not carry.

Usage: python bench/mini_encoder_probe.py [--encoder FILE_OR_FOLDER] [--train 3000] [--test 600]
"""

import argparse
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection

from storybook.identities.image_prompt import MINI_ADAPTER_FOLDER
from storybook.lab import world
from storybook.lab.mini_adapter import IDENTITY_FIELDS, build_image_encoder, field_targets, photo_pixels


def load_encoder(path: Path) -> CLIPVisionModelWithProjection:
    """An image encoder from an adapter stage's `image-encoder.safetensors`, or a saved `image_encoder/` folder."""
    if path.is_dir():
        return CLIPVisionModelWithProjection.from_pretrained(path, dtype=torch.float32).eval()
    encoder = build_image_encoder()
    encoder.load_state_dict(load_file(path))
    return encoder.eval()


@torch.no_grad()
def embeddings(
    encoder: CLIPVisionModelWithProjection, count: int, seed: int, held_out: bool, photos: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean embedding of `photos` random registration photos of each of `count` toddlers, and their fields."""
    rng = random.Random(seed)
    toddlers = [world.random_toddler(rng, held_out=held_out) for _ in range(count)]
    drawn = []
    for _ in range(photos):
        chunks = [toddlers[start : start + 128] for start in range(0, count, 128)]
        indices = [[rng.randrange(100) for _ in chunk] for chunk in chunks]
        drawn.append(
            torch.cat([encoder(photo_pixels(c, i)).image_embeds for c, i in zip(chunks, indices, strict=True)])
        )
    return torch.stack(drawn).mean(0), field_targets(toddlers)


def probe_accuracy(
    train: tuple[torch.Tensor, dict], tests: list[tuple[torch.Tensor, dict]], field: str, classes: int
) -> list[float]:
    """Fit a softmax regression of `field` on the standardised training embeddings; its accuracy on each test set."""
    inputs, targets = train
    mean, spread = inputs.mean(0), inputs.std(0) + 1e-6
    head = torch.nn.Linear(inputs.shape[1], classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        F.cross_entropy(head((inputs - mean) / spread), targets[field]).backward()
        optimizer.step()
    with torch.no_grad():
        return [(head((x - mean) / spread).argmax(1) == y[field]).float().mean().item() for x, y in tests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, default=MINI_ADAPTER_FOLDER / "image_encoder")
    parser.add_argument("--train", type=int, default=3000, help="training-family toddlers to fit the probes on")
    parser.add_argument("--test", type=int, default=600, help="toddlers per test set")
    args = parser.parse_args()
    encoder = load_encoder(args.encoder)
    train = embeddings(encoder, args.train, 1, held_out=False, photos=1)
    tests = [
        embeddings(encoder, args.test, 2, held_out=False, photos=1),
        embeddings(encoder, args.test, 3, held_out=False, photos=5),
        embeddings(encoder, args.test, 4, held_out=True, photos=5),
    ]
    print("| field | one photo | five photos | held out, five photos |")
    print("|---|---|---|---|")
    for field, values in IDENTITY_FIELDS.items():
        shares = probe_accuracy(train, tests, field, len(values))
        print(f"| {field} | " + " | ".join(f"{share:.0%}" for share in shares) + " |")


if __name__ == "__main__":
    main()
