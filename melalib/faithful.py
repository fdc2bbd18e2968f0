"""Whether maps are faithful to the model, and how much the frame border drives it.

- `border_occlusion`: the explained class's probability before and after the outer band
  (`melalib.localize.border_band`) is replaced by the normalised mean colour (0): a large
  change means the prediction lives partly in the dermoscope's rim or the frame corners.
- `deletion_insertion`: the probability as the map's most relevant pixels are removed
  (deletion: a faithful map makes it fall fast, a low area) or revealed on a blank image
  (insertion: it rises fast, a high area), over ``steps`` equal fractions of the pixels;
  ``order="random"`` gives the same curves for a random pixel order, the baseline a map
  must beat. Areas are the mean probability over the curve's points (trapezoid rule).
- `run_faithfulness`: both, for a run's explained rows (`melalib.explain.explain`), each
  row by its fold's model.

Everything runs on the inputs as the model saw them (validation transform, metadata and a
dual model's other image held fixed, `melalib.explain.ImageOnlyWrapper`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import ConfigError, DataError
from .explain import Explanation, ImageOnlyWrapper, fold_inputs
from .localize import BORDER, border_band
from .runs import RunDir
from .tasks import Task

ORDERS = ("cam", "random")


def class_probability(model: nn.Module, batch: dict[str, Any], images: torch.Tensor,
                      classes: Sequence[int], task: Task) -> np.ndarray:
    """P(explained class) of ``images`` (N, C, H, W) in place of the batch's first image,
    metadata (and a dual model's second image) held fixed. Binary: class 1 = the
    positive probability, 0 its complement."""
    device = next(model.parameters()).device
    meta = batch.get("meta")
    wrapper = ImageOnlyWrapper(model, meta=None if meta is None else meta.to(device).float(),
                               image2=batch["image2"].to(device).float()
                               if batch.get("image2") is not None else None).eval()
    with torch.no_grad():
        logits = wrapper(images.to(device).float()).float()
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=logits.device)
    if logits.shape[1] == 1:  # binary: one logit
        p = logits[:, 0].sigmoid()
        return torch.where(idx == 1, p, 1 - p).cpu().numpy().astype(np.float64)
    probs = logits.softmax(1) if task.kind == "multiclass" else logits.sigmoid()
    return probs[torch.arange(len(idx)), idx].cpu().numpy().astype(np.float64)


def border_occlusion(model: nn.Module, batch: dict[str, Any], classes: Sequence[int],
                     task: Task, border: float = BORDER) -> pd.DataFrame:
    """Per image: ``prob`` of the explained class, ``prob_border_occluded`` with the outer
    band set to the mean colour, and ``border_change`` (occluded minus original)."""
    image = batch["image"].float()
    band = torch.from_numpy(border_band(tuple(image.shape[-2:]), border))
    occluded = image.masked_fill(band, 0.0)
    before = class_probability(model, batch, image, classes, task)
    after = class_probability(model, batch, occluded, classes, task)
    return pd.DataFrame({"prob": before, "prob_border_occluded": after,
                         "border_change": after - before})


def _orders(cams: np.ndarray, order: str, seed: int) -> np.ndarray:
    """Pixel indices per image, most relevant first (ties broken at random, seeded)."""
    rng = np.random.default_rng(seed)
    flat = cams.reshape(len(cams), -1)
    jitter = rng.random(flat.shape)
    if order == "random":
        return np.argsort(jitter, axis=1)
    return np.lexsort((jitter, -flat), axis=1) if flat.size else np.zeros_like(flat, int)


def deletion_insertion(model: nn.Module, batch: dict[str, Any], cams: np.ndarray,
                       classes: Sequence[int], task: Task, steps: int = 8,
                       order: str = "cam", seed: int = 0) -> pd.DataFrame:
    """Per image: ``deletion`` and ``insertion`` areas (mean P(explained class) over the
    ``steps`` + 1 points, trapezoid rule) for the map's pixel order, or a random one."""
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    image = batch["image"].float()
    n, _, h, w = image.shape
    if tuple(np.shape(cams)) != (n, h, w):
        raise DataError(f"maps {np.shape(cams)} do not match the images {(n, h, w)}")
    ranks = np.empty((n, h * w), dtype=np.int64)
    np.put_along_axis(ranks, _orders(np.asarray(cams), order, seed),
                      np.arange(h * w)[None].repeat(n, 0), axis=1)
    ranks_t = torch.from_numpy(ranks.reshape(n, 1, h, w))
    curves: dict[str, list[np.ndarray]] = {"deletion": [], "insertion": []}
    for k in np.linspace(0, h * w, steps + 1).round().astype(int):
        top = ranks_t < int(k)  # the k most relevant pixels
        curves["deletion"].append(class_probability(
            model, batch, image.masked_fill(top, 0.0), classes, task))
        curves["insertion"].append(class_probability(
            model, batch, image.masked_fill(~top, 0.0), classes, task))
    return pd.DataFrame({name: np.trapezoid(np.stack(c, axis=1), dx=1.0 / steps, axis=1)
                         for name, c in curves.items()})


def run_faithfulness(run: RunDir, explanation: Explanation, border: float = BORDER,
                     steps: int = 8, device: str = "auto", seed: int = 0) -> pd.DataFrame:
    """`border_occlusion` and `deletion_insertion` (map order and random order:
    ``deletion_random`` / ``insertion_random``) for an explanation's rows, in row order.
    Maps averaged over TTA views are applied to the untransformed view."""
    rows, cams = explanation.rows, explanation.cams
    parts = []
    for inputs in fold_inputs(run, rows, device):
        classes = rows["explained"].to_numpy()[inputs.at].tolist()
        if inputs.task != run.task:
            raise ConfigError("faithfulness of a diagnosis-trained run (target=diagnosis) is "
                              "not supported: its model has other classes than the run")
        occ = border_occlusion(inputs.model, inputs.batch, classes, inputs.task, border)
        cam = deletion_insertion(inputs.model, inputs.batch, cams[inputs.at], classes,
                                 inputs.task, steps, "cam", seed)
        rnd = deletion_insertion(inputs.model, inputs.batch, cams[inputs.at], classes,
                                 inputs.task, steps, "random", seed)
        part = pd.concat([occ, cam, rnd.add_suffix("_random")], axis=1)
        parts.append(part.set_index(pd.Index(inputs.at)))
    if not parts:
        return pd.DataFrame(columns=["prob", "prob_border_occluded", "border_change", "deletion",
                                     "insertion", "deletion_random", "insertion_random"])
    return pd.concat(parts).sort_index().reset_index(drop=True)
