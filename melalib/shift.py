"""Image shift: how far an image lies from the images a fold's model was trained on.

Beside the metadata drift (`MetaEncoder.drift`), every prediction gets an out-of-distribution
score from the model's own image features (first image): the "style" of the image at an
early stage of the backbone -- the channel means and standard deviations of the feature map
at 1/4 of the input resolution (`STYLE_REDUCTION`, `style_layer`, `style_statistics`; Lee et
al. 2018) -- z-scored by the fold's training rows, then its Mahalanobis distance to them with
a Ledoit-Wolf shrinkage covariance. Early-stage statistics describe how an image was taken
and stored (colour, illumination, sharpness, resolution, JPEG compression) more than its
diagnosis; the pooled penultimate features, which training makes diagnosis-specific, hardly
move with it. On HAM10000 -> MILK10k dermoscopic images (`benchmarks/shift_scores.py`,
docs/techniques.md) the style score separates the two at AUROC 0.97, the pooled-feature
Mahalanobis distance at 0.51; with the MILK10k files re-stored at HAM10000's size and JPEG
quality it drops to 0.66, so much of what it sees there is how the two datasets' files were
made. It flags images unlike the training images; it does not say which prediction is wrong
(flagged MILK10k images were misclassified about as often as unflagged ones).

At training time (`fit_fold_shift`, called by the engine once a fold's best model is known)
the statistics and a threshold are stored per fold through `RunDir.shift_path` (arrays only,
format `FORMAT_VERSION`, with the fold's OOF scores: `oof_scores`); the threshold is the
``FLAG_QUANTILE`` quantile of the fold's own out-of-fold images' distances, so about 5 % of
in-domain images are flagged. `refit_run` fits a finished run's statistics again without
retraining (writing only its shift files), e.g. to upgrade an older run.

At prediction (`inference`) each fold's distance is divided by its threshold and the folds
are averaged: ``image_shift`` (1.0 = the in-domain 95th percentile) and ``image_shift_flag``
(``image_shift > 1``). Files of format 1 (runs trained before, Mahalanobis on the pooled
features: kind `POOLED`) still load and score as they did; runs trained before any
statistics have none: the columns are absent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.covariance import LedoitWolf
from torch import nn
from torch.utils.data import DataLoader

from .checkpoints import Preprocessing, load_model
from .config import RunConfig
from .data.images import read_image
from .device import resolve_device
from .errors import CheckpointError, RunExistsError
from .io import atomic_path
from .metrics import roc_auc
from .runs import RunDir
from .runtime import fold_data, make_dataset, make_loader, to_device
from .table import LesionTable

FLAG_QUANTILE = 0.95  # share of in-domain (OOF) images below the threshold
MAX_TRAIN_ROWS = 10_000  # training rows the statistics are fitted on (a seeded sample)
SCORE, FLAG = "image_shift", "image_shift_flag"  # prediction columns
#: The stored file's format: 1 (no ``version`` key: Mahalanobis on the pooled features,
#: written before the style score) or 2 (``kind``, ``layer``, ``center`` / ``scale``).
FORMAT_VERSION = 2
POOLED, STYLE = "pooled-mahalanobis", "style-mahalanobis"  # the stored ``kind``s
#: The backbone stage whose feature map's style statistics are scored: the ``feature_info``
#: stage at this input reduction (Lite0: ``blocks.1``; a ResNet: ``layer1``), else the
#: closest one.
STYLE_REDUCTION = 4


@dataclass
class ShiftStats:
    """One fold's feature statistics: Ledoit-Wolf mean and precision of the (z-scored)
    training features, the OOF threshold, and which features they describe: ``layer`` ""
    is the pooled backbone output (``kind`` `POOLED`, the files written before version 2),
    else the module of the backbone whose map's style statistics (`style_statistics`) are
    scored (`STYLE`). ``oof_ids`` / ``oof_scores``: the fold's OOF images and their scores
    when the statistics were fitted (`oof_scores`; empty in version-1 files)."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    n_train: int
    layer: str = ""
    center: np.ndarray | None = None
    scale: np.ndarray | None = None
    oof_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    oof_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def kind(self) -> str:
        return STYLE if self.layer else POOLED

    def standardised(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if self.center is not None:
            x = x - self.center
        return x / self.scale if self.scale is not None else x

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N, D) to the training rows."""
        d = self.standardised(features) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance in units of the threshold (> 1: beyond the in-domain quantile)."""
        return self.distance(features) / self.threshold

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Arrays only (``np.savez``, no pickle), float32 statistics, version 2."""
        arrays: dict[str, np.ndarray] = dict(
            version=np.int64(FORMAT_VERSION), kind=np.str_(self.kind), layer=np.str_(self.layer),
            mean=self.mean.astype(np.float32), precision=self.precision.astype(np.float32),
            threshold=np.float64(self.threshold), n_train=np.int64(self.n_train),
            oof_ids=np.asarray(self.oof_ids, dtype=str),
            oof_scores=np.asarray(self.oof_scores, dtype=np.float32))
        if self.center is not None and self.scale is not None:
            arrays.update(center=self.center.astype(np.float32),
                          scale=self.scale.astype(np.float32))
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ShiftStats:
        """Read a stored file, version 1 or 2 (arrays only, no pickle); CheckpointError if
        unreadable or of a later version."""
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["version"]) if "version" in z.files else 1
                if version > FORMAT_VERSION:
                    raise ValueError(f"format version {version}; this melalib reads up to "
                                     f"{FORMAT_VERSION}: upgrade melalib")
                f64 = lambda key: z[key].astype(np.float64) if key in z.files else None  # noqa: E731
                return cls(f64("mean"), f64("precision"), float(z["threshold"]),
                           int(z["n_train"]), str(z["layer"]) if version > 1 else "",
                           f64("center"), f64("scale"),
                           z["oof_ids"].astype(str) if "oof_ids" in z.files
                           else np.zeros(0, dtype=str),
                           f64("oof_scores") if "oof_scores" in z.files else np.zeros(0))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: cannot read the image-shift statistics: {exc}"
                                  ) from exc


def fit_stats(train_features: np.ndarray, oof_features: np.ndarray,
              quantile: float = FLAG_QUANTILE, layer: str = "",
              standardise: bool | None = None) -> ShiftStats:
    """Mean and Ledoit-Wolf precision of the training features; threshold: the
    ``quantile`` of the out-of-fold features' distances. ``standardise`` (default: for
    style statistics, ``layer`` set): z-score each feature by the training rows first, so
    the shrinkage target treats channels of different scales alike."""
    x = np.asarray(train_features, dtype=np.float64)
    center = scale = None
    if layer if standardise is None else standardise:
        center, sd = x.mean(axis=0), x.std(axis=0)
        scale = np.where(sd > 1e-12, sd, 1.0)
        x = (x - center) / scale
    lw = LedoitWolf(assume_centered=False).fit(x)
    stats = ShiftStats(lw.location_, lw.precision_, 1.0, len(x), layer, center, scale)
    stats.threshold = max(float(np.quantile(stats.distance(oof_features), quantile)), 1e-12)
    return stats


def feature_module(model: nn.Module) -> nn.Module | None:
    """The module whose output are the image features (a `FusionNet`'s backbone); None for
    a metadata-only model."""
    return getattr(model, "backbone", None)


def style_layer(backbone: nn.Module, reduction: int = STYLE_REDUCTION) -> str:
    """The module name (in ``backbone``) of the ``feature_info`` stage whose output is
    ``reduction`` times smaller than the input (else the stage closest to it); "" when the
    backbone lists no stages (then the pooled features are scored)."""
    info = getattr(backbone, "feature_info", None)
    try:
        stages = list(info.get_dicts()) if hasattr(info, "get_dicts") else list(info or [])
        best = min(stages, key=lambda s: (abs(np.log2(s["reduction"] / reduction)),
                                          s["reduction"]))
        backbone.get_submodule(best["module"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return ""
    return str(best["module"])


def style_statistics(feature_map: torch.Tensor) -> torch.Tensor:
    """Channel means and standard deviations over the positions of a (N, C, H, W) feature
    map: (N, 2C), the "style" of the image at that depth (Lee et al. 2018)."""
    flat = feature_map.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


@torch.no_grad()
def image_features(model: nn.Module, loader: DataLoader, device: torch.device,
                   channels_last: bool = False, layer: str = "") -> np.ndarray:
    """The loader's first images' features in dataset order: the pooled backbone output
    (N, D), or with ``layer`` (a module of the backbone) that module's `style_statistics`."""
    backbone = feature_module(model)
    if backbone is None:
        raise CheckpointError("a metadata-only model has no image features")
    model.eval()
    caught: list[torch.Tensor] = []
    hook = (backbone.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: caught.append(style_statistics(out))) if layer else None)
    feats, index = [], []
    try:
        for batch in loader:
            batch = to_device(batch, device, channels_last)
            pooled = backbone(batch["image"])
            out = caught.pop() if layer else pooled.float().flatten(1)
            feats.append(out.cpu().numpy())
            index.append(batch["index"].cpu().numpy())
    finally:
        if hook is not None:
            hook.remove()
    if not feats:
        return np.zeros((0, 0))
    out = np.concatenate(feats)
    ordered = np.empty_like(out)
    ordered[np.concatenate(index)] = out
    return ordered


