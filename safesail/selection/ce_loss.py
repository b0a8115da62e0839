"""CE loss recovered (SAEBench's ``ce_loss_score``): the next-token cross-entropy of the full
model with a layer's output replaced by an SAE's reconstruction, against that layer clean and
zeroed, on the real tokens of a batch of contexts.

The splice is a forward hook on the Hugging Face model's decoder block, so it works for any
model ``safesail.model.lm`` loads; it holds the model's lock like every other forward. It replaces
the block's output (the residual stream after it), the site of a ``resid_post`` SAE; the
splice and the zeroing touch the real tokens only, the BOS position keeps its activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from safesail.errors import SafesailError
from safesail.model.lm import LanguageModel, batches_by_length

Reconstruct = Callable[[torch.Tensor], torch.Tensor]
"""Maps residuals [n_tokens, d_in] to what is spliced in instead (an SAE's x_hat, zeros...)."""


class CeLoss(NamedTuple):
    """Mean next-token cross-entropy with the layer clean, spliced and zeroed."""

    clean: float
    spliced: float
    zero: float

    @property
    def score(self) -> float:
        """CE loss recovered, SAEBench's ce_loss_score (nan when zeroing changes nothing)."""
        gap = self.zero - self.clean
        return (self.zero - self.spliced) / gap if gap > 0 else float("nan")


def _token_mask(mask: torch.Tensor) -> torch.Tensor:
    """The real tokens of a batch: attended positions except the BOS in front."""
    keep = mask.bool().clone()
    keep[:, 0] = False
    return keep


@torch.no_grad()
def _forward_ce(
    lm: LanguageModel,
    batch: Sequence[Sequence[int]],
    replace: tuple[int, Reconstruct] | None,
    capture: dict[int, list[torch.Tensor]] | None = None,
) -> tuple[float, int]:
    """Summed next-token CE over the real tokens of one batch, and how many predictions.

    ``replace`` (layer, function), if given, substitutes that block's output at the real
    tokens; ``capture`` receives, per layer it names, the block's output there. Predictions
    are made at real tokens only (the BOS position predicts the first token alike in every
    run), and the LM head runs on those positions only."""
    input_ids, mask = lm.batch_inputs(batch)
    keep = _token_mask(mask)

    def hook(layer: int, out: Any) -> Any:
        hidden = out[0] if isinstance(out, tuple) else out
        if capture is not None and layer in capture:
            capture[layer].append(hidden[keep].float())
        if replace is None or replace[0] != layer:
            return None
        new = hidden.clone()
        new[keep] = replace[1](hidden[keep].float()).to(hidden.dtype)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    layers = set(capture or ()) | ({replace[0]} if replace else set())
    blocks = lm.model.model.layers
    with lm.lock:
        handles = [
            blocks[layer].register_forward_hook(lambda _m, _i, out, layer=layer: hook(layer, out))
            for layer in sorted(layers)
        ]
        try:
            out = lm.model.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
    predict = keep[:, :-1] & mask[:, 1:].bool()  # a real token whose next token is real
    logits = lm.model.lm_head(out.last_hidden_state[:, :-1][predict])
    targets = input_ids[:, 1:][predict]
    ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    return float(ce), int(targets.numel())


class LayerBaseline(NamedTuple):
    """What every SAE at one layer is compared with: the clean and zero-ablated CE, and the
    layer's residuals of the real tokens (the SAEs' input)."""

    clean: float
    zero: float
    residuals: torch.Tensor


def _batches(contexts: Sequence[Sequence[int]], batch_texts: int) -> list[list[Sequence[int]]]:
    return [[contexts[i] for i in idx] for idx in batches_by_length(contexts, batch_texts)]


def layer_baselines(
    lm: LanguageModel,
    contexts: Sequence[Sequence[int]],
    layers: Sequence[int],
    batch_texts: int = 8,
) -> dict[int, LayerBaseline]:
    """Clean and zero-ablated mean CE at each layer, with its residuals: one clean forward
    (capturing every layer) and one zeroed forward per layer, batch by batch."""
    for layer in layers:
        lm.check_layer(layer)
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    clean, count = 0.0, 0
    zero = dict.fromkeys(layers, 0.0)
    for batch in _batches(contexts, batch_texts):
        ce, n = _forward_ce(lm, batch, None, captured)
        clean += ce
        count += n
        for layer in layers:
            zero[layer] += _forward_ce(lm, batch, (layer, torch.zeros_like))[0]
    if not count:
        raise SafesailError("no next-token predictions: the contexts need 2+ tokens each — add longer texts "
            "(`safesail corpus add`)")
    return {
        layer: LayerBaseline(clean / count, zero[layer] / count, torch.cat(captured[layer]))
        for layer in layers
    }


def layer_baseline(
    lm: LanguageModel, contexts: Sequence[Sequence[int]], layer: int, batch_texts: int = 8
) -> LayerBaseline:
    """``layer_baselines`` for one layer."""
    return layer_baselines(lm, contexts, [layer], batch_texts)[layer]


def spliced_ce(
    lm: LanguageModel,
    contexts: Sequence[Sequence[int]],
    layer: int,
    reconstruct: Reconstruct,
    batch_texts: int = 8,
) -> float:
    """Mean CE of the full model with ``reconstruct`` of the layer's output spliced in."""
    total, count = 0.0, 0
    for batch in _batches(contexts, batch_texts):
        ce, n = _forward_ce(lm, batch, (layer, reconstruct))
        total += ce
        count += n
    return total / max(count, 1)


def ce_loss_recovered(
    lm: LanguageModel,
    contexts: Sequence[Sequence[int]],
    layer: int,
    reconstruct: Reconstruct,
    batch_texts: int = 8,
) -> CeLoss:
    """Clean, spliced and zero-ablated CE of the full model on ``contexts`` at ``layer``."""
    base = layer_baseline(lm, contexts, layer, batch_texts)
    return CeLoss(base.clean, spliced_ce(lm, contexts, layer, reconstruct, batch_texts), base.zero)
