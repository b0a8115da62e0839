"""A real Label Studio server, installed in its own virtual environment and run for a workspace.

Label Studio pins packages (openai<2, older pyarrow) that would downgrade the app's, so it gets
its own venv under the cache dir. Its data, logs, pid and credentials live in the workspace
(`<workspace>/label-studio/`), HOME included, so nothing lands in the user's home folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import distributions
from pathlib import Path
from typing import NamedTuple

from safesail.errors import SafesailError
from safesail.install.locks import digest, mismatches, normalize, read_lock
from safesail.procs import http_ok, pid_alive, start_time, stop_group

STOP_GRACE_S = 20.0
"""Seconds Label Studio gets to shut down before it is killed."""

LS_VERSION = "1.23.2"
"""The Label Studio release this room is tested against."""
ADMIN_EMAIL = "admin@example.com"
"""Admin login (Label Studio's web login needs a real-looking email)."""
_READY = re.compile(r"Starting development server at (http://\S+?)/?\s*$", re.M)


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the managed Label Studio runs."""

    port: int = 8080
    """Port to bind (Label Studio silently moves to another if busy, so a busy port is refused)."""
    host: str = "127.0.0.1"
    """Bind address: local only by default."""
    start_timeout: float = 300.0
    """Seconds to wait for the server (first start migrates the database: 60-100 s)."""
    local_webhooks: bool = False
    """Let webhooks reach local addresses (`label listen`'s loopback endpoint) by turning off
    Label Studio's SSRF protection (its banned private/loopback subnets). Off by default: only
    the listen path asks for it."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.start_timeout <= 0:
            raise ValueError("start_timeout must be > 0")


class ServerState(NamedTuple):
    """What `labelstudio status` reports."""

    url: str | None
    pid: int | None
    running: bool
    healthy: bool


class Paths(NamedTuple):
    """The managed server's files inside a workspace."""

    root: Path
    data: Path
    pid: Path
    log: Path
    state: Path
    credentials: Path


def paths(workspace: Path) -> Paths:
    root = Path(workspace).resolve() / "label-studio"
    return Paths(
        root,
        root / "data",
        root / "server.pid",
        root / "server.log",
        root / "server.json",
        root / "credentials.json",
    )


def venv_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "label-studio" / "venv"


LOCK = Path(__file__).parent / "locks" / "label-studio.lock"
"""Label Studio and every package of its venv at exact versions with hashes (`make lock`
rewrites it). Its own requirements have no upper bounds: sentry-sdk 3 made 1.23.2 die at start."""


def installed_versions(venv: Path) -> dict[str, str]:
    """{normalized name: version} of the packages in a venv, read from its metadata (no process
    started: the doctor and the tests compare them with the lock)."""
    paths = [str(p) for p in venv.glob("lib/python*/site-packages")]
    found = {}
    for dist in distributions(path=paths) if paths else ():
        if dist.metadata["Name"]:
            found[normalize(dist.metadata["Name"])] = dist.version
    return found


def lock_mismatches(cache_dir: Path) -> list[str]:
    """Locked packages missing from Label Studio's venv or at another version."""
    return mismatches(read_lock(LOCK), installed_versions(venv_dir(cache_dir)))


def ensure_installed(cache_dir: Path, progress: bool = True) -> Path:
    """The `label-studio` executable, installed from the lock on first use (~1.5 min, ~1 GB;
    `make install` does it through `safesail setup`). The venv records the lock's digest: a venv
    built from another lock (an older one, or none) is brought to this one in place: pip
    installs the locked versions over it, so a venv that already holds them needs no download
    and a failed attempt leaves the working venv as it was. A file lock keeps two processes from
    installing at once; the digest is written last, so a half install retries."""
    venv = venv_dir(cache_dir)
    exe, marker = venv / "bin" / "label-studio", venv / ".safesail-installed"
    wanted = digest(LOCK)

    def current() -> bool:
        return marker.exists() and marker.read_text().strip() == wanted

    if current():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():
            return exe
        if exe.exists() and not lock_mismatches(cache_dir):  # the lock's versions already
            marker.write_text(wanted)
            return exe
        if progress:
            print(
                f"installing Label Studio {LS_VERSION} into {venv} from {LOCK.name} (~1.5 min)...",
                flush=True,
            )
        log = venv.parent / "install.log"
        python = venv / "bin" / "python"
        steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(venv)]]
        steps.append(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--require-hashes",
                "-r",
                str(LOCK),
            ]
        )
        with open(log, "w") as out:
            for cmd in steps:
                if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode:
                    tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                    raise SafesailError(
                        f"installing Label Studio failed ({' '.join(tail)}) — read {log}, fix that, "
                        "and rerun `safesail setup`"
                    )
        if wrong := lock_mismatches(cache_dir):
            raise SafesailError(
                f"Label Studio's venv does not match {LOCK.name} after install: "
                f"{', '.join(wrong[:3])} — read {log}, then rerun `safesail setup`"
            )
        marker.write_text(wanted)
        if progress:
            print("Label Studio installed.", flush=True)
    return exe


