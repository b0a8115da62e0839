"""The stored activation chunks read back, one chunk in memory at a time: the stream finalize
builds feature rows from, and the corpus-wide matrices (per-text maxima, token counts per
concept) that selection, triage and the explainer need.

The chunks were written by collection (``safesail.collection.collect``); reading them needs no model, so
these readers stay free of torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from tqdm.auto import tqdm

from safesail.db.tables import ActivationChunk, Context, get_meta, unpack_arrays, unpack_csr
from safesail.errors import SafesailError


def stored_chunks(
    engine: Engine,
    sae_id: str,
    n_chunks: int,
    desc: str | None = None,
    *,
    tokens: bool = True,
    start: int = 0,
):
    """Yield (chunk index, token csr or None, text csr) in order from chunk `start`, one chunk
    in memory at a time; tokens=False skips unpacking the token-level arrays for callers that
    need texts only."""
    with Session(engine) as session:
        for index in tqdm(range(start, n_chunks), desc=desc, unit="chunk", disable=desc is None):
            row = session.get(ActivationChunk, (sae_id, index))
            if row is None:
                raise SafesailError(
                    f"SAE {sae_id}: chunk {index} is missing; rerun `safesail collect`"
                )
            arrays = unpack_arrays(row.data, "" if tokens else "txt")
            yield index, unpack_csr("tok", arrays) if tokens else None, unpack_csr("txt", arrays)


def text_max_matrix(engine: Engine, sae_id: str) -> tuple[list[int], sp.csr_matrix]:
    """Every text's max activation per feature, rows in the returned text-id order."""
    with Session(engine) as session:
        plan: list[list[int]] = get_meta(session, "chunk_plan") or []
    blocks = [texts for _, _, texts in stored_chunks(engine, sae_id, len(plan), tokens=False)]
    if not blocks:
        raise SafesailError(f"SAE {sae_id} has no collected activations; run `safesail collect`")
    return [t for chunk in plan for t in chunk], sp.vstack(blocks).tocsr()


class ConceptTokenCounts(NamedTuple):
    """Token-level firing counts of every feature, inside each concept's texts and overall."""

    concepts: list[str]
    fires: np.ndarray
    """[n_concepts, d_sae] tokens of the concept's texts the feature fires on."""
    tokens: np.ndarray
    """[n_concepts] tokens the concept's texts hold."""
    fires_all: np.ndarray
    """[d_sae] tokens of the whole corpus the feature fires on."""
    tokens_all: int


def concept_token_counts(
    engine: Engine, sae_id: str, concepts: dict[int, list[str]], names: Sequence[str]
) -> ConceptTokenCounts:
    """How many tokens of each concept's texts (and of all texts) every feature fires on, from
    the stored token-level chunks, one chunk in memory at a time.

    A feature's firing rate alone cannot tell a feature that fires on every token of violence
    texts (a concept feature, however dense) from one that fires on every text; the firing
    rate outside a concept's texts can.
    """
    with Session(engine) as session:
        plan: list[list[int]] = get_meta(session, "chunk_plan") or []
        lengths = {c.text_id: len(c.token_ids) for c in session.exec(select(Context))}
    column = {name: i for i, name in enumerate(names)}
    fires: np.ndarray | None = None
    fires_all: np.ndarray | None = None
    tokens = np.zeros(len(names))
    tokens_all = 0
    for index, tok, _ in stored_chunks(engine, sae_id, len(plan)):
        text_ids = plan[index]
        pairs = [(j, column[c]) for j, t in enumerate(text_ids) for c in concepts[t] if c in column]
        rows, cols = [j for j, _ in pairs], [c for _, c in pairs]
        of_text = sp.csr_matrix(
            (np.ones(len(pairs)), (rows, cols)), shape=(len(text_ids), len(names))
        )
        per_token = of_text[np.repeat(np.arange(len(text_ids)), [lengths[t] for t in text_ids])]
        on = (tok > 0).astype(np.float64)
        chunk_fires = (per_token.T @ on).toarray()
        fires = chunk_fires if fires is None else fires + chunk_fires
        chunk_all = np.asarray(on.sum(axis=0)).ravel()
        fires_all = chunk_all if fires_all is None else fires_all + chunk_all
        tokens += np.asarray(per_token.sum(axis=0)).ravel()
        tokens_all += tok.shape[0]
    if fires is None or fires_all is None:
        raise SafesailError(f"SAE {sae_id} has no collected activations; run `safesail collect`")
    return ConceptTokenCounts(list(names), fires, tokens, fires_all, tokens_all)
