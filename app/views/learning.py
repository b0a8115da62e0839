"""Active learning: the learner's curve, the label distribution, annotator agreement."""

import altair as alt
import streamlit as st

from app import common

st.header("Active learning")


def body() -> None:
    if not common.ready():
        return
    learner = common.query("learner_state")
    kappa = common.query("kappa")
    if learner is None and kappa.empty:
        common.need("labels or learner", "the labeling loop (safesail demo --simulate-annotators)")
        return
    if learner is not None:
        c = st.columns(3)
        c[0].metric("labels", learner.n_labels)
        f1 = learner.macro_f1_heldout
        c[1].metric("held-out macro-F1", f"{f1:.3f}" if f1 is not None else "-")
        c[2].metric("strategy", learner.strategy or "-")
    left, right = st.columns(2)
    with left:
        st.subheader("Learning curve")
        curve = common.query("learner_curve")
        if curve.empty:
            st.caption("No learning curve yet.")
        else:
            st.altair_chart(
                alt.Chart(curve)
                .mark_line(point=True)
                .encode(
                    x=alt.X("labels:Q", title="labels"),
                    y=alt.Y("f1:Q", title="held-out macro-F1", scale=alt.Scale(domain=[0, 1])),
                    tooltip=["labels", "f1"],
                ),
                width="stretch",
            )
    with right:
        st.subheader("Label distribution")
        dist = common.query("label_distribution")
        if dist.empty:
            st.caption("No labels yet.")
        else:
            st.altair_chart(
                alt.Chart(dist).mark_bar().encode(x="features:Q", y=alt.Y("label:N", sort="-x")),
                width="stretch",
            )
    st.subheader("Annotator agreement (kappa per concept)")
    if kappa.empty:
        st.caption("No overlapping annotations yet.")
    else:
        st.altair_chart(
            alt.Chart(kappa)
            .mark_bar()
            .encode(
                x=alt.X("kappa:Q", scale=alt.Scale(domain=[-1, 1])),
                y=alt.Y("concept:N", sort="-x"),
                color=alt.Color("kappa:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1])),
                tooltip=["concept", "kappa"],
            ),
            width="stretch",
        )


common.live(body)
