"""Export: choose trim size, print profile and layout, build the PDF in the background (its pictures may be enlarged
by the x4 upscaler on the GPU, which it waits for while another job has it) and download it."""

from pathlib import Path
from typing import get_args

import streamlit as st

from app_pages.common import choose_book, home, keep_only, show_job
from storybook.book import book_file
from storybook.errors import StorybookError
from storybook.jobs import Progress, is_running, start_job
from storybook.printing.book_pdf import Layout, Profile, Trim, export_book


def export_in_background(root: Path, folder: Path, out: Path, profile: Profile, trim: Trim, layout: Layout) -> None:
    """Start building the PDF of the book in `folder` at `out` as a background job."""

    def work(progress: Progress) -> str:
        keep_only("export")  # the card for the upscaler: a renderer kept from drawing goes
        pages = export_book(
            folder, out, profile, trim, layout, progress=lambda done, total: progress(done, total, "pages"), home=root
        )
        return f"{pages} pages, {trim} in, {profile}: {out}"

    start_job(root, "export", folder.name, work)


def export_form(folder: Path, root: Path) -> None:
    """The print choices for the book in `folder` of the data root `root`, the Build button with its job, and the
    download of the last PDF built."""
    trim = st.selectbox("Trim size (inches)", get_args(Trim), index=1, key="export-trim")
    profile = st.selectbox(
        "Print profile", get_args(Profile), key="export-profile", help="kdp and lulu add bleed; screen has none."
    )
    layout = st.radio("Text", get_args(Layout), horizontal=True, key="export-layout", help="band: over the picture")
    try:
        out = book_file(folder, "exports") / f"{folder.name}-{trim}-{profile}.pdf"
    except StorybookError as error:
        st.error(str(error))
        return
    busy = is_running(root, "export", folder.name)
    if st.button("Build the PDF", key="export-build", type="primary", disabled=busy):
        try:
            export_in_background(root, folder, out, profile, trim, layout)
        except StorybookError as error:
            st.error(str(error))
    state = show_job(root, "export", folder.name)
    if out.is_file() and (state is None or state.status != "running"):
        st.download_button("Download the PDF", out.read_bytes(), file_name=out.name, mime="application/pdf")


root = home()
st.header("Export")
if chosen := choose_book(root):
    export_form(chosen[0], root)
