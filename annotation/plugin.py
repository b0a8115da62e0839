"""The `annotation` room's commands and demo step (registered in pyproject.toml):
`safesail labelstudio up|down|status` and `safesail label push|pull|simulate|listen`.

Flags come from the settings dataclasses (ServerConfig, ClientConfig, PushConfig,
SimulateConfig) through safesail.cli.flags, so a setting's type, default and help live in one
place. Everything heavy is imported inside the handlers: building the CLI stays fast."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotation.server import ServerConfig
from annotation.settings import LISTEN_PORT, PushConfig, SimulateConfig
from annotation.transport import ClientConfig
from safesail.cli.flags import add_config_flags, config_from_args
from safesail.db.contracts import Workspace, read_engine
from safesail.db.labeling import AnnotationSummary
from safesail.plugins import Plugin

if TYPE_CHECKING:
    from safesail.install.doctor import Check

CONNECTION = ("url", "token_file")
CONNECTION_FLAGS = {"url": "--ls-url", "token_file": "--ls-token-file"}
SERVER = ("port", "host")
PUSH = ("batch", "strategy", "overlap")
SIMULATE = ("noise", "seed", "expert")
DEMO_PUSH = ("batch",)
DEMO_SIMULATE = ("noise", "expert")


def login_line(ws: Workspace, url: str) -> str:
    """Where to log in: the URL, the username and the 0600 credentials file that holds the
    password and API token (no secret goes to stdout, which ends up in logs and CI output)."""
    from annotation.server import credentials, paths

    creds = credentials(ws.config.workspace)
    return (
        f"Label Studio: {url}  login {creds['username']}  "
        f"(password and API token in {paths(ws.config.workspace).credentials}, readable by you only)"
    )


def _client_config(args: argparse.Namespace) -> ClientConfig:
    return config_from_args(ClientConfig, args, CONNECTION)


def cmd_up(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from annotation.server import status, up

    was = status(ws.config.workspace)
    config = config_from_args(ServerConfig, args, SERVER)
    state = up(ws.config.workspace, ws.config.cache_dir, config, progress)
    print(("already running: " if was.running else "started: ") + login_line(ws, state.url))
    print(f"stop it with: safesail labelstudio down --workspace {ws.config.workspace}")
    return 0


def cmd_down(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from annotation.server import down

    print("stopped Label Studio" if down(ws.config.workspace) else "Label Studio was not running")
    return 0


def cmd_status(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from annotation.server import status

    state = status(ws.config.workspace)._asdict()
    print(json.dumps(state) if args.json else "\n".join(f"{k}: {v}" for k, v in state.items()))
    return 0


def cmd_push(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from annotation.push import push

    s = config_from_args(PushConfig, args, PUSH)
    r = push(
        ws,
        s.batch,
        strategy=s.strategy,
        overlap=s.overlap,
        config=_client_config(args),
        progress=progress,
    )
    adopted = f", adopted {r.adopted} from an interrupted push" if r.adopted else ""
    print(
        f"pushed {r.pushed} task(s) in batch {r.batch} (strategy {r.strategy}{adopted}); "
        f"{r.total_tasks} task(s) in {r.project}"
    )
    return 0


def cmd_pull(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from annotation.pull import pull

    r = pull(ws, config=_client_config(args), retrain=not args.no_retrain, progress=progress)
    print(
        f"pulled {r.new} new and {r.updated} changed annotation(s), {r.deleted} deleted in "
        f"Label Studio; {r.features_labeled} feature(s) labeled; {r.invalid} kept aside as invalid"
    )
    for problem in r.problems:
        print(f"  invalid: {problem}")
    kappas = {c: v["cohen"] for c, v in r.kappa.items() if v["cohen"] is not None}
    if kappas:
        print(
            "  Cohen's kappa per concept: " + ", ".join(f"{c} {k:.2f}" for c, k in kappas.items())
        )
    print(f"  learner: {r.learner}")
    return 0


def cmd_simulate(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from annotation.simulate import simulate

    s = config_from_args(SimulateConfig, args, SIMULATE)
    r = simulate(
        ws,
        noise=s.noise,
        seed=s.seed,
        expert=s.expert,
        config=_client_config(args),
        progress=progress,
    )
    print(
        f"simulated {r.annotations} annotation(s) on {r.tasks_answered} task(s) as {r.annotators}"
    )
    return 0


def cmd_listen(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from annotation.listen import listen

    listen(ws, args.listen_port, _client_config(args), progress)
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    ls = sub.add_parser("labelstudio", help="run a local Label Studio").add_subparsers(
        dest="action", required=True
    )
    up = ls.add_parser("up", parents=[common], help="install (first time) and start it")
    add_config_flags(up, ServerConfig, SERVER)
    up.set_defaults(handler=cmd_up)
    ls.add_parser("down", parents=[common], help="stop the server `up` started").set_defaults(
        handler=cmd_down
    )
    st = ls.add_parser("status", parents=[common], help="url, pid, healthy")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler=cmd_status)

    label = sub.add_parser("label", help="the human labeling loop").add_subparsers(
        dest="action", required=True
    )
    push = label.add_parser("push", parents=[common], help="push the next batch of features")
    add_config_flags(push, PushConfig, PUSH)
    pull = label.add_parser("pull", parents=[common], help="pull annotations, adjudicate, retrain")
    pull.add_argument("--no-retrain", action="store_true")
    sim = label.add_parser("simulate", parents=[common], help="simulated annotators answer tasks")
    add_config_flags(sim, SimulateConfig, SIMULATE)
    listen = label.add_parser("listen", parents=[common], help="pull on each new annotation")
    listen.add_argument(
        "--listen-port",
        type=int,
        default=LISTEN_PORT,
        help=f"port of the local webhook endpoint (default {LISTEN_PORT}; 8765 is the LLM "
        "server's)",
    )
    for parser, handler in (
        (push, cmd_push),
        (pull, cmd_pull),
        (sim, cmd_simulate),
        (listen, cmd_listen),
    ):
        add_config_flags(parser, ClientConfig, CONNECTION, flags=CONNECTION_FLAGS)
        parser.set_defaults(handler=handler)


def add_demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--simulate-annotators",
        action="store_true",
        help="simulated experts answer the tasks through the Label Studio API",
    )
    demo.add_argument("--rounds", type=int, default=4, help="push/annotate/pull rounds")
    add_config_flags(demo, PushConfig, DEMO_PUSH, helps={"batch": "features pushed per round"})
    add_config_flags(
        demo, SimulateConfig, DEMO_SIMULATE, helps={"noise": "simulated annotators' error rate"}
    )
    add_config_flags(
        demo,
        ServerConfig,
        ("port",),
        flags={"port": "--ls-port"},
        helps={"port": "port of the demo's Label Studio"},
    )


def _rounds_pushed(ws: Workspace) -> int:
    """The last push round recorded for the selected SAE (0 before the first push)."""
    from sqlmodel import Session, func, select

    from safesail.db.tables import LabelTask

    with Session(ws.engine) as session:
        last = session.exec(
            select(func.max(LabelTask.batch)).where(LabelTask.sae_id == ws.selected_sae)
        ).one()
    return int(last or 0)


def demo(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    """Start Label Studio and push the first batch; with --simulate-annotators run the rounds.
    Headless: stop the server it started (and skip the step when nobody would answer);
    otherwise leave it running for a person."""
    from annotation.pull import pull
    from annotation.push import push
    from annotation.server import down, status, up
    from annotation.simulate import simulate
    from safesail.plugins import learner_factory

    print("\n== labeling loop (Label Studio) ==")
    if args.headless and not args.simulate_annotators:
        print("headless without --simulate-annotators: nobody would label; skipped")
        return 0
    settings = config_from_args(PushConfig, args, DEMO_PUSH)
    answers = config_from_args(SimulateConfig, args, DEMO_SIMULATE)
    server = config_from_args(ServerConfig, args, ("port",))
    was_running = status(ws.config.workspace).running
    state = up(ws.config.workspace, ws.config.cache_dir, server, progress)
    make_learner = learner_factory()  # found once, built anew each round from its labels
    try:
        rounds = args.rounds if args.simulate_annotators else 1
        done = _rounds_pushed(ws)
        if done >= rounds:  # a rerun of the demo: answer and pull what is open, push nothing
            print(f"{done} round(s) already pushed (--rounds {rounds}); no new round")
        for i in range(min(done + 1, rounds), rounds + 1):
            if i > done:
                r = push(ws, settings.batch, progress=progress, make_learner=make_learner)
                print(
                    f"round {i}: pushed {r.pushed} task(s) ({r.strategy}); {r.total_tasks} in all"
                )
            if not args.simulate_annotators:
                break
            s = simulate(ws, noise=answers.noise, expert=answers.expert, progress=progress)
            p = pull(ws, progress=progress, make_learner=make_learner)
            summary = read_engine(ws.engine, AnnotationSummary) or AnnotationSummary()
            print(
                f"round {i}: {s.annotations} simulated answer(s); {p.features_labeled} feature(s) "
                f"labeled, {p.invalid} invalid, mean Cohen's kappa {summary.cohen_kappa_mean}; "
                f"learner {p.learner}"
            )
    finally:
        if args.headless and not was_running:
            down(ws.config.workspace)
            print("stopped the Label Studio server this demo started")
    if not args.headless:
        print(login_line(ws, state.url))
        print(f"stop it with: safesail labelstudio down --workspace {ws.config.workspace}")
    return 0


def _resume(args: argparse.Namespace) -> str:
    """The command that reruns only this room's demo step."""
    if not args.simulate_annotators:
        return f"safesail label push --workspace {args.workspace}"
    expert = config_from_args(SimulateConfig, args, ("expert",)).expert
    return (
        f"safesail label simulate --expert {expert} --workspace {args.workspace} && "
        f"safesail label pull --workspace {args.workspace}"
    )


