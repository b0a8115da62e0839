"""The `active_learning` room's command, demo step and learner (registered in pyproject.toml):
the learner is offered to the other rooms through `Plugin.learner`, so the labeling room asks
`safesail.plugins.find_learner` instead of importing this package."""

from __future__ import annotations

import argparse
from typing import Any

from safesail.cli.flags import add_config_flags, config_from_args, field_docs
from safesail.db.contracts import FitReport, Learner, Workspace
from safesail.plugins import Plugin

FLAGS = ("strategy", "seed", "tag_columns")
"""ALConfig fields `safesail learn` takes as flags."""


def make_learner(ws: Workspace, strategy: str | None = None) -> Learner:
    """The LearnerFactory this room offers: the learner of the selected SAE with the default
    settings and the named query strategy (None: the default one)."""
    from active_learning.config import ALConfig
    from active_learning.learner import ActiveLearner

    return ActiveLearner(ws, ALConfig(strategy=strategy) if strategy else ALConfig())


def _print_report(report: FitReport) -> None:
    f1 = (
        "n/a (too few labels)"
        if report.macro_f1_heldout is None
        else f"{report.macro_f1_heldout:.3f}"
    )
    print(f"learner {report.model_version}: {report.n_labels} human labels, held-out macro-F1 {f1}")
    if report.label_distribution:
        print("  labels: " + ", ".join(f"{k} {v}" for k, v in report.label_distribution.items()))
    print(f"  predictions written for {report.n_predictions} features (Meta learner_predictions)")


def learn(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    """Retrain on the human labels, print the report, and optionally the next batch."""
    from active_learning.config import ALConfig
    from active_learning.learner import ActiveLearner

    learner = ActiveLearner(ws, config_from_args(ALConfig, args, FLAGS))
    _print_report(learner.fit())
    if args.query:
        queries = learner.query(args.query)
        guesses = learner.predict([q.feature for q in queries])
        print(f"next {len(queries)} features to label ({learner.strategy.name}; not pushed):")
        for q in queries:
            guess = guesses[q.feature]
            print(
                f"  {q.sae_id}#{q.feature:<6} score {q.score:.3f}  "
                f"predicted {'+'.join(guess.concepts)} ({guess.probability:.2f})"
            )
    return 0


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    from active_learning.config import ALConfig
    from active_learning.strategies import strategy_names

    parser = subparsers.add_parser(
        "learn",
        parents=[common],
        help="retrain the active learner on the human labels; --query N shows the next batch",
    )
    # --strategy by hand: its choices come from the strategy registry, not a Literal type
    parser.add_argument(
        "--strategy",
        dest="strategy",
        choices=strategy_names(),
        default=None,
        help=f"{field_docs(ALConfig)['strategy']} (default: {ALConfig.strategy})",
    )
    add_config_flags(parser, ALConfig, [f for f in FLAGS if f != "strategy"])
    parser.add_argument(
        "--query", type=int, default=0, metavar="N", help="also show the next N features to label"
    )
    parser.set_defaults(handler=learn)


def demo(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    """Print the learner's report when human labels exist (the labeling loop drives it)."""
    if ws.status()["labels"]["human"]:
        _print_report(make_learner(ws).fit())
    return 0


PLUGIN = Plugin(
    name="active_learning", order=5, add_commands=add_commands, demo=demo, learner=make_learner
)
