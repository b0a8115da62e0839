"""Refusal propensity of the model on a prompt set, with one SAE feature edited in the residual.

The propensity of a prompt is the total probability that the answer starts with a refusal
opening (`REFUSAL_OPENINGS`), computed exactly by teacher forcing rather than estimated from
samples: one forward of the chat-formatted prompts, then one forward of the openings' token
trie on the prompts' key/value cache (`safesail.causal.openings`). Generating text instead
would cost ~15 tokens/s on a CPU and give a 0/1 answer per prompt; the opening probability
moves smoothly with the intervention, so small causal effects are visible on a few dozen
prompts.

The edit is a hook on the module the SAE reads (`safesail.model.sites`: a block's output for
`hook_resid_post`, its input for `hook_resid_pre`, the MLP or attention output, ...), added on
the Hugging Face model the `LanguageModel` wraps and removed after each measurement. A second
hook, after it, reads the mean residual at the concept probes' block (`Measurement.readout`)
during the prompt forward, so the probes need no forward of their own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from safesail.causal.openings import OpeningTrie, prefix_free
from safesail.causal.prompts import REFUSAL_OPENINGS
from safesail.errors import SafesailError
from safesail.model.lm import LanguageModel, batches_by_length, right_padded
from safesail.model.sites import Site, site_module


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


def chat_ids(tokenizer: Any, text: str) -> list[int]:
    """The token ids of `text` as a user turn of the chat template, ready for the answer."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def template_prefix_length(tokenizer: Any) -> int:
    """Tokens the chat template puts before any user text (the system turn): identical for
    every prompt and blind to it (causal attention), so a readout averages only what follows."""
    a, b = chat_ids(tokenizer, "a"), chat_ids(tokenizer, "b")
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))


@dataclass(frozen=True)
class Measurement:
    """What one pass of the meter's prompts gives, in prompt order."""

    refusal: np.ndarray
    """P(the answer opens with a refusal) per prompt."""
    readout: np.ndarray | None
    """Mean residual at the readout block's output over each prompt's own tokens (from the user
    text to the end of the template) [n, d_model]; None when the meter has no readout."""


