"""`safesail explain`: explain the selected SAE's unlabeled safety candidates (and the gold-
labeled features, the yardstick), score them on held-out contexts, calibrate against the
experts, accept what is proven and queue the rest for humans.

Resumable: each feature's explanation and scores are written in one transaction, features
already explained with the same model and prompt version are skipped, and every LLM request is
cached. Rerunning after new labels re-calibrates and re-routes without new explaining calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlmodel import Session, select
from tqdm.auto import tqdm

from safesail.collect import TOP, feature_examples, text_max_matrix
from safesail.errors import SafesailError
from safesail.explainer.calibration import (
    SIGNALS,
    Calibration,
    fit_calibration,
    plot_reliability,
    signal_matrix,
)
from safesail.explainer.clients import LlmClient
from safesail.explainer.config import ExplainConfig, LlmConfig
from safesail.explainer.explainers import (
    Evidence,
    ExplanationAnswer,
    GoldShot,
    Shown,
    base_rates,
    concept_choices,
    corpus_evidence,
    explain_messages,
    explanation_schema,
    fired_tokens,
    nearest_shots,
    segment,
)
from safesail.explainer.scorers import HeldOut, ScoreResult, score_explanation, text_similarity
from safesail.storage import (
    Context,
    Explanation,
    Feature,
    Score,
    corpus_concepts,
    get_meta,
    human_labels,
    session_scope,
    set_meta,
)
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

NEIGHBOURS = 3
"""Nearest gold features whose labels the neighbours_agree signal compares with."""


class Gold(NamedTuple):
    """A human gold label (accepted, adjudicated)."""

    concepts: list[str]
    text: str
    confidence: float | None


class Material(NamedTuple):
    """What one feature is explained from and scored on."""

    feature: int
    vector: np.ndarray
    explain: list[Shown]
    held: HeldOut
    evidence: Evidence


class Outcome(NamedTuple):
    """One feature's explanation (None if it failed) and scores."""

    feature: int
    answer: ExplanationAnswer | None
    reason: str | None
    scores: list[ScoreResult]


class ExplainReport(NamedTuple):
    """What a run did, for the CLI and the benchmark."""

    explained: int
    failed: int
    accepted: int
    queued: int
    calibration: dict[str, Any]


@contextmanager
def endpoint(ws: Any, config: LlmConfig, progress: bool = True) -> Iterator[LlmClient]:
    """A client of the configured endpoint, or of the embedded server (started here, and
    stopped again if it was not already running; its death is reported as such)."""
    from safesail.explainer.server import EmbeddedServer

    if (url := config.resolved_base_url) is not None:
        yield LlmClient(ws.engine, config, url)
        return
    server = EmbeddedServer(ws.config.workspace)
    info, started = server.up()
    if started and progress:
        print(f"started the embedded LLM server at {info.base_url} (log {info.log})")
    try:
        yield LlmClient(ws.engine, config, info.base_url, death=server.death)
    finally:
        if started:
            server.down()


def gold_labels(session: Session, sae_id: str) -> dict[int, Gold]:
    """The gold set: each feature's human label (storage.human_labels: the latest accepted)."""
    return {
        f: Gold(list(r.concepts), r.text or "", r.confidence)
        for f, r in human_labels(session, sae_id).items()
    }


def _vector(feature: Feature, concepts: list[str]) -> np.ndarray:
    """A cheap profile for finding similar features: firing fraction per concept."""
    stats = feature.concept_stats or {}
    return np.array([stats.get(c, [0.0, 0.0])[1] for c in concepts], dtype=float)


