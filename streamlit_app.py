"""storybook's app for parents: register characters from photos, write stories about them, edit the pages.

A thin shell over `storybook.registry`, `storybook.story` and `storybook.book_edits`: run with
`streamlit run streamlit_app.py` (data root: $STORYBOOK_HOME or the current directory). Training in the app, page
previews and export arrive with the later stages.
"""

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import streamlit as st

from storybook import book_edits, registry
from storybook.book import MAX_PAGES, MIN_PAGES, Book, list_books, load_book, save_book
from storybook.errors import PhotoError, StorybookError
from storybook.models import DEFAULT_MODEL, load_tokenizer
from storybook.storage import data_home
from storybook.story import StoryRequest, default_writer, write_story


@st.cache_resource
def cached_tokenizer(home: str):
    """The default model's tokenizer, loaded once per server (built with the tiny model on first use)."""
    return load_tokenizer(DEFAULT_MODEL, Path(home))


def add_character_form(home: Path) -> None:
    """Name, photos and description in; a registered character, or a friendly message per bad photo, out."""
    with st.form("add", clear_on_submit=False):
        name = st.text_input("Name", key="name")
        class_noun = st.text_input("What is it?", value="toddler", key="class_noun")
        description = st.text_input("Appearance in words", placeholder="curly red hair, yellow raincoat")
        uploads = st.file_uploader("3-30 photos", accept_multiple_files=True, key="photos")
        submitted = st.form_submit_button("Add character")
    if not submitted:
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for index, upload in enumerate(uploads or []):
            path = Path(folder) / f"{index:02d}" / Path(upload.name).name  # phones name every upload image.jpg
            path.parent.mkdir()
            path.write_bytes(upload.getvalue())
            paths[str(path)] = upload.name
        try:
            with st.spinner("Checking and cropping the photos..."):
                character = registry.add_character(
                    home, name, list(map(Path, paths)), cached_tokenizer(str(home)), class_noun, description
                )
        except PhotoError as error:
            for path, problem in error.problems.items():
                st.error(f"{paths.get(path, path)}: {problem}")
            return
        except StorybookError as error:
            st.error(str(error))
            return
    st.success(f"Added {character.name} (token '{character.token}').")


def character_list(home: Path) -> None:
    """The registered characters, their prepared crops, and a confirmed remove."""
    characters = registry.list_characters(home)
    if not characters:
        st.info("No characters yet: add one above.")
        return
    for character in characters:
        folder = registry.character_dir(home, character.slug)
        with st.expander(f"{character.name} — {character.class_noun}, token '{character.token}'"):
            st.write(character.description or "(no description)")
            crops = [folder / record.prepared for record in character.photos]
            if missing := [crop.name for crop in crops if not crop.is_file()]:
                st.warning(f"Missing crops: {', '.join(missing)}; remove and add {character.name} again to redo them.")
            st.image([str(crop) for crop in crops if crop.is_file()], width=96)
            confirm = st.checkbox(f"Yes, delete {character.name} and all photos", key=f"confirm-{character.slug}")
            if st.button("Remove", key=f"remove-{character.slug}", disabled=not confirm):
                registry.remove_character(home, character.slug)
                st.rerun()


def write_story_form(home: Path) -> None:
    """Child, characters and theme in; a new book project out (the offline writer unless an LLM is configured)."""
    names = [character.name for character in registry.list_characters(home)]
    if not names:
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
    request = StoryRequest(child=child, characters=characters, theme=theme, pages=pages, pronouns=pronouns)
    try:
        with st.spinner("Writing..."):
            folder, book = write_story(home, request, writer)
    except StorybookError as error:
        st.error(str(error))
        return
    st.session_state["book"] = folder.name
    st.success(f"Wrote '{book.title}' ({len(book.pages)} pages) in {folder}.")


def apply_edit(folder: Path, edit: Callable[[Book], Book]) -> None:
    """Apply `edit` (Book -> Book) to the book in `folder` and save it; a refused edit is shown and saves nothing."""
    try:
        save_book(folder, edit(load_book(folder)))
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


def book_section(home: Path) -> None:
    """Pick a book and edit its pages."""
    folders = {folder.name: folder for folder in list_books(home)}
    if not folders:
        return
    folder = folders[st.selectbox("Book", list(folders), key="book")]
    try:
        book = load_book(folder)
    except StorybookError as error:
        st.error(str(error))
        return
    st.subheader(book.title)
    st.caption(f"{book.dedication} · {book.style} · written by {book.writer}")
    if message := st.session_state.pop("edit-error", None):
        st.error(message)
    page_editor(folder, book)


home = data_home()
st.title("storybook")
st.header("Characters")
add_character_form(home)
character_list(home)
st.header("Stories")
write_story_form(home)
book_section(home)
