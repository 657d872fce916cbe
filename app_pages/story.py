"""Story: write a story (LLM or offline writer), then edit, add, remove and reorder its pages."""

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import streamlit as st
from pydantic import ValidationError

from app_pages.common import choose_book, home
from storybook import registry
from storybook.book import MAX_DEDICATION, MAX_PAGES, MAX_TITLE, MIN_PAGES, Book, load_book, save_book
from storybook.errors import StorybookError, describe_problems
from storybook.printing.fonts import glyph_warnings
from storybook.story import book_edits
from storybook.story.stage import StoryRequest, default_writer, write_story


def write_story_form(root: Path) -> None:
    """Child, characters and theme in; a new book project out (the offline writer unless an LLM is configured)."""
    names = [character.name for character in registry.list_characters(root)]
    if not names:
        st.info("Add a character on the Characters page first.")
        return
    writer = default_writer()
    with st.form("story"):
        child = st.text_input("Child's name", key="story-child")
        characters = st.multiselect("Characters in the story (1-3)", names, key="story-characters")
        theme = st.text_input("Theme", placeholder="a day at the beach", key="story-theme")
        pages = st.slider("Pages", MIN_PAGES, MAX_PAGES, 12, key="story-pages")
        pronouns = st.selectbox("Pronouns", ["she", "he", "they"], index=2, key="story-pronouns")
        submitted = st.form_submit_button(f"Write the story ({writer} writer)", key="story-write")
    if not submitted:
        return
    try:
        request = StoryRequest(child=child, characters=characters, theme=theme, pages=pages, pronouns=pronouns)
    except ValidationError as error:
        st.error(f"Please fix: {describe_problems(error)}.")
        return
    try:
        with st.spinner("Writing..."):
            folder, book = write_story(root, request, writer)
    except StorybookError as error:
        st.error(str(error))
        return
    st.session_state["current-book"] = st.session_state["book"] = folder.name  # show the new book below
    st.success(f"Wrote '{book.title}' ({len(book.pages)} pages) in {folder}.")
    for warning in glyph_warnings(book):
        st.warning(warning)


def apply_edit(folder: Path, edit: Callable[[Book], Book]) -> None:
    """Apply `edit` (Book -> Book) to the book in `folder` and save it; a refused edit is shown and saves nothing."""
    try:
        edited = edit(load_book(folder))
        save_book(folder, edited)
        st.session_state["edit-warnings"] = glyph_warnings(edited)
    except StorybookError as error:
        st.session_state["edit-error"] = str(error)
    st.rerun()


def page_editor(folder: Path, book: Book) -> None:
    """Each page's text and scene, editable, with save, remove and move-up; the scene prompt it makes below."""
    for number, page in enumerate(book.pages, start=1):
        key = f"{folder.name}-{page.seed}"  # a page keeps its seed when moved, so its widgets follow it
        with st.expander(f"Page {number}: {page.text}"):
            text = st.text_area("Text", page.text, key=f"text-{key}")
            scene = st.text_input("Scene", page.scene, key=f"scene-{key}")
            st.caption(page.prompt)
            save, remove, up = st.columns(3)
            if save.button("Save", key=f"save-{key}"):
                apply_edit(folder, partial(book_edits.edit_page, number=number, text=text, scene=scene))
            if remove.button("Remove page", key=f"remove-{key}"):
                apply_edit(folder, partial(book_edits.remove_page, number=number))
            if number > 1 and up.button("Move up", key=f"up-{key}"):
                apply_edit(folder, partial(book_edits.move_page, number=number, to=number - 1))


def front_editor(folder: Path, book: Book) -> None:
    """The title (also on the cover) and the dedication, editable; changed elsewhere (the CLI), they show anew."""
    saved = hashlib.sha256(f"{book.title}\n{book.dedication}".encode()).hexdigest()[:8]  # new widgets when changed
    with st.form(f"front-{folder.name}"):
        title = st.text_input("Title", book.title, max_chars=MAX_TITLE, key=f"title-{folder.name}-{saved}")
        dedication = st.text_area(
            "Dedication", book.dedication, max_chars=MAX_DEDICATION, key=f"dedication-{folder.name}-{saved}"
        )
        if st.form_submit_button("Save title and dedication"):
            apply_edit(folder, partial(book_edits.edit_front, title=title, dedication=dedication))


def add_page_form(folder: Path, book: Book) -> None:
    """A new page's text, scene and place."""
    phrases = ", ".join(f"'{c.phrase}' for {c.name}" for c in book.characters)
    with st.form(f"add-page-{folder.name}"):
        text = st.text_area("Text", key="new-page-text")
        scene = st.text_input("Scene", help=f"Name characters by their phrase: {phrases}.", key="new-page-scene")
        at = st.number_input("Page number", 1, len(book.pages) + 1, len(book.pages) + 1, key="new-page-at")
        if st.form_submit_button("Add page"):
            apply_edit(folder, partial(book_edits.add_page, at=int(at), text=text, scene=scene))


root = home()
st.header("Story")
write_story_form(root)
if chosen := choose_book(root):
    folder, book = chosen
    st.subheader(book.title)
    st.caption(f"{book.dedication} · {book.style} · written by {book.writer}")
    if message := st.session_state.pop("edit-error", None):
        st.error(message)
    for warning in st.session_state.pop("edit-warnings", []):
        st.warning(warning)
    with st.expander("Title and dedication"):
        front_editor(folder, book)
    page_editor(folder, book)
    with st.expander("Add a page"):
        add_page_form(folder, book)
