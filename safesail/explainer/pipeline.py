"""`safesail explain`: run the trust-or-escalate cascade over the selected SAE's unlabeled
safety candidates (and the gold-labeled features, the yardstick): the concept model first (no
LLM call), then the LLM asked several times on what it did not accept, then the escalation
endpoint if one is given; accept what is proven, queue the rest for humans.

This module is the run: choose the features each LLM stage must answer (those no earlier stage
accepts), gather their material (materials.py), ask and score each, store it, the stage's gold
features first: a stage whose gold answers accept nothing is not asked about the routed ones
(they could not be accepted; the cost would buy nothing); then
`routing.route` decides and stores the cascade and `report` says what it guarantees.

Resumable: each feature's explanation and scores are written in one transaction, features
already explained with the same model and prompt version are skipped, and every LLM request is
cached. Rerunning after new labels re-calibrates and re-routes without new explaining calls.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import NamedTuple

from sqlmodel import Session, select
from tqdm.auto import tqdm

from safesail.db.contracts import CalibrationReport, Workspace
from safesail.db.tables import Explanation, Feature, Score, session_scope
from safesail.errors import SafesailError
from safesail.explainer.clients import LlmClient, validate_answer
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
from safesail.explainer.routing import plan, route
from safesail.explainer.scorers import ScoreResult, get_scorer, score_explanation
from safesail.explainer.stages import ESCALATE, LLM, Plan
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    """One feature's explanation (None if it failed) and scores."""

    feature: int
    answer: ExplanationAnswer | None
    reason: str | None
    scores: list[ScoreResult]
    tally: dict
    """The votes: per primary concept, invalid answers, the winner's share, the stage."""


class ExplainReport(NamedTuple):
    """What a run did, for the CLI and the benchmark."""

    explained: int
    failed: int
    accepted: int
    queued: int
    calibration: CalibrationReport
    not_asked: dict[str, int]
    """Per LLM stage, routed features it was not asked about because its gold answers accept
    nothing (its answers could not be accepted, so asking would only cost)."""


@contextmanager
def endpoint(ws: Workspace, config: LlmConfig, progress: bool = True) -> Iterator[LlmClient]:
    """A client of the configured endpoint, or of the embedded server (started here, and
    stopped again if it was not already running; its death is reported as such)."""
    from safesail.explainer.server import EmbeddedServer

    if (url := config.resolved_base_url) is not None:
        yield LlmClient(ws.engine, config, url)
        return
    server = EmbeddedServer(ws.config.workspace)
    info, started = server.up(owner=os.getpid())  # stops with this command, even if killed
    if started and progress:
        log.info("started the embedded LLM server at %s (log %s)", info.base_url, info.log)
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
    escalate: LlmConfig | None = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> ExplainReport:
    """Run the cascade on the selected SAE's features (see module doc); `features` restricts
    the unlabeled ones to these (candidates or not); `escalate` adds the stronger endpoint's
    stage; `retry_failed` asks again about features whose every answer of a stage failed."""
    ctx = RunContext.start(ws, config or ExplainConfig(), llm or LlmConfig(), progress, escalate)
    with Session(ws.engine) as session:
        gold = gold_labels(session, ctx.sae_id)
    yardstick, unlabeled = _choose(ctx, gold, features)
    explained = failed = 0
    not_asked: dict[str, int] = {}
    stages = [(LLM, ctx.llm, ctx.version)]
    if ctx.escalate is not None:
        stages.append((ESCALATE, ctx.escalate, str(ctx.escalate_version)))
    decided = plan(ctx, unlabeled)  # decided again only after new answers are stored
    for name, llm_config, version in stages:
        # the stage's gold first: its threshold rests on them alone
        reach = [f for f in yardstick if decided.reaches(f, name)]
        reach = reach[: ctx.config.max_gold] if ctx.config.max_gold is not None else reach
        todo = _not_done(ctx, reach, version, retry_failed)
        if todo:
            explained += len(todo)
            failed += _run(ctx, todo, gold, llm_config, version, name)
            decided = plan(ctx, unlabeled)
        more = [f for f in unlabeled if decided.reaches(f, name)]
        more = more[: ctx.config.limit] if ctx.config.limit is not None else more
        if not (ctx.config.ask_unprovable or _can_accept(decided, name)):
            not_asked[name] = len(more)
            continue
        todo = _not_done(ctx, more, version, retry_failed)
        if todo:
            explained += len(todo)
            failed += _run(ctx, todo, gold, llm_config, version, name)
            decided = plan(ctx, unlabeled)
    report = route(ctx, features)
    return ExplainReport(explained, failed, report.accepted, report.queued, report, not_asked)


def _can_accept(decided: Plan, name: str) -> bool:
    """Whether the stage's threshold on its gold answers accepts anything (a routed answer
    below it is queued whatever it says). Its gold answers are all in, so the threshold stands
    until the gold labels or an earlier stage change, and a later run asks again then."""
    return any(
        s.name == name and math.isfinite(a.threshold)
        for s, a in zip(decided.stages, decided.acceptances, strict=True)
    )


