"""The formats of other interpretability tools, without the gold set's provenance (their rows
read back as priors, except Neuronpedia's, which keeps source and status in its method name):
Neuronpedia's upload batches (what `neuronpedia`'s `FeatureRequest.upload_batch` posts: density,
top activations and explanations per feature) with a scores file beside them, delphi's
explanation files (what its `explanation_loader` reads), OpenAI automated-interpretability's
scored explanations."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from exports.formats.registry import (
    SIMULATION,
    Format,
    inside,
    modules_by_sae,
    one_per_feature,
    register,
    sae_for,
    simulation_score,
)
from exports.records import ExportRecord
from safesail.db.tables import Context, Feature, SaeRecord
from safesail.errors import SafesailError
from safesail.features.examples import TOP, feature_examples

# -- Neuronpedia -----------------------------------------------------------------------------
NP_BATCH = 128
"""Features per upload batch (the `neuronpedia` client's MAX_FEATURES_PER_BATCH)."""
NP_FOLDER = "upload-batches"


class NpFeature(NamedTuple):
    """What an upload batch holds about a feature besides its explanations."""

    density: float
    """Share of tokens the feature fires on."""
    activations: list[dict[str, Any]]
    """Its top contexts: {tokens, values, quantileMax, quantileMin, quantileFraction}."""


def neuronpedia_features(engine: Engine, records: list[ExportRecord]) -> dict[tuple, NpFeature]:
    """Density and top-context activations (tokens and per-token values) of the exported
    features, from the workspace's Feature rows and contexts."""
    wanted: dict[str, set[int]] = {}
    for r in records:
        wanted.setdefault(r.sae_id, set()).add(r.index)
    rows: list[Feature] = []
    with Session(engine) as session:
        for sae_id, indices in wanted.items():
            ordered = sorted(indices)
            for at in range(0, len(ordered), 500):
                rows += session.exec(
                    select(Feature).where(
                        Feature.sae_id == sae_id, Feature.index.in_(ordered[at : at + 500])
                    )
                ).all()
        tops = {
            (f.sae_id, f.index): [e for e in feature_examples(f) if e.kind == TOP] for f in rows
        }
        need = sorted({e.text_id for examples in tops.values() for e in examples})
        tokens: dict[int, list[str]] = {}
        for at in range(0, len(need), 500):
            for c in session.exec(select(Context).where(Context.text_id.in_(need[at : at + 500]))):
                tokens[c.text_id] = c.tokens
    return {
        (f.sae_id, f.index): NpFeature(
            float(f.firing_rate),
            [
                {
                    "tokens": tokens[e.text_id],
                    "values": [round(float(v), 4) for v in e.activations],
                    "quantileMax": None,
                    "quantileMin": None,
                    "quantileFraction": None,
                }
                for e in tops[(f.sae_id, f.index)]
                if e.text_id in tokens
            ],
        )
        for f in rows
    }


def _np_source(r: ExportRecord) -> str:
    """Neuronpedia's source id: `<layer>-<set>` (here the SAE id, which keeps it unique)."""
    return f"{r.layer}-{r.sae_id}"


def _write_neuronpedia(
    records: list[ExportRecord], out: Path, features: dict[tuple, NpFeature] | None = None
) -> dict[str, Any]:
    """Neuronpedia's upload-batch payloads (`FeatureRequest.upload_batch`): per model and
    source, at most 128 features each with its density, top activations and every
    explanation ({text, methodName, modelName}); methodName keeps our source and status. The
    scores, which a batch cannot hold, go to scores.jsonl keyed by feature and explanation."""
    groups: dict[tuple[str, str], dict[int, list[ExportRecord]]] = {}
    for r in records:
        groups.setdefault((r.model or "", _np_source(r)), {}).setdefault(r.index, []).append(r)
    folder = out / NP_FOLDER
    folder.mkdir()
    files, n = [], 0
    with open(out / "scores.jsonl", "w", encoding="utf-8") as sc:
        for (model, source), by_index in sorted(groups.items()):
            indices = sorted(by_index)
            for at in range(0, len(indices), NP_BATCH):
                batch = []
                for index in indices[at : at + NP_BATCH]:
                    group = by_index[index]
                    extra = (features or {}).get((group[0].sae_id, index))
                    batch.append(
                        {
                            "index": index,
                            "density": extra.density if extra else None,
                            "activations": extra.activations if extra else [],
                            "explanations": [
                                {
                                    "text": r.explanation,
                                    "methodName": f"safesail_{r.source}_{r.status}",
                                    "modelName": r.author,
                                }
                                for r in group
                            ],
                            "topLogits": None,
                            "bottomLogits": None,
                        }
                    )
                    for position, r in enumerate(group):
                        for s in r.scores:
                            row = {
                                "modelId": model,
                                "layer": source,
                                "index": index,
                                "explanationIndex": position,
                                "explanationScoreTypeName": s["scorer"],
                                "explanationScoreModelName": s["model"],
                                "value": s["value"],
                            }
                            sc.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
                name = f"batch-{n:05d}.json"
                payload = {"modelId": model, "source": source, "features": batch}
                (folder / name).write_text(json.dumps(payload, ensure_ascii=False), "utf-8")
                files.append(f"{NP_FOLDER}/{name}")
    return {"files": [*files, "scores.jsonl"]}


def _read_neuronpedia(path: Path, _manifest: dict, _sae: SaeRecord | None):
    folder = path if path.is_dir() else path.parent
    if (folder / NP_FOLDER).is_dir():
        folder = folder / NP_FOLDER
    batches = sorted(folder.glob("batch-*.json"))
    if not batches:
        raise SafesailError(f"no Neuronpedia upload batches (batch-*.json) at {path} — point at the folder a "
            "neuronpedia export wrote")
    scores: dict[tuple, list[dict]] = {}
    score_file = (folder.parent if folder.name == NP_FOLDER else folder) / "scores.jsonl"
    if score_file.is_file():
        for line in score_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                s = json.loads(line)
                key = (s["modelId"], s["layer"], int(s["index"]), int(s["explanationIndex"]))
                scores.setdefault(key, []).append(
                    {
                        "scorer": s["explanationScoreTypeName"],
                        "value": float(s["value"]),
                        "model": s.get("explanationScoreModelName"),
                        "prompt_version": None,
                    }
                )
    records, skipped = [], []
    for file in batches:
        try:
            payload = json.loads(file.read_text(encoding="utf-8"))
            model, source = payload["modelId"], str(payload["source"])
            layer, sae_id = source.split("-", 1)
            features = payload["features"]
        except (KeyError, ValueError, TypeError) as exc:
            skipped.append((file.name, f"bad batch: {exc}"))
            continue
        for feature in features:
            try:
                index = int(feature["index"])
                for position, e in enumerate(feature["explanations"]):
                    _, source_, status = str(
                        e.get("methodName") or "safesail_prior_accepted"
                    ).split("_", 2)
                    records.append(
                        ExportRecord(
                            sae_id=sae_id,
                            index=index,
                            explanation=str(e["text"]),
                            concepts=[],
                            source=source_,
                            status=status,
                            layer=int(layer) if layer.lstrip("-").isdigit() else None,
                            model=model or None,
                            author=e.get("modelName"),
                            scores=sorted(
                                scores.get((model, source, index, position), []),
                                key=lambda s: s["scorer"],
                            ),
                        )
                    )
            except (KeyError, ValueError, TypeError) as exc:
                skipped.append(
                    (f"{file.name} feature {feature.get('index')}", f"bad feature: {exc}")
                )
    return records, skipped


register(
    Format(
        "neuronpedia",
        _write_neuronpedia,
        _read_neuronpedia,
        ("sae_id", "index", "layer", "model", "explanation", "source", "status", "author"),
        neuronpedia_features,
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
        raise SafesailError(f"no delphi explanations folder at {path} — point at the folder a delphi export wrote "
            "(or its explanations/ folder)")
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
