"""Refusal propensity of the model on a prompt set, with one SAE feature edited in the residual.

The propensity of a prompt is the total probability that the answer starts with a refusal
opening (`REFUSAL_OPENINGS`), computed exactly by teacher forcing rather than estimated from
samples: one forward of the chat-formatted prompts, then one forward of every opening on the
prompts' key/value cache. Generating text instead would cost ~15 tokens/s on a CPU and give a
0/1 answer per prompt; the opening probability moves smoothly with the intervention, so small
causal effects are visible on a few dozen prompts.

The edit is a hook on the module the SAE reads (`safesail.sites`: a block's output for
`hook_resid_post`, its input for `hook_resid_pre`, the MLP or attention output, ...), added on
the Hugging Face model the `LanguageModel` wraps and removed after each measurement.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from safesail.causal.prompts import REFUSAL_OPENINGS
from safesail.errors import SafesailError
from safesail.lm import LanguageModel
from safesail.sites import Site, site_module


def _cache_keyword() -> str:
    """transformers 5.24 renamed the decoder's `past_key_values` argument to `cache`."""
    from transformers import LlamaModel

    return (
        "cache"
        if "cache" in inspect.signature(LlamaModel.forward).parameters
        else "past_key_values"
    )


_CACHE = _cache_keyword()

Edit = Callable[[torch.Tensor], torch.Tensor]
"""Residual [batch, positions, d_model] -> edited residual of the same shape."""


@dataclass(frozen=True)
class FeatureEdit:
    """One feature's intervention at one site: its unit contribution `direction` (what the
    SAE's decoder adds per unit of activation), an encoder for its activation, and the
    scale steering alphas multiply (the feature's max activation on the corpus)."""

    site: Site
    direction: torch.Tensor
    scale: float
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Residual [n, d_model] -> the feature's activation [n]; None: a feature that never fires."""

    def ablate(self) -> Edit:
        """Subtract the feature's decoder contribution wherever it fires."""

        def edit(h: torch.Tensor) -> torch.Tensor:
            if self.activation is None:
                return h
            acts = self.activation(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:-1], 1)
            return h - (acts * self.direction).to(h.dtype)

        return edit

    def steer(self, alpha: float) -> Edit:
        """Add alpha x scale x the decoder direction at every position."""
        shift = float(alpha) * self.scale * self.direction
        return lambda h: h + shift.to(h.dtype)


def sae_feature_edit(sae: Any, site: Site, feature: int, scale: float) -> FeatureEdit:
    """A sae-lens SAE's feature as an edit. The decoder is affine in the codes (z @ W_dec +
    b_dec, whatever rescaling the SAE applies inside), so decode(e_f) - decode(0) is the
    contribution of one unit of activation."""
    with torch.no_grad():
        weight = sae.W_dec
        zeros = torch.zeros(1, int(sae.cfg.d_sae), device=weight.device, dtype=weight.dtype)
        one = zeros.clone()
        one[0, feature] = 1.0
        direction = (sae.decode(one) - sae.decode(zeros))[0].float()

    def activation(h: torch.Tensor) -> torch.Tensor:
        return sae.encode(h.to(weight.dtype))[:, feature].float()

    return FeatureEdit(site=site, direction=direction, scale=float(scale), activation=activation)


