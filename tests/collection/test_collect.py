"""Collection against brute force, batching against one-text-at-a-time, and resumption."""

from __future__ import annotations

import itertools
import sqlite3
import time

import numpy as np
import pytest
import torch
from sqlmodel import Session, func, select

from safesail.collection import collect as collect_mod
from safesail.db.tables import ActivationChunk, Context, CorpusText, Feature, SaeRecord, get_meta
from safesail.features.examples import DECILES, TOP, decile_table, feature_examples
from safesail.model.saes import load_sae
from tests.conftest import TINY_COLLECT, TINY_SPECS, make_workspace, tiny_records


def _brute_force(ws, sae_id: str):
    """Dense per-token activations of every text, computed directly from model + SAE."""
    with Session(ws.engine) as session:
        record = session.get(SaeRecord, sae_id)
        plan = get_meta(session, "chunk_plan")
        contexts = {c.text_id: c.token_ids for c in session.exec(select(Context))}
        concepts = {t.id: t.concepts for t in session.exec(select(CorpusText))}
    sae = load_sae(record)
    per_text: dict[int, np.ndarray] = {}
    for chunk in plan:  # the same batches as collection, encoded densely
        resid = ws.lm.residuals([contexts[t] for t in chunk], [record.layer])[record.layer]
        with torch.inference_mode():
            acts = sae.encode(resid).clamp_min(0).numpy()
        offsets = np.cumsum([0] + [len(contexts[t]) for t in chunk])
        for i, t in enumerate(chunk):
            per_text[t] = acts[offsets[i] : offsets[i + 1]]
    return record, per_text, concepts


def test_collection_matches_brute_force(trained_ws):
    record, per_text, concepts = _brute_force(trained_ws, TINY_SPECS[2].sae_id)
    everything = np.concatenate(list(per_text.values()))
    text_ids = sorted(per_text)
    text_max = np.stack([per_text[t].max(axis=0) for t in text_ids])
    with Session(trained_ws.engine) as session:
        features = {
            f.index: f for f in session.exec(select(Feature).where(Feature.sae_id == record.id))
        }
        tokens_of = {c.text_id: c.tokens for c in session.exec(select(Context))}
    assert len(features) == record.d_sae
    fired = everything > 0
    for f, row in features.items():
        column = everything[:, f]
        assert row.n_fire == int(fired[:, f].sum())
        assert row.firing_rate == pytest.approx(fired[:, f].mean())
        assert row.max_act == pytest.approx(column.max(), rel=1e-5)
        if row.n_fire:
            positive = column[column > 0]
            assert row.mean_act == pytest.approx(positive.mean(), rel=1e-4)
            tol = column.max() / TINY_COLLECT.histogram_bins + 1e-6
            for q, value in row.quantiles.items():
                assert abs(value - np.quantile(positive, float(q), method="inverted_cdf")) <= tol
        for concept in ("violence", "cybercrime", "benign"):
            rows = [i for i, t in enumerate(text_ids) if concept in concepts[t]]
            mean, frac = row.concept_stats[concept]
            assert mean == pytest.approx(text_max[rows, f].mean(), rel=1e-4, abs=1e-6)
            assert frac == pytest.approx((text_max[rows, f] > 0).mean())

        examples = feature_examples(row)
        top = [e for e in examples if e.kind == TOP]
        expected = np.sort(text_max[:, f][text_max[:, f] > 0])[::-1][: TINY_COLLECT.top_k]
        np.testing.assert_allclose([e.max_act for e in top], expected, rtol=1e-5)
        for example in examples:  # every example: exact per-token activations of its text
            np.testing.assert_allclose(
                example.activations, per_text[example.text_id][:, f], rtol=1e-5
            )
            assert len(example.activations) == len(tokens_of[example.text_id])
        deciles = [e for e in examples if e.kind != TOP]
        assert not {e.text_id for e in deciles} & {e.text_id for e in top}
        assert all(e.max_act > 0 for e in deciles)
        # each decile of the other activating texts, by their histogram bin, gives per_decile
        # of its texts (all when it has fewer), and a higher decile never holds a weaker text
        top_ids = {e.text_id for e in top}
        rest = np.array(
            [
                text_max[i, f]
                for i, t in enumerate(text_ids)
                if text_max[i, f] > 0 and t not in top_ids
            ]
        )
        bins = TINY_COLLECT.histogram_bins
        scale = bins / np.float32(row.max_act) if len(rest) else 0.0
        cells = np.minimum((rest * scale).astype(np.int64), bins - 1)
        table = decile_table(np.bincount(cells, minlength=bins)[None, :])[0]
        sizes = np.bincount(table[cells], minlength=DECILES + 1)[1:]
        assert len(deciles) == sum(min(TINY_COLLECT.per_decile, int(n)) for n in sizes)
        for low, high in itertools.combinations(sorted(deciles, key=lambda e: e.kind), 2):
            if low.kind < high.kind:
                assert low.max_act <= high.max_act * (1 + 1e-5)


def test_batched_forward_matches_single_texts(lm):
    """Padding and the prepended BOS must not change any real token's residual."""
    texts = [r.text for r in tiny_records()[::17]]
    ids = lm.tokenize(texts, 24)
    batched = lm.residuals(ids, [2])[2]
    single = torch.cat([lm.residuals([row], [2])[2] for row in ids])
    assert batched.shape == (sum(len(r) for r in ids), lm.hidden_size)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-3)


class _SlowBlock(torch.nn.Module):
    """Adds its number + 1 to the stream, slowly (so two threads' forwards overlap)."""

    def __init__(self, i: int) -> None:
        super().__init__()
        self.i = i

    def forward(self, x):
        time.sleep(0.002)
        return (x + self.i + 1,)


