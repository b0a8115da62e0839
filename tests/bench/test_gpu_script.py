"""bench/gpu.sh, the one command a device session runs, dry-run on the CPU at tiny shapes: every
step ends cleanly and writes the name=value figures the device run will record, within the
limits of what a device run brings back (at most 8 files, plain names)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("standard", "jumprelu", "topk", "topk_rescaled", "gated", "batchtopk")
SCALE = ("tokens", "collect_s", "tokens_per_s", "bare_forward_tokens_per_s",
         "collect_over_forward", "peak_rss_gb", "peak_rss_over_model_gb_65k")  # fmt: skip


def test_gpu_script_dry_run_writes_every_figure(lm, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "model").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(Path(lm.model.name_or_path) / name, bundle / "model" / name)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "TINY": "1", "BUNDLE": str(bundle),
           "PYTHON": sys.executable}  # fmt: skip
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh")], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lines = (out / "figures.txt").read_text().splitlines()
    assert all(re.fullmatch(r"[a-z_0-9]+\.[a-z_0-9]+=\S+", line) for line in lines), lines
    figures = dict(line.split("=", 1) for line in lines)
    assert {figures[f"{step}.rc"] for step in ("models", "scale_smol", "scale_wide", "check")} == {
        "0"
    }, (out / "stderr.log").read_text()[-3000:]
    assert figures["models.model_wide_d_model"] == "96"
    for shape in ("smol", "wide"):
        assert figures[f"scale_{shape}.device"] == "cpu"
        assert figures[f"scale_{shape}.width"] == "96"
        for name in SCALE:
            assert float(figures[f"scale_{shape}.{name}"]) > 0, name
    for kind in KINDS:  # on the CPU both sides are the same computation: exact
        assert figures[f"check.encode_{kind}_match"] == "1"
        assert float(figures[f"check.encode_{kind}_fired"]) > 0
    assert figures["check.rows_match"] == figures["check.encode_all_match"] == "1"
    assert int(figures["check.rows_tokens"]) > 0
    assert float(figures["check.causal_seconds_per_feature"]) > 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["check.log", "figures.txt", "models.log", "scale_smol.log", "scale_wide.log",
                     "stderr.log"]  # fmt: skip
