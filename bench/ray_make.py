"""Ray benchmark: pages per second of `storybook make --ray` with 1 and 2 workers against a local `make`.

The workload: four 8-page books (36 pictures with their covers) about two LoRA characters on the tiny model, 20
steps each, drawn from scratch each time (the stories are written once). Times include starting the actors and
loading the model in each, as a user's run does; the local Ray instance is started once beforehand. Writes the
`## Ray` section of bench/RESULTS.md.

Usage: python bench/ray_make.py [--steps 20]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from train import section_header, write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the benchmark never reaches a model hub

SECTION = "## Ray"
THEMES = ("a day at the beach", "bath time", "bedtime", "daycare")


def prepare(root: Path, steps: int) -> list[Path]:
    """A data root with Mia and Rex trained briefly on the tiny model, and four spec files; return the specs."""
    import yaml

    from storybook.registry import add_character
    from storybook.sample_photos import write_sample_photos
    from storybook.tiny_model import build_tokenizer
    from storybook.training.loop import train_identity

    photos = write_sample_photos(root / "photos")
    quick = {"steps": 10, "num_class_images": 4, "class_image_steps": 4, "checkpoint_every": 11}
    for name, class_noun in (("Mia", "toddler"), ("Rex", "dog")):
        add_character(root, name, photos, build_tokenizer(), class_noun=class_noun)
        train_identity(root, name, "lora", "tiny", quick, show_progress=False)
    specs = []
    for index, theme in enumerate(THEMES):
        spec = {"child": "Mia", "characters": ["Mia", "Rex"], "theme": theme, "pages": 8, "seed": index}
        spec |= {"writer": "offline", "output": f"out/book-{index}.pdf", "render": {"model": "tiny", "steps": steps}}
        path = root / "specs" / f"book-{index}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(spec))
        specs.append(path)
    return specs


def timed(make, root: Path, specs: list[Path]) -> tuple[float, int]:
    """Seconds for `make` to draw every picture of the books afresh, and how many it drew."""
    for images in (root / "books").glob("*/images"):
        shutil.rmtree(images)
    started = time.perf_counter()
    made = make()
    seconds = time.perf_counter() - started
    if failed := [m.error for m in made if m.error]:
        raise SystemExit(f"a book failed: {failed[0]}")
    return seconds, sum(m.drawn for m in made)


def main() -> None:
    """Measure a local make and Ray with 1 and 2 workers; print the table and write bench/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per picture")
    args = parser.parse_args()
    load_before = os.getloadavg()
    import ray

    from storybook.batch import make_books
    from storybook.cluster import RaySettings
    from storybook.scale_out import make_books_on_ray

    quiet = lambda line: None  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory(prefix="storybook-ray-bench-") as temp:
        root = Path(temp)
        print("training Mia and Rex on the tiny model ...", file=sys.stderr)
        specs = prepare(root, args.steps)
        make_books(root, specs, say=quiet)  # writes the stories once
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        runs = [("local make (one process)", lambda: make_books(root, specs, say=quiet))]
        for workers in (1, 2):
            runs.append(
                (
                    f"make --ray, {workers} worker(s)",
                    lambda w=workers: make_books_on_ray(root, specs, RaySettings(workers=w), say=quiet),
                )
            )
        for label, make in runs:
            print(f"{label} ...", file=sys.stderr)
            seconds, pictures = timed(make, root, specs)
            rows.append(f"| {label} | {pictures} | {seconds:.1f} | {pictures / seconds:.2f} |")
        ray.shutdown()
    section = "\n".join(
        [
            *section_header(SECTION, load_before),
            f"- Workload: four 8-page books (36 pictures) with two LoRA characters on the tiny model, {args.steps} "
            "steps; pictures drawn afresh each run; Ray times include starting the actors and loading the model",
            "",
            "| run | pictures | seconds | pictures/s |",
            "| --- | ---: | ---: | ---: |",
            *rows,
        ]
    )
    print(section)
    write_section(section)


if __name__ == "__main__":
    main()