class _Decoder(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_SlowBlock(i) for i in range(n))

    def forward(self, input_ids, attention_mask, use_cache):
        x = input_ids.float().unsqueeze(-1)
        for block in self.layers:
            x = block(x)[0]
        return x


def test_concurrent_forwards_do_not_race():
    """The app's cached inspector serves several sessions from one model: two threads asking for
    different depths get their own, correct residuals, and the model keeps all its blocks."""
    import threading
    from types import SimpleNamespace

    from safesail.model.lm import LanguageModel

    n = 12
    holder = torch.nn.Module()
    holder.model = _Decoder(n)
    lm = LanguageModel("fake", SimpleNamespace(pad_token_id=0), holder, 1, n, bos_id=0)
    batch = [[5, 6, 7]]
    # after block L the stream is token + sum_{i<=L}(i + 1) = token + (L+1)(L+2)/2
    expected = {L: torch.tensor([[5.0], [6.0], [7.0]]) + (L + 1) * (L + 2) / 2 for L in range(n)}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(layer: int) -> None:
        start.wait()
        try:
            for _ in range(240 // (layer + 1)):  # both threads busy for about as long
                out = lm.residuals(batch, [layer])[layer]
                torch.testing.assert_close(out, expected[layer])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(L,)) for L in (1, n - 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(holder.model.layers) == n


def _feature_table(ws, sae_id):
    return _rows_of(ws.engine, sae_id)


def _rows_of(engine, sae_id):
    with Session(engine) as session:
        rows = session.exec(select(Feature).where(Feature.sae_id == sae_id).order_by(Feature.index))
        return [
            (f.n_fire, f.max_act, f.mean_act, f.quantiles, f.concept_stats, f.examples)
            for f in rows
        ]


def test_interrupted_collection_resumes_without_double_counting(
    trained_ws, lm, sae_copy, tmp_path, monkeypatch
):
    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_corpus(tiny_records())
    sae_id = ws.add_sae(sae_copy, sae_id=TINY_SPECS[1].sae_id)
    real = collect_mod.encode_chunk
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(collect_mod, "encode_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        ws.collect(TINY_COLLECT, progress=False)
    with Session(ws.engine) as session:
        assert session.exec(select(func.count()).select_from(ActivationChunk)).one() == 2
        assert session.exec(select(func.count()).select_from(Feature)).one() == 0
    monkeypatch.setattr(collect_mod, "encode_chunk", real)

    assert ws.collect(TINY_COLLECT, progress=False) == [sae_id]
    n_chunks = len(get_meta(Session(ws.engine), "chunk_plan"))
    with Session(ws.engine) as session:
        assert session.exec(select(func.count()).select_from(ActivationChunk)).one() == n_chunks
    # Same corpus, same SAE, one uninterrupted run: identical features.
    assert _feature_table(ws, sae_id) == _feature_table(trained_ws, sae_id)
    # A rerun of a finished collection is a no-op.
    assert ws.collect(TINY_COLLECT, progress=False) == []
    assert _feature_table(ws, sae_id) == _feature_table(trained_ws, sae_id)


def test_corpus_change_triggers_clean_recollection(lm, sae_copy, tmp_path):
    ws = make_workspace(tmp_path / "ws", lm)
    ws.add_corpus(tiny_records()[:40])
    sae_id = ws.add_sae(sae_copy)
    ws.collect(TINY_COLLECT, progress=False)
    assert ws.add_corpus(tiny_records()[:40]) == 0  # re-adding is idempotent
    ws.add_corpus(tiny_records()[40:60])
    assert ws.collect(TINY_COLLECT, progress=False) == [sae_id]
    with Session(ws.engine) as session:
        total = sum(f.n_fire for f in session.exec(select(Feature)))
        n_tokens = sum(c.n_tokens for c in session.exec(select(ActivationChunk)))
        expected_tokens = sum(len(c.token_ids) for c in session.exec(select(Context)))
    assert n_tokens == expected_tokens
    assert total > 0


def test_decoded_tokens_match_the_tokenizer_per_id(lm):
    """decode_tokens caches each id's string: repeats and a second call give the tokenizer's."""
    ids = lm.tokenize(["The knife, the knife: données 1987!"], 64)[0]
    expected = [lm.tokenizer.decode([i]) for i in ids]
    assert lm.decode_tokens(ids + ids) == expected + expected
    assert lm.decode_tokens(ids) == expected


def test_finalize_rows_do_not_depend_on_batching_or_cache(trained_ws, tmp_path, monkeypatch):
    """Finalize reads runs of chunks (BATCH_CELLS) and keeps the first ones decoded between
    passes (CACHE_BYTES). One chunk at a time with nothing cached gives the rows the shared
    workspace holds, byte for byte (on a copy of its database: it stays read-only)."""
    from safesail.collection import finalize as finalize_mod
    from safesail.collection import stream as stream_mod
    from safesail.db.tables import open_db

    copy = tmp_path / "copy.db"
    with sqlite3.connect(trained_ws.engine.url.database) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    engine = open_db(f"sqlite:///{copy}")
    monkeypatch.setattr(stream_mod, "BATCH_CELLS", 1)
    monkeypatch.setattr(stream_mod, "CACHE_BYTES", 0)
    for spec in TINY_SPECS:
        finalize_mod.finalize(engine, spec.sae_id, TINY_COLLECT, progress=False)
        got, want = _rows_of(engine, spec.sae_id), _feature_table(trained_ws, spec.sae_id)
        assert got == want
