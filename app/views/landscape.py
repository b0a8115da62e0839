"""Landscape: safety features per concept and layer / SAE, like the Safe-SAIL database view."""

import altair as alt
import streamlit as st

from app import common

st.header("Landscape")


def body() -> None:
    if not common.ready():
        return
    land = common.query("landscape")
    if land.empty:
        common.need("safety features", "safesail triage")
        return
    st.caption("Safety features per concept and SAE (rows ordered by layer). Click a cell.")
    pick = alt.selection_point(fields=["sae", "concept"], name="cell")
    chart = (
        alt.Chart(land)
        .mark_rect()
        .encode(
            x=alt.X("concept:N", title=None),
            y=alt.Y("sae_label:N", sort=alt.SortField("layer"), title="layer · SAE"),
            color=alt.Color("features:Q", scale=alt.Scale(scheme="reds")),
            tooltip=["sae", "layer", "concept", "features"],
        )
        .add_params(pick)
    )
    text = (
        alt.Chart(land)
        .mark_text()
        .encode(
            x="concept:N", y=alt.Y("sae_label:N", sort=alt.SortField("layer")), text="features:Q"
        )
    )
    event = st.altair_chart(chart + text, width="stretch", on_select="rerun", key="landscape")
    chosen = (event or {}).get("selection", {}).get("cell") or []
    saes = list(dict.fromkeys(land["sae"]))
    concepts = sorted(set(land["concept"]))
    default = chosen[0] if chosen else {}
    c1, c2 = st.columns(2)
    sae = c1.selectbox("SAE", saes, index=saes.index(default.get("sae", saes[0])))
    concept = c2.selectbox(
        "concept", concepts, index=concepts.index(default.get("concept", concepts[0]))
    )
    table = common.query("feature_table", sae)
    hits = table[(table["concept"] == concept) | table["label"].str.contains(concept)]
    st.subheader(f"{len(hits)} {concept} feature(s) in {sae}")
    st.dataframe(
        hits[["feature", "safety_score", "label", "explanation", "top_tokens"]],
        hide_index=True,
        width="stretch",
    )
    if len(hits):
        feature = st.selectbox("open in the feature browser", hits["feature"].tolist())
        if st.button("Open feature"):
            st.session_state["browse"] = (sae, int(feature))
            st.switch_page(common.page_path("features.py"))


common.live(body)
