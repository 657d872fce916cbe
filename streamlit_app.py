"""storybook's app for parents: characters from photos, stories about them, their pictures, and the printable book.

A thin shell over the storybook package: run with `streamlit run streamlit_app.py` (data root: $STORYBOOK_HOME or
the current directory). Each page is a file in app_pages/; long jobs (training, rendering a book) run in the
background with their state in <home>/jobs/, so a refresh or a second tab sees them.
"""

import streamlit as st

st.set_page_config(page_title="storybook", page_icon=":material/menu_book:", layout="wide")
pages = [
    st.Page("app_pages/characters.py", title="Characters", icon=":material/face:", default=True),
    st.Page("app_pages/story.py", title="Story", icon=":material/edit_note:"),
    st.Page("app_pages/preview.py", title="Preview", icon=":material/photo_library:"),
    st.Page("app_pages/export.py", title="Export", icon=":material/picture_as_pdf:"),
    st.Page("app_pages/settings.py", title="Settings", icon=":material/settings:"),
]
st.navigation(pages).run()
