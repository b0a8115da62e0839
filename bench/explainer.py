"""Explainer cost and coverage: our prompts (marked segments + nearest-gold few-shot + a line of
corpus evidence: the concept tags of the top texts vs. their base rates, with the concept choice
shortlisted to them) against a delphi-style baseline (every top context whole, no few-shot, no
evidence), in ONE run on the embedded SmolLM2 served by llama.cpp. Both are calibrated with the
same signals (the evidence-agreement signal included).

Setup: a copy of a demo workspace's database (default ./workspace, read-only), simulated
expert gold labels (safesail.oracle) on a seeded sample of the safety candidates, the rest of a
sample explained as "unlabeled". Per prompt style it reports LLM tokens per accepted feature
(every token spent, gold yardstick included), coverage of the unlabeled features at the 90%
agreement target vs. gold labels spent, and the accepted features' real agreement with the
simulated experts. Last line: tokens_ours_over_baseline=<ratio>.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safesail.config import WorkspaceConfig  # noqa: E402
from safesail.errors import SafesailError  # noqa: E402
from safesail.explainer.calibration import fit_calibration, signal_matrix  # noqa: E402
from safesail.explainer.config import ExplainConfig, LlmConfig  # noqa: E402
from safesail.explainer.pipeline import endpoint, explain  # noqa: E402
from safesail.explainer.simulate import seed_gold  # noqa: E402
from safesail.oracle import oracle_labels  # noqa: E402
from safesail.storage import Explanation, Feature, LlmCall  # noqa: E402
from safesail.workspace import Workspace  # noqa: E402


def copy_db(source: Path, target: Path) -> Workspace:
    target.mkdir(parents=True)
    shutil.copy(source / "safesail.db", target / "safesail.db")
    return Workspace(WorkspaceConfig(target))


def tokens(ws: Workspace) -> int:
    with Session(ws.engine) as session:
        return sum(c.prompt_tokens + c.completion_tokens for c in session.exec(select(LlmCall)))


def rows(ws: Workspace) -> list[Explanation]:
    with Session(ws.engine) as session:
        return list(
            session.exec(
                select(Explanation).where(
                    Explanation.source == "auto", Explanation.status != "failed"
                )
            )
        )


def curve(
    explained: list[Explanation], truth: dict[int, list[str]], sizes: list[int], config
) -> list[tuple[int, float, float | None]]:
    """(gold labels spent, coverage of the unlabeled, their real agreement) per gold size."""
    gold = [r for r in explained if r.details.get("yardstick")]
    open_ = [r for r in explained if not r.details.get("yardstick")]
    out = []
    for n in sizes:
        subset = gold[:n]
        x = signal_matrix([r.details["signals"] for r in subset])
        y = np.array([r.details["agrees"] for r in subset], dtype=int)
        try:
            cal = fit_calibration(
                x, y, target=config.target, min_gold=config.min_gold, z=config.confidence_z
            )
        except SafesailError:
            out.append((n, 0.0, None))
            continue
        p = cal.predict(signal_matrix([r.details["signals"] for r in open_]))
        accepted = [r for r, q in zip(open_, p, strict=True) if q >= cal.threshold.threshold]
        agree = [r.concepts[0] in truth[r.feature] for r in accepted]
        out.append(
            (n, len(accepted) / max(1, len(open_)), float(np.mean(agree)) if agree else None)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(os.environ.get("SAFESAIL_WORKSPACE", "workspace")),
        help="a demo workspace, read-only (default: ./workspace, what `make demo` builds)",
    )
    parser.add_argument("--gold", type=int, default=30, help="gold-labeled features (yardstick)")
    parser.add_argument("--unlabeled", type=int, default=15, help="features to accept or queue")
    parser.add_argument("--base-url", help="endpoint (default: the embedded server)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspaces")
    parser.add_argument("--styles", nargs="+", default=["ours", "baseline"], help="prompt styles")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-explainer-"))
    source = Workspace(WorkspaceConfig(args.workspace))
    sae = source.selected_sae
    with Session(source.engine) as session:
        candidates = list(
            session.exec(
                select(Feature.index).where(
                    Feature.sae_id == sae, Feature.candidate, Feature.examples.is_not(None)
                )
            )
        )
    source.engine.dispose()
    rng = np.random.default_rng(0)
    sample = [int(f) for f in rng.permutation(sorted(candidates))[: args.gold + args.unlabeled]]
    gold, unlabeled = sample[: args.gold], sample[args.gold :]
    scorers = ("detection", "embedding")  # the LLM scorer that costs least; same for both
    llm = LlmConfig(base_url=args.base_url, concurrency=2)
    results = {}
    started = time.perf_counter()
    first = copy_db(args.workspace, tmp / "ours")
    with endpoint(first, llm) as url:
        llm = LlmConfig(base_url=url, concurrency=2)
        for style in args.styles:
            ws = first if style == "ours" else copy_db(args.workspace, tmp / style)
            seed_gold(ws.engine, sae, gold)
            truth = oracle_labels(ws.engine, sae, sample)
            config = ExplainConfig(prompting=style, scorers=scorers, min_gold=min(20, args.gold))
            t0 = time.perf_counter()
            report = explain(ws, config, llm, features=unlabeled, progress=False)
            seconds = time.perf_counter() - t0
            explained = rows(ws)
            spent = tokens(ws)
            accepted = [r for r in explained if r.status == "accepted"]
            real = [r.concepts[0] in truth[r.feature] for r in accepted]
            gold_rate = np.mean(
                [r.details["agrees"] for r in explained if r.details.get("yardstick")]
            )
            sizes = [n for n in (20, 25, 30, 40, 60) if n <= args.gold]
            results[style] = {
                "tokens": spent,
                "accepted": len(accepted),
                "per_accepted": spent / len(accepted) if accepted else float("inf"),
                "per_feature": spent / len(sample),
                "real_agreement": float(np.mean(real)) if real else None,
                "heldout": report.calibration.get("achieved_agreement"),
                "coverage": report.calibration.get("coverage"),
                "gold_rate": float(gold_rate),
                "failed": sum(1 for r in rows(ws) if r.status == "failed"),
                "seconds": seconds,
                "curve": curve(explained, truth, sizes, config),
            }
    total = time.perf_counter() - started
    print(f"workspace {args.workspace} ({sae}); {len(gold)} gold + {len(unlabeled)} unlabeled")
    print(f"scorers {scorers}; target 0.9 (Wilson z=1 on held-out folds); {total:.0f} s in all")
    print("ours also gets the corpus evidence line (tags of its top texts vs. base rates)")
    for style, r in results.items():
        agreement = "-" if r["real_agreement"] is None else f"{r['real_agreement']:.0%}"
        heldout = "-" if r["heldout"] is None else f"{r['heldout']:.0%}"
        print(
            f"{style:>9}: {r['tokens']} tokens ({r['per_feature']:.0f}/feature), "
            f"accepted {r['accepted']}/{len(unlabeled)} (coverage {r['coverage']:.0%}), "
            f"{r['per_accepted']:.0f} tokens/accepted, held-out agreement {heldout}, "
            f"accepted agree with experts {agreement}, gold agreement rate {r['gold_rate']:.0%}, "
            f"{r['seconds']:.0f} s"
        )
        for n, cov, agree in r["curve"]:
            shown = "-" if agree is None else f"{agree:.0%}"
            print(f"           {n} gold labels -> coverage {cov:.0%}, accepted agree {shown}")
    if not args.keep:
        shutil.rmtree(tmp)
    if len(results) < 2:
        return
    ours, base = results["ours"], results["baseline"]
    per_feature = ours["per_feature"] / base["per_feature"]
    print(f"tokens_per_feature_ours_over_baseline={per_feature:.3f}")
    # A style that accepts nothing is credited with one accepted feature: the ratio is then an
    # upper bound (the true one is 0 when only the baseline accepts nothing), never a flattering 0.
    ratio = (ours["tokens"] / max(ours["accepted"], 1)) / (
        base["tokens"] / max(base["accepted"], 1)
    )
    if base["accepted"] == 0:
        print("baseline accepted nothing: ratio below is an upper bound (baseline credited with 1)")
    print(f"tokens_ours_over_baseline={ratio:.3f}")


if __name__ == "__main__":
    main()
