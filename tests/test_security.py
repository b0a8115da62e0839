"""Security properties of issue 12: what listens where, what a process's command line shows,
which pid is signalled, which names an export may write, and what a message shows of a URL."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from exports.api import write_export
from exports.records import ExportRecord
from safesail.config import WorkspaceConfig
from safesail.db.tables import open_db
from safesail.errors import SafesailError
from safesail.procs import pid_alive, stop_group


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) listening on the port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def _other_address() -> str | None:
    """A non-loopback IPv4 address of this machine (None when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, only routed
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# -- 1 + 3: the app binds loopback, and its database URL is not on its command line ------------
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_app_listens_on_loopback_only_and_hides_db_url(tmp_path):
    from app import plugin

    secret_url = f"sqlite:///{tmp_path / 'marker-db-url.db'}"
    ws = SimpleNamespace(config=WorkspaceConfig(tmp_path / "ws", secret_url))
    ws.config.workspace.mkdir()
    port = _free_port()
    info = plugin.start_background(ws, port)
    try:
        listeners = _listeners(port)
        assert listeners == {"0100007F"}, listeners  # 127.0.0.1, and no 0.0.0.0 / :: socket
        other = _other_address()
        if other is not None:
            with socket.socket() as sock, pytest.raises(OSError):
                sock.settimeout(2)
                sock.connect((other, port))
        cmdline = Path(f"/proc/{info['pid']}/cmdline").read_bytes().decode()
        assert "marker-db-url" not in cmdline and "--db-url" not in cmdline
        environ = Path(f"/proc/{info['pid']}/environ").read_bytes().split(b"\0")
        assert f"SAFESAIL_DB_URL={secret_url}".encode() in environ
        from safesail.procs import start_time

        assert info["started"] == start_time(info["pid"])  # recorded with the pid
    finally:
        assert plugin.stop(ws)
    assert not pid_alive(info["pid"], info["started"])


def test_app_other_address_only_on_request_with_warning(tmp_path, capsys):
    from app import plugin
    from safesail.cli.main import build_parser

    args = build_parser().parse_args(["app"])
    assert args.address == "127.0.0.1"
    ws = SimpleNamespace(config=WorkspaceConfig(tmp_path, "postgresql://u:pw@db/x"))
    cmd = plugin._command(ws, 8501)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert not any("pw" in part for part in cmd)
    cmd = plugin._command(ws, 8501, "0.0.0.0")
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"
    plugin._warn_address("127.0.0.1")
    assert capsys.readouterr().err == ""
    plugin._warn_address("0.0.0.0")
    assert "warning: the app listens on 0.0.0.0" in capsys.readouterr().err


# -- 3: passwords in database URLs are masked in messages ------------------------------------
def test_masked_url():
    from safesail.db.tables import masked_url

    assert masked_url("postgresql://u:hunter2@host/db") == "postgresql://u:***@host/db"
    assert (
        masked_url("postgresql+psycopg://u:p@ss@h:5432/db?sslmode=require")
        == "postgresql+psycopg://u:***@h:5432/db?sslmode=require"
    )
    assert masked_url("postgresql://u@host/db") == "postgresql://u@host/db"
    assert masked_url("sqlite:////data/a@b.db") == "sqlite:////data/a@b.db"


@pytest.mark.parametrize(
    "url",
    [
        "nosuchdialect://admin:hunter2@127.0.0.1:1/db",  # unknown dialect (ArgumentError)
        "postgresql+nosuchdriver://admin:hunter2@127.0.0.1:1/db",  # driver not installed
        "postgresql://admin:hunter2@127.0.0.1:1/db",  # driver missing or connection refused
    ],
)
def test_db_url_password_never_in_errors(url, tmp_path, capsys):
    with pytest.raises(SafesailError) as err:
        open_db(url)
    assert "hunter2" not in str(err.value) and "admin:***@" in str(err.value)
    from safesail.cli.main import main

    assert main(["status", "--workspace", str(tmp_path), "--db-url", url]) == 2
    out = capsys.readouterr()
    assert "hunter2" not in out.err + out.out and "admin:***@" in out.err


# -- 8: a recorded pid is only ours while its start time matches -----------------------------
def _sleeper(*extra: str) -> subprocess.Popen:
    return subprocess.Popen(["sh", "-c", f"sleep 60 # {' '.join(extra)}"], start_new_session=True)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_recycled_pid_is_gone_and_never_signalled():
    from safesail.procs import start_time

    proc = _sleeper()
    try:
        started = start_time(proc.pid)
        assert started is not None and pid_alive(proc.pid, started)
        assert pid_alive(proc.pid)  # no start time recorded: the pid alone (old records)
        other = started + 1  # what a recycled pid looks like: same pid, another start time
        assert not pid_alive(proc.pid, other)
        assert stop_group(proc.pid, 1.0, other) is False
        time.sleep(0.2)
        assert proc.poll() is None  # the foreign process was left alone
        assert stop_group(proc.pid, 5.0, started) is True
        assert proc.wait(5) is not None
    finally:
        if proc.poll() is None:
            stop_group(proc.pid, 5.0)
            proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_servers_ignore_a_recycled_pid(tmp_path):
    """The app, Label Studio and the LLM server each treat a recorded pid that now runs another
    process (same pid, another start time) as gone, and stopping them leaves it alone."""
    from annotation import server as ls
    from app import plugin
    from safesail.explainer.server import EmbeddedServer
    from safesail.procs import start_time

    proc = _sleeper("label-studio")  # even its command line looks like Label Studio's
    try:
        wrong = start_time(proc.pid) + 7
        ws = SimpleNamespace(config=WorkspaceConfig(tmp_path, None))
        (tmp_path / plugin.PID_FILE).write_text(
            json.dumps({"pid": proc.pid, "started": wrong, "port": 1, "url": "http://x"})
        )
        assert plugin.running(ws) is None and plugin.stop(ws) is False
        p = ls.paths(tmp_path)
        p.root.mkdir(parents=True)
        state = {"pid": proc.pid, "started": wrong, "url": "http://127.0.0.1:1", "port": 1}
        p.state.write_text(json.dumps(state))
        assert ls.status(tmp_path).running is False
        assert ls.down(tmp_path) is False
        llm = EmbeddedServer(tmp_path)
        llm.dir.mkdir()
        record = {"pid": proc.pid, "port": 1, "base_url": "http://127.0.0.1:1/v1"}
        llm.state.write_text(json.dumps({**record, "model": "m", "log": "l", "started": wrong}))
        assert llm.info() is None and llm.down() is False
        time.sleep(0.2)
        assert proc.poll() is None  # nobody signalled it
    finally:
        stop_group(proc.pid, 5.0)  # sh and its sleep
        proc.wait()


# -- 6: SAE ids are names of files: validated where registered, checked where written ---------
@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "..", ".hidden", "", "x" * 101, "a b", "a\nb", "/abs", "a\\b"]
)
def test_bad_sae_id_refused_at_registration(bad):
    from safesail.model.saes import register_sae

    with pytest.raises(SafesailError, match="invalid SAE id") as err:
        register_sae(None, None, Path("/nonexistent"), source="disk", sae_id=bad)
    assert "\n" not in str(err.value).replace(repr(bad), "")


