"""The pages of the Streamlit app (scripts run by st.navigation in app/streamlit_app.py)."""
