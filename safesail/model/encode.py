"""One memory-bounded encode for every sae-lens architecture safesail reads: activations go
straight into a CSR matrix, a block of tokens x features at a time, so the dense
[tokens, d_sae] result of `sae.encode` (8 GB per 2,048 tokens at 1M features) never exists.

Each block repeats `sae.encode`'s own arithmetic on a slice of the encoder: ReLU (standard),
JumpReLU, and gated activations are per feature, so a block of features is exact on its own;
TopK keeps a running top-k per token across feature blocks. BatchTopK SAEs are saved by
sae-lens as JumpReLU SAEs (their batch threshold becomes a per-feature one) and load as such.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from safesail.errors import SafesailError

SUPPORTED = ("standard", "jumprelu", "topk", "gated")
"""cfg.json architectures encoded here (BatchTopK SAEs are saved as jumprelu)."""
BLOCK_ELEMENTS = 1 << 21
"""Pre-activations computed at once (8 MB in float32): bounds the encode's working memory, and
a block this size stays in cache from the product to the threshold and the nonzero scan
(measured against larger blocks: bench/README.md, "Choices in the code")."""


def check_architecture(cfg: dict[str, Any]) -> str:
    """The architecture named in a cfg.json when it is one safesail can encode, else a
    one-line error (checked when an SAE is added, before anything is collected)."""
    arch = str(cfg.get("architecture", "standard"))
    if arch not in SUPPORTED:
        raise SafesailError(
            f"SAE architecture {arch!r} is not supported — add an SAE of {', '.join(SUPPORTED)} "
            "(BatchTopK SAEs saved by sae-lens are jumprelu)"
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise SafesailError(
            "SAEs on attention heads (hook_z, reshape_activations) are not supported — add one "
            "that reads the residual stream, an MLP or an attention output"
        )
    return arch


def _architecture(sae: torch.nn.Module) -> str:
    from sae_lens import GatedSAE, JumpReLUSAE, StandardSAE, TopKSAE

    kinds = {StandardSAE: "standard", JumpReLUSAE: "jumprelu", TopKSAE: "topk", GatedSAE: "gated"}
    if type(sae) not in kinds:  # subclasses may change the activation: refuse, do not guess
        raise SafesailError(f"SAE class {type(sae).__name__} is not supported — use an SAE of {', '.join(SUPPORTED)}")
    return kinds[type(sae)]


def _blocks(n: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, n)) for a in range(0, n, step)]


_scratch = threading.local()


def _buffer(name: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat tensor of at least n elements that this thread reuses from block to block and
    from call to call (at most `BLOCK_ELEMENTS`). A fresh block-sized tensor is a new
    allocation whose pages the kernel zero-fills on first touch (large blocks are mapped anew
    each time; bench/README.md, "Choices in the code")."""
    held = getattr(_scratch, name, None)
    if held is None or held.numel() < n or held.dtype != dtype or held.device != device:
        held = torch.empty(n, dtype=dtype, device=device)
        setattr(_scratch, name, held)
    return held[:n]


