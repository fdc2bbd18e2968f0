"""melalib: multimodal skin-lesion classification (dermoscopy images + patient metadata)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ImageError,
    LeakageError,
    MelalibError,
    RunExistsError,
)
from .table import LesionTable
from .tasks import Task

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "DataConfig", "DataError", "ImageError", "LeakageError",
    "LesionTable", "MelalibError", "ModelConfig", "RunConfig", "RunExistsError", "Task",
    "TrainConfig", "__version__", "train",
]


def train(cfg: RunConfig, fold: int | None = None, *, table: LesionTable | None = None,
          progress: bool = True):
    """Train ``cfg`` on one fold (or every fold), on its dataset or on ``table``; see
    `melalib.engine.train`."""
    from .engine import train as _train  # the engine imports timm: not on `import melalib`

    return _train(cfg, fold=fold, table=table, progress=progress)
