"""The explainer's commands (`safesail llm up|down|status`, `safesail explain`) and demo step
(registered in pyproject.toml). Heavy imports stay inside the handlers so `--help` is fast."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safesail.plugins import Plugin


def _llm_config(args: argparse.Namespace):
    from safesail.errors import SafesailError
    from safesail.explainer.config import LlmConfig, load_prices

    given = {
        name: value
        for name in ("base_url", "concurrency", "requests_per_second", "timeout_s")
        if (value := getattr(args, name, None)) is not None
    }
    if getattr(args, "llm_model", None):
        given["model"] = args.llm_model
    try:
        return LlmConfig(prices=load_prices(getattr(args, "price_table", None)), **given)
    except ValueError as exc:
        raise SafesailError(str(exc)) from None


def _explain_config(args: argparse.Namespace, **overrides: Any):
    from safesail.errors import SafesailError
    from safesail.explainer.config import ExplainConfig

    given = {
        name: value
        for name in ("limit", "max_gold", "target", "min_gold", "prompting")
        if (value := getattr(args, name, None)) is not None
    }
    if getattr(args, "scorer", None):
        given["scorers"] = tuple(args.scorer)
    try:
        return ExplainConfig(**{**given, **overrides})
    except ValueError as exc:
        raise SafesailError(str(exc)) from None


def _llm(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from safesail.explainer.server import EmbeddedServer

    server = EmbeddedServer(ws.config.workspace, port=args.port)
    if args.action == "up":
        info, started = server.up()
        print(f"{'started' if started else 'already running'}: {info.base_url} (pid {info.pid})")
    elif args.action == "down":
        print("stopped" if server.down() else "no embedded LLM server was running")
    else:
        print(json.dumps(server.status(), indent=2))
    return 0


def _report(report: Any) -> None:
    cal = report.calibration
    print(
        f"explained {report.explained} feature(s) ({report.failed} failed); "
        f"accepted {report.accepted}, queued for humans {report.queued}"
    )
    if cal.get("error"):
        print(f"calibration: {cal['error']}")
    else:
        agreement, threshold = cal["achieved_agreement"], cal["threshold"]
        print(
            f"calibration on {cal['n_gold']} gold features: target {cal['target']:.0%}, held-out "
            f"agreement {'-' if agreement is None else f'{agreement:.0%}'}, threshold "
            f"{'-' if threshold is None else f'{threshold:.3f}'}, coverage {cal['coverage']:.0%}; "
            f"diagram {cal.get('reliability_png')}"
        )


def _explain(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from safesail.explainer.pipeline import explain

    config, llm = _explain_config(args), _llm_config(args)
    _report(explain(ws, config, llm, features=args.feature, progress=progress))
    return 0


def _endpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url",
        help="OpenAI-compatible endpoint (default: $SAFESAIL_LLM_BASE_URL or embedded)",
    )
    parser.add_argument(
        "--llm-model", help="model at the endpoint (default: $SAFESAIL_LLM_MODEL or embedded)"
    )
    parser.add_argument(
        "--price-table", type=Path, help="JSON {model: [usd_per_M_prompt, usd_per_M_completion]}"
    )


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    llm = sub.add_parser("llm", help="the embedded LLM server (llama.cpp, SmolLM2)")
    actions = llm.add_subparsers(dest="action", required=True)
    for action, text in (
        ("up", "start it in the background (idempotent)"),
        ("down", "stop it"),
        ("status", "is it running, where"),
    ):
        parser = actions.add_parser(action, parents=[common], help=text)
        parser.add_argument("--port", type=int, default=8765, help="port to try first")
        parser.set_defaults(handler=_llm)
    explain = sub.add_parser(
        "explain",
        parents=[common],
        help="explain safety candidates with an LLM, calibrate against gold labels, route",
    )
    explain.add_argument("--limit", type=int, help="unlabeled candidates to explain this run")
    explain.add_argument(
        "--feature", type=int, action="append", help="explain this feature (repeatable)"
    )
    explain.add_argument("--max-gold", type=int, help="gold-labeled features to explain this run")
    explain.add_argument("--target", type=float, help="agreement to reach (default 0.9)")
    explain.add_argument("--min-gold", type=int, help="gold features calibration needs (20)")
    explain.add_argument("--prompting", choices=["ours", "baseline"], help="prompt style")
    explain.add_argument(
        "--scorer",
        action="append",
        choices=["detection", "fuzzing", "simulation", "embedding"],
        help="scorers to run (repeatable; default: all four)",
    )
    explain.add_argument("--concurrency", type=int, help="requests in flight")
    explain.add_argument("--requests-per-second", type=float, help="rate limit")
    explain.add_argument("--timeout-s", type=float, help="per-request timeout")
    _endpoint_options(explain)
    explain.set_defaults(handler=_explain)


def add_demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--explain-limit", type=int, default=30, help="unlabeled candidates the demo explains"
    )
    demo.add_argument(
        "--explain-max-gold",
        type=int,
        help="gold features the demo explains (default: all; calibration is only as sure as "
        "the gold labels it is measured on)",
    )


def demo(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from sqlmodel import Session

    from safesail.explainer.pipeline import explain, gold_labels

    with Session(ws.engine) as session:
        n_gold = len(gold_labels(session, ws.selected_sae))
    if not n_gold:
        print("\nexplainer: explaining waits for gold labels (none yet); skipped")
        return 0
    print(f"\nexplainer: {n_gold} gold labels; explaining safety candidates")
    config = _explain_config(  # the two cheapest scorers keep the demo step to a few minutes
        args,
        limit=getattr(args, "explain_limit", None),
        max_gold=getattr(args, "explain_max_gold", None),
        scorers=("detection", "embedding"),
    )
    _report(explain(ws, config, _llm_config(args), progress=progress))
    return 0


PLUGIN = Plugin(
    name="explainer",
    order=20,
    add_commands=add_commands,
    add_demo_options=add_demo_options,
    demo=demo,
    resume=lambda args: f"safesail explain --workspace {args.workspace}",
)
