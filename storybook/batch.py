"""Batch export: many books from spec files (YAML or JSON), each written, rendered and exported in turn.

A spec holds a story request (child, characters, theme, pages, ...) plus how to print it (profile, trim, layout,
output) and optional render settings. Its book lives in <home>/books/<spec file name>/ (-2, -3... when another spec
of that name has the folder) with a record of the spec's path and story part; making it again reuses that story (and
every picture already drawn) unless the story part changed.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from storybook.book import BOOK_FILE, Book, RenderSettings, books_root, load_book, save_book
from storybook.cluster import RaySettings
from storybook.config import configured_model
from storybook.errors import BookError, error_text
from storybook.printing.book_pdf import Layout, Profile, Trim, export_book
from storybook.render.pages import render_book, with_settings, withheld_message
from storybook.render.renderer import Renderer
from storybook.storage import atomic_write_text, slugify
from storybook.story.stage import StoryRequest, Writer, compose_story, default_writer

SPEC_COPY = "spec.json"


class BookSpec(StoryRequest):
    """One book of a batch: the story request, its writer, its render settings and how to print it."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored

    writer: Writer | None = None  # default: llm when a key or base URL is set
    render: dict = Field(default_factory=dict)  # render settings (model, steps, guidance, weights, ...)
    profile: Profile = "kdp"
    trim: Trim = "8.5x8.5"
    layout: Layout = "band"
    output: Path  # the PDF, relative to the spec file
    ray: RaySettings | None = None  # draw its pages on Ray (`ray: true`, or the settings); None: in this process

    @field_validator("ray", mode="before")
    @classmethod
    def ray_switch(cls, ray: object) -> object:
        """`ray: true` is Ray with its defaults, `ray: false` none."""
        return {} if ray is True else None if ray is False else ray

    @field_validator("render")
    @classmethod
    def known_render_settings(cls, render: dict) -> dict:
        """`render` when it names only render settings (a misspelt one is an error here too)."""
        if unknown := sorted(set(render) - set(RenderSettings.model_fields)):
            raise ValueError(f"unknown render settings {unknown}; known: {sorted(RenderSettings.model_fields)}")
        return render


@dataclass
class MadeBook:
    """The outcome of one spec: the PDF written, or the error that stopped it."""

    spec: Path
    output: Path | None = None
    pages: int = 0
    error: str | None = None
    seconds: float = 0.0
    drawn: int = 0  # pictures drawn for it (the others were drawn before)


def load_spec(path: Path) -> BookSpec:
    """Read a YAML or JSON spec file. Raises BookError naming the file and each bad field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise BookError(f"Cannot read the spec {path}: {error}") from error
    if not isinstance(data, dict):
        raise BookError(f"The spec {path} is not a mapping of fields (child, characters, theme, output, ...).")
    try:
        spec = BookSpec.model_validate(data)
    except ValidationError as error:
        problems = "\n  ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise BookError(f"The spec {path} has bad fields:\n  {problems}") from error
    return spec.model_copy(update={"output": (path.parent / spec.output).resolve()})


def story_part(spec: BookSpec) -> dict:
    """The fields of `spec` that decide the story (a change in them writes the story again)."""
    return json.loads(spec.model_dump_json(include=set(StoryRequest.model_fields) | {"writer"}))


def read_spec_copy(path: Path) -> dict:
    """The record a spec's book keeps of it ({"spec": its path, "story": its story part}); {} when there is none or it
    cannot be read."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def recorded_story(record: dict) -> dict:
    """The story part a spec's book was made from: under "story", or the whole record for books made before the
    spec's path was recorded too."""
    return record["story"] if "spec" in record else record


