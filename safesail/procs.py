"""Background servers the project starts (Label Studio, the llama.cpp endpoint, the Streamlit
app): each runs in its own process group, so stopping it stops its children and nothing else."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.error
import urllib.request


def http_ok(url: str, timeout: float) -> bool:
    """The URL answers 200 (any failure to connect or parse means no)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    """A process with this pid exists (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pid: int, grace_s: float) -> bool:
    """SIGTERM the process group led by pid, SIGKILL whatever is left after grace_s; False when
    it was already gone. A leader started by this process is reaped so it doesn't linger as a
    zombie."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True
