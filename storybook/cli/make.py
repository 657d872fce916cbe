"""Drawing and printing books: `storybook render`, `choose`, `export`, `make` (many books, here or on Ray) and
`demo` (all of it offline)."""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from storybook import registry
from storybook.book import BOOK_FILE, Scheduler, book_dir, load_book, save_book
from storybook.cli.shell import RayAddressOption, app, console, progress_bar, run, say_warning, state
from storybook.cli.story import edit_book
from storybook.config import X4_UPSCALER
from storybook.errors import BookError, describe_problems
from storybook.printing.book_pdf import Layout, Profile, Trim, export_book
from storybook.quiet import quiet_libraries
from storybook.render.print_pictures import Upscaler
from storybook.storage import MINI_MODEL
from storybook.story import book_edits
from storybook.story.stage import StoryRequest, write_story
from storybook.text import shown


def render_and_report(folder: Path, **options) -> None:
    """Render the book in `folder` with a progress bar, then say what was drawn and warn about long prompts; pictures
    the safety checker withheld end it with an error."""
    from storybook.render.pages import render_book, withheld_message

    try:
        with progress_bar("rendering") as progress:
            report, _ = render_book(state["home"], folder, progress=progress, **options)
    except KeyboardInterrupt:
        console.print("Stopped. Every finished picture is saved: render again to go on.")
        raise typer.Exit(130) from None
    console.print(f"{report.drawn} pictures drawn, {report.reused} already drawn: {folder / BOOK_FILE}")
    for warning in report.warnings:
        say_warning(warning)
    if report.withheld:
        raise BookError(withheld_message(report.withheld))


@app.command()
def render(
    book: Annotated[str, typer.Argument(help="A book name under books/, or a book folder.")],
    model: Annotated[str | None, typer.Option(help="Base model: 'tiny', a local diffusers folder or a hub id.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (0 for SD-Turbo).")] = None,
    width: Annotated[int | None, typer.Option(help="Picture width in pixels (default: the model's own size).")] = None,
    height: Annotated[int | None, typer.Option(help="Picture height in pixels.")] = None,
    native_size: Annotated[
        bool, typer.Option("--native-size", help="Back to the model's own size (forget --width and --height).")
    ] = False,
    scheduler: Annotated[Scheduler | None, typer.Option(help="Sampler (default dpm++: DPM-Solver++ Karras).")] = None,
    weight: Annotated[
        list[str] | None, typer.Option(help="A character's identity weight, NAME=0.8 (default 1.0); repeatable.")
    ] = None,
    image_scale: Annotated[
        list[str] | None,
        typer.Option(help="A character's image-prompt (IP-Adapter) strength, NAME=0.8; repeatable."),
    ] = None,
    preview: Annotated[bool, typer.Option(help="Fast low-step drafts (their own files; export uses finals).")] = False,
    candidates: Annotated[int, typer.Option(min=1, max=8, help="Draw N seeds per page to choose from.")] = 1,
    page: Annotated[list[int] | None, typer.Option(help="Only this page (0: the cover); repeatable.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Pictures per pipeline call.")] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda, mps or cpu (default: the config's, else the best available).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="fp32, fp16 or bf16 (default: the config's, else fp16 on GPUs).")
    ] = None,
) -> None:
    """Draw the book's pictures; drawing again redraws only what changed. Settings given are kept in book.json once
    a picture is drawn with them."""

    def draw():
        from storybook.render.pages import with_settings

        folder = book_dir(state["home"], book)
        given = {"model": model, "steps": steps, "guidance": guidance, "width": width, "height": height}
        overrides = {key: value for key, value in given.items() if value is not None}
        if native_size:
            if width is not None or height is not None:
                raise BookError("--native-size forgets --width and --height: give one or the other.")
            overrides |= {"width": None, "height": None}
        if scheduler:
            overrides["scheduler"] = scheduler
        if weight:
            overrides["weights"] = dict(parse_weight(item, "--weight") for item in weight)
        if image_scale:
            overrides["image_scales"] = dict(parse_weight(item, "--image-scale") for item in image_scale)
        with_settings(load_book(folder), overrides)  # a bad value is refused before any work
        render_and_report(
            folder,
            settings=overrides,
            preview=preview,
            candidates=candidates,
            only=page,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
        )

    run(draw, loads_models=True)


