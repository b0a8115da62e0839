"""Background servers the project starts (Label Studio, the llama.cpp endpoint, the Streamlit
app): each runs in its own process group, so stopping it stops its children and nothing else."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path


def http_ok(url: str, timeout: float) -> bool:
    """The URL answers 200 (any failure to connect or parse means no)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, field 22 of /proc/<pid>/stat): with the
    pid it names one process, where a pid alone may be recycled. None without such a process or
    without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
        # the command name (field 2) is in parentheses and may hold spaces or ')'
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """A process with this pid exists (one owned by another user counts) and, when the start
    time recorded with the pid is given, it is the same process (a recycled pid is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is not None and _HAS_PROC:
        return start_time(pid) == started
    return True


_HAS_PROC = Path("/proc/self/stat").exists()


def stop_group(pid: int, grace_s: float, started: int | None = None) -> bool:
    """SIGTERM the process group led by pid, SIGKILL whatever is left after grace_s; False when
    it was already gone (or, given its recorded start time, the pid now runs another process,
    which is left alone). A leader started by this process is reaped so it doesn't linger as a
    zombie."""
    if started is not None and not pid_alive(pid, started):
        return False
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