@torch.inference_mode()
def encode_csr(
    sae: torch.nn.Module, x: torch.Tensor, block_elements: int = BLOCK_ELEMENTS
) -> sp.csr_matrix:
    """`sae.encode(x)` as a float32 CSR matrix [tokens, d_sae] (zeros dropped, columns sorted),
    computed on the SAE's device and moved to the CPU before it becomes numpy."""
    arch = _architecture(sae)
    sae_in = sae.process_sae_in(x.to(sae.W_enc.device))
    n, d = sae_in.shape[0], int(sae.cfg.d_sae)
    token_step = max(1, min(n, block_elements // min(d, 4096)))
    feature_step = max(1, min(d, block_elements // max(token_step, 1)))
    parts = []
    for t0, t1 in _blocks(n, token_step):
        rows = sae_in[t0:t1]
        if arch == "topk":
            parts.append(_topk(sae, rows, feature_step))
        else:
            parts.append(_elementwise(sae, arch, rows, feature_step))
    if not parts:
        return sp.csr_matrix((0, d), dtype=np.float32)
    return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")


def _elementwise(sae: Any, arch: str, rows: torch.Tensor, step: int) -> sp.csr_matrix:
    """ReLU, JumpReLU or gated activations of some tokens, one block of features at a time.
    Each is `pre` where a mask holds, else 0, so the mask's nonzeros are the CSR entries:
    relu(pre) * (pre > t) is pre where pre > max(t, 0); gated is relu(mag) where gate > 0.

    Every block writes into the same two buffers (`_buffer`), with identical output."""
    d, n = int(sae.cfg.d_sae), rows.shape[0]
    pre_buffer = _buffer("pre", n * min(step, d), rows.dtype, rows.device)
    mask_buffer = _buffer("mask", n * min(step, d), torch.bool, rows.device)
    r_parts, c_parts, v_parts = [], [], []
    for a, b in _blocks(d, step):
        pre = pre_buffer[: n * (b - a)].view(n, b - a)
        mask = mask_buffer[: n * (b - a)].view(n, b - a)
        if arch == "gated":
            torch.addmm(sae.b_mag[a:b], rows, sae.W_enc[:, a:b] * sae.r_mag[a:b].exp(), out=pre)
            torch.logical_and(rows @ sae.W_enc[:, a:b] + sae.b_gate[a:b] > 0, pre > 0, out=mask)
        else:
            torch.addmm(sae.b_enc[a:b], rows, sae.W_enc[:, a:b], out=pre)
            floor = sae.threshold[a:b].clamp_min(0) if arch == "jumprelu" else 0
            torch.gt(pre, floor, out=mask)
        flat = _flat_nonzero(mask)
        r_parts.append((flat // (b - a)).cpu())
        c_parts.append((flat % (b - a) + a).cpu())
        v_parts.append(pre.view(-1)[flat].float().cpu())
    r, c, v = (torch.cat(p).numpy() for p in (r_parts, c_parts, v_parts))
    out = sp.csr_matrix((v, (r, c)), shape=(rows.shape[0], d))
    out.sort_indices()  # rows gather their columns block by block: ascending already
    return out


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """The flat indices of a mask's true elements in row-major order, as `nonzero` gives them.
    On the CPU numpy's flatnonzero finds them faster than torch's nonzero, and the scan is a
    visible share of a wide encode (bench/README.md, "Choices in the code")."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.view(-1).nonzero().squeeze(1)


def _topk(sae: Any, rows: torch.Tensor, step: int) -> sp.csr_matrix:
    """TopK activations of some tokens: a running top-k per token across feature blocks, then
    ReLU. With one block this is exactly TopKSAE.encode's top-k: the same product and bias add,
    written into a reused buffer (`_buffer`)."""
    d, k, n = int(sae.cfg.d_sae), int(sae.cfg.k), rows.shape[0]
    buffer = _buffer("pre", n * min(step, d), rows.dtype, rows.device)
    values = indices = None
    for a, b in _blocks(d, step):
        pre = buffer[: n * (b - a)].view(n, b - a)
        torch.matmul(rows, sae.W_enc[:, a:b], out=pre)
        pre.add_(sae.b_enc[a:b])
        if sae.cfg.rescale_acts_by_decoder_norm:
            pre.mul_(sae.W_dec[a:b].norm(dim=-1))
        v, i = torch.topk(pre, k=min(k, b - a), dim=-1, sorted=False)
        i = i + a
        if values is not None:
            v, i = torch.cat([values, v], dim=1), torch.cat([indices, i], dim=1)
            v, keep = torch.topk(v, k=min(k, v.shape[1]), dim=-1, sorted=False)
            i = i.gather(-1, keep)
        values, indices = v, i
    indices, order = indices.sort(dim=-1)  # canonical CSR: columns ascending in each row
    values = values.gather(-1, order).float().cpu()
    keep = values > 0  # ReLU: what is not positive is not stored
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(keep.sum(-1).numpy(), out=indptr[1:])
    return sp.csr_matrix((values[keep].numpy(), indices.cpu()[keep].numpy(), indptr), shape=(n, d))
