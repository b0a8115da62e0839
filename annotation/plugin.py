"""The `annotation` room's commands and demo step (registered in pyproject.toml):
`safesail labelstudio up|down|status` and `safesail label push|pull|simulate|listen`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safesail.errors import SafesailError
from safesail.plugins import Plugin


def _client_config(args: argparse.Namespace):
    from annotation.client import ClientConfig

    return ClientConfig(url=args.ls_url, token_file=args.ls_token_file)


def _server_config(args: argparse.Namespace):
    from annotation.server import ServerConfig

    try:
        return ServerConfig(port=args.port, host=args.host)
    except ValueError as exc:
        raise SafesailError(str(exc)) from None


def login_line(ws: Any, url: str) -> str:
    """Where to log in: the URL, the username and the 0600 credentials file that holds the
    password and API token (no secret goes to stdout, which ends up in logs and CI output)."""
    from annotation.server import credentials, paths

    creds = credentials(ws.config.workspace)
    return (
        f"Label Studio: {url}  login {creds['username']}  "
        f"(password and API token in {paths(ws.config.workspace).credentials}, readable by you only)"
    )


def cmd_up(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from annotation.server import status, up

    was = status(ws.config.workspace)
    state = up(ws.config.workspace, ws.config.cache_dir, _server_config(args), progress)
    print(("already running: " if was.running else "started: ") + login_line(ws, state.url))
    print(f"stop it with: safesail labelstudio down --workspace {ws.config.workspace}")
    return 0


def cmd_down(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from annotation.server import down

    print("stopped Label Studio" if down(ws.config.workspace) else "Label Studio was not running")
    return 0


def cmd_status(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from annotation.server import status

    state = status(ws.config.workspace)._asdict()
    print(json.dumps(state) if args.json else "\n".join(f"{k}: {v}" for k, v in state.items()))
    return 0


def cmd_push(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from annotation.client import push

    r = push(
        ws,
        args.batch,
        strategy=args.strategy,
        overlap=args.overlap,
        config=_client_config(args),
        progress=progress,
    )
    adopted = f", adopted {r.adopted} from an interrupted push" if r.adopted else ""
    print(
        f"pushed {r.pushed} task(s) in batch {r.batch} (strategy {r.strategy}{adopted}); "
        f"{r.total_tasks} task(s) in {r.project}"
    )
    return 0


def cmd_pull(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from annotation.client import pull

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


def cmd_simulate(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from annotation.simulate import simulate

    r = simulate(
        ws,
        noise=args.noise,
        seed=args.seed,
        expert=args.expert,
        config=_client_config(args),
        progress=progress,
    )
    print(
        f"simulated {r.annotations} annotation(s) on {r.tasks_answered} task(s) as {r.annotators}"
    )
    return 0


def cmd_listen(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    from annotation.listen import listen

    listen(ws, args.listen_port, _client_config(args), progress)
    return 0


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ls-url", help="an existing Label Studio (default: the managed one)")
    parser.add_argument(
        "--ls-token-file", type=Path, help="0600 file with its API token (or $LABEL_STUDIO_API_KEY)"
    )


def _expert_option(parser: argparse.ArgumentParser) -> None:
    from annotation.config import EXPERTS, READER

    parser.add_argument(
        "--expert",
        choices=EXPERTS,
        default=READER,
        help="where simulated answers come from: the reader (reads the top windows, like a "
        "person) or the corpus-tag oracle (the concept tags of the texts a feature fires in)",
    )


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    ls = sub.add_parser("labelstudio", help="run a local Label Studio").add_subparsers(
        dest="action", required=True
    )
    up = ls.add_parser("up", parents=[common], help="install (first time) and start it")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--host", default="127.0.0.1", help="bind address (default: local only)")
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
    push.add_argument("--batch", type=int, default=20, help="features per batch")
    push.add_argument("--strategy", help="active-learning query strategy (default: the learner's)")
    push.add_argument("--overlap", type=float, default=0.2, help="share of tasks for 2 annotators")
    pull = label.add_parser("pull", parents=[common], help="pull annotations, adjudicate, retrain")
    pull.add_argument("--no-retrain", action="store_true")
    sim = label.add_parser("simulate", parents=[common], help="simulated annotators answer tasks")
    sim.add_argument("--noise", type=float, default=0.05, help="share of wrong answers")
    sim.add_argument("--seed", type=int, default=0)
    _expert_option(sim)
    listen = label.add_parser("listen", parents=[common], help="pull on each new annotation")
    listen.add_argument(
        "--listen-port",
        type=int,
        default=8766,
        help="port of the local webhook endpoint (default 8766; 8765 is the LLM server's)",
    )
    for parser, handler in (
        (push, cmd_push),
        (pull, cmd_pull),
        (sim, cmd_simulate),
        (listen, cmd_listen),
    ):
        _connection_options(parser)
        parser.set_defaults(handler=handler)


def add_demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--simulate-annotators",
        action="store_true",
        help="simulated experts answer the tasks through the Label Studio API",
    )
    demo.add_argument("--rounds", type=int, default=4, help="push/annotate/pull rounds")
    demo.add_argument("--batch", type=int, default=20, help="features pushed per round")
    demo.add_argument("--noise", type=float, default=0.05, help="simulated annotators' error rate")
    _expert_option(demo)
    demo.add_argument("--ls-port", type=int, default=8080, help="port of the demo's Label Studio")


def _rounds_pushed(ws: Any) -> int:
    """The last push round recorded for the selected SAE (0 before the first push)."""
    from sqlmodel import Session, func, select

    from safesail.storage import LabelTask

    with Session(ws.engine) as session:
        last = session.exec(
            select(func.max(LabelTask.batch)).where(LabelTask.sae_id == ws.selected_sae)
        ).one()
    return int(last or 0)


def demo(ws: Any, args: argparse.Namespace, progress: bool) -> int:
    """Start Label Studio and push the first batch; with --simulate-annotators run the rounds.
    Headless: stop the server it started (and skip the step when nobody would answer);
    otherwise leave it running for a person."""
    from annotation.client import pull, push
    from annotation.server import ServerConfig, down, status, up
    from annotation.simulate import simulate

    print("\n== labeling loop (Label Studio) ==")
    if args.headless and not args.simulate_annotators:
        print("headless without --simulate-annotators: nobody would label; skipped")
        return 0
    was_running = status(ws.config.workspace).running
    state = up(ws.config.workspace, ws.config.cache_dir, ServerConfig(port=args.ls_port), progress)
    try:
        rounds = args.rounds if args.simulate_annotators else 1
        done = _rounds_pushed(ws)
        if done >= rounds:  # a rerun of the demo: answer and pull what is open, push nothing
            print(f"{done} round(s) already pushed (--rounds {rounds}); no new round")
        for i in range(min(done + 1, rounds), rounds + 1):
            if i > done:
                r = push(ws, args.batch, progress=progress)
                print(f"round {i}: pushed {r.pushed} task(s) ({r.strategy}); {r.total_tasks} in all")
            if not args.simulate_annotators:
                break
            s = simulate(ws, noise=args.noise, expert=args.expert, progress=progress)
            p = pull(ws, progress=progress)
            mean = ws.status()["annotation"].get("cohen_kappa_mean")
            print(
                f"round {i}: {s.annotations} simulated answer(s); {p.features_labeled} feature(s) "
                f"labeled, {p.invalid} invalid, mean Cohen's kappa {mean}; learner {p.learner}"
            )
    finally:
        if args.headless and not was_running:
            down(ws.config.workspace)
            print("stopped the Label Studio server this demo started")
    if not args.headless:
        print(login_line(ws, state.url))
        print(f"stop it with: safesail labelstudio down --workspace {ws.config.workspace}")
    return 0


PLUGIN = Plugin(
    name="annotation",
    order=10,
    add_commands=add_commands,
    add_demo_options=add_demo_options,
    demo=demo,
    resume=lambda args: (
        f"safesail label simulate --expert {args.expert} --workspace {args.workspace} && "
        f"safesail label pull "
        f"--workspace {args.workspace}"
        if args.simulate_annotators
        else f"safesail label push --workspace {args.workspace}"
    ),
)