def _setup(cache_dir: Path, progress: bool) -> None:
    from annotation.server import ensure_installed

    ensure_installed(cache_dir, progress)


def _checks(cache_dir: Path, servers: bool) -> list[Check]:
    """Label Studio's own venv against its lock (a package that drifted, like sentry-sdk 3,
    makes the server die at start), never starting it whatever `servers` asks (a first start
    migrates for 60-100 s)."""
    from annotation.server import LOCK, LS_VERSION, lock_mismatches, venv_dir
    from safesail.install.doctor import Check

    if not (venv_dir(cache_dir) / "bin" / "label-studio").exists():
        return [
            Check(
                "label studio",
                False,
                f"not installed in {venv_dir(cache_dir)}",
                "safesail setup (installs it from its lock, ~1.5 min)",
            )
        ]
    if wrong := lock_mismatches(cache_dir):
        return [
            Check(
                "label studio",
                False,
                f"{len(wrong)} package(s) differ from {LOCK.name}: {', '.join(wrong[:3])}",
                "safesail setup (rebuilds its venv from the lock)",
            )
        ]
    return [Check("label studio", True, f"{LS_VERSION}, venv matches {LOCK.name}")]


PLUGIN = Plugin(
    name="annotation",
    order=10,
    add_commands=add_commands,
    add_demo_options=add_demo_options,
    demo=demo,
    resume=_resume,
    setup=_setup,
    checks=_checks,
)
