"""Cross-check: safesail's core metrics (safesail/selection/core_metrics.py) against sae-bench 0.6.0's
own core eval (`sae_bench.evals.core.main.run_evals`) on one SAE, offline.

sae-bench's eval takes a TransformerLens model and an activation store. Both are built here
from what this machine has, with no hub: the embedded SmolLM2's fp32 folder becomes a
HookedTransformer (two TransformerLens 3.9 obstacles are worked around, see `_hooked`), and a
four-member stand-in replaces the dataset-backed ActivationsStore. The wheel is fetched from
the package registry into the cache (`pip download --no-deps`) and imported from there: its
pinned dependencies (numpy < 2) would downgrade the project's, and the eval runs without them.

Both sides see the same 16 contexts of BOS + 48 tokens (sae-bench takes an unpadded batch, so
they are cut from this repository's README). Where the two define a metric alike the figures
must agree to rounding; where they differ, the definition is printed beside them:
- explained variance: sae-bench's total variance is E||x||^2 - (mean over dimensions of
  E[x^2])^2, not the textbook E||x - E x||^2 that safesail uses;
- MSE: sae-bench's is the per-token squared-error sum divided by the batch's token count,
  safesail's is per element;
- CE loss score: the same formula, but sae-bench's zero ablation also zeros the BOS position,
  which safesail keeps in every run.

Run: ``.venv/bin/python bench/saebench_core.py [--sae bench/reference/L8-w4608-k32]``.
The last line is ``ce_loss_score_ours_minus_saebench=<x>``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).parent
SAE_BENCH = "sae-bench==0.6.0"
N_CONTEXTS, N_TOKENS = 16, 48


def _wheel(cache: Path) -> Path:
    """sae-bench's wheel, downloaded once into the cache (pure Python: importable as a zip)."""
    folder = cache / "wheels" / "sae-bench-0.6.0"
    found = sorted(folder.glob("sae_bench-0.6.0-*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                str(folder),
                SAE_BENCH,
            ],
            check=True,
        )
        found = sorted(folder.glob("sae_bench-0.6.0-*.whl"))
    return found[0]


def _hooked(folder: Path, hf: torch.nn.Module, tokenizer: object) -> object:
    """A HookedTransformer of the local model. TransformerLens 3.9 looks every name up in its
    official list before loading (SmolLM2 is not in it) although the rest of its loader reads
    a local folder with a config.json; and it reads `quantization_config` with `.get`, which
    fails on the None our converted config holds."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    official = loading.get_official_model_name
    loading.get_official_model_name = lambda n: (
        n if (Path(n) / "config.json").exists() else official(n)
    )
    if getattr(hf.config, "quantization_config", "absent") is None:
        del hf.config.quantization_config
    model = HookedTransformer.from_pretrained_no_processing(
        str(folder), hf_model=hf, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )
    return model.eval()


class _Store:
    """The four members of sae-lens's ActivationsStore that `run_evals` touches."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens
        self.store_batch_size_prompts = tokens.shape[0]
        self.context_size = tokens.shape[1]

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        return self.tokens[:n]

    def reset_input_dataset(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", type=Path, default=HERE / "reference" / "L8-w4608-k32")
    args = parser.parse_args()

    from safesail.config import WorkspaceConfig, default_cache_dir
    from safesail.model.lm import load_model

    cache = default_cache_dir()
    sys.path.insert(0, str(_wheel(cache)))
    import sae_bench.evals.core.main as core
    import sae_bench.sae_bench_utils.general_utils as general
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_lens import SAE

    from safesail.selection import core_metrics as ours
    from safesail.selection.ce_loss import layer_baseline, spliced_ce
    lm = load_model(cache_dir=cache, device="cpu")
    folder = cache / "models" / "smollm2-135m-instruct-fp32"  # what load_model converted to
    sae = SAE.load_from_disk(str(args.sae), device="cpu", dtype="float32")
    _, sae, _ = general.load_and_format_sae("custom", sae, "cpu")  # fills cfg.hook_layer
    layer = int(sae.cfg.hook_layer)

    text = (HERE.parent / "README.md").read_text() + "\n" + (HERE / "README.md").read_text()
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    contexts = [ids[i * N_TOKENS : (i + 1) * N_TOKENS] for i in range(N_CONTEXTS)]
    tokens = torch.tensor([[lm.bos_id, *c] for c in contexts])  # BOS first, as safesail does

    model = _hooked(folder, lm.model, lm.tokenizer)
    tok = lm.tokenizer
    config = CoreEvalConfig(
        model_name="local",
        batch_size_prompts=N_CONTEXTS,
        n_eval_reconstruction_batches=1,
        n_eval_sparsity_variance_batches=1,
        compute_kl=True,
        compute_ce_loss=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=False,
        exclude_special_tokens_from_reconstruction=True,  # BOS stays itself, as in safesail
    )
    ignore = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}
    theirs, per_feature = core.run_evals(sae, _Store(tokens), model, config, ignore_tokens=ignore)
    density = torch.tensor(per_feature["feature_density"])

    base = layer_baseline(lm, contexts, layer, batch_texts=N_CONTEXTS)
    spliced = spliced_ce(
        lm, contexts, layer, lambda h: sae.decode(sae.encode(h)), batch_texts=N_CONTEXTS
    )
    mine = ours.sae_core(
        sae,
        base,
        spliced,
        ours.CoreConfig(n_texts=N_CONTEXTS, max_tokens=N_TOKENS),
        memory_budget_bytes=int(WorkspaceConfig.memory_budget_mb * 2**20),  # the default
    )
    quality = theirs["reconstruction_quality"]
    kept = theirs["model_performance_preservation"]
    rows = [
        ("L0", theirs["sparsity"]["l0"], mine["l0"], "same definition"),
        (
            "explained variance",
            quality["explained_variance"],
            mine["fve"],
            "total variance differs",
        ),
        (
            "MSE",
            quality["mse"],
            mine["mse"] * base.residuals.shape[1] / base.residuals.shape[0],
            "ours rescaled to theirs (x d_in / tokens)",
        ),
        ("CE clean", kept["ce_loss_without_sae"], mine["ce_loss_clean"], "same"),
        ("CE with SAE", kept["ce_loss_with_sae"], mine["ce_loss_with_sae"], "same"),
        (
            "CE zero-ablated",
            kept["ce_loss_with_ablation"],
            mine["ce_loss_zero"],
            "theirs zeros BOS",
        ),
        ("CE loss score", kept["ce_loss_score"], mine["ce_loss_score"], "follows CE zero"),
        (
            "dead fraction (sample)",
            float((density <= 0).float().mean()),
            mine["dead_fraction"],
            "same",
        ),
        (
            "dense fraction (sample)",
            float((density > 0.1).float().mean()),
            mine["dense_fraction"],
            "same",
        ),
    ]
    print(f"{args.sae.name}, layer {layer}, {base.residuals.shape[0]} tokens")
    print(f"{'metric':<26}{'sae-bench':>12}{'safesail':>12}  note")
    for name, a, b, note in rows:
        print(f"{name:<26}{a:>12.6f}{b:>12.6f}  {note}")
    print(f"ce_loss_score_ours_minus_saebench={mine['ce_loss_score'] - kept['ce_loss_score']:.4f}")


if __name__ == "__main__":
    main()