class RefusalMeter:
    """The per-prompt refusal propensity of one model on one prompt set (chat template
    applied), under any edit at one site."""

    def __init__(
        self,
        lm: LanguageModel,
        prompts: Sequence[str],
        *,
        openings: Sequence[str] = REFUSAL_OPENINGS,
        batch_size: int = 8,
    ) -> None:
        self.lm = lm
        self.batch_size = batch_size
        tok: Any = lm.tokenizer
        if not getattr(tok, "chat_template", None):
            raise SafesailError(
                f"{lm.name} has no chat template: the causal check measures how a chat model "
                "answers, so it needs an instruction-tuned model"
            )
        self.prompt_ids = [
            tok(
                tok.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                ),
                add_special_tokens=False,
            )["input_ids"]
            for p in prompts
        ]
        self.openings = prefix_free(
            [tok(o, add_special_tokens=False)["input_ids"] for o in openings]
        )
        self._edit: Edit | None = None
        self._skip_first = False

    def _apply(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self._edit is not None
        edited = self._edit(hidden)
        if self._skip_first:  # the attention sink at position 0: the SAE never saw it
            edited = torch.cat([hidden[:, :1], edited[:, 1:]], dim=1)
        return edited

    def _output_hook(self, _module: Any, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (self._apply(output[0]), *output[1:])
        return self._apply(output)

    def _input_hook(self, _module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (self._apply(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self._apply(kwargs["hidden_states"])}

    @torch.no_grad()
    def measure(self, site: Site | None = None, edit: Edit | None = None) -> np.ndarray:
        """P(the answer opens with a refusal) per prompt, with `edit` applied at `site` on
        every position (both None: the unedited model)."""
        out = []
        with self.lm.lock:  # the hook sits on a shared module: no other forward may interleave
            handle = None
            if edit is not None and site is not None:
                module, reads_input = site_module(self.lm.model.model.layers, site)
                handle = (
                    module.register_forward_pre_hook(self._input_hook, with_kwargs=True)
                    if reads_input
                    else module.register_forward_hook(self._output_hook)
                )
            self._edit = edit
            try:
                for start in range(0, len(self.prompt_ids), self.batch_size):
                    out.append(self._batch(self.prompt_ids[start : start + self.batch_size]))
            finally:
                self._edit = None
                if handle is not None:
                    handle.remove()
        return np.concatenate(out)

    def _batch(self, batch: list[list[int]]) -> np.ndarray:
        model: Any = self.lm.model
        pad = self.lm.tokenizer.pad_token_id
        n, width = len(batch), max(len(row) for row in batch)
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, row in enumerate(batch):  # right padding: no query row is fully masked
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
        lengths = mask.sum(1)
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        self._skip_first = True
        base = model.model(input_ids=ids, attention_mask=mask, use_cache=True, **{_CACHE: cache})
        self._skip_first = False
        last = base.last_hidden_state[torch.arange(n, device=ids.device), lengths - 1]
        first = torch.log_softmax(model.lm_head(last).float(), -1)  # [n, vocab]
        logp = torch.stack([first[:, o[0]] for o in self.openings], 1)  # [n, m]
        m, depth = len(self.openings), max(len(o) for o in self.openings)
        if depth > 1:
            cont = torch.full((n * m, depth - 1), pad, dtype=torch.long)
            cmask = torch.zeros((n * m, depth - 1), dtype=torch.long)
            for j, o in enumerate(self.openings):
                cont[j::m, : len(o) - 1] = torch.tensor(o[:-1])
                cmask[j::m, : len(o) - 1] = 1
            cont, cmask = cont.to(ids.device), cmask.to(ids.device)
            cache.batch_repeat_interleave(m)
            positions = lengths.repeat_interleave(m)[:, None] + torch.arange(
                depth - 1, device=ids.device
            )
            more = model.model(
                input_ids=cont,
                attention_mask=torch.cat([mask.repeat_interleave(m, 0), cmask], 1),
                position_ids=positions,
                use_cache=True,
                **{_CACHE: cache},
            )
            steps = torch.log_softmax(model.lm_head(more.last_hidden_state).float(), -1)
            steps = steps.reshape(n, m, depth - 1, -1)
            for j, o in enumerate(self.openings):
                for t in range(1, len(o)):
                    logp[:, j] += steps[:, j, t - 1, o[t]]
        return logp.exp().sum(1).clamp(max=1.0).cpu().numpy()


def prefix_free(sequences: Sequence[Sequence[int]]) -> list[list[int]]:
    """Distinct token sequences none of which starts another: their probabilities then sum to
    the probability of their union (a longer opening whose prefix is an opening is covered)."""
    unique = sorted({tuple(s) for s in sequences if s}, key=lambda s: (len(s), s))
    kept: list[tuple[int, ...]] = []
    for seq in unique:
        if not any(seq[: len(k)] == k for k in kept):
            kept.append(seq)
    return [list(s) for s in kept]
