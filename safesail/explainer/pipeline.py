"""`safesail explain`: explain the selected SAE's unlabeled safety candidates (and the gold-
labeled features, the yardstick), score them on held-out contexts, calibrate against the
experts, accept what is proven and queue the rest for humans.

This module is the run: choose the features, gather their material (materials.py), explain
and score each, store it; then `routing.route` calibrates and routes and `report` says what
that achieved.

Resumable: each feature's explanation and scores are written in one transaction, features
already explained with the same model and prompt version are skipped, and every LLM request is
cached. Rerunning after new labels re-calibrates and re-routes without new explaining calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import NamedTuple

from sqlmodel import Session, select
from tqdm.auto import tqdm

from safesail.db.contracts import CalibrationReport, Workspace
from safesail.db.tables import Explanation, Feature, Score, session_scope
from safesail.explainer.clients import LlmClient
from safesail.explainer.config import ExplainConfig, LlmConfig
from safesail.explainer.context import RunContext
from safesail.explainer.explainers import (
    ExplanationAnswer,
    GoldShot,
    concept_choices,
    explain_messages,
    explanation_schema,
    fired_tokens,
    nearest_shots,
    segment,
)
from safesail.explainer.materials import Gold, Material, gold_labels, materials
from safesail.explainer.routing import route
from safesail.explainer.scorers import ScoreResult, get_scorer, score_explanation
from safesail.taxonomy import BENIGN, UNINTERPRETABLE


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
    calibration: CalibrationReport


@contextmanager
def endpoint(ws: Workspace, config: LlmConfig, progress: bool = True) -> Iterator[LlmClient]:
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


def explain(
    ws: Workspace,
    config: ExplainConfig | None = None,
    llm: LlmConfig | None = None,
    *,
    features: list[int] | None = None,
    progress: bool = True,
) -> ExplainReport:
    """Explain, score, calibrate and route the selected SAE's features (see module doc);
    `features` restricts the unlabeled ones to these (candidates or not)."""
    ctx = RunContext.start(ws, config or ExplainConfig(), llm or LlmConfig(), progress)
    with Session(ws.engine) as session:
        gold = gold_labels(session, ctx.sae_id)
    todo = _choose(ctx, gold, features)
    failed = _run(ctx, todo, gold) if todo else 0
    report = route(ctx)
    return ExplainReport(len(todo), failed, report.accepted, report.queued, report)


def _choose(ctx: RunContext, gold: dict[int, Gold], features: list[int] | None) -> list[int]:
    """The features this run explains: the gold-labeled ones (the yardstick, up to max_gold)
    and the unlabeled candidates or given features (up to limit), less those already
    explained with this model and prompt version."""
    config = ctx.config
    with Session(ctx.ws.engine) as session:
        done = set(
            session.exec(
                select(Explanation.feature).where(
                    Explanation.sae_id == ctx.sae_id,
                    Explanation.source == "auto",
                    Explanation.model_version == ctx.version,
                )
            )
        )
        with_examples = select(Feature.index).where(
            Feature.sae_id == ctx.sae_id, Feature.examples.is_not(None)
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
    return [f for f in yardstick + unlabeled if f not in done]


def _run(ctx: RunContext, todo: list[int], gold: dict[int, Gold]) -> int:
    """Explain and score the features (threads), storing each as it finishes; returns how
    many failed. An interruption cancels what has not started; what finished is kept."""
    config = ctx.config
    found = materials(ctx.ws, ctx.sae_id, sorted(set(todo) | set(gold)), config, ctx.concepts)
    shots_pool = [
        GoldShot(
            f, m.vector, m.explain, gold[f].concepts, gold[f].text, gold[f].confidence, m.evidence
        )
        for f, m in found.items()
        if f in gold
    ]
    failed = 0
    with (
        endpoint(ctx.ws, ctx.llm, ctx.progress) as client,
        ThreadPoolExecutor(max_workers=_workers(ctx.llm)) as pool,
    ):
        futures = [
            pool.submit(
                _explain_one,
                ctx,
                client,
                found[f],
                nearest_shots(found[f].vector, shots_pool, config.few_shot, exclude=f)
                if config.prompting == "ours"
                else [],
            )
            for f in todo
            if f in found
        ]
        try:
            for future in tqdm(
                as_completed(futures),
                total=len(futures),
                desc="explain",
                disable=not ctx.progress,
            ):
                outcome = future.result()
                failed += outcome.answer is None
                _store(ctx, outcome)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return failed


def _workers(llm: LlmConfig) -> int:
    """Requests in flight at once: `concurrency` for an endpoint, one for the embedded server.
    That server answers one request at a time and keeps the last prompt read: a retry of an
    invalid answer (same prompt, another seed) then skips reading the prompt again, which a
    second request in between would undo. On 2 cores a 640-token prompt takes 2.2 s to read
    and its answer 0.6 s, and half of the demo's explain calls are such retries."""
    return llm.concurrency if llm.resolved_base_url is not None else 1


def _explain_one(
    ctx: RunContext, client: LlmClient, material: Material, shots: list[GoldShot]
) -> Outcome:
    config, labels = ctx.config, ctx.labels
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
        sae_id=ctx.sae_id,
        feature=material.feature,
    )
    if reply.value is None:
        return Outcome(material.feature, None, reply.reason, [])
    scores = score_explanation(
        client, reply.value.explanation, material.held, config, ctx.sae_id, material.feature
    )
    return Outcome(material.feature, reply.value, None, scores)


def _store(ctx: RunContext, outcome: Outcome) -> None:
    """One feature's explanation and scores in one transaction (the resumable unit); each
    score carries its scorer's version (and model, for a scorer that calls one)."""
    common = {
        "sae_id": ctx.sae_id,
        "feature": outcome.feature,
        "source": "auto",
        "author": ctx.model,
        "model_version": ctx.version,
    }
    with session_scope(ctx.ws.engine) as session:
        if outcome.answer is None:
            session.add(
                Explanation(
                    **common, status="failed", concepts=[], details={"reason": outcome.reason}
                )
            )
            return
        row = Explanation(
            **common,
            status="queued",
            concepts=outcome.answer.concepts,
            text=outcome.answer.explanation,
            confidence=outcome.answer.confidence / 10,
            details={"scores": {s.scorer: s.value for s in outcome.scores}},
        )
        session.add(row)
        session.flush()
        for s in outcome.scores:
            if s.value is None:
                continue
            scorer = get_scorer(s.scorer)
            session.add(
                Score(
                    explanation_id=row.id,
                    scorer=s.scorer,
                    value=s.value,
                    model=ctx.model if scorer.needs_llm else None,
                    prompt_version=scorer.stored_version(ctx.config.prompt_version),
                    details=s.details,
                )
            )
