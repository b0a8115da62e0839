"""The explainer's commands (`safesail llm up|down|status`, `safesail explain`) and demo step
(registered in pyproject.toml). Heavy imports stay inside the handlers so `--help` is fast."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesail.plugins import Plugin

if TYPE_CHECKING:
    from safesail.db.contracts import Workspace
    from safesail.explainer.config import ExplainConfig, LlmConfig
    from safesail.explainer.pipeline import ExplainReport
    from safesail.install.doctor import Check

LLM_FLAGS = ("base_url", "concurrency", "requests_per_second", "timeout_s")
"""LlmConfig fields with a flag of their own name (`--llm-model`, the model, is apart: the
common `--model` flag, the language model that is explained, holds its name)."""
EXPLAIN_FLAGS = (
    "limit",
    "max_gold",
    "ask_unprovable",
    "target",
    "delta",
    "votes",
    "prompting",
    "scorers",
)
"""ExplainConfig fields with a flag (`--scorers` is spelled `--scorer`, it repeats)."""


def _llm_config(args: argparse.Namespace) -> LlmConfig:
    from safesail.cli.flags import config_from_args
    from safesail.explainer.config import LlmConfig, load_prices

    return config_from_args(
        LlmConfig,
        args,
        LLM_FLAGS,
        model=getattr(args, "llm_model", None) or None,
        prices=load_prices(getattr(args, "price_table", None)),
    )


def _explain_config(args: argparse.Namespace, **overrides: Any) -> ExplainConfig:
    from safesail.cli.flags import config_from_args
    from safesail.explainer.config import ExplainConfig

    return config_from_args(ExplainConfig, args, EXPLAIN_FLAGS, **overrides)


def _llm(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
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


def _escalate_config(args: argparse.Namespace) -> LlmConfig | None:
    """The escalation stage's endpoint (`--escalate-base-url`, `--escalate-model`), or None."""
    from safesail.explainer.config import LlmConfig, load_prices

    url = getattr(args, "escalate_base_url", None)
    if url is None:
        return None
    return LlmConfig(
        base_url=url,
        model=getattr(args, "escalate_model", None),
        prices=load_prices(getattr(args, "price_table", None)),
    )


def _report(report: ExplainReport) -> None:
    cal = report.calibration
    print(
        f"asked the LLM about {report.explained} feature(s) ({report.failed} failed); of "
        f"{cal.routed} routed: accepted {cal.accepted} ({cal.accepted_safety} safety), queued "
        f"for humans {cal.queued}, stale acceptances {cal.stale}"
    )
    for name, n in report.not_asked.items():
        print(f"  {name}: not asked about {n} routed feature(s): its gold answers accept nothing")
    print(
        f"guarantee: target {cal.target:g}, delta {cal.delta:g}: with probability >= "
        f"{1 - cal.delta:g}, at least {cal.target:.0%} of the accepted agree with the experts "
        f"(gold: {cal.n_gold} features)"
    )
    for s in cal.stages:
        if s.threshold is None:
            what = f"accepts nothing ({s.note})" if s.note else "accepts nothing"
        else:
            what = (
                f"threshold {s.threshold:.3f} on {s.gold_accepted}/{s.n_gold} gold "
                f"({s.gold_errors} wrong, p {s.p_value:.3g}), bound {s.bound:.3f}"
            )
        print(
            f"  {s.name} [{s.model_version}] delta {s.delta:.3g}: {what}; accepted "
            f"{s.accepted}/{s.reached} reached ({s.accepted_safety} safety); "
            f"{s.tokens} tokens, {s.seconds:.1f} s"
        )
    if cal.error:
        print(f"calibration: {cal.error}")
    if cal.reliability_png:
        print(f"diagram {cal.reliability_png}")


def _explain(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from safesail.explainer.pipeline import explain

    config, llm = _explain_config(args), _llm_config(args)
    report = explain(
        ws,
        config,
        llm,
        features=args.feature,
        escalate=_escalate_config(args),
        progress=progress,
        retry_failed=args.retry_failed,
    )
    _report(report)
    return 0


def _endpoint_options(parser: argparse.ArgumentParser) -> None:
    from safesail.cli.flags import add_config_flags
    from safesail.explainer.config import LlmConfig

    add_config_flags(parser, LlmConfig, ("base_url",))
    parser.add_argument(
        "--llm-model", help="model at the endpoint (default: $SAFESAIL_LLM_MODEL or embedded)"
    )
    parser.add_argument(
        "--price-table", type=Path, help="JSON {model: [usd_per_M_prompt, usd_per_M_completion]}"
    )


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    from safesail.cli.flags import add_config_flags
    from safesail.explainer.config import ExplainConfig, LlmConfig
    from safesail.explainer.scorers import scorer_names

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
        help="route safety candidates through the trust-or-escalate cascade (concept model, "
        "LLM votes, optional stronger endpoint) with a guarantee on gold labels; the rest to people",
    )
    explain.add_argument(
        "--feature", type=int, action="append", help="explain this feature (repeatable)"
    )
    explain.add_argument(
        "--retry-failed",
        action="store_true",
        help="ask again about features whose every answer failed (new seeds; `status` counts them)",
    )
    add_config_flags(explain, ExplainConfig, [f for f in EXPLAIN_FLAGS if f != "scorers"])
    explain.add_argument(  # choices from the registry: cliconfig derives them from Literals only
        "--scorer",
        dest="scorers",
        action="append",
        choices=scorer_names(),
        help=f"scorers to run (repeatable; default: {', '.join(ExplainConfig().scorers)})",
    )
    add_config_flags(explain, LlmConfig, [f for f in LLM_FLAGS if f != "base_url"])
    _endpoint_options(explain)
    explain.add_argument(
        "--escalate-base-url",
        help="the cascade's third stage: a stronger OpenAI-compatible endpoint (…/v1) asked "
        "about what the first LLM does not accept",
    )
    explain.add_argument(
        "--escalate-model", help="model at the escalation endpoint (must be in the price table)"
    )
    explain.set_defaults(handler=_explain)


