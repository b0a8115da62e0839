"""The corpus's residuals at several sites, from one forward pass, kept on disk.

Why: Safe-SAIL's protocol runs the model over the same corpus again and again: the configuration
search trains its candidates on a sample and collects them at one layer, then the chosen
configuration is trained and collected at the other layers. On a CPU the forward pass is most of
that time (on the demo's 2 cores, the pass to layer 22 over the corpus takes about 4 minutes, the
pass to layer 8 almost 2). With a store the model runs once, to the deepest site, and training
and collection read the residuals back.

Layout of the folder: `manifest.json` (model, the chunk plan's digest, the sites, the width, the
tokens of each chunk) and one float32 file per site holding the chunks' real tokens in plan
order. A chunk is captured exactly as `collect` captures it (same texts in the same forward),
so collecting from the store gives the same rows as collecting from the model. `progress`
holds how many chunks are written: an interrupted build resumes there, and a store is used only
once it is complete. A store whose corpus, chunk plan or model no longer match is ignored (and
rebuilt by the next build).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select
from tqdm.auto import tqdm

from safesail.collection.plan import chunk_plan, plan_chunks, prepare_contexts
from safesail.config import CollectConfig
from safesail.db.tables import Context, CorpusText
from safesail.model.lm import LanguageModel
from safesail.model.sites import Site, parse_site

FOLDER = "residuals"
"""The store's folder inside a workspace."""


@dataclass(frozen=True)
class StoreManifest:
    """What a store holds and what it was computed from."""

    model: str
    digest: str
    """sha256 of the chunk plan's token ids: another corpus, chunking or tokenisation differs."""
    hooks: tuple[str, ...]
    width: int
    chunk_texts: int
    chunk_tokens: tuple[int, ...]


