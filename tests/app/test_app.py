"""The progress view: every page under Streamlit's AppTest on an empty and on a populated
workspace, and the figures' data on a workspace with known labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, select
from streamlit.testing.v1 import AppTest

from app import browse, frames
from exports.synthetic import populate
from safesail.db.contracts import LearnerState, read_engine
from safesail.db.tables import Explanation, Feature, session_scope
from tests.conftest import copy_workspace

VIEWS = Path(__file__).parents[2] / "app" / "views"
PAGES = {
    "overview.py": ("Overview", 2),
    "landscape.py": ("Landscape", 1),
    "features.py": ("Feature browser", 1),
    "learning.py": ("Active learning", 3),
    "calibration.py": ("Explainer calibration", 3),
    "inspector.py": ("Inspector", 0),
}
"""Page file -> (header, charts it shows on a populated workspace)."""


@pytest.fixture(scope="module")
def populated_ws(triaged_ws, tmp_path_factory, lm):
    ws = copy_workspace(triaged_ws, tmp_path_factory.mktemp("app") / "ws", lm)
    with Session(ws.engine) as session:
        candidates = session.exec(
            select(Feature.index).where(Feature.sae_id == ws.selected_sae, Feature.candidate)
        ).all()
    features = sorted(set(candidates) | set(range(30)))  # candidates and some labeled others
    populate(ws.engine, ws.selected_sae, ws.taxonomy.safety_concepts(), features=features)
    return ws


def _run(page: str, workspace: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("SAFESAIL_WORKSPACE", str(workspace))
    monkeypatch.delenv("SAFESAIL_DB_URL", raising=False)
    return AppTest.from_file(str(VIEWS / page), default_timeout=60).run()


@pytest.mark.parametrize("page", list(PAGES))
def test_page_on_empty_workspace(page, tmp_path, monkeypatch, trained_ws):
    for workspace in (tmp_path / "missing", trained_ws.config.workspace):  # no DB; no selection
        at = _run(page, workspace, monkeypatch)
        assert not at.exception
        assert [h.value for h in at.header] == [PAGES[page][0]]
        assert any("Run `safesail" in i.value for i in at.info)
        assert not at.get("vega_lite_chart")


@pytest.mark.parametrize("page", list(PAGES))
def test_page_on_populated_workspace(page, monkeypatch, populated_ws):
    at = _run(page, populated_ws.config.workspace, monkeypatch)
    assert not at.exception
    assert [h.value for h in at.header] == [PAGES[page][0]]
    assert not at.info
    assert len(at.get("vega_lite_chart")) >= PAGES[page][1]


def test_navigation_and_feature_browser(monkeypatch, populated_ws):
    monkeypatch.setenv("SAFESAIL_WORKSPACE", str(populated_ws.config.workspace))
    at = AppTest.from_file(str(VIEWS.parent / "main.py"), default_timeout=60).run()
    assert not at.exception and at.header[0].value == "Overview"
    at.switch_page("views/features.py").run()
    assert not at.exception and at.header[0].value == "Feature browser"
    table = browse.feature_table(populated_ws.engine, populated_ws.selected_sae)
    labeled = table[table["source"] == "human"].iloc[0]
    at.text_input[0].input(labeled["explanation"]).run()
    feature_box = next(s for s in at.selectbox if s.label == "feature")
    assert feature_box.options == [str(labeled["feature"])]
    assert f"Feature {labeled['feature']}" in at.subheader[0].value
    html = "".join(m.value for m in at.markdown)
    assert "<span" in html and "rgba(220,38,38" in html  # token heatmaps
    assert len(at.dataframe) == 3  # features, explanations, annotations


def test_coverage_and_estimate(populated_ws):
    ws = populated_ws
    cov = frames.coverage(ws.engine)
    by_state = cov.groupby("state")["features"].sum()
    assert by_state.sum() == ws.status()["safety_candidates"]
    with Session(ws.engine) as session:
        candidates = set(
            session.exec(
                select(Feature.index).where(Feature.sae_id == ws.selected_sae, Feature.candidate)
            )
        )
        labels = session.exec(
            select(Explanation.feature, Explanation.source, Explanation.status)
        ).all()
    human = {f for f, src, st in labels if src == "human" and st == "accepted"} & candidates
    auto = {f for f, src, st in labels if src == "auto" and st == "accepted"} & candidates
    assert by_state.get("human-labeled", 0) == len(human)
    assert by_state.get("auto-accepted", 0) == len(auto - human)
    est = frames.labels_needed(ws.engine)
    queued = int(by_state.get("queued for humans", 0))
    assert est.queued == queued and est.human_needed >= queued
    # independently: least squares of F1 on ln(labels) over the learner's curve (its input),
    # solved for the target and rounded up, minus the labels it already has
    import math

    points = read_engine(ws.engine, LearnerState).curve
    curve = [(p.n_labels, p.macro_f1) for p in points if p.macro_f1 is not None]
    xs, ys = [math.log(n) for n, _ in curve], [f for _, f in curve]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    need = math.ceil(math.exp((est.target_f1 - (my - slope * mx)) / slope))
    assert curve[-1][1] < est.target_f1 and slope > 0  # the synthetic curve is not there yet
    assert est.to_target == need - max(n for n, _ in curve) and est.to_target > 0


def test_labels_to_target_known_curves():
    import math

    import pandas as pd

    # F1 = 0.1 + 0.1 ln(n) exactly: reaches 0.8 at n = e^7 = 1096.6 -> 1097 labels, 40 there
    exact = pd.DataFrame(
        {"labels": [10, 20, 40], "f1": [0.1 + 0.1 * math.log(n) for n in (10, 20, 40)]}
    )
    assert frames._to_target(exact, 0.8) == 1097 - 40
    reached = pd.DataFrame({"labels": [10, 20, 40], "f1": [0.5, 0.7, 0.85]})
    assert frames._to_target(reached, 0.8) == 0
    falling = pd.DataFrame({"labels": [10, 20, 40], "f1": [0.6, 0.5, 0.4]})
    assert frames._to_target(falling, 0.8) is None
    assert frames._to_target(exact.head(2), 0.8) is None  # too few points


def test_heatmap_escapes_tokens():
    import numpy as np

    out = browse.heatmap_html(["<script>", " &x"], np.array([2.0, 0.0]), 2.0)
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;x" in out
    assert "rgba(220,38,38,1.00)" in out and "rgba(220,38,38,0.00)" in out


def test_landscape_counts_labeled_safety_features(populated_ws, tmp_path, lm):
    ws = copy_workspace(populated_ws, tmp_path / "ws", lm)
    before = browse.landscape(ws.engine)
    with session_scope(ws.engine) as session:  # a non-candidate labeled as weapons by a human
        plain = session.exec(
            select(Feature.index)
            .where(Feature.sae_id == ws.selected_sae, ~Feature.candidate)
            .order_by(Feature.index.desc())  # beyond the features populate labeled
        ).first()
        session.add(
            Explanation(
                sae_id=ws.selected_sae,
                feature=plain,
                source="human",
                status="accepted",
                concepts=["weapons"],
            )
        )
    after = browse.landscape(ws.engine)
    weapons = after[(after.sae == ws.selected_sae) & (after.concept == "weapons")]["features"]
    had = before[(before.sae == ws.selected_sae) & (before.concept == "weapons")]["features"]
    assert int(weapons.sum()) == int(had.sum()) + 1


def test_inspector_page_inspects_a_prompt(monkeypatch, populated_ws):
    at = _run("inspector.py", populated_ws.config.workspace, monkeypatch)
    at.text_area[0].input("He grabbed a knife and hacked the bank server.").run()
    at.slider[0].set_value(0.0).run()
    at.button[0].click().run(timeout=180)
    assert not at.exception
    html = "".join(m.value for m in at.markdown)
    assert "knife" in html and "<span" in html
    assert at.dataframe and {"token", "feature", "normalised", "explanation"} <= set(
        at.dataframe[0].value.columns
    )


def test_coverage_curve_uses_held_out_probability_and_verdict(tmp_path):
    """The calibration page's curve: over features with a gold label, the share kept and their
    agreement as the threshold on the held-out P(agree) rises; the explainer's own verdict
    (concept and text) wins over a bare concept match."""
    from safesail.db.tables import open_db

    engine = open_db(f"sqlite:///{tmp_path / 'c.db'}")
    autos = [  # (feature, probability, concepts, explainer's verdict)
        (1, 0.9, ["violence"], True),
        (2, 0.7, ["violence"], False),  # same concept, but the text did not match
        (3, 0.4, ["fraud"], False),
        (4, 0.2, ["violence"], None),  # no verdict recorded: exact concept match decides
    ]
    with session_scope(engine) as session:
        for f, p, concepts, verdict in autos:
            session.add(
                Explanation(
                    sae_id="s", feature=f, source="human", status="accepted", concepts=["violence"]
                )
            )
            details = None if verdict is None else {"yardstick": True, "agrees": verdict}
            session.add(
                Explanation(
                    sae_id="s",
                    feature=f,
                    source="auto",
                    status="queued",
                    concepts=concepts,
                    probability=p,
                    details=details,
                )
            )
        session.add(  # no gold label: not on the curve
            Explanation(
                sae_id="s",
                feature=9,
                source="auto",
                status="queued",
                concepts=["x"],
                probability=0.95,
            )
        )
    curve = frames.coverage_curve(engine).set_index("threshold")
    assert list(curve.index) == [0.2, 0.4, 0.7, 0.9]
    assert curve.loc[0.9, "coverage"] == 0.25 and curve.loc[0.9, "agreement"] == 1.0
    assert curve.loc[0.7, "agreement"] == 0.5
    assert curve.loc[0.2, "coverage"] == 1.0 and curve.loc[0.2, "agreement"] == 0.5


def test_feature_page_shows_the_causal_check(monkeypatch, populated_ws, tmp_path, lm):
    """A feature's causal Score (refusal and P(concept) effects, as `run_causal` stores them)
    is on its page; a concept without a probe says why."""
    from safesail.causal.config import CausalConfig
    from safesail.causal.prompts import PromptSet
    from safesail.causal.score import NO_PROBE, CausalResult, score_row

    ws = copy_workspace(populated_ws, tmp_path / "ws", lm)
    table = browse.feature_table(ws.engine, ws.selected_sae)
    labeled = table[table["source"] == "human"].iloc[0]
    effect = {"delta": 0.25, "low": 0.125, "high": 0.375, "harmful": 0.5, "benign": 0.0}
    result = CausalResult(
        value=0.25,
        interval=(0.125, 0.375),
        ablate=effect,
        steer=[{"alpha": 8.0, **effect}],
        base={"all": 0.5, "harmful": 0.75, "benign": 0.25},
        concept={
            "violence": {
                "probe": {"layer": 29, "accuracy": 0.9, "n_positive": 16, "n_negative": 40},
                "base": {"all": 0.5, "harmful": 0.75, "benign": 0.25},
                "ablate": effect,
                "steer": [{"alpha": 8.0, **effect}],
                "specific": {
                    "versus": ["cybercrime", "hate_harassment"],
                    "ablate": effect,
                    "steer": [{"alpha": 8.0, **effect, "delta": 0.0625}],
                },
            },
            "fraud": {"probe": None, "why": NO_PROBE},
        },
        seconds=1.0,
    )
    prompts = PromptSet(("a", "b"), ("harmful", "benign"), harmful_in_corpus=0)
    with session_scope(ws.engine) as session:
        explanation = session.exec(
            select(Explanation).where(
                Explanation.sae_id == ws.selected_sae,
                Explanation.feature == int(labeled["feature"]),
                Explanation.source == "human",
            )
        ).first()
        session.add(score_row(explanation.id, result, prompts, CausalConfig(), lm.name))
    monkeypatch.setenv("SAFESAIL_WORKSPACE", str(ws.config.workspace))
    at = AppTest.from_file(str(VIEWS.parent / "main.py"), default_timeout=60).run()
    at.switch_page("views/features.py").run()
    at.text_input[0].input(labeled["explanation"]).run()
    assert not at.exception
    shown = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "`causal_refusal_delta` **+0.2500** [+0.1250, +0.3750]" in shown
    assert "P(violence) on the same prompts: base 0.500" in shown and "**+0.2500**" in shown
    assert f"P(fraud): no probe ({NO_PROBE})" in shown
    assert "beyond the other 2 concepts' probes: steered α=8 +0.0625 [+0.1250, +0.3750]" in shown
