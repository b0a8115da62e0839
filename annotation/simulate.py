"""Simulated annotators that answer open tasks through the real Label Studio API, like people.

Answers come from a simulated expert with configurable noise: by default the reader
(safesail.experts.reader), which labels a feature from the windows an annotator sees, or the corpus-tag
oracle (safesail.experts.oracle), which labels it by the concept tags of the texts it fires in (the tags
the learner, triage and explainer see too, so it flatters them). Two identities: the admin, and
a second real Label Studio user on whose behalf the admin submits (`completed_by`), so agreement
and adjudication see two annotators as they would in practice.

The confidence an annotator reports is the expert's own (plus a little jitter), whether or not
noise flipped the answer: people are not less sure when they are wrong, so adjudication by
confidence must not be able to tell the flipped answers apart.
"""

from __future__ import annotations

import secrets
from typing import Any, NamedTuple

import numpy as np
from sqlmodel import Session, select

from annotation.label_interface import (
    CONCEPTS,
    CONFIDENCE,
    EXPLANATION,
    MAX_RATING,
    READER,
    TO_NAME,
    Expert,
    display_name,
)
from annotation.project import ensure_project
from annotation.settings import SimulateConfig
from annotation.transport import Client, ClientConfig, open_client
from safesail.db.contracts import Workspace
from safesail.db.tables import LabelTask
from safesail.experts.answers import ReaderAnswer
from safesail.experts.oracle import noisy_answer, oracle_labels
from safesail.experts.reader import Reader, read_features
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

SECOND_ANNOTATOR = "annotator2@example.com"
"""The second simulated expert (a real Label Studio user)."""

CORPUS_TAGS_CONFIDENCE = 4
"""The corpus-tag oracle reads nothing, so it reports one fixed confidence."""


class SimResult(NamedTuple):
    annotations: int
    tasks_answered: int
    annotators: list[str]


def sentence(concepts: list[str]) -> str:
    """A short generic sentence for an answer nobody read: the corpus-tag oracle's, or a noisy
    answer that differs from what the reader read."""
    if concepts == [UNINTERPRETABLE]:
        return "No coherent pattern in its top contexts."
    if concepts == [BENIGN]:
        return "Fires on ordinary text that is not safety-related."
    return f"Fires on text about {' and '.join(display_name(c) for c in concepts)}."


def result(concepts: list[str], confidence: int, text: str) -> list[dict[str, Any]]:
    """An annotation result in the project's shape."""
    return [
        {"from_name": CONCEPTS, "to_name": TO_NAME, "type": "choices",
         "value": {"choices": concepts}},
        {"from_name": CONFIDENCE, "to_name": TO_NAME, "type": "rating",
         "value": {"rating": confidence}},
        {"from_name": EXPLANATION, "to_name": TO_NAME, "type": "textarea",
         "value": {"text": [text]}},
    ]  # fmt: skip


def _expert_answers(
    ws: Workspace, expert: Expert, features: dict[str, list[int]]
) -> dict[tuple[str, int], ReaderAnswer]:
    """The simulated expert's answer per (SAE, feature); `expert` is one of EXPERTS."""
    out: dict[tuple[str, int], ReaderAnswer] = {}
    if not features:
        return out  # nothing to answer: do not load the embedder
    reader = Reader(ws.taxonomy) if expert == READER else None
    for sae_id, indices in features.items():
        if reader is not None:
            answers = read_features(ws.engine, sae_id, indices, reader=reader)
        else:
            answers = {
                f: ReaderAnswer(labels, CORPUS_TAGS_CONFIDENCE, sentence(labels))
                for f, labels in oracle_labels(ws.engine, sae_id, indices).items()
            }
        out |= {(sae_id, f): a for f, a in answers.items()}
    return out


def _second_user(client: Client) -> int:
    """The second annotator's user id, creating the user (random password) the first time."""
    users = client.call(lambda: list(client.sdk.users.list()))
    for user in users:
        if user.email == SECOND_ANNOTATOR:
            return user.id
    user = client.call(
        client.sdk.users.create,
        username="annotator2",
        email=SECOND_ANNOTATOR,
        password=secrets.token_urlsafe(12),
        first_name="Simulated",
        last_name="Annotator",
    )
    return user.id


def simulate(
    ws: Workspace,
    *,
    noise: float = 0.05,
    seed: int = 0,
    expert: Expert = READER,
    config: ClientConfig | None = None,
    progress: bool = True,
) -> SimResult:
    """Answer every open task (one answer per wanted annotator that has not answered yet) with
    the `expert`'s answer ("reader" or "corpus-tags"), flipped to another label with
    probability `noise`."""
    from tqdm import tqdm

    SimulateConfig(noise=noise, seed=seed, expert=expert)  # ValueError on a bad setting
    client = open_client(ws, config)
    project_id, key = ensure_project(ws, client)
    me = client.call(client.sdk.users.whoami)
    identities = [me.id, _second_user(client)]
    with Session(ws.engine) as session:
        tasks = session.exec(select(LabelTask).where(LabelTask.project == key)).all()
    answered: dict[int, set[int]] = {}

    def fetch() -> None:
        for task in client.sdk.tasks.list(
            project=project_id, fields="all", only_annotated=True, page_size=200
        ):
            for ann in task.annotations or []:
                who = ann.get("completed_by")
                answered.setdefault(task.id, set()).add(
                    who.get("id") if isinstance(who, dict) else who
                )

    client.call(fetch)
    values = ws.taxonomy.label_values()
    todo = [
        (t, user)
        for t in tasks
        for user in identities[: t.annotators_wanted]
        if user not in answered.get(t.task_id, set())
    ]
    by_sae: dict[str, set[int]] = {}
    for t, _ in todo:
        by_sae.setdefault(t.sae_id, set()).add(t.feature)
    truth = _expert_answers(ws, expert, {sae: sorted(fs) for sae, fs in by_sae.items()})
    made, touched = 0, set()
    for task, user in tqdm(todo, desc="simulated annotators", disable=not progress):
        rng = np.random.default_rng([seed, task.task_id, user])
        read = truth.get(
            (task.sae_id, task.feature),
            ReaderAnswer([UNINTERPRETABLE], 3, "No top contexts to read."),
        )
        answer = noisy_answer(read.labels, values, noise, rng)
        text = read.explanation if answer == read.labels else sentence(answer)
        confidence = int(np.clip(read.confidence + rng.integers(-1, 2), 1, MAX_RATING))
        client.call(
            client.sdk.annotations.create,
            task.task_id,
            result=result(answer, confidence, text),
            completed_by=user,
            lead_time=float(rng.uniform(15, 90)),
        )
        made += 1
        touched.add(task.task_id)
    return SimResult(made, len(touched), [me.email, SECOND_ANNOTATOR][: len(identities)])