def frame_features(model: nn.Module, cfg: RunConfig, table: LesionTable, df: pd.DataFrame,
                   device: torch.device, batch_size: int, num_workers: int = 0,
                   layer: str = "", preprocessing: Preprocessing | None = None) -> np.ndarray:
    """`image_features` of the rows ``df`` of ``table`` (evaluation transforms, no TTA)."""
    dataset = make_dataset(cfg, table, df, None, train=False, labelled=False,
                           preprocessing=preprocessing)
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0, num_workers=num_workers)
    return image_features(model, loader, device, cfg.train.channels_last, layer)


def fit_fold_shift(model: nn.Module, cfg: RunConfig, table: LesionTable,
                   train_df: pd.DataFrame, val_df: pd.DataFrame, device: torch.device,
                   path: Path, batch_size: int,
                   preprocessing: Preprocessing | None = None) -> np.ndarray | None:
    """Fit and store (``path``) one fold's statistics: the style statistics of the
    `style_layer` of the backbone for the training rows (a seeded sample of at most
    `MAX_TRAIN_ROWS`), threshold from the validation (OOF) rows. Returns the OOF rows'
    scores (the engine stores them as the OOF frame's `SCORE` column); None for a model
    without images."""
    backbone = feature_module(model)
    if backbone is None or len(train_df) < 2 or len(val_df) == 0:
        return None
    if len(train_df) > MAX_TRAIN_ROWS:
        train_df = train_df.sample(MAX_TRAIN_ROWS, random_state=cfg.train.seed)
    layer = style_layer(backbone)
    workers = cfg.data.num_workers

    def features(df: pd.DataFrame) -> np.ndarray:
        return frame_features(model, cfg, table, df.reset_index(drop=True), device,
                              batch_size, workers, layer, preprocessing)

    oof = features(val_df)
    stats = fit_stats(features(train_df), oof, layer=layer, standardise=True)
    scores = stats.score(oof)
    stats.oof_ids, stats.oof_scores = val_df["image_id"].astype(str).to_numpy(), scores
    stats.save(path)
    return scores