class _Readout:
    """Records the mean of a block's output over positions [start, length) of each row, while
    armed (the prompt forward only: the refusal openings are not the prompt)."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.lengths: torch.Tensor | None = None
        self.means: torch.Tensor | None = None

    def hook(self, _module: Any, _inputs: Any, output: Any) -> None:
        if self.lengths is None:
            return
        hidden = output[0] if isinstance(output, tuple) else output
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        keep = (positions[None, :] >= self.start) & (positions[None, :] < self.lengths[:, None])
        weights = keep.to(torch.float32)[..., None]
        self.means = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class _Replay(torch.nn.Module):
    """Stands in for the blocks below an edit's site: hands the first kept block the input the
    unedited model gave it (recorded by the baseline), in the form those blocks return."""

    def __init__(self, like: torch.nn.Module) -> None:
        super().__init__()
        self.queue: list[torch.Tensor] = []
        self.as_tuple = False
        if hasattr(like, "attention_type"):  # Qwen 2 / Gemma decoders pick masks by it
            self.attention_type = like.attention_type

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        hidden = self.queue.pop(0)
        return (hidden,) if self.as_tuple else hidden


class RefusalMeter:
    """The per-prompt refusal propensity of one model on one prompt set (chat template
    applied), under any edit at one site; with `readout_layer`, also the prompts' mean residual
    at that block's output, read in the same forward (for the concept probes)."""

    def __init__(
        self,
        lm: LanguageModel,
        prompts: Sequence[str],
        *,
        openings: Sequence[str] = REFUSAL_OPENINGS,
        batch_size: int = 8,
        readout_layer: int | None = None,
        replay_below: int | None = None,
    ) -> None:
        """`replay_below`: the layer of the SAE site the edits will be at. The unedited measure
        then records the input of that block, and an edit at that layer or later replays it
        instead of recomputing the blocks below it, which no such edit can change (exact; at
        layer 8 of 30 it saves a quarter of every edited forward)."""
        self.lm = lm
        self.batch_size = batch_size
        tok: Any = lm.tokenizer
        if not getattr(tok, "chat_template", None):
            raise SafesailError(
                f"{lm.name} has no chat template, and the causal check measures how a chat model "
                "answers — pass an instruction-tuned model with --model"
            )
        self.prompt_ids = [chat_ids(tok, p) for p in prompts]
        # batches of similar length waste little on padding; results go back in prompt order
        self._order = [i for b in batches_by_length(self.prompt_ids, batch_size) for i in b]
        self.trie = OpeningTrie.build(
            prefix_free([tok(o, add_special_tokens=False)["input_ids"] for o in openings])
        )
        if readout_layer is not None:
            lm.check_layer(readout_layer)
        self.readout_layer = readout_layer
        self._readout = _Readout(template_prefix_length(tok))
        self.replay_below = replay_below if replay_below else None  # layer 0: nothing below
        self._replay = _Replay(lm.model.model.layers[0])
        self._recorded: list[list[torch.Tensor]] = []
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
    def measure(self, site: Site | None = None, edit: Edit | None = None) -> Measurement:
        """Refusal propensity (and readout) per prompt, with `edit` applied at `site` on every
        position (both None: the unedited model)."""
        refusal, readout = [], []
        layers = self.lm.model.model.layers
        record = edit is None and self.replay_below is not None
        replay = (
            edit is not None
            and site is not None
            and self.replay_below is not None
            and site.layer >= self.replay_below
            and (self.readout_layer is None or self.readout_layer >= self.replay_below)
            and len(self._recorded) == len(self._batches())
        )
        with self.lm.lock:  # the hook sits on a shared module: no other forward may interleave
            handles = []
            if edit is not None and site is not None:
                module, reads_input = site_module(layers, site)
                handles.append(
                    module.register_forward_pre_hook(self._input_hook, with_kwargs=True)
                    if reads_input
                    else module.register_forward_hook(self._output_hook)
                )
            if self.readout_layer is not None:  # after the edit's hook: it reads the edited output
                handles.append(layers[self.readout_layer].register_forward_hook(self._readout.hook))
            if record:
                self._recorded = []
                handles += self._recorders(layers)
            self._edit = edit
            if replay:
                kept = torch.nn.ModuleList([self._replay, *list(layers)[self.replay_below :]])
                self.lm.model.model.layers = kept
            try:
                for number, rows in enumerate(self._batches()):
                    if record:
                        self._recorded.append([])
                    if replay:
                        self._replay.queue = list(self._recorded[number])
                    p, r = self._batch(rows)
                    refusal.append(p)
                    readout.append(r)
            finally:
                self._edit = None
                self.lm.model.model.layers = layers
                for handle in handles:
                    handle.remove()
        back = np.argsort(self._order)
        return Measurement(
            refusal=np.concatenate(refusal)[back],
            readout=np.concatenate(readout)[back] if self.readout_layer is not None else None,
        )

    def _recorders(self, layers: torch.nn.ModuleList) -> list[Any]:
        """Hooks that record each forward's input of block `replay_below` (for the current
        batch) and the form the block below returns it in."""
        assert self.replay_below is not None

        def keep(_module: Any, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._recorded[-1].append(hidden.detach().clone())

        def form(_module: Any, _inputs: Any, output: Any) -> None:
            self._replay.as_tuple = isinstance(output, tuple)

        return [
            layers[self.replay_below].register_forward_pre_hook(keep, with_kwargs=True),
            layers[self.replay_below - 1].register_forward_hook(form),
        ]

    @torch.no_grad()
    def readouts(self) -> np.ndarray:
        """The unedited readout of every prompt [n, d_model], without the refusal openings and
        the blocks after the readout (what the concept probes are trained on)."""
        if self.readout_layer is None:
            raise ValueError("readouts() needs a meter with a readout_layer")
        out = []
        with self.lm.truncated(self.readout_layer + 1):  # holds the model's lock
            block = self.lm.model.model.layers[self.readout_layer]
            handle = block.register_forward_hook(self._readout.hook)
            try:
                for rows in self._batches():
                    pad = self.lm.tokenizer.pad_token_id
                    ids, mask = (t.to(self.lm.device) for t in right_padded(rows, pad))
                    self._readout.lengths = mask.sum(1)
                    self.lm.model.model(input_ids=ids, attention_mask=mask, use_cache=False)
                    out.append(self._readout.means.cpu().numpy())
            finally:
                self._readout.lengths = self._readout.means = None
                handle.remove()
        return np.concatenate(out)[np.argsort(self._order)]

    def _batches(self) -> list[list[list[int]]]:
        """The prompts' ids in batches of similar length (`_order`)."""
        ordered = [self.prompt_ids[i] for i in self._order]
        return [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]

    def _batch(self, batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray | None]:
        """P(refusal opening) and readout of one batch of prompts."""
        from transformers import DynamicCache

        model: Any = self.lm.model
        pad = self.lm.tokenizer.pad_token_id
        ids, mask = (t.to(self.lm.device) for t in right_padded(batch, pad))
        n, lengths = len(batch), mask.sum(1)
        cache = DynamicCache(config=model.config)
        self._skip_first, self._readout.lengths = True, lengths
        try:
            base = model.model(
                input_ids=ids, attention_mask=mask, use_cache=True, **{_CACHE: cache}
            )
        finally:
            self._skip_first, self._readout.lengths = False, None
        readout = self._readout.means.cpu().numpy() if self.readout_layer is not None else None
        self._readout.means = None
        last = base.last_hidden_state[torch.arange(n, device=ids.device), lengths - 1]
        hidden = last[:, None]  # [n, 1 + prefixes, d]: where each next token is predicted
        if self.trie.prefixes:
            tokens, depth, sees = self.trie.row(ids.device)
            k = len(tokens)
            attend = torch.cat([mask.bool()[:, None, :].expand(n, k, -1), sees.expand(n, k, k)], 2)[
                :, None
            ]  # [n, 1, k, width + k]: the prompt's real tokens and the prefix's own
            more = model.model(
                input_ids=tokens.expand(n, k),
                attention_mask=attend,
                position_ids=lengths[:, None] + depth[None, :],
                use_cache=True,
                **{_CACHE: cache},
            )
            hidden = torch.cat([hidden, more.last_hidden_state], 1)
        logits = model.lm_head(hidden).float()  # only where a next token is needed
        logp = logits - torch.logsumexp(logits, -1, keepdim=True)
        total = self.trie.log_probability(logp).exp().sum(1)
        return total.clamp(max=1.0).cpu().numpy(), readout
