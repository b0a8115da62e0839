"""The `active_learning` room's commands and demo step (registered in pyproject.toml)."""

from __future__ import annotations

import argparse
from typing import Any

from safesail.errors import SafesailError
from safesail.plugins import Plugin


def _config(args: argparse.Namespace):
    from active_learning.learner import ALConfig

    try:
        return ALConfig(strategy=args.strategy, seed=args.seed)
    except ValueError as exc:
        raise SafesailError(str(exc)) from None


def _print_report(report: Any) -> None:
    f1 = (
        "n/a (too few labels)"
        if report.macro_f1_heldout is None
        else f"{report.macro_f1_heldout:.3f}"
    )
    print(f"learner {report.model_version}: {report.n_labels} human labels, held-out macro-F1 {f1}")
    if report.label_distribution:
        print("  labels: " + ", ".join(f"{k} {v}" for k, v in report.label_distribution.items()))
    print(f"  predictions written for {report.n_predictions} features (Meta learner_predictions)")


def learn(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    """Retrain on the human labels, print the report, and optionally the next batch."""
    from active_learning.learner import predict, query_features, retrain

    config = _config(args)
    _print_report(retrain(ws, config))
    if args.query:
        queries = query_features(ws, args.query, config)
        guesses = predict(ws, [q.feature for q in queries], config)
        print(f"next {len(queries)} features to label ({config.strategy}; not pushed):")
        for q in queries:
            guess = guesses[q.feature]
            print(
                f"  {q.sae_id}#{q.feature:<6} score {q.score:.3f}  "
                f"predicted {'+'.join(guess.concepts)} ({guess.probability:.2f})"
            )
    return 0


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    from active_learning.learner import STRATEGIES, ALConfig

    parser = subparsers.add_parser(
        "learn",
        parents=[common],
        help="retrain the active learner on the human labels; --query N shows the next batch",
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default=ALConfig.strategy)
    parser.add_argument("--seed", type=int, default=ALConfig.seed)
    parser.add_argument(
        "--query", type=int, default=0, metavar="N", help="also show the next N features to label"
    )
    parser.set_defaults(handler=learn)


def demo(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    """Print the learner's report when human labels exist (the labeling loop drives it)."""
    from active_learning.learner import ALConfig, retrain

    if ws.status()["labels"]["human"]:
        _print_report(retrain(ws, ALConfig()))
    return 0


PLUGIN = Plugin(name="active_learning", order=5, add_commands=add_commands, demo=demo)
