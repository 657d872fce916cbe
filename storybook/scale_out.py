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
several machines it must be shared (docs/batch.md, "Many books on a Ray cluster"). When the user says the whole
data root is shared (`shared`), the workers write the pictures into the books themselves and only their names
travel back.
"""

import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import groupby
from pathlib import Path

from storybook.batch import BookSpec, MadeBook, export_spec_book, prepare_spec_book
from storybook.book import RenderSettings, book_file
from storybook.cluster import RaySettings, check_reachable
from storybook.config import load_config
from storybook.errors import BookError, error_text
from storybook.identities.training_config import SMALL_MODEL_PARAMETERS
from storybook.models import load_tokenizer, resolve_model, unet_parameter_count
from storybook.quiet import quiet_libraries, quiet_stderr
from storybook.registry import identity_hash
from storybook.render.pages import (
    IMAGES_DIR,
    PicturePlan,
    attach,
    check_trained,
    needs_safety_warning,
    plan_pictures,
    screened_pictures,
    unscreened_warning,
    withheld_message,
)
from storybook.render.renderer import (
    ImageJob,
    PictureSource,
    Renderer,
    dreambooth_character,
    picture_source,
    tokens_beyond,
)
from storybook.storage import atomic_write_bytes, contained
from storybook.training.personalize import build_identity

RAY_HINT = "pip install 'storybook[ray]'"
MAX_TASK_RETRIES = 3  # a batch whose worker dies is drawn again this many times (Ray Data's default: for ever)


def import_ray():
    """The ray module. Raises BookError saying how to install it when it is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data draws the pages)
    except ImportError:
        raise BookError(f"Ray is not installed here (--ray and a spec's `ray:` need it): {RAY_HINT}.") from None
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
    check_reachable(address)
    try:
        with quiet_stderr():  # a cluster that answers but not as Ray: Ray's retries, as its C++ core logs them
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
    shared: bool = False  # the workers write its pictures into the shared data root
    withheld: list[str] = field(default_factory=list)  # image paths the safety checker withheld
    started: float = field(default_factory=time.perf_counter)


