"""What the cascade guarantees and what it cost, as the `CalibrationReport` other rooms read
(status, the CLI summary, the app, the exports), and its reliability diagram.

The figures are what fixed-sequence testing proves, per stage: the threshold, the gold
features it rests on, the p-value and the 1 - delta lower bound on the agreement of what the
stage accepts. No in-sample agreement at a chosen cutoff is reported as if it were held out.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from safesail.db.contracts import CalibrationReport, StageReport
from safesail.explainer.calibration import Acceptance, min_accepted, reliability
from safesail.explainer.context import RunContext
from safesail.explainer.stages import LLM, Plan, StageCost, is_safety


def reliability_path(ctx: RunContext) -> Path:
    return Path(ctx.ws.config.workspace) / "explainer" / "reliability.png"


def calibration_report(
    ctx: RunContext,
    decided: Plan,
    routed: list[int],
    version: str,
    stale: int,
    costs: dict[str, StageCost],
) -> CalibrationReport:
    """The report of one routing: per stage its acceptance and cost, in all the features
    accepted (and of them the safety ones), the human queue's size and the stale count."""
    config = ctx.config
    stages = []
    for stage, acceptance in zip(decided.stages, decided.acceptances, strict=True):
        mine = [f for f in routed if decided.accepted_at.get(f) == stage.name]
        answers = stage.answers
        gold = list(stage.gold.values())
        stages.append(
            StageReport(
                name=stage.name,
                model_version=stage.version,
                delta=acceptance.delta,
                threshold=acceptance.threshold if math.isfinite(acceptance.threshold) else None,
                n_gold=acceptance.n_gold,
                gold_accepted=acceptance.gold_accepted,
                gold_errors=acceptance.gold_errors,
                p_value=acceptance.p_value,
                bound=acceptance.bound,
                needed=acceptance.needed,
                reached=sum(f in stage.asked and decided.reaches(f, stage.name) for f in routed),
                accepted=len(mine),
                accepted_safety=sum(is_safety(answers[f].concepts[0]) for f in mine),
                tokens=costs[stage.name].tokens,
                seconds=costs[stage.name].seconds,
                note=_note(acceptance),
                reliability=reliability(
                    [g.confidence for g in gold], [int(g.agrees) for g in gold]
                ),
            )
        )
    accepted = sum(s.accepted for s in stages)
    safety = sum(s.accepted_safety for s in stages)
    llm = next((s for s in decided.stages if s.name == LLM), None)
    llm_gold = list(llm.gold.values()) if llm is not None else []
    first_need = min_accepted(config.target, config.delta)  # one stage holding all of delta
    report = CalibrationReport(
        sae_id=ctx.sae_id,
        target=config.target,
        delta=config.delta,
        model=ctx.model,
        model_version=ctx.version,
        calibration_version=version,
        n_gold=len(decided.gold),
        routed=len(routed),
        accepted=accepted,
        accepted_safety=safety,
        queued=len(routed) - accepted,
        stale=stale,
        coverage=accepted / len(routed) if routed else 0.0,
        safety_coverage=safety / len(routed) if routed else 0.0,
        gold_agreement_rate=(float(np.mean([g.agrees for g in llm_gold])) if llm_gold else None),
        stages=stages,
    )
    if len(decided.gold) < first_need:
        report.needed = first_need
        report.error = (
            f"the cascade needs at least {first_need} gold-labeled features a stage answered "
            f"to accept anything at target {config.target:g}, delta {config.delta:g}; has "
            f"{len(decided.gold)}: label {first_need - len(decided.gold)} more features "
            "(until then everything goes to people)"
        )
    if any(s.reliability for s in stages):
        report.reliability_png = str(plot_reliability(report, reliability_path(ctx)))
    return report


def _note(acceptance: Acceptance) -> str | None:
    n_gold, needed, threshold = acceptance.n_gold, acceptance.needed, acceptance.threshold
    if acceptance.delta == 0.0:
        return (
            f"answered too few gold features to prove anything ({needed} needed at an even "
            "share of delta): no share of delta spent on it"
        )
    if n_gold < needed:
        return f"{n_gold} gold features reached this stage; {needed} are needed to accept any"
    if not math.isfinite(threshold):
        return "no threshold passes: the gold that reached it does not prove the target"
    return None


def plot_reliability(report: CalibrationReport, path: Path) -> Path:
    """Reliability diagram per stage (its confidence vs. observed agreement on its gold) with
    each stage's threshold, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    for stage in report.stages:
        bins = stage.reliability
        if not bins:
            continue
        (line,) = ax.plot(
            [b.mean_probability for b in bins],
            [b.agreement for b in bins],
            "o-",
            label=f"{stage.name} ({stage.n_gold} gold)",
        )
        for b in bins:
            ax.annotate(f"n={b.n}", (b.mean_probability, b.agreement), fontsize=7)
        if stage.threshold is not None:
            ax.axvline(stage.threshold, c=line.get_color(), lw=1, ls=":")
    ax.axhline(report.target, c="green", lw=1, label=f"target {report.target:.0%}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="stage confidence",
        ylabel="observed agreement on gold",
        title=f"Explainer cascade (delta {report.delta:g})",
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
