"""A zero-weight SAE folder in sae-lens format (cfg.json + sae_weights.safetensors), the valid
starting point that the bad-input tests and bench/bad_input.py then truncate or contradict."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def zero_sae_folder(
    path: Path, d_in: int = 576, d_sae: int = 64, cfg_d_sae: int | None = None
) -> Path:
    """A top-k SAE of `d_sae` zero features on blocks.1 (d_in 576: the embedded model's width);
    `cfg_d_sae` writes another width into cfg.json than the weights hold."""
    path.mkdir(parents=True)
    cfg = {
        "d_in": d_in,
        "d_sae": cfg_d_sae or d_sae,
        "k": 4,
        "architecture": "topk",
        "metadata": {"hook_name": "blocks.1.hook_resid_post"},
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    weights = {
        "W_enc": torch.zeros(d_in, d_sae),
        "W_dec": torch.zeros(d_sae, d_in),
        "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(d_in),
    }
    save_file(weights, path / "sae_weights.safetensors")
    return path
