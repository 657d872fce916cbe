"""What the lab's sweeps (bench/*_sweep.py) share: characters with image prompts (held-out toddlers, or
training-family ones), and a tally of the pages on which the evaluator reads each field right."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from storybook.book import RenderSettings
from storybook.lab import world
from storybook.lab.benchmark import benchmark_toddlers, draw_all, register
from storybook.lab.evaluator import labels_of
from storybook.lab.metrics import identity_consistency, pairwise_agreement
from storybook.models import MINI_MODEL
from storybook.render.renderer import Renderer
from storybook.training.personalize import build_identity

FIELDS = ["setting", *world.ATTRIBUTES, *world.SIGNATURE]


@dataclass(frozen=True)
class SweepCharacter:
    """A lab toddler registered as `slug` with an image prompt, and how its story pages name it."""

    slug: str
    toddler: world.Toddler
    subject: str  # identifier, class noun and the parent's description, as the story stage writes them


def image_prompt_characters(
    home: Path, count: int, model: str = MINI_MODEL, held_out: bool = True
) -> list[SweepCharacter]:
    """Register the lab's first `count` held-out toddlers (training-family ones when `held_out` is False) in `home` as
    kid0, kid1, ... through the product's registry and build each one's image prompt (IP-Adapter)."""
    characters = []
    for number, toddler in enumerate(benchmark_toddlers(count, held_out=held_out)):
        slug = f"kid{number}"
        token = register(home, slug, toddler, model)
        build_identity(home, slug, "ip-adapter", model)
        characters.append(SweepCharacter(slug, toddler, f"{token} toddler with {toddler.description}"))
    return characters


def draw_pages(
    renderer: Renderer, character: SweepCharacter, guidance: float, image_scale: float, seeds: int = 1
) -> list[Image.Image]:
    """`character`'s 12 story pages drawn with its image prompt at `guidance` and `image_scale`, each with seeds
    0..seeds-1 (page-major, seeds inner), on storybook-mini."""
    render = RenderSettings(model=MINI_MODEL, guidance=guidance, image_scales={character.slug: image_scale})
    return draw_all(renderer, world.page_prompts(character.subject), seeds, (character.slug,), render)


@dataclass
class FieldTally:
    """Pages read so far: how many had each field right, and each book's identity consistency and agreement."""

    pages: int = 0
    right: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))
    identity: list[float] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)

    def add(self, readings: list[dict[str, str]], toddler: world.Toddler) -> None:
        """Count one book: the evaluator's `readings` of `toddler`'s 12 story pages (one seed, world.page_scenes)."""
        truths = [labels_of(scene) for scene in world.page_scenes(toddler, 1)]
        for reading, truth in zip(readings, truths, strict=True):
            self.pages += 1
            for name in FIELDS:
                self.right[name] += reading[name] == truth[name]
        self.identity.append(identity_consistency(readings, toddler))
        self.agreement.append(pairwise_agreement(readings))

    def summary(self) -> str:
        """'identity 3%, agreement 1%; setting 100% hair_colour 42% ...' over every book counted."""
        shares = " ".join(f"{name} {self.right[name] / self.pages:.0%}" for name in FIELDS)
        return f"identity {np.mean(self.identity):.0%}, agreement {np.mean(self.agreement):.0%}; {shares}"
