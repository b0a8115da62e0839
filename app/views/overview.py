"""Overview: coverage of the safety candidates per concept, labels per day, cost, what's left."""

import altair as alt
import streamlit as st

from app import common
from safesail.db.queries import COVERAGE_STATES

st.header("Overview")


def body() -> None:
    if not common.ready():
        return
    ranking = common.query("sae_ranking")
    if not ranking.empty and ranking["score"].notna().any():
        st.subheader("SAE selection")
        st.dataframe(ranking, hide_index=True)
        st.caption(
            "pre_index: Safe-SAIL's pre-explanation index, mean I_CDF over concepts on "
            "contrastive pairs (it chooses, unless `select --rank-by score`), and l0_t its L0 at "
            "threshold; score: safesail's composite of specificity and probe F1; l0, fve, mse, "
            "ce_loss_score, dead/dense_fraction: SAEBench core metrics; candidates: what triage "
            "found. rank / pre_rank: order by score / by pre_index. The Landscape page shows "
            "the chosen configuration across layers."
        )
    cov = common.query("coverage")
    if cov.empty:
        common.need("safety candidates", "safesail triage")
        return
    total = int(cov["features"].sum())
    by_state = cov.groupby("state")["features"].sum()
    cols = st.columns(4)
    for col, state in zip(cols, COVERAGE_STATES, strict=True):
        col.metric(f"{state} ({by_state.get(state, 0) / total:.0%})", int(by_state.get(state, 0)))
    st.subheader("Coverage of safety candidates per concept")
    st.altair_chart(
        alt.Chart(cov)
        .mark_bar()
        .encode(
            x=alt.X("features:Q", title="safety candidates"),
            y=alt.Y("concept:N", sort="-x"),
            color=alt.Color("state:N", scale=alt.Scale(domain=list(COVERAGE_STATES))),
            order=alt.Order("state_order:Q"),
            tooltip=["concept", "state", "features"],
        )
        .transform_calculate(
            state_order=" + ".join(
                f"(datum.state == '{s}') * {i}" for i, s in enumerate(COVERAGE_STATES)
            )
        ),
        width="stretch",
    )
    cal = common.query("calibration_report")
    if cal is not None:
        st.subheader("Explainer cascade")
        st.dataframe(common.query("cascade_stages"), hide_index=True)
        st.caption(
            f"{cal.accepted} of {cal.routed} routed features accepted automatically "
            f"({cal.accepted_safety} as a safety concept), with probability at least "
            f"{1 - cal.delta:.2f} at agreement at least {cal.target:.0%} with the experts; "
            f"{cal.queued} go to people, {cal.stale} stale acceptances no longer count."
        )
    left, right = st.columns(2)
    with left:
        st.subheader("Labels per day")
        per_day = common.query("labels_per_day")
        if per_day.empty:
            common.need("accepted labels", "the labeling loop or the explainer (safesail demo)")
        else:
            st.altair_chart(
                alt.Chart(per_day)
                .mark_bar()
                .encode(
                    x="day:O", y="labels:Q", color="source:N", tooltip=["day", "source", "labels"]
                ),
                width="stretch",
            )
    with right:
        st.subheader("LLM cost so far")
        cost = common.query("llm_cost")
        if cost.empty:
            st.caption("No LLM calls yet.")
        else:
            c1, c2, c3 = st.columns(3)
            c1.metric("calls", int(cost["calls"].sum()))
            c2.metric("tokens", f"{int(cost['tokens'].sum()):,}")
            c3.metric("cost", f"${cost['cost_usd'].sum():.2f}")
            st.altair_chart(
                alt.Chart(cost)
                .mark_bar()
                .encode(x="tokens:Q", y="step:N", color="model:N", tooltip=list(cost.columns)),
                width="stretch",
            )
    st.subheader("Labels still needed")
    est = common.query("labels_needed")
    c1, c2, c3 = st.columns(3)
    c1.metric("human labels still needed (estimate)", est.human_needed)
    c2.metric("unexplained candidates", est.unexplained)
    c3.metric(
        f"labels for learner F1 {est.target_f1:.2f}",
        "-" if est.to_target is None else est.to_target,
    )
    rate = "no automatic labels yet" if est.auto_rate is None else f"{est.auto_rate:.0%}"
    st.caption(
        f"Queued for humans ({est.queued}) plus the unexplained candidates the explainer would "
        f"not get accepted at its current acceptance rate ({rate}); the learner figure "
        "extrapolates its held-out F1 curve (F1 = a + b·ln labels)."
    )


common.live(body)
