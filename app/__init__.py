"""The Streamlit progress view."""
