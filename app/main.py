"""The safesail progress view: `safesail app`, or `streamlit run app/main.py -- --workspace W`."""

from pathlib import Path

import streamlit as st

from app.common import sidebar

HERE = Path(__file__).parent / "views"

st.set_page_config(page_title="safesail", layout="wide")
pages = st.navigation(
    [
        st.Page(HERE / "overview.py", title="Overview", default=True),
        st.Page(HERE / "landscape.py", title="Landscape"),
        st.Page(HERE / "features.py", title="Feature browser"),
        st.Page(HERE / "learning.py", title="Active learning"),
        st.Page(HERE / "calibration.py", title="Explainer calibration"),
        st.Page(HERE / "inspector.py", title="Inspector"),
    ]
)
sidebar()
pages.run()
