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
    REFERENCE_ONLY,
    ActivationChunk,
    Context,
    CorpusText,
    Feature,
    SaeRecord,
    corpus_concepts,
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
            x = resid[record.layer]
            if _is_plain_topk(sae):
                tokens = _encode_topk_sparse(sae, x)
            else:
                acts = sae.encode(x)
                tokens = _to_csr(
                    (acts.to_dense() if acts.is_sparse else acts).float().clamp_min_(0)
                )
            out[sae_id] = (tokens, _per_text_max(tokens, text_index.numpy(), len(contexts)))
    return out


def _is_plain_topk(sae: torch.nn.Module) -> bool:
    from sae_lens import TopKSAE

    return type(sae) is TopKSAE and not getattr(sae, "use_error_term", False)


def _encode_topk_sparse(sae: torch.nn.Module, x: torch.Tensor) -> sp.csr_matrix:
    """TopKSAE.encode without the dense [tokens, d_sae] result: same pre-activations, same
    top-k and ReLU, but straight into CSR (the dense scatter and scans cost as much as the
    matmul)."""
    pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
    if sae.cfg.rescale_acts_by_decoder_norm:
        pre = pre * sae.W_dec.norm(dim=-1)
    values, indices = torch.topk(pre, k=sae.cfg.k, dim=-1, sorted=False)
    indices, order = indices.sort(dim=-1)  # canonical CSR: columns ascending in each row
    values = values.gather(-1, order).relu().float()
    keep = values > 0
    indptr = np.concatenate([[0], keep.sum(-1).cumsum(0).numpy()])
    return sp.csr_matrix(
        (values[keep].numpy(), indices[keep].numpy(), indptr), shape=(x.shape[0], pre.shape[-1])
    )


