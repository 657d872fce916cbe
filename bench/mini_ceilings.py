"""The ceilings of storybook-mini's candidate framings (issue 29): true story scenes through a VAE and back, read by
the evaluator per identity field and all seven at once. No model drawing through that VAE reads better.

Usage: python bench/mini_ceilings.py [--vae FOLDER] [--evaluator FOLDER] [--scenes 300]
"""

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from storybook.lab import world
from storybook.lab.drawing import check_scenes, read_round_trips
from storybook.lab.evaluator import load_evaluator
from storybook.models import MINI_MODEL_FOLDER

FRAMINGS = {  # name: (toddler heights, picture size)
    "full body, 64 px (v3)": (world.FULL_BODY_HEIGHTS, 64),
    "story, 64 px": (world.STORY_HEIGHTS, 64),
    "story, 96 px": (world.STORY_HEIGHTS, 96),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, default=MINI_MODEL_FOLDER, help="a pipeline folder whose VAE to read")
    parser.add_argument("--evaluator", type=Path, help="an evaluator folder (default: the committed one)")
    parser.add_argument("--scenes", type=int, default=300)
    args = parser.parse_args()
    vae = AutoencoderKL.from_pretrained(args.vae, subfolder="vae", torch_dtype=torch.float32).eval()
    evaluator = load_evaluator(args.evaluator) if args.evaluator else load_evaluator()
    for name, (heights, size) in FRAMINGS.items():
        for held_out in (False, True):
            scenes = check_scenes(args.scenes, seed=1, held_out=held_out, heights=heights)
            shares = read_round_trips(vae, evaluator, scenes, size)
            family = "held out" if held_out else "training"
            print(f"{name}, {family}: " + " ".join(f"{field} {share:.1%}" for field, share in shares.items()))


if __name__ == "__main__":
    main()
