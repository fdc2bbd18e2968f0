"""Class-rebalancing samplers for the training DataLoader."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

from .errors import ConfigError

MODES = ("none", "balanced", "sqrt")


def sample_weights(mode: str, labels: np.ndarray) -> np.ndarray:
    """Per-example weight 1/n_c (``balanced``) or 1/sqrt(n_c) (``sqrt``) of its class c."""
    if mode not in MODES[1:]:
        raise ConfigError(f"sampler weights need mode balanced or sqrt, got {mode!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"sampler labels must be integer class indices (N,), got shape "
                          f"{labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size == 0 or labels.min() < 0:
        raise ConfigError("sampler labels must be non-empty class indices >= 0 "
                          "(training rows only)")
    counts = np.bincount(labels).astype(float)
    n_c = counts[labels]
    return 1.0 / (n_c if mode == "balanced" else np.sqrt(n_c))


def build_sampler(mode: str, labels: np.ndarray, seed: int) -> Sampler[int] | None:
    """``none`` -> None (shuffle normally); ``balanced`` / ``sqrt`` -> a seeded
    WeightedRandomSampler drawing len(labels) indices with replacement."""
    if mode not in MODES:
        raise ConfigError(f"sampler must be one of {MODES}, got {mode!r}")
    if mode == "none":
        return None
    weights = torch.as_tensor(sample_weights(mode, labels), dtype=torch.double)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                 generator=generator)
