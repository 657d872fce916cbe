"""Export: choose trim size, print profile and layout, build the PDF and download it."""

from pathlib import Path
from typing import get_args

import streamlit as st

from app_pages.common import choose_book, home
from storybook.book import book_file
from storybook.errors import StorybookError
from storybook.printing.book_pdf import Layout, Profile, Trim, export_book


def export_form(folder: Path, root: Path) -> None:
    """The print choices for the book in `folder` of the data root `root`, the Build button with its progress, and
    the download of the last PDF built."""
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
    if st.button("Build the PDF", key="export-build", type="primary"):
        bar = st.progress(0.0, text="Building...")
        try:
            pages = export_book(
                folder, out, profile, trim, layout, progress=lambda done, total: bar.progress(done / total), home=root
            )
        except StorybookError as error:
            st.error(str(error))
            return
        st.success(f"{pages} pages, {trim} in, {profile}: {out}")
    if out.is_file():
        st.download_button("Download the PDF", out.read_bytes(), file_name=out.name, mime="application/pdf")


root = home()
st.header("Export")
if chosen := choose_book(root):
    export_form(chosen[0], root)
