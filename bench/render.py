"""Rendering benchmark: seconds per page and peak memory of `render_book`, against a bare loop of pipeline calls.

The workload is one book (12 pages and a cover) about two LoRA characters, Mia and Rex, trained briefly on the
benchmarked model. Each model runs in its own subprocess, which loads the pipeline and both LoRAs once and then
renders the book REPEATS times each way, in turn, on fresh copies (nothing cached): the bare loop (plain pipeline
calls on that pipeline, adapters switched per page, the same prompts, seeds, steps, guidance and sampler, each
picture saved as a PNG) and storybook's `render_book` at batch sizes 1 and 4. Loading is outside the timings; peak
memory is the model process's. The tiny model always runs; an SD-1.5-shaped model with random weights runs too
when CUDA is available. Writes the `## Rendering` section of bench/RESULTS.md.

Usage: python bench/render.py [--steps 20] [--sd15-cpu]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from train import (
    MARKER,
    build_sd15_shaped,
    run_in_subprocess,
    sd15_unet,
    section_header,
    write_section,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the benchmark never reaches a model hub

REPEATS = 3  # renders of the book each way; the median counts
WAYS = {"bare": 1, "storybook batch 1": 1, "storybook batch 4": 4}  # way -> pictures per pipeline call
SECTION = "## Rendering"


def bare_loop(pipeline, folder: Path) -> float:
    """Render the book's pictures with plain diffusers calls on `pipeline` (its LoRAs loaded); return the seconds."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from storybook.book import load_book

    book = load_book(folder)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
        pipeline.scheduler.config, algorithm_type="dpmsolver++", use_karras_sigmas=True
    )
    synchronize()
    started = time.perf_counter()
    for number, page in enumerate([book.cover, *book.pages]):
        if page.characters:
            pipeline.enable_lora()
            pipeline.set_adapters(page.characters)
        else:
            pipeline.disable_lora()
        image = pipeline(
            page.prompt,
            negative_prompt=page.negative_prompt,
            num_inference_steps=book.render.steps,
            guidance_scale=book.render.guidance,
            generator=torch.Generator("cpu").manual_seed(page.seed),
        ).images[0]
        image.save(folder / f"bare-{number}.png")
    synchronize()
    return time.perf_counter() - started


def synchronize() -> None:
    """Wait for the GPU, so that timings include its work."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_one(spec: dict) -> dict:
    """Load the model of `spec` once, then render its book REPEATS times (or `spec["repeats"]`) each way (the bare
    loop, storybook at batch 1 and 4), in turn, on fresh copies; return each way's median seconds per page and the
    process's peak memory."""
    from storybook.book import load_book
    from storybook.memory import peak_memory_bytes
    from storybook.render.pages import open_renderer, render_book

    home, book = Path(spec["home"]), Path(spec["book"])
    pages = len(load_book(book).pages) + 1
    renderer = open_renderer(home, load_book(book))  # the pipeline and both LoRAs, loaded once for every way
    timings: dict[str, list[float]] = {way: [] for way in WAYS}
    for repeat in range(spec.get("repeats", REPEATS)):
        for way in WAYS:
            folder = book.with_name(f"{book.name}-{way}-{repeat}")
            shutil.copytree(book, folder)
            if way == "bare":
                timings[way].append(bare_loop(renderer.pipeline, folder))
                continue
            synchronize()
            started = time.perf_counter()
            report, _ = render_book(home, folder, renderer=renderer, batch_size=WAYS[way])
            synchronize()
            timings[way].append(time.perf_counter() - started)
            assert report.drawn == pages
    peak = peak_memory_bytes()
    return {"s_per_page": {way: statistics.median(t) / pages for way, t in timings.items()}, "peak_bytes": peak}


