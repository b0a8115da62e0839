"""Benchmark: how many expert labels the concept model's default query strategy needs against
random sampling, with labels made by READING the features (the reference set,
bench/reference/), never the simulated expert, whose MiniLM instrument the model shares.

Every choice is fixed before the run and none is picked from its results:
1. The features are one half of the reference set (`--half`, default dev; the test half is for
   the final figure only), bound to the workspace SAE whose weights the readers labeled; a
   feature's label is its primary label (as the learner trains). The SAE's other features stay
   unlabeled: they only inform the label-free standardisation and embedding components.
2. For each of `--seeds` seeds: a per-class stratified `--test-share` of the half is held out
   (seed s); the rest is the pool. Both strategies start from the same `--initial` random pool
   labels and query `--batch` more at a time until the pool is exhausted, refitting after each
   batch. The target is 95% of the macro-F1 the same model reaches on the whole pool (macro over
   the label values present in the held-out part); "labels needed" is the first count that
   reaches it. The ratio is mean(random) / mean(default) over seeds; seeds are never chosen.
3. Strategies: the library default (`ALConfig.strategy`) and random, nothing else; the model is
   the library's `ConceptModel` with its default settings (no corpus-tag columns), then the same
   run with the tag columns added (reported beside, never instead).
4. Beside each figure: the majority-class baseline, Cohen's kappa of the full-pool model with
   the readers, and its accuracy on the features the readers call safety.
5. Querying a pool of `--pool` (1,000,000) synthetic features with the default strategy is
   timed (fit on 200 labels, score the pool, pick a batch of 20).

Run: ``.venv/bin/python bench/label_efficiency.py --workspace DIR [--reference FILE]``, on a
workspace holding the reference set's SAE weights (collected). Prints a table, saves
``bench/out/label_efficiency.png`` and ends with ``labels_random_over_default=<ratio>``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session, func, select
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from active_learning.config import ALConfig
from active_learning.features import feature_matrix
from active_learning.learner import ConceptModel, primary_label
from active_learning.strategies import select as pick
from safesail.config import WorkspaceConfig
from safesail.db.tables import Feature
from safesail.errors import SafesailError
from safesail.reference.check import log_test_run, open_reference, reference_dir
from safesail.taxonomy import BENIGN, UNINTERPRETABLE
from safesail.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script

from _reference_draw import add_source_args  # noqa: E402

TARGET_SHARE = 0.95
DEFAULT_REFERENCE = reference_dir() / "L8-w1152-k32.json"

Curve = list[tuple[int, float]]


class Data:
    """The half's features as matrix rows with their readers' labels, and the model inputs."""

    def __init__(self, workspace: Path, reference: Path, half: str) -> None:
        ws = _workspace(workspace)
        ref = open_reference(ws, reference)
        self.sae_id = ref.sae_id
        self.matrix = feature_matrix(
            ws.engine, ref.sae_id, ws.taxonomy, cache_dir=workspace / "cache"
        )
        self.classes = ws.taxonomy.label_values()
        row_of = {int(f): i for i, f in enumerate(self.matrix.features)}
        labels = sorted(ref.half(half), key=lambda r: r.feature)
        kept = [r for r in labels if r.feature in row_of]
        self.missing = len(labels) - len(kept)
        self.rows = np.array([row_of[r.feature] for r in kept], dtype=int)
        self.y = np.array([primary_label(list(r.labels), self.classes) for r in kept], dtype=str)


def _workspace(workspace: Path) -> Workspace:
    if not (workspace / "safesail.db").exists():
        raise SafesailError(f"no workspace at {workspace} — run `make demo` first")
    ws = Workspace(WorkspaceConfig(workspace))
    with Session(ws.engine) as session:
        collected = session.exec(
            select(func.count()).select_from(Feature).where(Feature.examples.is_not(None))
        ).one()
    if not collected:
        raise SafesailError(f"{workspace} has no collected features — run `make demo` first")
    return ws


def load(workspace: Path, reference: Path = DEFAULT_REFERENCE, half: str = "dev") -> Data:
    return Data(workspace, reference, half)


def split(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class stratified split: every class with two or more features has one held out."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        if len(rows) >= 2:
            test.extend(rows[: max(1, round(share * len(rows)))])
    mask = np.zeros(len(y), bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def predict(model: ConceptModel, rows: np.ndarray, y: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The model's classes for the test rows; before it can fit, the labels' majority."""
    pred = model.predict(rows, y, test)
    if pred is None:
        values, counts = np.unique(y, return_counts=True)
        return np.full(len(test), values[np.argmax(counts)] if len(y) else "")
    return pred


