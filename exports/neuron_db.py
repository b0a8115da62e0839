"""A Safe-SAIL neuron DB's explanations belong to the SAE they were written for.

A released DB (keys `"<layer>_<index>"`) explains the features of Safe-SAIL's own SAEs on
Qwen2.5-3B-Instruct; attaching it by layer and index to another model's SAE would label
unrelated features. So an import registers the DB's SAEs by identity (model, release, hook,
width) as reference-only SaeRecords (no weights, `path=""`), one per layer, and attaches the
rows there; an explicit `--sae` must belong to the DB's model. A DB exported by safesail names
its model and SAEs in its manifest and goes back to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from exports.formats.safesail_db import NEURON_KEY, read_neuron_db, read_safesail_db
from exports.importing import ImportReport, import_records
from exports.provenance import apply_trust, read_manifest
from exports.records import require_sae
from safesail.db.contracts import Workspace
from safesail.db.queries import model_name
from safesail.db.tables import REFERENCE_ONLY, SaeRecord
from safesail.errors import SafesailError


@dataclass(frozen=True)
class SaeIdentity:
    """What a set of explanations was written for: the model, release and hook, width."""

    model: str
    release: str
    hook: str  # with "{layer}" for the block
    d_sae: int
    d_in: int = 0  # 0: unknown
    k: int | None = None
    architecture: str = "topk"

    def sae_id(self, layer: int) -> str:
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", self.model.split("/")[-1]).strip("-").lower()
        return f"{self.release}-{slug}-L{layer}-w{self.d_sae}"


SAFE_SAIL_RELEASE = SaeIdentity(
    model="Qwen/Qwen2.5-3B-Instruct",
    release="safe-sail",
    hook="blocks.{layer}.hook_mlp_out",
    d_sae=20480,
    d_in=2048,
    k=200,
)
"""The released Safe-SAIL neuron DB's SAEs (arXiv 2509.18127): TopK k=200 on the MLP output of
Qwen2.5-3B-Instruct (hidden size 2048), width 10x the hidden size."""


def db_identity(model: str | None, width: int | None) -> SaeIdentity:
    """The identity of a released DB's SAEs: Safe-SAIL's, or the model / width given."""
    model = model or SAFE_SAIL_RELEASE.model
    base = SAFE_SAIL_RELEASE if model == SAFE_SAIL_RELEASE.model else None
    width = width or (base.d_sae if base else None)
    if width is None:
        raise SafesailError(
            f"the width of the SAEs of {model} this DB explains is unknown — pass --db-width N "
            "(or --sae ID for an SAE of this workspace)"
        )
    same = base is not None and width == base.d_sae
    return SaeIdentity(
        model=model,
        release=base.release if base else "reference",
        hook=base.hook if base else "blocks.{layer}",
        d_sae=width,
        d_in=base.d_in if same else 0,
        k=base.k if same else None,
    )


def import_safesail_db(
    ws: Workspace,
    path: Path,
    *,
    sae_id: str | None = None,
    trust: bool = False,
    db_model: str | None = None,
    db_width: int | None = None,
) -> ImportReport:
    """Import a Safe-SAIL neuron DB (file or folder) as priors on the SAE it was written for
    (see the module docstring); rerunning adds nothing twice."""
    manifest = read_manifest("safesail-db", path)
    own_export = bool(manifest.get("modules"))
    model = db_model or (manifest.get("model") if own_export else None) or SAFE_SAIL_RELEASE.model
    reader = read_safesail_db
    new_saes: list[SaeRecord] = []
    if sae_id:
        sae = require_sae(ws.engine, sae_id)
        sae_model = sae.model or ws.model_name
        if model != sae_model:
            raise SafesailError(
                f"this Safe-SAIL DB explains SAE features of {model}; SAE {sae.id} belongs to "
                f"{sae_model}, so they are not attached — import without --sae to register the DB's "
                "own SAE, or pass --db-model if the DB was written for this model"
            )
        if db_width is not None and db_width != sae.d_sae:
            raise SafesailError(
                f"this Safe-SAIL DB explains width-{db_width} SAEs; SAE {sae.id} has {sae.d_sae} — "
                f"pass --sae an SAE of width {db_width}, or --db-width if the DB's is another"
            )
        records, skipped = reader(path, {}, sae)
        for r in records:
            r.sae_id = sae.id
    else:
        layers = _db_layers(path)  # a file that is not a DB fails here, before any write
        with Session(ws.engine) as session:
            here = {r.id for r in session.exec(select(SaeRecord))}
            ws_model = model_name(session) or ws.model_name
        if own_export and model == ws_model and set(manifest["modules"].values()) <= here:
            records, skipped = reader(path, manifest, None)  # safesail's own export, back home
        else:
            identity = db_identity(model, db_width)
            by_layer = {layer: identity.sae_id(layer) for layer in layers}
            new_saes = reference_saes(identity, by_layer)
            records, skipped = reader(path, {"sae_by_layer": by_layer}, None)
    apply_trust(records, path, trust=trust)
    return import_records(
        ws.engine, ws.taxonomy, records, model=None, skipped=skipped, new_saes=new_saes
    )


def reference_saes(identity: SaeIdentity, by_layer: dict[int, str]) -> list[SaeRecord]:
    """The reference-only SaeRecords of an identity, one per layer (written by the import
    with its rows, so that only an import that keeps a row registers them)."""
    return [
        SaeRecord(
            id=sid,
            source=REFERENCE_ONLY,
            path="",
            layer=layer,
            d_in=identity.d_in,
            d_sae=identity.d_sae,
            k=identity.k,
            architecture=identity.architecture,
            release=identity.release,
            model=identity.model,
            hook=identity.hook.format(layer=layer),
        )
        for layer, sid in by_layer.items()
    ]


def _db_layers(path: Path) -> list[int]:
    """The layers a Safe-SAIL DB (file or folder) has keys for; a file that is not a DB is a
    one-line error."""
    files = sorted(p for p in path.glob("*.json") if "manifest" not in p.name)
    layers: set[int] = set()
    for file in files if path.is_dir() else [path]:
        db = read_neuron_db(file)
        layers |= {int(m[1]) for k in db if (m := NEURON_KEY.match(str(k)))}
    return sorted(layers)
