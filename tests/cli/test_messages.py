"""The library logs, the CLI shows: while a command runs, a `safesail` logger's INFO message is
the command's own stdout line and a warning goes to stderr, both bare, as print() and Python's
last-resort handler wrote them; afterwards logging is left as it was found."""

from __future__ import annotations

import logging

from safesail.cli.main import library_messages
from safesail.explainer.pipeline import log as pipeline_log


def test_library_messages_print_bare_lines_only_while_a_command_runs(capsys) -> None:
    print("before")
    with library_messages():
        pipeline_log.info("started the embedded LLM server at %s (log %s)", "http://h/v1", "x.log")
        logging.getLogger("safesail.plugins").warning("safesail: warning: plugin '%s'", "p")
        pipeline_log.debug("not shown")
    pipeline_log.info("not shown either")
    captured = capsys.readouterr()
    assert captured.out == "before\nstarted the embedded LLM server at http://h/v1 (log x.log)\n"
    assert captured.err == "safesail: warning: plugin 'p'\n"
    assert not logging.getLogger("safesail").handlers