def macro_f1(y_test: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_test, pred, labels=np.unique(y_test), average="macro", zero_division=0))


def simulate(
    strategy: str,
    model: ConceptModel,
    data: Data,
    pool: np.ndarray,
    test: np.ndarray,
    initial: np.ndarray,
    args: argparse.Namespace,
    seed: int,
) -> Curve:
    """One learning curve: (labels, held-out macro-F1) after the initial labels and each batch.
    Indices are into data.rows; the neighbour columns are rebuilt from the labels so far."""
    rows, y = data.rows, data.y
    labeled = list(initial)
    curve: Curve = []
    while True:
        lab = np.array(labeled, dtype=int)
        curve.append((len(lab), macro_f1(y[test], predict(model, rows[lab], y[lab], rows[test]))))
        rest = np.setdiff1d(pool, lab)
        if not len(rest):
            return curve
        X = model.design(rows[lab], y[lab])
        picked = pick(
            strategy,
            X[rows[rest]],
            data.matrix.value[rows[rest]],
            min(args.batch, len(rest)),
            X_labeled=X[rows[lab]],
            y_labeled=y[lab],
            C=model.config.C,
            seed=seed * 7919 + len(lab),
            min_labels=model.config.min_labels,
        ).rows
        labeled.extend(int(r) for r in rest[picked])


def labels_needed(curve: Curve, target: float) -> int:
    """The first label count whose F1 reaches the target; the whole pool (the curve's last
    point, where the model is the full-pool one) when none does."""
    return next((n for n, f1 in curve if f1 >= target - 1e-12), curve[-1][0])


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


