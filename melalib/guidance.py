"""Training that looks at the lesion (issue 25): a loss on the class-activation map's mass
outside the true lesion mask.

With a backbone whose last feature map ``A`` (C, h, w) is average-pooled into a linear head
(`models.FusionNet`: ``head.fc`` over the concatenated features, image branch first), the
class-activation map of class ``c`` is ``CAM_c = sum_k W[c, k] A_k``; Grad-CAM at that layer
is exactly ``ReLU(CAM_c)`` up to scale (its channel weights are the pooled gradients
``W[c, k] / (h w)``). `CamGuide` captures ``A`` with a forward hook on
`models.pooled_layer` (the module ``global_pool`` averages: Grad-CAM's ``pooled`` layer, one
definition for both) during training steps only, and `outside_share` is, per image, the share of
``ReLU(CAM)`` mass that falls outside the mask (the mask averaged onto ``A``'s grid: each
cell counts by its lesion fraction). The training loss adds ``cam_guidance`` times its mean
over the batch's images that have a mask (`RowMasks`: rows whose mask file is absent train
unguided). The class explained is the row's training target (multilabel: its class; binary:
the one logit). Validation, TTA and prediction never see masks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import ConfigError
from .localize import MaskSource, read_mask
from .models import feature_dim, pooled_layer
from .tasks import Task

log = logging.getLogger("melalib")
EPS = 1e-6


@dataclass(frozen=True)
class RowMasks:
    """Each row's mask file (None: no mask), read on demand as a (H, W) bool array resized
    (nearest neighbour) to the row's decoded image; a `data.dataset.LesionDataset` asks it
    per item."""

    paths: tuple[Path | None, ...]

    @classmethod
    def of(cls, df: pd.DataFrame, source: MaskSource) -> RowMasks:
        """Every row of ``df`` (``image_id``, ``image_path``) under ``source``."""
        found = []
        for image_id, image_path in zip(df["image_id"].astype(str), df["image_path"].astype(str),
                                        strict=True):
            path = source.path(image_id, image_path)
            found.append(path if path.is_file() else None)
        return cls(tuple(found))

    @property
    def n_found(self) -> int:
        return sum(p is not None for p in self.paths)

    def __call__(self, i: int, shape: tuple[int, int]) -> np.ndarray | None:
        path = self.paths[i]
        if path is None:
            return None
        mask = read_mask(path)
        if mask.shape != shape:
            img = Image.fromarray(mask.astype(np.uint8) * 255)
            mask = np.asarray(img.resize((shape[1], shape[0]), Image.NEAREST)) > 127
        return mask


def row_masks(df: pd.DataFrame, folder: str, pattern: str, what: str = "training") -> RowMasks:
    """The rows' masks; ConfigError naming the folder and the first expected file when none
    of the rows has one (never a silent run without guidance)."""
    source = MaskSource(folder, pattern)
    masks = RowMasks.of(df, source)
    if not masks.n_found:
        first = source.path(str(df["image_id"].iat[0]), str(df["image_path"].iat[0])) \
            if len(df) else Path(folder) / pattern
        raise ConfigError(f"cam_guidance: none of the {len(df)} {what} rows has a mask in "
                          f"{folder!r} (guide_mask_pattern {pattern!r}; the first row's "
                          f"would be {first})")
    log.info("cam_guidance: %d of %d %s rows have a lesion mask in %s", masks.n_found,
             len(df), what, folder)
    return masks


def target_classes(task: Task, target: torch.Tensor) -> torch.Tensor:
    """Per row, the output whose map is guided: the class (multiclass), the labelled class
    (multilabel one-hot), or 0 (binary's one logit); -1 where the row has no label."""
    if task.kind == "multiclass":
        return target.long()
    if task.kind == "multilabel":
        return torch.where(target.sum(1) > 0, target.argmax(1), -1)
    return torch.where(target >= 0, 0, -1).long().reshape(-1)


def outside_share(maps: torch.Tensor, weights: torch.Tensor, masks: torch.Tensor
                  ) -> torch.Tensor:
    """Per image, the share of ``ReLU(sum_k weights[b, k] maps[b, k])`` outside ``masks``.

    ``maps`` (B, C, h, w) feature maps, ``weights`` (B, C) each image's class weights,
    ``masks`` (B, H, W) lesion masks at any resolution (averaged onto the (h, w) grid).
    An all-zero map has share 0 (nothing to move)."""
    cam = torch.einsum("bchw,bc->bhw", maps.float(), weights.float()).relu()
    lesion = F.adaptive_avg_pool2d(masks.float()[:, None], cam.shape[-2:])[:, 0]
    return (cam * (1.0 - lesion)).sum((1, 2)) / (cam.sum((1, 2)) + EPS)


def _pooled(backbone: nn.Module) -> nn.Module | None:
    """`models.pooled_layer`, or None when the backbone has no such layer."""
    try:
        return pooled_layer(backbone)
    except ConfigError:
        return None


class CamGuide:
    """The guidance term of a `FusionNet`'s training loss (see the module docstring); create
    it after any deep copy of the model (an EMA), which would copy its hook."""

    def __init__(self, model: nn.Module, task: Task, weight: float) -> None:
        backbone = getattr(model, "backbone", None)
        fc = getattr(getattr(model, "head", None), "fc", None)
        layer = _pooled(backbone) if isinstance(backbone, nn.Module) else None
        if layer is None or not isinstance(fc, nn.Linear):
            raise ConfigError(f"cam_guidance needs an image backbone with a global_pool and a "
                              f"linear head; {type(model).__name__} has none")
        self.task, self.weight, self.fc = task, float(weight), fc
        self.n_image = feature_dim(backbone)
        self._maps: list[torch.Tensor] = []
        self._hook = layer.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: Sequence[Any], output: torch.Tensor) -> None:
        if torch.is_grad_enabled():  # a training step, not validation or prediction
            self._maps.append(output)

    def clear(self) -> None:
        """Forget maps captured outside a loss computation."""
        self._maps.clear()

    def penalty(self, batch: dict[str, Any]) -> torch.Tensor:
        """``weight`` x the mean outside share over the batch's rows with a mask and a label
        (0 when there are none); the first captured map is the image branch's."""
        maps = self._maps[0] if self._maps else None
        self._maps.clear()
        if maps is None:
            raise ConfigError("cam_guidance: no feature map was captured in this training step")
        if maps.shape[1] != self.n_image:
            raise ConfigError(f"cam_guidance: the pooled map has {maps.shape[1]} channels, the "
                              f"head's image features {self.n_image} (a pre-logits layer?)")
        classes = target_classes(self.task, batch["target"])
        use = (batch["has_mask"] > 0) & (classes >= 0)
        if not bool(use.any()):
            return maps.sum() * 0.0
        weights = self.fc.weight[classes[use], : self.n_image]
        share = outside_share(maps[use], weights, batch["mask"][use, 0])
        return self.weight * share.mean()

    def remove(self) -> None:
        """Detach the hook."""
        self._hook.remove()