def _not_done(
    ctx: RunContext, todo: list[int], version: str, retry_failed: bool = False
) -> dict[int, int]:
    """The features without an answer of this stage version yet (every answer is kept), each
    with how many failed answers it has: with `retry_failed` a feature whose answers all failed
    is asked again, with attempts (seeds) after those, since the same request would be served
    the same failed answer from the cache."""
    with Session(ctx.ws.engine) as session:
        answers = session.exec(
            select(Explanation.feature, Explanation.status).where(
                Explanation.sae_id == ctx.sae_id,
                Explanation.source == "auto",
                Explanation.model_version == version,
            )
        ).all()
    failures = Counter(f for f, status in answers if status == "failed")
    done = {f for f, status in answers if status != "failed" or not retry_failed}
    return {f: failures[f] for f in todo if f not in done}


def _choose(
    ctx: RunContext, gold: dict[int, Gold], features: list[int] | None
) -> tuple[list[int], list[int]]:
    """(the gold-labeled features: the yardstick, the unlabeled candidates or given
    features), with examples; each LLM stage asks about the first max_gold and limit of them
    that no earlier stage accepts."""
    with Session(ctx.ws.engine) as session:
        with_examples = select(Feature.index).where(
            Feature.sae_id == ctx.sae_id, Feature.examples.is_not(None)
        )
        candidates = list(
            session.exec(
                with_examples.where(Feature.candidate).order_by(Feature.safety_score.desc())
            )
        )
        explainable = set(session.exec(with_examples))
    unknown = sorted(set(features or []) - explainable)
    if unknown:
        shown = ", ".join(map(str, unknown[:10]))
        raise SafesailError(
            f"feature(s) {shown} of {ctx.sae_id} have no collected examples (unknown or never "
            "firing) — pick features from `safesail status` or the app, or rerun `safesail collect`"
        )
    pool = candidates if features is None else [f for f in features if f in explainable]
    unlabeled = [f for f in pool if f not in gold]
    return sorted(f for f in gold if f in explainable), unlabeled


def _run(
    ctx: RunContext,
    todo: dict[int, int],
    gold: dict[int, Gold],
    llm: LlmConfig,
    version: str,
    stage: str,
) -> int:
    """Ask one LLM stage about the features (each with its failed answers so far) and score its
    answers (threads), storing each as it finishes; returns how many failed. An interruption cancels what has not started; what
    finished is kept."""
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
        endpoint(ctx.ws, llm, ctx.progress) as client,
        ThreadPoolExecutor(max_workers=_workers(llm)) as pool,
    ):
        futures = [
            pool.submit(
                _explain_one,
                ctx,
                client,
                stage,
                found[f],
                nearest_shots(found[f].vector, shots_pool, config.few_shot, exclude=f)
                if config.prompting == "ours"
                else [],
                todo[f] * config.votes,
            )
            for f in todo
            if f in found
        ]
        try:
            for future in tqdm(
                as_completed(futures),
                total=len(futures),
                desc=f"explain ({stage})",
                disable=not ctx.progress,
            ):
                outcome = future.result()
                failed += outcome.answer is None
                _store(ctx, outcome, client.model, version)
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
    ctx: RunContext,
    client: LlmClient,
    stage: str,
    material: Material,
    shots: list[GoldShot],
    first_attempt: int = 0,
) -> Outcome:
    """`votes` answers (the first greedy, the rest sampled with their own seeds); the most
    common primary concept wins, its share of all votes (invalid answers are votes for
    nothing) is the stage's confidence, and its first answer is the explanation scored."""
    config, labels = ctx.config, ctx.labels
    messages = explain_messages(material.explain, labels, config, shots, material.evidence)
    context = {
        "labels": set(labels),
        "safety": [c for c in labels if c not in (BENIGN, UNINTERPRETABLE)],
        "fired": fired_tokens(
            [segment(*c, config) for c in material.explain[: config.n_shown]],
            config.mark_fraction,
        ),
    }
    answers: list[ExplanationAnswer] = []
    reason = None
    for attempt in range(first_attempt, first_attempt + config.votes):
        reply = client.chat(
            messages,
            step="explain" if stage == LLM else stage,
            max_tokens=config.max_tokens,
            schema=explanation_schema(concept_choices(labels, config, material.evidence)),
            attempt=attempt,
            sae_id=ctx.sae_id,
            feature=material.feature,
        )
        answer, why = validate_answer(reply.text, context)
        if answer is None:
            reason = why
        else:
            answers.append(answer)
    if not answers:
        return Outcome(material.feature, None, reason, [], {})
    votes = Counter(a.concepts[0] for a in answers)
    winner = max(votes, key=lambda c: (votes[c], -[a.concepts[0] for a in answers].index(c)))
    chosen = next(a for a in answers if a.concepts[0] == winner)
    scores = score_explanation(
        client, chosen.explanation, material.held, config, ctx.sae_id, material.feature
    )
    tally = {
        "votes": dict(votes),
        "invalid": config.votes - len(answers),
        "vote_share": votes[winner] / config.votes,
        "stage": stage,
    }
    return Outcome(material.feature, chosen, None, scores, tally)


def _store(ctx: RunContext, outcome: Outcome, model: str, version: str) -> None:
    """One feature's answer and scores in one transaction (the resumable unit); each score
    carries its scorer's version (and model, for a scorer that calls one)."""
    common = {
        "sae_id": ctx.sae_id,
        "feature": outcome.feature,
        "source": "auto",
        "author": model,
        "model_version": version,
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
            details={**outcome.tally, "scores": {s.scorer: s.value for s in outcome.scores}},
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
                    model=model if scorer.needs_llm else None,
                    prompt_version=scorer.stored_version(ctx.config.prompt_version),
                    details=s.details,
                )
            )
