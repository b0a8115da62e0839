"""Simulated annotators that answer open tasks through the real Label Studio API, like people.

Answers come from the corpus-derived oracle (safesail.oracle) with configurable noise. Two
identities: the admin, and a second real Label Studio user on whose behalf the admin submits
(`completed_by`), so agreement and adjudication see two annotators as they would in practice.
"""

from __future__ import annotations

import secrets
from typing import Any, NamedTuple

import numpy as np
from sqlmodel import Session, select

from annotation.client import ClientConfig, ensure_project, open_client
from annotation.config import CONCEPTS, CONFIDENCE, EXPLANATION, TO_NAME, display_name
from safesail.oracle import noisy_answer, oracle_labels
from safesail.storage import LabelTask
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

SECOND_ANNOTATOR = "annotator2@example.com"
"""The second simulated expert (a real Label Studio user)."""


class SimResult(NamedTuple):
    annotations: int
    tasks_answered: int
    annotators: list[str]


def sentence(concepts: list[str]) -> str:
    """The templated one-sentence explanation a simulated expert writes."""
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


def _second_user(client: Any) -> int:
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
    ws: Any,
    *,
    noise: float = 0.05,
    seed: int = 0,
    config: ClientConfig | None = None,
    progress: bool = True,
) -> SimResult:
    """Answer every open task (one answer per wanted annotator that has not answered yet)."""
    from tqdm import tqdm

    if not 0 <= noise <= 1:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
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
    by_sae: dict[str, list[int]] = {}
    for t in tasks:
        by_sae.setdefault(t.sae_id, []).append(t.feature)
    truth = {
        (sae_id, f): labels
        for sae_id, features in by_sae.items()
        for f, labels in oracle_labels(ws.engine, sae_id, features).items()
    }
    made, touched = 0, set()
    todo = [
        (t, user)
        for t in tasks
        for user in identities[: t.annotators_wanted]
        if user not in answered.get(t.task_id, set())
    ]
    for task, user in tqdm(todo, desc="simulated annotators", disable=not progress):
        rng = np.random.default_rng([seed, task.task_id, user])
        right = truth.get((task.sae_id, task.feature), [UNINTERPRETABLE])
        answer = noisy_answer(right, values, noise, rng)
        confidence = int(rng.integers(3, 6) if answer == right else rng.integers(1, 4))
        client.call(
            client.sdk.annotations.create,
            task.task_id,
            result=result(answer, confidence, sentence(answer)),
            completed_by=user,
            lead_time=float(rng.uniform(15, 90)),
        )
        made += 1
        touched.add(task.task_id)
    return SimResult(made, len(touched), [me.email, SECOND_ANNOTATOR][: len(identities)])
