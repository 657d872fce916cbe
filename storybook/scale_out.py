"""Many books beyond one machine: `storybook make --ray` draws every page of every book on a Ray cluster.

Stories are written on the driver (cheap, and an LLM is rate-limited). Every picture still missing becomes a row of a
Ray Dataset carrying everything it depends on (its book's render settings, the prompt, seed and characters, the
identities' hashes, what the base model is) and where it goes. Ray Data's `map_batches` hands batches of rows to
actors (`PageDrawer`), each of which keeps a renderer loaded (the base pipeline and the identities it has needed)
between batches, as the diffusers community's Ray batch inference does. Pictures come back to the driver as PNG bytes
and are written through the same content-addressed, atomic path as a local render, so a run killed half-way resumes
with what is missing, locally or on the cluster, and a second run draws nothing. A row whose book cannot be drawn
comes back with its error, so that book fails alone; an actor that dies is restarted by Ray and its batch drawn again.

Workers read the data root (base models, the characters' identity files) at the driver's path: on a cluster of
several machines it must be shared (README, "Many books on a Ray cluster").
"""

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import groupby
from pathlib import Path

from storybook.batch import BookSpec, MadeBook, export_spec_book, prepare_spec_book
from storybook.book import RenderSettings
from storybook.config import load_config
from storybook.errors import BookError, error_text
from storybook.models import load_tokenizer, resolve_model, unet_parameter_count
from storybook.render_book import (
    PicturePlan,
    attach,
    check_trained,
    needs_safety_warning,
    plan_pictures,
    screened_pictures,
    unscreened_warning,
    withheld_message,
)
from storybook.renderer import ImageJob, PictureSource, dreambooth_character, picture_source, tokens_beyond
from storybook.storage import atomic_write_bytes
from storybook.training.config import SMALL_MODEL_PARAMETERS

RAY_HINT = "pip install 'storybook[ray]'"
MAX_TASK_RETRIES = 3  # a batch whose worker dies is drawn again this many times (Ray Data's default: for ever)


def import_ray():
    """The ray module. Raises BookError saying how to install it when it is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data draws the pages)
    except ImportError:
        raise BookError(f"--ray needs Ray, which is not installed here: {RAY_HINT}.") from None
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` (or $RAY_ADDRESS), else start a local Ray instance on this machine; nothing
    when this process is connected already."""
    ray = import_ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # storybook shows its own, pages done / total
    context.print_on_execution_start = False
    for logger in ("ray", "ray.data"):  # storybook reports what went wrong itself (ray.data does not propagate)
        logging.getLogger(logger).setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as error:
        raise BookError(f"Cannot reach the Ray cluster at {address}: {error}. Is `ray start --head` running?") from None


@dataclass
class BookRun:
    """One spec's book on its way through the cluster: its spec, folder and plan, what came back, and its outcome."""

    made: MadeBook
    spec: BookSpec | None = None
    folder: Path | None = None
    plan: PicturePlan | None = None
    waiting: int = 0  # pictures not back yet
    withheld: list[str] = field(default_factory=list)  # image paths the safety checker withheld
    started: float = field(default_factory=time.perf_counter)


def book_rows(index: int, run: BookRun, home: Path, source: PictureSource, dreambooth: str | None) -> list[dict]:
    """The rows of the book's missing pictures: each with everything its picture depends on and where it goes."""
    plan = run.plan
    shared = {
        "book": index,
        "home": str(home),
        "render": plan.book.render.model_dump_json(),
        "steps": plan.steps,
        "book_characters": json.dumps(sorted(plan.identities)),
        "identities": json.dumps(plan.identities),
        "dreambooth": dreambooth or "",
        "source": json.dumps(asdict(source)),
    }
    return [
        shared
        | {
            "image": target.image,
            "label": target.label,
            "prompt": target.job.prompt,
            "negative_prompt": target.job.negative_prompt,
            "seed": target.job.seed,
            "characters": json.dumps(list(target.job.characters)),
        }
        for target in plan.targets
        if not (run.folder / target.image).exists()
    ]


