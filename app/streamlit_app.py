"""The Unpack explorer: ``unpack app --db PATH`` runs this with Streamlit.

Run by hand: ``streamlit run app/streamlit_app.py -- --db unpack.duckdb``
(or set UNPACK_DB). The database is opened read-only with external access off.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import streamlit as st
from PIL import Image

from app.ui import state, url

HERE = Path(__file__).resolve().parent

# the icon is an image made here, not a named icon or an emoji: those the browser fetches
# from outside (docs/SECURITY.md: the app asks for nothing beyond its own server)
st.set_page_config(
    page_title="Unpack explorer",
    layout="wide",
    page_icon=Image.new("RGB", (32, 32), (148, 103, 189)),
)

PAGES_DIR = HERE / "ui" / "pages"  # not ./pages: that name would make Streamlit list the files
PAGES = [
    st.Page(
        PAGES_DIR / "overview.py",
        title="Overview",
        url_path="overview",
        default=True,
        icon=":material/dashboard:",
    ),
    st.Page(
        PAGES_DIR / "prompt.py", title="Prompt", url_path="prompt", icon=":material/text_fields:"
    ),
    st.Page(PAGES_DIR / "circuit.py", title="Circuit", url_path="circuit", icon=":material/hub:"),
    st.Page(
        PAGES_DIR / "compare.py", title="Compare", url_path="compare", icon=":material/compare:"
    ),
    st.Page(PAGES_DIR / "sql.py", title="SQL", url_path="sql", icon=":material/terminal:"),
]

page = st.navigation(PAGES)
state.connection()  # a clear message and a stop when the store cannot be opened
url.restore()  # a shared link: its view's values before any widget is drawn
for notice in url.notices():
    st.warning(f"Link: {notice}.")
try:
    st.session_state["ws"] = state.working_set()
    page.run()
except duckdb.Error as e:  # damage the start-up check cannot see (a corrupt block)
    from ingest.store import store_error

    problem = store_error(state.db_path(), e)
    st.error(f"Cannot read the database: {problem or str(e).splitlines()[0]}")
except Exception as e:  # never a traceback on a page: a short message, the details in the log
    logging.getLogger("unpack.app").exception("page %s failed", page.title)
    st.error(
        f"This page could not be drawn ({type(e).__name__}: "
        f"{(str(e).splitlines() or [''])[0][:200]}). The details are in the log of "
        "`unpack app`; reload the page or open it without link parameters."
    )
finally:  # also when a page stops early (st.stop): the link keeps what is on the page
    url.sync(page.title.lower())
