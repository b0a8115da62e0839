"""Inspector: each token of a prompt with the safety features active on it, strongest first
(normalised by each feature's ~99.9th percentile), with their explanations."""

import html

import pandas as pd
import streamlit as st

from app import common, reads

st.header("Inspector")


@st.cache_resource(show_spinner="Loading the model and the SAE ...")
def _inspector(workspace: str, db_url: str | None):
    from safesail.config import default_cache_dir
    from safesail.features.inspector import Inspector
    from safesail.model.lm import load_model

    eng = common.engine()
    return Inspector.load(eng, load_model(reads.model_name(eng), default_cache_dir()))


def body() -> None:
    if not common.ready():
        return
    if common.query("model_name") is None:
        common.need("model", "safesail collect")
        return
    prompt = st.text_area("prompt", placeholder="Type a prompt, then press Inspect")
    floor = st.slider("min normalised activation", 0.0, 1.0, 0.1, 0.05)
    if not (st.button("Inspect", type="primary") and prompt.strip()):
        st.caption("Tokens are coloured by their strongest safety feature (normalised).")
        return
    workspace, db_url = common.settings()
    inspector = _inspector(str(workspace), db_url)
    tokens = inspector.inspect(prompt, min_normalised=floor)
    spans = []
    for t in tokens:
        top = t.features[0].normalised if t.features else 0.0
        tip = "; ".join(f"#{f.feature} {f.normalised:.2f}" for f in t.features[:5])
        spans.append(
            f'<span title="{html.escape(tip)}" style="background: rgba(220,38,38,'
            f'{min(top, 1.0):.2f})">{html.escape(t.token)}</span>'
        )
    st.markdown(
        '<div style="font-family: monospace; white-space: pre-wrap; font-size: 1.1em">'
        + "".join(spans)
        + "</div>",
        unsafe_allow_html=True,
    )
    rows = [
        {
            "position": t.position,
            "token": t.token,
            "feature": f.feature,
            "normalised": f.normalised,
            "activation": f.activation,
            "concepts": ", ".join(f.concepts),
            "explanation": f.explanation,
            "source": f.source or "",
        }
        for t in tokens
        for f in t.features
    ]
    st.caption(f"SAE {inspector.record.id} (layer {inspector.record.layer})")
    if not rows:
        st.info("No safety feature fires above the threshold on this prompt.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


body()
