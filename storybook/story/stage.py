"""The story stage: from a child, registered characters and a theme to a new book project (books/<slug>/book.json).

Either writer (the LLM or the offline templates) returns a StoryDraft; the draft becomes a Book here, each scene
prompt composed with the characters' fixed looks and the style, and the book is checked before it is saved.
"""

import os
import random
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from storybook import registry
from storybook.book import (
    MAX_DEDICATION,
    MAX_NAME,
    MAX_PAGES,
    MAX_THEME,
    MAX_WORDS_PER_PAGE,
    MIN_PAGES,
    Book,
    BookCharacter,
    Page,
    Pronouns,
    RenderSettings,
    age_band,
    create_book,
)
from storybook.config import configured_model
from storybook.errors import StoryError
from storybook.storage import slugify
from storybook.story.book_edits import cover_page
from storybook.story.brief import StoryBrief, StoryDraft
from storybook.story.checks import DEFAULT_NEGATIVE_PROMPT, check_book, check_own_words, compose_prompt
from storybook.story.llm_writer import LLMSettings, write_with_llm
from storybook.story.offline_writer import write_offline
from storybook.text import plain, plain_lines

DEFAULT_STYLE = "soft watercolor picture book illustration"
Writer = Literal["llm", "offline"]


class StoryRequest(BaseModel):
    """The story a parent asks for (the CLI's `story write` options; batch spec files hold the same fields)."""

    child: Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(plain)]
    characters: list[str] = Field(default_factory=list)  # registered names; empty: the child's own character
    theme: Annotated[str, Field(min_length=1, max_length=MAX_THEME), AfterValidator(plain)]
    pages: int = Field(12, ge=MIN_PAGES, le=MAX_PAGES)
    age: int = Field(2, ge=0, le=6)
    pronouns: Pronouns = "they"
    style: Annotated[str, Field(min_length=1, max_length=MAX_THEME), AfterValidator(plain)] = DEFAULT_STYLE
    max_words_per_page: int | None = Field(None, ge=1, le=MAX_WORDS_PER_PAGE)  # default: the age band's limit
    dedication: Annotated[str, Field(max_length=MAX_DEDICATION), AfterValidator(plain_lines)] | None = None
    seed: int | None = Field(None, ge=0, lt=2**53)  # default: a random seed, recorded in book.json


def default_writer() -> Writer:
    """'llm' when an OpenAI key or an OpenAI-compatible base URL is configured, else 'offline'."""
    return "llm" if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL") else "offline"


def load_cast(home: Path, request: StoryRequest) -> list[BookCharacter]:
    """The book's characters from the registry, the hero first: the one named like the child, else the first given.

    The hero is called by the child's name in the story. Raises CharacterError for unknown characters and
    StoryError for more than three or repeated ones.
    """
    names = request.characters or [request.child]
    cast = [registry.load_character(home, name) for name in names]
    slugs = [c.slug for c in cast]
    if len(set(slugs)) != len(slugs):
        raise StoryError(f"A character is given twice: {', '.join(names)}.")
    if len(cast) > 3:
        raise StoryError(f"A toddler story has one to three characters; {len(cast)} were given.")
    child_slug = slugify(request.child)
    cast.sort(key=lambda c: c.slug != child_slug)  # stable: the child's character first, the others as given
    return [
        BookCharacter(
            slug=c.slug,
            name=request.child if i == 0 else c.name,
            token=c.token,
            class_noun=c.class_noun,
            appearance=c.description,
        )
        for i, c in enumerate(cast)
    ]


