"""The formats of other interpretability tools, without the gold set's provenance (their rows
read back as priors, except Neuronpedia's, which keeps source and status in its type name):
Neuronpedia's explanation and score uploads, delphi's explanation files, OpenAI
automated-interpretability's scored explanations."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from exports.formats.registry import (
    SIMULATION,
    Format,
    data_file,
    inside,
    modules_by_sae,
    one_per_feature,
    register,
    sae_for,
    simulation_score,
)
from exports.records import ExportRecord
from safesail.errors import SafesailError
from safesail.storage import SaeRecord


# -- Neuronpedia -----------------------------------------------------------------------------
def _write_neuronpedia(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    with (
        open(out / "explanations.jsonl", "w", encoding="utf-8") as ex,
        open(out / "scores.jsonl", "w", encoding="utf-8") as sc,
    ):
        for n, r in enumerate(records):
            common = {"modelId": r.model, "layer": f"{r.layer}-{r.sae_id}", "index": str(r.index)}
            row = {
                "id": f"safesail-{n}",
                **common,
                "description": r.explanation,
                "typeName": f"safesail_{r.source}_{r.status}",
                "explanationModelName": r.author,
            }
            ex.write(json.dumps(row, ensure_ascii=False) + "\n")
            for s in r.scores:
                score = {
                    "explanationId": row["id"],
                    **common,
                    "explanationScoreTypeName": s["scorer"],
                    "explanationScoreModelName": s["model"],
                    "value": s["value"],
                }
                sc.write(json.dumps(score, ensure_ascii=False) + "\n")
    return {"files": ["explanations.jsonl", "scores.jsonl"]}


def _read_neuronpedia(path: Path, _manifest: dict, _sae: SaeRecord | None):
    folder = path if path.is_dir() else path.parent
    scores: dict[str, list[dict]] = {}
    score_file = folder / "scores.jsonl"
    if score_file.is_file():
        for line in score_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                s = json.loads(line)
                scores.setdefault(s.get("explanationId"), []).append(
                    {
                        "scorer": s["explanationScoreTypeName"],
                        "value": float(s["value"]),
                        "model": s.get("explanationScoreModelName"),
                        "prompt_version": None,
                    }
                )
    records, skipped = [], []
    lines = data_file(folder, "explanations.jsonl").read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            layer, sae_id = str(row["layer"]).split("-", 1)
            _, source, status = str(row.get("typeName", "safesail_prior_accepted")).split("_", 2)
            records.append(
                ExportRecord(
                    sae_id=sae_id,
                    index=int(row["index"]),
                    explanation=str(row["description"]),
                    concepts=[],
                    source=source,
                    status=status,
                    layer=int(layer),
                    model=row.get("modelId"),
                    author=row.get("explanationModelName"),
                    scores=sorted(scores.get(row.get("id"), []), key=lambda s: s["scorer"]),
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            skipped.append((f"line {n}", f"bad row: {exc}"))
    return records, skipped


register(
    Format(
        "neuronpedia",
        _write_neuronpedia,
        _read_neuronpedia,
        ("sae_id", "index", "layer", "model", "explanation", "source", "status", "author"),
    )
)


# -- delphi ------------------------------------------------------------------------------------
_DELPHI_FILE = re.compile(r"^(?P<module>.+)_latent(?P<index>\d+)\.txt$")


def _write_delphi(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    chosen = one_per_feature(records)
    modules = modules_by_sae(chosen, "layers.")
    folder = out / "explanations"
    folder.mkdir()
    for r in chosen:
        name = f"{modules[r.sae_id]}_latent{r.index}.txt"
        inside(folder, name).write_text(
            json.dumps(r.explanation, ensure_ascii=False), encoding="utf-8"
        )
    return {"files": ["explanations/"], "modules": {m: s for s, m in modules.items()}}


def _read_delphi(path: Path, manifest: dict, sae: SaeRecord | None):
    folder = path / "explanations" if (path / "explanations").is_dir() else path
    if not folder.is_dir():
        raise SafesailError(f"no delphi explanations folder at {path}")
    records, skipped = [], []
    for file in sorted(folder.iterdir()):
        match = _DELPHI_FILE.match(file.name)
        sae_id = sae_for(match["module"], manifest, sae) if match else None
        if not match or sae_id is None:
            skipped.append((file.name, "not <module>_latent<N>.txt of a known module"))
            continue
        try:
            text = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(text, str):
                raise ValueError("not a JSON string")
        except (ValueError, UnicodeDecodeError) as exc:
            skipped.append((file.name, f"bad file: {exc}"))
            continue
        layer = match["module"].removeprefix("layers.")
        records.append(
            ExportRecord(
                sae_id=sae_id,
                index=int(match["index"]),
                explanation=text,
                concepts=[],
                layer=int(layer) if layer.isdigit() else None,
            )
        )
    return records, skipped


register(Format("delphi", _write_delphi, _read_delphi, ("sae_id", "index", "layer", "explanation")))


# -- OpenAI automated-interpretability ---------------------------------------------------------
def _write_openai(records: list[ExportRecord], out: Path) -> dict[str, Any]:
    modules = modules_by_sae(records, "")
    by_neuron: dict[tuple[str, int], list[ExportRecord]] = {}
    for r in records:
        by_neuron.setdefault((r.sae_id, r.index), []).append(r)
    root = out / "explanations"
    for (sae_id, index), group in sorted(by_neuron.items()):
        folder = inside(root, modules[sae_id])
        folder.mkdir(parents=True, exist_ok=True)
        row = {
            "neuron_id": {"layer_index": group[0].layer, "neuron_index": index},
            "scored_explanations": [
                {
                    "explanation": r.explanation,
                    "scored_simulation": {
                        "ev_correlation_score": r.score(*SIMULATION),
                        "rsquared_score": None,
                        "absolute_dev_explained_score": None,
                    },
                }
                for r in group
            ],
        }
        (folder / f"{index}.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return {"files": ["explanations/"], "modules": {m: s for s, m in modules.items()}}


def _read_openai(path: Path, manifest: dict, sae: SaeRecord | None):
    root = path / "explanations" if (path / "explanations").is_dir() else path
    records, skipped = [], []
    for file in sorted(root.glob("*/*.jsonl")):
        where = f"{file.parent.name}/{file.name}"
        sae_id = sae_for(file.parent.name, manifest, sae)
        if sae_id is None:
            skipped.append((where, "folder is not a known layer or SAE"))
            continue
        try:
            row = json.loads(file.read_text(encoding="utf-8").splitlines()[0])
            neuron = row["neuron_id"]
            for entry in row["scored_explanations"]:
                value = (entry.get("scored_simulation") or {}).get("ev_correlation_score")
                records.append(
                    ExportRecord(
                        sae_id=sae_id,
                        index=int(neuron["neuron_index"]),
                        explanation=str(entry["explanation"]),
                        concepts=[],
                        layer=neuron.get("layer_index"),
                        scores=[simulation_score(value)] if value is not None else [],
                    )
                )
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            skipped.append((where, f"bad file: {exc}"))
    return records, skipped


register(Format("openai", _write_openai, _read_openai, ("sae_id", "index", "layer", "explanation")))
