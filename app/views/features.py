"""Feature browser: search safety features by text, concept and score; each with its token
heatmaps, explanations, scores, provenance and annotations."""

import altair as alt
import streamlit as st

from app import common
from app.browse import feature_view, heatmap_html

st.header("Feature browser")


def body() -> None:
    if not common.ready():
        return
    eng = common.engine()
    saes = [s["id"] for s in common.query("sae_list")]
    preset_sae, preset_feature = st.session_state.get("browse", (None, None))
    default_sae = preset_sae or common.query("selected_sae")
    sae = st.sidebar.selectbox(
        "SAE", saes, index=saes.index(default_sae) if default_sae in saes else 0
    )
    table = common.query("feature_table", sae)
    if table.empty:
        common.need("safety candidates or labels for this SAE", "safesail triage")
        return
    c1, c2, c3 = st.columns([2, 2, 1])
    text = c1.text_input("search explanations and top tokens")
    concepts = sorted(
        set(table["concept"].dropna()) | {c for s in table["label"] for c in s.split(", ") if c}
    )
    chosen = c2.multiselect("concept", concepts)
    floor = c3.slider("min safety score", 0.0, float(max(table["safety_score"].max(), 0.01)), 0.0)
    hits = table[table["safety_score"] >= floor]
    if text:
        needle = text.lower()
        hits = hits[
            hits["explanation"].str.lower().str.contains(needle, regex=False)
            | hits["top_tokens"].str.lower().str.contains(needle, regex=False)
        ]
    if chosen:
        hits = hits[
            hits["concept"].isin(chosen)
            | hits["label"].apply(lambda s: bool(set(s.split(", ")) & set(chosen)))
        ]
    st.caption(f"{len(hits)} of {len(table)} features")
    st.altair_chart(
        alt.Chart(hits)
        .mark_circle(size=60)
        .encode(
            x=alt.X("auroc:Q", scale=alt.Scale(zero=False)),
            y="safety_score:Q",
            color="concept:N",
            tooltip=["feature", "concept", "label", "explanation", "top_tokens"],
        ),
        width="stretch",
    )
    st.dataframe(hits, hide_index=True, width="stretch")
    if hits.empty:
        return
    options = hits["feature"].tolist()
    start = options.index(preset_feature) if preset_feature in options else 0
    index = st.selectbox("feature", options, index=start)
    view = feature_view(eng, sae, int(index))
    if view is None:
        return
    f = view.feature
    st.subheader(f"Feature {f.index} · {f.concept} · safety score {f.safety_score or 0:.2f}")
    if f.triage_reason:  # plain text: the reason quotes tokens, which markdown would render
        st.text(f"Not a safety candidate: {f.triage_reason}")
    m = st.columns(4)
    m[0].metric("fires on tokens", f"{f.firing_rate:.2%}")
    m[1].metric("max activation", f"{f.max_act:.2f}")
    m[2].metric("AUROC", f"{f.auroc:.2f}" if f.auroc is not None else "-")
    m[3].metric("precision", f"{f.precision:.2f}" if f.precision is not None else "-")
    st.markdown("**Top contexts** (red = activation relative to the feature's max)")
    for max_act, tokens, acts in view.contexts:
        st.markdown(
            f"<small>{max_act:.2f}</small> " + heatmap_html(tokens, acts, f.max_act),
            unsafe_allow_html=True,
        )
    st.markdown("**Explanations** (provenance: who / which model, scores)")
    if view.explanations.empty:
        st.caption("No explanation yet.")
    else:
        st.dataframe(view.explanations, hide_index=True, width="stretch")
    _causal(eng, sae, int(index))
    st.markdown("**Annotations**")
    if view.annotations.empty:
        st.caption("No annotations yet.")
    else:
        st.dataframe(view.annotations, hide_index=True, width="stretch")


def _causal(eng, sae: str, index: int) -> None:
    """The causal check: change in refusal propensity, and in P(concept) of the label's
    concepts, when the feature is steered / ablated."""
    from sqlmodel import Session

    from safesail.causal.score import causal_scores

    st.markdown("**Causal check** (change in P(refusal opening) on held-out prompts)")
    with Session(eng) as session:
        rows = causal_scores(session, sae, index)
    if not rows:
        st.caption(f"Not checked yet: `safesail causal --feature {index}` (human safety labels).")
        return
    for r in rows:
        low, high = r["interval"] or (float("nan"), float("nan"))
        ablate = r["ablate"] or {}
        steer = ", ".join(f"α={s['alpha']:g}: {s['delta']:+.4f}" for s in r["steer"])
        st.markdown(
            f"`causal_refusal_delta` **{r['value']:+.4f}** [{low:+.4f}, {high:+.4f}] · "
            f"ablated {ablate.get('delta', float('nan')):+.4f} · steered {steer} · "
            f"{r['prompts']} prompts · {r['model']} · {r['version']}"
        )
        for concept, c in r["concept"].items():
            if c.get("probe") is None:
                st.caption(f"P({concept}): no probe ({c.get('why', '')})")
                continue
            top = max(c["steer"], key=lambda s: s["alpha"])
            shifts = ", ".join(f"α={s['alpha']:g}: {s['delta']:+.4f}" for s in c["steer"])
            st.markdown(
                f"P({concept}) on the same prompts: base {c['base']['all']:.3f} · steered "
                f"α={top['alpha']:g} **{top['delta']:+.4f}** [{top['low']:+.4f}, "
                f"{top['high']:+.4f}] ({shifts}) · ablated {c['ablate']['delta']:+.4f} · probe at "
                f"layer {c['probe']['layer']}, balanced accuracy {c['probe']['accuracy']:.2f}"
            )
            if specific := c.get("specific"):
                top = max(specific["steer"], key=lambda s: s["alpha"])
                st.caption(
                    f"beyond the other {len(specific['versus'])} concepts' probes: steered "
                    f"α={top['alpha']:g} {top['delta']:+.4f} [{top['low']:+.4f}, "
                    f"{top['high']:+.4f}] (an edit that raises every probe alike is not specific)"
                )


body()
