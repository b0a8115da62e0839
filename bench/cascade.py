"""The explainer's trust-or-escalate cascade judged against the reference set (features labeled
by reading, bench/reference/): how many routed features each stage accepts, and how often the
accepted ones agree with the readers.

Fixed before the run (never tuned on the test half):
- a fresh copy of the workspace's database with every earlier LlmCall, Explanation and Score
  row removed (nothing is served from an earlier run's cache);
- gold = the reference set's **dev** half (the readers' labels and reasons, `--gold` of them,
  default all), the only labels the learner is fitted on and the thresholds are tested on;
- routed = the **test** half (`--routed`, default all): an accepted explanation counts as
  right only when its primary label is one of the reader's (`reference.labels.agrees`);
- target and delta (`--target` 0.9, `--delta` 0.1), `--votes` (ExplainConfig's default), the
  learner's default strategy and settings, no scorers (they do not decide acceptance).
Prints, per stage and in all: coverage (accepted / routed) and agreement with the readers with
its 95% Wilson interval, for the features the readers call safety and for the rest; LLM tokens
and seconds per accepted feature; beside them the majority baseline (every routed feature given
the dev half's most common reader label) and Cohen's kappa of the accepted answers against the
readers. Last lines: `coverage_at_target=<accepted / routed>`, `safety_coverage_at_target=
<accepted as a safety concept / routed features the readers call safety>`,
`accepted_agreement_reference=<agreeing / accepted>`; the same three figures are appended to
the reference set's test-runs.log (every run reads the test half).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script

from _reference_draw import add_source_args, copy_db, draw  # noqa: E402

from safesail.config import WorkspaceConfig  # noqa: E402
from safesail.db.tables import Explanation  # noqa: E402
from safesail.errors import SafesailError  # noqa: E402
from safesail.explainer.config import ExplainConfig, LlmConfig  # noqa: E402
from safesail.explainer.pipeline import endpoint, explain  # noqa: E402
from safesail.explainer.simulate import seed_gold  # noqa: E402
from safesail.explainer.stages import ORDER, is_safety  # noqa: E402
from safesail.plugins import find_learner  # noqa: E402
from safesail.reference.check import default_file, log_test_run, open_reference  # noqa: E402
from safesail.reference.labels import ReferenceLabel, ReferenceSet, agrees  # noqa: E402
from safesail.stats import wilson_interval  # noqa: E402
from safesail.workspace import Workspace  # noqa: E402


def accepted_rows(ws: Workspace, sae_id: str, routed: list[int]) -> dict[int, Explanation]:
    """The accepted automatic explanation of each routed feature (one stage accepts it)."""
    with Session(ws.engine) as session:
        rows = session.exec(
            select(Explanation).where(
                Explanation.sae_id == sae_id,
                Explanation.source == "auto",
                Explanation.status == "accepted",
                Explanation.feature.in_(routed),
            )
        ).all()
    return {r.feature: r for r in rows}


def kappa(answers: list[str], readers: list[ReferenceLabel]) -> float | None:
    """Cohen's kappa of the answers' primary concepts against the readers' labels (a reader's
    label is the answer's when the reader gave it among theirs, else the reader's first)."""
    from sklearn.metrics import cohen_kappa_score

    if len(answers) < 2:
        return None
    truth = [a if a in r.labels else r.labels[0] for a, r in zip(answers, readers, strict=True)]
    if len(set(truth) | set(answers)) < 2:
        return None
    return float(cohen_kappa_score(answers, truth))


def _rate(agree: int, n: int) -> str:
    if not n:
        return "- (none accepted)"
    lo, hi = wilson_interval(agree, n)
    return f"{agree / n:.3f} [{lo:.2f}, {hi:.2f}] of {n}"


def evaluate(
    ref: ReferenceSet, gold: list[int], routed: list[int], accepted: dict[int, Explanation]
) -> list[str]:
    """The lines of the report: per stage and in all, for safety and other features."""
    labels = {f: ref.labels[f] for f in routed}
    groups = {
        "safety": [f for f in routed if labels[f].safety],
        "other": [f for f in routed if not labels[f].safety],
    }
    majority = Counter(ref.labels[f].labels[0] for f in gold).most_common(1)[0][0]
    lines = [
        f"majority baseline: every routed feature '{majority}' (the dev half's most common "
        f"label) agrees on {sum(majority in labels[f].labels for f in routed) / len(routed):.3f}"
    ]
    stages = [s for s in ORDER if any(r.details.get("stage") == s for r in accepted.values())]
    for stage in [*stages, "all"]:
        mine = {
            f: r for f, r in accepted.items() if stage == "all" or r.details.get("stage") == stage
        }
        for name, members in groups.items():
            got = [f for f in members if f in mine]
            right = sum(agrees(mine[f].concepts, labels[f]) for f in got)
            lines.append(
                f"{stage:>13} {name:>6}: coverage {len(got)}/{len(members)}, agreement with "
                f"the readers {_rate(right, len(got))}"
            )
        k = kappa([mine[f].concepts[0] for f in mine], [labels[f] for f in mine])
        lines.append(f"{stage:>13}  kappa: {'-' if k is None else f'{k:.3f}'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(
        parser, "a workspace whose selected SAE the reference set was labeled on, read-only"
    )
    parser.add_argument("--gold", type=int, help="dev-half features used as gold (default: all)")
    parser.add_argument("--routed", type=int, help="test-half features routed (default: all)")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--votes", type=int, default=ExplainConfig().votes)
    parser.add_argument(
        "--llm-gold", type=int, help="gold features each LLM stage answers (default: all)"
    )
    parser.add_argument(
        "--llm-limit", type=int, help="routed features each LLM stage answers (default: all)"
    )
    parser.add_argument("--base-url", help="the LLM stage's endpoint (default: embedded)")
    parser.add_argument("--escalate-base-url", help="the escalation stage's endpoint (optional)")
    parser.add_argument("--escalate-model", help="the escalation stage's model")
    parser.add_argument("--price-table", type=Path, help="JSON {model: [usd/M in, usd/M out]}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()
    from safesail.explainer.config import load_prices

    prices = load_prices(args.price_table)
    source = Workspace(WorkspaceConfig(args.workspace))
    reference_file = args.reference or default_file(source)
    ref = open_reference(source, reference_file)
    selected = source.selected_sae
    source.engine.dispose()
    if selected != ref.sae_id:
        raise SafesailError(
            f"the workspace's selected SAE is {selected}, the reference set's {ref.sae_id} — run "
            f"`safesail select --sae {ref.sae_id}` in a copy first"
        )
    n_dev, n_test = len(ref.half("dev")), len(ref.half("test"))
    gold, routed, given = draw(ref, args.gold or n_dev, args.routed or n_test)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cascade-"))
    try:
        ws = copy_db(args.workspace, tmp / "ws")
        seed_gold(ws.engine, ref.sae_id, gold, author="reference", given=given)
        learner = find_learner(ws)
        started = time.perf_counter()
        fitted = "no learner installed"
        if learner is not None:
            fit = learner.fit()
            fitted = f"learner {fit.model_version} on {fit.n_labels} labels"
        fit_s = time.perf_counter() - started
        config = ExplainConfig(
            target=args.target,
            delta=args.delta,
            votes=args.votes,
            scorers=(),
            max_gold=args.llm_gold,
            limit=args.llm_limit,
        )
        escalate = (
            LlmConfig(base_url=args.escalate_base_url, model=args.escalate_model, prices=prices)
            if args.escalate_base_url
            else None
        )
        llm = LlmConfig(base_url=args.base_url, concurrency=2, prices=prices)
        started = time.perf_counter()
        with endpoint(ws, llm) as client:  # one server for the run, however many calls
            llm = LlmConfig(base_url=client.base_url, concurrency=2, prices=prices)
            report = explain(ws, config, llm, features=routed, escalate=escalate)
        seconds = time.perf_counter() - started
        accepted = accepted_rows(ws, ref.sae_id, routed)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    cal = report.calibration
    print(
        f"workspace {args.workspace} ({ref.sae_id}); gold = {len(gold)} reference dev features, "
        f"routed = {len(routed)} reference test features; target {cal.target:g}, delta "
        f"{cal.delta:g}, {args.votes} votes; {fitted} ({fit_s:.0f} s); explain {seconds:.0f} s"
    )
    for s in cal.stages:
        per = (
            f"{s.tokens / s.accepted:.0f} tokens, {s.seconds / s.accepted:.2f} s per accepted"
            if s.accepted
            else f"{s.tokens} tokens, {s.seconds:.1f} s, nothing accepted"
        )
        proven = (
            f"threshold {s.threshold:.3f}, bound {s.bound:.3f} on {s.gold_accepted}/{s.n_gold} gold"
            if s.threshold is not None
            else f"accepts nothing ({s.note or 'no threshold passes'})"
        )
        print(
            f"stage {s.name}: delta {s.delta:.3g}, {proven}; accepted {s.accepted}/{s.reached} "
            f"reached; {per}"
        )
    for line in evaluate(ref, gold, routed, accepted):
        print(line)
    safety_routed = [f for f in routed if ref.labels[f].safety]
    safety_accepted = [
        f for f in safety_routed if f in accepted and is_safety(accepted[f].concepts[0])
    ]
    right = sum(agrees(r.concepts, ref.labels[f]) for f, r in accepted.items())
    figures = {
        "coverage_at_target": f"{len(accepted) / len(routed):.3f}",
        "safety_coverage_at_target": (
            f"{len(safety_accepted) / len(safety_routed):.3f}" if safety_routed else "none routed"
        ),
        "accepted_agreement_reference": (
            f"{right / len(accepted):.3f}" if accepted else "none accepted"
        ),
    }
    log_test_run(reference_file.with_name("test-runs.log"), shlex.join(sys.argv), figures)
    for name, value in figures.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
