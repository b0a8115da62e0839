"""The SAE training sample: which contexts an SAE trains on, and their residuals.

The sample is seeded and its residuals come in one order whether they are read from the
workspace's residual store or computed by a forward pass, so a trained SAE does not depend on
whether a store was cached first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from safesail.config import TrainConfig
from safesail.model.lm import LanguageModel, batches_by_length
from safesail.model.saes import gather_residuals
from safesail.model.sites import Site

TRAIN_BATCH = 32
"""Texts per forward pass when gathering SAE training residuals."""


class ResidualSource(Protocol):
    """What training reads of a residual store (safesail.collection.residuals.ResidualStore)."""

    def covers(self, sites: Sequence[Site]) -> bool: ...

    def texts(self, text_ids: Sequence[int], site: Site) -> torch.Tensor: ...


def sample_contexts(contexts: list[list[int]], max_tokens: int | None, seed: int) -> list[int]:
    """Indices of a seeded random subset of contexts holding at most max_tokens tokens (all if
    None)."""
    if max_tokens is None:
        return list(range(len(contexts)))
    order = np.random.default_rng(seed).permutation(len(contexts))
    budget = np.cumsum([len(contexts[i]) for i in order])
    return sorted(int(i) for i in order[budget <= max_tokens])


def training_residuals(
    lm: LanguageModel,
    contexts: Sequence[tuple[int, list[int]]],
    store: ResidualSource | None,
    layers: list[int],
    config: TrainConfig,
) -> dict[int, torch.Tensor]:
    """The seeded training sample's residuals after each layer's block; ``contexts`` are the
    corpus' (text id, token ids) in text-id order."""
    token_ids = [ids for _, ids in contexts]
    sample = sample_contexts(token_ids, config.max_tokens, config.seed)
    sites = {layer: Site(layer, "resid_post") for layer in layers}
    if store is None or not store.covers(list(sites.values())):
        return gather_residuals(lm, [token_ids[i] for i in sample], layers, TRAIN_BATCH)
    batches = batches_by_length([token_ids[i] for i in sample], TRAIN_BATCH)
    order = [contexts[sample[i]][0] for batch in batches for i in batch]
    return {layer: store.texts(order, site) for layer, site in sites.items()}
