"""storybook-mini v4's pilot at equal cost (issue 29): candidate recipes' text-only stage, read while they train.

Each candidate trains the UNet and text encoder from scratch on the committed VAE (its framing's ceiling is measured
by `bench/mini_ceilings.py`) with a constant learning rate after warm-up, so a run can go on as the long run, and
saves its EMA weights every `--every` steps with the process's CPU seconds spent training so far (the cost, fair
between candidates run side by side). `--read` then draws 48 training-family captions with each snapshot (25 steps,
guidance 7.5) and the evaluator reads the setting and the four worded attributes, and draws the demo book's 12 story
pages (the offline writer's prompts, text only) and reads how many show its beach: one line of
`<work>/<candidate>/curve.jsonl` per snapshot.

Usage: python bench/mini_pilot.py CANDIDATE [--until 3000] [--every 500] [--work DIR] [--threads 1]
       python bench/mini_pilot.py CANDIDATE --read [--evaluator FOLDER]
       python bench/mini_pilot.py CANDIDATE --take SNAPSHOT --cpu-s S   (the long run's weights-only snapshot as the
           next step-N, S its CPU seconds so far; the VAE stays the pilot's, so the curve goes on comparably)
       python bench/mini_pilot.py v3 --table   (every candidate's curve)
    candidates: v3, story, story+parts, story+parts+words, story+bg+words, story96+parts
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file

from storybook import registry
from storybook.lab import world
from storybook.lab.drawing import check_scenes, read_captions
from storybook.lab.evaluator import Evaluator, load_evaluator
from storybook.lab.mini_model import MiniRecipe, train_mini
from storybook.models import MINI_MODEL, MINI_MODEL_FOLDER, load_tokenizer
from storybook.story.stage import StoryRequest, write_story

CANDIDATES = {
    "v3": MiniRecipe(heights=world.FULL_BODY_HEIGHTS, part_weight=0.0, min_snr_gamma=None, varied_captions=False),
    "story": MiniRecipe(part_weight=0.0, min_snr_gamma=None, varied_captions=False),  # the toddler drawn large
    "story+parts": MiniRecipe(varied_captions=False),  # and the loss where the toddler is (v4 to step 5,750)
    "story+parts+words": MiniRecipe(),  # and varied captions (v4's recipe from step 6,000 on)
    "story+bg+words": MiniRecipe(part_weight=1.0),  # the background weighed more (a copy of it at step 7,000)
    "story96+parts": MiniRecipe(resolution=96, varied_captions=False),  # and 24x24 latents
}
SCHEDULE_STEPS = 100_000  # far beyond the pilot: its learning rate stays constant after warm-up


def pilot(name: str, until: int, every: int, work: Path) -> None:
    """Train candidate `name` to `until` steps, saving its EMA pipeline every `every` steps (`<work>/<name>/step-N`)
    with the process's CPU seconds spent training so far (`cpu_s.txt`)."""
    recipe, folder = CANDIDATES[name], work / name
    for target in range(every, until + 1, every):
        snapshot = folder / f"step-{target}"
        if snapshot.exists():
            continue
        cpu_file = folder / "cpu_s.txt"
        cpu_seconds = float(cpu_file.read_text()) if cpu_file.exists() else 0.0
        started = time.process_time()
        train_mini(
            folder / "pipeline",
            folder,
            unet_steps=target,
            schedule_steps=SCHEDULE_STEPS,
            recipe=recipe,
            vae_from=MINI_MODEL_FOLDER,
            progress=lambda message: print(f"[{name}] {message}", flush=True),
        )
        cpu_file.write_text(str(cpu_seconds + time.process_time() - started))
        (folder / "pipeline" / "cpu_s.txt").write_text(cpu_file.read_text())
        (folder / "pipeline").rename(snapshot)


def take_snapshot(name: str, work: Path, snapshot: Path, cpu_seconds: float) -> Path:
    """Add the long run's weights-only `snapshot` (`train_mini(..., snapshot=)`) to candidate `name`'s curve as
    `step-N`: its last pilot pipeline (on a machine without one, the committed model, whose VAE the pilot trains on)
    with the snapshot's UNet and text encoder, in fp32."""
    folder = work / name
    last = max(folder.glob("step-*"), key=lambda path: int(path.name[5:]), default=MINI_MODEL_FOLDER)
    step = json.loads((snapshot / "snapshot.json").read_text())["step"]
    out = folder / f"step-{step}"
    if out.exists():
        return out
    partial = folder / f".step-{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(last, partial)
    for part, weights_file in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        weights = {key: value.float() for key, value in load_file(snapshot / f"{part}.safetensors").items()}
        save_file(weights, partial / part / weights_file)
    (partial / "cpu_s.txt").write_text(str(cpu_seconds))
    partial.rename(out)
    return out


