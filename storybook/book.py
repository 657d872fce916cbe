"""The book project: <home>/books/<slug>/book.json, a versioned record of a story, its pages and their pictures.

Every write is atomic (temp file + rename). A damaged book.json, or one written by a newer storybook, is reported and
left untouched: nothing here writes over a file it could not read.
"""

import itertools
import json
import re
import warnings
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from storybook.errors import BookError, InvalidNameError, describe_problems
from storybook.storage import InsidePath, atomic_write_text, contained, default_model, slugify
from storybook.text import plain, plain_lines

BOOK_VERSION = 1
BOOK_FILE = "book.json"
MIN_PAGES, MAX_PAGES = 8, 24  # board books run 8-24 pages
# What fits where it is printed: the title on the cover band, the dedication on its page (checked when written).
MAX_TITLE, MAX_DEDICATION, MAX_NAME, MAX_THEME, MAX_WORDS_PER_PAGE = 80, 300, 40, 200, 80
MAX_TEXT = 5000  # characters of any one text of book.json: far beyond what prints, short enough to show at once
Line = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(plain)]  # a book's texts: bounded, plain text
Lines = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(plain_lines)]  # (storybook/text.py); line breaks

Pronouns = Literal["she", "he", "they"]

# name, youngest and oldest age in years, words a page may hold
AGE_BANDS = [("baby", 0, 1, 15), ("toddler", 2, 3, 20), ("preschool", 4, 6, 40)]


def age_band(age: int) -> tuple[str, int]:
    """The band of a child aged `age` and its default words-per-page limit. Raises BookError outside 0-6."""
    for name, youngest, oldest, max_words in AGE_BANDS:
        if youngest <= age <= oldest:
            return name, max_words
    raise BookError(f"Age {age} is outside the picture-book range storybook writes for (0 to 6 years).")


class BookCharacter(BaseModel):
    """A registered character as the book draws it: its registry slug plus the words bound to its identity."""

    slug: Line  # reference to <home>/characters/<slug>/
    name: Line  # what the story calls it (the child's name for the hero)
    token: Line
    class_noun: Line
    appearance: Line = ""  # the parent's description, repeated unchanged on every page it appears on

    @property
    def phrase(self) -> str:
        """The words that call up the trained identity, e.g. 'zorv toddler'."""
        return f"{self.token} {self.class_noun}"


Scheduler = Literal["dpm++", "euler-a", "euler", "ddim", "model"]


class RenderSettings(BaseModel):
    """How the pictures are drawn. Kept in book.json, so rendering again draws only what changed. Every number is
    finite and in range, and an unknown field is an error, so nothing a user types can make book.json unreadable."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(default_factory=default_model, min_length=1)  # 'storybook-mini', 'tiny', a folder or hub id
    steps: int = Field(25, ge=1, le=200)
    preview_steps: int = Field(8, ge=1, le=200)  # `render --preview` drafts
    guidance: float = Field(7.5, ge=0, le=30)
    width: int | None = Field(None, ge=32, le=2048, multiple_of=8)  # pixels; None: the model's native size
    height: int | None = Field(None, ge=32, le=2048, multiple_of=8)
    scheduler: Scheduler = "dpm++"  # DPM-Solver++ (Karras sigmas); 'model' keeps the model's own
    # character slug -> identity weight (default 1.0; negative pushes away, as in A1111)
    weights: dict[str, Annotated[float, Field(ge=-4, le=4)]] = Field(default_factory=dict)
    # character slug -> IP-Adapter scale of its image prompt (default: the scale saved with the image prompt)
    image_scales: dict[str, Annotated[float, Field(ge=0, le=4)]] = Field(default_factory=dict)


class Candidate(BaseModel):
    """One of several pictures drawn for a page with other seeds (`render --candidates N`)."""

    seed: int
    image: InsidePath


class Page(BaseModel):
    """One story page: the text printed on it and how its picture is drawn."""

    text: Lines
    scene: Line  # what the picture shows, as the writer (or the parent) wrote it
    prompt: Line  # the scene prompt: the scene, each present character's phrase and appearance, the book's style
    negative_prompt: Line
    characters: list[Line]  # slugs of the characters drawn on this page
    seed: int
    image: InsidePath | None = None  # the rendered picture, relative to the book folder
    identities: dict[str, str] = Field(default_factory=dict)  # character slug -> identity hash the picture drew
    preview: InsidePath | None = None  # a fast low-step draft of it
    candidates: list[Candidate] = Field(default_factory=list)  # drawn with several seeds, to choose from


class Book(BaseModel):
    """book.json: everything needed to render and print one book again, exactly."""

    version: int = BOOK_VERSION
    title: Line
    dedication: Lines
    child: Line
    pronouns: Pronouns = "they"
    theme: Line
    age: int = Field(ge=0, le=6)
    age_band: Line
    max_words_per_page: int = Field(gt=0)
    style: Line
    writer: Line  # "offline" or "llm:<model>"
    seed: int
    characters: list[BookCharacter]
    pages: list[Page]
    cover: Page | None = None  # the cover picture; its text is the title
    render: RenderSettings = Field(default_factory=RenderSettings)

    @field_validator("render", mode="wrap")
    @classmethod
    def older_render_settings(cls, render: object, handler: ValidatorFunctionWrapHandler) -> RenderSettings:
        """Render settings as saved; ones an older storybook accepted out of range (a size no model draws) go back
        to their defaults, with a warning, so that such a book still opens."""
        try:
            return handler(render)
        except ValidationError as error:
            if not isinstance(render, dict):
                raise
            dropped = sorted({str(e["loc"][0]) for e in error.errors() if e["loc"]})
            message = f"The book's render settings {', '.join(dropped)} were out of range; their defaults apply."
            warnings.warn(message, stacklevel=1)  # attributed to storybook, which the CLI shows as a Warning line
            return handler({key: value for key, value in render.items() if key not in dropped})

    def character(self, slug: str) -> BookCharacter:
        """The book's character with registry slug `slug`. Raises BookError when the book has none."""
        for character in self.characters:
            if character.slug == slug:
                return character
        known = ", ".join(c.slug for c in self.characters)
        raise BookError(f"The book has no character {slug!r} (it has: {known}).")


