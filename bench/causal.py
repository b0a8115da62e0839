"""Benchmark: seconds per feature of the causal check (`safesail causal`) on this machine.

On a demo workspace (nothing of the check is written: no Score rows), the selected SAE's safety features from
the reference set (`bench/reference/<sae>.json`, labels by reading) are ablated and steered on
the held-out prompts with the default settings (`CausalConfig`), exactly as `run_causal` does
per feature; the unedited baseline, computed once per run, is timed apart.

Run: ``.venv/bin/python bench/causal.py [--workspace workspace] [--features 2]``.
The last line is ``causal_seconds_per_feature=<s>``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sqlmodel import Session

from safesail.causal.config import CausalConfig
from safesail.causal.intervene import RefusalMeter, sae_feature_edit
from safesail.causal.prompts import held_out_prompts
from safesail.causal.score import check_feature
from safesail.config import WorkspaceConfig
from safesail.queries import require_selected_sae
from safesail.saes import load_sae, site_of
from safesail.storage import Feature, SaeRecord
from safesail.taxonomy import BENIGN, UNINTERPRETABLE
from safesail.workspace import Workspace

REFERENCE = Path(__file__).parent / "reference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace"))
    parser.add_argument("--features", type=int, default=2, help="features to check")
    parser.add_argument("--n-harmful", type=int, default=CausalConfig.n_harmful)
    parser.add_argument("--n-benign", type=int, default=CausalConfig.n_benign)
    args = parser.parse_args()
    config = CausalConfig(n_harmful=args.n_harmful, n_benign=args.n_benign)
    ws = Workspace(WorkspaceConfig(args.workspace))
    sae_id = require_selected_sae(ws.engine)
    reference = json.loads((REFERENCE / f"{sae_id}.json").read_text())
    safety = [
        f["feature"] for f in reference["features"] if set(f["labels"]) - {BENIGN, UNINTERPRETABLE}
    ][: args.features]
    with Session(ws.engine) as session:
        record = session.get(SaeRecord, sae_id)
        scales = {i: session.get(Feature, (sae_id, i)).max_act for i in safety}
    lm = ws.lm
    prompts = held_out_prompts(
        ws.engine, ws.config.cache_dir, config.n_harmful, config.n_benign, config.seed
    )
    groups = np.asarray(prompts.groups)
    meter = RefusalMeter(lm, prompts.texts, batch_size=config.batch_size)
    start = time.perf_counter()
    base = meter.measure()
    print(
        f"baseline ({len(prompts.texts)} prompts): {time.perf_counter() - start:.1f} s, "
        f"mean P(refusal) harmful {base[groups == 'harmful'].mean():.4f}, "
        f"benign {base[groups == 'benign'].mean():.4f}"
    )
    sae, site = load_sae(record, device=str(lm.device)), site_of(record)
    seconds = []
    for index in safety:
        result = check_feature(
            meter, base, groups, sae_feature_edit(sae, site, index, scales[index]), config
        )
        seconds.append(result.seconds)
        steer = " ".join(f"a={s['alpha']:g}:{s['delta']:+.4f}" for s in result.steer)
        print(
            f"feature {index}: value {result.value:+.4f} [{result.interval[0]:+.4f}, "
            f"{result.interval[1]:+.4f}] ablate {result.ablate['delta']:+.4f} {steer} "
            f"({result.seconds:.1f} s)"
        )
    print(f"causal_seconds_per_feature={np.mean(seconds):.1f}")


if __name__ == "__main__":
    main()
