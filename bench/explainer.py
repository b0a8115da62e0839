"""Explainer cost and coverage judged against the reference set (features labeled by reading,
bench/reference/): our prompts (marked segments + nearest-gold few-shot + corpus evidence line)
against a delphi-style baseline (every top context whole, no few-shot, no evidence), in ONE
run on the same endpoint (default: the embedded SmolLM2 behind llama.cpp).

Fixed before the run:
- a fresh copy of the demo workspace's database with every earlier LlmCall, Explanation and
  Score row removed (nothing is served from an earlier run's cache);
- gold labels (the few-shot material and calibration yardstick) are the reference set's
  **dev** half: the reader's labels and one-line reasons, up to `--gold` of them;
- the features to accept or route are the reference **test** half (up to `--unlabeled`), and
  an accepted explanation counts as right only when it agrees with the reader's label there;
- target 0.9, delta 0.1, the library's cascade; a style that accepts nothing is reported as 0
  accepted (no credit), with its tokens per feature beside.
Prints per style tokens, acceptances and their reference agreement, then
`accepted_agreement_reference=<x>`, `tokens_per_accepted_ours_over_baseline=<r>` and last
`auto_per_human_at_target=<x>` (accepted automatic explanations that agree with the reference,
per human label spent).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script

from _reference_draw import add_source_args, copy_db, draw  # noqa: E402

from safesail.config import WorkspaceConfig  # noqa: E402
from safesail.db.tables import Explanation, LlmCall  # noqa: E402
from safesail.explainer.config import ExplainConfig, LlmConfig  # noqa: E402
from safesail.explainer.pipeline import endpoint, explain  # noqa: E402
from safesail.explainer.simulate import seed_gold  # noqa: E402
from safesail.reference.check import default_file, open_reference  # noqa: E402
from safesail.reference.labels import agrees  # noqa: E402
from safesail.workspace import Workspace  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(
        parser, "a demo workspace, read-only (default: ./workspace, what `make demo` builds)"
    )
    parser.add_argument("--gold", type=int, default=60, help="dev-half features used as gold")
    parser.add_argument("--unlabeled", type=int, default=60, help="test-half features to route")
    parser.add_argument("--base-url", help="endpoint (default: the embedded server)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspaces")
    parser.add_argument("--styles", nargs="+", default=["ours", "baseline"], help="prompt styles")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-explainer-"))
    source = Workspace(WorkspaceConfig(args.workspace))
    ref = open_reference(source, args.reference or default_file(source))
    source.engine.dispose()
    sae = ref.sae_id
    gold, unlabeled, given = draw(ref, args.gold, args.unlabeled)
    scorers = ("detection", "embedding")  # the LLM scorer that costs least; same for both
    llm = LlmConfig(base_url=args.base_url, concurrency=2)
    results = {}
    started = time.perf_counter()
    first = copy_db(args.workspace, tmp / "ours")
    with endpoint(first, llm) as client:
        llm = LlmConfig(base_url=client.base_url, concurrency=2)
        for style in args.styles:
            ws = first if style == "ours" else copy_db(args.workspace, tmp / style)
            seed_gold(ws.engine, sae, gold, author="reference", given=given)
            config = ExplainConfig(prompting=style, scorers=scorers)
            t0 = time.perf_counter()
            report = explain(ws, config, llm, features=unlabeled, progress=True)
            seconds = time.perf_counter() - t0
            explained = rows(ws)
            spent = tokens(ws)
            accepted = [r for r in explained if r.status == "accepted" and r.feature in unlabeled]
            right = sum(agrees(r.concepts, ref.labels[r.feature]) for r in accepted)
            answered = [r for r in explained if r.feature in unlabeled]
            concept_right = sum(agrees(r.concepts, ref.labels[r.feature]) for r in answered)
            results[style] = {
                "tokens": spent,
                "accepted": len(accepted),
                "right": right,
                "per_feature": spent / (len(gold) + len(unlabeled)),
                "answer_agreement": concept_right / max(len(answered), 1),
                "answered": len(answered),
                "bounds": {s.name: s.bound for s in report.calibration.stages},
                "error": report.calibration.error,
                "failed": report.failed,
                "seconds": seconds,
            }
    total = time.perf_counter() - started
    print(
        f"workspace {args.workspace} ({sae}); gold = {len(gold)} reference dev features, "
        f"routed = {len(unlabeled)} reference test features; scorers {scorers}; target 0.9; "
        f"{total:.0f} s in all"
    )
    for style, r in results.items():
        agreement = f"{r['right'] / r['accepted']:.0%}" if r["accepted"] else "-"
        bounds = ", ".join(
            f"{name} {'-' if b is None else f'{b:.3f}'}" for name, b in r["bounds"].items()
        )
        print(
            f"{style:>9}: {r['tokens']} tokens ({r['per_feature']:.0f}/feature), {r['failed']} "
            f"failed, answers agree with the reference on {r['answer_agreement']:.0%} of "
            f"{r['answered']} routed; accepted {r['accepted']}/{len(unlabeled)}, of which "
            f"{agreement} agree with the reference; proven bound per stage: {bounds}"
            + (f" (calibration: {r['error']})" if r["error"] else "")
            + f"; {r['seconds']:.0f} s"
        )
    if not args.keep:
        shutil.rmtree(tmp)
    ours = results.get("ours")
    if ours is None:
        return
    print(
        "accepted_agreement_reference="
        + (f"{ours['right'] / ours['accepted']:.3f}" if ours["accepted"] else "none accepted")
    )
    if "baseline" in results:
        base = results["baseline"]
        print(f"tokens_per_feature_ours_over_baseline={ours['tokens'] / base['tokens']:.3f}")
        if ours["accepted"] and base["accepted"]:
            ratio = (ours["tokens"] / ours["accepted"]) / (base["tokens"] / base["accepted"])
            print(f"tokens_per_accepted_ours_over_baseline={ratio:.3f}")
        else:  # no credit for a style that accepts nothing: never a 0 that reads as a win
            value = "inf" if base["accepted"] else "none"
            print(
                f"tokens_per_accepted_ours_over_baseline={value} (accepted: ours "
                f"{ours['accepted']}, baseline {base['accepted']})"
            )
    print(f"auto_per_human_at_target={ours['right'] / max(len(gold), 1):.3f}")


if __name__ == "__main__":
    main()
