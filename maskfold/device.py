"""Where a script computes and in what precision: the device choice, and autocast's dtype.

torch is imported inside the functions, so `script.py --help` answers without it.
"""
from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from maskfold.cli import Choice, UserError

if TYPE_CHECKING:
    import torch


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def resolve_device(device: Device) -> str:
    """auto -> cuda when present; asking for cuda without one is the user's mistake."""
    import torch

    if device == Device.cuda and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return "cuda" if device != Device.cpu and torch.cuda.is_available() else "cpu"


class AmpDtype(Choice):
    """--amp-dtype: bf16 where the GPU has it (else fp16 with a gradient scaler), or one forced."""
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"


def amp_dtype(device: str, amp: bool | None, choice: str = "auto") -> torch.dtype | None:
    import torch

    """The autocast dtype, or None for full precision. On CUDA (amp on by default): bf16 where the GPU has
    bf16 units, fp16 (with a gradient scaler when training) on those without (V100, T4), or as `choice`
    forces. On a CPU autocast costs time (bf16 made the demo model 7x slower), so --amp alone leaves it
    off; naming a dtype forces it."""
    if device.startswith("cuda"):
        if amp is False:
            return None
        if choice == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if choice == "bf16" else torch.float16
    if choice == "auto" or not amp:
        return None
    return torch.bfloat16 if choice == "bf16" else torch.float16


def autocast(device: str, dtype: torch.dtype | None):
    """Autocast to `dtype` on the device's type; a no-op for None."""
    import torch

    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype or torch.bfloat16,
                          enabled=dtype is not None)