class PageDrawer:
    """A Ray actor drawing batches of rows: it keeps one renderer loaded (a base model, at most one DreamBooth
    identity, every identity it has needed) and loads another only when a row needs another base. It draws on the
    GPU Ray gave it (Ray sets CUDA_VISIBLE_DEVICES), else on the CPU, in the data root's dtype."""

    def __init__(self):
        import ray

        from storybook.cli import quiet_libraries

        quiet_libraries()
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.renderer = None

    def __call__(self, batch: dict) -> dict:
        """Draw the batch's rows (one pipeline call per run of rows sharing a book and characters); return, per row,
        its book, image path, PNG bytes, safety note, whether it was withheld, and the error that stopped it."""
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        out = {"book": [], "image": [], "png": [], "note": [], "withheld": [], "error": []}
        for _, group in groupby(rows, key=lambda row: (row["book"], row["characters"])):
            group = list(group)
            try:
                results = self.draw(group)
            except Exception as error:  # this book's pages fail, with what stopped them; the others go on
                results = [(b"", "", False, error_text(error))] * len(group)
            for row, (png, note, withheld, error) in zip(group, results, strict=True):
                out["book"].append(int(row["book"]))
                out["image"].append(str(row["image"]))
                out["png"].append(png)
                out["note"].append(note)
                out["withheld"].append(withheld)
                out["error"].append(error)
        return out

    def renderer_for(self, home: Path, model: str, dreambooth: str | None):
        """The actor's renderer for `model` and DreamBooth identity `dreambooth`: the loaded one when it fits, else a
        new one (the old one's memory given back first)."""
        import gc

        import torch

        from storybook.renderer import Renderer

        if self.renderer is None or not self.renderer.fits(model, dreambooth):
            self.renderer = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.renderer = Renderer(home, model, dreambooth, self.device)
        return self.renderer

    def draw(self, rows: list[dict]) -> list[tuple[bytes, str, bool, str]]:
        """Draw rows of one book with the same characters: (PNG bytes, safety note, withheld, '') for each."""
        from storybook.registry import identity_hash

        first = rows[0]
        home, settings = Path(first["home"]), RenderSettings.model_validate_json(first["render"])
        identities = json.loads(first["identities"])
        if changed := [slug for slug, digest in identities.items() if identity_hash(home, slug) != digest]:
            raise BookError(f"The identity of {', '.join(changed)} changed while the book was drawn: make it again.")
        renderer = self.renderer_for(home, settings.model, first["dreambooth"] or None)
        expected = PictureSource(**json.loads(first["source"]))
        if renderer.source != expected:
            raise BookError(
                f"A worker draws {settings.model} as {renderer.source}, but the driver planned {expected}: give every "
                "node the same data root, models, settings and device kind (README, 'Many books on a Ray cluster')."
            )
        renderer.load_identities(json.loads(first["book_characters"]))
        characters = tuple(json.loads(first["characters"]))
        jobs = [ImageJob(str(row["prompt"]), str(row["negative_prompt"]), int(row["seed"]), characters) for row in rows]
        steps = int(first["steps"])
        pictures = renderer.draw(jobs, settings, steps)
        labels = [str(row["label"]) for row in rows]
        return [
            (png_bytes(picture) if picture else b"", note, picture is None, "")
            for picture, note in screened_pictures(renderer, jobs, labels, pictures, settings, steps)
        ]


def png_bytes(picture) -> bytes:
    """`picture` as PNG file bytes."""
    data = io.BytesIO()
    picture.save(data, format="PNG")
    return data.getvalue()


def plan_book(index: int, run: BookRun, home: Path, device: str, say: Callable[[str], None]) -> list[dict]:
    """Prepare the spec's book on the driver (story, settings) and return the rows of its missing pictures."""
    run.spec, run.folder, book = prepare_spec_book(home, run.made.spec, say)
    check_trained(home, book)
    dreambooth = dreambooth_character(home, [character.slug for character in book.characters])
    source = picture_source(home, book.render.model, dreambooth, device)
    over_limit = partial(tokens_beyond, load_tokenizer(book.render.model, home))
    run.plan = plan_pictures(home, book, source, over_limit)
    warnings = run.plan.warnings
    if needs_safety_warning(source, load_config(home).safety_checker, book.render.model):
        warnings = [*warnings, unscreened_warning(book.render.model)]
    for warning in warnings:
        say(f"{run.made.spec.name}: warning: {warning}")
    return book_rows(index, run, home, source, dreambooth)


def rows_per_call(home: Path, model: str, device: str) -> int:
    """Pictures per actor call: 4 on a GPU and for small UNets, 1 for a full-size UNet on the CPU (as a local render
    batches, see `default_batch_size`)."""
    small = unet_parameter_count(resolve_model(model, home)) < SMALL_MODEL_PARAMETERS
    return 4 if device == "cuda" or small else 1


