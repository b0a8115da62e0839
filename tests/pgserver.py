"""A real, throwaway PostgreSQL server for the tests (Debian's `postgresql` package).

Started once per test session on 127.0.0.1 with a fresh data directory; the password is
random, written to a 0600 file for initdb and never put on a command line or in a log; each
test gets its own database. `initdb` refuses to run as root, so as root it runs as the
`postgres` user (the Debian package creates it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

USER = "safesail"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian layout), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    bin: Path
    root: Path
    port: int
    password: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=USER,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "stop"]
        )
        shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres(cmd: list[str]) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def start() -> PgServer:
    """initdb + pg_ctl start in a fresh folder of /tmp (one the postgres user can reach: a
    pytest tmp_path sits under a root-only folder); raises RuntimeError with the log's tail
    when the server does not come up."""
    import tempfile

    pg_bin = postgres_bin()
    if pg_bin is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="safesail-pg-"))
    password = secrets.token_urlsafe(18)
    pwfile = root / "pw"
    pwfile.write_text(password)
    pwfile.chmod(0o600)
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    done = _as_postgres(
        [
            str(pg_bin / "initdb"),
            "-D",
            str(data),
            "-A",
            "scram-sha-256",
            f"--pwfile={pwfile}",
            "-U",
            USER,
            "-E",
            "UTF8",
        ]
    )
    pwfile.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {(done.stderr or done.stdout)[-500:]}")
    port = _free_port()
    log = root / "log"
    done = _as_postgres(
        [
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=60 -c fsync=off",
            "-l",
            str(log),
            "-w",
            "start",
        ]
    )
    server = PgServer(pg_bin, root, port, password)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.2)
    tail = log.read_text()[-500:] if log.exists() else done.stderr[-500:]
    raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{port}: {tail}")
