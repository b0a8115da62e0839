"""The token inspector (the Safe-SAIL demo's view): which safety features fire on each token of
a prompt, strongest first.

Activations are normalised by each feature's ~99.9th percentile over the corpus (as Safe-SAIL
does), so 1.0 means "as strong as this feature ever gets" whatever its raw scale.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.db.queries import LIST_SAES, best_accepted, require_selected_sae
from safesail.db.tables import Feature, SaeRecord
from safesail.errors import SafesailError
from safesail.model.devices import dtype_name
from safesail.model.encode import encode_csr
from safesail.model.saes import site_of
from safesail.taxonomy import BENIGN, UNINTERPRETABLE

NORM_QUANTILE = "0.999"
"""Feature.quantiles key used as the normaliser (falls back to the feature's max)."""


class FeatureInfo(NamedTuple):
    """What the inspector shows about a safety feature besides its activation."""

    concepts: list[str]
    explanation: str
    source: str | None
    scale: float


class TokenFeature(NamedTuple):
    """One feature active on one token."""

    feature: int
    activation: float
    normalised: float
    concepts: list[str]
    explanation: str
    source: str | None


class InspectedToken(NamedTuple):
    """One prompt token with its active safety features, by descending normalised activation."""

    position: int
    token: str
    features: list[TokenFeature]


def safety_features(engine: Engine, sae_id: str) -> dict[int, FeatureInfo]:
    """The SAE's safety features (triage candidates, and features with an accepted safety
    label) with their best accepted explanation (human, then auto, then prior) and scale."""
    with Session(engine) as session:
        explained = best_accepted(session, sae_id)
        safe = {f for f, e in explained.items() if set(e.concepts) - {BENIGN, UNINTERPRETABLE}}
        rows = session.exec(
            select(
                Feature.index,
                Feature.concept,
                Feature.candidate,
                Feature.quantiles,
                Feature.max_act,
            ).where(Feature.sae_id == sae_id)
        ).all()
    out = {}
    for index, concept, candidate, quantiles, max_act in rows:
        if not candidate and index not in safe:
            continue
        scale = float((quantiles or {}).get(NORM_QUANTILE) or max_act or 0.0)
        if scale <= 0:
            continue
        e = explained.get(index)
        out[index] = FeatureInfo(
            list(e.concepts) if e else [concept] if concept else [],
            e.text if e else "",
            e.source if e else None,
            scale,
        )
    return out


class Inspector:
    """A loaded model + SAE + the SAE's safety features, ready to inspect prompts."""

    def __init__(
        self, lm: Any, record: SaeRecord, sae: torch.nn.Module, features: dict[int, FeatureInfo]
    ) -> None:
        self.lm = lm
        self.record = record
        self.sae = sae
        self.features = features

    @classmethod
    def load(cls, engine: Engine, lm: Any, sae_id: str | None = None) -> Inspector:
        """For the selected SAE (or the one named); fails with what to run when there is none."""
        from safesail.model.saes import load_sae

        sae_id = sae_id or require_selected_sae(engine)
        with Session(engine) as session:
            record = session.get(SaeRecord, sae_id)
        if record is None:
            raise SafesailError(f"no SAE '{sae_id}' in this workspace — {LIST_SAES}")
        sae = load_sae(record, device=str(lm.device), dtype=dtype_name(lm.dtype))  # as the model
        return cls(lm, record, sae, safety_features(engine, record.id))

    def activations(self, text: str, max_tokens: int = 256) -> tuple[list[str], sp.csr_matrix]:
        """The prompt's tokens and the SAE's activations on them, sparse [tokens, d_sae]
        (memory-bounded whatever the SAE's width), read at the SAE's own hook site."""
        ids = self.lm.tokenize([text], max_tokens)[0]
        if not ids:
            raise SafesailError("the prompt has no tokens — give a non-empty prompt")
        site = site_of(self.record)
        return self.lm.decode_tokens(ids), encode_csr(
            self.sae, self.lm.capture([ids], [site])[site]
        )

    def inspect(
        self, text: str, *, min_normalised: float = 0.0, max_tokens: int = 256
    ) -> list[InspectedToken]:
        """Every token with the safety features active on it (above min_normalised)."""
        tokens, acts = self.activations(text, max_tokens)
        index = np.array(sorted(self.features), dtype=np.int64)
        scales = np.array([self.features[int(i)].scale for i in index], dtype=np.float32)
        sub = acts[:, index].toarray()  # [tokens, safety features]: small
        normalised = sub / scales if len(index) else sub
        out = []
        for pos, token in enumerate(tokens):
            active = np.flatnonzero((sub[pos] > 0) & (normalised[pos] >= min_normalised))
            found = []
            for j in active.tolist():
                f = int(index[j])
                info = self.features[f]
                found.append(
                    TokenFeature(
                        f,
                        float(sub[pos, j]),
                        float(normalised[pos, j]),
                        info.concepts,
                        info.explanation,
                        info.source,
                    )
                )
            found.sort(key=lambda t: (-t.normalised, t.feature))
            out.append(InspectedToken(pos, token, found))
        return out