def make_books_on_ray(
    home: Path,
    spec_paths: list[Path],
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    say: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> list[MadeBook]:
    """Make the book of each spec with its pictures drawn on Ray: the cluster at `address` (or $RAY_ADDRESS), else a
    local instance. `workers` actors (default: one per GPU, else 2), each with `gpus_per_worker` GPUs (default 1 on a
    cluster with GPUs, else 0). A failing book is reported, the others go on. `progress(done, total)` after each
    picture. Raises BookError when Ray is missing, the cluster cannot be reached or lacks the GPUs asked for."""
    ray = import_ray()
    connect(address)
    gpus = ray.cluster_resources().get("GPU", 0)
    gpus_per_worker = (1 if gpus else 0) if gpus_per_worker is None else gpus_per_worker
    if gpus_per_worker > gpus:
        raise BookError(f"--gpus-per-worker {gpus_per_worker:g}, and the Ray cluster has {gpus:g} GPUs.")
    workers = workers or (max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else 2)
    device = "cuda" if gpus_per_worker else "cpu"

    runs = [BookRun(MadeBook(spec=path)) for path in spec_paths]
    rows = []
    for index, run in enumerate(runs):
        try:
            book_rows_now = plan_book(index, run, home, device, say)
        except Exception as error:  # a bad spec, an untrained character, a model not here: this book alone fails
            run.made.error = error_text(error)
            continue
        run.waiting = run.made.drawn = len(book_rows_now)
        rows += book_rows_now
        if not run.waiting:
            finish(run, home, say)
    # A book's rows together (its pages with the same characters next to each other): each book is exported as soon
    # as its pictures are in, and a run killed half-way leaves whole books behind.
    rows.sort(key=lambda row: (row["render"], row["dreambooth"], row["book"], row["characters"]))
    say(f"{len(rows)} pictures to draw on Ray ({workers} workers, {gpus_per_worker:g} GPU each)")
    if rows:
        try:
            draw_rows(ray, rows, runs, home, workers, gpus_per_worker, device, say, progress)
        except Exception as error:  # Ray gave up (a batch that kept killing its worker): the books not done fail
            for run in runs:
                if run.waiting and run.made.error is None:
                    run.made.error = f"drawing it on Ray failed: {error_text(error)}"
    for run in runs:
        if run.waiting and run.made.error is None:
            run.made.error = "some of its pictures never came back from Ray (a worker died drawing them): make it again"
    return [run.made for run in runs]


def draw_rows(
    ray,
    rows: list[dict],
    runs: list[BookRun],
    home: Path,
    workers: int,
    gpus_per_worker: float,
    device: str,
    say: Callable[[str], None],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Draw `rows` on Ray actors, write each picture into its book as it comes back, and finish each book whose
    pictures are all in."""
    drawn = ray.data.from_items(rows).map_batches(
        PageDrawer,
        batch_size=rows_per_call(home, json.loads(rows[0]["render"])["model"], device),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker or None,
        max_task_retries=MAX_TASK_RETRIES,
    )
    for done, row in enumerate(drawn.iter_rows(), start=1):
        run = runs[int(row["book"])]
        if row["error"]:
            run.made.error = run.made.error or str(row["error"])
        elif row["withheld"]:
            run.withheld.append(str(row["image"]))
        elif run.made.error is None:
            atomic_write_bytes(run.folder / str(row["image"]), bytes(row["png"]))
        if row["note"]:
            say(f"{run.made.spec.name}: warning: {row['note']}")
        run.waiting -= 1
        if run.waiting == 0:
            finish(run, home, say)
        if progress:
            progress(done, len(rows))


def finish(run: BookRun, home: Path, say: Callable[[str], None]) -> None:
    """A book whose pictures are all back: point its pages at them and export it, or record why it failed."""
    if run.made.error is None:
        try:
            plan = run.plan
            attach(plan.targets, run.folder, plan.book.cover, plan.book.render, False, 1)
            reused = len(plan.targets) - run.made.drawn
            say(f"{run.made.spec.name}: {run.made.drawn} pictures drawn on Ray, {reused} reused")
            if run.withheld:
                raise BookError(withheld_message([t.label for t in plan.targets if t.image in run.withheld]))
            run.made.output, run.made.pages = export_spec_book(home, run.made.spec, run.spec, run.folder, say)
        except Exception as error:  # a full disk, a text that does not fit: this book alone fails
            run.made.error = error_text(error)
    run.made.seconds = time.perf_counter() - run.started


@dataclass
class BuiltIdentity:
    """The outcome of one character's identity build on Ray: its wall time, or the error that stopped it."""

    name: str
    seconds: float = 0.0
    error: str | None = None


def build_one(home: str, name: str, method: str, model: str | None, overrides: dict, options: dict) -> float:
    """A Ray task: build `name`'s identity by `method` (see `build_identity`) on the GPU Ray gave it, else the CPU;
    return its wall time."""
    from storybook.cli import quiet_libraries
    from storybook.training.personalize import build_identity

    quiet_libraries()
    started = time.perf_counter()
    build_identity(Path(home), name, method, model, overrides, show_progress=False, **options)
    return time.perf_counter() - started


def build_identities_on_ray(
    home: Path,
    names: list[str],
    method: str,
    model: str | None = None,
    overrides: dict | None = None,
    address: str | None = None,
    gpus_per_task: float | None = None,
    **options,
) -> list[BuiltIdentity]:
    """Build the identity of each character in `names` as one Ray task each (`gpus_per_task` GPUs, default 1 on a
    cluster with GPUs, else one CPU), on the cluster at `address` (or $RAY_ADDRESS), else a local instance. A failing
    build is reported, the others go on. `options` go to `build_identity` (resume, restart, export_kohya, ...)."""
    ray = import_ray()
    connect(address)
    if gpus_per_task is None:
        gpus_per_task = 1 if ray.cluster_resources().get("GPU", 0) else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(build_one)
    pending = {name: task.remote(str(home), name, method, model, overrides or {}, options) for name in names}
    built = []
    for name, reference in pending.items():
        try:
            built.append(BuiltIdentity(name, seconds=ray.get(reference)))
        except ray.exceptions.RayTaskError as error:
            built.append(BuiltIdentity(name, error=error_text(error.cause)))
        except ray.exceptions.RayError as error:  # the worker died (and Ray's retries too)
            built.append(BuiltIdentity(name, error=f"the Ray worker was lost: {error}"))
    return built
