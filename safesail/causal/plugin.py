"""The causal check's part of `safesail demo`: after the labeling rounds, before the exports,
every human-labeled safety feature gets its causal score.

On by default with `--simulate-annotators`, whose run ends with labels nobody waits on (the
check is what tells a safety team whether a labeled feature matters); `--causal` forces it in the
other modes, `--no-causal` turns it off. It costs about 15 s per feature on one CPU core
(bench/causal.py), plus training the concept probes once per workspace.
"""

from __future__ import annotations

import argparse

from safesail.contracts import Workspace
from safesail.plugins import Plugin


def _options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the causal check of every human-labeled safety feature (default: with "
        "--simulate-annotators only; slow on a CPU)",
    )


def wants_causal(args: argparse.Namespace) -> bool:
    """--causal / --no-causal when given, else whether the annotators are simulated."""
    chosen = getattr(args, "causal", None)
    return bool(getattr(args, "simulate_annotators", False)) if chosen is None else chosen


def _demo(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    if not wants_causal(args):
        return 0
    from safesail.causal.run import run_causal

    done = run_causal(ws, ws.lm, progress=progress)  # type: ignore[attr-defined]
    print(f"\ncausal check: scored {len(done.scored)} feature(s), {done.skipped} already scored")
    return 0


PLUGIN = Plugin(
    name="causal",
    order=25,
    add_demo_options=_options,
    demo=_demo,
    resume=lambda args: f"safesail causal --workspace {args.workspace}",
)
"""Added to the rooms' plugins by `safesail.cli_commands.build_parser` (it is the core's)."""
