"""The evaluator: a small CNN that reads a world picture's setting, the toddler's attributes and its signature.

It is the lab's measuring instrument, so it is trained on renders of every toddler (training and held-out families)
and checked on fresh ones; blur and noise during training let it read the softer pictures a diffusion model draws.
The committed weights live in storybook/weights/evaluator (docs/lab.md, "Consistency lab").
"""

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from safetensors.torch import load_file, save_file
from torch import nn

from storybook.lab import world

SIZE = 64  # pixels the evaluator reads; other sizes are resized
HEADS: dict[str, tuple[str, ...]] = {"setting": (*world.SETTINGS, world.PLAIN), **world.ATTRIBUTES, **world.SIGNATURE}
EVALUATOR_FOLDER = Path(__file__).resolve().parent.parent / "weights" / "evaluator"


class Evaluator(nn.Module):
    """Four strided conv blocks, average- and max-pooled, then one linear head per field of `HEADS`."""

    def __init__(self, width: int = 32):
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        blocks = []
        for index in range(4):  # 64 -> 32 -> 16 -> 8 -> 4 pixels
            blocks += [
                nn.Conv2d(channels[index], channels[index + 1], 3, stride=2, padding=1),
                nn.GroupNorm(8, channels[index + 1]),
                nn.SiLU(),
                nn.Conv2d(channels[index + 1], channels[index + 1], 3, padding=1),
                nn.GroupNorm(8, channels[index + 1]),
                nn.SiLU(),
            ]
        self.features = nn.Sequential(*blocks)
        self.heads = nn.ModuleDict({name: nn.Linear(8 * width, len(labels)) for name, labels in HEADS.items()})

    def forward(self, pictures: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per field for pictures (N, 3, 64, 64) in [-1, 1]."""
        features = self.features(pictures)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return {name: head(pooled) for name, head in self.heads.items()}

    @torch.no_grad()
    def read(self, pictures: list[Image.Image]) -> list[dict[str, str]]:
        """What each picture shows: {'setting': 'beach', 'hair_colour': 'red', ..., 'pattern': 'dots'}."""
        self.eval()
        readings = []
        for start in range(0, len(pictures), 256):
            batch = world.to_tensor(
                [
                    picture.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
                    for picture in pictures[start : start + 256]
                ]
            )
            logits = self(batch)
            for row in range(len(batch)):
                readings.append({name: HEADS[name][int(logits[name][row].argmax())] for name in HEADS})
        return readings


def labels_of(scene: world.Scene) -> dict[str, str]:
    """The true reading of `scene`."""
    toddler = scene.toddler
    return {"setting": scene.setting} | {name: getattr(toddler, name) for name in [*world.ATTRIBUTES, *world.SIGNATURE]}


def sample_scenes(count: int, rng: random.Random) -> list[world.Scene]:
    """`count` scenes of toddlers of both families; one in six a plain registration photo, the story scenes half
    in the story framing and half full-body (storybook-mini v3's framing, so both can be compared)."""
    scenes = []
    for _ in range(count):
        toddler = world.random_toddler(rng, held_out=rng.random() < 0.5)
        if rng.random() < 1 / 6:
            scenes.append(world.photo_scene(toddler, rng.randrange(100)))
        else:
            heights = rng.choice((world.STORY_HEIGHTS, world.FULL_BODY_HEIGHTS))
            scenes.append(world.random_scene(rng, toddler, heights=heights))
    return scenes


def soften(picture: Image.Image, rng: random.Random) -> Image.Image:
    """A randomly blurred copy (radius 0-1.2 px) or the picture itself: diffusion models draw soft edges."""
    radius = rng.choice([0.0, 0.0, rng.uniform(0.3, 1.2)])
    return picture.filter(ImageFilter.GaussianBlur(radius)) if radius else picture


def targets_of(scenes: list[world.Scene]) -> dict[str, torch.Tensor]:
    """Class indices per field for `scenes`."""
    labels = [labels_of(scene) for scene in scenes]
    return {name: torch.tensor([HEADS[name].index(row[name]) for row in labels]) for name in HEADS}


def accuracy(evaluator: Evaluator, scenes: list[world.Scene]) -> dict[str, float]:
    """Share of `scenes` read right, per field and for all fields at once ('all')."""
    readings = evaluator.read([world.draw_scene(scene, SIZE) for scene in scenes])
    truths = [labels_of(scene) for scene in scenes]
    scores = {
        name: sum(r[name] == t[name] for r, t in zip(readings, truths, strict=True)) / len(scenes) for name in HEADS
    }
    scores["all"] = sum(r == t for r, t in zip(readings, truths, strict=True)) / len(scenes)
    return scores


def train_evaluator(
    out: Path,
    steps: int = 3000,
    dataset_size: int = 20000,
    batch_size: int = 64,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train the evaluator on `dataset_size` renders (softened at random each time) and save it to `out`.

    Returns its accuracy on 2,000 fresh renders it never saw (also written to out/config.json).
    """
    torch.manual_seed(seed)
    rng = random.Random(f"evaluator-{seed}")
    scenes = sample_scenes(dataset_size, rng)
    pictures = [world.draw_scene(scene, SIZE) for scene in scenes]
    targets = targets_of(scenes)
    evaluator = Evaluator()
    optimizer = torch.optim.AdamW(evaluator.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    started = time.perf_counter()
    evaluator.train()
    for step in range(steps):
        indices = [rng.randrange(len(scenes)) for _ in range(batch_size)]
        batch = world.to_tensor([soften(pictures[i], rng) for i in indices])
        batch = batch + 0.03 * torch.randn_like(batch)
        logits = evaluator(batch)
        loss = sum(F.cross_entropy(logits[name], targets[name][indices]) for name in HEADS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            progress(
                f"evaluator step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)"
            )
    scores = accuracy(evaluator, sample_scenes(2000, random.Random(f"evaluator-check-{seed}")))
    out.mkdir(parents=True, exist_ok=True)
    save_file(evaluator.state_dict(), out / "evaluator.safetensors")
    (out / "config.json").write_text(json.dumps({"heads": HEADS, "size": SIZE, "held_out_accuracy": scores}, indent=1))
    return scores


def load_evaluator(folder: Path = EVALUATOR_FOLDER) -> Evaluator:
    """The trained evaluator saved in `folder` (the committed one by default)."""
    config = json.loads((folder / "config.json").read_text())
    if config["heads"] != {name: list(labels) for name, labels in HEADS.items()}:
        raise ValueError(f"{folder} was trained for other labels than this world's; train it again.")
    evaluator = Evaluator()
    evaluator.load_state_dict(load_file(folder / "evaluator.safetensors"))
    return evaluator.eval()
