"""`safesail`: one command, a subcommand per pipeline step, one-line errors.

This module only parses and dispatches: every subcommand, the core's (`safesail.cli.handlers`,
`safesail.cli.demo`) and the rooms' (their plugins), sets its handler on its parser, and `main`
opens the workspace and calls it, turning every expected failure into one line. Heavy imports
(torch, transformers, sae-lens) happen inside the handlers, so `--help` and `status` start fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from safesail.cli.commands import WORKSPACE_FLAGS, build_parser
from safesail.cli.flags import command_name, config_from_args
from safesail.config import WorkspaceConfig
from safesail.errors import SafesailError

if TYPE_CHECKING:
    from safesail.workspace import Workspace

__all__ = ["build_parser", "main", "run"]


CREATE_WORKSPACE = {"corpus build", "corpus add", "sae train", "sae add", "demo"}
"""The commands that build a workspace and so may create one; every other command reads one,
and a mistyped `--workspace` must be an error, not a stray empty workspace reported as "0 texts"."""
NO_WORKSPACE = {"llm", "labelstudio"}
"""Commands that run a server beside a workspace rather than read one."""


def check_workspace(config: WorkspaceConfig, create: bool) -> None:
    """Refuse a workspace that is a file, a 0-byte database (a truncated copy, not a new
    workspace: initialising it would hide the loss), or, unless `create`, one that does not
    exist."""
    folder = config.workspace
    if folder.exists() and not folder.is_dir():
        raise SafesailError(
            f"--workspace {folder} is a file, not a folder — point --workspace at a folder"
        )
    if config.db_url:  # a server database reports its own problems
        return
    database = folder / "safesail.db"
    if database.exists() and database.stat().st_size == 0:
        raise SafesailError(
            f"database {database} is empty (0 bytes), not a workspace — restore it from a "
            "backup, or delete it to start a new workspace there"
        )
    if not create and not database.exists():
        raise SafesailError(
            f"no workspace at {folder} (no safesail.db there) — check --workspace, or build one "
            "with `safesail corpus build` or `safesail demo`"
        )


def _workspace(args: argparse.Namespace) -> Workspace:
    from safesail.workspace import Workspace as Core

    config = config_from_args(WorkspaceConfig, args, WORKSPACE_FLAGS)
    command = command_name(args)
    check_workspace(config, create=command in CREATE_WORKSPACE or args.command in NO_WORKSPACE)
    try:
        return Core(config, args.model)
    except OSError as exc:
        raise SafesailError(
            f"cannot create the workspace {config.workspace}: {exc.strerror} — point "
            "--workspace at a folder you can write"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Call the command's handler, set on its parser (`set_defaults(handler=...)`) by the core
    and the rooms alike: with the workspace opened for it, or with none where the command
    reads none (`reads_workspace=False`: setup, doctor, reference assemble)."""
    progress = not getattr(args, "quiet", False)  # `reference assemble` has no --quiet
    if not getattr(args, "reads_workspace", True):
        return args.handler(args, progress) or 0
    return args.handler(_workspace(args), args, progress) or 0


def _database_file(args: argparse.Namespace) -> str:
    from safesail.db.tables import masked_url

    url = getattr(args, "db_url", None)
    if url:
        return masked_url(url)
    return str(getattr(args, "workspace", "workspace")) + "/safesail.db"


def expected_failure(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message for a failure a user can cause (a bad file, a locked or corrupt
    database, an unwritable path), or None for a bug (which keeps its traceback). The safety
    net under the SafesailErrors raised near their causes: it names what failed and what to
    do, never the SQL or its parameters."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        reason = " ".join(str(exc.orig).split())
        where = _database_file(args)
        if "locked" in reason.lower():
            return (
                f"database {where} is locked — another safesail process holds it; wait or stop it"
            )
        return (
            f"database {where} is unreadable ({reason}) — restore it from a backup or use "
            "another --workspace"
        )
    if isinstance(exc, UnicodeError):
        return f"a file is not UTF-8 text ({exc}) — save it as UTF-8 and rerun"
    if isinstance(exc, OSError):
        where = exc.filename or "a path"
        return f"{where}: {exc.strerror or exc} — check the path exists and you can write there"
    kind = type(exc)
    if kind.__module__.startswith(("pyarrow", "safetensors")):
        return f"a file could not be read ({kind.__name__}: {exc}) — check it is whole and of the right format"
    return None


class _Shown(logging.Handler):
    """A library message as the command's own output: the bare message, on stdout for INFO,
    on stderr for warnings and errors (where Python's last-resort handler puts them when no
    handler is configured), each written to the stream of the moment, as print() does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            print(self.format(record), file=stream)
        except Exception:
            self.handleError(record)


@contextmanager
def library_messages() -> Iterator[None]:
    """Show the `safesail` loggers' messages from INFO up while a command runs: the library
    logs, the CLI decides what is shown (and leaves logging as it found it afterwards)."""
    logger = logging.getLogger("safesail")
    handler, level = _Shown(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """The single dispatch path: every expected failure becomes one line
    `safesail: error: <what> — <what to do>` and exit 2; `--debug` shows the traceback."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        with library_messages():
            return run(args)
    except SafesailError as exc:
        if debug:
            raise
        message = str(exc)  # may quote a parser's multi-line text: folded below, as one line
    except KeyboardInterrupt:
        print("safesail: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = None if debug else expected_failure(exc, args)
        if message is None:
            raise
    print(f"safesail: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
