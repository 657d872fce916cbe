"""Two characters on one page: pairs of held-out toddlers drawn together, each read in its own half of the picture.

The renderer gives each character's image prompt its own region (left, right) with diffusers' IP-Adapter masks; the
same pages are also drawn with one set of image tokens over the whole picture (no masks), the way two identities
blend. A page counts when the evaluator reads the first child in the left part and the second in the right part.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from storybook.book import RenderSettings
from storybook.lab import world
from storybook.lab.benchmark import benchmark_toddlers, draw_all, register
from storybook.lab.evaluator import Evaluator, load_evaluator
from storybook.lab.metrics import identity_consistency, is_same_character, part_match, share
from storybook.models import MINI_MODEL
from storybook.render.renderer import Renderer
from storybook.training.personalize import IdentityMethod, build_identity


@dataclass
class PairResult:
    """How often both children of a two-character page read right, by variant (with or without masks)."""

    variant: str
    both: float  # share of pages where both children read right (attributes AND signature)
    both_attributes: float  # share of pages where both children's attributes read right
    left: float  # share of pages where the left child reads right
    right: float


def halves(picture: Image.Image) -> tuple[Image.Image, Image.Image]:
    """The left and right three quarters of `picture`, each stretched back to a square for the evaluator."""
    width, height = picture.size
    cut = width * 3 // 4
    left = picture.crop((0, 0, cut, height)).resize((width, height))
    right = picture.crop((width - cut, 0, width, height)).resize((width, height))
    return left, right


def run_pairs(
    work: Path,
    model: str = MINI_MODEL,
    pairs: int = 3,
    seeds: int = 2,
    method: IdentityMethod = "ip-adapter",
    steps: int = 25,
    image_scale: float | None = None,
    evaluator: Evaluator | None = None,
    progress: Callable[[str], None] = print,
) -> list[PairResult]:
    """Draw `pairs` pairs of held-out toddlers x 12 page prompts x `seeds` seeds with identities built by `method`,
    with masks and without (image prompts at `image_scale`, default the adapter's); return one result per variant."""
    home = work / "pairs-home"
    evaluator = evaluator or load_evaluator()
    settings = RenderSettings(model=model, steps=steps)
    toddlers = benchmark_toddlers(2 * pairs, seed=1)
    renderer = Renderer(home, model)
    readings: dict[str, list[tuple[float, ...]]] = {"masks": [], "no masks": []}
    for number in range(pairs):
        first, second = toddlers[2 * number], toddlers[2 * number + 1]
        slugs, subjects = [], []
        for side, toddler in (("left", first), ("right", second)):
            slug = f"pair{number}-{side}"
            subjects.append(f"{register(home, slug, toddler, model)} toddler with {toddler.description}")
            build_identity(home, slug, method, model, image_scale=image_scale, show_progress=False)
            slugs.append(slug)
        renderer.load_identities(slugs)
        for variant, separate in (("masks", True), ("no masks", False)):
            progress(f"pair {number + 1}/{pairs}: {variant}")
            renderer.image_prompts.separate_regions = separate
            pictures = draw_all(renderer, world.pair_prompts(*subjects), seeds, tuple(slugs), settings)
            left = evaluator.read([halves(picture)[0] for picture in pictures])
            right = evaluator.read([halves(picture)[1] for picture in pictures])
            readings[variant].append(pair_scores(left, right, first, second))
    renderer.image_prompts.separate_regions = True
    return [
        PairResult(variant, *(sum(column) / len(column) for column in zip(*rows, strict=True)))
        for variant, rows in readings.items()
    ]


def pair_scores(left: list[dict], right: list[dict], first: world.Toddler, second: world.Toddler) -> tuple[float, ...]:
    """(both, both attributes, left, right) shares of one pair's pages."""
    pages = list(zip(left, right, strict=True))
    attributes = world.ATTRIBUTES
    return (
        share(is_same_character(a, first) and is_same_character(b, second) for a, b in pages),
        share(part_match([a], first, attributes) * part_match([b], second, attributes) == 1 for a, b in pages),
        identity_consistency(left, first),
        identity_consistency(right, second),
    )


def pairs_table(results: list[PairResult]) -> str:
    """The results as a markdown table."""
    lines = ["| two toddlers on a page | both right | both attributes right | left right | right right |"]
    lines.append("|---|---|---|---|---|")
    for r in results:
        lines.append(f"| {r.variant} | {r.both:.0%} | {r.both_attributes:.0%} | {r.left:.0%} | {r.right:.0%} |")
    return "\n".join(lines)
