"""The activation cache: stream the corpus through the model once, encode with every SAE, and
store each chunk's sparse activations for finalize (safesail.finalize) to build feature rows
from.

Work is split into chunks of texts. Each chunk's sparse activations are written in one
transaction keyed by (SAE, chunk), so an interrupted run resumes where it stopped and nothing is
counted twice. `finalize` then streams the stored chunks to build feature rows; it is a pure
function of those chunks, so rerunning it gives the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from tqdm.auto import tqdm

from safesail.config import CollectConfig
from safesail.errors import SafesailError
from safesail.finalize import CorpusView, finalize
from safesail.lm import LanguageModel
from safesail.storage import (
    REFERENCE_ONLY,
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
)


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
