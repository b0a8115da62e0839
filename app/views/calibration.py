"""Explainer calibration: what the trust-or-escalate cascade guarantees per stage (accepted,
target, delta, the bound reached, cost), its reliability per stage, the in-sample curve the
thresholds are tested on, and the cost per accepted label."""

import altair as alt
import pandas as pd
import streamlit as st

from app import common

st.header("Explainer calibration")


def body() -> None:
    if not common.ready():
        return
    cal = common.query("calibration_report")
    if cal is None:
        common.need("calibration", "the explainer after some human labels (safesail demo)")
        return
    figures = {
        "target": f"{cal.target:.2f}",
        "delta": f"{cal.delta:.2f}",
        "accepted": f"{cal.accepted} of {cal.routed}",
        "safety accepted": f"{cal.accepted_safety}",
    }
    for col, (name, value) in zip(st.columns(4), figures.items(), strict=True):
        col.metric(name, value)
    st.caption(
        f"Guaranteed: with probability at least {1 - cal.delta:.2f}, at least "
        f"{cal.target:.0%} of the accepted features agree with the experts (fixed-sequence "
        f"testing per stage on the gold that reached it, delta split over the stages; "
        f"{cal.n_gold} gold features). A benign or uninterpretable acceptance is not safety "
        f"coverage. Stale acceptances (earlier model, prompt or calibration): {cal.stale}; "
        f"queued for people: {cal.queued}." + (f" {cal.error}" if cal.error else "")
    )
    st.subheader("Cascade stages")
    st.dataframe(common.query("cascade_stages"), hide_index=True)
    left, right = st.columns(2)
    with left:
        st.subheader("Reliability per stage (gold)")
        rel = common.query("reliability")
        if rel.empty:
            st.caption("No reliability bins yet.")
        else:
            diagonal = (
                alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]}))
                .mark_line(strokeDash=[4, 4], color="gray")
                .encode(x="x:Q", y="y:Q")
            )
            points = (
                alt.Chart(rel)
                .mark_line(point=True)
                .encode(
                    x=alt.X(
                        "predicted:Q", title="predicted P(agrees)", scale=alt.Scale(domain=[0, 1])
                    ),
                    y=alt.Y(
                        "observed:Q", title="observed agreement", scale=alt.Scale(domain=[0, 1])
                    ),
                    color="stage:N",
                    tooltip=list(rel.columns),
                )
            )
            st.altair_chart(diagonal + points, width="stretch")
    with right:
        st.subheader("Gold kept vs agreement (in-sample)")
        curve = common.query("coverage_curve")
        if curve.empty:
            st.caption("No coverage curve yet.")
        else:
            line = (
                alt.Chart(curve)
                .mark_line(point=True)
                .encode(
                    x=alt.X("coverage:Q", title="share auto-accepted"),
                    y=alt.Y(
                        "agreement:Q", title="agreement with experts", scale=alt.Scale(zero=False)
                    ),
                    tooltip=["coverage", "agreement"],
                )
            )
            target = pd.DataFrame({"agreement": [cal.target]})
            rule = alt.Chart(target).mark_rule(color="red").encode(y="agreement:Q")
            st.altair_chart(alt.layer(line, rule), width="stretch")
            st.caption(
                "The gold answers the thresholds are tested on, as a threshold on the stage "
                "confidence moves: in-sample, not itself a guarantee (see the bound above)."
            )
    st.subheader("Tokens and $ per accepted feature")
    per = common.query("cost_per_accepted")
    cost = common.query("llm_cost")
    if per is None:
        st.caption("No LLM calls yet.")
        return
    c = st.columns(3)
    c[0].metric("auto-accepted features", per["accepted"])
    c[1].metric("tokens / accepted", f"{per['tokens']:,.0f}")
    c[2].metric("$ / accepted", f"${per['cost_usd']:.4f}")
    st.altair_chart(
        alt.Chart(cost).mark_bar().encode(x="tokens:Q", y="step:N", color="model:N"),
        width="stretch",
    )


common.live(body)
