"""Benchmark: how many expert labels the active learner needs, per query strategy, against
random sampling, with the simulated expert (`safesail.oracle.oracle_labels`) answering.

1. The selected SAE's features with examples (the ones a person could judge) get their oracle
   label (primary concept, as the learner trains). A fixed, per-class stratified 30% is the
   held-out test split; the rest is the pool.
2. The target is `--target-share` (default 90%) of the macro-F1 that the same learner reaches
   when trained on the whole pool (macro over the label values present in the test split).
3. For each seed, every strategy starts from the same random `--initial` labels and queries
   `--batch` more at a time up to `--budget` labels, retraining after each batch. "Labels
   needed" is the first count whose test macro-F1 reaches the target (the budget when it never
   does, so the random figure is a lower bound and the ratio conservative).
4. Querying a pool of `--pool` (1,000,000) synthetic features with the default strategy is
   timed (fit on 200 labels, score the pool, pick a batch of 20).

Run: ``.venv/bin/python bench/label_efficiency.py [--workspace DIR] [--seeds 3]
[--strategies value,random]``. Prints a table, saves ``bench/out/label_efficiency.png`` (the
mean learning curve per strategy) and ends with ``labels_random_over_best=<ratio>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session, select
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from active_learning.features import feature_matrix
from active_learning.learner import STRATEGIES, ALConfig, primary_label
from active_learning.strategies import make_estimator
from active_learning.strategies import select as pick
from safesail.config import WorkspaceConfig
from safesail.errors import SafesailError
from safesail.oracle import oracle_labels
from safesail.storage import Feature
from safesail.workspace import Workspace


def load(workspace: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised feature rows, oracle labels and values of the selected SAE's features."""
    if not (workspace / "safesail.db").exists():
        raise SafesailError(f"no workspace at {workspace}: run make demo first")
    ws = Workspace(WorkspaceConfig(workspace))
    sae_id = ws.selected_sae
    with Session(ws.engine) as session:
        triaged = (
            sae_id is not None
            and session.exec(
                select(Feature.index).where(
                    Feature.sae_id == sae_id, Feature.safety_score.is_not(None)
                )
            ).first()
            is not None
        )
    if not triaged:
        raise SafesailError(f"{workspace} has no collected, triaged features: run make demo first")
    matrix = feature_matrix(ws.engine, sae_id, ws.taxonomy)
    truth = oracle_labels(ws.engine, sae_id, [int(f) for f in matrix.features])
    values = ws.taxonomy.label_values()
    y = np.array([primary_label(truth[int(f)], values) for f in matrix.features], dtype=str)
    std = matrix.X.std(axis=0)
    X = (matrix.X - matrix.X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return X.astype(np.float32), y, matrix.value


def split(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class stratified split: every class with two or more features has one in test."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        if len(rows) >= 2:
            test.extend(rows[: max(1, round(share * len(rows)))])
    mask = np.zeros(len(y), bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def macro_f1(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, C: float):
    from sklearn.metrics import f1_score

    if len(np.unique(y)) < 2:
        pred = np.full(len(y_test), y[0] if len(y) else "")
    else:
        pred = make_estimator(C, 0).fit(X, y).predict(X_test)
    return float(f1_score(y_test, pred, labels=np.unique(y_test), average="macro", zero_division=0))


def simulate(
    strategy: str,
    X: np.ndarray,
    y: np.ndarray,
    value: np.ndarray,
    test: tuple[np.ndarray, np.ndarray],
    initial: np.ndarray,
    args: argparse.Namespace,
    seed: int,
) -> list[tuple[int, float]]:
    """One learning curve: (labels, test macro-F1) after the initial batch and each query."""
    labeled = list(initial)
    curve = [(len(labeled), macro_f1(X[labeled], y[labeled], *test, args.C))]
    while len(labeled) < min(args.budget, len(y)):
        pool = np.setdiff1d(np.arange(len(y)), labeled)
        n = min(args.batch, args.budget - len(labeled))
        rows = pick(
            strategy,
            X[pool],
            value[pool],
            n,
            X_labeled=X[labeled],
            y_labeled=y[labeled],
            C=args.C,
            seed=seed * 7919 + len(labeled),
        ).rows
        labeled.extend(int(r) for r in pool[rows])
        curve.append((len(labeled), macro_f1(X[labeled], y[labeled], *test, args.C)))
    return curve


def labels_needed(curve: list[tuple[int, float]], target: float, budget: int) -> int:
    return next((n for n, f1 in curve if f1 >= target), budget)


def time_query(n_pool: int, dim: int, strategy: str, seed: int = 0) -> float:
    """Seconds to query a batch of 20 from a synthetic pool (model fit on 200 labels included)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_pool, dim)).astype(np.float32)
    value = rng.random(n_pool)
    X_lab = rng.normal(size=(200, dim)).astype(np.float32)
    y_lab = rng.integers(0, 14, 200).astype(str)
    start = time.perf_counter()
    pick(strategy, X, value, 20, X_labeled=X_lab, y_labeled=y_lab, seed=seed)
    return time.perf_counter() - start


def plot(curves: dict[str, list[list[tuple[int, float]]]], target: float, path: Path) -> Path:
    """The mean learning curve per strategy with the target line (PNG; HTML without matplotlib)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import plotly.graph_objects as go

        fig = go.Figure()
        for name, runs in curves.items():
            xs, ys = _mean_curve(runs)
            fig.add_scatter(x=xs, y=ys, name=name)
        fig.add_hline(y=target, line_dash="dash")
        out = path.with_suffix(".html")
        fig.write_html(out)
        return out
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        xs, ys = _mean_curve(runs)
        ax.plot(xs, ys, label=name, lw=2.5 if name == "random" else 1.5)
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set(xlabel="expert labels", ylabel="held-out macro-F1", title="Label efficiency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mean_curve(runs: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    length = min(len(r) for r in runs)
    xs = [runs[0][i][0] for i in range(length)]
    return xs, [float(np.mean([r[i][1] for r in runs])) for i in range(length)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(os.environ.get("SAFESAIL_WORKSPACE", "workspace")),
        help="a demo workspace (default: ./workspace, what `make demo` builds)",
    )
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--initial", type=int, default=10, help="random labels to start from")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--budget", type=int, default=600)
    parser.add_argument("--test-share", type=float, default=0.3)
    parser.add_argument("--target-share", type=float, default=0.9)
    parser.add_argument("--C", type=float, default=ALConfig.C)
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown or "random" not in strategies:
        raise SafesailError(
            f"--strategies: unknown {sorted(unknown)}; pick from {STRATEGIES}, random included"
        )

    # Small dense fits: BLAS threads only add contention on a shared machine (10-100x slower).
    threadpool_limits(1)
    X, y, value = load(args.workspace)
    train, test_rows = split(y, args.test_share, seed=0)
    test = (X[test_rows], y[test_rows])
    full = macro_f1(X[train], y[train], *test, args.C)
    target = args.target_share * full
    print(
        f"pool {len(train)} features, test {len(test_rows)}, {len(np.unique(y))} labels; "
        f"full-pool macro-F1 {full:.3f}, target {target:.3f}"
    )
    curves: dict[str, list[list[tuple[int, float]]]] = {s: [] for s in strategies}
    bar = tqdm(total=len(strategies) * args.seeds, desc="simulating", file=sys.stderr)
    for seed in range(args.seeds):
        initial = np.random.default_rng(1000 + seed).choice(len(train), args.initial, replace=False)
        for strategy in strategies:
            curves[strategy].append(
                simulate(strategy, X[train], y[train], value[train], test, initial, args, seed)
            )
            bar.update()
    bar.close()

    needed = {
        s: float(np.mean([labels_needed(c, target, args.budget) for c in runs]))
        for s, runs in curves.items()
    }
    print(f"\n{'strategy':<12} {'labels to target':>16} {'F1 @100':>8} {'F1 @200':>8} {'final':>7}")
    for s, runs in curves.items():
        at = {n: np.mean([dict(c).get(n, np.nan) for c in runs]) for n in (100, 200)}
        final = np.mean([c[-1][1] for c in runs])
        print(f"{s:<12} {needed[s]:>16.1f} {at[100]:>8.3f} {at[200]:>8.3f} {final:>7.3f}")
    best = min((s for s in strategies if s != "random"), key=needed.get, default="random")
    print(
        f"\nbest strategy: {best}; random reached the target in "
        f"{sum(labels_needed(c, target, args.budget) < args.budget for c in curves['random'])}"
        f"/{args.seeds} seeds within {args.budget} labels"
    )
    print(f"plot: {plot(curves, target, args.out / 'label_efficiency.png')}")
    print(f"query_1m_seconds={time_query(args.pool, X.shape[1], ALConfig.strategy):.3f}")
    print(f"labels_random_over_best={needed['random'] / needed[best]:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SafesailError as exc:
        print(f"label_efficiency: error: {exc}", file=sys.stderr)
        sys.exit(2)