def plot(curves: dict[str, list[Curve]], path: Path) -> Path:
    """The mean learning curve per strategy (PNG; HTML without matplotlib)."""
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
        out = path.with_suffix(".html")
        fig.write_html(out)
        return out
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in curves.items():
        xs, ys = _mean_curve(runs)
        ax.plot(xs, ys, label=name, lw=2.5 if name == "random" else 1.5)
    ax.set(xlabel="expert labels", ylabel="held-out macro-F1", title="Label efficiency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mean_curve(runs: list[Curve]) -> tuple[list[int], list[float]]:
    length = min(len(r) for r in runs)
    xs = [runs[0][i][0] for i in range(length)]
    return xs, [float(np.mean([r[i][1] for r in runs])) for i in range(length)]


class Variant:
    """One model setting's run: labels needed per strategy and seed, curves, and the full-pool
    model's held-out figures beside their baselines (pooled over seeds)."""

    def __init__(self, name: str, config: ALConfig, data: Data, args: argparse.Namespace):
        self.name = name
        self.model = ConceptModel(data.matrix, data.classes, config)
        self.strategies = (config.strategy, "random")
        self.curves: dict[str, list[Curve]] = {s: [] for s in self.strategies}
        self.needed: dict[str, list[int]] = {s: [] for s in self.strategies}
        self.full: list[float] = []
        self.majority: list[float] = []
        self.truth: list[str] = []
        self.pred: list[str] = []
        self.pred_majority: list[str] = []
        self.run(data, args)

    def run(self, data: Data, args: argparse.Namespace) -> None:
        rows, y = data.rows, data.y
        bar = tqdm(total=len(self.strategies) * args.seeds, desc=self.name, file=sys.stderr)
        for seed in range(args.seeds):
            pool, test = split(y, args.test_share, seed)
            full_pred = predict(self.model, rows[pool], y[pool], rows[test])
            full = macro_f1(y[test], full_pred)
            values, counts = np.unique(y[pool], return_counts=True)
            majority = np.full(len(test), values[np.argmax(counts)])
            self.full.append(full)
            self.majority.append(macro_f1(y[test], majority))
            self.truth += y[test].tolist()
            self.pred += full_pred.tolist()
            self.pred_majority += majority.tolist()
            initial = np.random.default_rng(1000 + seed).choice(pool, args.initial, replace=False)
            for strategy in self.strategies:
                curve = simulate(strategy, self.model, data, pool, test, initial, args, seed)
                self.curves[strategy].append(curve)
                self.needed[strategy].append(labels_needed(curve, TARGET_SHARE * full))
                bar.update()
        bar.close()

    def ratio(self) -> float:
        default, random = self.strategies
        return float(np.mean(self.needed[random]) / np.mean(self.needed[default]))

    def report(self) -> None:
        from sklearn.metrics import cohen_kappa_score

        truth, pred = np.array(self.truth), np.array(self.pred)
        safety = ~np.isin(truth, [BENIGN, UNINTERPRETABLE])
        kappa = cohen_kappa_score(truth, pred)
        print(
            f"[{self.name}] {self.model.static.shape[1]} label-free columns + neighbour "
            f"columns; full-pool macro-F1 {np.mean(self.full):.3f} (majority baseline "
            f"{np.mean(self.majority):.3f}); kappa with the readers {kappa:.3f} (majority 0); "
            f"accuracy {np.mean(truth == pred):.3f} (majority "
            f"{np.mean(truth == np.array(self.pred_majority)):.3f}); on the readers' safety "
            f"features {np.mean(truth[safety] == pred[safety]):.3f} ({int(safety.sum())} "
            "held-out answers, pooled over the seeds' splits)"
        )
        for s in self.strategies:
            runs = self.curves[s]
            print(
                f"  {s:<10} labels to 95% of full-pool: mean {np.mean(self.needed[s]):.1f} "
                f"(per seed {self.needed[s]}); final F1 {np.mean([c[-1][1] for c in runs]):.3f}"
            )
        print(f"  labels random / {self.strategies[0]}: {self.ratio():.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_source_args(
        parser, "a workspace holding the reference set's SAE, collected", DEFAULT_REFERENCE
    )
    parser.add_argument("--half", choices=("dev", "test"), default="dev")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--test-share", type=float, default=0.3)
    parser.add_argument("--initial", type=int, default=4, help="random labels to start from")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)

    # Small dense fits: BLAS threads only add contention on a shared machine (10-100x slower).
    threadpool_limits(1)
    data = load(args.workspace, args.reference, args.half)
    labels, counts = np.unique(data.y, return_counts=True)
    print(
        f"reference {args.reference.name} ({args.half} half) on SAE {data.sae_id}: "
        f"{len(data.y)} features ({data.missing} without examples left out); labels "
        + ", ".join(
            f"{label} {n}"
            for label, n in sorted(zip(labels, counts, strict=True), key=lambda p: -p[1])
        )
    )
    default = ALConfig()
    plain = Variant("no tag columns (default)", default, data, args)
    tagged = Variant("with tag columns", ALConfig(tag_columns=True), data, args)
    for variant in (plain, tagged):
        variant.report()
    print(f"plot: {plot(plain.curves, args.out / 'label_efficiency.png')}")
    dim = plain.model.design(data.rows[:0], data.y[:0]).shape[1]
    print(f"query_1m_seconds={time_query(args.pool, dim, default.strategy):.3f}")
    print(f"labels_random_over_default_with_tag_columns={tagged.ratio():.2f}")
    print(f"labels_random_over_default_{args.half}={plain.ratio():.2f}")
    print(f"labels_random_over_default={plain.ratio():.2f}")
    if args.half == "test":  # every reading of a test half is a recorded fact
        log_test_run(
            args.reference.with_name("test-runs.log"),
            shlex.join(sys.argv),
            {
                "labels_random_over_default_test": f"{plain.ratio():.2f}",
                "labels_random_over_default_with_tag_columns": f"{tagged.ratio():.2f}",
            },
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SafesailError as exc:
        print(f"label_efficiency: error: {exc}", file=sys.stderr)
        sys.exit(2)
