"""The corpus evidence line of our prompt: it reflects the concept tags of the texts behind the
explain split (planted here), shortlists the concepts, and never carries the feature's own gold
label (the yardstick must not see its answer)."""

from __future__ import annotations

from sqlmodel import Session, select

from safesail.db.tables import CorpusText, Explanation, Feature
from safesail.explainer.config import ExplainConfig
from safesail.explainer.explainers import (
    base_rates,
    concept_choices,
    corpus_evidence,
    explain_messages,
)
from safesail.explainer.materials import feature_evidence
from safesail.explainer.materials import materials as _materials
from safesail.explainer.simulate import seed_gold
from safesail.features.examples import TOP, feature_examples
from tests.conftest import copy_workspace


def test_evidence_counts_each_text_once_against_base_rates():
    tags = {1: ["jailbreak"], 2: ["jailbreak", "privacy"], 3: ["benign"], 4: ["benign"]}
    evidence = corpus_evidence([1, 2, 2, 3], tags, base_rates(tags))
    assert evidence.n_texts == 3
    assert evidence.shares == {"jailbreak": 2 / 3, "privacy": 1 / 3, "benign": 1 / 3}
    assert evidence.leading() == "jailbreak"  # none enriched 2x: the most frequent tag leads
    assert evidence.line().startswith("Corpus tags of its 3 top texts: jailbreak 67% (base 50%)")
    thin = corpus_evidence([1, 2], tags, base_rates(tags))
    assert thin.leading() is None  # two texts are anecdotes
    labels = ["privacy", "jailbreak", "fraud", "benign", "uninterpretable"]
    assert evidence.choices(labels) == ["privacy", "jailbreak", "benign", "uninterpretable"]


def test_prompt_evidence_reflects_planted_tags_and_never_the_gold_label(triaged_ws, tmp_path, lm):
    ws = copy_workspace(triaged_ws, tmp_path / "ws", lm)
    sae = ws.selected_sae
    config = ExplainConfig()
    with Session(ws.engine) as session:
        rows = session.exec(
            select(Feature).where(Feature.sae_id == sae, Feature.examples.is_not(None))
        ).all()
    feature = max(rows, key=lambda r: sum(e.kind == TOP for e in feature_examples(r)))
    others = [r.index for r in rows if r.index != feature.index][:3]
    top = [e.text_id for e in feature_examples(feature) if e.kind == TOP]
    split = min(config.max_explain_split, max(1, len(top) // 2))
    shown, held = set(top[:split]), set(top[split:]) - set(top[:split])
    assert len(shown) >= 2
    with Session(ws.engine) as session:  # plant: shown texts are weapons, held-out ones fraud
        for text in session.exec(select(CorpusText).where(CorpusText.id.in_(shown | held))):
            text.concepts = ["weapons"] if text.id in shown else ["fraud"]
            session.add(text)
        session.commit()
    seed_gold(ws.engine, sae, others)
    with Session(ws.engine) as session:  # the feature's own gold label: a concept nowhere shown
        session.add(
            Explanation(
                sae_id=sae,
                feature=feature.index,
                source="human",
                status="accepted",
                concepts=["self_harm"],
                text="GOLDMARK self harm",
                confidence=1.0,
                author="expert",
            )
        )
        session.commit()
        evidence = feature_evidence(session, [feature], config)[feature.index]
    assert evidence.shares["weapons"] == 1.0 and "fraud" not in evidence.shares
    leading = "weapons" if len(shown) >= 3 else None  # tiny corpus: maybe too few to point
    assert evidence.leading() == leading
    labels = ws.taxonomy.label_values()
    material = _materials(ws, sae, [feature.index, *others], config, list(ws.taxonomy.concepts))
    assert material[feature.index].evidence == evidence
    messages = explain_messages(material[feature.index].explain, labels, config, [], evidence)
    asked = messages[-1]["content"]
    assert f"Corpus tags of its {len(shown)} top texts: weapons 100% (base " in asked
    assert "self_harm" not in asked and "fraud" not in asked
    assert all("GOLDMARK" not in m["content"] for m in messages)
    assert "self_harm" not in concept_choices(labels, config, evidence)
    baseline = ExplainConfig(prompting="baseline")
    plain = explain_messages(material[feature.index].explain, labels, baseline, [], evidence)
    assert all("Corpus tags" not in m["content"] for m in plain)  # the baseline stays as it was
    assert concept_choices(labels, baseline, evidence) == labels