def make_book(draft: StoryDraft, brief: StoryBrief, request: StoryRequest, writer: str, seed: int) -> Book:
    """Turn a writer's draft into a Book: page characters by slug, scene prompts composed, seeds and safety set.

    A page naming an unknown character keeps only the known ones; `check_draft` reports it.
    """
    by_name = {c.name.lower(): c for c in brief.characters}
    band, _ = age_band(request.age)
    pages = []
    for number, draft_page in enumerate(draft.pages):
        named = dict.fromkeys(name.strip().lower() for name in draft_page.characters)  # in order, once each
        present = [by_name[name] for name in named if name in by_name]
        pages.append(
            Page(
                text=draft_page.text.strip(),
                scene=draft_page.scene.strip(),
                prompt=compose_prompt(draft_page.scene, present, request.style),
                negative_prompt=DEFAULT_NEGATIVE_PROMPT,
                characters=[c.slug for c in present],
                seed=seed * 1000 + number,
            )
        )
    book = Book(
        title=draft.title.strip(),
        dedication=request.dedication or f"For {request.child}, with love.",
        child=request.child,
        pronouns=request.pronouns,
        theme=request.theme,
        age=request.age,
        age_band=band,
        max_words_per_page=brief.max_words_per_page,
        style=request.style,
        writer=writer,
        seed=seed,
        characters=brief.characters,
        pages=pages,
    )
    return book.model_copy(update={"cover": cover_page(book)})


def check_draft(draft: StoryDraft, brief: StoryBrief, request: StoryRequest) -> list[str]:
    """Every rule the draft breaks, as the book it would make (see story_checks), plus unknown characters."""
    known = {c.name.lower() for c in brief.characters}
    problems = [  # make_book leaves unknown names out, so name them here
        f"page {number}: {name!r} is not one of the given characters ({', '.join(c.name for c in brief.characters)}); "
        "draw only those."
        for number, page in enumerate(draft.pages, start=1)
        for name in page.characters
        if name.strip().lower() not in known
    ]
    return problems + check_book(make_book(draft, brief, request, "check", 0), pages=brief.pages)


def write_story(
    home: Path, request: StoryRequest, writer: Writer | None = None, llm: LLMSettings | None = None
) -> tuple[Path, Book]:
    """Write the story of `request` with `writer` (default: `default_writer()`), save it as a new book project.

    Returns the book folder and the book. Raises StoryError (the writer failed, or its story broke the rules) and
    CharacterError (an unknown character); nothing is saved then.
    """
    book = compose_story(home, request, writer, llm)
    return create_book(home, book), book


def compose_story(
    home: Path, request: StoryRequest, writer: Writer | None = None, llm: LLMSettings | None = None
) -> Book:
    """The book of `request`, written by `writer` (default: `default_writer()`) and checked, not saved yet.

    Raises StoryError and CharacterError as `write_story` does.
    """
    writer = writer or default_writer()
    model = configured_model(home)  # the data root's base model draws the new book (a damaged config: said first)
    if not request.style.strip():
        raise StoryError(f"The style is empty: describe the art of every page, e.g. '{DEFAULT_STYLE}'.")
    cast = load_cast(home, request)
    own_words = {
        "The child's name": request.child,
        "The style": request.style,
        "The dedication": request.dedication or "",
    }
    own_words |= {f"{c.name}'s description": c.appearance for c in cast}
    if problems := check_own_words(own_words):
        raise StoryError("\n".join(problems) + "\nChange these words; they would be on every page.")
    _, band_words = age_band(request.age)
    brief = StoryBrief(
        child=request.child,
        pronouns=request.pronouns,
        theme=request.theme,
        pages=request.pages,
        age=request.age,
        max_words_per_page=request.max_words_per_page or band_words,
        characters=cast,
    )
    seed = request.seed if request.seed is not None else random.randrange(1_000_000)
    if writer == "offline":
        draft = write_offline(brief, seed)
        if problems := check_draft(draft, brief, request):
            too_long = any(" words; " in problem for problem in problems)
            raise StoryError(
                "The offline story does not fit this book:\n  "
                + "\n  ".join(problems)
                + ("\nRaise --max-words or use shorter names." if too_long else "")
            )
        writer_name = "offline"
    else:
        llm = llm or LLMSettings()
        draft = write_with_llm(brief, lambda d: check_draft(d, brief, request), llm)
        writer_name = f"llm:{llm.model}"
    book = make_book(draft, brief, request, writer_name, seed)
    return book.model_copy(update={"render": RenderSettings(model=model)})