def book_file(folder: Path, relative: str) -> Path:
    """The file `relative` (a picture path from book.json) of the book in `folder`. Raises BookError when it leads
    outside the folder (through a symlink): a book someone sends must not read other files of this machine."""
    path = contained(folder, relative)
    if path is None:
        raise BookError(f"{folder / BOOK_FILE} points at {relative}, which leads outside the book; it was not read.")
    return path


def books_root(home: Path) -> Path:
    """The folder holding every book of the data root `home`."""
    return home / "books"


def list_books(home: Path) -> list[Path]:
    """The folders of every book under <home>/books/, sorted by name (damaged ones too: loading them tells)."""
    return sorted(record.parent for record in books_root(home).glob(f"*/{BOOK_FILE}"))


def book_dir(home: Path, book: str | Path) -> Path:
    """The folder of `book`: a book folder or book.json path, else a book name looked up under <home>/books/."""
    path = Path(book)
    if path.name == BOOK_FILE and path.is_file():
        return path.parent
    if (path / BOOK_FILE).is_file():
        return path
    return books_root(home) / slugify(str(book))


def load_book(folder: Path) -> Book:
    """Read <folder>/book.json. Raises BookError when it is missing, damaged or from a newer storybook."""
    record = folder / BOOK_FILE
    if not record.is_file():
        raise BookError(f"No book at {folder} (no {BOOK_FILE}). Write one with `storybook story write`.")
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BookError(
            f"{record} is damaged ({error}); it was left as it is. Restore it or write the story again."
        ) from error
    if not isinstance(data, dict):
        raise BookError(f"{record} is damaged (not a JSON object); it was left as it is.")
    if not isinstance(data.get("version"), int):
        raise BookError(f"{record} is damaged (no version number); it was left as it is.")
    if data["version"] > BOOK_VERSION:
        raise BookError(f"{record} was written by a newer storybook (version {data['version']}); upgrade storybook.")
    try:
        return Book.model_validate(data)
    except ValidationError as error:
        raise BookError(f"{record} is damaged ({describe_problems(error)}); it was left as it is.") from None


def save_book(folder: Path, book: Book) -> Path:
    """Write `book` to <folder>/book.json atomically and return that path."""
    record = folder / BOOK_FILE
    atomic_write_text(record, book.model_dump_json(indent=2) + "\n")
    return record


def folder_name(book: Book) -> str:
    """A folder name for `book` from its title ("Day/Night... Mia" -> "day-night-mia"), else from the child's name."""
    for name in (re.sub(r"[/\\.]+", " ", book.title), book.child):
        try:
            return slugify(name)
        except InvalidNameError:
            continue
    return "book"


def create_book(home: Path, book: Book) -> Path:
    """Save a new book under <home>/books/, in a folder named after its title (-2, -3... when taken); return it."""
    base = folder_name(book)
    books_root(home).mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        folder = books_root(home) / (base if number == 1 else f"{base}-{number}")
        try:
            folder.mkdir()  # fails when taken, even by a concurrent writer
            break
        except FileExistsError:
            continue
    try:
        save_book(folder, book)
    except BaseException:
        folder.rmdir()
        raise
    return folder