def _write_private(path: Path, data: dict) -> None:
    """JSON readable by the owner only (0600), created with those permissions from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    os.chmod(path, 0o600)


def credentials(workspace: Path) -> dict[str, str]:
    """The admin login and API token of the managed server, created (random) on first use."""
    path = paths(workspace).credentials
    if path.exists():
        return json.loads(path.read_text())
    creds = {
        "username": ADMIN_EMAIL,
        "password": secrets.token_urlsafe(12),
        "token": secrets.token_hex(20),
    }
    _write_private(path, creds)
    return creds


def _pid_alive(pid: int, p: Paths, started: int | None = None) -> bool:
    """Alive and really our server (a recycled pid belongs to someone else): the start time
    recorded with the pid matches, and the command line is Label Studio's."""
    if not pid_alive(pid, started):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "label-studio" in cmdline or str(p.data) in cmdline


def healthy(url: str, timeout: float = 3.0) -> bool:
    return http_ok(f"{url}/health", timeout)


def status(workspace: Path) -> ServerState:
    p = paths(workspace)
    if not p.state.exists():
        return ServerState(None, None, False, False)
    state = json.loads(p.state.read_text())
    alive = _pid_alive(state["pid"], p, state.get("started"))
    return ServerState(state["url"], state["pid"], alive, alive and healthy(state["url"]))


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_SSRF_SWITCH = "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS"


def _server_env(p: Paths, creds: dict[str, str], local_webhooks: bool = False) -> dict[str, str]:
    """Label Studio reads plain HOST/PORT/USERNAME/PASSWORD too: drop them so they can't leak
    in; pass the secrets by environment rather than on the (world-readable) command line.
    Its SSRF protection stays on unless local_webhooks is asked for (`label listen`)."""
    ssrf = {prefix + "USE_DEFAULT_BANNED_SUBNETS" for prefix in ("LABEL_STUDIO_", "HEARTEX_", "")}
    drop = {"HOST", "PORT", "USERNAME", "PASSWORD", *ssrf}  # it reads all three spellings
    env = {k: v for k, v in os.environ.items() if k not in drop}
    home = p.root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        LABEL_STUDIO_BASE_DATA_DIR=str(p.data),
        LABEL_STUDIO_USERNAME=creds["username"],
        LABEL_STUDIO_PASSWORD=creds["password"],
        LABEL_STUDIO_USER_TOKEN=creds["token"],
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LATEST_VERSION_CHECK="false",  # no call to pypi.org on every start
        PYTHONUNBUFFERED="1",
    )
    if local_webhooks:  # the `label listen` webhook is on 127.0.0.1
        env[_SSRF_SWITCH] = "false"
    return env


def allows_local_webhooks(workspace: Path) -> bool:
    """The managed server was started with its SSRF subnet ban off (ServerConfig.local_webhooks)."""
    p = paths(workspace)
    return p.state.exists() and bool(json.loads(p.state.read_text()).get("local_webhooks"))