def prepare_book(root: Path, model: str, steps: int, train_steps: int) -> Path:
    """A data root with Mia and Rex trained on `model` and a 12-page book about both, set to render in `steps`."""
    from storybook.book import save_book
    from storybook.registry import add_character
    from storybook.render.pages import with_settings
    from storybook.sample_photos import write_sample_photos
    from storybook.story.stage import StoryRequest, write_story
    from storybook.tiny_model import build_tokenizer
    from storybook.training.loop import train_identity

    photos = write_sample_photos(root / "photos")
    quick = {"steps": train_steps, "num_class_images": 4, "class_image_steps": 4, "checkpoint_every": train_steps + 1}
    for name, class_noun in (("Mia", "toddler"), ("Rex", "dog")):
        add_character(root, name, photos, build_tokenizer(), class_noun=class_noun)
        train_identity(root, name, "lora", model, quick, show_progress=False)
    request = StoryRequest(child="Mia", characters=["Mia", "Rex"], theme="a day at the beach", pages=12, seed=1)
    folder, book = write_story(root, request, "offline")
    save_book(folder, with_settings(book, {"model": model, "steps": steps}))
    return folder


def sd15_unet_batch_check() -> list[str]:
    """Seconds per picture-step of an SD-1.5-shaped UNet (random weights) at 512 px, batch 1 and 4 pictures (with
    classifier-free guidance, 2 and 8 latents): does batching pay for a full-size model on this machine?"""
    import torch

    unet = sd15_unet().eval()
    rows = []
    for pictures in (1, 4):
        latents, words = torch.randn(2 * pictures, 4, 64, 64), torch.randn(2 * pictures, 77, 768)
        with torch.no_grad():
            unet(latents, 10, words)  # warm-up
            started = time.perf_counter()
            unet(latents, 10, words)
        seconds = (time.perf_counter() - started) / pictures
        rows.append(f"| sd15-shaped UNet, one step at 512 px | CPU forward | {pictures} | {seconds:.2f} s/step | | |")
    return rows


def main() -> None:
    """Prepare each model's book, render it every way in subprocesses, print the table, write bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per picture")
    parser.add_argument("--sd15-cpu", action="store_true", help="also time an SD-1.5-shaped UNet step on the CPU")
    parser.add_argument("--one", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(MARKER + json.dumps(run_one(json.loads(args.one))), flush=True)
        return

    load_before = os.getloadavg()
    import torch

    from storybook.memory import peak_memory_kind

    rows = []
    with tempfile.TemporaryDirectory(prefix="storybook-bench-") as temp:
        root = Path(temp)
        models = [("tiny", "tiny", root / "tiny-home")]
        if torch.cuda.is_available():
            print("building the SD-1.5-shaped model ...", file=sys.stderr)
            models.append(("sd15-shaped (random)", str(build_sd15_shaped(root / "sd15")), root / "sd15-home"))
        for label, model, home in models:
            print(f"training Mia and Rex on {label} ...", file=sys.stderr)
            home.mkdir(exist_ok=True)
            book = prepare_book(home, model, args.steps, train_steps=10)
            print(f"rendering {label} every way ...", file=sys.stderr)
            result = run_in_subprocess({"home": str(home), "book": str(book)}, script=__file__)
            for way, batch_size in WAYS.items():
                renderer = "bare diffusers loop" if way == "bare" else "storybook render_book"
                cells = [label, renderer, str(batch_size)]
                if "error" in result:
                    rows.append("| " + " | ".join(cells + [f"failed: {result['error']}", "", ""]) + " |")
                    continue
                seconds, bare = result["s_per_page"][way], result["s_per_page"]["bare"]
                cells += [f"{seconds:.3f}", f"{result['peak_bytes'] / 2**20:.0f}", f"{seconds / bare:.2f}x"]
                rows.append("| " + " | ".join(cells) + " |")

    if args.sd15_cpu and not torch.cuda.is_available():
        print("timing an SD-1.5-shaped UNet on the CPU ...", file=sys.stderr)
        rows += sd15_unet_batch_check()

    memory = f"{peak_memory_kind()} of the subprocess"
    section = "\n".join(
        [
            *section_header(SECTION, load_before),
            f"- Workload: a 12-page book and its cover (13 pictures) with two LoRA characters, {args.steps} steps, "
            "DPM-Solver++ (Karras), guidance 7.5, the model's own size; nothing cached",
            f"- s/page: rendering time over pictures (median of {REPEATS} renders, the ways taking turns), loading "
            f"excluded; peak memory: {memory}, for the model's process; "
            "overhead: s/page against the bare loop",
            "",
            "| model | renderer | batch | s/page | peak memory MiB | overhead |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )
    print(section)
    write_section(section)


if __name__ == "__main__":
    main()