def _per_text_max(tokens: sp.csr_matrix, text_index: np.ndarray, n_texts: int) -> sp.csr_matrix:
    """Each text's max activation per feature, from the token-level sparse activations."""
    coo = tokens.tocoo()
    rows = text_index[coo.row]
    flat = rows.astype(np.int64) * tokens.shape[1] + coo.col
    order = np.argsort(flat, kind="stable")
    flat = flat[order]
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    best = np.maximum.reduceat(coo.data[order], starts) if len(flat) else coo.data[:0]
    keys = flat[starts]
    return sp.csr_matrix(
        (best, (keys // tokens.shape[1], keys % tokens.shape[1])), shape=(n_texts, tokens.shape[1])
    )


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
        todo = [r for r in records if not r.collected and r.source != REFERENCE_ONLY]
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
    corpus = CorpusView.read(engine)
    for record in todo:
        finalize(engine, record.id, config, corpus=corpus, progress=progress)
    return [r.id for r in todo]


def _stored_chunks(
    engine: Engine, sae_id: str, n_chunks: int, desc: str | None = None, *, tokens: bool = True
):
    """Yield (chunk index, token csr or None, text csr) in order, one chunk in memory at a time;
    tokens=False skips unpacking the token-level arrays for callers that need texts only."""
    with Session(engine) as session:
        for index in tqdm(range(n_chunks), desc=desc, unit="chunk", disable=desc is None):
            row = session.get(ActivationChunk, (sae_id, index))
            if row is None:
                raise SafesailError(
                    f"SAE {sae_id}: chunk {index} is missing; rerun `safesail collect`"
                )
            arrays = unpack_arrays(row.data, "" if tokens else "txt")
            yield index, unpack_csr("tok", arrays) if tokens else None, unpack_csr("txt", arrays)


class CorpusView(NamedTuple):
    """What finalize needs to know about the corpus, read once for all SAEs."""

    plan: list[list[int]]
    concepts: dict[int, list[str]]
    lengths: dict[int, int]

    @classmethod
    def read(cls, engine: Engine) -> CorpusView:
        with Session(engine) as session:
            return cls(
                get_meta(session, "chunk_plan") or [],
                corpus_concepts(session),
                {c.text_id: len(c.token_ids) for c in session.exec(select(Context))},
            )


def finalize(
    engine: Engine,
    sae_id: str,
    config: CollectConfig,
    *,
    corpus: CorpusView | None = None,
    progress: bool = True,
) -> None:
    """Build the feature rows of one SAE from its stored chunks (bounded memory, idempotent)."""
    corpus = corpus or CorpusView.read(engine)
    with Session(engine) as session:
        d = session.get(SaeRecord, sae_id).d_sae
    plan, lengths = corpus.plan, corpus.lengths
    names = sorted({c for cs in corpus.concepts.values() for c in cs})
    n_chunks = len(plan)
    order = [t for chunk in plan for t in chunk]
    n_texts = len(order)

    column = {c: i for i, c in enumerate(names)}
    rows_, cols_ = zip(
        *[(column[c], j) for j, t in enumerate(order) for c in corpus.concepts[t]], strict=True
    )
    concept_of = sp.csr_matrix((np.ones(len(rows_)), (rows_, cols_)), shape=(len(names), n_texts))

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
    for _, tokens, texts in _stored_chunks(
        engine, sae_id, n_chunks, f"Statistics {sae_id}" if progress else None
    ):
        n_tokens += tokens.shape[0]
        n_fire += np.bincount(tokens.indices, minlength=d)
        total += np.bincount(tokens.indices, weights=tokens.data, minlength=d)
        max_act = np.maximum(max_act, texts.max(axis=0).toarray().ravel())
        onehot = concept_of[:, offset : offset + texts.shape[0]]
        concept_n += np.asarray(onehot.sum(axis=1)).ravel()
        concept_sum += (onehot @ texts).toarray()
        concept_fire += (onehot @ (texts > 0).astype(np.float64)).toarray()
        dense = torch.from_numpy(texts.toarray())
        vals = torch.cat([top_vals, dense])
        pos = torch.cat(
            [top_pos, torch.arange(offset, offset + dense.shape[0]).unsqueeze(1).expand(-1, d)]
        )
        top_vals, idx = torch.topk(vals, min(config.top_k, vals.shape[0]), dim=0)
        top_pos = torch.gather(pos, 0, idx)
        text_blocks.append(texts)
        offset += texts.shape[0]
    per_text = sp.vstack(text_blocks).tocsc() if text_blocks else sp.csc_matrix((0, d))
    pair_keys, pair_kinds = _choose_examples(
        top_vals.numpy(), top_pos.numpy(), per_text, config, n_texts
    )

    # Pass 2: quantile histograms and per-token activations of the chosen examples.
    bins = config.histogram_bins
    hist = np.zeros(d * bins, dtype=np.int64)
    scale = np.where(max_act > 0, bins / np.maximum(max_act, 1e-30), 0)
    hit_keys, hit_pos, hit_val = [], [], []
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
        keys = coo.col.astype(np.int64) * n_texts + offset + local_text
        hit = _member(keys, pair_keys)
        hit_keys.append(keys[hit])
        hit_pos.append(coo.row[hit] - starts[local_text[hit]])
        hit_val.append(coo.data[hit])
        offset += texts.shape[0]
    hit_keys, hit_pos, hit_val = (
        np.concatenate(a) if a else np.zeros(0) for a in (hit_keys, hit_pos, hit_val)
    )
    sort = np.lexsort((hit_pos, hit_keys))
    hit_keys, hit_pos, hit_val = hit_keys[sort], hit_pos[sort], hit_val[sort]

    # Feature rows: everything vectorised over features, then one dict per feature.
    cum = hist.reshape(d, bins).cumsum(axis=1)
    quantiles = {
        str(q): (np.minimum((cum < (q * n_fire)[:, None]).sum(axis=1), bins - 1) + 1)
        * (max_act / bins)
        for q in config.quantiles
    }
    quantiles = {q: np.where(n_fire > 0, v, 0.0).tolist() for q, v in quantiles.items()}
    per_concept = [
        (
            (concept_sum[i] / max(concept_n[i], 1)).tolist(),
            (concept_fire[i] / max(concept_n[i], 1)).tolist(),
        )
        for i in range(len(names))
    ]
    pair_feature = pair_keys // n_texts
    pair_bounds = np.searchsorted(pair_feature, np.arange(d + 1))
    hit_start = np.searchsorted(hit_keys, pair_keys, side="left")
    hit_end = np.searchsorted(hit_keys, pair_keys, side="right")
    text_of_pos = np.asarray(order, dtype=np.int64)
    length_of_pos = np.array([lengths[t] for t in order], dtype=np.int32)
    n_fire_l, total_l, max_l = n_fire.tolist(), total.tolist(), max_act.tolist()
    rows = []
    for f in range(d):
        a, b = pair_bounds[f], pair_bounds[f + 1]
        examples = None
        if b > a:
            text_pos = pair_keys[a:b] % n_texts
            h0, h1 = hit_start[a], hit_end[b - 1]
            examples = pack_examples(
                text_of_pos[text_pos],
                pair_kinds[a:b],
                length_of_pos[text_pos],
                np.concatenate([hit_start[a:b], [h1]]) - h0,
                hit_pos[h0:h1],
                hit_val[h0:h1],
            )
        rows.append(
            dict(
                sae_id=sae_id,
                index=f,
                n_fire=n_fire_l[f],
                firing_rate=n_fire_l[f] / max(n_tokens, 1),
                mean_act=total_l[f] / n_fire_l[f] if n_fire_l[f] else 0.0,
                max_act=max_l[f],
                quantiles={q: v[f] for q, v in quantiles.items()},
                concept_stats={
                    c: [per_concept[i][0][f], per_concept[i][1][f]] for i, c in enumerate(names)
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


def _choose_examples(
    top_vals: np.ndarray,
    top_pos: np.ndarray,
    per_text: sp.csc_matrix,
    config: CollectConfig,
    n_texts: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The (feature, text) pairs kept as examples, as sorted keys feature * n_texts + text, with
    their kind: TOP for the top-K, else the activation decile (1..10) of a random sample
    drawn from the remaining activating texts (delphi-style), per_decile per decile."""
    d = per_text.shape[1]
    is_top = top_vals > 0
    top_keys = np.sort((np.arange(d)[None, :] * n_texts + top_pos)[is_top])
    cols = np.repeat(np.arange(d), np.diff(per_text.indptr))
    entry_keys = cols.astype(np.int64) * n_texts + per_text.indices
    rest = ~_member(entry_keys, top_keys)
    cols, keys, vals = cols[rest], entry_keys[rest], per_text.data[rest]
    keys_out, kinds_out = [top_keys], [np.full(len(top_keys), TOP, dtype=np.int8)]
    if config.per_decile and len(keys):
        # One float key per entry, column + value scaled into [0, 1): a single stable argsort
        # orders by activation within each feature (ties keep text order), far cheaper than a
        # multi-key lexsort over millions of entries.
        peak = np.zeros(d)
        np.maximum.at(peak, cols, vals)
        by_value = np.argsort(cols + vals / (peak[cols] * (1 + 1e-9)), kind="stable")
        cols, keys = cols[by_value], keys[by_value]
        counts = np.bincount(cols, minlength=d)
        rank = np.arange(len(cols)) - np.repeat(np.cumsum(counts) - counts, counts)
        n = counts[cols]
        q, r = n // 10, n % 10  # np.array_split into 10: the first r groups hold q + 1
        big = rank < (q + 1) * r
        decile = np.where(big, rank // (q + 1), r + (rank - (q + 1) * r) // np.maximum(q, 1)) + 1
        group = cols.astype(np.int64) * 11 + decile
        lottery = np.random.default_rng(config.seed).random(len(cols))
        pick = np.argsort(group + lottery, kind="stable")  # groups in order, shuffled inside
        group = group[pick]
        first = np.r_[True, group[1:] != group[:-1]]
        place = np.arange(len(group)) - np.maximum.accumulate(
            np.where(first, np.arange(len(group)), 0)
        )
        chosen = pick[place < config.per_decile]
        keys_out.append(keys[chosen])
        kinds_out.append(decile[chosen].astype(np.int8))
    keys_all, kinds_all = np.concatenate(keys_out), np.concatenate(kinds_out)
    sort = np.argsort(keys_all, kind="stable")
    return keys_all[sort], kinds_all[sort]


def _member(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """keys in sorted_set, by binary search (np.isin sorts both sides every call)."""
    if not len(sorted_set):
        return np.zeros(len(keys), dtype=bool)
    where = np.minimum(np.searchsorted(sorted_set, keys), len(sorted_set) - 1)
    return sorted_set[where] == keys


def pack_examples(
    text: np.ndarray,
    kind: np.ndarray,
    length: np.ndarray,
    ptr: np.ndarray,
    pos: np.ndarray,
    val: np.ndarray,
) -> bytes:
    """One feature's examples as raw little-endian arrays behind a 2-int header.

    Thousands of features are packed per SAE; an npz per feature costs more than everything
    else in finalize, and these small arrays do not compress.
    """
    header = np.array([len(text), len(pos)], dtype="<i4")
    parts = (
        header,
        np.asarray(text, "<i4"),
        np.asarray(kind, "i1"),
        np.asarray(length, "<i4"),
        np.asarray(ptr, "<i4"),
        np.asarray(pos, "<i4"),
        np.asarray(val, "<f4"),
    )
    return b"".join(p.tobytes() for p in parts)


def unpack_examples(blob: bytes) -> dict[str, np.ndarray]:
    m, nnz = np.frombuffer(blob, "<i4", 2)
    out, at = {}, 8
    for name, dtype, count in (
        ("text", "<i4", m),
        ("kind", "i1", m),
        ("length", "<i4", m),
        ("ptr", "<i4", m + 1),
        ("pos", "<i4", nnz),
        ("val", "<f4", nnz),
    ):
        out[name] = np.frombuffer(blob, dtype, int(count), at)
        at += int(count) * np.dtype(dtype).itemsize
    return out


def feature_examples(feature: Feature) -> list[Example]:
    """Unpack a feature's examples: top-activating first (descending), then by decile."""
    if feature.examples is None:
        return []
    a = unpack_examples(feature.examples)
    out = []
    for i in range(len(a["text"])):
        acts = np.zeros(int(a["length"][i]), dtype=np.float32)
        acts[a["pos"][a["ptr"][i] : a["ptr"][i + 1]]] = a["val"][a["ptr"][i] : a["ptr"][i + 1]]
        out.append(
            Example(int(a["text"][i]), int(a["kind"][i]), float(acts.max(initial=0.0)), acts)
        )
    return sorted(out, key=lambda e: (e.kind, -e.max_act, e.text_id))


def text_max_matrix(engine: Engine, sae_id: str) -> tuple[list[int], sp.csr_matrix]:
    """Every text's max activation per feature, rows in the returned text-id order."""
    with Session(engine) as session:
        plan: list[list[int]] = get_meta(session, "chunk_plan") or []
    blocks = [texts for _, _, texts in _stored_chunks(engine, sae_id, len(plan), tokens=False)]
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
    for index, tok, _ in _stored_chunks(engine, sae_id, len(plan)):
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