def refit_run(run_dir: str | os.PathLike[str], folds: Sequence[int] | None = None,
              device: str = "cpu", batch_size: int = 64) -> dict[int, Path]:
    """Fit a trained run's image-shift statistics again with this melalib's score, without
    retraining: each finished fold's best model (``folds``: those of them; default all)
    over its training and OOF rows, as `fit_fold_shift` does at training. Writes only the
    run's shift files (`RunDir.shift_path`; an older run's Mahalanobis files are replaced);
    the OOF files keep the score training wrote, the new OOF scores are in the shift files
    (`oof_scores`). Returns fold -> file written."""
    run = RunDir.read(run_dir)
    if run.cfg is None:
        raise CheckpointError(f"{run.path} holds no trained models (no config)")
    done = run.done_folds()
    wanted = done if folds is None else [int(k) for k in folds]
    missing = [k for k in wanted if k not in done]
    if missing:
        raise CheckpointError(f"{run.path}: fold(s) {missing} have not finished "
                              f"(finished: {done}); only finished folds can be refitted")
    dev = resolve_device(device)
    table = run.table()
    written = {}
    for k in wanted:
        loaded = load_model(run.checkpoint(k, "best"), dev, config=run.cfg)
        fd = fold_data(run.cfg, table, k)
        path = run.shift_path(k)
        if fit_fold_shift(loaded.model, run.cfg, table, fd.train_df, fd.val_df, dev, path,
                          batch_size, loaded.preprocessing) is not None:
            written[k] = path
    return written


def oof_scores(run: RunDir) -> np.ndarray | None:
    """The run's in-domain (out-of-fold) image-shift scores of its finished folds: from
    the shift files (version 2), else the OOF files' `SCORE` column; None without them."""
    parts = []
    for k in run.done_folds():
        path = run.shift_path(k)
        stats = ShiftStats.load(path) if path.is_file() else None
        if stats is not None and len(stats.oof_scores):
            parts.append(stats.oof_scores)
            continue
        oof = run.oof(k)
        if SCORE not in oof.columns:
            return None
        parts.append(oof[SCORE].dropna().to_numpy(dtype=float))
    return np.concatenate(parts) if parts else None


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
