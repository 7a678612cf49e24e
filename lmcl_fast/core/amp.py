"""Mixed precision: which autocast dtype a config asks for on a device."""
from __future__ import annotations

import contextlib

import torch


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA devices that support it, otherwise full precision (CPU bf16 autocast is slow on
    CPUs without native bf16 units). bf16/fp16 force it; off disables it."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