def book_rows(
    index: int, run: BookRun, home: Path, source: PictureSource, dreambooth: str | None, shared: bool = False
) -> list[dict]:
    """The rows of the book's missing pictures: each with everything its picture depends on and where it goes
    (`shared`: the worker writes it into the book folder itself)."""
    plan = run.plan
    common = {
        "book": index,
        "home": str(home),
        "folder": str(run.folder),
        "shared": shared,
        "render": plan.book.render.model_dump_json(),
        "steps": plan.steps,
        "book_characters": json.dumps(sorted(plan.identities)),
        "identities": json.dumps(plan.identities),
        "dreambooth": dreambooth or "",
        "source": json.dumps(asdict(source)),
    }
    return [
        common
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

        quiet_libraries()
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.renderer = None

    def __call__(self, batch: dict) -> dict:
        """Draw the batch's rows (one pipeline call per run of rows sharing a book and characters); return, per row,
        its book, image path, PNG bytes (none when the worker wrote the picture into the shared book itself), safety
        note, whether it was withheld, and the error that stopped it."""
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        out = {"book": [], "image": [], "png": [], "note": [], "withheld": [], "error": []}
        for _, group in groupby(rows, key=lambda row: (row["book"], row["characters"])):
            group = list(group)
            try:
                results = self.draw(group)
            except Exception as error:  # this book's pages fail, with what stopped them; the others go on
                results = [(b"", "", False, error_text(error))] * len(group)
            for row, (png, note, withheld, error) in zip(group, results, strict=True):
                if png and row["shared"]:
                    png, error = b"", write_shared(Path(str(row["folder"])), str(row["image"]), png)
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
        if self.renderer is None or not self.renderer.fits(model, dreambooth):
            if self.renderer is not None:
                self.renderer.release()
            self.renderer = Renderer(home, model, dreambooth, self.device)
        return self.renderer

    def draw(self, rows: list[dict]) -> list[tuple[bytes, str, bool, str]]:
        """Draw rows of one book with the same characters: (PNG bytes, safety note, withheld, '') for each."""
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
                "node the same data root, models, settings and device kind (docs/batch.md, 'Many books on a Ray "
                "cluster')."
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


def write_shared(folder: Path, image: str, png: bytes) -> str:
    """Write a picture into its book `folder` on the shared data root, atomically, into the images folder the driver
    made (never one of the worker's own); '' when written, else what went wrong."""
    path = contained(folder, image)
    if path is None:
        return f"{image} leads outside the book {folder}; it was not written"
    if not path.parent.is_dir():
        return f"a worker does not see {path.parent}: is the data root shared, at the same path on every node?"
    try:
        atomic_write_bytes(path, png)
    except OSError as error:
        return f"a worker could not write {path} ({error.strerror or error}): is the data root shared and writable?"
    return ""


def seen_on_driver(path: Path, tries: int = 5) -> bool:
    """Whether the driver sees (and can read) the picture a worker wrote at `path` on the shared data root. A network
    file system can answer from a cache made before the file existed, so the folder is listed again (which
    refreshes it) and looked at a few times, a second apart."""
    for attempt in range(tries):
        if attempt:
            time.sleep(1)
        with suppress(OSError):
            if path.name in os.listdir(path.parent) and os.access(path, os.R_OK):
                return True
    return False


def png_bytes(picture) -> bytes:
    """`picture` as PNG file bytes."""
    data = io.BytesIO()
    picture.save(data, format="PNG")
    return data.getvalue()


def plan_book(
    index: int, run: BookRun, home: Path, device: str, shared: bool, say: Callable[[str], None]
) -> list[dict]:
    """Prepare the spec's book on the driver (story, settings) and return the rows of its missing pictures."""
    run.spec, run.folder, book = prepare_spec_book(home, run.made.spec, say)
    book_file(run.folder, IMAGES_DIR)  # pictures are written there: a symlink out of a book someone sent is refused
    (run.folder / IMAGES_DIR).mkdir(exist_ok=True)  # before the workers write into it (shared) or the driver does
    run.shared = shared
    check_trained(home, book)
    dreambooth = dreambooth_character(home, [character.slug for character in book.characters])
    source = picture_source(home, book.render.model, dreambooth, device)
    over_limit = partial(tokens_beyond, load_tokenizer(book.render.model, home))
    run.plan = plan_pictures(home, book, source, over_limit)
    book_warnings = run.plan.warnings
    if needs_safety_warning(source, load_config(home).safety_checker, book.render.model):
        book_warnings = [*book_warnings, unscreened_warning(book.render.model)]
    for warning in book_warnings:
        say(f"{run.made.spec.name}: warning: {warning}")
    return book_rows(index, run, home, source, dreambooth, shared)


def rows_per_call(home: Path, model: str, device: str) -> int:
    """Pictures per actor call: 4 on a GPU and for small UNets, 1 for a full-size UNet on the CPU (as a local render
    batches, see `default_batch_size`)."""
    small = unet_parameter_count(resolve_model(model, home)) < SMALL_MODEL_PARAMETERS
    return 4 if device == "cuda" or small else 1


def make_books_on_ray(
    home: Path,
    spec_paths: list[Path],
    settings: RaySettings | None = None,
    say: Callable[[str], None] = print,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[MadeBook]:
    """Make the book of each spec with its pictures drawn on Ray as `settings` say: the cluster at their address (or
    $RAY_ADDRESS), else a local instance; their number of actors (default: one per GPU, else 2), each with their GPUs
    (default 1 on a cluster with GPUs, else 0). A failing book is reported, the others go on. `progress(book, done,
    total)` for each book (its index in `spec_paths`) when its pictures are planned and as each comes back. Raises
    BookError when Ray is missing, the cluster cannot be reached or lacks the GPUs asked for."""
    settings = settings or RaySettings()
    ray = import_ray()
    connect(settings.address)
    gpus = ray.cluster_resources().get("GPU", 0)
    gpus_per_worker = (1 if gpus else 0) if settings.gpus_per_worker is None else settings.gpus_per_worker
    if gpus_per_worker > gpus:
        raise BookError(
            f"{gpus_per_worker:g} GPUs per worker asked for (--gpus-per-worker or a spec's `ray:`), and the Ray "
            f"cluster has {gpus:g}."
        )
    workers = settings.workers or (max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else 2)
    device = "cuda" if gpus_per_worker else "cpu"

    runs = [BookRun(MadeBook(spec=path)) for path in spec_paths]
    rows = []
    for index, run in enumerate(runs):
        try:
            book_rows_now = plan_book(index, run, home, device, settings.shared, say)
        except Exception as error:  # a bad spec, an untrained character, a model not here: this book alone fails
            run.made.error = error_text(error)
            continue
        run.waiting = run.made.drawn = len(book_rows_now)
        rows += book_rows_now
        if progress and run.waiting:
            progress(index, 0, run.waiting)
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
    progress: Callable[[int, int, int], None] | None,
) -> None:
    """Draw `rows` on Ray actors, write each picture into its book as it comes back (or check that the worker wrote
    it into the shared data root), and finish each book whose pictures are all in."""
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for retries yet, only the deprecated kwargs
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        drawn = ray.data.from_items(rows).map_batches(
            PageDrawer,
            batch_size=rows_per_call(home, json.loads(rows[0]["render"])["model"], device),
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=gpus_per_worker or None,
            max_task_retries=MAX_TASK_RETRIES,
        )
    for row in drawn.iter_rows():
        index = int(row["book"])
        run, path = runs[index], runs[index].folder / str(row["image"])
        if row["error"]:
            run.made.error = run.made.error or str(row["error"])
        elif row["withheld"]:
            run.withheld.append(str(row["image"]))
        elif len(row["png"]):
            if run.made.error is None:
                try:
                    atomic_write_bytes(path, bytes(row["png"]))
                except OSError as error:  # a full disk: this book fails, the others go on
                    run.made.error = f"cannot write {path}: {error.strerror or error}"
        elif run.made.error is None and not seen_on_driver(path):  # written into the worker's own copy
            run.made.error = (
                f"a worker wrote {path}, and this machine does not see it (or cannot read it): the data root is not "
                "shared, or the workers run as another user (make it again without the shared setting)"
            )
        if row["note"]:
            say(f"{run.made.spec.name}: warning: {row['note']}")
        run.waiting -= 1
        if progress:
            progress(index, run.made.drawn - run.waiting, run.made.drawn)
        if run.waiting == 0:
            finish(run, home, say)


def finish(run: BookRun, home: Path, say: Callable[[str], None]) -> None:
    """A book whose pictures are all back: point its pages at them and export it, or record why it failed."""
    if run.made.error is None:
        try:
            plan = run.plan
            attach(plan.targets, run.folder, plan.book.cover, plan.book.render, False, 1)
            reused = len(plan.targets) - run.made.drawn
            written = " (written by the workers into the shared data root)" if run.shared else ""
            say(f"{run.made.spec.name}: {run.made.drawn} pictures drawn on Ray{written}, {reused} reused")
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
