"""storybook's app for parents: register characters from photos, see them, remove them.

A thin shell over `storybook.registry`: run with `streamlit run streamlit_app.py` (data root: $STORYBOOK_HOME or the
current directory). Training, stories, previews and export arrive with the later stages.
"""

import tempfile
from pathlib import Path

import streamlit as st

from storybook import registry
from storybook.errors import PhotoError, StorybookError
from storybook.models import DEFAULT_MODEL, load_tokenizer
from storybook.storage import data_home


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
            st.image([str(folder / record.prepared) for record in character.photos], width=96)
            confirm = st.checkbox(f"Yes, delete {character.name} and all photos", key=f"confirm-{character.slug}")
            if st.button("Remove", key=f"remove-{character.slug}", disabled=not confirm):
                registry.remove_character(home, character.slug)
                st.rerun()


home = data_home()
st.title("storybook")
st.header("Characters")
add_character_form(home)
character_list(home)
