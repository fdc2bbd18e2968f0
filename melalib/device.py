"""Device, mixed precision and seeding: what every loop (training, prediction, Grad-CAM)
sets up before it runs.

torch only (the config names `AMP_DTYPES` here, so this module stays below `config`
and never imports timm): `resolve_device`, `Precision` / `resolve_precision` (bf16 or fp16
autocast on CUDA, plain fp32 on CPU), `seed_everything`, `derived_seed`,
`set_deterministic`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import ConfigError
from .registry import Registry

if TYPE_CHECKING:  # type hints only: config reads AMP_DTYPES from this module
    from .config import RunConfig

#: the ``amp_dtype`` choices: name -> ``() -> whether autocast uses bf16`` (else fp16 with a
#: GradScaler); auto = bf16 where the GPU has it natively (torch's default also counts slow
#: emulation, e.g. on a T4)
AMP_DTYPES: Registry[Callable[[], bool]] = Registry("amp_dtype", {
    "auto": lambda: torch.cuda.is_bf16_supported(including_emulation=False),
    "bf16": lambda: True,
    "fp16": lambda: False,
})


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU; a CUDA device without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available; use device=cpu or auto")
    return device


@dataclass(frozen=True)
class Precision:
    """Autocast on or off, its dtype, and whether fp16 needs a GradScaler."""

    enabled: bool
    dtype: torch.dtype
    scaler: bool

    def autocast(self, device: torch.device) -> Any:
        if not self.enabled:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


FP32 = Precision(False, torch.float32, False)


def resolve_precision(cfg: RunConfig, device: torch.device) -> Precision:
    """fp32 on CPU; on CUDA bf16 where supported (auto), else fp16 with a GradScaler."""
    t = cfg.train
    if device.type != "cuda" or not t.amp:
        return FP32
    bf16 = AMP_DTYPES[t.amp_dtype]()
    return Precision(True, torch.bfloat16 if bf16 else torch.float16, not bf16)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A stable 31-bit seed from integers (seed, fold, epoch, ...)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p + 0x9E3779B9)) * 1099511628211) % 2**61
    return int(h % 2**31)


def set_deterministic(flag: bool) -> None:
    """cuDNN: deterministic kernels (``True``) or autotuned ones."""
    torch.backends.cudnn.benchmark = not flag
    torch.backends.cudnn.deterministic = flag