def _explain_split(row: Feature, config: ExplainConfig) -> tuple[list, list]:
    """(explain split: the strongest top contexts, held-out rest incl. the decile samples)."""
    examples = feature_examples(row)
    top = [e for e in examples if e.kind == TOP]
    split = min(config.max_explain_split, max(1, len(top) // 2))
    return top[:split], top[split:] + [e for e in examples if e.kind != TOP]


def feature_evidence(
    session: Session, rows: list[Feature], config: ExplainConfig
) -> dict[int, Evidence]:
    """Corpus tag evidence of each feature's explain split (never the held-out contexts)."""
    tags = corpus_concepts(session)
    base = base_rates(tags)
    return {
        row.index: corpus_evidence([e.text_id for e in _explain_split(row, config)[0]], tags, base)
        for row in rows
    }


def _materials(
    ws: Any, sae_id: str, features: list[int], config: ExplainConfig, concepts: list[str]
) -> dict[int, Material]:
    """Explain split (top contexts 0..S-1), held-out activating contexts (the other top ones and
    the decile samples) and seeded non-activating texts, per feature."""
    text_ids, matrix = text_max_matrix(ws.engine, sae_id)
    matrix = matrix.tocsc()
    text_ids = np.asarray(text_ids)
    out: dict[int, tuple[Feature, list, list, list[int]]] = {}
    with Session(ws.engine) as session:
        rows = session.exec(
            select(Feature).where(Feature.sae_id == sae_id, Feature.index.in_(features))
        ).all()
        evidence = feature_evidence(session, list(rows), config)
        need: set[int] = set()
        for row in rows:
            explain, rest = _explain_split(row, config)
            rng = np.random.default_rng([config.seed, row.index])
            held = _spread(rest, config.n_score_pos)
            column = matrix.getcol(row.index)
            quiet = np.setdiff1d(np.arange(len(text_ids)), column.indices[column.data > 0])
            neg = (
                text_ids[rng.choice(quiet, size=min(config.n_score_neg, len(quiet)), replace=False)]
                if len(quiet)
                else np.array([], dtype=int)
            )
            out[row.index] = (row, explain, held, [int(t) for t in neg])
            need |= {e.text_id for e in explain + held} | {int(t) for t in neg}
        tokens = {
            c.text_id: c.tokens
            for c in session.exec(select(Context).where(Context.text_id.in_(need)))
        }
    result = {}
    for index, (row, explain, held, neg) in out.items():
        zeros = [Shown(tokens[t], np.zeros(len(tokens[t]), np.float32)) for t in neg]
        result[index] = Material(
            index,
            _vector(row, concepts),
            [Shown(tokens[e.text_id], e.activations) for e in explain],
            HeldOut([Shown(tokens[e.text_id], e.activations) for e in held], zeros),
            evidence[index],
        )
    return result


def _spread(examples: list, n: int) -> list:
    """n examples spread over the list (strongest to weakest), so scoring sees every level."""
    if len(examples) <= n:
        return list(examples)
    return [examples[int(i)] for i in np.linspace(0, len(examples) - 1, n).round()]


def _explain_one(
    client: LlmClient,
    sae_id: str,
    material: Material,
    labels: list[str],
    shots: list[GoldShot],
    config: ExplainConfig,
) -> Outcome:
    messages = explain_messages(material.explain, labels, config, shots, material.evidence)
    reply = client.structured(
        messages,
        ExplanationAnswer,
        step="explain",
        max_tokens=config.max_tokens,
        schema=explanation_schema(concept_choices(labels, config, material.evidence)),
        context={
            "labels": set(labels),
            "safety": [c for c in labels if c not in (BENIGN, UNINTERPRETABLE)],
            "fired": fired_tokens(
                [segment(*c, config) for c in material.explain[: config.n_shown]],
                config.mark_fraction,
            ),
        },
        sae_id=sae_id,
        feature=material.feature,
    )
    if reply.value is None:
        return Outcome(material.feature, None, reply.reason, [])
    scores = score_explanation(
        client, reply.value.explanation, material.held, config, sae_id, material.feature
    )
    return Outcome(material.feature, reply.value, None, scores)


def _store(ws: Any, sae_id: str, outcome: Outcome, model: str, config: ExplainConfig) -> None:
    """One feature's explanation and scores in one transaction (the resumable unit)."""
    version = f"{model}/{config.prompt_version}"
    with session_scope(ws.engine) as session:
        if outcome.answer is None:
            session.add(
                Explanation(
                    sae_id=sae_id,
                    feature=outcome.feature,
                    source="auto",
                    status="failed",
                    concepts=[],
                    author=model,
                    model_version=version,
                    details={"reason": outcome.reason},
                )
            )
            return
        row = Explanation(
            sae_id=sae_id,
            feature=outcome.feature,
            source="auto",
            status="queued",
            concepts=outcome.answer.concepts,
            text=outcome.answer.explanation,
            confidence=outcome.answer.confidence / 10,
            author=model,
            model_version=version,
            details={"scores": {s.scorer: s.value for s in outcome.scores}},
        )
        session.add(row)
        session.flush()
        for s in outcome.scores:
            if s.value is None:
                continue
            session.add(
                Score(
                    explanation_id=row.id,
                    scorer=s.scorer,
                    value=s.value,
                    model=None if s.scorer == "embedding" else model,
                    prompt_version=(
                        "tfidf-char3-5-v1"
                        if s.scorer == "embedding"
                        else f"{s.scorer}-v1/{config.prompt_version}"
                    ),
                    details=s.details,
                )
            )


def explain(
    ws: Any,
    config: ExplainConfig | None = None,
    llm: LlmConfig | None = None,
    *,
    features: list[int] | None = None,
    progress: bool = True,
) -> ExplainReport:
    """Explain, score, calibrate and route the selected SAE's features (see module doc);
    `features` restricts the unlabeled ones to these (candidates or not)."""
    config, llm = config or ExplainConfig(), llm or LlmConfig()
    sae_id = ws.selected_sae
    if sae_id is None:
        raise SafesailError("no SAE selected yet: run `safesail select` and `safesail triage`")
    model = llm.resolved_model
    llm.price()  # a model missing from the price table fails before anything is spent
    version = f"{model}/{config.prompt_version}"
    labels = ws.taxonomy.label_values()
    concepts = list(ws.taxonomy.concepts)
    with Session(ws.engine) as session:
        gold = gold_labels(session, sae_id)
        done = set(
            session.exec(
                select(Explanation.feature).where(
                    Explanation.sae_id == sae_id,
                    Explanation.source == "auto",
                    Explanation.model_version == version,
                )
            )
        )
        with_examples = select(Feature.index).where(
            Feature.sae_id == sae_id, Feature.examples.is_not(None)
        )
        candidates = list(
            session.exec(
                with_examples.where(Feature.candidate).order_by(Feature.safety_score.desc())
            )
        )
        explainable = set(session.exec(with_examples))
    pool = candidates if features is None else [f for f in features if f in explainable]
    unlabeled = [f for f in pool if f not in gold]
    yardstick = sorted(f for f in gold if f in explainable)
    unlabeled = unlabeled[: config.limit] if config.limit is not None else unlabeled
    yardstick = yardstick[: config.max_gold] if config.max_gold is not None else yardstick
    todo = [f for f in yardstick + unlabeled if f not in done]
    failed = 0
    if todo:
        failed = _run(ws, sae_id, todo, sorted(gold), gold, config, llm, labels, concepts, progress)
    report = route(ws, sae_id, set(yardstick), set(unlabeled), config, version, model)
    return report._replace(explained=len(todo), failed=failed)


def _run(ws, sae_id, todo, gold_features, gold, config, llm, labels, concepts, progress) -> int:
    materials = _materials(ws, sae_id, sorted(set(todo) | set(gold_features)), config, concepts)
    shots_pool = [
        GoldShot(
            f, m.vector, m.explain, gold[f].concepts, gold[f].text, gold[f].confidence, m.evidence
        )
        for f, m in materials.items()
        if f in gold
    ]
    failed = 0
    with (
        endpoint(ws, llm, progress) as client,
        ThreadPoolExecutor(max_workers=llm.concurrency) as pool,
    ):
        futures = [
            pool.submit(
                _explain_one,
                client,
                sae_id,
                materials[f],
                labels,
                nearest_shots(materials[f].vector, shots_pool, config.few_shot, exclude=f)
                if config.prompting == "ours"
                else [],
                config,
            )
            for f in todo
            if f in materials
        ]
        try:
            for future in tqdm(
                as_completed(futures),
                total=len(futures),
                desc="explain",
                disable=not progress,
            ):
                outcome = future.result()
                failed += outcome.answer is None
                _store(ws, sae_id, outcome, client.model, config)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return failed


def _signals(
    row: Explanation,
    scores: dict[str, float],
    learner: dict,
    feature: Feature,
    neighbours: list[Gold],
    evidence: Evidence,
) -> dict[str, float | None]:
    """Everything calibration may learn agreement from: the scorers, the explainer's own
    confidence, the active learner, triage, the labels of the nearest gold features, and the
    corpus evidence of the shown texts (does the chosen concept match what it points to)."""
    primary = row.concepts[0]
    prediction = learner.get(str(row.feature))
    out: dict[str, float | None] = {s: scores.get(s) for s in SIGNALS}
    out["confidence"] = row.confidence
    out["learner_probability"] = float(prediction["probability"]) if prediction else None
    out["learner_agrees"] = float(primary in prediction.get("concepts", [])) if prediction else None
    out["triage_agrees"] = float(primary == feature.concept) if feature.concept else None
    out["triage_precision"] = feature.precision
    out["neighbours_agree"] = (
        float(np.mean([primary in g.concepts for g in neighbours])) if neighbours else None
    )
    out["says_safety"] = float(primary not in (BENIGN, UNINTERPRETABLE))
    leading = evidence.leading()
    out["evidence_agrees"] = None if leading is None else float(primary == leading)
    out["evidence_share"] = (
        None if primary == UNINTERPRETABLE else evidence.shares.get(primary, 0.0)
    )
    return out


def agrees(row: Explanation, gold: Gold, min_similarity: float) -> tuple[bool, float | None]:
    """Concept match (the explanation's main concept is one of the experts') and, when the
    experts wrote a text, an explanation that resembles it."""
    if row.concepts[0] not in gold.concepts:
        return False, None
    if not min_similarity or not gold.text.strip():
        return True, None
    similarity = text_similarity(row.text, gold.text)
    return similarity >= min_similarity, similarity


def route(
    ws: Any,
    sae_id: str,
    yardstick: set[int],
    unlabeled: set[int],
    config: ExplainConfig,
    version: str,
    model: str,
) -> ExplainReport:
    """Calibrate on the gold features and route every current explanation: accept above the
    threshold, queue the rest; gold features' own explanations only measure (never accepted)."""
    with Session(ws.engine) as session:
        gold = gold_labels(session, sae_id)
        rows = session.exec(
            select(Explanation).where(
                Explanation.sae_id == sae_id,
                Explanation.source == "auto",
                Explanation.model_version == version,
                Explanation.status != "failed",
            )
        ).all()
        ids = [r.id for r in rows]
        scores: dict[int, dict[str, float]] = {}
        for s in session.exec(select(Score).where(Score.explanation_id.in_(ids))):
            scores.setdefault(s.explanation_id, {})[s.scorer] = s.value
        features = {
            f.index: f
            for f in session.exec(
                select(Feature).where(
                    Feature.sae_id == sae_id,
                    Feature.index.in_({r.feature for r in rows} | set(gold)),
                )
            )
        }
        learner_meta = get_meta(session, "learner_predictions") or {}
        evidence = feature_evidence(session, list(features.values()), config)
    # The learner's predictions of gold features come from a model fitted on those very labels
    # (in-sample): calibrating on them would learn "the learner agrees" = "the expert agrees"
    # and over-promise on unlabeled features. They are used only when the learner says they
    # are held-out (out-of-fold) for labeled features.
    learner = (
        learner_meta.get("predictions", {})
        if learner_meta.get("sae_id") == sae_id and learner_meta.get("labeled_out_of_fold")
        else {}
    )
    concepts = list(ws.taxonomy.concepts)
    pool = [
        GoldShot(f, _vector(features[f], concepts), [], g.concepts, g.text, g.confidence)
        for f, g in gold.items()
        if f in features
    ]
    signals = {
        r.id: _signals(
            r,
            scores.get(r.id, {}),
            learner,
            features[r.feature],
            [
                gold[n.feature]
                for n in nearest_shots(
                    _vector(features[r.feature], concepts), pool, NEIGHBOURS, r.feature
                )
            ],
            evidence[r.feature],
        )
        for r in rows
    }
    gold_rows = [r for r in rows if r.feature in gold]
    verdicts = {r.id: agrees(r, gold[r.feature], config.min_text_similarity) for r in gold_rows}
    x_gold = signal_matrix([signals[r.id] for r in gold_rows])
    y_gold = np.array([verdicts[r.id][0] for r in gold_rows], dtype=int)
    calibration: Calibration | None = None
    try:
        calibration = fit_calibration(
            x_gold,
            y_gold,
            target=config.target,
            min_gold=config.min_gold,
            folds=config.folds,
            z=config.confidence_z,
            seed=config.seed,
        )
        error = None
    except SafesailError as exc:
        error = str(exc)
    open_rows = [r for r in rows if r.feature not in gold]
    probs = (
        dict(
            zip(
                [r.id for r in open_rows],
                calibration.predict(signal_matrix([signals[r.id] for r in open_rows])),
                strict=True,
            )
        )
        if calibration is not None and open_rows
        else {}
    )
    threshold = calibration.threshold.threshold if calibration is not None else float("inf")
    # gold features keep their out-of-fold P(agree): the coverage-vs-agreement curve's points
    held_out = (
        dict(zip([r.id for r in gold_rows], calibration.oof.tolist(), strict=True))
        if calibration is not None
        else {}
    )
    accepted = queued = 0
    with session_scope(ws.engine) as session:
        for r in rows:
            row = session.get(Explanation, r.id)
            details = dict(row.details or {})
            details["signals"] = signals[r.id]
            details["evidence"] = evidence[r.feature].line()
            if r.feature in gold:
                agree, similarity = verdicts[r.id]
                row.status = "queued" if agree else "rejected"
                details.update(yardstick=True, agrees=agree, text_similarity=similarity)
                row.probability = held_out.get(r.id)
            else:
                p = probs.get(r.id)
                row.probability = None if p is None else float(p)
                row.status = "accepted" if p is not None and p >= threshold else "queued"
                accepted += row.status == "accepted"
                queued += row.status == "queued"
                details.pop("yardstick", None)
            row.details = details
            session.add(row)
        meta = _calibration_meta(
            calibration, error, config, model, version, accepted, queued, len(gold_rows)
        )
        if calibration is not None:
            path = plot_reliability(
                calibration,
                config.target,
                Path(ws.config.workspace) / "explainer" / "reliability.png",
            )
            meta["reliability_png"] = str(path)
        set_meta(session, "calibration", meta)
    return ExplainReport(0, 0, accepted, queued, meta)


def _calibration_meta(
    calibration: Calibration | None,
    error: str | None,
    config: ExplainConfig,
    model: str,
    version: str,
    accepted: int,
    queued: int,
    n_gold: int,
) -> dict[str, Any]:
    base = {
        "target": config.target,
        "model": model,
        "model_version": version,
        "n_gold": n_gold,
        "accepted": accepted,
        "queued": queued,
    }
    if calibration is None:
        return {
            **base,
            "achieved_agreement": None,
            "threshold": None,
            "coverage": 0.0,
            "needed": config.min_gold,
            "error": error,
            "reliability": [],
        }
    t = calibration.threshold
    return {
        **base,
        "achieved_agreement": t.agreement,
        "threshold": t.threshold if np.isfinite(t.threshold) else None,
        "heldout_coverage": t.coverage,
        "coverage": accepted / (accepted + queued) if accepted + queued else 0.0,
        "gold_agreement_rate": float(calibration.agree.mean()),
        "reliability": calibration.reliability(),
    }
