"""SQL: a read-only query box over the store, results as a table, CSV/Parquet download."""

import io

import streamlit as st

from app.db import query_store
from app.escape import markdown as md
from app.ui import data as D
from app.ui import state
from app.ui.tables import table
from unpack.errors import InputError

ws: D.WorkingSet = st.session_state["ws"]
st.title("SQL")
st.caption(
    "Read-only: the database is opened read-only with DuckDB's external access off, so "
    "queries cannot write, attach files, install extensions or read the file system. "
    "One SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE / EXPLAIN statement at a time; "
    "each query has a time limit and a result size limit (`unpack app --sql-timeout`, "
    "`--sql-max-mb`), and all queries share one memory limit (`--sql-memory-mb`). "
    "Functions that show the machine's paths are refused."
)

examples = D.example_queries(list(ws.models))
titles = [t for t, _ in examples]


def load_example():
    title = st.session_state["sql_example"]
    st.session_state["sql_text"] = dict(examples)[title]


if "sql_text" not in st.session_state:
    st.session_state["sql_text"] = examples[0][1]
st.selectbox("Example queries", titles, key="sql_example", on_change=load_example)
sql = st.text_area("Query", key="sql_text", height=180)
c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
limit = c1.number_input(
    "Row limit", min_value=1, max_value=1_000_000, value=10_000, step=1000, key="sql_limit"
)
run = c2.button("Run query", type="primary", key="sql_run")


timeout_s, max_bytes = state.sql_limits()


def cached_query(db: str, sql: str, limit: int):
    """Results are cached per database, query text, limit and size limit, in a
    cache bounded in bytes (state.sql_cache)."""
    cache = state.sql_cache()
    key = (db, sql, limit, timeout_s, max_bytes)
    df = cache.get(key)
    if df is None:
        df = query_store(db, sql, limit, timeout_s=timeout_s, max_bytes=max_bytes)
        cache.put(key, df, int(df.memory_usage(index=True, deep=True).sum()))
    return df


if run:
    st.session_state["sql_last"] = sql
if st.session_state.get("sql_last") == sql:  # edits need Run again; a new row limit does not
    try:
        with st.spinner(f"Running the query (time limit {timeout_s:g} s) ..."):
            df = cached_query(state.db_path(), sql, int(limit))
    except InputError as e:  # DuckDB's message may quote stored text: Markdown-escaped
        st.error(md(str(e)))
    else:
        more = (
            " (truncated at the row limit: there are more rows)"
            if df.attrs.get("truncated")
            else ""
        )
        st.caption(f"{len(df):,} row{'' if len(df) == 1 else 's'}{more}")
        table(df, labels={c: str(c) for c in df.columns})  # the query's own names
        d1, d2 = st.columns(2)
        d1.download_button(
            "Download CSV",
            df.to_csv(index=False).encode(),
            file_name="query.csv",
            mime="text/csv",
            key="sql_csv",
        )
        buf = io.BytesIO()
        try:
            df.to_parquet(buf, index=False)
        except Exception as e:  # a column type Parquet cannot hold
            d2.caption(f"No Parquet for this result ({str(e).splitlines()[0]}); use CSV.")
        else:
            d2.download_button(
                "Download Parquet",
                buf.getvalue(),
                file_name="query.parquet",
                mime="application/vnd.apache.parquet",
                key="sql_parquet",
            )

with st.expander("Tables and views"):
    table(state.query(D.schema))
