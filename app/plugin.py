"""The `app` room's command (`safesail app`) and demo step (registered in pyproject.toml)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesail.errors import SafesailError
from safesail.plugins import Plugin
from safesail.procs import http_ok, pid_alive, start_time, stop_group

if TYPE_CHECKING:
    from safesail.db.contracts import Workspace

PID_FILE = "app.json"
"""In the workspace: pid, its start time, port and URL of the app started with --background."""
LOCAL = "127.0.0.1"
"""The app's default bind address: it has no login, so only this machine reaches it."""
START_TIMEOUT_S = 60
STOP_GRACE_S = 10.0
"""Seconds the app gets to shut down before it is killed."""


def _add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    app = sub.add_parser("app", parents=[common], help="the Streamlit progress view")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument(
        "--address",
        default=LOCAL,
        help="bind address (default 127.0.0.1; the app has no login, so another address "
        "lets anyone who can reach it read the workspace)",
    )
    mode = app.add_mutually_exclusive_group()
    mode.add_argument(
        "--background", action="store_true", help="start it in the background, print its URL"
    )
    mode.add_argument("--stop", action="store_true", help="stop the one started with --background")
    app.set_defaults(handler=_app)


def _add_demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--app-port", type=int, default=8501, help="port of the progress view (not --headless)"
    )


def _command(ws: Workspace, port: int, address: str = LOCAL) -> list[str]:
    """The Streamlit command line: no secret on it (it is world-readable in `ps`); the database
    URL goes by environment (`_env`)."""
    main = Path(__file__).parent / "main.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(main), "--server.port", str(port)]
    cmd += ["--server.address", address]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    cmd += ["--client.toolbarMode", "viewer", "--"]
    cmd += ["--workspace", str(Path(ws.config.workspace).resolve())]
    return cmd


def _env(ws: Workspace) -> dict[str, str]:
    """The app's environment: the workspace's database URL (which may hold a password) in
    $SAFESAIL_DB_URL, never on the command line; without one, none inherited either."""
    from safesail.db.tables import DB_URL_ENV  # not at import: `safesail --help` stays fast

    env = dict(os.environ)
    env.pop(DB_URL_ENV, None)
    if ws.config.db_url:
        env[DB_URL_ENV] = ws.config.db_url
    return env


def _warn_address(address: str) -> None:
    if address != LOCAL:
        print(
            f"warning: the app listens on {address}; it has no login, so anyone who can reach "
            "this address can read the workspace",
            file=sys.stderr,
            flush=True,
        )


def _url(address: str, port: int) -> str:
    host = "localhost" if address in (LOCAL, "localhost") else address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _healthy(url: str) -> bool:
    return http_ok(f"{url}/_stcore/health", timeout=2)


def running(ws: Workspace) -> dict[str, Any] | None:
    """The background app of this workspace, if one is running."""
    path = Path(ws.config.workspace) / PID_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    if pid_alive(info["pid"], info.get("started")):
        return info
    path.unlink()
    return None


def start_background(ws: Workspace, port: int, address: str = LOCAL) -> dict[str, Any]:
    """Start the app detached (its own session, log in the workspace) unless this workspace's
    app already runs; waits until it answers. Returns {pid, started, port, address, url}."""
    if (info := running(ws)) is not None:
        return info
    _warn_address(address)
    log = open(Path(ws.config.workspace) / "app.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        _command(ws, port, address),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=_env(ws),
        start_new_session=True,
    )
    started = start_time(proc.pid)
    url = _url(address, port)
    health = _url(LOCAL if address in (LOCAL, "localhost", "0.0.0.0", "::") else address, port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(health):
        if proc.poll() is not None:
            raise SafesailError(
                f"the app exited at start (port {port} busy?) — read {Path(log.name)}, or pass "
                "another --port"
            )
        if time.monotonic() > deadline:
            stop_group(proc.pid, STOP_GRACE_S)
            raise SafesailError(f"the app did not answer on {url} in {START_TIMEOUT_S} s — read {Path(log.name)}, "
                "then rerun")
        time.sleep(0.5)
    info = {"pid": proc.pid, "started": started, "port": port, "address": address, "url": url}
    (Path(ws.config.workspace) / PID_FILE).write_text(json.dumps(info))
    return info


def stop(ws: Workspace) -> bool:
    """Stop this workspace's background app; False when none was running."""
    info = running(ws)
    if info is None:
        return False
    stop_group(info["pid"], STOP_GRACE_S, info.get("started"))  # its own session: the app only
    (Path(ws.config.workspace) / PID_FILE).unlink(missing_ok=True)
    return True


def _app(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    if args.stop:
        print("stopped the app" if stop(ws) else "no app running for this workspace")
        return 0
    if args.background:
        info = start_background(ws, args.port, args.address)
        print(f"safesail app: {info['url']}  (stop: safesail app --stop)")
        return 0
    _warn_address(args.address)
    print(f"safesail app: {_url(args.address, args.port)}  (Ctrl+C stops it)")
    return subprocess.call(_command(ws, args.port, args.address), env=_env(ws))


def _demo(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    """Without --headless: start the progress view in the background and print where it is."""
    if getattr(args, "headless", False):
        return 0
    info = start_background(ws, getattr(args, "app_port", 8501))
    print(f"\nprogress view: {info['url']}  (stop: safesail app --stop)")
    return 0


PLUGIN = Plugin(
    name="app",
    order=40,
    add_commands=_add_commands,
    add_demo_options=_add_demo_options,
    demo=_demo,
)
