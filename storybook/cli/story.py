"""`storybook story`: write stories and edit their pages."""

from collections.abc import Callable
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from storybook.book import BOOK_FILE, MAX_PAGES, MIN_PAGES, Book, Pronouns, book_dir, list_books, load_book, save_book
from storybook.cli.shell import app, console, run, say_warning, state
from storybook.errors import BookError
from storybook.storage import slugify
from storybook.story import book_edits
from storybook.story.llm_writer import DEFAULT_LLM_MODEL, LLMSettings
from storybook.story.stage import DEFAULT_STYLE, StoryRequest, Writer, default_writer, write_story
from storybook.text import shown

story_app = typer.Typer(help="Write stories and edit their pages.", no_args_is_help=True)
app.add_typer(story_app, name="story")


@story_app.command("write")
def story_write(
    child: Annotated[str, typer.Option(help="The child's name, as the story says it.")],
    theme: Annotated[str, typer.Option(help="What the story is about, e.g. 'a day at the beach'.")],
    character: Annotated[
        list[str] | None, typer.Option(help="A registered character in the story (1-3; default: the child's own).")
    ] = None,
    pages: Annotated[int, typer.Option(min=MIN_PAGES, max=MAX_PAGES)] = 12,
    age: Annotated[int, typer.Option(min=0, max=6, help="The child's age in years.")] = 2,
    pronouns: Annotated[Pronouns, typer.Option(help="she, he or they.")] = "they",
    style: Annotated[str, typer.Option(help="The art style of every picture.")] = DEFAULT_STYLE,
    max_words: Annotated[int | None, typer.Option(help="Words a page may hold (default: by age).")] = None,
    dedication: Annotated[str | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option(help="Fixes the offline story and the pictures' seeds.")] = None,
    writer: Annotated[
        Writer | None, typer.Option(help="llm or offline (default: llm when OPENAI_API_KEY or OPENAI_BASE_URL is set).")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="The LLM to ask (any model the server has).")
    ] = DEFAULT_LLM_MODEL,
    llm_deadline: Annotated[
        float, typer.Option(min=1, max=3600, help="Seconds the LLM may take for the whole story, retries included.")
    ] = 300.0,
) -> None:
    """Write a story about the child and their characters, and save it as a new book project."""

    def write():
        request = StoryRequest(
            child=child,
            characters=character or [],
            theme=theme,
            pages=pages,
            age=age,
            pronouns=pronouns,
            style=style,
            max_words_per_page=max_words,
            dedication=dedication,
            seed=seed,
        )
        chosen = writer or default_writer()
        console.print(f"Writing with the {chosen} writer" + (f" ({model})" if chosen == "llm" else ""))
        folder, book = write_story(state["home"], request, chosen, LLMSettings(model=model, deadline_s=llm_deadline))
        console.print(Text.assemble((book.title, "bold"), f": {len(book.pages)} pages in {folder}"))
        warn_about_glyphs(book)
        console.print(f"Next: storybook story show {folder.name}")

    run(write)


@story_app.command("list")
def story_list() -> None:
    """List the books of the data root."""

    def show_list():
        table = Table("book", "title", "pages", "writer")
        for folder in list_books(state["home"]):
            try:
                book = load_book(folder)
            except BookError as error:  # a folder name and an error are not checked text: escaped
                table.add_row(shown(folder.name), Text(shown(str(error)), "red"), "-", "-")
                continue
            table.add_row(shown(folder.name), book.title, str(len(book.pages)), book.writer)
        console.print(table)

    run(show_list)


@story_app.command("show")
def story_show(book: Annotated[str, typer.Argument(help="A book name under books/, or a book folder.")]) -> None:
    """Show a book's pages: text, characters and scene prompt."""

    def show():
        story = load_book(book_dir(state["home"], book))
        console.print(
            Text.assemble((story.title, "bold"), f" ({story.dedication}) - {story.style}, written by {story.writer}")
        )
        table = Table("page", "text", "characters", "scene prompt", show_lines=True)
        for number, page in enumerate(story.pages, start=1):
            table.add_row(str(number), page.text, ", ".join(page.characters), page.prompt)
        console.print(table)

    run(show)


def warn_about_glyphs(book: Book) -> None:
    """Say which of the book's texts have characters its font lacks, and how they will print (see
    storybook.printing.fonts)."""
    from storybook.printing.fonts import glyph_warnings

    for warning in glyph_warnings(book):
        say_warning(warning)


def edit_book(book: str, edit: Callable[[Book], Book]) -> None:
    """Load `book`, apply `edit` (Book -> Book), save it and say so; a refused edit leaves book.json as it was."""

    def apply():
        folder = book_dir(state["home"], book)
        edited = edit(load_book(folder))
        save_book(folder, edited)
        console.print(f"Saved {folder / BOOK_FILE}")
        warn_about_glyphs(edited)

    run(apply)


@story_app.command("edit")
def story_edit(
    book: str,
    page: int,
    text: Annotated[str | None, typer.Option(help="New text for the page.")] = None,
    scene: Annotated[
        str | None, typer.Option(help="New scene; name characters by their phrase ('zorv toddler').")
    ] = None,
    character: Annotated[
        list[str] | None, typer.Option(help="A character drawn (default: those the scene names).")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Replace the whole scene prompt (experts).")] = None,
) -> None:
    """Change a page's text, scene, characters or prompt."""

    def edit(story: Book) -> Book:
        slugs = [slugify(name) for name in character] if character is not None else None
        return book_edits.edit_page(story, page, text, scene, slugs, prompt)

    edit_book(book, edit)


@story_app.command("retitle")
def story_retitle(
    book: str,
    title: Annotated[str | None, typer.Option(help="The new title (also on the cover).")] = None,
    dedication: Annotated[str | None, typer.Option(help="The new dedication.")] = None,
) -> None:
    """Change the book's title or dedication (the pictures stay)."""
    edit_book(book, lambda story: book_edits.edit_front(story, title, dedication))


@story_app.command("add-page")
def story_add_page(
    book: str,
    text: Annotated[str, typer.Option()],
    scene: Annotated[str, typer.Option(help="What the picture shows, naming characters by their phrase.")],
    at: Annotated[int | None, typer.Option(help="The new page's number (default: at the end).")] = None,
) -> None:
    """Add a page."""
    edit_book(book, lambda story: book_edits.add_page(story, len(story.pages) + 1 if at is None else at, text, scene))


@story_app.command("remove-page")
def story_remove_page(book: str, page: int) -> None:
    """Remove a page."""
    edit_book(book, lambda story: book_edits.remove_page(story, page))


@story_app.command("move-page")
def story_move_page(book: str, page: int, to: int) -> None:
    """Move a page so that it becomes page TO."""
    edit_book(book, lambda story: book_edits.move_page(story, page, to))
