"""Image shift: how far an image lies from the images a fold's model was trained on.

Beside the metadata drift (`MetaEncoder.drift`), every prediction gets an out-of-distribution
score from the model's own penultimate image features (the pooled backbone output, first
image): the Mahalanobis distance to the fold's training rows, with a Ledoit-Wolf shrinkage
covariance. At training time (`fit_fold_shift`, called by the engine once a fold's best
model is known) the statistics and a threshold are stored per fold through
`RunDir.shift_path`; the threshold is the ``FLAG_QUANTILE`` quantile of the fold's own
out-of-fold images' distances, so about 5 % of in-domain images are flagged.

At prediction (`inference`) each fold's distance is divided by its threshold and the folds
are averaged: ``image_shift`` (1.0 = the in-domain 95th percentile) and ``image_shift_flag``
(``image_shift > 1``). Runs trained before this have no statistics: the columns are absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.covariance import LedoitWolf
from torch import nn
from torch.utils.data import DataLoader

from .config import RunConfig
from .data.images import read_image
from .errors import CheckpointError, RunExistsError
from .io import atomic_path
from .metrics import roc_auc
from .runtime import make_dataset, make_loader, to_device
from .table import LesionTable

FLAG_QUANTILE = 0.95  # share of in-domain (OOF) images below the threshold
MAX_TRAIN_ROWS = 10_000  # training rows the statistics are fitted on (a seeded sample)
SCORE, FLAG = "image_shift", "image_shift_flag"  # prediction columns


@dataclass
class ShiftStats:
    """One fold's feature statistics: mean, shrinkage precision matrix, OOF threshold."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    n_train: int

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N, D) to the training rows."""
        d = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance in units of the threshold (> 1: beyond the in-domain quantile)."""
        return self.distance(features) / self.threshold

    def save(self, path: str | os.PathLike[str]) -> Path:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, mean=self.mean.astype(np.float32),
                     precision=self.precision.astype(np.float32),
                     threshold=np.float64(self.threshold), n_train=np.int64(self.n_train))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ShiftStats:
        """Read a stored file (arrays only, no pickle); CheckpointError if unreadable."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mean"].astype(np.float64), z["precision"].astype(np.float64),
                           float(z["threshold"]), int(z["n_train"]))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: cannot read the image-shift statistics: {exc}"
                                  ) from exc


def fit_stats(train_features: np.ndarray, oof_features: np.ndarray,
              quantile: float = FLAG_QUANTILE) -> ShiftStats:
    """Mean and Ledoit-Wolf precision of the training features; threshold: the
    ``quantile`` of the out-of-fold features' distances."""
    x = np.asarray(train_features, dtype=np.float64)
    lw = LedoitWolf(assume_centered=False).fit(x)
    stats = ShiftStats(lw.location_, lw.precision_, 1.0, len(x))
    stats.threshold = max(float(np.quantile(stats.distance(oof_features), quantile)), 1e-12)
    return stats


def feature_module(model: nn.Module) -> nn.Module | None:
    """The module whose output are the image features (a `FusionNet`'s backbone); None for
    a metadata-only model."""
    return getattr(model, "backbone", None)


@torch.no_grad()
def image_features(model: nn.Module, loader: DataLoader, device: torch.device,
                   channels_last: bool = False) -> np.ndarray:
    """Pooled backbone features (N, D) of the loader's first images, in dataset order."""
    backbone = feature_module(model)
    if backbone is None:
        raise CheckpointError("a metadata-only model has no image features")
    model.eval()
    feats, index = [], []
    for batch in loader:
        batch = to_device(batch, device, channels_last)
        feats.append(backbone(batch["image"]).float().flatten(1).cpu().numpy())
        index.append(batch["index"].cpu().numpy())
    if not feats:
        return np.zeros((0, 0))
    out = np.concatenate(feats)
    ordered = np.empty_like(out)
    ordered[np.concatenate(index)] = out
    return ordered


def frame_features(model: nn.Module, cfg: RunConfig, table: LesionTable, df: pd.DataFrame,
                   device: torch.device, batch_size: int, num_workers: int = 0) -> np.ndarray:
    """`image_features` of the rows ``df`` of ``table`` (evaluation transforms, no TTA)."""
    dataset = make_dataset(cfg, table, df, None, train=False, labelled=False)
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0, num_workers=num_workers)
    return image_features(model, loader, device, cfg.train.channels_last)


def fit_fold_shift(model: nn.Module, cfg: RunConfig, table: LesionTable,
                   train_df: pd.DataFrame, val_df: pd.DataFrame, device: torch.device,
                   path: Path, batch_size: int) -> np.ndarray | None:
    """Fit and store (``path``) one fold's statistics: training rows (a seeded sample of
    at most `MAX_TRAIN_ROWS`), threshold from the validation (OOF) rows. Returns the OOF
    rows' scores (the engine stores them as the OOF frame's `SCORE` column); None for a
    model without images."""
    if feature_module(model) is None or len(train_df) < 2 or len(val_df) == 0:
        return None
    if len(train_df) > MAX_TRAIN_ROWS:
        train_df = train_df.sample(MAX_TRAIN_ROWS, random_state=cfg.train.seed)
    workers = cfg.data.num_workers
    oof = frame_features(model, cfg, table, val_df, device, batch_size, workers)
    stats = fit_stats(frame_features(model, cfg, table, train_df.reset_index(drop=True), device,
                                     batch_size, workers), oof)
    stats.save(path)
    return stats.score(oof)


def separation(in_domain: np.ndarray, shifted: np.ndarray) -> float:
    """AUROC of the score telling ``shifted`` rows from ``in_domain`` ones (0.5: chance)."""
    a, b = np.asarray(in_domain, dtype=float), np.asarray(shifted, dtype=float)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    s = np.r_[a, b]
    return roc_auc(y, s / (1.0 + s))  # a monotone map into [0, 1) for the AUC


def simulate_camera(table: LesionTable, folder: str | os.PathLike[str], contrast: float = 0.5,
                    tint: tuple[float, float, float] = (1.3, 0.9, 0.6)) -> LesionTable:
    """A copy of ``table`` whose images look taken with another camera: contrast scaled by
    ``contrast`` around the image mean, channels tinted; written as PNGs under ``folder``
    (created; only a folder this function made, marked ``.melalib-camera``, or an empty
    one is written to). Image ids get a ``_camera`` suffix. For demonstrations and tests."""
    out = Path(folder)
    marker = out / ".melalib-camera"
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise RunExistsError(f"{out} holds files melalib did not write; pick another folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    df = table.df.copy()
    paths = []
    for i, path in enumerate(df["image_path"]):
        image = read_image(path).astype(np.float64)
        image = (image - image.mean()) * contrast + image.mean() * np.asarray(tint)
        target = out / f"{i:06d}_{Path(path).stem}.png"
        with atomic_path(target) as tmp:
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(tmp, format="PNG")
        paths.append(str(target))
    df["image_path"] = paths
    df["image_id"] = df["image_id"].astype(str) + "_camera"
    return LesionTable(df, table.task, origin=f"{table.origin} (simulated camera)")


def summary(scores: np.ndarray) -> str:
    """One line: the share of images beyond the in-domain threshold."""
    flagged = int(np.sum(scores > 1.0))
    return (f"image shift: {flagged} of {len(scores)} images ({flagged / max(len(scores), 1):.0%})"
            f" lie beyond the {FLAG_QUANTILE:.0%} quantile of the training folds' out-of-fold "
            f"images (about {1 - FLAG_QUANTILE:.0%} expected in-domain); column {SCORE}")
