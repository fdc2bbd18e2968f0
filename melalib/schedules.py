"""Learning-rate schedules: `SCHEDULES` (the ``scheduler`` choices) and `build_scheduler`.

- ``cosine``: linear warm-up over ``warmup_epochs``, then cosine decay to 1 % of ``lr``,
  stepped once per optimizer step;
- ``plateau``: halve the rate when the validation score stalls for an epoch (stepped by the
  training loop with the epoch's score);
- ``none``: a constant rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .registry import Registry

if TYPE_CHECKING:  # type hints only: config reads SCHEDULES from this module
    from .config import TrainConfig

#: schedules stepped once per epoch with the validation score, not per optimizer step
PER_EPOCH = ("plateau",)
#: the ``scheduler`` choices: name -> ``(train_cfg, optimizer, steps_per_epoch) -> schedule``
SCHEDULES: Registry[Callable[[TrainConfig, torch.optim.Optimizer, int], Any]] = Registry(
    "scheduler")


def build_scheduler(train_cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> Any:
    """The ``train_cfg.scheduler`` schedule of ``optimizer``."""
    return SCHEDULES[train_cfg.scheduler](train_cfg, optimizer, steps_per_epoch)


@SCHEDULES.register("cosine")
def cosine(t: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 1 % of ``lr``."""
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(round(t.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@SCHEDULES.register("plateau")
def plateau(t: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """Halve the rate when the validation score stalls for an epoch."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                      patience=1)


@SCHEDULES.register("none")
def constant(t: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """A constant rate."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