DEMO_LIMIT = 5
DEMO_MAX_GOLD = 50
"""The demo's sizes. Most go to the yardstick: a stage accepts nothing before
ln(delta / stages) / ln(target) gold features (29 at the defaults) reach it with valid
answers, and the embedded 135M model's answers fail validation for 40-60% of them.
`safesail explain` afterwards asks about the rest (nothing is redone)."""


def add_demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--explain-limit",
        type=int,
        default=DEMO_LIMIT,
        help=f"unlabeled candidates the demo explains (default: {DEMO_LIMIT})",
    )
    demo.add_argument(
        "--explain-max-gold",
        type=int,
        default=DEMO_MAX_GOLD,
        help=f"gold features the demo explains, the calibration's yardstick (default: "
        f"{DEMO_MAX_GOLD}; calibration is only as sure as the gold labels it is measured on)",
    )


def demo(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from sqlmodel import Session

    from safesail.db.queries import require_selected_sae
    from safesail.explainer.materials import gold_labels
    from safesail.explainer.pipeline import explain

    sae_id = require_selected_sae(ws.engine)
    with Session(ws.engine) as session:
        n_gold = len(gold_labels(session, sae_id))
    if not n_gold:
        print("\nexplainer: explaining waits for gold labels (none yet); skipped")
        return 0
    print(f"\nexplainer: {n_gold} gold labels; explaining safety candidates")
    config = _explain_config(  # the free scorer only: the votes are what the demo pays for
        args,
        limit=getattr(args, "explain_limit", None),
        max_gold=getattr(args, "explain_max_gold", None),
        scorers=("embedding",),
    )
    _report(explain(ws, config, _llm_config(args), progress=progress))
    return 0


def _checks(cache_dir: Path, servers: bool) -> list[Check]:
    """llama.cpp: the locked version, built without instructions some machines lack, and, when
    `servers`, a server that starts and answers on the embedded model (~10 s: `doctor` pays it,
    the demo's preflight does not, as its explain step starts that server anyway)."""
    import tempfile

    from safesail.errors import SafesailError
    from safesail.explainer.portable import forbidden_instructions, llama_libraries
    from safesail.explainer.server import EmbeddedServer
    from safesail.install.doctor import Check
    from safesail.install.locks import LOCK_DIR, installed_version, read_lock

    wanted = read_lock(LOCK_DIR / "llama.lock")["llama-cpp-python"]
    have = installed_version("llama-cpp-python")
    if have != wanted:
        return [
            Check(
                "llama.cpp",
                False,
                f"llama-cpp-python {have or 'missing'} != {wanted}",
                "make install (builds the portable wheel once)",
            )
        ]
    try:
        bad = {
            lib.name: found for lib in llama_libraries() if (found := forbidden_instructions(lib))
        }
    except (OSError, subprocess.CalledProcessError):
        bad, flags = {}, "build flags not checked (no objdump: apt-get install binutils)"
    else:
        flags = "no AMX or AVX-512 instructions"
    if bad:
        return [
            Check(
                "llama.cpp",
                False,
                f"{', '.join(bad)} use {sorted({i for f in bad.values() for i in f})}",
                f"rm -rf {cache_dir}/wheels/llama-cpp-python-* .venv/.installed && make install",
            )
        ]
    if not servers:
        return [Check("llama.cpp", True, f"llama-cpp-python {wanted}, {flags}, server not started")]
    with tempfile.TemporaryDirectory() as home:
        server = EmbeddedServer(Path(home))
        try:
            server.up(wait_s=60.0)
        except SafesailError as exc:
            return [
                Check(
                    "llama.cpp",
                    False,
                    f"{wanted}, the server does not start: {exc}",
                    "make install; see the log line above",
                )
            ]
        finally:
            server.down()
    return [Check("llama.cpp", True, f"llama-cpp-python {wanted}, {flags}, server answers")]


PLUGIN = Plugin(
    name="explainer",
    order=20,
    add_commands=add_commands,
    add_demo_options=add_demo_options,
    demo=demo,
    resume=lambda args: f"safesail explain --workspace {args.workspace}",
    checks=_checks,
)
