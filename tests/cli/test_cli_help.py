"""The command line keeps what the documentation promises: every documented command and flag
parses, every `--help` renders, flags derived from a config carry the field's docstring, and a
value the config refuses is one line on stderr with exit code 2.

The README, every page under docs/ and bench/README.md are parsed, not copied: a flag
documented in any of them that the CLI lacks fails here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safesail.cli.commands import build_parser
from safesail.cli.flags import field_docs
from safesail.cli.main import main
from safesail.config import CollectConfig, TrainConfig
from safesail.selection.config import SelectionConfig
from safesail.triage.config import TriageConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
SAFESAIL = Path(sys.executable).parent / "safesail"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _commands(readme: str) -> list[str]:
    """Every `safesail ...` command line one documentation page holds: in its code blocks (a
    line starting with whitespace continues the one above), in inline code, and the flags of
    `make demo ARGS="..."` (passed to `safesail demo`). Comments are cut off."""
    lines: list[str] = []
    blocks = re.findall(r"```[a-z]*\n(.*?)```", readme, flags=re.S)
    for block in blocks:
        for raw in block.splitlines():
            text = raw.split(" #", 1)[0].rstrip()
            if text.startswith("safesail "):
                lines.append(text)
            elif lines and text[:1].isspace() and text.strip()[:1] in "[-" and text.strip():
                lines[-1] += " " + text.strip()
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)
    lines += [" ".join(span.split()) for span in re.findall(r"`(safesail [^`]+)`", prose)]
    lines += [f"safesail demo {args}" for args in re.findall(r'make demo ARGS="([^"]+)"', readme)]
    return sorted(set(lines))


def _documented() -> list[str]:
    """The command lines of every documentation page, each page parsed on its own."""
    return sorted({line for page in DOCS for line in _commands(page.read_text())})


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _resolve(parser: argparse.ArgumentParser, words: list[str], path: tuple[str, ...] = ()):
    """(command path, parser) for each command a documented line names: `up|down|status` names
    three; stops at the first flag or at a parser without subcommands."""
    choices = _subparsers(parser)
    if not choices or not words or words[0].startswith(("-", "[")):
        return [(path, parser, words)]
    out = []
    for name in words[0].split("|"):
        assert name in choices, f"`safesail {' '.join(path)}` has no subcommand {name!r}"
        out += _resolve(choices[name], words[1:], (*path, name))
    return out


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for name, child in _subparsers(parser).items():
        yield from _walk(child, (*path, name))


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()  # with every installed room's plugin


def test_the_docs_document_commands():
    assert ROOT / "docs" / "cli.md" in DOCS  # the command line's own page is parsed
    lines = _documented()
    assert any(line.startswith("safesail triage ") and "--min-term-share" in line for line in lines)
    assert any(line.startswith("safesail label push ") for line in lines)
    assert any(line.startswith("safesail demo ") and "--rounds" in line for line in lines)


@pytest.mark.parametrize("line", _documented())
def test_every_documented_flag_is_accepted(parser, line):
    """Each flag of a documented command exists on that command; a documented choice
    (`--contrast rest|benign`) is among the flag's choices."""
    _check(parser, line)


def test_a_documented_flag_the_cli_lacks_fails(parser):
    """The check above can fail: a page's code block naming a missing flag or choice."""
    page = "```bash\nsafesail triage [--min-precision 0.5]\n    [--no-such-flag 3]\n```\n"
    [line] = _commands(page)
    with pytest.raises(AssertionError, match="--no-such-flag"):
        _check(parser, line)
    with pytest.raises(AssertionError, match="'sideways'"):
        _check(parser, "safesail select --contrast rest|sideways")


def _check(parser: argparse.ArgumentParser, line: str) -> None:
    for path, sub, rest in _resolve(parser, line.split()[1:]):
        options = sub._option_string_actions
        tokens = [t.strip("[]") for t in " ".join(rest).split()]
        missing = [f for f in FLAG.findall(" ".join(rest)) if f not in options]
        assert not missing, f"`safesail {' '.join(path)}` lacks the documented {missing}"
        for i, token in enumerate(tokens[:-1]):
            action = options.get(token)
            value = tokens[i + 1]
            if action is None or not action.choices or value.startswith("-") or value.isupper():
                continue
            allowed = {str(c) for c in action.choices}
            for choice in value.split("|"):
                assert choice in allowed, f"`safesail {' '.join(path)} {token}`: no {choice!r}"


