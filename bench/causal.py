"""Benchmark: seconds per feature of the causal check (`safesail causal`) on this machine.

On a demo workspace (nothing of the check is written: no Score rows), the selected SAE's safety
features from the reference set (`bench/reference/<sae>.json`, labels by reading) are ablated and
steered on the held-out prompts with the default settings (`CausalConfig`), exactly as
`run_causal` does per feature, refusal and concept probes read in the same forwards; the
unedited baseline and the probes (trained once per workspace, then cached) are timed apart.

Without a workspace (``--no-workspace``: a fresh one with an empty corpus, so no probes), each
"feature" is a seeded random unit direction at layer 8 with scale 3: the same forwards on the
same kind of held-out prompts, which is what a feature costs.

Run: ``.venv/bin/python bench/causal.py [--workspace workspace | --no-workspace] [--features 2]
[--threads N]``. The last line is ``causal_seconds_per_feature=<s>``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sqlmodel import Session

from safesail.causal.config import CausalConfig
from safesail.causal.intervene import FeatureEdit, RefusalMeter, sae_feature_edit
from safesail.causal.probe import concept_probes, readout_layer
from safesail.causal.prompts import held_out_prompts
from safesail.causal.score import check_feature
from safesail.config import WorkspaceConfig
from safesail.db.queries import require_selected_sae
from safesail.db.tables import Feature, SaeRecord
from safesail.model.saes import load_sae, site_of
from safesail.model.sites import Site
from safesail.taxonomy import BENIGN, UNINTERPRETABLE
from safesail.workspace import Workspace

REFERENCE = Path(__file__).parent / "reference"


def _reference_edits(ws: Workspace, n: int) -> list[tuple[str, FeatureEdit]]:
    """The selected SAE's first n safety features of the reference set, as edits."""
    sae_id = require_selected_sae(ws.engine)
    reference = json.loads((REFERENCE / f"{sae_id}.json").read_text())
    safety = [
        f["feature"] for f in reference["features"] if set(f["labels"]) - {BENIGN, UNINTERPRETABLE}
    ][:n]
    with Session(ws.engine) as session:
        record = session.get(SaeRecord, sae_id)
        scales = {i: session.get(Feature, (sae_id, i)).max_act for i in safety}
    sae, site = load_sae(record, device=str(ws.lm.device)), site_of(record)
    return [(f"feature {i}", sae_feature_edit(sae, site, i, scales[i])) for i in safety]


def _random_edits(hidden_size: int, n: int) -> list[tuple[str, FeatureEdit]]:
    """n seeded random unit directions at layer 8, scale 3, firing where they point."""
    generator = torch.Generator().manual_seed(0)
    edits = []
    for i in range(n):
        direction = torch.randn(hidden_size, generator=generator)
        direction /= direction.norm()
        edits.append(
            (
                f"direction {i}",
                FeatureEdit(
                    Site(8, "resid_post"),
                    direction,
                    3.0,
                    lambda h, d=direction: (h @ d).clamp(min=0),
                ),
            )
        )
    return edits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace"))
    parser.add_argument(
        "--no-workspace", action="store_true", help="random directions on a fresh workspace"
    )
    parser.add_argument("--features", type=int, default=2, help="features to check")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--n-harmful", type=int, default=CausalConfig.n_harmful)
    parser.add_argument("--n-benign", type=int, default=CausalConfig.n_benign)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = CausalConfig(n_harmful=args.n_harmful, n_benign=args.n_benign)
    folder = Path(tempfile.mkdtemp()) if args.no_workspace else args.workspace
    ws = Workspace(WorkspaceConfig(folder))
    lm = ws.lm
    edits = (
        _random_edits(lm.hidden_size, args.features)
        if args.no_workspace
        else _reference_edits(ws, args.features)
    )
    layer = readout_layer(lm, config)
    start = time.perf_counter()
    safety = [c for c in ws.taxonomy.safety_concepts() if c not in (BENIGN, UNINTERPRETABLE)]
    probes = concept_probes(ws.engine, lm, safety, config, folder / "probes")
    print(f"probes ({len(probes)} concepts): {time.perf_counter() - start:.1f} s")
    prompts = held_out_prompts(
        ws.engine, ws.config.cache_dir, config.n_harmful, config.n_benign, config.seed
    )
    groups = np.asarray(prompts.groups)
    meter = RefusalMeter(
        lm,
        prompts.texts,
        batch_size=config.batch_size,
        readout_layer=layer,
        replay_below=edits[0][1].site.layer,
    )
    start = time.perf_counter()
    base = meter.measure()
    print(
        f"baseline ({len(prompts.texts)} prompts): {time.perf_counter() - start:.1f} s, "
        f"mean P(refusal) harmful {base.refusal[groups == 'harmful'].mean():.4f}, "
        f"benign {base.refusal[groups == 'benign'].mean():.4f}"
    )
    seconds = []
    for name, edit in edits:
        result = check_feature(meter, base, groups, edit, config, probes)
        seconds.append(result.seconds)
        steer = " ".join(f"a={s['alpha']:g}:{s['delta']:+.4f}" for s in result.steer)
        print(
            f"{name}: value {result.value:+.4f} [{result.interval[0]:+.4f}, "
            f"{result.interval[1]:+.4f}] ablate {result.ablate['delta']:+.4f} {steer} "
            f"({result.seconds:.1f} s)"
        )
    print(f"causal_seconds_per_feature={np.mean(seconds):.1f}")


if __name__ == "__main__":
    main()
