"""Device and precision: names are checked before anything loads, and a half-precision model
captures what the float32 one does (on the CPU: tests never need a GPU)."""

from __future__ import annotations

import pytest
import torch

from safesail.config import WorkspaceConfig
from safesail.errors import SafesailError
from safesail.model.devices import resolve_device, resolve_dtype


def test_device_names(tmp_path):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_dtype("bfloat16") is torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(SafesailError, match="cuda:3 is not available: this machine has 0"):
            resolve_device("cuda:3")
    with pytest.raises(SafesailError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda, cuda:N or mps"):
        WorkspaceConfig(tmp_path, device="gpu0")
    with pytest.raises(ValueError, match="dtype must be"):
        WorkspaceConfig(tmp_path, dtype="int8")


def test_cli_device_flags_parse(tmp_path):
    from safesail.cli.commands import WORKSPACE_FLAGS, build_parser
    from safesail.cli.flags import config_from_args

    parser = build_parser(plugins=[])
    args = parser.parse_args(["status", "--device", "cpu", "--dtype", "bfloat16"])
    config = config_from_args(WorkspaceConfig, args, WORKSPACE_FLAGS)
    assert (config.device, config.dtype) == ("cpu", "bfloat16")
    args = parser.parse_args(["status", "--device", "cuda:x"])
    with pytest.raises(SafesailError, match="device must be"):
        config_from_args(WorkspaceConfig, args, WORKSPACE_FLAGS)


def test_bfloat16_model_captures_like_float32(lm):
    """The bf16 model's residuals track the fp32 model's (cosine > 0.99 per token), and what
    reaches numpy is float32 on the CPU."""
    from safesail.model.lm import load_model
    from safesail.model.sites import parse_site

    half = load_model(device="cpu", dtype="bfloat16")
    assert next(half.model.parameters()).dtype is torch.bfloat16
    ids = lm.tokenize(["She threatened to shoot the teacher."], 16)
    site = parse_site("blocks.3.hook_mlp_out")
    low = half.capture(ids, [site])[site]
    assert low.dtype is torch.bfloat16
    ref = lm.capture(ids, [site])[site]
    cos = torch.nn.functional.cosine_similarity(low.float(), ref, dim=-1)
    assert cos.min() > 0.99
    resid = half.residuals(ids, [3])[3]
    assert resid.dtype is torch.float32 and resid.device.type == "cpu"
