"""What training, prediction and Grad-CAM share: datasets, loaders and the prediction loop.

- datasets: `fold_data` (a fold's rows and its metadata encoder, fitted on the training
  rows only) and `make_dataset` (a `LesionDataset` with the run's transforms);
- loaders: `make_loader` (seeded, workers seeded by `seed_worker`), `to_device`, `forward`;
- prediction: `predict_probs` (probabilities averaged over TTA views), `probs_from_logits`,
  `predict_distributed` (sharded across DDP ranks, gathered).

Device, precision and seeding live in `melalib.device`; the model from a checkpoint in
`melalib.checkpoints.load_model`. `melalib.engine` trains with these; `melalib.inference`
and `melalib.explain` predict with them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import distributed as ddp
from .config import RunConfig
from .data.dataset import LesionDataset
from .data.images import ImageOptions
from .device import FP32, Precision
from .errors import ConfigError, MelalibError
from .features import MetaEncoder, blanked_variants
from .guidance import row_masks
from .models import input_normalization
from .progress import bar
from .pseudo import check_validation, with_pseudo_rows
from .table import LesionTable
from .tasks import Task
from .transforms import build_transforms, tta_views

if TYPE_CHECKING:  # a type hint only: the model's stored preprocessing
    from .checkpoints import Preprocessing


# ----------------------------------------------------------------------------- datasets
@dataclass
class FoldData:
    """One fold's training, validation and test rows, and their encoded metadata."""

    train_df: pd.DataFrame
    val_df: pd.DataFrame
    test_df: pd.DataFrame
    encoder: MetaEncoder
    meta_train: np.ndarray | None
    meta_val: np.ndarray | None
    meta_test: np.ndarray | None


def fold_data(cfg: RunConfig, table: LesionTable, fold: int) -> FoldData:
    """Split by fold and fit the metadata encoder on the training rows only; pseudo-labelled
    test rows (`melalib.pseudo`) join the training rows, never the validation rows."""
    df = table.df
    train_df, val_df = (d.reset_index(drop=True) for d in table.fold(fold))
    test_df = df[df["split"] == "test"].reset_index(drop=True)
    train_df = with_pseudo_rows(train_df, df, table.task)
    check_validation(val_df, df)
    if train_df.empty or val_df.empty:
        raise ConfigError(f"fold {fold} has {len(train_df)} training and {len(val_df)} "
                          "validation rows; every fold needs both")
    use_meta = cfg.model.use_meta and cfg.data.features != "none"
    preset = cfg.data.features if use_meta else "none"
    encoder = MetaEncoder(preset, file_size=cfg.data.file_size_feature).fit(train_df)
    if cfg.model.use_meta and not cfg.model.use_image and encoder.dim == 0:
        raise ConfigError("a metadata-only model needs metadata features (features != none)")
    meta = [encoder.transform(d) if len(d) else np.zeros((0, encoder.dim), np.float32)
            for d in (train_df, val_df, test_df)]
    return FoldData(train_df, val_df, test_df, encoder, *meta)


def check_pairing(cfg: RunConfig, table: LesionTable) -> None:
    """ConfigError when ``dual_image=true`` meets a table without second images."""
    if cfg.model.dual_image and not table.paired:
        raise ConfigError("dual_image=true needs a paired dataset (image_path_2), e.g. milk10k "
                          "or synthetic_task=paired")


def make_dataset(cfg: RunConfig, table: LesionTable, df: pd.DataFrame, meta: np.ndarray | None,
                 *, train: bool, labelled: bool = True, seed: int = 0,
                 encoder: MetaEncoder | None = None,
                 preprocessing: Preprocessing | None = None) -> LesionDataset:
    """Rows ``df`` of ``table`` as model inputs, with the run's (training or evaluation)
    transforms normalised as the backbone's weights expect; a training dataset given the
    fold's ``encoder`` blanks metadata under ``meta_blanking`` (`features.blanked_variants`).
    ``preprocessing``: a trained model's own (`checkpoints.Preprocessing`, from its
    checkpoint): input size, aspect, mean / std and image options come from it."""
    check_pairing(cfg, table)
    if preprocessing is None:
        mean, std = input_normalization(cfg.model)
        size, aspect, options = cfg.data.image_size, cfg.data.aspect, \
            ImageOptions.from_config(cfg.data)
    else:
        p = preprocessing
        mean, std, size, aspect, options = p.mean, p.std, p.image_size, p.aspect, \
            p.image_options
    transform = build_transforms(size, train=train, strength=cfg.data.augment,
                                 seed=seed, aspect=aspect, mean=mean, std=std,
                                 border_aug=cfg.data.border_aug)
    blanking = cfg.train.meta_blanking if train and encoder is not None and meta is not None \
        and meta.shape[1] else 0.0
    guided = train and cfg.train.cam_guidance > 0 and cfg.model.use_image
    return LesionDataset(df, table.task, meta, transform, use_image=cfg.model.use_image,
                         paired=cfg.model.dual_image, labelled=labelled,
                         image_options=options,
                         meta_variants=blanked_variants(encoder, df) if blanking else None,
                         meta_blanking=blanking,
                         masks=row_masks(df, cfg.data.guide_masks, cfg.data.guide_mask_pattern)
                         if guided else None)


