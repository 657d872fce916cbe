"""Preview: the book's pages in a grid; fast drafts or full renders in the background; one page redrawn with a new
seed; candidates to choose from."""

from pathlib import Path

import streamlit as st

from app_pages.common import choose_book, home, keep_only, renderers, show_job
from storybook.book import Book, Page, load_book, save_book
from storybook.errors import StorybookError
from storybook.jobs import Progress, is_running, start_job
from storybook.render.pages import open_renderer, render_book
from storybook.storage import contained
from storybook.story import book_edits

COLUMNS = 3


def render_in_background(
    root: Path, folder: Path, preview: bool = False, only: list[int] | None = None, candidates: int = 1
) -> None:
    """Start rendering the book (drafts or finals; `only` some pages, with `candidates` seeds each) as a background
    job on the server's shared renderer (it waits for the GPU while another job has it)."""
    shared = renderers()

    def work(progress: Progress) -> str:
        keep_only("render")
        # The renderer is kept before drawing, so a cancelled job does not lose the loaded pipeline; one that cannot
        # draw this book is released before the next loads.
        shared["renderer"] = open_renderer(root, load_book(folder), shared["renderer"])
        report, _ = render_book(
            root,
            folder,
            renderer=shared["renderer"],
            preview=preview,
            candidates=candidates,
            only=only,
            progress=lambda done, total: progress(done, total, "pictures"),
        )
        return " ".join([f"{report.drawn} pictures drawn, {report.reused} already drawn.", *report.warnings])

    start_job(root, "render", folder.name, work)


def redraw(root: Path, folder: Path, number: int, candidates: int) -> None:
    """Draw page `number` (0: the cover) again in the background: with a new seed, or with `candidates` seeds."""
    try:
        if candidates == 1:
            save_book(folder, book_edits.reseed_page(load_book(folder), number))
        render_in_background(root, folder, only=[number], candidates=candidates)
    except StorybookError as error:
        st.session_state["preview-error"] = str(error)
    st.rerun()


def page_tile(root: Path, folder: Path, number: int, page: Page, busy: bool) -> None:
    """One page: its picture (or draft), its text, and buttons to redraw it or choose among candidates."""
    picture = page.image or page.preview
    if picture and (path := contained(folder, picture)) and path.is_file():
        st.image(str(path), width="stretch")
    else:
        st.caption("(not drawn yet)")
    st.markdown(f"**{'Cover' if number == 0 else f'Page {number}'}** · {page.text}")
    key = f"{folder.name}-{number}"
    new_seed, choices = st.columns(2)
    if new_seed.button("New seed", key=f"reseed-{key}", disabled=busy):
        redraw(root, folder, number, candidates=1)
    if choices.button("3 candidates", key=f"candidates-{key}", disabled=busy):
        redraw(root, folder, number, candidates=3)
    if len(page.candidates) > 1:
        columns = st.columns(len(page.candidates))
        for index, (column, candidate) in enumerate(zip(columns, page.candidates, strict=True), start=1):
            if (path := contained(folder, candidate.image)) and path.is_file():
                column.image(str(path), width="stretch")
            chosen = candidate.image == page.image
            if column.button("Chosen" if chosen else "Use", key=f"use-{key}-{index}", disabled=chosen):
                save_book(folder, book_edits.choose_candidate(load_book(folder), number, index))
                st.rerun()


def page_grid(root: Path, folder: Path, book: Book, busy: bool) -> None:
    """The cover and every page, COLUMNS to a row."""
    tiles = [book.cover, *book.pages] if book.cover else book.pages
    first = 0 if book.cover else 1
    for row in range(0, len(tiles), COLUMNS):
        row_tiles = enumerate(tiles[row : row + COLUMNS])
        for column, (offset, page) in zip(st.columns(COLUMNS), row_tiles, strict=False):  # the last row may be short
            with column:
                page_tile(root, folder, first + row + offset, page, busy)


root = home()
st.header("Preview")
if chosen := choose_book(root):
    folder, book = chosen
    busy = is_running(root, "render", folder.name)
    drafts, finals = st.columns(2)
    if drafts.button("Fast drafts of every page", key="render-drafts", disabled=busy):
        render_in_background(root, folder, preview=True)
        st.rerun()
    if finals.button("Render every page", key="render-all", disabled=busy, type="primary"):
        render_in_background(root, folder)
        st.rerun()
    show_job(root, "render", folder.name)
    if message := st.session_state.pop("preview-error", None):
        st.error(message)
    page_grid(root, folder, book, busy)
