"""The causal check's part of `safesail demo`: after the labeling rounds, before the exports,
human-labeled safety features get their causal score.

On by default with `--simulate-annotators`, whose run ends with labels nobody waits on (the
check is what tells a safety team whether a labeled feature matters); `--causal` forces it in the
other modes, `--no-causal` turns it off. It costs about 9 s per feature on the demo's 2 CPU
cores (bench/causal.py), plus training the concept probes once per workspace, so the demo checks
`--causal-limit` features, the concepts in turns.
"""

from __future__ import annotations

import argparse

from safesail.db.contracts import Workspace
from safesail.plugins import Plugin

DEMO_LIMIT = 6
"""Features the demo checks, the concepts in turns: about 1.5 minutes on the demo's 2 cores
(training the probes, once per workspace, is about 1 minute more)."""


def _options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the causal check of human-labeled safety features (default: with "
        "--simulate-annotators only; slow on a CPU)",
    )
    demo.add_argument(
        "--causal-limit",
        type=int,
        default=DEMO_LIMIT,
        help=f"features the demo's causal check scores, taking the concepts in turns (default: "
        f"{DEMO_LIMIT}, about {DEMO_LIMIT * 9} s on 2 CPU cores; `safesail causal` scores the rest)",
    )


def wants_causal(args: argparse.Namespace) -> bool:
    """--causal / --no-causal when given, else whether the annotators are simulated."""
    chosen = getattr(args, "causal", None)
    return bool(getattr(args, "simulate_annotators", False)) if chosen is None else chosen


def _demo(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    if not wants_causal(args):
        return 0
    from safesail.causal.run import run_causal

    done = run_causal(ws, ws.lm, limit=args.causal_limit, progress=progress)  # type: ignore[attr-defined]
    print(f"\ncausal check: scored {len(done.scored)} feature(s), {done.skipped} already scored")
    return 0


PLUGIN = Plugin(
    name="causal",
    order=25,
    add_demo_options=_options,
    demo=_demo,
    resume=lambda args: f"safesail causal --workspace {args.workspace}",
)
"""Added to the rooms' plugins by `safesail.cli.commands.build_parser` (it is the core's)."""
