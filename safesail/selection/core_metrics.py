"""SAEBench's core metrics for every candidate SAE: is the dictionary worth interpreting at all?

A selection score says how well an SAE's features line up with the safety concepts; it says
nothing about whether the SAE reconstructs the model's residual stream or whether most of its
features ever fire. These figures do, as SAEBench's core eval (sae-bench 0.6.0,
``sae_bench/evals/core/main.py``) defines them, measured on a seeded sample of the corpus:

- ``l0``: mean number of non-zero codes per token;
- ``fve``: fraction of variance explained, ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``
  over the sample's tokens (the textbook definition; sae-bench 0.6.0's ``explained_variance``
  subtracts the squared mean of ``x**2`` instead of the mean of ``x``, see the README);
- ``mse``: mean squared error per element of ``x - x_hat``;
- ``ce_loss_score`` (CE loss recovered): ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``, the
  next-token cross-entropy of the full model with the SAE's reconstruction spliced in at its
  layer (``CE_sae``), with that layer's output zeroed (``CE_zero``) and untouched
  (``CE_clean``): 1 when the reconstruction is as good as the real activations, 0 when it is
  as bad as none. The splice and the zeroing touch the real tokens only: the BOS position
  (never seen by the SAE, see ``safesail.model.lm``) keeps its activations in all three runs;
- ``dead_fraction`` / ``dense_fraction``: features that fire on no token, and on more than 10%
  of tokens (SAEBench's ``1 - frac_alive`` and ``freq_over_10_percent``), counted over the
  whole collected corpus (``Feature.n_fire``) when the SAE is collected, else over the sample:
  a few thousand tokens would call many rare features dead.

The CE runs splice at the decoder block's output (``safesail.selection.ce_loss``), so SAEs
reading another site (``SaeRecord.hook``: an MLP output, a module path) are not measured yet
and keep ``core`` None.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sqlalchemy import func
from sqlmodel import Session, select

from safesail.db.contracts import Workspace
from safesail.db.tables import (
    REFERENCE_ONLY,
    ActivationChunk,
    Context,
    Feature,
    SaeRecord,
    session_scope,
)
from safesail.errors import SafesailError
from safesail.model.lm import LanguageModel, batches_by_length
from safesail.selection.ce_loss import CeLoss, LayerBaseline, layer_baselines, spliced_ce
from safesail.selection.config import require_fraction, require_int


@dataclass(frozen=True)
class CoreConfig:
    """How much text the core metrics are measured on (the CE runs cost full forwards)."""

    n_texts: int = 16
    """Contexts sampled from the corpus (seeded); every SAE costs a full forward over them,
    every layer two more."""
    max_tokens: int = 48
    """Each context is cut to this many tokens."""
    reconstruction_texts: int = 768
    """Contexts (seeded, cut to max_tokens) that L0, FVE and MSE are measured on: about 20k
    tokens on the demo corpus, as SAEBench's core eval reconstructs (10 batches of 16 x 128).
    They need only the layer's residuals (read from the residual store when it holds them), not
    the full model, so they take far more text than the CE runs. On the 16 CE contexts (375
    tokens) one high-norm token could hold a fifth of a layer's variance: layer 22's FVE read
    0.69 there and 0.95 and 0.89 on 64 and 256 contexts."""
    batch_texts: int = 8
    """Contexts per forward: the logits of one batch are [batch, tokens, vocab] floats."""
    dense_threshold: float = 0.1
    """A feature firing on more than this share of tokens is dense (SAEBench: 10%)."""
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("n_texts", self.n_texts, 1)
        require_int("max_tokens", self.max_tokens, 2)
        require_int("reconstruction_texts", self.reconstruction_texts, 1)
        require_int("batch_texts", self.batch_texts, 1)
        require_int("seed", self.seed, 0)
        require_fraction("dense_threshold", self.dense_threshold, 0.0, 1.0)


def dead_and_dense(fires: np.ndarray, n_tokens: int, dense_threshold: float) -> tuple[float, float]:
    """Shares of features firing on no token and on more than ``dense_threshold`` of tokens,
    from per-feature token counts ``fires`` [d_sae]."""
    if not fires.size or n_tokens <= 0:
        raise SafesailError("dead/dense fractions need at least one feature and one token — run `safesail collect` "
            "on a non-empty corpus first")
    density = np.asarray(fires, dtype=float) / n_tokens
    return float((density <= 0).mean()), float((density > dense_threshold).mean())


def reconstruction_metrics(x: torch.Tensor, active: torch.Tensor, x_hat: torch.Tensor) -> dict:
    """L0, FVE and MSE of one SAE on residuals ``x`` [n, d_in] (see the module docstring), from
    each token's count of non-zero codes ``active`` [n] (not the codes: [n, d_sae] is what
    memory cannot hold at 65k features) and the reconstruction ``x_hat``."""
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0)).pow(2).sum()
    return {
        "l0": float(active.float().mean()),
        "fve": float(1 - resid / total) if total > 0 else float("nan"),
        "mse": float((x - x_hat).pow(2).mean()),
    }


def _sample_rows(engine: Any, config: CoreConfig, n_texts: int) -> list[tuple[int, list[int]]]:
    """A seeded sample of (text id, token ids cut to ``max_tokens``) from the corpus."""
    with Session(engine) as session:
        rows = list(
            session.exec(select(Context.text_id, Context.token_ids).order_by(Context.text_id))
        )
    rows = [(t, c[: config.max_tokens]) for t, c in rows if len(c) >= 2]
    if not rows:
        raise SafesailError("no tokenized corpus texts — run `safesail collect` first")
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(rows), size=min(n_texts, len(rows)), replace=False)
    return [rows[i] for i in sorted(pick)]


def _sample(engine: Any, config: CoreConfig) -> list[list[int]]:
    """The CE runs' contexts: a seeded sample of the corpus cut to ``max_tokens``."""
    return [c for _, c in _sample_rows(engine, config, config.n_texts)]


