"""Consistency benchmark: held-out characters x methods x 12 story pages on storybook-mini, read by the evaluator.

Methods: the base model with only the text description; DreamBooth-LoRA and full DreamBooth, each with and without
prior preservation; the IP-Adapter image prompt alone and with a LoRA; the ceiling (true pictures through the VAE).
Columns: identity consistency, pairwise agreement, prompt fidelity, class drift, training time, peak memory of the
identity's build (its own process), artifact size and seconds from the photos to the first page (means over the
characters). Then pairs of toddlers on one page, with and
without masks. The same run as `storybook lab run --pairs N`; this script also writes the `## Consistency` section of
bench/RESULTS.md.

Usage: python bench/consistency.py [--characters 3] [--seeds 2] [--pairs 3] [--method NAME ...] [--train-steps N]
    [--train-lr LR] [--work DIR]
"""

import argparse
import os
import tempfile
from pathlib import Path

from train import section_header, write_section

from storybook.lab.benchmark import results_table, run_benchmark
from storybook.lab.pairs import pairs_table, run_pairs

SECTION = "## Consistency"
TARGETS = (
    "Targets (the default method on storybook-mini, held-out characters): identity >= 75%, agreement >= 75%, "
    "prompt fidelity >= 95%, class drift <= 5%, a usable identity in <= 10 s."
)


def main() -> None:
    """Run the benchmark, print its table and write it to bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--characters", type=int, default=3, help="held-out characters")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per page prompt")
    parser.add_argument("--train-steps", type=int, help="training steps for every method (default: the trainer's)")
    parser.add_argument("--train-lr", type=float, help="learning rate for every method (default: the trainer's)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps per picture")
    parser.add_argument("--pairs", type=int, default=3, help="pairs of toddlers on one page (0: none)")
    parser.add_argument("--method", action="append", help="a method to measure (repeatable; default: all)")
    parser.add_argument("--image-scale", type=float, help="image-prompt strength (default: the adapter's)")
    parser.add_argument("--work", type=Path, help="keep characters, identities and class images here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="storybook-lab-") as temp:
        work = args.work or Path(temp)
        training = {"steps": args.train_steps, "learning_rate": args.train_lr}
        results = run_benchmark(
            work,
            characters=args.characters,
            seeds=args.seeds,
            methods=args.method,
            training=training,
            steps=args.steps,
            image_scale=args.image_scale,
        )
        table = results_table(results)
        if args.pairs:
            pairs = run_pairs(work, pairs=args.pairs, seeds=args.seeds, steps=args.steps, image_scale=args.image_scale)
            table += "\n\n" + pairs_table(pairs)
    print(table)
    pictures = args.characters * 12 * args.seeds
    lines = section_header(SECTION, load_before) + [
        f"- Setup: {args.characters} held-out characters x 12 page prompts x {args.seeds} seeds = {pictures} pages "
        f"per method, and as many class-noun-only pictures for drift; {args.steps} denoising steps; "
        f"{args.pairs} pairs of toddlers x 12 pages x {args.seeds} seeds on one page; peak RSS: of the process "
        "that builds the identity (spawned for it; on a GPU its VRAM is not counted).",
        f"- {TARGETS}",
        "",
        table,
    ]
    write_section("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