def story_pages(work: Path) -> list[tuple[str, str]]:
    """The demo book's 12 pages as (prompt, negative prompt): the offline writer's story of Mia at the beach, written
    once into `work` (the prompts a parent's book gives the model, not the world's captions)."""
    cached = work / "story-pages.json"
    if not cached.exists():
        with tempfile.TemporaryDirectory() as folder:
            home = Path(folder)
            photos = world.write_photos(home / "photos", world.DEMO_TODDLER)
            tokenizer = load_tokenizer(MINI_MODEL, home)
            registry.add_character(home, "Mia", photos, tokenizer, description=world.DEMO_TODDLER.description)
            request = StoryRequest(child="Mia", theme="a day at the beach", pages=12, pronouns="she", seed=1)
            _, book = write_story(home, request, "offline")
        cached.write_text(json.dumps([(page.prompt, page.negative_prompt) for page in book.pages]))
    return [tuple(page) for page in json.loads(cached.read_text())]


@torch.no_grad()
def story_setting_share(pipeline: DiffusionPipeline, evaluator: Evaluator, pages: list[tuple[str, str]]) -> float:
    """The share of the story's pages (text only, 25 steps, guidance 7.5, seed = the page's index) read as the
    beach: whether the model draws the setting of a story's wording, not only of its own captions."""
    prompts, negatives = zip(*pages, strict=True)
    generators = [torch.Generator().manual_seed(index) for index in range(len(pages))]
    pictures = pipeline(list(prompts), negative_prompt=list(negatives), num_inference_steps=25, generator=generators)
    return sum(reading["setting"] == "beach" for reading in evaluator.read(pictures.images)) / len(pages)


def read_snapshots(name: str, work: Path, evaluator_folder: Path | None) -> None:
    """Read every snapshot of candidate `name` not read yet into curve.jsonl (one line each, by step)."""
    recipe, folder = CANDIDATES[name], work / name
    evaluator = load_evaluator(evaluator_folder) if evaluator_folder else load_evaluator()
    scenes = check_scenes(48, heights=recipe.heights)
    curve_file = folder / "curve.jsonl"
    done = {json.loads(line)["step"] for line in curve_file.read_text().splitlines()} if curve_file.exists() else set()
    for snapshot in sorted(folder.glob("step-*"), key=lambda path: int(path.name[5:])):
        step = int(snapshot.name[5:])
        if step in done:
            continue
        pipeline = DiffusionPipeline.from_pretrained(snapshot, dtype=torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        shares = read_captions(pipeline, evaluator, scenes)
        shares["story_beach"] = story_setting_share(pipeline, evaluator, story_pages(work))
        cpu_seconds = round(float((snapshot / "cpu_s.txt").read_text()))
        row = {"step": step, "cpu_s": cpu_seconds, **{key: round(value, 3) for key, value in shares.items()}}
        with curve_file.open("a") as file:
            file.write(json.dumps(row) + "\n")
        print(f"[{name}] {json.dumps(row)}", flush=True)


def print_table(work: Path) -> None:
    """Print every candidate's curve as one markdown table: per step, each field's share right and the CPU cost."""
    print(
        "| candidate | step | CPU s | setting | hair colour | hair style | skin | shirt | all four + setting "
        "| story pages' beach |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in CANDIDATES:
        curve_file = work / name / "curve.jsonl"
        rows = [json.loads(line) for line in curve_file.read_text().splitlines()] if curve_file.exists() else []
        for row in sorted(rows, key=lambda row: row["step"]):
            shares = " | ".join(f"{row[field]:.0%}" for field in ["setting", *world.ATTRIBUTES, "all"])
            story = f"{row['story_beach']:.0%}" if "story_beach" in row else "-"  # read since step 4,250 + 1
            print(f"| {name} | {row['step']} | {row['cpu_s']} | {shares} | {story} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidate", choices=CANDIDATES)
    parser.add_argument("--until", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--work", type=Path, default=Path(".cache/mini-pilot"))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: candidates side by side share fairly)"
    )
    parser.add_argument("--evaluator", type=Path, help="an evaluator folder (default: the committed one)")
    parser.add_argument("--read", action="store_true", help="read the saved snapshots instead of training")
    parser.add_argument("--table", action="store_true", help="print every candidate's curve read so far")
    parser.add_argument("--take", type=Path, help="a long run's weights-only snapshot to add as the next step-N")
    parser.add_argument("--cpu-s", type=float, help="with --take: the CPU seconds spent training up to it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.table:
        print_table(args.work)
    elif args.take:
        print(take_snapshot(args.candidate, args.work, args.take, args.cpu_s))
    elif args.read:
        read_snapshots(args.candidate, args.work, args.evaluator)
    else:
        pilot(args.candidate, args.until, args.every, args.work)


if __name__ == "__main__":
    main()
