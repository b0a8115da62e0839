"""What a calibration and routing achieved, as the `CalibrationReport` other rooms read (status,
the CLI summary, the app, the exports), and its reliability diagram."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from safesail.db.contracts import CalibrationReport
from safesail.explainer.calibration import Calibration
from safesail.explainer.context import RunContext


def reliability_path(ctx: RunContext) -> Path:
    return Path(ctx.ws.config.workspace) / "explainer" / "reliability.png"


def calibration_report(
    ctx: RunContext,
    calibration: Calibration | None,
    error: str | None,
    *,
    accepted: int,
    queued: int,
    n_gold: int,
) -> CalibrationReport:
    """The report of one routing; without a calibration (too few gold labels) it says how
    many gold labels calibration needs, and draws no diagram."""
    base = CalibrationReport(
        target=ctx.config.target,
        model=ctx.model,
        model_version=ctx.version,
        n_gold=n_gold,
        accepted=accepted,
        queued=queued,
    )
    if calibration is None:
        base.needed, base.error = ctx.config.min_gold, error
        return base
    t = calibration.threshold
    base.achieved_agreement = t.agreement
    base.threshold = t.threshold if np.isfinite(t.threshold) else None
    base.heldout_coverage = t.coverage
    base.coverage = accepted / (accepted + queued) if accepted + queued else 0.0
    base.gold_agreement_rate = float(calibration.agree.mean())
    base.reliability = calibration.reliability()
    base.reliability_png = str(
        plot_reliability(calibration, ctx.config.target, reliability_path(ctx))
    )
    return base


def plot_reliability(calibration: Calibration, target: float, path: Path) -> Path:
    """Reliability diagram (held-out P(agree) vs. observed agreement) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = calibration.reliability()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    if bins:
        ax.plot(
            [b.mean_probability for b in bins],
            [b.agreement for b in bins],
            "o-",
            label="held-out (out-of-fold)",
        )
        for b in bins:
            ax.annotate(f"n={b.n}", (b.mean_probability, b.agreement), fontsize=7)
    ax.axhline(target, c="green", lw=1, label=f"target {target:.0%}")
    if math.isfinite(calibration.threshold.threshold):
        ax.axvline(calibration.threshold.threshold, c="red", lw=1, label="threshold")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="predicted P(agrees with experts)",
        ylabel="observed agreement",
        title=f"Explainer calibration ({calibration.n_gold} gold features)",
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