def spec_folder(home: Path, spec_path: Path) -> Path:
    """The book folder of the spec at `spec_path`: the one made from this very file before, else the first free one
    named after it ("trip", "trip-2", ...). A folder made from another spec, or not from a spec, is never reused; one
    made before books recorded their spec's path is taken as this spec's (as it was then)."""
    base, source, number = slugify(spec_path.stem), str(spec_path.resolve()), 1
    while True:
        folder = books_root(home) / (base if number == 1 else f"{base}-{number}")
        recorded = read_spec_copy(folder / SPEC_COPY)
        if not folder.exists() or (recorded and recorded.get("spec", source) == source):
            return folder
        number += 1


def prepare_spec_book(home: Path, spec_path: Path, say: Callable[[str], None]) -> tuple[BookSpec, Path, Book]:
    """Read the spec, write its story (or reuse the one made from it before) and set the book's render settings to
    the spec's over the data root's model; return the spec, the book's folder and the book."""
    spec = load_spec(spec_path)
    folder = spec_folder(home, spec_path)
    spec_copy = folder / SPEC_COPY
    record = {"spec": str(spec_path.resolve()), "story": story_part(spec)}
    if (folder / BOOK_FILE).exists() and recorded_story(read_spec_copy(spec_copy)) == record["story"]:
        say(f"{spec_path.name}: reusing the story in {folder}")
        book = load_book(folder)
        atomic_write_text(spec_copy, json.dumps(record, indent=2))  # a book made before paths were recorded: now
    else:
        writer = spec.writer or default_writer()
        say(f"{spec_path.name}: writing the story ({writer} writer)")
        book = compose_story(home, spec, writer)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(spec_copy, json.dumps(record, indent=2))  # first: book.json alone means "not a spec's"
    # The spec's settings alone over the data root's model, none left over from an earlier run
    fresh_settings = book.model_copy(update={"render": RenderSettings(model=configured_model(home))})
    book = with_settings(fresh_settings, spec.render)
    save_book(folder, book)
    return spec, folder, book


def export_spec_book(
    home: Path, spec_path: Path, spec: BookSpec, folder: Path, say: Callable[[str], None]
) -> tuple[Path, int]:
    """Export the drawn book in `folder` as the spec (read from `spec_path`) asks; return the PDF and its page
    count."""
    pages = export_book(folder, spec.output, spec.profile, spec.trim, spec.layout, home=home)
    say(f"{spec_path.name}: {pages} pages written to {spec.output}")
    return spec.output, pages


def make_one(
    home: Path,
    spec_path: Path,
    renderer: Renderer | None,
    say: Callable[[str], None],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[MadeBook, Renderer]:
    """Write (or reuse), render and export the book of one spec; return what was made and the renderer.
    `progress(done, total)` as its pictures are drawn."""
    spec, folder, _ = prepare_spec_book(home, spec_path, say)
    report, renderer = render_book(home, folder, renderer=renderer, progress=progress)
    say(f"{spec_path.name}: {report.drawn} pictures drawn, {report.reused} reused")
    for warning in report.warnings:
        say(f"{spec_path.name}: warning: {warning}")
    if report.withheld:
        raise BookError(withheld_message(report.withheld))
    output, pages = export_spec_book(home, spec_path, spec, folder, say)
    return MadeBook(spec_path, output, pages, drawn=report.drawn), renderer


def make_books(
    home: Path,
    spec_paths: list[Path],
    say: Callable[[str], None] = print,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[MadeBook]:
    """Make the book of each spec in turn, loading the model once; a failing book is reported, the others go on.
    `progress(book, done, total)` as each book's pictures are drawn (`book`: its index in `spec_paths`)."""
    made, renderer = [], None
    for index, spec_path in enumerate(spec_paths):
        start = time.perf_counter()
        result = MadeBook(spec=spec_path)
        book_progress = partial(progress, index) if progress else None
        try:
            result, renderer = make_one(home, spec_path, renderer, say, book_progress)
        except Exception as error:  # a bug in one book must not cost the others; the message says where
            result.error = error_text(error)
        result.seconds = time.perf_counter() - start
        made.append(result)
    return made
