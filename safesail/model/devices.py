"""Device and precision names (`--device`, `--dtype`) turned into torch objects, with a
one-line error for a device this machine does not have."""

from __future__ import annotations

import torch

from safesail.errors import SafesailError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` is the first GPU when there is one (CUDA, then Apple's MPS), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SafesailError(
            f"unknown device {name!r} — give --device auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            raise SafesailError(
                f"device {name} is not available: this machine has {count} CUDA GPU(s) — give "
                "--device cpu or auto"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SafesailError("device mps is not available on this machine — give --device cpu or auto")
    if device.type not in ("cpu", "mps"):
        raise SafesailError(f"unsupported device {name!r} — give --device auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise SafesailError(f"unknown dtype {name!r} — give --dtype {' or '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The `--dtype` name of a torch dtype (an SAE loads in its model's precision)."""
    return next(name for name, value in DTYPES.items() if value == dtype)
