"""After `make install`, the demo's downloads are done: the corpus builds, Label Studio's venv is
found and the embedded explainer answers with the package index and any proxy-borne download
(pip, apt) unreachable. The rest of the suite runs under the same pip settings (conftest), so
every Label Studio start and corpus read in it is offline too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import OFFLINE_PIP

CLOSED = "http://127.0.0.1:9"
"""A local port nothing listens on: the index and the proxy every download goes through."""


@pytest.fixture(scope="module")
def offline_env() -> dict[str, str]:
    env = {**os.environ, **OFFLINE_PIP}
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = CLOSED  # apt-get and pip reach the registries through this: refused
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"  # the local servers stay reachable
    return env


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "safesail.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_index_is_unreachable_here(offline_env, tmp_path: Path) -> None:
    """The environment the claims below are tested in does block downloads (else they prove
    nothing): pip cannot fetch a package that is not already on this disk."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "six==1.16.0", "-d", str(tmp_path)],
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and not list(tmp_path.iterdir())


def test_setup_and_corpus_build_offline(offline_env, tmp_path: Path) -> None:
    setup = _cli(offline_env, "setup", "--quiet")
    assert setup.returncode == 0, setup.stderr
    built = _cli(
        offline_env,
        "corpus",
        "build",
        "--max-benign",
        "40",
        "--quiet",
        "--workspace",
        str(tmp_path / "ws"),
    )
    assert built.returncode == 0, built.stderr
    assert "added" in built.stdout and "'benign': 40" in built.stdout


def test_label_studio_venv_is_installed_from_the_lock_offline(offline_env) -> None:
    """Label Studio's venv exists and matches its lock (sentry-sdk 2.x), so starting it (every
    Label Studio test in this suite, under the same pip settings) installs nothing."""
    from annotation.server import lock_mismatches, venv_dir
    from safesail.config import default_cache_dir

    cache = default_cache_dir()
    assert lock_mismatches(cache) == []
    proc = subprocess.run(
        [
            str(venv_dir(cache) / "bin" / "python"),
            "-c",
            "import sentry_sdk; print(sentry_sdk.VERSION)",
        ],
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("2."), proc.stdout + proc.stderr


def test_embedded_explainer_answers_offline(offline_env, tmp_path: Path) -> None:
    from openai import OpenAI

    ws = str(tmp_path / "ws")
    up = _cli(offline_env, "llm", "up", "--workspace", ws)
    try:
        assert up.returncode == 0, up.stderr
        status = json.loads(_cli(offline_env, "llm", "status", "--workspace", ws).stdout)
        client = OpenAI(base_url=status["base_url"], api_key="none", max_retries=0)
        answer = client.chat.completions.create(
            model=status["model"],
            messages=[{"role": "user", "content": "Say one word."}],
            max_tokens=4,
        )
        assert answer.choices[0].message.content
    finally:
        _cli(offline_env, "llm", "down", "--workspace", ws)
