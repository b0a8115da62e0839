"""Driver of bench/gpu.sh: what a device session runs besides bench/scale.py, and its inputs.

The working tree that reaches a GPU machine is at most 64 MiB and nothing there reaches a hub, so
the embedded model cannot travel; timings do not depend on weights, so the models are built
there from the embedded model's own config (and tokenizer, carried in `.gpu/model`) with random
weights: `smol` (the embedded SmolLM2's shape) and `wide` (Gemma-2-2B's width, d_model 2304, so
the SAE/model width ratio is a real one; 9 blocks, as deep as the SAE site at layer 8 needs).

Commands (each prints `name=value` lines; `--tiny` shrinks every shape for the CPU dry run):
- `bundle DEST`: run here; copies the embedded model's config, tokenizer and chat template.
- `models TOKENIZER DEST`: random-weight model folders DEST/smol and DEST/wide.
- `check MODEL`: rows of a small collection on `--device` equal the CPU's; every sae-lens
  architecture's bounded encode on `--device` equals `sae.encode` there; the causal check's
  seconds per feature on `--device` (features of a random 65,536-wide JumpReLU SAE, as
  GemmaScope's: each edit encodes with the whole SAE; generated prompts).

Tolerances, fixed before any run: on entries both sides fire, |a - b| <= 1e-3 + 1e-3 |b|;
entries where only one side fires (a pre-activation within rounding of its threshold, or a
TopK tie) at most 1e-3 of the entries either side fires.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this script

from _collect_baselines import generated_sentences  # noqa: E402
from scale import corpus, save_jumprelu  # noqa: E402

from safesail.causal.config import CausalConfig  # noqa: E402
from safesail.causal.intervene import RefusalMeter, sae_feature_edit  # noqa: E402
from safesail.causal.score import check_feature  # noqa: E402
from safesail.collection.chunks import stored_chunks  # noqa: E402
from safesail.config import CollectConfig, WorkspaceConfig  # noqa: E402
from safesail.db.tables import SaeRecord, get_meta  # noqa: E402
from safesail.model.encode import encode_csr  # noqa: E402
from safesail.model.lm import LanguageModel, load_model  # noqa: E402
from safesail.model.saes import load_sae  # noqa: E402
from safesail.model.sites import Site  # noqa: E402
from safesail.workspace import Workspace  # noqa: E402

RTOL, ATOL, FLIPS = 1e-3, 1e-3, 1e-3
"""The tolerances of the module docstring."""
BUNDLED = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
WIDE = dict(
    hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4,
    head_dim=256, num_hidden_layers=9,
)  # fmt: skip
TINY = {
    "smol": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, num_hidden_layers=3),
    "wide": dict(hidden_size=96, intermediate_size=192, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=24, num_hidden_layers=3),
}  # fmt: skip
KINDS = ("standard", "jumprelu", "topk", "topk-rescaled", "gated", "batchtopk")


def bundle(dest: Path) -> None:
    """The embedded model's config, tokenizer and chat template (about 3.5 MB) into dest."""
    source = load_model(device="cpu").model.name_or_path
    dest.mkdir(parents=True, exist_ok=True)
    for name in BUNDLED:
        shutil.copy2(Path(source) / name, dest / name)
    print(f"bundle_files={len(BUNDLED)}")


