"""Training's whole-process time against diffusers' own LoRA DreamBooth script, paired, at equal settings.

Both train a LoRA (rank 8, attention only, lr 5e-4 constant, batch 4, 64 px, no prior preservation, fp32, no sample
pictures: the peer draws none unless asked) of Mia's prepared photos on storybook-mini, from a cold start of the
process to its weights on disk: `storybook character train Mia --method lora ...` and diffusers'
`examples/dreambooth/train_dreambooth_lora.py` (the peer; pass its path,
it is not part of this project). Each pair runs back to back, storybook first, at every step count given; the ratio
is storybook's seconds over the peer's. Prints one markdown row per step count.

The peer imports torchvision (its transforms): where this project's environment lacks it, install it into a folder
and pass that folder with --peer-pythonpath (the peer alone gets it: torchvision changes which image processors
transformers picks, so storybook runs without it).

Usage: python bench/peer_lora.py PEER_SCRIPT [--steps 100,400] [--repeats 1] [--peer-pythonpath DIR]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from storybook.models import MINI_MODEL_FOLDER
from storybook.registry import load_character, prepared_photo_paths
from storybook.sample_photos import write_sample_photos

STORYBOOK = [sys.executable, "-c", "from storybook.cli import app; app()"]
SETTINGS = {"rank": 8, "lr": 5e-4, "batch": 4, "resolution": 64}


def timed(command: list[str], env: dict[str, str]) -> float:
    """Seconds `command` takes to finish; it must succeed."""
    started = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    if finished.returncode:
        raise SystemExit(f"{' '.join(command[:4])}... failed:\n{finished.stderr[-3000:]}")
    return time.perf_counter() - started


def storybook_command(home: Path, steps: int) -> list[str]:
    """`storybook character train` for Mia with the shared settings (a fresh run each time: --restart)."""
    return [
        *STORYBOOK, "--home", str(home), "character", "train", "Mia", "--method", "lora", "--steps", str(steps),
        "--rank", str(SETTINGS["rank"]), "--lr", str(SETTINGS["lr"]), "--batch-size", str(SETTINGS["batch"]),
        "--no-lora-convolutions", "--no-prior-preservation", "--captions", "identifier", "--no-photo-captions",
        "--mixed-precision", "no", "--restart", "--no-samples",
    ]  # fmt: skip


def peer_command(peer: Path, photos: Path, prompt: str, out: Path, steps: int) -> list[str]:
    """diffusers' train_dreambooth_lora.py with the shared settings."""
    return [
        sys.executable, str(peer), "--pretrained_model_name_or_path", str(MINI_MODEL_FOLDER),
        "--instance_data_dir", str(photos), "--instance_prompt", prompt, "--output_dir", str(out),
        "--resolution", str(SETTINGS["resolution"]), "--train_batch_size", str(SETTINGS["batch"]),
        "--rank", str(SETTINGS["rank"]), "--learning_rate", str(SETTINGS["lr"]), "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0", "--max_train_steps", str(steps), "--checkpointing_steps", "1000000",
        "--mixed_precision", "no", "--seed", "0", "--dataloader_num_workers", "0", "--report_to", "tensorboard",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", type=Path, help="diffusers' examples/dreambooth/train_dreambooth_lora.py")
    parser.add_argument("--steps", default="100,400")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peer-pythonpath", help="a folder with what the peer needs besides storybook's packages")
    args = parser.parse_args()
    env = {**os.environ, "STORYBOOK_MODEL": "storybook-mini", "HF_HUB_OFFLINE": "1"}
    peer_env = env | ({"PYTHONPATH": args.peer_pythonpath} if args.peer_pythonpath else {})
    print("| steps | storybook s | diffusers' script s | storybook / diffusers |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="storybook-peer-") as temp:
        home = Path(temp) / "home"
        write_sample_photos(Path(temp) / "photos")
        add = ["character", "add", "Mia", "--photos", str(Path(temp) / "photos"), "--class-noun", "toddler"]
        subprocess.run([*STORYBOOK, "--home", str(home), *add], env=env, check=True, capture_output=True)
        mia = load_character(home, "Mia")
        photos = Path(temp) / "prepared"  # the crops storybook trains on, alone in a folder for the peer
        photos.mkdir()
        for path in prepared_photo_paths(home, mia):
            shutil.copy(path, photos)
        prompt = mia.instance_prompt
        for steps in [int(count) for count in args.steps.split(",")]:
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(timed(storybook_command(home, steps), env))
                shutil.rmtree(Path(temp) / "peer-out", ignore_errors=True)
                theirs.append(timed(peer_command(args.peer, photos, prompt, Path(temp) / "peer-out", steps), peer_env))
            print(f"| {steps} | {min(ours):.1f} | {min(theirs):.1f} | {min(ours) / min(theirs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
