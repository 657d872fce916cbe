"""Speed on a shared CPU: a LoRA training run and a book's pictures, each timed alone and beside a CPU hog.

Each workload is a whole `storybook` process (start-up included) on storybook-mini in a fresh data root: `character
train Mia --method lora --steps 100` and `render` of an 8-page book at 20 steps. The hog is a one-thread Python busy
loop. Each runs under every OpenMP wait policy given: storybook's own (PASSIVE, set by the package before torch
loads), ACTIVE (threads spin while they wait), libgomp's default ("default": spin for a while, then sleep), and
"spin=N": the default policy spinning N times before it sleeps (GOMP_SPINCOUNT=N; libgomp's default is 300,000).
Prints, per workload and policy, the seconds alone and beside the hog and their ratio (the target: beside <= 2.5x
alone, and alone no slower than the default policy).

Usage: python bench/contention.py [--policies PASSIVE,ACTIVE,default,spin=10000] [--repeats 1]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from storybook.sample_photos import write_sample_photos

STORYBOOK = [sys.executable, "-c", "from storybook.cli import app; app()"]
HOG = [sys.executable, "-c", "while True: pass"]


def timed(command: list[str], env: dict[str, str], fresh: Path) -> float:
    """Seconds `command` takes to finish (it must succeed), after deleting `fresh` (what it made last time)."""
    shutil.rmtree(fresh, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def workloads(home: Path, env: dict[str, str]) -> dict[str, tuple[list[str], Path]]:
    """The two timed commands and what each makes, after registering Mia and writing an 8-page book in `home`."""
    write_sample_photos(home / "photos")
    base = [*STORYBOOK, "--home", str(home)]
    for command in (
        ["character", "add", "Mia", "--photos", str(home / "photos")],
        ["story", "write", "--child", "Mia", "--theme", "a day at the beach", "--pages", "8", "--writer", "offline"],
    ):
        subprocess.run([*base, *command], env=env, check=True, capture_output=True)
    book = next((home / "books").iterdir())
    return {
        "train LoRA, 100 steps": (
            [*base, "character", "train", "Mia", "--method", "lora", "--steps", "100"],
            home / "characters" / "mia" / "identity",
        ),
        "render 8 pages + cover, 20 steps": ([*base, "render", book.name, "--steps", "20"], book / "images"),
    }


def policy_environment(policy: str) -> dict[str, str]:
    """The variables that ask libgomp for `policy` (PASSIVE, ACTIVE, default or spin=N)."""
    if policy.startswith("spin="):
        return {"OMP_WAIT_POLICY": "unset", "GOMP_SPINCOUNT": policy.removeprefix("spin=")}
    # libgomp warns about an unknown value and keeps its default: how "default" is asked for here
    return {"OMP_WAIT_POLICY": policy if policy != "default" else "unset"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="PASSIVE,ACTIVE,default")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    base_env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    base_env |= {"STORYBOOK_MODEL": "storybook-mini", "HF_HUB_OFFLINE": "1"}
    print("| workload | wait policy | alone s | beside a hog s | beside / alone |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="storybook-contention-") as temp:
        commands = workloads(Path(temp), base_env)
        for name, (command, made) in commands.items():
            timed(command, base_env, made)  # once untimed: what a first run caches (class images, latents) is made
            for policy in args.policies.split(","):
                env = base_env | policy_environment(policy)
                alone = min(timed(command, env, made) for _ in range(args.repeats))
                with subprocess.Popen(HOG) as hog:  # killed and reaped however the timing ends
                    try:
                        beside = min(timed(command, env, made) for _ in range(args.repeats))
                    finally:
                        hog.kill()
                print(f"| {name} | {policy} | {alone:.1f} | {beside:.1f} | {beside / alone:.2f} |", flush=True)


if __name__ == "__main__":
    main()
