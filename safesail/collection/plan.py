"""The chunk plan: the corpus tokenised once into contexts, and which texts go into which chunk.

Collection (``safesail.collection.collect``) encodes the plan's chunks and the residual store
(``safesail.collection.residuals``) caches the residuals of the same chunks; both read the plan
from here, so neither imports the other to know it. The plan is fixed once collection starts
(stored in Meta under ``chunk_plan``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import select

from safesail.db.queries import check_model
from safesail.db.tables import (
    ActivationChunk,
    Context,
    CorpusText,
    Feature,
    SaeRecord,
    get_meta,
    session_scope,
    set_meta,
)
from safesail.errors import SafesailError

if TYPE_CHECKING:
    from safesail.model.lm import LanguageModel


def prepare_contexts(engine: Engine, lm: LanguageModel, max_tokens: int) -> int:
    """Tokenise every corpus text that has no context yet; returns how many were added."""
    with session_scope(engine) as session:
        check_model(get_meta(session, "model"), lm.name)
        set_meta(session, "model", lm.name)
        set_meta(session, "hidden_size", lm.hidden_size)
        done = set(session.exec(select(Context.text_id)))
        todo = [row for row in session.exec(select(CorpusText)) if row.id not in done]
        for start in range(0, len(todo), 512):
            rows = todo[start : start + 512]
            for row, ids in zip(rows, lm.tokenize([r.text for r in rows], max_tokens), strict=True):
                session.add(Context(text_id=row.id, token_ids=ids, tokens=lm.decode_tokens(ids)))
    return len(todo)


def plan_chunks(lengths: dict[int, int], chunk_texts: int) -> list[list[int]]:
    """Text ids per chunk, similar lengths together (text id breaks ties)."""
    order = sorted(lengths, key=lambda t: (lengths[t], t))
    return [order[i : i + chunk_texts] for i in range(0, len(order), chunk_texts)]


def chunk_plan(engine: Engine, chunk_texts: int) -> list[list[int]]:
    """Text ids per chunk, similar lengths together; fixed once collection starts.

    The plan is stored: if the corpus or chunk size changed since, stored chunks no longer line up,
    so they are dropped and every SAE is collected again.
    """
    with session_scope(engine) as session:
        lengths = {c.text_id: len(c.token_ids) for c in session.exec(select(Context))}
        if not lengths:
            raise SafesailError(
                "the corpus is empty — run `safesail corpus build` or `safesail corpus add` first"
            )
        plan = plan_chunks(lengths, chunk_texts)
        if get_meta(session, "chunk_plan") != plan:
            session.exec(delete(ActivationChunk))
            session.exec(delete(Feature))
            for record in session.exec(select(SaeRecord)):
                record.collected = False
                session.add(record)
            set_meta(session, "chunk_plan", plan)
    return plan