# ------------------------------------------------------------------------------ loaders
def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and Python seeded from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int,
                num_workers: int, sampler: Any = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose shuffle and worker seeds follow from ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      generator=generator, worker_init_fn=seed_worker,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """The batch's tensors on ``device`` (images channels-last when asked)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def forward(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The model's logits for a batch dict (``image``, ``meta``, ``image2`` when present)."""
    return model(image=batch.get("image"), meta=batch.get("meta"), image2=batch.get("image2"))


# ---------------------------------------------------------------------------- prediction
def probs_from_logits(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """Logits (N, n_outputs) to probabilities: softmax for a multiclass task, else sigmoid."""
    return logits.softmax(dim=1) if task.kind == "multiclass" else logits.sigmoid()


@torch.no_grad()
def predict_probs(model: nn.Module, loader: DataLoader, task: Task, device: torch.device,
                  precision: Precision | None = None, tta: int = 1, channels_last: bool = False,
                  loss_fn: nn.Module | None = None, progress: bool = False,
                  desc: str = "predict") -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities (N, n_outputs) averaged over ``tta`` views, the dataset indices, and the
    mean loss (NaN without ``loss_fn``). TTA averages probabilities, not logits."""
    precision = precision or FP32
    views = tta_views(tta)
    model.eval()
    probs, indices, losses, counts = [], [], 0.0, 0
    with bar(loader, desc=desc, leave=False, disable=not progress) as batches:
        for batch in batches:  # an error closes the bar before it is shown
            batch = to_device(batch, device, channels_last)
            acc = None
            for view in views:
                viewed = dict(batch)
                for key in ("image", "image2"):
                    if key in viewed:
                        viewed[key] = view(viewed[key])
                with precision.autocast(device):
                    logits = forward(model, viewed).float()
                if loss_fn is not None and view is views[0]:
                    losses += float(loss_fn(logits, batch["target"])) * len(logits)
                    counts += len(logits)
                p = probs_from_logits(logits, task)
                acc = p if acc is None else acc + p
            probs.append((acc / len(views)).cpu().numpy())
            indices.append(batch["index"].cpu().numpy())
    if not probs:
        return np.zeros((0, task.n_outputs)), np.zeros(0, dtype=np.int64), float("nan")
    mean_loss = losses / counts if counts else float("nan")
    return np.concatenate(probs), np.concatenate(indices), mean_loss


def predict_distributed(model: nn.Module, dataset: Dataset, task: Task, device: torch.device,
                        info: ddp.DistInfo, batch_size: int, num_workers: int,
                        **kwargs: Any) -> tuple[np.ndarray, float]:
    """Predict every item of ``dataset`` (sharded across ranks, gathered, in dataset order)."""
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                 shuffle=False) if info.enabled else None
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0, num_workers=num_workers,
                         sampler=sampler)
    probs, idx, loss = predict_probs(model, loader, task, device, **kwargs)
    parts = ddp.gather_objects((probs, idx, loss, len(idx)), info)
    out = np.zeros((len(dataset), task.n_outputs), dtype=np.float64)
    seen = np.zeros(len(dataset), dtype=bool)
    total_loss, total_n = 0.0, 0
    for p, i, lo, n in parts:
        out[i] = p
        seen[i] = True
        if n and not math.isnan(lo):
            total_loss += lo * n
            total_n += n
    if not seen.all():  # pragma: no cover - DistributedSampler pads, never drops
        raise MelalibError("prediction missed some items")
    return out, (total_loss / total_n if total_n else float("nan"))
