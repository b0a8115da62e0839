"""SAEs in sae-lens format: train candidates, add them from disk or a pretrained release, load them.

sae-lens is imported lazily (it takes seconds); everything here runs offline except
`add_pretrained`, which needs the hub and says so when it cannot reach it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sqlmodel import Session

from safesail.config import SaeSpec, TrainConfig
from safesail.db.tables import SaeRecord
from safesail.errors import SafesailError
from safesail.model.devices import resolve_device, resolve_dtype
from safesail.model.encode import check_architecture
from safesail.model.lm import LanguageModel
from safesail.model.sites import Site, parse_site

if TYPE_CHECKING:
    from sae_lens import SAE

SAE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""What an SAE id may be: it names files and folders (exports, SAE folders), so no path
separator, no leading dot, no '..' on its own, at most 100 characters."""


def check_sae_id(sae_id: str) -> str:
    """The id when it is valid, else a one-line error."""
    if not SAE_ID.fullmatch(sae_id) or sae_id in {".", ".."}:
        raise SafesailError(
            f"invalid SAE id {sae_id!r} — give --id of 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return sae_id


def read_sae_config(path: Path) -> dict[str, Any]:
    """The cfg.json of a saved SAE, with a clear error when the folder is not one."""
    cfg_file = path / "cfg.json"
    if not cfg_file.is_file() or not (path / "sae_weights.safetensors").is_file():
        raise SafesailError(
            f"{path} is not an SAE in sae-lens format (needs cfg.json and sae_weights.safetensors) "
            "— point --path at the SAE's folder"
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SafesailError(f"{cfg_file} is not valid JSON: {exc} — it must hold the SAE's config") from None
    if not isinstance(cfg, dict):
        raise SafesailError(f"{cfg_file} is not a JSON object — it must hold the SAE's config")
    return cfg


def config_size(cfg: dict[str, Any], name: str, path: Path) -> int:
    """cfg.json's `d_in` or `d_sae` as a positive integer, else a one-line error."""
    value = cfg.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SafesailError(
            f"{path / 'cfg.json'}: {name} is {value!r}, not a positive integer — "
            "it is not a sae-lens config"
        )
    return value


def check_sae_weights(path: Path, d_in: int, d_sae: int) -> None:
    """Load the whole weights file and check its shapes against cfg.json, so that a truncated
    or mismatched file is refused when added, not in the middle of every later `collect`."""
    from safetensors.torch import load_file

    weights_file = path / "sae_weights.safetensors"
    try:
        weights = load_file(weights_file)
    except Exception as exc:  # safetensors raises its own and OS errors for a bad file
        reason = " ".join(str(exc).split())[:200]
        raise SafesailError(
            f"{weights_file} cannot be read ({reason}) — the file is truncated or not "
            "safetensors; copy it again"
        ) from None
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    missing = [name for name in ("W_enc", "W_dec") if name not in weights]
    if missing:
        raise SafesailError(f"{weights_file} has no {', '.join(missing)} — not an SAE's weights")
    for name, shape in expected.items():
        if name in weights and tuple(weights[name].shape) != shape:
            raise SafesailError(
                f"{weights_file}: {name} has shape {tuple(weights[name].shape)}, but cfg.json "
                f"(d_in={d_in}, d_sae={d_sae}) needs {shape} — the weights and cfg.json disagree"
            )


def hook_from_config(cfg: dict[str, Any]) -> str | None:
    """The hook name in a cfg.json (sae-lens 6 keeps it under metadata, older ones at the top)."""
    return (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or None


def site_of(record: SaeRecord) -> Site:
    """Where a recorded SAE reads: its stored hook, or (records from before hooks were stored)
    the site in its cfg.json at the recorded layer."""
    if record.hook:
        return parse_site(record.hook)
    hook = hook_from_config(read_sae_config(Path(record.path)))
    if hook is None:
        raise SafesailError(f"SAE {record.id}: its cfg.json names no hook_name — set metadata.hook_name there "
            f"and add it again (`safesail sae remove {record.id}`, then `safesail sae add`)")
    return parse_site(hook).at_layer(record.layer)


def register_sae(
    session: Session,
    lm: LanguageModel | Callable[[], LanguageModel],
    path: Path,
    *,
    source: str,
    layer: int | None = None,
    sae_id: str | None = None,
    release: str | None = None,
) -> SaeRecord:
    """Validate an SAE folder (its files first, then against the model) and record it
    (idempotent for the same id). `lm` may be a loader, called only once the files are good:
    a wrong path or a truncated file is told without waiting for the model to load."""
    if sae_id is not None:
        check_sae_id(sae_id)
    path = path.resolve()
    cfg = read_sae_config(path)
    d_in, d_sae = config_size(cfg, "d_in", path), config_size(cfg, "d_sae", path)
    check_sae_weights(path, d_in, d_sae)
    architecture = check_architecture(cfg)
    hook = hook_from_config(cfg)
    if hook is None:
        raise SafesailError(
            f"SAE {path.name}: cfg.json names no hook_name, so where it reads is unknown — set "
            "metadata.hook_name (e.g. blocks.8.hook_resid_post or model.layers.8.mlp.down_proj)"
        )
    site = parse_site(hook)
    site = site.at_layer(layer) if layer is not None else site  # --layer moves it to that block
    layer = site.layer
    if not isinstance(lm, LanguageModel):
        lm = lm()
    lm.check_layer(layer)
    width = lm.site_width(site)
    if d_in != width:
        size = f"hidden size {width}" if width == lm.hidden_size else f"width {width}"
        raise SafesailError(
            f"SAE {path.name} has d_in={d_in} but {lm.name} has {size} at {site.name}; "
            "it was trained on another model or site — pass that model with --model, or add an "
            "SAE of this one"
        )
    k = cfg.get("k")
    if k and (isinstance(k, bool) or not isinstance(k, int)):
        raise SafesailError(f"{path / 'cfg.json'}: k is {k!r}, not an integer — set k to the SAE's TopK k")
    if sae_id is None:  # the folder's name may hold any character: keep the safe ones
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)
        sae_id = (f"L{layer}-w{d_sae}" + (f"-k{k}" if k else "") + f"-{name}")[:100]
    existing = session.get(SaeRecord, sae_id)
    if existing is not None:
        if Path(existing.path) != path:
            raise SafesailError(f"SAE id '{sae_id}' is already used for {existing.path} — pick another --id")
        return existing
    record = SaeRecord(
        id=sae_id,
        source=source,
        path=str(path),
        layer=layer,
        d_in=d_in,
        d_sae=d_sae,
        k=int(k) if k else None,
        architecture=architecture,
        release=release,
        hook=site.name,
    )
    session.add(record)
    return record


def load_sae(record: SaeRecord, *, device: str = "auto", dtype: str = "float32") -> SAE:
    """The SAE on `device` in `dtype` (the model's: see safesail.model.devices)."""
    from sae_lens import SAE

    resolve_dtype(dtype)  # a one-line error before sae-lens's own
    sae = SAE.load_from_disk(record.path, device=str(resolve_device(device)), dtype=dtype)
    sae.eval()
    return sae


def add_pretrained(release: str, sae_name: str, dest: Path) -> Path:
    """Download a sae-lens pretrained release once and keep it as a local sae-lens folder."""
    target = dest / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{release}__{sae_name}")
    if (target / "cfg.json").exists():
        return target
    from sae_lens import SAE

    try:
        sae = SAE.from_pretrained(release, sae_name, device="cpu")
    except Exception as exc:  # hub errors come in many types; all mean the same to the user
        if "offline" in str(exc).lower() or "LocalEntryNotFound" in type(exc).__name__:
            raise SafesailError(
                f"cannot fetch sae-lens release '{release}' / '{sae_name}': the Hugging Face hub is "
                "unreachable (offline) — save it with sae-lens where you have access and add the "
                "folder with `safesail sae add --path DIR`"
            ) from None
        raise SafesailError(
            f"cannot load sae-lens release '{release}' / '{sae_name}' ({exc}) — check --release "
            "and --sae-id against sae-lens' pretrained_saes.yaml"
        ) from None
    sae.save_model(target)
    return target


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of exactly batch_size rows, as sae-lens's trainer requires."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(acts.shape[0], generator=gen)
        for start in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[order[start : start + batch_size]]


def train_sae(
    acts: torch.Tensor, spec: SaeSpec, cfg: TrainConfig, model_name: str, dest: Path
) -> Path:
    """Train one TopK SAE with sae-lens's trainer on residuals of shape [n_tokens, d_in]."""
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    if acts.shape[0] < cfg.batch_size:
        raise SafesailError(
            f"only {acts.shape[0]} training tokens for SAE {spec.sae_id}; need at least one batch of "
            f"{cfg.batch_size} — add texts (`safesail corpus add`) or lower --batch-size"
        )
    torch.manual_seed(cfg.seed)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=acts.shape[1],
            d_sae=spec.d_sae,
            k=spec.k,
            dtype="float32",
            device="cpu",
            normalize_activations="expected_average_only_in",
        )
    )
    sae.cfg.metadata.hook_name = f"blocks.{spec.layer}.hook_resid_post"
    sae.cfg.metadata.model_name = model_name
    total = max(cfg.batch_size, int(acts.shape[0] * cfg.epochs) // cfg.batch_size * cfg.batch_size)
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=total,
            train_batch_size_samples=cfg.batch_size,
            lr=cfg.lr,
            lr_end=cfg.lr,
            device="cpu",
            n_batches_for_norm_estimate=min(20, max(1, acts.shape[0] // cfg.batch_size)),
            dead_feature_window=cfg.dead_feature_window,
            feature_sampling_window=10**9,  # only feeds wandb logging
        ),
        sae=sae,
        data_provider=_batches(acts, cfg.batch_size, cfg.seed),
    )
    trained = trainer.fit()
    target = dest / spec.sae_id
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    trained.save_inference_model(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # a half-saved SAE never looks finished
    return target


def gather_residuals(
    lm: LanguageModel, contexts: Sequence[Sequence[int]], layers: Sequence[int], batch_texts: int
) -> dict[int, torch.Tensor]:
    """Residual activations of every real token at the given layers (training data)."""
    from tqdm.auto import tqdm

    from safesail.model.lm import batches_by_length

    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    batches = list(batches_by_length(contexts, batch_texts))
    for batch in tqdm(batches, desc="Residuals for SAE training", unit="batch"):
        out = lm.residuals([contexts[i] for i in batch], layers)
        for layer in layers:
            parts[layer].append(out[layer])
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}
