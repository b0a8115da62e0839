"""Hook sites: where in the decoder an SAE reads, from its sae-lens `hook_name`.

Two spellings are understood. TransformerLens names (`blocks.L.hook_resid_pre`, `resid_post`,
`mlp_out`, `attn_out`), which is how GemmaScope, Llama Scope and most sae-lens releases name
their sites, and Hugging Face module paths (`model.layers.L.mlp.down_proj`), which is how
Safe-SAIL names its Qwen2.5 SAEs. Each maps onto a module of a Llama / Qwen / Mistral / Gemma
style decoder and whether its input or its output is the SAE's input. Gemma 2 and 3 put a norm
after attention and after the MLP ("sandwich" norms), and TransformerLens's `hook_attn_out` /
`hook_mlp_out` read after those norms, so there the site is the norm's output.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch

from safesail.errors import SafesailError

KINDS = ("resid_pre", "resid_post", "mlp_out", "attn_out")
"""The TransformerLens sites understood besides module paths."""
MODULE = "module"
"""Kind of a site named by a Hugging Face module path: the module's output is read."""

_TL = re.compile(r"^blocks\.(\d+)\.hook_(" + "|".join(KINDS) + r")$")
_HF = re.compile(r"^(?:model\.)?layers\.(\d+)(?:\.([A-Za-z0-9_.]+))?$")


class Site(NamedTuple):
    """One place in the decoder: a block and what of it is read."""

    layer: int
    kind: str
    """One of KINDS, or MODULE."""
    module: str = ""
    """For MODULE: the path inside block `layer` (e.g. "mlp.down_proj")."""

    @property
    def name(self) -> str:
        """The canonical hook name (stored on the SaeRecord)."""
        if self.kind == MODULE:
            return f"model.layers.{self.layer}.{self.module}"
        return f"blocks.{self.layer}.hook_{self.kind}"

    def at_layer(self, layer: int) -> Site:
        return self._replace(layer=layer)


def parse_site(hook: str) -> Site:
    """The site a hook name means, or a one-line error naming the forms understood."""
    if match := _TL.fullmatch(hook):
        return Site(int(match.group(1)), match.group(2))
    if match := _HF.fullmatch(hook):
        inner = match.group(2)
        # a block's own output is the residual stream after it
        return (
            Site(int(match.group(1)), MODULE, inner)
            if inner
            else Site(int(match.group(1)), KINDS[1])
        )
    raise SafesailError(
        f"unknown hook site {hook!r} — use blocks.L.hook_resid_pre, hook_resid_post, hook_mlp_out, "
        "hook_attn_out, or a decoder module such as model.layers.L.mlp.down_proj"
    )


def site_module(layers: torch.nn.ModuleList, site: Site) -> tuple[torch.nn.Module, bool]:
    """The module a site reads and whether its input (True) or its output (False) is read."""
    block = layers[site.layer]
    sandwich = hasattr(block, "post_feedforward_layernorm")  # Gemma 2 / 3
    if site.kind == "resid_pre":
        return block, True
    if site.kind == "resid_post":
        return block, False
    if site.kind == "attn_out":
        return (block.post_attention_layernorm if sandwich else block.self_attn), False
    if site.kind == "mlp_out":
        return (block.post_feedforward_layernorm if sandwich else block.mlp), False
    try:
        return block.get_submodule(site.module), False
    except AttributeError:
        raise SafesailError(
            f"the model has no module {site.name} (block {site.layer} has: "
            f"{', '.join(n for n, _ in block.named_modules() if n and '.' not in n)}) — name one "
            "of those in the SAE's hook_name"
        ) from None