def build_models(tokenizer: Path, dest: Path, tiny: bool, device: str) -> None:
    """DEST/smol and DEST/wide: the bundled config (widened for `wide`) with seeded random
    weights, saved in bfloat16 (half the disk; `--dtype` picks the precision at load)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for name, change in (("smol", {}), ("wide", WIDE)):
        config = AutoConfig.from_pretrained(tokenizer)
        for key, value in (TINY[name] if tiny else change).items():
            setattr(config, key, value)
        torch.manual_seed(0)
        with torch.device(device):  # initialising 0.8B parameters on a GPU takes seconds
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(dest / name)
        for file in BUNDLED[1:]:
            shutil.copy2(tokenizer / file, dest / name / file)
        params = sum(p.numel() for p in model.parameters())
        print(f"model_{name}_d_model={config.hidden_size} model_{name}_params={params}")
        del model


def collected_rows(
    lm: LanguageModel, sae: Path, folder: Path, texts: int, device: str
) -> sp.csr_matrix:
    """Every token's activations as collection stores them, on `device` in float32."""
    ws = Workspace(WorkspaceConfig(folder, device=device, dtype="float32"), lm=lm)
    records, _ = corpus(lm, texts, CollectConfig().max_tokens, generated=True)
    ws.add_corpus(records)
    ws.add_sae(sae, sae_id="rows")
    ws.collect(CollectConfig())
    with Session(ws.engine) as session:
        n_chunks = len(get_meta(session, "chunk_plan") or [])
    blocks = [tok for _, tok, _ in stored_chunks(ws.engine, "rows", n_chunks)]
    return sp.vstack(blocks).tocsr()


def compare(name: str, got: np.ndarray, expected: np.ndarray) -> bool:
    """Print how two activation arrays differ and whether they agree within the tolerances."""
    fire_got, fire_expected = got > 0, expected > 0
    both, either = fire_got & fire_expected, fire_got | fire_expected
    flips = float((fire_got != fire_expected).sum() / max(1, either.sum()))
    diff = np.abs(got[both] - expected[both])
    worst = float(diff.max()) if diff.size else 0.0
    close = bool(np.all(diff <= ATOL + RTOL * np.abs(expected[both])))
    ok = close and flips <= FLIPS and bool(either.any())
    print(f"{name}_fired={int(either.sum())} {name}_flip_fraction={flips:.2e}")
    print(f"{name}_max_abs_diff={worst:.2e} {name}_match={int(ok)}")
    return ok


def random_sae(kind: str, d_in: int, width: int, path: Path) -> SaeRecord:
    """A sae-lens SAE of `kind` with seeded random weights (scaled so some features fire on
    unit-scale inputs, most do not), saved and described as `safesail sae add` would."""
    import sae_lens as sl

    base = dict(d_in=d_in, d_sae=width, dtype="float32", device="cpu")
    k = max(1, width // 64)
    build = {
        "standard": lambda: sl.StandardSAE(sl.StandardSAEConfig(**base)),
        "jumprelu": lambda: sl.JumpReLUSAE(sl.JumpReLUSAEConfig(**base)),
        "topk": lambda: sl.TopKSAE(sl.TopKSAEConfig(k=k, **base)),
        "topk-rescaled": lambda: sl.TopKSAE(
            sl.TopKSAEConfig(k=k, rescale_acts_by_decoder_norm=True, **base)
        ),
        "gated": lambda: sl.GatedSAE(sl.GatedSAEConfig(**base)),
        "batchtopk": lambda: sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(k=k, **base)),
    }
    sae = build[kind]()
    gen = torch.Generator().manual_seed(len(kind))
    with torch.no_grad():
        for name, param in sae.named_parameters():
            scale = 0.5 if "b_" in name else d_in**-0.5
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(1 + torch.rand(width, generator=gen))
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    if kind == "batchtopk":  # as sae-lens saves BatchTopK: a JumpReLU SAE holding its threshold
        sae.topk_threshold = torch.tensor(1.0, dtype=torch.double)
        sae.save_inference_model(path)
    else:
        sae.save_model(path)
    cfg = json.loads((path / "cfg.json").read_text())
    return SaeRecord(
        id=path.name, source="disk", path=str(path), layer=0, d_in=d_in, d_sae=width,
        architecture=cfg["architecture"],
    )  # fmt: skip


