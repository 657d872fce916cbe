"""Editing a book: change a page's text, scene or prompt, add, remove and reorder pages (CLI and app).

Each edit returns a new Book and leaves the one it was given alone; an edit that would break the story's rules (see
story_checks; a book keeps 8 to 24 pages) raises BookError saying what is wrong, so a bad edit never reaches
book.json. Pages are numbered from 1.
A page whose picture no longer matches its words (new scene, prompt or seed) loses its picture, draft and candidates.
"""

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from storybook.book import MAX_PAGES, MIN_PAGES, Book, Page
from storybook.errors import BookError, describe_problems
from storybook.story.checks import DEFAULT_NEGATIVE_PROMPT, check_front, check_page, compose_prompt, mentions


def page_index(book: Book, number: int) -> int:
    """The list index of page `number` (1-based). Raises BookError when the book has no such page."""
    if not 1 <= number <= len(book.pages):
        raise BookError(f"There is no page {number}: the book has pages 1 to {len(book.pages)}.")
    return number - 1


def characters_in(book: Book, scene: str) -> list[str]:
    """The slugs of the book's characters whose phrase `scene` names."""
    return [c.slug for c in book.characters if mentions(scene, c.phrase)]


def scene_prompt(book: Book, scene: str, slugs: list[str]) -> str:
    """The scene prompt of `scene` drawing the characters `slugs` in `book`'s style."""
    return compose_prompt(scene, [book.character(slug) for slug in slugs], book.style)


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], data: dict) -> Model:
    """`data` as a `model` (plain texts of bounded length, see storybook/book.py); raises BookError saying what is
    wrong otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise BookError(f"The edit was not saved: {describe_problems(error)}.") from None


def checked(book: Book, fields: dict, number: int) -> Page:
    """The page of `fields` if it is valid and follows the rules of `book`; raises BookError listing its problems
    otherwise."""
    page = validated(Page, fields)
    if problems := check_page(book, page, f"page {number}"):
        raise BookError("The edit was not saved:\n  " + "\n  ".join(problems))
    return page


def edit_page(
    book: Book,
    number: int,
    text: str | None = None,
    scene: str | None = None,
    characters: list[str] | None = None,
    prompt: str | None = None,
) -> Book:
    """Change page `number`: its text, its scene (and so its prompt; the characters drawn default to those the scene
    names), the characters drawn, or the whole prompt (for experts; it must still follow the rules).
    """
    index = page_index(book, number)
    page = book.pages[index]
    changes: dict[str, object] = {}
    if text is not None:
        changes["text"] = text.strip()
    if scene is not None or characters is not None:
        new_scene = page.scene if scene is None else scene.strip()
        slugs = characters if characters is not None else characters_in(book, new_scene)
        changes |= {"scene": new_scene, "characters": slugs, "prompt": scene_prompt(book, new_scene, slugs)}
    if prompt is not None:
        changes["prompt"] = prompt.strip()
    if changes.keys() & {"scene", "characters", "prompt"}:
        changes |= {"image": None, "preview": None, "candidates": []}
    pages = list(book.pages)
    pages[index] = checked(book, page.model_dump() | changes, number)
    return book.model_copy(update={"pages": pages})


def edit_front(book: Book, title: str | None = None, dedication: str | None = None) -> Book:
    """Change the title (also the cover's text) or the dedication; the pictures stay. Raises BookError when the new
    words break the rules (empty title, too long to print, words not for a toddler's book) or none are given."""
    if title is None and dedication is None:
        raise BookError("Nothing to change: give a new title (--title), a new dedication (--dedication) or both.")
    changes: dict[str, object] = {}
    if title is not None:
        changes["title"] = title.strip()
        if book.cover is not None:
            changes["cover"] = book.cover.model_copy(update={"text": title.strip()})
    if dedication is not None:
        changes["dedication"] = dedication.strip()
    edited = validated(Book, book.model_dump() | changes)
    if problems := check_front(edited):
        raise BookError("The edit was not saved:\n  " + "\n  ".join(problems))
    return edited


def add_page(book: Book, at: int, text: str, scene: str, characters: list[str] | None = None) -> Book:
    """Insert a new page so that it becomes page `at` (len + 1 appends); it gets a seed no other page uses."""
    if len(book.pages) >= MAX_PAGES:
        raise BookError(f"The book already has {len(book.pages)} pages, the most a board book holds; remove one first.")
    if not 1 <= at <= len(book.pages) + 1:
        raise BookError(f"A new page can go at 1 to {len(book.pages) + 1}, not {at}.")
    slugs = characters if characters is not None else characters_in(book, scene)
    page = {
        "text": text.strip(),
        "scene": scene.strip(),
        "prompt": scene_prompt(book, scene, slugs),
        "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
        "characters": slugs,
        "seed": max((p.seed for p in book.pages), default=book.seed * 1000) + 1,
    }
    pages = list(book.pages)
    pages.insert(at - 1, checked(book, page, at))
    return book.model_copy(update={"pages": pages})


def remove_page(book: Book, number: int) -> Book:
    """Remove page `number`. Raises BookError when the book would have fewer than MIN_PAGES pages."""
    index = page_index(book, number)
    if len(book.pages) <= MIN_PAGES:
        raise BookError(f"A book needs at least {MIN_PAGES} pages; add another before removing this one.")
    return book.model_copy(update={"pages": book.pages[:index] + book.pages[index + 1 :]})


def move_page(book: Book, number: int, to: int) -> Book:
    """Move page `number` so that it becomes page `to`; the other pages keep their order."""
    pages = list(book.pages)
    page = pages.pop(page_index(book, number))
    page_index(book, to)
    pages.insert(to - 1, page)
    return book.model_copy(update={"pages": pages})


def cover_page(book: Book) -> Page:
    """The cover picture of `book`: every character together, in the book's style; its text is the title."""
    scene = f"{' and '.join(c.phrase for c in book.characters)} smiling together, book cover"
    return Page(
        text=book.title,
        scene=scene,
        prompt=scene_prompt(book, scene, [c.slug for c in book.characters]),
        negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        characters=[c.slug for c in book.characters],
        seed=book.seed * 1000 + 999,
    )


def page_at(book: Book, number: int) -> Page:
    """Page `number` of `book`, where 0 is the cover. Raises BookError when there is no such page."""
    if number == 0:
        if book.cover is None:
            raise BookError("The book has no cover yet: render it first.")
        return book.cover
    return book.pages[page_index(book, number)]


def with_page(book: Book, number: int, page: Page) -> Book:
    """`book` with page `number` (0: the cover) replaced by `page`."""
    if number == 0:
        return book.model_copy(update={"cover": page})
    pages = list(book.pages)
    pages[page_index(book, number)] = page
    return book.model_copy(update={"pages": pages})


def choose_candidate(book: Book, number: int, candidate: int) -> Book:
    """Make candidate `candidate` (1-based) of page `number` (0: the cover) its picture, and its seed the page's seed.

    Raises BookError when the page has no such candidate (render with --candidates first).
    """
    page = page_at(book, number)
    if not 1 <= candidate <= len(page.candidates):
        raise BookError(
            f"Page {number} has {len(page.candidates)} candidates, not {candidate}: "
            "run `storybook render BOOK --candidates N`."
        )
    chosen = page.candidates[candidate - 1]
    return with_page(
        book, number, page.model_copy(update={"seed": chosen.seed, "image": chosen.image, "preview": None})
    )


def reseed_page(book: Book, number: int) -> Book:
    """Give page `number` (0: the cover) a seed no other page uses, so that its picture is drawn anew."""
    page = page_at(book, number)
    seed = max(p.seed for p in [*book.pages, *([book.cover] if book.cover else [])]) + 1
    return with_page(
        book, number, page.model_copy(update={"seed": seed, "image": None, "preview": None, "candidates": []})
    )
