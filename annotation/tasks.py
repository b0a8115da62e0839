"""Label Studio task data for features: a per-token activation heatmap and pre-annotations.

Every corpus token is html-escaped before it goes into the HyperText, so corpus text (which
includes jailbreak prompts written to break things) can never inject markup or script.
"""

from __future__ import annotations

import html
from typing import Any

from sqlmodel import Session, select

from annotation.label_interface import CONCEPTS, EXPLANATION, TO_NAME
from safesail.db.queries import chunked
from safesail.db.tables import Context, Explanation, Feature, SaeRecord
from safesail.features.examples import TOP, feature_examples
from safesail.reference.sample import N_LOW, N_TOP, window


def task_key(sae_id: str, feature: int) -> str:
    """The key a task carries in its data, so tasks can be matched to features on the server."""
    return f"{sae_id}:{feature}"


def heatmap_html(tokens: list[str], acts: list[float], scale: float) -> str:
    """One context as inline-styled spans, shaded by activation / scale, around its peak."""
    lo, hi = window(acts, len(tokens))
    parts = ["&hellip;"] if lo > 0 else []
    for token, act in zip(tokens[lo:hi], acts[lo:hi], strict=True):
        alpha = min(max(act / scale, 0.0), 1.0) if scale > 0 else 0.0
        text = html.escape(token, quote=True)
        if alpha > 0:
            parts.append(
                f'<span style="background:rgba(255,90,0,{alpha:.2f})" title="{act:.2f}">{text}</span>'
            )
        else:
            parts.append(f"<span>{text}</span>")
    if hi < len(tokens):
        parts.append("&hellip;")
    return "".join(parts)


def _block(title: str, rows: list[str]) -> str:
    body = "".join(
        '<div style="font-family:monospace;white-space:pre-wrap;padding:3px 0;'
        f'border-bottom:1px solid #eee">{row}</div>'
        for row in rows
    )
    return f'<div style="margin:6px 0"><b>{html.escape(title)}</b>{body}</div>'


def feature_html(session: Session, feature: Feature) -> str:
    """Top contexts then low-activation contrast contexts, each row led by its max activation."""
    examples = feature_examples(feature)
    top = [e for e in examples if e.kind == TOP][:N_TOP]
    low = [e for e in examples if 1 <= e.kind <= 3][:N_LOW]
    scale = feature.max_act or 1.0
    contexts = {
        c.text_id: c.tokens
        for c in session.exec(
            select(Context).where(Context.text_id.in_([e.text_id for e in top + low]))
        )
    }

    def rows(exs: list) -> list[str]:
        return [
            f"<b>{e.max_act:6.2f}</b>  "
            + heatmap_html(contexts[e.text_id], e.activations.tolist(), scale)
            for e in exs
            if e.text_id in contexts
        ]

    blocks = [_block("Top-activating contexts", rows(top))]
    if low:
        blocks.append(_block("Low-activation contexts (for contrast)", rows(low)))
    return "".join(blocks)


def prediction(
    concepts: list[str], text: str, model_version: str, score: float | None
) -> dict[str, Any]:
    """A Label Studio prediction (pre-annotation) in the project's result shape."""
    result: list[dict[str, Any]] = [
        {
            "from_name": CONCEPTS,
            "to_name": TO_NAME,
            "type": "choices",
            "value": {"choices": list(concepts)},
        }
    ]
    if text:
        result.append(
            {
                "from_name": EXPLANATION,
                "to_name": TO_NAME,
                "type": "textarea",
                "value": {"text": [text]},
            }
        )
    out: dict[str, Any] = {"model_version": model_version, "result": result}
    if score is not None:
        out["score"] = float(score)
    return out


def auto_predictions(session: Session, sae_id: str, features: list[int]) -> dict[int, list[dict]]:
    """Pre-annotations from automatic explanations already in the database (the explainer's
    latest per feature), read from the table so this room never imports the explainer."""
    latest = {  # a feature's rows all fall in one part: the latest wins per part
        row.feature: row
        for part in chunked(features)
        for row in session.exec(
            select(Explanation)
            .where(
                Explanation.sae_id == sae_id,
                Explanation.feature.in_(part),
                Explanation.source == "auto",
                Explanation.status != "failed",
            )
            .order_by(Explanation.created_at)
        )
    }
    return {
        f: [prediction(r.concepts, r.text, r.model_version or "explainer", r.probability)]
        for f, r in latest.items()
        if r.concepts
    }


def build_tasks(
    session: Session,
    sae_id: str,
    features: list[int],
    annotators_wanted: dict[int, int],
    predictions: dict[int, list[dict]],
    queue: dict[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One task per feature, in the order of `features` (features without examples are
    skipped: nothing to show). `queue` adds per-feature fields to the task data (the learner's
    queue position, score and strategy), so the order reaches Label Studio twice: as import
    order, which its default sequential sampling serves, and as a data column to sort by."""
    layer = session.get(SaeRecord, sae_id).layer
    rows = {
        f.index: f
        for part in chunked(features)
        for f in session.exec(
            select(Feature).where(Feature.sae_id == sae_id, Feature.index.in_(part))
        )
    }
    tasks = []
    for index in features:
        feature = rows.get(index)
        if feature is None or feature.examples is None:
            continue
        summary = (
            f"fires on {feature.firing_rate:.3%} of tokens; max activation {feature.max_act:.2f}; "
            f"median when firing {feature.quantiles.get('0.5', 0.0):.2f}"
        )
        tasks.append(
            {
                "data": {
                    "safesail_key": task_key(sae_id, index),
                    "sae_id": sae_id,
                    "feature": index,
                    "layer": layer,
                    "summary": summary,
                    "html": feature_html(session, feature),
                    "annotators_wanted": annotators_wanted.get(index, 1),
                    **(queue or {}).get(index, {}),
                },
                "predictions": predictions.get(index, []),
            }
        )
    return tasks