def check(
    model: Path, device: str, width: int, texts: int, causal_width: int, features: int, prompts: int
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="safesail-gpu-"))
    cpu = load_model(str(model), device="cpu", dtype="float32")
    there = load_model(str(model), device=device, dtype="float32")
    layer = min(8, cpu.n_layers - 1)  # the SAE site bench/scale.py reads
    calibration = [text for text, _ in generated_sentences(64, 1)]
    sae = save_jumprelu(cpu, calibration, folder / "rows-sae", layer, width, 16.0)
    expected = collected_rows(cpu, sae, folder / "ws-cpu", texts, "cpu")
    got = collected_rows(there, sae, folder / "ws-device", texts, device)
    print(f"rows_tokens={expected.shape[0]} rows_width={expected.shape[1]} rows_device={device}")
    compare("rows", got.toarray(), expected.toarray())

    x = torch.randn(256, cpu.hidden_size, generator=torch.Generator().manual_seed(2))
    encode_ok = True
    for kind in KINDS:
        loaded = load_sae(random_sae(kind, cpu.hidden_size, width, folder / kind), device=device)
        with torch.inference_mode():
            reference = loaded.encode(x.to(device)).float().cpu().numpy()
        ok = compare(f"encode_{kind.replace('-', '_')}", encode_csr(loaded, x).toarray(), reference)
        encode_ok &= ok
    print(f"encode_architectures={len(KINDS)} encode_all_match={int(encode_ok)}")
    del cpu, there

    lm = load_model(str(model), device=device, dtype="bfloat16" if device != "cpu" else "float32")
    config = CausalConfig(n_harmful=prompts, n_benign=prompts)
    path = save_jumprelu(lm, calibration, folder / "causal-sae", layer, causal_width, 64.0)
    record = SaeRecord(
        id="causal", source="disk", path=str(path), layer=layer, d_in=lm.hidden_size,
        d_sae=causal_width, architecture="jumprelu",
    )  # fmt: skip
    causal_sae = load_sae(record, device=device, dtype=str(lm.dtype).removeprefix("torch."))
    texts_in = [text for text, _ in generated_sentences(config.n_harmful + config.n_benign, 3)]
    groups = np.array(["harmful"] * config.n_harmful + ["benign"] * config.n_benign)
    site = Site(layer, "resid_post")
    meter = RefusalMeter(lm, texts_in, batch_size=config.batch_size, replay_below=layer)
    base = meter.measure()
    seconds = []
    for feature in range(features):
        edit = sae_feature_edit(causal_sae, site, feature, 3.0)
        seconds.append(check_feature(meter, base, groups, edit, config).seconds)
    print(f"causal_features={features} causal_prompts={len(texts_in)} causal_device={device}")
    print(f"causal_seconds_per_feature={np.mean(seconds):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bundle").add_argument("dest", type=Path)
    models = sub.add_parser("models")
    models.add_argument("tokenizer", type=Path, help="a folder `bundle` wrote")
    models.add_argument("dest", type=Path)
    models.add_argument("--tiny", action="store_true")
    models.add_argument("--device", default="cpu", help="where to initialise the weights")
    checks = sub.add_parser("check")
    checks.add_argument("model", type=Path, help="a model folder `models` wrote")
    checks.add_argument("--device", default="cuda")
    checks.add_argument("--width", type=int, default=16_384, help="SAE features")
    checks.add_argument("--texts", type=int, default=20_000, help="tokens collected twice")
    checks.add_argument(
        "--causal-width", type=int, default=65_536, help="features of the causal check's SAE"
    )
    checks.add_argument("--features", type=int, default=3, help="causal features timed")
    checks.add_argument(
        "--prompts", type=int, default=CausalConfig.n_harmful, help="causal prompts per group"
    )
    args = parser.parse_args()
    if args.command == "bundle":
        bundle(args.dest)
    elif args.command == "models":
        build_models(args.tokenizer, args.dest, args.tiny, args.device)
    else:
        check(
            args.model,
            args.device,
            args.width,
            args.texts,
            args.causal_width,
            args.features,
            args.prompts,
        )


if __name__ == "__main__":
    main()
