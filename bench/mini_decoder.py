"""Refine storybook-mini's VAE decoder on story-framed pictures, its encoder frozen (issue 29), reading the ceiling as
it goes.

The encoder, and so every latent a UNet trained on this VAE learns, stays as it is; only the pictures decoded from
latents get sharper (L1 + MSE on full 64 px pictures, as `mini_model.refine_decoder` does for a new VAE). Every
`--every` steps it prints the round-trip ceiling of 300 held-apart story scenes (all seven identity fields read right)
and saves the VAE, in fp16, to `<out>/vae` (a folder `lab train-mini --vae-from` takes).

Usage: python bench/mini_decoder.py OUT [--vae FOLDER] [--steps 400] [--every 200] [--pictures 4000] [--threads 1]
"""

import argparse
import random
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from storybook.lab import world
from storybook.lab.drawing import check_scenes, read_round_trips
from storybook.lab.evaluator import load_evaluator
from storybook.lab.mini_model import MiniRecipe, encode_dataset, refine_decoder
from storybook.models import MINI_MODEL_FOLDER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--vae", type=Path, default=MINI_MODEL_FOLDER, help="a pipeline folder whose VAE to refine")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--pictures", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vae = AutoencoderKL.from_pretrained(args.vae, subfolder="vae", torch_dtype=torch.float32).eval()
    vae.requires_grad_(False)
    evaluator = load_evaluator()
    checks = check_scenes(300, seed=1, heights=world.STORY_HEIGHTS)
    latents, _, scenes = encode_dataset(vae, args.pictures, random.Random("decoder-pilot"), MiniRecipe())
    print(f"step 0: {read_round_trips(vae, evaluator, checks, 64)}", flush=True)
    rng = random.Random(0)
    for done in range(args.every, args.steps + 1, args.every):
        started = time.process_time()
        refine_decoder(vae, latents, scenes, args.every, rng, lambda message: None)  # a warm restart each round
        shares = read_round_trips(vae, evaluator, checks, 64)
        print(f"step {done} ({time.process_time() - started:.0f} CPU s): {shares}", flush=True)
        vae.to(torch.float16).save_pretrained(args.out / "vae")
        vae.to(torch.float32)


if __name__ == "__main__":
    main()
