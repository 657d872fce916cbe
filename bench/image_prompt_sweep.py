"""Image prompts on storybook-mini: each identity field read right, per guidance and image scale.

Registers K held-out characters with the product's registry, builds their image prompts (IP-Adapter), draws the 12
story pages of each with one seed per setting, and prints, per setting, identity consistency and the share of pages
on which the evaluator reads each field (the setting, the four attributes, the three signature parts) right.

Usage: python bench/image_prompt_sweep.py [--characters 3] [--work DIR] GUIDANCE,SCALE [GUIDANCE,SCALE ...]
    e.g. python bench/image_prompt_sweep.py 7.5,1 5,1.5 3,1
"""

import argparse
import tempfile
import time
from pathlib import Path

from storybook.book import RenderSettings
from storybook.lab import world
from storybook.lab.benchmark import benchmark_toddlers, draw_all, register
from storybook.lab.evaluator import labels_of, load_evaluator
from storybook.lab.metrics import identity_consistency
from storybook.models import MINI_MODEL
from storybook.renderer import Renderer
from storybook.training.personalize import build_identity

FIELDS = ["setting", *world.ATTRIBUTES, *world.SIGNATURE]


def sweep(work: Path, characters: int, settings: list[tuple[float, float]]) -> None:
    """Print one line per (guidance, image scale) in `settings`: identity consistency and each field's share."""
    home, evaluator = work / "home", load_evaluator()
    toddlers = benchmark_toddlers(characters)
    subjects = []
    for number, toddler in enumerate(toddlers):
        token = register(home, f"kid{number}", toddler, MINI_MODEL)
        build_identity(home, f"kid{number}", "ip-adapter", MINI_MODEL)
        subjects.append(f"{token} toddler with {toddler.description}")
    renderer = Renderer(home, MINI_MODEL)
    renderer.load_identities([f"kid{number}" for number in range(characters)])
    for guidance, scale in settings:
        started, right, identity, pages = time.perf_counter(), dict.fromkeys(FIELDS, 0), [], 0
        for number, (toddler, subject) in enumerate(zip(toddlers, subjects, strict=True)):
            slug = f"kid{number}"
            render = RenderSettings(model=MINI_MODEL, guidance=guidance, image_scales={slug: scale})
            readings = evaluator.read(draw_all(renderer, world.page_prompts(subject), 1, (slug,), render))
            truths = [labels_of(scene) for scene in world.page_scenes(toddler, 1)]
            for reading, truth in zip(readings, truths, strict=True):
                pages += 1
                for field in FIELDS:
                    right[field] += reading[field] == truth[field]
            identity.append(identity_consistency(readings, toddler))
        shares = " ".join(f"{field} {right[field] / pages:.0%}" for field in FIELDS)
        print(
            f"guidance {guidance:g}, scale {scale:g}: identity {sum(identity) / len(identity):.0%}; {shares} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


def main() -> None:
    """Parse the arguments and run the sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="GUIDANCE,SCALE pairs, e.g. 7.5,1")
    parser.add_argument("--characters", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="Keep the characters here (default: a temp folder).")
    args = parser.parse_args()
    settings = [tuple(float(value) for value in item.split(",")) for item in args.settings]
    work = args.work or Path(tempfile.mkdtemp(prefix="image-prompt-sweep-"))
    sweep(work, args.characters, settings)


if __name__ == "__main__":
    main()
