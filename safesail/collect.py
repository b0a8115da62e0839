"""The activation cache: stream the corpus through the model once, encode with every SAE, and
keep per feature its statistics and example contexts with per-token activations.

Work is split into chunks of texts. Each chunk's sparse activations are written in one
transaction keyed by (SAE, chunk), so an interrupted run resumes where it stopped and nothing is
counted twice. `finalize` then streams the stored chunks to build feature rows; it is a pure
function of those chunks, so rerunning it gives the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from tqdm.auto import tqdm

from safesail.config import CollectConfig
from safesail.errors import SafesailError
from safesail.lm import LanguageModel
from safesail.storage import (
    ActivationChunk,
    Context,
    CorpusText,
    Feature,
    SaeRecord,
    get_meta,
    pack_arrays,
    pack_csr,
    session_scope,
    set_meta,
    unpack_arrays,
    unpack_csr,
)

TOP = 0
"""Example kind of a top-activating context; kinds 1..10 are activation deciles (1 = lowest)."""


class Example(NamedTuple):
    """One context of a feature with its per-token activations."""

    text_id: int
    kind: int
    max_act: float
    activations: np.ndarray  # one value per context token


def prepare_contexts(engine: Engine, lm: LanguageModel, max_tokens: int) -> int:
    """Tokenise every corpus text that has no context yet; returns how many were added."""
    with session_scope(engine) as session:
        model = get_meta(session, "model")
        if model is not None and model != lm.name:
            raise SafesailError(
                f"this workspace was built with model '{model}', not '{lm.name}'; use another --workspace"
            )
        set_meta(session, "model", lm.name)
        set_meta(session, "hidden_size", lm.hidden_size)
        done = set(session.exec(select(Context.text_id)))
        todo = [row for row in session.exec(select(CorpusText)) if row.id not in done]
        for start in range(0, len(todo), 512):
            rows = todo[start : start + 512]
            for row, ids in zip(rows, lm.tokenize([r.text for r in rows], max_tokens), strict=True):
                session.add(Context(text_id=row.id, token_ids=ids, tokens=lm.decode_tokens(ids)))
    return len(todo)


def chunk_plan(engine: Engine, chunk_texts: int) -> list[list[int]]:
    """Text ids per chunk, similar lengths together; fixed once collection starts.

    The plan is stored: if the corpus or chunk size changed since, stored chunks no longer line up,
    so they are dropped and every SAE is collected again.
    """
    with session_scope(engine) as session:
        lengths = {c.text_id: len(c.token_ids) for c in session.exec(select(Context))}
        if not lengths:
            raise SafesailError(
                "the corpus is empty: run `safesail corpus build` or `corpus add` first"
            )
        order = sorted(lengths, key=lambda t: (lengths[t], t))
        plan = [order[i : i + chunk_texts] for i in range(0, len(order), chunk_texts)]
        if get_meta(session, "chunk_plan") != plan:
            session.exec(delete(ActivationChunk))
            session.exec(delete(Feature))
            for record in session.exec(select(SaeRecord)):
                record.collected = False
                session.add(record)
            set_meta(session, "chunk_plan", plan)
    return plan


def encode_chunk(
    lm: LanguageModel,
    saes: dict[str, tuple[SaeRecord, torch.nn.Module]],
    contexts: Sequence[Sequence[int]],
) -> dict[str, tuple[sp.csr_matrix, sp.csr_matrix]]:
    """Per SAE: token-level sparse activations and per-text max activations of one chunk."""
    layers = sorted({record.layer for record, _ in saes.values()})
    resid = lm.residuals(contexts, layers)
    lengths = torch.tensor([len(c) for c in contexts])
    text_index = torch.repeat_interleave(torch.arange(len(contexts)), lengths)
    out = {}
    with torch.inference_mode():
        for sae_id, (record, sae) in saes.items():
            acts = sae.encode(resid[record.layer])
            acts = (acts.to_dense() if acts.is_sparse else acts).float().clamp_min_(0)
            per_text = torch.zeros(len(contexts), acts.shape[1]).index_reduce_(
                0, text_index, acts, "amax", include_self=True
            )
            out[sae_id] = (_to_csr(acts), _to_csr(per_text))
    return out


def _to_csr(dense: torch.Tensor) -> sp.csr_matrix:
    csr = dense.to_sparse_csr()
    return sp.csr_matrix(
        (csr.values().numpy(), csr.col_indices().numpy(), csr.crow_indices().numpy()),
        shape=tuple(dense.shape),
    )


def collect(
    engine: Engine,
    lm: LanguageModel,
    load: Callable[[SaeRecord], torch.nn.Module],
    config: CollectConfig | None = None,
    *,
    sae_ids: Sequence[str] | None = None,
    progress: bool = True,
) -> list[str]:
    """Encode the corpus with every (or the given) SAE and finalize their features; resumable."""
    config = config or CollectConfig()
    prepare_contexts(engine, lm, config.max_tokens)
    plan = chunk_plan(engine, config.chunk_texts)
    with Session(engine) as session:
        records = [r for r in session.exec(select(SaeRecord)) if sae_ids is None or r.id in sae_ids]
        missing = set(sae_ids or ()) - {r.id for r in records}
        if missing:
            raise SafesailError(f"unknown SAE id(s): {', '.join(sorted(missing))}")
        todo = [r for r in records if not r.collected]
        done_chunks = {
            (c.sae_id, c.chunk)
            for c in session.exec(select(ActivationChunk.sae_id, ActivationChunk.chunk))
        }
        contexts = {c.text_id: c.token_ids for c in session.exec(select(Context))}
    if not todo:
        return []
    models = {r.id: (r, load(r)) for r in todo}
    for record, _ in models.values():
        lm.check_layer(record.layer)
    bar = tqdm(total=len(plan), desc="Collecting activations", unit="chunk", disable=not progress)
    for index, text_ids in enumerate(plan):
        wanted = {k: v for k, v in models.items() if (k, index) not in done_chunks}
        if wanted:
            encoded = encode_chunk(lm, wanted, [contexts[t] for t in text_ids])
            with session_scope(engine) as session:
                for sae_id, (tokens, texts) in encoded.items():
                    blob = pack_arrays(**pack_csr("tok", tokens), **pack_csr("txt", texts))
                    session.add(
                        ActivationChunk(
                            sae_id=sae_id,
                            chunk=index,
                            n_texts=len(text_ids),
                            n_tokens=tokens.shape[0],
                            data=blob,
                        )
                    )
        bar.update(1)
    bar.close()
    for record in todo:
        finalize(engine, record.id, config, progress=progress)
    return [r.id for r in todo]


def _stored_chunks(engine: Engine, sae_id: str, n_chunks: int, desc: str | None = None):
    """Yield (chunk index, token csr, text csr) in order, one chunk in memory at a time."""
    with Session(engine) as session:
        for index in tqdm(range(n_chunks), desc=desc, unit="chunk", disable=desc is None):
            row = session.get(ActivationChunk, (sae_id, index))
            if row is None:
                raise SafesailError(
                    f"SAE {sae_id}: chunk {index} is missing; rerun `safesail collect`"
                )
            arrays = unpack_arrays(row.data)
            yield index, unpack_csr("tok", arrays), unpack_csr("txt", arrays)


def finalize(engine: Engine, sae_id: str, config: CollectConfig, *, progress: bool = True) -> None:
    """Build the feature rows of one SAE from its stored chunks (bounded memory, idempotent)."""
    with Session(engine) as session:
        record = session.get(SaeRecord, sae_id)
        plan: list[list[int]] = get_meta(session, "chunk_plan")
        concepts = {row.id: row.concepts for row in session.exec(select(CorpusText))}
        lengths = {c.text_id: len(c.token_ids) for c in session.exec(select(Context))}
    d = record.d_sae
    names = sorted({c for cs in concepts.values() for c in cs})
    n_chunks = len(plan)

    # Pass 1: counts, sums, maxima, per-concept text statistics, streaming top-K texts.
    n_tokens = 0
    n_fire = np.zeros(d, dtype=np.int64)
    total = np.zeros(d)
    max_act = np.zeros(d, dtype=np.float32)
    concept_sum = np.zeros((len(names), d))
    concept_fire = np.zeros((len(names), d))
    concept_n = np.zeros(len(names))
    top_vals = torch.zeros((0, d))
    top_pos = torch.zeros((0, d), dtype=torch.long)
    text_blocks: list[sp.csr_matrix] = []
    offset = 0
    for index, tokens, texts in _stored_chunks(
        engine, sae_id, n_chunks, f"Statistics {sae_id}" if progress else None
    ):
        n_tokens += tokens.shape[0]
        n_fire += np.bincount(tokens.indices, minlength=d)
        total += np.bincount(tokens.indices, weights=tokens.data, minlength=d)
        max_act = np.maximum(max_act, texts.max(axis=0).toarray().ravel())
        onehot = np.zeros((len(names), texts.shape[0]))
        for j, text_id in enumerate(plan[index]):
            for c in concepts[text_id]:
                onehot[names.index(c), j] = 1
        concept_n += onehot.sum(axis=1)
        concept_sum += (sp.csr_matrix(onehot) @ texts).toarray()
        concept_fire += (sp.csr_matrix(onehot) @ (texts > 0).astype(np.float64)).toarray()
        dense = torch.from_numpy(texts.toarray())
        vals = torch.cat([top_vals, dense])
        pos = torch.cat(
            [top_pos, torch.arange(offset, offset + dense.shape[0]).unsqueeze(1).expand(-1, d)]
        )
        keep = min(config.top_k, vals.shape[0])
        top_vals, idx = torch.topk(vals, keep, dim=0)
        top_pos = torch.gather(pos, 0, idx)
        text_blocks.append(texts)
        offset += texts.shape[0]
    order = [t for chunk in plan for t in chunk]
    per_text = sp.vstack(text_blocks).tocsc() if text_blocks else sp.csc_matrix((0, d))

    # Which (feature, text) pairs become examples: top-K, then a few per activation decile.
    wanted: dict[int, list[tuple[int, int]]] = {}
    rng = np.random.default_rng(config.seed)
    for f in range(d):
        tops = [int(p) for p, v in zip(top_pos[:, f], top_vals[:, f], strict=True) if v > 0]
        chosen = [(p, TOP) for p in tops]
        rows = per_text.indices[per_text.indptr[f] : per_text.indptr[f + 1]]
        vals = per_text.data[per_text.indptr[f] : per_text.indptr[f + 1]]
        rest = np.setdiff1d(rows, tops)
        if config.per_decile and rest.size:
            rest_vals = vals[np.isin(rows, rest)]
            ranked = rest[np.argsort(rest_vals, kind="stable")]
            for decile, group in enumerate(np.array_split(ranked, 10), start=1):
                if group.size:
                    pick = rng.choice(group, size=min(config.per_decile, group.size), replace=False)
                    chosen += [(int(p), decile) for p in sorted(pick)]
        if chosen:
            wanted[f] = chosen

    # Pass 2: quantile histograms and per-token activations of the chosen examples.
    bins = config.histogram_bins
    hist = np.zeros(d * bins, dtype=np.int64)
    scale = np.where(max_act > 0, bins / np.maximum(max_act, 1e-30), 0)
    pair_keys = np.array(
        sorted(f * len(order) + p for f, pairs in wanted.items() for p, _ in pairs), dtype=np.int64
    )
    found: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    offset = 0
    for index, tokens, texts in _stored_chunks(
        engine, sae_id, n_chunks, f"Examples {sae_id}" if progress else None
    ):
        coo = tokens.tocoo()
        bin_index = np.minimum((coo.data * scale[coo.col]).astype(np.int64), bins - 1)
        hist += np.bincount(coo.col * bins + bin_index, minlength=d * bins)
        lens = np.array([lengths[t] for t in plan[index]])
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        local_text = np.repeat(np.arange(len(lens)), lens)[coo.row]
        keys = coo.col.astype(np.int64) * len(order) + offset + local_text
        hit = np.isin(keys, pair_keys)
        for key in np.unique(keys[hit]):
            sel = hit & (keys == key)
            f, p = divmod(int(key), len(order))
            found[(f, p)] = (coo.row[sel] - starts[local_text[sel]], coo.data[sel])
        offset += texts.shape[0]

    rows = []
    for f in range(d):
        counts = hist[f * bins : (f + 1) * bins]
        edges = (np.arange(bins) + 1) * (max_act[f] / bins)
        cum = np.cumsum(counts)
        quantiles = {
            str(q): float(edges[min(np.searchsorted(cum, q * n_fire[f]), bins - 1)])
            if n_fire[f]
            else 0.0
            for q in config.quantiles
        }
        examples = None
        if f in wanted:
            examples = _pack_examples(
                [
                    (
                        order[p],
                        kind,
                        lengths[order[p]],
                        *found.get((f, p), (np.zeros(0, int), np.zeros(0))),
                    )
                    for p, kind in wanted[f]
                ]
            )
        rows.append(
            dict(
                sae_id=sae_id,
                index=f,
                n_fire=int(n_fire[f]),
                firing_rate=float(n_fire[f] / max(n_tokens, 1)),
                mean_act=float(total[f] / n_fire[f]) if n_fire[f] else 0.0,
                max_act=float(max_act[f]),
                quantiles=quantiles,
                concept_stats={
                    c: [
                        float(concept_sum[i, f] / max(concept_n[i], 1)),
                        float(concept_fire[i, f] / max(concept_n[i], 1)),
                    ]
                    for i, c in enumerate(names)
                },
                examples=examples,
            )
        )
    with session_scope(engine) as session:
        session.exec(delete(Feature).where(Feature.sae_id == sae_id))
        session.bulk_insert_mappings(Feature, rows)
        record = session.get(SaeRecord, sae_id)
        record.collected = True
        session.add(record)


def _pack_examples(items: list[tuple[int, int, int, np.ndarray, np.ndarray]]) -> bytes:
    """Examples of one feature as sparse arrays: (text, kind, context length, positions, values)."""
    ptr = np.cumsum([0] + [len(pos) for *_, pos, _ in items])
    return pack_arrays(
        text=np.array([t for t, *_ in items], dtype=np.int64),
        kind=np.array([k for _, k, *_ in items], dtype=np.int8),
        length=np.array([n for _, _, n, *_ in items], dtype=np.int32),
        ptr=ptr.astype(np.int64),
        pos=np.concatenate([np.asarray(pos, dtype=np.int32) for *_, pos, _ in items]),
        val=np.concatenate([np.asarray(val, dtype=np.float32) for *_, val in items]),
    )


def feature_examples(feature: Feature) -> list[Example]:
    """Unpack a feature's examples: top-activating first (descending), then deciles."""
    if feature.examples is None:
        return []
    a = unpack_arrays(feature.examples)
    out = []
    for i in range(len(a["text"])):
        acts = np.zeros(int(a["length"][i]), dtype=np.float32)
        pos, val = a["pos"][a["ptr"][i] : a["ptr"][i + 1]], a["val"][a["ptr"][i] : a["ptr"][i + 1]]
        acts[pos] = val
        out.append(
            Example(int(a["text"][i]), int(a["kind"][i]), float(acts.max(initial=0.0)), acts)
        )
    return out


def text_max_matrix(engine: Engine, sae_id: str) -> tuple[list[int], sp.csr_matrix]:
    """Every text's max activation per feature, rows in the returned text-id order."""
    with Session(engine) as session:
        plan: list[list[int]] = get_meta(session, "chunk_plan") or []
    blocks = [texts for _, _, texts in _stored_chunks(engine, sae_id, len(plan))]
    if not blocks:
        raise SafesailError(f"SAE {sae_id} has no collected activations; run `safesail collect`")
    return [t for chunk in plan for t in chunk], sp.vstack(blocks).tocsr()
