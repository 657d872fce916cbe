"""What the app's pages share: the data root, models loaded once, the current book, and a live view of a long job."""

from pathlib import Path

import streamlit as st

from storybook.book import Book, list_books, load_book
from storybook.errors import StorybookError
from storybook.jobs import JobState, cancel_job, read_job
from storybook.models import load_tokenizer
from storybook.render.print_pictures import release_upscalers
from storybook.storage import data_home


def home() -> Path:
    """The data root: $STORYBOOK_HOME or the current directory."""
    return data_home()


@st.cache_resource
def cached_tokenizer(root: str, model: str):
    """The tokenizer of base `model` (the data root's, which characters are trained on), loaded once per server."""
    return load_tokenizer(model, Path(root))


@st.cache_resource
def renderers() -> dict:
    """The server's renderer, loaded once and kept between render jobs (jobs take turns on the GPU, storybook.jobs)."""
    return {"renderer": None}


def keep_only(kind: str) -> None:
    """Free what GPU jobs of other kinds keep loaded between jobs (render jobs the renderer, exports the upscalers),
    before a job of `kind` loads its own: one model family on the card at a time. Called with the GPU held."""
    shared = renderers()
    if kind != "render" and shared["renderer"] is not None:
        shared["renderer"].release()
        shared["renderer"] = None
    if kind != "export":
        release_upscalers()


def choose_book(root: Path) -> tuple[Path, Book] | None:
    """A book picker (the choice is remembered across pages); the chosen book's folder and book, or None."""
    folders = {folder.name: folder for folder in list_books(root)}
    if not folders:
        st.info("No books yet: write a story on the Story page.")
        return None
    names = list(folders)
    if st.session_state.get("book") not in names:  # a new page run, or the book was just written elsewhere
        remembered = st.session_state.get("current-book")
        st.session_state["book"] = remembered if remembered in names else names[0]
    name = st.selectbox("Book", names, key="book")
    st.session_state["current-book"] = name
    try:
        return folders[name], load_book(folders[name])
    except StorybookError as error:
        st.error(str(error))
        return None


def show_job(root: Path, kind: str, target: str) -> JobState | None:
    """Progress, message and a Cancel button for the job `kind` on `target`; refreshes itself while it runs."""

    @st.fragment(run_every=1.0)
    def live() -> None:
        state = read_job(root, kind, target)
        if state is None:
            return
        if state.status == "running":
            fraction = state.done / state.total if state.total else 0.0
            st.progress(fraction, text=f"{state.done}/{state.total} {state.message}")
            if st.button("Cancel", key=f"cancel-{kind}-{target}"):
                cancel_job(root, kind, target)
        elif state.status == "done":
            st.success(state.message)
        elif state.status == "cancelled":
            st.warning(state.message)
        else:
            st.error(state.message)
        seen = f"seen-{kind}-{target}"
        was_running, st.session_state[seen] = st.session_state.get(seen) == "running", state.status
        if was_running and state.status != "running":
            st.rerun(scope="app")  # the job just ended: redraw the page with its results

    live()
    return read_job(root, kind, target)
