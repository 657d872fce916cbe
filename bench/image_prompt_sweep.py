"""Image prompts on storybook-mini: each identity field read right, per guidance and image scale.

Registers K held-out characters (with --training-family, toddlers of the family storybook-mini was trained on, to
tell what it cannot draw from what it cannot generalise to) with the product's registry, builds their image prompts
(IP-Adapter), draws the 12 story pages of each with one seed per setting, and prints, per setting, identity
consistency, pairwise agreement and the share of pages on which the evaluator reads each field (the setting, the four
attributes, the three signature parts) right.

Usage: python bench/image_prompt_sweep.py [--characters 3] [--work DIR] [--training-family] GUIDANCE,SCALE [...]
    e.g. python bench/image_prompt_sweep.py 7.5,1 5,1.5 3,1
"""

import argparse
import tempfile
import time
from pathlib import Path

from storybook.lab.evaluator import load_evaluator
from storybook.lab.sweep import FieldTally, draw_pages, image_prompt_characters
from storybook.models import MINI_MODEL
from storybook.render.renderer import Renderer


def sweep(work: Path, characters: int, settings: list[tuple[float, float]], held_out: bool = True) -> None:
    """Print one line per (guidance, image scale) in `settings`: identity consistency, pairwise agreement and each
    field's share."""
    home, evaluator = work / "home", load_evaluator()
    characters_drawn = image_prompt_characters(home, characters, held_out=held_out)
    renderer = Renderer(home, MINI_MODEL)
    renderer.load_identities([character.slug for character in characters_drawn])
    for guidance, scale in settings:
        started, tally = time.perf_counter(), FieldTally()
        for character in characters_drawn:
            tally.add(evaluator.read(draw_pages(renderer, character, guidance, scale)), character.toddler)
        print(
            f"guidance {guidance:g}, scale {scale:g}: {tally.summary()} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


def main() -> None:
    """Parse the arguments and run the sweep."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="GUIDANCE,SCALE pairs, e.g. 7.5,1")
    parser.add_argument("--characters", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="Keep the characters here (default: a temp folder).")
    parser.add_argument(
        "--training-family", action="store_true", help="Toddlers of the training family instead of held-out ones."
    )
    args = parser.parse_args()
    settings = [tuple(float(value) for value in item.split(",")) for item in args.settings]
    work = args.work or Path(tempfile.mkdtemp(prefix="image-prompt-sweep-"))
    sweep(work, args.characters, settings, held_out=not args.training_family)


if __name__ == "__main__":
    main()
