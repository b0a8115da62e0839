"""Benchmark: exporting a gold set of 100k features in the main formats.

A fresh SQLite workspace database in a temporary folder gets one SAE record of width
``--features`` and, per feature, one explanation written through the same tables the labeling
loop and the explainer use (`exports.synthetic.populate`): a third human labels with their Label
Studio task, two annotations and a held-out automatic label, the rest automatic labels with two
scores and three LLM calls (133k explanations for 100k features).
Then each format (jsonl, parquet, csv) is exported with `--include-unaccepted` (every row),
each export reading everything back from the database (`gather_records`) and writing its file.

Run: ``.venv/bin/python bench/export.py [--features N] [--formats jsonl,parquet,csv]``.
The last line is ``export_100k_seconds=<s>``: the TOTAL wall time of the three exports (each
one with its own database read), not the slowest single one (both are printed above it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from exports.api import export_gold
from exports.synthetic import populate
from safesail.config import WorkspaceConfig
from safesail.db.tables import SaeRecord, session_scope, set_meta
from safesail.taxonomy import Taxonomy
from safesail.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--formats", default="jsonl,parquet,csv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        ws = Workspace(WorkspaceConfig(Path(tmp) / "ws"), model_name="bench-model")
        with session_scope(ws.engine) as session:
            set_meta(session, "model", "bench-model")
            session.add(
                SaeRecord(
                    id="bench-sae",
                    source="disk",
                    path=tmp,
                    layer=8,
                    d_in=576,
                    d_sae=args.features,
                    architecture="topk",
                )
            )
        start = time.perf_counter()
        counts = populate(
            ws.engine,
            "bench-sae",
            Taxonomy.load().safety_concepts(),
            features=list(range(args.features)),
        )
        print(f"setup: {counts} in {time.perf_counter() - start:.1f} s (not timed)")
        timings = {}
        for fmt in args.formats.split(","):
            start = time.perf_counter()
            manifest = export_gold(ws, fmt, Path(tmp) / fmt, include_unaccepted=True)
            timings[fmt] = time.perf_counter() - start
            size = sum(p.stat().st_size for p in (Path(tmp) / fmt).rglob("*") if p.is_file())
            print(
                f"{fmt:>8}: {manifest['records']} records, {size / 1e6:.1f} MB, "
                f"{timings[fmt]:.2f} s"
            )
        print(
            f"slowest single format: {max(timings, key=timings.get)} {max(timings.values()):.2f} s"
        )
        print(f"export_100k_seconds={sum(timings.values()):.2f}")


if __name__ == "__main__":
    main()
