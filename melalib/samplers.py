"""Class-rebalancing samplers for the training DataLoader: `SAMPLERS`, `build_sampler`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

from .errors import ConfigError
from .registry import Registry

#: the ``sampler`` choices: name -> per-example weight from its class's count n_c
#: (``none``: no sampler, shuffle normally)
SAMPLERS: Registry[Callable[[np.ndarray], np.ndarray] | None] = Registry(
    "sampler", {"none": None, "balanced": lambda n_c: 1.0 / n_c,
                "sqrt": lambda n_c: 1.0 / np.sqrt(n_c)})


def sample_weights(mode: str, labels: np.ndarray) -> np.ndarray:
    """Per-example weight 1/n_c (``balanced``) or 1/sqrt(n_c) (``sqrt``) of its class c."""
    weight = SAMPLERS[mode]
    if weight is None:
        raise ConfigError(f"sampler weights need a weighting sampler, got {mode!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"sampler labels must be integer class indices (N,), got shape "
                          f"{labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size == 0 or labels.min() < 0:
        raise ConfigError("sampler labels must be non-empty class indices >= 0 "
                          "(training rows only)")
    counts = np.bincount(labels).astype(float)
    return weight(counts[labels])


def build_sampler(mode: str, labels: np.ndarray, seed: int) -> Sampler[int] | None:
    """``none`` -> None (shuffle normally); ``balanced`` / ``sqrt`` -> a seeded
    WeightedRandomSampler drawing len(labels) indices with replacement."""
    if SAMPLERS[mode] is None:
        return None
    weights = torch.as_tensor(sample_weights(mode, labels), dtype=torch.double)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                 generator=generator)