def parse_weight(item: str, option: str) -> tuple[str, float]:
    """'Mia=0.8' -> ('Mia', 0.8). Raises BookError, naming `option`, for anything else."""
    name, _, value = item.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise BookError(f"{option} takes NAME=NUMBER, e.g. Mia=0.8, not {item!r}.")
    return name.strip(), number


@app.command()
def choose(
    book: str,
    page: Annotated[int, typer.Argument(help="The page (0: the cover).")],
    candidate: Annotated[int, typer.Argument(help="The candidate's number, from 1.")],
) -> None:
    """Keep one of the candidates drawn by `render --candidates N` as the page's picture."""
    edit_book(book, lambda story: book_edits.choose_candidate(story, page, candidate))


@app.command()
def export(
    book: Annotated[str, typer.Argument(help="A book name under books/, or a book folder.")],
    out: Annotated[Path, typer.Option(help="The PDF to write.")] = Path("book.pdf"),
    profile: Annotated[Profile, typer.Option(help="kdp, lulu (bleed for print) or screen (no bleed).")] = "kdp",
    trim: Annotated[Trim, typer.Option(help="Trim size in inches.")] = "8.5x8.5",
    layout: Annotated[Layout, typer.Option(help="Text on a soft band over the picture, or below it.")] = "band",
    upscaler: Annotated[
        Upscaler, typer.Option(help="auto: the x4 upscaler on a GPU when its weights are here, else lanczos.")
    ] = "auto",
    upscaler_model: Annotated[
        str | None,
        typer.Option(
            help=f"The x4 upscaler: hub id or local folder (default: the data root's config, else {X4_UPSCALER})."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Where the x4 upscaler runs (default: the config's, else the best).")
    ] = None,
    cover: Annotated[
        bool,
        typer.Option("--cover/--no-cover", help="--no-cover: the interior only (KDP and Lulu take the cover apart)."),
    ] = True,
) -> None:
    """Write the print-ready PDF: cover, dedication, pages, The End; even page count; fonts embedded; 300 DPI."""

    def write():
        folder = book_dir(state["home"], book)
        with progress_bar("exporting") as progress:
            pages = export_book(
                folder, out, profile, trim, layout, upscaler, upscaler_model, device, progress, cover, state["home"]
            )
        console.print(f"Wrote {out} ({pages} pages, {trim} in, {profile})")

    run(write, loads_models=True)


@contextmanager
def books_progress(specs: list[Path]) -> Iterator[Callable[[int, int, int], None]]:
    """Progress of many books as a `progress(book, done, total)` callback (`book`: its index in `specs`): pictures
    done / total over all books, and a bar per book being drawn, which gives way to the book's line when it is
    finished."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(
        TextColumn("{task.description}", markup=False),  # spec file names are the user's text
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    tasks, counts = {}, {}

    def update(book: int, done: int, total: int) -> None:
        if not tasks:
            bars.start()
            tasks["all"] = bars.add_task("all books", total=0)
        if book not in tasks:
            tasks[book] = bars.add_task(shown(specs[book].name), total=total)
        counts[book] = (done, total)
        bars.update(tasks[book], completed=done, total=total, visible=done < total)
        all_done, all_total = (sum(column) for column in zip(*counts.values(), strict=True))
        bars.update(tasks["all"], completed=all_done, total=all_total)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


@app.command()
def make(
    specs: Annotated[list[Path], typer.Argument(help="Spec files (YAML or JSON), one book each.")],
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Draw every book's pages on Ray: the cluster at --ray-address (or $RAY_ADDRESS), else a local "
            "instance (pip install 'storybook[ray]'). Without it, the specs that say `ray:` are drawn on Ray.",
        ),
    ] = False,
    ray_address: RayAddressOption = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="--ray: actors drawing pages (default: one per GPU, else 2).")
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(min=0.0, help="--ray: GPUs each actor takes (default 1 when the cluster has GPUs).")
    ] = None,
    shared_root: Annotated[
        bool,
        typer.Option(
            "--shared-root",
            help="--ray: the data root is shared by every node at the same path; workers write the pictures into "
            "the books themselves.",
        ),
    ] = False,
) -> None:
    """Make many books: write, render and export the book of each spec; a failing book does not stop the others."""
    from storybook.cluster import RaySettings

    if not ray and (ray_address or workers or gpus_per_worker is not None or shared_root):
        raise typer.BadParameter("--ray-address, --workers, --gpus-per-worker and --shared-root go with --ray.")
    try:
        settings = (
            RaySettings(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker, shared=shared_root)
            if ray
            else None
        )
    except ValidationError as error:
        raise typer.BadParameter(describe_problems(error)) from None
    if not state["debug"]:
        quiet_libraries()  # before storybook.batch imports the model libraries
    from storybook.dispatch import make_specs

    def say(line: str) -> None:
        """Print a line of the run (it names spec files and quotes writers): hidden characters escaped."""
        console.print(shown(line))

    try:
        with books_progress(specs) as progress:
            made = run(lambda: make_specs(state["home"], specs, settings, say=say, progress=progress))
    except KeyboardInterrupt:
        console.print("Stopped. Every finished picture is saved: make the books again to go on.")
        raise typer.Exit(130) from None
    table = Table("spec", "result", "pages", "seconds")
    for result in made:
        if result.error is None:
            outcome = Text(shown(str(result.output)), "green")
        else:
            outcome = Text(f"failed: {shown(result.error)}", "red")
        table.add_row(shown(result.spec.name), outcome, str(result.pages or "-"), f"{result.seconds:.0f}")
    console.print(table)
    failed = sum(result.error is not None for result in made)
    if failed:
        console.print(Text(f"{failed} of {len(made)} books failed.", "red"))
        raise typer.Exit(1)


@app.command()
def demo() -> None:
    """Offline demo on the CPU: register a toddler of the lab's world, build its identity on storybook-mini, write,
    render, export."""

    def run_demo():
        from storybook.lab.world import DEMO_TODDLER, write_photos
        from storybook.models import load_tokenizer
        from storybook.render.pages import with_settings
        from storybook.training.personalize import build_identity, recommended_method

        home = state["home"]
        console.print(f"Data root: {home}")
        tokenizer = load_tokenizer(MINI_MODEL, home)
        if (registry.character_dir(home, "Mia") / "character.json").exists():
            registry.remove_character(home, "Mia")
        photos = write_photos(home / "demo-photos", DEMO_TODDLER)
        character = registry.add_character(home, "Mia", photos, tokenizer, description=DEMO_TODDLER.description)
        console.print(f"Registered Mia (token '{character.token}') from {len(photos)} sample photos")
        method = recommended_method(MINI_MODEL)
        metadata, image_prompt = build_identity(home, "Mia", method, MINI_MODEL)
        seconds = (metadata.wall_time_s if metadata else 0) + (image_prompt.wall_time_s if image_prompt else 0)
        console.print(
            f"Built Mia's {method} identity on {MINI_MODEL} in {seconds:.1f} s: {registry.identity_folder(home, 'Mia')}"
        )
        request = StoryRequest(child="Mia", theme="a day at the beach", pages=12, pronouns="she", seed=1)
        book_folder, book = write_story(home, request, "offline")
        save_book(book_folder, with_settings(book, {"model": MINI_MODEL}))
        console.print(f"Wrote '{book.title}' ({len(book.pages)} pages, offline writer): {book_folder / BOOK_FILE}")
        render_and_report(book_folder)
        pdf = home / "mia-at-the-beach.pdf"
        with progress_bar("exporting") as progress:
            pages = export_book(book_folder, pdf, progress=progress, home=home)
        console.print(Text.assemble(("Your book: ", "bold"), f"{pdf} ({pages} pages, 8.5x8.5 in with KDP bleed)"))

    run(run_demo, loads_models=True)
