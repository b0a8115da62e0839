"""Hook sites: each captured site against a manual forward pass of the embedded SmolLM2
(Llama-style), the TransformerLens site semantics on Qwen / Mistral / Gemma style decoders,
and the errors for an unknown site or an SAE of the wrong width."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from safesail.errors import SafesailError
from safesail.model.lm import LanguageModel
from safesail.model.sites import Site, parse_site

L = 2


def _rms(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


@torch.no_grad()
def _manual_llama(lm: LanguageModel, ids: list[int], depth: int) -> list[dict[str, torch.Tensor]]:
    """Every site of blocks 0..depth-1 by hand from the weights (one unpadded sequence with
    its BOS, BOS position dropped): RMSNorm, rotary causal GQA attention, SwiGLU MLP."""
    model, cfg = lm.model.model, lm.model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head = cfg.hidden_size // n_heads
    tokens = torch.tensor([[lm.bos_id, *ids]])
    h = model.embed_tokens(tokens)[0]
    cos, sin = (t[0] for t in model.rotary_emb(h[None], torch.arange(len(h))[None]))
    causal = torch.full((len(h), len(h)), float("-inf")).triu(1)
    out = []
    for block in model.layers[:depth]:
        sites = {"resid_pre": h}
        x = _rms(block.input_layernorm, h)
        att = block.self_attn
        q = att.q_proj(x).view(len(h), n_heads, head).transpose(0, 1)
        k = att.k_proj(x).view(len(h), n_kv, head).transpose(0, 1)
        v = att.v_proj(x).view(len(h), n_kv, head).transpose(0, 1)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = (t.repeat_interleave(n_heads // n_kv, dim=0) for t in (k, v))
        weights = torch.softmax(q @ k.transpose(1, 2) / head**0.5 + causal, dim=-1)
        sites["attn_out"] = att.o_proj((weights @ v).transpose(0, 1).reshape(len(h), -1))
        mid = h + sites["attn_out"]
        y = _rms(block.post_attention_layernorm, mid)
        sites["up_proj"] = block.mlp.up_proj(y)
        sites["mlp_out"] = block.mlp.down_proj(
            torch.nn.functional.silu(block.mlp.gate_proj(y)) * sites["up_proj"]
        )
        h = mid + sites["mlp_out"]
        sites["resid_post"] = h
        out.append({name: value[1:] for name, value in sites.items()})
    return out


NAMES = {
    "blocks.2.hook_resid_pre": (L, "resid_pre"),
    "blocks.2.hook_resid_post": (L, "resid_post"),
    "blocks.2.hook_attn_out": (L, "attn_out"),
    "blocks.2.hook_mlp_out": (L, "mlp_out"),
    "model.layers.2.mlp.down_proj": (L, "mlp_out"),
    "model.layers.2.mlp.up_proj": (L, "up_proj"),
    "model.layers.2.self_attn.o_proj": (L, "attn_out"),
    "model.layers.2": (L, "resid_post"),
    "blocks.0.hook_resid_pre": (0, "resid_pre"),
}


def test_every_site_matches_a_manual_forward(lm):
    """All sites in one batched, padded forward equal the hand-computed values per text."""
    texts = ["He grabbed a knife and stabbed the stranger.", "Plant basil in spring."]
    ids = lm.tokenize(texts, 24)
    sites = [parse_site(name) for name in NAMES]
    captured = lm.capture(ids, sites)
    manual = [_manual_llama(lm, row, L + 1) for row in ids]
    for name, site in zip(NAMES, sites, strict=True):
        layer, key = NAMES[name]
        expected = torch.cat([m[layer][key] for m in manual])
        assert captured[site].shape == expected.shape, name
        torch.testing.assert_close(captured[site], expected, rtol=1e-4, atol=1e-4, msg=name)
    # resid_pre of block L+1 is resid_post of block L; the sites really differ
    post = captured[parse_site("blocks.2.hook_resid_post")]
    pre = lm.capture(ids, [Site(L + 1, "resid_pre")])[Site(L + 1, "resid_pre")]
    torch.testing.assert_close(pre, post)
    assert not torch.allclose(post, captured[parse_site("blocks.2.hook_resid_pre")])


def _tiny(kind: str) -> LanguageModel:
    import transformers as T

    config, model = {
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
        "mistral": (T.MistralConfig, T.MistralForCausalLM),
        "gemma": (T.GemmaConfig, T.GemmaForCausalLM),
        "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM),
        "gemma3": (T.Gemma3TextConfig, T.Gemma3ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    cfg = config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    return LanguageModel(kind, SimpleNamespace(pad_token_id=0), model(cfg).eval(), 32, 3, bos_id=1)


@pytest.mark.parametrize("kind", ["qwen2", "mistral", "gemma", "gemma2", "gemma3"])
def test_sites_on_other_decoders(kind):
    """attn_out and mlp_out are what the block adds to the residual stream (after Gemma 2/3's
    post norms, as TransformerLens reads them), and the module paths read those modules."""
    lm = _tiny(kind)
    names = [
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_post",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_mlp_out",
        "model.layers.1.mlp.down_proj",
        "model.layers.1.self_attn.o_proj",
    ]
    sites = [parse_site(n) for n in names]
    got = dict(zip(names, lm.capture([[5, 6, 7, 8], [9, 10]], sites).values(), strict=True))
    torch.testing.assert_close(
        got["blocks.1.hook_resid_pre"]
        + got["blocks.1.hook_attn_out"]
        + got["blocks.1.hook_mlp_out"],
        got["blocks.1.hook_resid_post"],
        rtol=1e-5,
        atol=1e-5,
    )
    block = lm.model.model.layers[1]
    sandwich = kind in ("gemma2", "gemma3")
    with torch.no_grad():
        attn = got["model.layers.1.self_attn.o_proj"]
        mlp = got["model.layers.1.mlp.down_proj"]
        if sandwich:
            attn, mlp = block.post_attention_layernorm(attn), block.post_feedforward_layernorm(mlp)
    torch.testing.assert_close(got["blocks.1.hook_attn_out"], attn)
    torch.testing.assert_close(got["blocks.1.hook_mlp_out"], mlp)


@pytest.mark.parametrize(
    "hook", ["blocks.2.hook_z", "blocks.x.hook_resid_post", "encoder.2.mlp", "blocks.2.hook_mlp_in"]
)
def test_unknown_site_is_one_line(hook):
    with pytest.raises(SafesailError, match="unknown hook site") as err:
        parse_site(hook)
    assert "\n" not in str(err.value)


def test_missing_module_is_one_line(lm):
    with pytest.raises(SafesailError, match="no module model.layers.2.mlp.nope"):
        lm.capture([[5, 6]], [parse_site("model.layers.2.mlp.nope")])


def test_sae_add_reads_its_hook_and_checks_its_width(lm, tmp_path):
    """An SAE is fed its own site (not the block output), and one whose d_in does not fit
    its site is refused."""
    import safesail.collection.collect as collect_mod
    from safesail.model.encode import encode_csr
    from safesail.model.saes import load_sae
    from tests.conftest import make_workspace
    from tests.model.test_sae_architectures import _save

    ws = make_workspace(tmp_path / "ws", lm)
    up = lm.model.config.intermediate_size
    with pytest.raises(SafesailError, match=f"d_in=576.*width {up} at model.layers.2.mlp.up_proj"):
        ws.add_sae(_save("jumprelu", tmp_path / "bad", 576, "model.layers.2.mlp.up_proj"))
    paths = {
        "pre": _save("jumprelu", tmp_path / "pre", 576, "blocks.2.hook_resid_pre"),
        "mlp": _save("topk", tmp_path / "mlp", 576, "model.layers.2.mlp.down_proj"),
        "up": _save("standard", tmp_path / "up", up, "model.layers.2.mlp.up_proj"),
    }
    for sae_id, path in paths.items():
        ws.add_sae(path, sae_id=sae_id)
    records = {r.id: r for r in ws.saes()}
    assert records["mlp"].hook == "model.layers.2.mlp.down_proj"
    saes = {i: (r, load_sae(r, device="cpu")) for i, r in records.items()}
    ids = lm.tokenize(["They tortured the old man in the village square."], 24)
    encoded = collect_mod.encode_chunk(lm, saes, ids)
    manual = _manual_llama(lm, ids[0], L + 1)[L]
    for sae_id, key in (("pre", "resid_pre"), ("mlp", "mlp_out"), ("up", "up_proj")):
        tokens, _ = encoded[sae_id]
        expected = encode_csr(saes[sae_id][1], manual[key]).toarray()
        assert tokens.nnz > 0
        assert abs(tokens.toarray() - expected).max() < 1e-3, sae_id
