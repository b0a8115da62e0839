"""The causal check's command (`safesail causal`) and its part of `safesail demo` (registered in
pyproject.toml like the rooms'): after the labeling rounds, before the exports, human-labeled
safety features get their causal score.

On by default with `--simulate-annotators`, whose run ends with labels nobody waits on (the
check is what tells a safety team whether a labeled feature matters); `--causal` forces it in the
other modes, `--no-causal` turns it off. It costs about 9 s per feature on the demo's 2 CPU
cores (bench/causal.py), plus training the concept probes once per workspace, so the demo checks
`--causal-limit` features, the concepts in turns.
"""

from __future__ import annotations

import argparse
from typing import Any

from safesail.causal.config import CausalConfig
from safesail.cli.flags import add_config_flags, config_from_args
from safesail.db.contracts import Workspace
from safesail.errors import SafesailError
from safesail.plugins import Plugin

CAUSAL_FLAGS = (
    "alphas",
    "n_harmful",
    "n_benign",
    "bootstrap",
    "level",
    "seed",
    "batch_size",
    "readout_layer",
    "probe_texts",
)
"""CausalConfig fields of `safesail causal`."""

DEMO_LIMIT = 6
"""Features the demo checks, the concepts in turns: about 1.5 minutes on the demo's 2 cores
(training the probes, once per workspace, is about 1 minute more)."""


def _commands(sub: Any, common: argparse.ArgumentParser) -> None:
    causal = sub.add_parser(
        "causal",
        parents=[common],
        help="causal check of human-labeled safety features: ablate / steer each, measure refusal",
    )
    causal.add_argument("--sae", help="SAE whose features to check (default: the selected one)")
    causal.add_argument(
        "--feature", type=int, action="append", help="only these features (repeatable)"
    )
    causal.add_argument("--limit", type=int, help="score at most this many new features")
    add_config_flags(causal, CausalConfig, CAUSAL_FLAGS, flags={"alphas": "--alpha"})
    causal.set_defaults(handler=_causal)


def _causal(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    """`safesail causal`: score the human-labeled safety features (safesail.causal.run)."""
    from safesail.causal.run import run_causal

    config = config_from_args(CausalConfig, args, CAUSAL_FLAGS)
    if args.limit is not None and args.limit < 1:
        raise SafesailError(f"--limit {args.limit} checks no feature — give --limit 1 or more")
    done = run_causal(
        ws,
        ws.lm,  # type: ignore[attr-defined]
        config,
        sae_id=args.sae,
        features=args.feature,
        limit=args.limit,
        progress=progress,
    )
    for index, value in done.scored.items():
        print(f"{done.sae_id} feature {index}: causal_refusal_delta={value:+.4f}")
    speed = f", {done.seconds_per_feature:.1f} s per feature" if done.seconds_per_feature else ""
    print(f"scored {len(done.scored)} feature(s), {done.skipped} already scored{speed}")
    return 0


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
    add_commands=_commands,
    add_demo_options=_options,
    demo=_demo,
    resume=lambda args: f"safesail causal --workspace {args.workspace}",
)
"""Registered in pyproject.toml (`safesail.plugins`), found like the rooms' plugins."""