def test_good_sae_ids_pass():
    from safesail.model.saes import check_sae_id

    for good in ("L8-w4608-k32", "my_sae.v2", "0", "a" * 100):
        assert check_sae_id(good) == good


def test_cli_sae_add_refuses_path_id(tmp_path, capsys):
    from safesail.cli.main import main

    code = main(["sae", "add", "--workspace", str(tmp_path / "ws"), "--path", str(tmp_path),
                 "--id", "../../etc/x"])  # fmt: skip
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "invalid SAE id '../../etc/x'" in errors[0]


@pytest.mark.parametrize("fmt", ["delphi", "openai", "safesail-db"])
def test_exporters_refuse_names_leaving_the_folder(fmt, tmp_path):
    out = tmp_path / "a" / "out"
    record = ExportRecord(sae_id="../../escaped", index=1, explanation="x", concepts=[])
    with pytest.raises(SafesailError, match="leave the export folder"):
        write_export([record], fmt, out)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == set(), written  # nothing outside (and the staging folder is gone)


# -- 7: `label listen` binds first, then registers; its default port is not the LLM server's ---
def test_listen_default_port_is_not_the_llm_servers():
    from safesail.cli.main import build_parser
    from safesail.explainer.server import EmbeddedServer

    args = build_parser().parse_args(["label", "listen"])
    assert args.listen_port != EmbeddedServer(Path(".")).port


def test_listen_binds_before_registering(monkeypatch, tmp_path):
    from annotation import listen
    from annotation.transport import ClientConfig

    calls = []

    class Hooks:
        def list(self, project):
            return []

        def create(self, url, **kwargs):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            with socket.socket() as sock:  # the endpoint already accepts connections
                sock.connect(("127.0.0.1", port))
            calls.append(url)

    client = SimpleNamespace(
        sdk=SimpleNamespace(webhooks=Hooks()), call=lambda f, *a, **k: f(*a, **k)
    )
    monkeypatch.setattr(listen, "open_client", lambda ws, config: client)
    monkeypatch.setattr(listen, "ensure_project", lambda ws, c: (1, "key"))
    ws = SimpleNamespace(config=WorkspaceConfig(tmp_path, None))
    external = ClientConfig(url="http://ls.example")
    port = _free_port()
    httpd = listen.webhook_server(ws, port, external)
    httpd.server_close()
    assert calls == [f"http://127.0.0.1:{port}/webhook"]
    with socket.socket() as busy:  # a busy port: refused before the server is touched
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(SafesailError, match="cannot listen on 127.0.0.1"):
            listen.webhook_server(ws, busy.getsockname()[1], external)
    assert len(calls) == 1