def test_every_help_renders(parser, capsys):
    """`safesail <cmd> ... --help` for every command and subcommand, as the user runs it."""
    paths = [path for path, _ in _walk(parser)]
    assert {"corpus", "sae", "collect", "select", "triage", "status", "demo"} <= {
        p[0] for p in paths if p
    }
    for path in paths:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([*path, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: safesail"), path


def test_help_from_the_entry_point():
    top = subprocess.run([SAFESAIL, "--help"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0, top.stderr
    for command in ("corpus", "sae", "collect", "select", "triage", "reference", "status", "demo"):
        assert command in top.stdout
    triage = subprocess.run(
        [SAFESAIL, "triage", "--help"], capture_output=True, text=True, timeout=120
    )
    assert triage.returncode == 0, triage.stderr
    assert "--min-term-share" in triage.stdout and "--workspace" in triage.stdout


def test_help_comes_from_the_config_field_docstring(parser):
    """The help of a derived flag is its field's docstring with the default appended."""
    triage = _subparsers(parser)["triage"]
    action = triage._option_string_actions["--min-term-share"]
    doc = field_docs(TriageConfig)["min_term_share"]
    assert doc.startswith("At least this share of a feature's top contexts")
    assert action.help == f"{doc} (default: {TriageConfig.min_term_share})"
    assert action.dest == "min_term_share" and action.type is float
    contrast = triage._option_string_actions["--contrast"]
    assert list(contrast.choices) == ["rest", "benign"]
    rendered = " ".join(triage.format_help().split())
    assert " ".join(doc.split()[:8]) in rendered


def test_a_refused_value_is_one_line(tmp_path, capsys):
    ws = ["--workspace", str(tmp_path / "ws"), "--quiet"]
    assert main(["sae", "train", "--batch-size", "2", *ws]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "safesail: error: batch_size must be >= 8 — fix that flag's value "
        "(`safesail sae train --help` lists them)"
    ]
    assert main(["select", "--threshold-auroc", "0.4", *ws]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("safesail: error: threshold_auroc must be in")


def test_flags_reach_the_configs(tmp_path, monkeypatch, capsys):
    """Given flags set their fields; the others keep the dataclass defaults."""
    from safesail.cli import handlers
    from safesail.workspace import Workspace

    seen: dict[str, object] = {}
    monkeypatch.setattr(
        Workspace,
        "select",
        lambda self, override, config, among: seen.update(select=config, among=among),
    )
    monkeypatch.setattr(
        Workspace, "collect", lambda self, config, **kw: seen.update(collect=config) or []
    )
    monkeypatch.setattr(
        Workspace, "train_saes", lambda self, specs, config: seen.update(train=config) or []
    )
    monkeypatch.setattr(handlers, "print_ranking", lambda ws: None)
    ws_dir = tmp_path / "ws"
    ws = ["--workspace", str(ws_dir), "--db-url", f"sqlite:///{tmp_path / 'x.db'}"]
    assert main(["select", "--contrast", "benign", "--threshold-auroc", "0.8", *ws]) == 0
    assert seen["select"] == SelectionConfig(contrast="benign", threshold_auroc=0.8)
    assert seen["among"] is None
    assert main(["select", "--rank-by", "score", *ws]) == 0
    assert seen["select"] == SelectionConfig(rank_by="score")
    assert main(["collect", "--top-k", "3", *ws]) == 0
    assert seen["collect"] == CollectConfig(top_k=3)
    assert main(["sae", "train", "--epochs", "1.5", "--spec", "1:64:4", *ws]) == 0
    assert seen["train"] == TrainConfig(epochs=1.5)
    assert (tmp_path / "x.db").exists() and not (ws_dir / "safesail.db").exists()