def _digest(plan: list[list[int]], contexts: dict[int, list[int]]) -> str:
    h = hashlib.sha256()
    for chunk in plan:
        for text_id in chunk:
            h.update(np.asarray([text_id, *contexts[text_id]], dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _file(folder: Path, site: Site) -> Path:
    return folder / f"{site.name}.f32"


@dataclass(frozen=True)
class ResidualStore:
    """A complete store, opened for reading (see the module doc)."""

    folder: Path
    manifest: StoreManifest
    plan: list[list[int]]
    lengths: dict[int, int]

    @property
    def sites(self) -> tuple[Site, ...]:
        return tuple(parse_site(h) for h in self.manifest.hooks)

    def covers(self, sites: Sequence[Site]) -> bool:
        return set(sites) <= set(self.sites)

    def _rows(self, site: Site) -> np.memmap:
        shape = (int(self.chunk_offsets[-1]), self.manifest.width)
        return np.memmap(_file(self.folder, site), np.float32, "r", shape=shape)

    @cached_property
    def chunk_offsets(self) -> np.ndarray:
        """Each chunk's first row, and the row count last."""
        return np.concatenate([[0], np.cumsum(self.manifest.chunk_tokens)])

    def chunk(
        self, index: int, sites: Sequence[Site], device: torch.device
    ) -> dict[Site, torch.Tensor]:
        """What `lm.capture` gives for chunk `index` of the plan, read back."""
        start, stop = self.chunk_offsets[index], self.chunk_offsets[index + 1]
        return {s: torch.from_numpy(np.array(self._rows(s)[start:stop])).to(device) for s in sites}

    @cached_property
    def offsets(self) -> dict[int, int]:
        """Each text's first row: the texts' rows follow the plan's order."""
        offsets, position = {}, 0
        for chunk in self.plan:
            for text_id in chunk:
                offsets[text_id] = position
                position += self.lengths[text_id]
        return offsets

    def texts(
        self, text_ids: Sequence[int], site: Site, max_tokens: int | None = None
    ) -> torch.Tensor:
        """The rows of these texts, in this order, each cut to its first `max_tokens` (what a
        forward of the cut text gives: attention is causal)."""
        ends = {t: min(self.lengths[t], max_tokens or self.lengths[t]) for t in text_ids}
        index = np.concatenate(
            [np.arange(self.offsets[t], self.offsets[t] + ends[t]) for t in text_ids] or [[]]
        ).astype(np.int64)
        return torch.from_numpy(np.asarray(self._rows(site)[index]))


def _contexts(engine: Engine) -> dict[int, list[int]] | None:
    """Every corpus text's token ids, or None while some text is not tokenised yet (a corpus
    grown since the store was built)."""
    with Session(engine) as session:
        contexts = {c.text_id: c.token_ids for c in session.exec(select(Context))}
        n_texts = session.exec(select(func.count()).select_from(CorpusText)).one()
    return contexts if len(contexts) == n_texts else None


def _read_manifest(folder: Path) -> StoreManifest | None:
    try:
        raw = json.loads((folder / "manifest.json").read_text())
        return StoreManifest(
            **{**raw, "hooks": tuple(raw["hooks"]), "chunk_tokens": tuple(raw["chunk_tokens"])}
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _written(folder: Path) -> int:
    try:
        return int((folder / "progress").read_text())
    except (OSError, ValueError):
        return 0


def open_store(engine: Engine, lm: LanguageModel, folder: Path) -> ResidualStore | None:
    """The complete store in `folder` if it matches this corpus and model; else None. (Its
    chunks serve a collection only with the same chunk plan: `collect` checks.)"""
    manifest = _read_manifest(folder)
    if manifest is None or manifest.model != lm.name:
        return None
    if _written(folder) != len(manifest.chunk_tokens):
        return None
    contexts = _contexts(engine)
    if contexts is None:
        return None
    lengths = {t: len(c) for t, c in contexts.items()}
    plan = plan_chunks(lengths, manifest.chunk_texts)
    if _digest(plan, contexts) != manifest.digest:
        return None
    return ResidualStore(folder, manifest, plan, lengths)


def build_store(
    engine: Engine,
    lm: LanguageModel,
    folder: Path,
    sites: Sequence[Site],
    config: CollectConfig | None = None,
    *,
    progress: bool = True,
) -> ResidualStore:
    """Capture every chunk of the plan at `sites` in one forward pass each (resumable)."""
    config = config or CollectConfig()
    for site in sites:
        lm.check_layer(site.layer)
    prepare_contexts(engine, lm, config.max_tokens)
    plan = chunk_plan(engine, config.chunk_texts)  # the plan `collect` will encode
    contexts = _contexts(engine)
    assert contexts is not None  # prepare_contexts tokenised every text
    manifest = StoreManifest(
        lm.name,
        _digest(plan, contexts),
        tuple(s.name for s in sorted(set(sites))),
        lm.hidden_size,
        config.chunk_texts,
        tuple(sum(len(contexts[t]) for t in chunk) for chunk in plan),
    )
    store = ResidualStore(folder, manifest, plan, {t: len(c) for t, c in contexts.items()})
    store_sites = store.sites
    if _read_manifest(folder) != manifest or not all(
        _file(folder, s).exists() for s in store_sites
    ):
        drop_store(folder)  # another corpus, plan, model or set of sites, or a damaged store
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(asdict(manifest)))
    offsets = store.chunk_offsets
    start = _written(folder)
    rows = {
        s: np.memmap(
            _file(folder, s),
            np.float32,
            "r+" if start else "w+",
            shape=(int(offsets[-1]), manifest.width),
        )
        for s in store_sites
    }
    layers = ",".join(str(s.layer) for s in store_sites)
    for index in tqdm(
        range(start, len(plan)),
        desc=f"Residuals (layers {layers})",
        unit="chunk",
        disable=not progress,
    ):
        captured = lm.capture([contexts[t] for t in plan[index]], store_sites)
        for site in store_sites:
            rows[site][offsets[index] : offsets[index + 1]] = captured[site].float().cpu().numpy()
            rows[site].flush()
        _write_progress(folder, index + 1)
    return store


def _write_progress(folder: Path, chunks: int) -> None:
    """Chunks written so far, replaced atomically after their rows are flushed."""
    tmp = folder / "progress.tmp"
    tmp.write_text(str(chunks))
    os.replace(tmp, folder / "progress")


def drop_store(folder: Path) -> bool:
    """Delete the store (it is a cache: everything in it is recomputed from the corpus)."""
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True
