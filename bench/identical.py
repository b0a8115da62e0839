"""What a change that must not change behaviour has to leave byte for byte: `safesail status
--json`, the jsonl export and the learner's stored predictions of the tiny test workspace.

The workspace is built as the tests build it (tests/conftest.py: the tiny corpus, its three
SAEs trained and collected, `select --rank-by score` and `triage`, as `triaged_ws`), given the
labeling loop's and the explainer's rows of `exports.synthetic.populate` (as the exports' tests
do), and the active learner is fitted on its human labels. Then it writes under --out:

- status.json: `safesail status --json`;
- export/: `safesail export --format jsonl` (data file and manifest);
- learner_predictions.json: the LearnerPredictions record the fit stored;

with the two things that differ on every run by design replaced: the workspace's own path (by
`<workspace>`) and the manifest's `created_at` (by `<created_at>`). Run it in two checkouts and
compare the folders (`diff -r A B`); run it twice in one checkout first, since a comparison
means something only where the same commit gives the same bytes.

Run: ``PYTHONPATH=<checkout> .venv/bin/python bench/identical.py --out DIR`` (DIR must not
exist; the workspace is built in DIR/ws). The last line is ``identical_digest=<sha256>`` over
the written files, in path order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from active_learning.learner import ActiveLearner
from exports.api import export_gold
from exports.synthetic import populate
from safesail.db.contracts import LearnerPredictions, read_engine
from safesail.errors import SafesailError
from safesail.model.lm import load_model
from safesail.selection.config import SelectionConfig
from tests.conftest import TINY_COLLECT, TINY_SPECS, TINY_TRAIN, make_workspace, tiny_records

PLACEHOLDERS = ("<workspace>", "<created_at>")


def build(path: Path):
    """The tiny workspace as `triaged_ws`, with populate's rows and a fitted learner."""
    torch.manual_seed(0)  # as the tests' session fixture
    ws = make_workspace(path, load_model())
    ws.add_corpus(tiny_records())
    ws.train_saes(TINY_SPECS, TINY_TRAIN, max_tokens=TINY_COLLECT.max_tokens)
    ws.collect(TINY_COLLECT, progress=False)
    ws.select(config=SelectionConfig(rank_by="score"))
    ws.triage()
    populate(ws.engine, ws.selected_sae, ws.taxonomy.safety_concepts(), features=list(range(30)))
    ActiveLearner(ws).fit()
    return ws


def dump(ws, out: Path) -> list[Path]:
    """The three dumps, with the per-run values replaced; returns the files written."""
    workspace = str(ws.config.workspace)
    (out / "status.json").write_text(json.dumps(ws.status()) + "\n")
    export_gold(ws, "jsonl", out / "export")
    predictions = read_engine(ws.engine, LearnerPredictions)
    body = json.dumps(None if predictions is None else predictions.to_dict(), sort_keys=True)
    (out / "learner_predictions.json").write_text(body + "\n")
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] != "ws")
    for path in files:
        text = path.read_text().replace(workspace, PLACEHOLDERS[0])
        if path.name.endswith(".manifest.json"):
            manifest = json.loads(text)
            manifest["created_at"] = PLACEHOLDERS[1]
            text = json.dumps(manifest, indent=1)
        path.write_text(text)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a folder that does not exist")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"--out {args.out} exists — give a new folder (nothing was written)")
    args.out.mkdir(parents=True)
    try:
        ws = build(args.out / "ws")
        files = dump(ws, args.out)
    except SafesailError as exc:
        sys.exit(f"error: {exc}")
    digest = hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        print(f"{path.relative_to(args.out)}  {hashlib.sha256(data).hexdigest()[:16]}")
        digest.update(str(path.relative_to(args.out)).encode() + b"\0" + data)
    print(f"identical_digest={digest.hexdigest()}")


if __name__ == "__main__":
    main()
