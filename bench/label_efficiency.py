"""Benchmark: how many expert labels the active learner's default strategy needs against random
sampling, with the reader-like simulated expert (`safesail.experts.reader`) answering, which reads the
activating windows and never sees the corpus tags the learner's columns come from.

Every choice is fixed before the run and none is picked from its results:
1. The selected SAE's features with examples get the reader's label (primary label, as the
   learner trains). One seeded (seed 0), per-class stratified 30% is the held-out test split;
   the rest is the pool. Standardisation is fitted on the pool only.
2. The target is 95% of the macro-F1 that the same learner reaches trained on the whole pool
   (macro over the label values present in the test split).
3. Strategies: the library default (`ALConfig.strategy`) and random, nothing else. For each of
   `--seeds` seeds both start from the same random `--initial` labels and query `--batch` more
   at a time up to `--budget`, retraining after each batch. "Labels needed" is the first count
   whose test macro-F1 reaches the target (the budget when it never does: the random figure is
   then a lower bound and the ratio conservative). Seeds are averaged, never chosen.
4. The same run again with the learner's tag-derived columns dropped (per-concept firing
   shares, levels and lifts, the top contexts' corpus concepts, triage's scores): what the
   learner gains from columns made of the same tags the old oracle used.
5. Querying a pool of `--pool` (1,000,000) synthetic features with the default strategy is
   timed (fit on 200 labels, score the pool, pick a batch of 20).

Run: ``.venv/bin/python bench/label_efficiency.py [--workspace DIR] [--seeds 3]``. Prints a
table, saves ``bench/out/label_efficiency.png`` (mean learning curves) and ends with
``labels_random_over_default=<ratio>`` (all columns).
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
from active_learning.learner import ALConfig, primary_label
from active_learning.strategies import make_estimator
from active_learning.strategies import select as pick
from safesail.config import WorkspaceConfig
from safesail.db.tables import Feature
from safesail.errors import SafesailError
from safesail.experts.reader import read_features
from safesail.workspace import Workspace

TAG_COLUMNS = ("frac:", "level:", "lift:", "top:", "top_lift:", "triage:")
TAG_SINGLE = {"safety_score", "auroc", "precision", "candidate"}
TARGET_SHARE = 0.95
TEST_SHARE = 0.3


def untagged(columns: list[str]) -> np.ndarray:
    """Indices of the columns not derived from corpus tags or triage."""
    return np.array(
        [i for i, c in enumerate(columns) if not c.startswith(TAG_COLUMNS) and c not in TAG_SINGLE]
    )


def load(workspace: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Feature rows (raw), reader labels, values (with and without tags) and column names of
    the selected SAE's features."""
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
    truth = read_features(ws.engine, sae_id, [int(f) for f in matrix.features], ws.taxonomy)
    values = ws.taxonomy.label_values()
    y = np.array(
        [primary_label(list(truth[int(f)].labels), values) for f in matrix.features], dtype=str
    )
    # without tags the cold-start value is firing frequency alone
    n_fire = matrix.X[:, matrix.columns.index("log_n_fire")]
    plain_value = n_fire / max(float(n_fire.max(initial=0.0)), 1e-9)
    return matrix.X, y, np.column_stack([matrix.value, plain_value]), matrix.columns


def standardise(X: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Centre and scale with the pool's statistics only (the test rows never inform them)."""
    mean, std = X[pool].mean(axis=0), X[pool].std(axis=0)
    return ((X - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


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


def run_variant(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    value: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
    args: argparse.Namespace,
) -> tuple[dict[str, float], dict[str, list[list[tuple[int, float]]]], float]:
    """Labels needed per strategy (mean over seeds), the curves, and the target."""
    train, test_rows = rows
    X = standardise(X, train)
    test = (X[test_rows], y[test_rows])
    full = macro_f1(X[train], y[train], *test, args.C)
    target = TARGET_SHARE * full
    print(
        f"[{name}] {X.shape[1]} columns; pool {len(train)}, test {len(test_rows)}, "
        f"{len(np.unique(y))} labels; full-pool macro-F1 {full:.3f}, target {target:.3f}"
    )
    strategies = (ALConfig.strategy, "random")
    curves: dict[str, list[list[tuple[int, float]]]] = {s: [] for s in strategies}
    bar = tqdm(total=len(strategies) * args.seeds, desc=name, file=sys.stderr)
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
    return needed, curves, target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(os.environ.get("SAFESAIL_WORKSPACE", "workspace")),
        help="a demo workspace (default: ./workspace, what `make demo` builds)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--initial", type=int, default=10, help="random labels to start from")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--budget", type=int, default=600)
    parser.add_argument("--C", type=float, default=ALConfig.C)
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)

    # Small dense fits: BLAS threads only add contention on a shared machine (10-100x slower).
    threadpool_limits(1)
    X, y, values, columns = load(args.workspace)
    rows = split(y, TEST_SHARE, seed=0)
    default = ALConfig.strategy
    results = {
        "all columns": run_variant("all columns", X, y, values[:, 0], rows, args),
        "no tag columns": run_variant(
            "no tag columns", X[:, untagged(columns)], y, values[:, 1], rows, args
        ),
    }
    print(
        f"\n{'columns':<16} {'strategy':<10} {'labels to target':>16} {'F1 @100':>8} {'final':>7}"
    )
    for variant, (needed, curves, goal) in results.items():
        for s, runs in curves.items():
            at100 = np.mean([dict(c).get(100, np.nan) for c in runs])
            final = np.mean([c[-1][1] for c in runs])
            print(f"{variant:<16} {s:<10} {needed[s]:>16.1f} {at100:>8.3f} {final:>7.3f}")
        reached = sum(labels_needed(c, goal, args.budget) < args.budget for c in curves["random"])
        print(f"{variant:<16} random reached the target in {reached}/{args.seeds} seeds")
    needed, curves, target = results["all columns"]
    print(f"plot: {plot(curves, target, args.out / 'label_efficiency.png')}")
    print(f"query_1m_seconds={time_query(args.pool, X.shape[1], default):.3f}")
    plain = results["no tag columns"][0]
    print(f"labels_random_over_default_no_tag_columns={plain['random'] / plain[default]:.2f}")
    print(f"labels_random_over_default={needed['random'] / needed[default]:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SafesailError as exc:
        print(f"label_efficiency: error: {exc}", file=sys.stderr)
        sys.exit(2)