def reconstruction_residuals(
    ws: Workspace, lm: LanguageModel, layers: Sequence[int], config: CoreConfig
) -> dict[int, torch.Tensor]:
    """Each layer's residuals (after its block) on the reconstruction sample: read back from
    the residual store when it holds every layer (a context cut to max_tokens is the first
    rows of the whole one: attention is causal), else one truncated forward."""
    from safesail.model.saes import gather_residuals
    from safesail.model.sites import Site

    rows = _sample_rows(ws.engine, config, config.reconstruction_texts)
    sites = {layer: Site(layer, "resid_post") for layer in layers}
    store = ws.residual_store()
    if store is None or not store.covers(list(sites.values())):
        contexts = [c for _, c in rows]
        batch = config.batch_texts * 4
        computed = gather_residuals(lm, contexts, list(layers), batch)
        order = [i for idx in batches_by_length(contexts, batch) for i in idx]
        bounds = np.cumsum([0] + [len(contexts[i]) for i in order])
        where = {i: slice(bounds[j], bounds[j + 1]) for j, i in enumerate(order)}
        return {  # back in sample order, as the store gives them
            layer: torch.cat([stacked[where[i]] for i in range(len(contexts))])
            for layer, stacked in computed.items()
        }
    ids = [t for t, _ in rows]
    return {layer: store.texts(ids, site, config.max_tokens) for layer, site in sites.items()}


def _corpus_firing(engine: Any, record: SaeRecord) -> tuple[np.ndarray, int] | None:
    """Per-feature firing counts over the whole collected corpus and its token count, or None
    when the SAE has no feature rows yet."""
    with Session(engine) as session:
        rows = session.exec(
            select(Feature.index, Feature.n_fire).where(Feature.sae_id == record.id)
        ).all()
        n_tokens = session.exec(
            select(func.sum(ActivationChunk.n_tokens)).where(ActivationChunk.sae_id == record.id)
        ).one()
    if not rows or not n_tokens:
        return None
    fires = np.zeros(record.d_sae)
    for index, n in rows:
        fires[index] = n
    return fires, int(n_tokens)


_ENCODE_COPIES = 4
"""Dense [tokens, d_sae] tensors an sae-lens ``encode`` holds at once at most (JumpReLU's:
its pre-activations, their ReLU, the threshold mask as floats, and their product)."""


