"""The token inspector (the Safe-SAIL demo's view): which safety features fire on each token of
a prompt, strongest first.

Activations are normalised by each feature's ~99.9th percentile over the corpus (as Safe-SAIL
does), so 1.0 means "as strong as this feature ever gets" whatever its raw scale.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safesail.errors import SafesailError
from safesail.queries import best_accepted, require_selected_sae
from safesail.storage import Feature, SaeRecord
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
        from safesail.saes import load_sae

        sae_id = sae_id or require_selected_sae(engine)
        with Session(engine) as session:
            record = session.get(SaeRecord, sae_id)
        if record is None:
            raise SafesailError(f"no SAE '{sae_id}' in this workspace")
        return cls(lm, record, load_sae(record), safety_features(engine, record.id))

    @torch.inference_mode()
    def activations(self, text: str, max_tokens: int = 256) -> tuple[list[str], torch.Tensor]:
        """The prompt's tokens and the SAE's activations on them, [tokens, d_sae]."""
        ids = self.lm.tokenize([text], max_tokens)[0]
        if not ids:
            raise SafesailError("the prompt has no tokens")
        resid = self.lm.residuals([ids], [self.record.layer])[self.record.layer]
        acts = self.sae.encode(resid)
        acts = acts.to_dense() if acts.is_sparse else acts
        return self.lm.decode_tokens(ids), acts.float().clamp_min(0)

    def inspect(
        self, text: str, *, min_normalised: float = 0.0, max_tokens: int = 256
    ) -> list[InspectedToken]:
        """Every token with the safety features active on it (above min_normalised)."""
        tokens, acts = self.activations(text, max_tokens)
        index = torch.tensor(sorted(self.features), dtype=torch.long)
        scales = torch.tensor([self.features[int(i)].scale for i in index])
        sub = acts[:, index] if len(index) else acts[:, :0]
        normalised = sub / scales if len(index) else sub
        out = []
        for pos, token in enumerate(tokens):
            active = torch.nonzero((sub[pos] > 0) & (normalised[pos] >= min_normalised)).flatten()
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
