"""The Streamlit app's building blocks: ``data`` (read queries, no Streamlit),
``state`` (connection, caching, the working set), ``views`` (token strip,
path labels, graph figures)."""
