"""The `exports` room's commands and demo step (registered in pyproject.toml)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safesail.errors import SafesailError
from safesail.plugins import Plugin

if TYPE_CHECKING:
    from safesail.db.contracts import Workspace

FORMAT_NAMES = ("jsonl", "parquet", "csv", "neuronpedia", "delphi", "openai", "safesail-db")
"""Kept here (not imported from exports.formats) so `safesail --help` stays fast."""


def _add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    export = sub.add_parser(
        "export", parents=[common], help="write the gold explanation set in a format"
    )
    export.add_argument("--format", required=True, choices=FORMAT_NAMES)
    export.add_argument("--out", type=Path, required=True, help="folder to write into")
    export.add_argument(
        "--include-unaccepted",
        action="store_true",
        help="also queued / rejected / failed explanations, with their status",
    )
    export.add_argument(
        "--include-priors", action="store_true", help="also imported prior explanations"
    )
    export.set_defaults(handler=_export)
    imp = sub.add_parser(
        "import",
        parents=[common],
        help="import explanations: a released Safe-SAIL neuron DB (as priors) or an export",
    )
    imp.add_argument("format", choices=FORMAT_NAMES)
    imp.add_argument("path", type=Path, help="the file, or the export folder")
    imp.add_argument("--sae", help="SAE the explanations belong to (default: the selected one)")
    imp.add_argument(
        "--trust",
        action="store_true",
        help="keep the file's source and status (human/auto labels stay gold): only for files "
        "you made, a crafted file would outrank every label; the file path and time are recorded. "
        "Without it every row is a prior",
    )
    imp.add_argument(
        "--db-model",
        help="safesail-db: the model the DB's SAEs read (default: the manifest's, else Safe-SAIL's "
        "release, Qwen/Qwen2.5-3B-Instruct); without --sae the DB's SAEs are registered by "
        "identity (no weights) and the rows attached there",
    )
    imp.add_argument("--db-width", type=int, help="safesail-db: the width of the DB's SAEs")
    imp.set_defaults(handler=_import)


def _export(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from exports.api import export_gold

    manifest = export_gold(
        ws,
        args.format,
        args.out,
        include_unaccepted=args.include_unaccepted,
        include_priors=args.include_priors,
    )
    print(
        f"exported {manifest['records']} explanation(s) of {manifest['features']} feature(s) "
        f"as {args.format} to {args.out} ({manifest['by_source']})"
    )
    return 0


def _import(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    from exports.api import import_file, print_report

    report = import_file(
        ws,
        args.format,
        args.path,
        sae_id=args.sae,
        trust=args.trust,
        db_model=args.db_model,
        db_width=args.db_width,
    )
    print_report(report)
    if not report.added and not report.present:
        raise SafesailError(
            f"nothing valid to import from {args.path} ({len(report.skipped)} row(s) skipped, "
            "reasons above) — fix the file and rerun"
        )
    return 0


def _demo(ws: Workspace, args: argparse.Namespace, progress: bool) -> int:
    """Writes the gold set as JSONL and as a Safe-SAIL neuron DB into the workspace."""
    from exports.api import export_gold

    for fmt in ("jsonl", "safesail-db"):
        out = ws.config.workspace / "exports" / fmt
        manifest = export_gold(ws, fmt, out)
        print(f"gold set: {manifest['records']} explanation(s) as {fmt} in {out}")
    return 0


PLUGIN = Plugin(name="exports", order=30, add_commands=_add_commands, demo=_demo)
