"""The causal check's part of `safesail demo`, opt-in (`--causal`): after the labeling
rounds, before the exports, every human-labeled safety feature gets its causal score. Opt-in
because it costs about a minute per feature on 2 CPU cores (bench/causal.py)."""

from __future__ import annotations

import argparse

from safesail.contracts import Workspace
from safesail.plugins import Plugin


def _options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--causal",
        action="store_true",
        help="also run the causal check of every human-labeled safety feature (slow on a CPU)",
    )


def _demo(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    if not getattr(args, "causal", False):
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