def encode_blocks(
    sae: torch.nn.Module, x: torch.Tensor, memory_budget_bytes: int
) -> Iterator[torch.Tensor]:
    """The codes of residuals ``x`` [n, d_in], a block of tokens at a time, each block's
    encode within ``memory_budget_bytes``: the codes of every token at once are [n, d_sae],
    and encoding them takes several such tensors (17k tokens at 65k features: 4.2 GB each).
    Each token's codes depend on that token alone, so the blocks' codes are the whole's.
    Run it under ``torch.no_grad``: autograd would keep every block's tensors."""
    d_sae = int(sae.W_enc.shape[1])
    per_token = _ENCODE_COPIES * d_sae * sae.W_enc.element_size()
    rows = max(1, memory_budget_bytes // per_token)
    for start in range(0, x.shape[0], rows):
        yield sae.encode(x[start : start + rows])


def reconstruct_blocks(
    sae: torch.nn.Module, x: torch.Tensor, memory_budget_bytes: int
) -> torch.Tensor:
    """The SAE's reconstruction of ``x``, encoded a block of tokens at a time (``encode_blocks``)."""
    with torch.no_grad():
        return torch.cat(
            [sae.decode(codes) for codes in encode_blocks(sae, x, memory_budget_bytes)]
        )


def sae_core(
    sae: torch.nn.Module,
    base: LayerBaseline,
    spliced: float,
    config: CoreConfig,
    firing: tuple[np.ndarray, int] | None = None,
    residuals: torch.Tensor | None = None,
    *,
    memory_budget_bytes: int,
) -> dict[str, float]:
    """Every core metric of one loaded SAE, from its layer's baseline and its spliced CE;
    L0, FVE and MSE on ``residuals`` (the reconstruction sample) when given, else on the CE
    contexts' residuals; dead/dense from ``firing`` (corpus counts) when given, else from the
    sample. The sample is encoded a block of tokens at a time within ``memory_budget_bytes``
    (``encode_blocks``): what the metrics need of the codes is per token (its count of active
    features, its reconstruction) or a per-feature count, so blocks give the whole's figures."""
    x = base.residuals if residuals is None else residuals
    active: list[torch.Tensor] = []
    x_hat: list[torch.Tensor] = []
    sample_fires = torch.zeros(int(sae.W_enc.shape[1]), dtype=torch.long)
    with torch.no_grad():
        for codes in encode_blocks(sae, x, memory_budget_bytes):
            on = codes != 0
            active.append(on.sum(dim=-1))
            sample_fires += on.sum(dim=0).cpu()
            x_hat.append(sae.decode(codes))
    fires, n_tokens = firing or (sample_fires.numpy(), x.shape[0])
    dead, dense = dead_and_dense(fires, n_tokens, config.dense_threshold)
    ce = CeLoss(base.clean, spliced, base.zero)
    return {
        **reconstruction_metrics(x, torch.cat(active), torch.cat(x_hat)),
        "ce_loss_score": ce.score,
        "ce_loss_clean": ce.clean,
        "ce_loss_with_sae": ce.spliced,
        "ce_loss_zero": ce.zero,
        "dead_fraction": dead,
        "dense_fraction": dense,
        "density_tokens": n_tokens,
        "sample_tokens": int(x.shape[0]),
        "ce_tokens": int(base.residuals.shape[0]),
    }


def ensure_core(
    ws: Workspace,
    lm: LanguageModel,
    load_sae: Callable[[SaeRecord], torch.nn.Module],
    config: CoreConfig | None = None,
    *,
    refresh: bool = False,
    progress: bool = True,
) -> list[str]:
    """Measure and store ``SaeRecord.core`` for every SAE with weights that lacks it (all with
    ``refresh``); returns the ids measured. An SAE's figures depend only on its weights, the
    model and the corpus sample, so a rerun of ``select`` does not pay the forwards again."""
    from tqdm.auto import tqdm

    config = config or CoreConfig()
    todo = [
        r
        for r in ws.saes()
        if r.source != REFERENCE_ONLY
        and r.hook in (None, f"blocks.{r.layer}.hook_resid_post")  # the splice's site
        and (refresh or r.core is None)
    ]
    if not todo:
        return []
    contexts = _sample(ws.engine, config)
    by_layer: dict[int, list[SaeRecord]] = {}
    for record in todo:
        by_layer.setdefault(record.layer, []).append(record)
    measured: dict[str, dict[str, float]] = {}
    budget = ws.config.memory_budget_bytes
    bar = tqdm(total=len(todo) + 1, desc="Core metrics", disable=not progress)
    baselines = layer_baselines(lm, contexts, sorted(by_layer), config.batch_texts)
    recon = reconstruction_residuals(ws, lm, sorted(by_layer), config)
    bar.update()
    for layer, records in sorted(by_layer.items()):
        for record in records:
            sae = load_sae(record)
            reconstruct = functools.partial(reconstruct_blocks, sae, memory_budget_bytes=budget)
            spliced = spliced_ce(lm, contexts, layer, reconstruct, config.batch_texts)
            firing = _corpus_firing(ws.engine, record) if record.collected else None
            measured[record.id] = sae_core(
                sae,
                baselines[layer],
                spliced,
                config,
                firing,
                recon[layer],
                memory_budget_bytes=budget,
            )
            bar.update()
    bar.close()
    with session_scope(ws.engine) as session:
        for sae_id, core in measured.items():
            row = session.get(SaeRecord, sae_id)
            row.core = core
            session.add(row)
    return list(measured)