def ensure_local_webhooks(workspace: Path, cache_dir: Path, progress: bool = True) -> bool:
    """For `label listen`: a running managed server that bans webhooks to local addresses is
    restarted (same host and port) with local_webhooks on. True when it was restarted; a server
    that is not running is left alone (the client reports it)."""
    current = status(workspace)
    if not current.running or allows_local_webhooks(workspace):
        return False
    state = json.loads(paths(workspace).state.read_text())
    host = state.get("host") or "127.0.0.1"
    if progress:
        print(
            "restarting Label Studio to let its webhooks reach the local listener "
            "(this turns off its SSRF subnet ban until `safesail labelstudio down`)...",
            flush=True,
        )
    down(workspace)
    config = ServerConfig(port=int(state["port"]), host=host, local_webhooks=True)
    up(workspace, cache_dir, config, progress)
    return True


def up(
    workspace: Path, cache_dir: Path, config: ServerConfig | None = None, progress: bool = True
) -> ServerState:
    """Start the workspace's server (install first if needed); already running: return it."""
    config = config or ServerConfig()
    p = paths(workspace)
    current = status(workspace)
    if current.running:
        if not current.healthy and not _wait_healthy(current.url, config.start_timeout):
            raise SafesailError(f"Label Studio (pid {current.pid}) runs but is not healthy — restart it: "
                "`safesail labelstudio down`, then `safesail labelstudio up`")
        return status(workspace)
    if not _port_free(config.host, config.port):
        raise SafesailError(
            f"port {config.port} on {config.host} is in use (Label Studio would silently move to "
            "another one) — pass another --port"
        )
    exe = ensure_installed(cache_dir, progress)
    creds = credentials(workspace)
    p.data.mkdir(parents=True, exist_ok=True)
    first = not (p.data / "label_studio.sqlite3").exists()
    if progress:
        wait = "first start migrates its database, 60-100 s" if first else "~10 s"
        print(f"starting Label Studio on {config.host}:{config.port} ({wait})...", flush=True)
    cmd = [
        str(exe),
        "start",
        "--no-browser",
        "--internal-host",
        config.host,
        "--port",
        str(config.port),
        "--data-dir",
        str(p.data),
        "--enable-legacy-api-token",
    ]
    log = open(p.log, "ab")  # noqa: SIM115 - handed to the child, which outlives this call
    offset = p.log.stat().st_size
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=_server_env(p, creds, config.local_webhooks),
        cwd=p.root,
        start_new_session=True,  # its own process group: `down` stops it and its children only
    )
    log.close()
    p.pid.write_text(str(proc.pid))
    try:  # interrupted while waiting: stop it, so no server runs that `down` cannot find
        url = _wait_ready(proc, p.log, offset, config.start_timeout)
        if not _wait_healthy(url, config.start_timeout):
            raise SafesailError(f"Label Studio did not become healthy at {url} — read {p.log}, then rerun")
    except BaseException:
        stop_group(proc.pid, STOP_GRACE_S)
        p.pid.unlink(missing_ok=True)
        raise
    state = {
        "pid": proc.pid,
        "started": start_time(proc.pid),
        "url": url,
        "port": config.port,
        "host": config.host,
        "local_webhooks": config.local_webhooks,
    }
    p.state.write_text(json.dumps(state))
    return status(workspace)


def _wait_ready(proc: subprocess.Popen, log: Path, offset: int, timeout: float) -> str:
    """The URL from the "Starting development server at" line (the port it really took)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if match := _READY.search(text):
            return match.group(1).rstrip("/")
        if proc.poll() is not None:
            last = " | ".join(text.strip().splitlines()[-3:])
            raise SafesailError(f"Label Studio exited with code {proc.returncode} ({last}) — read {log}, then rerun")
        time.sleep(1.0)
    raise SafesailError(f"Label Studio did not start within {timeout:.0f} s — read {log}, then rerun")


def _wait_healthy(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return True
        time.sleep(1.0)
    return False


def down(workspace: Path) -> bool:
    """Stop the server this workspace started (never any other); False if none was running."""
    p = paths(workspace)
    current = status(workspace)
    stopped = False
    if current.running and current.pid is not None:
        started = json.loads(p.state.read_text()).get("started")
        stop_group(current.pid, STOP_GRACE_S, started)
        stopped = True
    for path in (p.pid, p.state):
        path.unlink(missing_ok=True)
    return stopped
