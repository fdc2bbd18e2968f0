"""Training, validation and prediction loops: one loop for every task kind.

`train(cfg, fold)` trains one fold or all folds into ``outputs/<run>/``: AMP on CUDA (bf16, or
fp16 with a GradScaler) and a plain fp32 path on CPU, gradient accumulation and clipping,
channels_last, optional ``torch.compile`` and EMA, AdamW with cosine-warmup or plateau
schedules, an optional frozen-backbone warm-up followed by discriminative learning rates,
early stopping on the task's primary metric, best and last checkpoints, and a resume from
the last complete epoch after a crash. Randomness is re-seeded from (seed, fold, epoch) at
every epoch, so a resumed run reproduces an uninterrupted one on CPU.
Under ``torchrun`` the same entry point runs DistributedDataParallel.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from . import distributed as ddp
from . import progress as live
from .checkpoints import (
    check_compatible,
    ema_weights,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from .config import RunConfig
from .errors import ConfigError, MelalibError
from .io import write_csv, write_json
from .runs import RunDir, RunLock
from .table import LesionTable
from .tasks import Task

log = logging.getLogger("melalib")


# --------------------------------------------------------------------------- setup
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available; use device=cpu or auto")
    return device


@dataclass(frozen=True)
class Precision:
    enabled: bool
    dtype: torch.dtype
    scaler: bool

    def autocast(self, device: torch.device) -> Any:
        if not self.enabled:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_precision(cfg: RunConfig, device: torch.device) -> Precision:
    """fp32 on CPU; on CUDA bf16 where supported (auto), else fp16 with a GradScaler."""
    t = cfg.train
    if device.type != "cuda" or not t.amp:
        return Precision(False, torch.float32, False)
    # native bf16 only (Ampere+): torch's default also counts slow emulation (e.g. on a T4)
    bf16 = t.amp_dtype == "bf16" or (
        t.amp_dtype == "auto" and torch.cuda.is_bf16_supported(including_emulation=False))
    return Precision(True, torch.bfloat16 if bf16 else torch.float16, not bf16)


def seed_everything(seed: int) -> None:
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
    torch.backends.cudnn.benchmark = not flag
    torch.backends.cudnn.deterministic = flag


# --------------------------------------------------------------------- the run table
def build_table(cfg: RunConfig, run: RunDir | None = None) -> LesionTable:
    """Load the dataset, pre-flight its images, assign grouped folds; store it in the run."""
    from .data.adapters import load_table
    from .folds import assign_folds, check_predefined_folds

    table = load_table(cfg.data)
    table = preflight_images(table, cfg, run)
    if "fold" in table.df.columns:  # predefined (custom_fold_column)
        table = check_predefined_folds(table, cfg.data.n_folds)
    else:
        table = assign_folds(table, n_folds=cfg.data.n_folds, seed=cfg.data.fold_seed,
                             stratify=cfg.data.fold_stratify)
    if cfg.data.pseudo_run:
        from .pseudo import add_pseudo_labels

        table = add_pseudo_labels(table, cfg.data.pseudo_run, cfg.data.pseudo_threshold)
    table.validate()
    if run is not None:
        run.save_table(table)
    return table


def preflight_images(table: LesionTable, cfg: RunConfig, run: RunDir | None) -> LesionTable:
    """Every listed image must be readable; bad ones raise, or are skipped and logged.

    Image files next to the listed ones that the table does not name are counted in
    run.json (``n_unlisted_images``) and listed in ``unlisted_images.csv``, never fatal."""
    from .data.dataset import check_images_readable, find_unlisted_images
    from .data.images import ImageOptions
    from .errors import ImageError

    if not cfg.model.use_image:
        return table
    unlisted = find_unlisted_images(table.df)  # reported, never fatal
    if run is not None:
        run.update_info(n_unlisted_images=len(unlisted))
        if unlisted:
            write_csv(run.path / "unlisted_images.csv", pd.DataFrame({"path": unlisted}))
    if unlisted:
        log.warning("%d image file(s) next to the listed images are not in the table, e.g. %s",
                    len(unlisted), unlisted[0])
    bad = check_images_readable(table.df, workers=max(1, cfg.data.num_workers),
                                options=ImageOptions.from_config(cfg.data))
    if bad.empty:
        if run is not None:
            run.update_info(n_skipped_images=0)
        return table
    if run is not None:
        write_csv(run.path / "bad_images.csv", bad)
    where = f"; the list is in {run.path / 'bad_images.csv'}" if run is not None else ""
    if not cfg.data.skip_bad_images:
        first = bad.iloc[0]
        raise ImageError(
            f"{len(bad)} image(s) are missing or unreadable ({first['reason']}: {first['path']})"
            f"{where}. Fix or remove them, or set skip_bad_images=true to train without them "
            "(they are then listed in skipped_images.csv)",
            file=table.origin or None, row=int(first["row"]), column=str(first["column"]))
    rows = sorted(set(bad["row"].astype(int) - 1))
    keep = np.ones(len(table.df), dtype=bool)
    keep[rows] = False
    if run is not None:
        skipped = table.df.iloc[rows][["image_id", "split"]].assign(
            reason=bad.groupby("row")["reason"].first().to_numpy())
        write_csv(run.path / "skipped_images.csv", skipped)
        run.update_info(n_skipped_images=len(rows))
    log.warning("skip_bad_images: leaving out %d of %d images%s", len(rows), len(keep), where)
    return table.select(keep)


# ----------------------------------------------------------------------- data loaders
def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int,
                num_workers: int, sampler: Any = None, drop_last: bool = False) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      generator=generator, worker_init_fn=_seed_worker,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def forward(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return model(image=batch.get("image"), meta=batch.get("meta"), image2=batch.get("image2"))


# ------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_probs(model: nn.Module, loader: DataLoader, task: Task, device: torch.device,
                  precision: Precision | None = None, tta: int = 1, channels_last: bool = False,
                  loss_fn: nn.Module | None = None, progress: bool = False,
                  desc: str = "predict") -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities (N, n_outputs) averaged over ``tta`` views, the dataset indices, and the
    mean loss (NaN without ``loss_fn``). TTA averages probabilities, not logits."""
    from .transforms import tta_views

    precision = precision or Precision(False, torch.float32, False)
    views = tta_views(tta)
    model.eval()
    probs, indices, losses, counts = [], [], 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
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
            p = _probs_torch(logits, task)
            acc = p if acc is None else acc + p
        probs.append((acc / len(views)).cpu().numpy())
        indices.append(batch["index"].cpu().numpy())
    if not probs:
        return np.zeros((0, task.n_outputs)), np.zeros(0, dtype=np.int64), float("nan")
    mean_loss = losses / counts if counts else float("nan")
    return np.concatenate(probs), np.concatenate(indices), mean_loss


def _probs_torch(logits: torch.Tensor, task: Task) -> torch.Tensor:
    return logits.softmax(dim=1) if task.kind == "multiclass" else logits.sigmoid()


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


# --------------------------------------------------------------------------- schedule
def build_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
                    ) -> Any:
    t = cfg.train
    if t.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                          patience=1)
    if t.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(round(t.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------- folds
@dataclass
class FoldData:
    train_df: pd.DataFrame
    val_df: pd.DataFrame
    test_df: pd.DataFrame
    encoder: Any
    meta_train: np.ndarray | None
    meta_val: np.ndarray | None
    meta_test: np.ndarray | None


def fold_data(cfg: RunConfig, table: LesionTable, fold: int) -> FoldData:
    """Split by fold and fit the metadata encoder on the training rows only; pseudo-labelled
    test rows (`melalib.pseudo`) join the training rows, never the validation rows."""
    from .features import MetaEncoder
    from .pseudo import check_validation, with_pseudo_rows

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


def make_dataset(cfg: RunConfig, table: LesionTable, df: pd.DataFrame, meta: np.ndarray | None,
                 *, train: bool, labelled: bool = True, seed: int = 0) -> Dataset:
    from .data.dataset import LesionDataset
    from .data.images import ImageOptions
    from .transforms import build_transforms

    if cfg.model.dual_image and not table.paired:
        raise ConfigError("dual_image=true needs a paired dataset (image_path_2), e.g. milk10k "
                          "or synthetic_task=paired")
    from .models import input_normalization

    mean, std = input_normalization(cfg.model)
    transform = build_transforms(cfg.data.image_size, train=train, strength=cfg.data.augment,
                                 seed=seed, aspect=cfg.data.aspect, mean=mean, std=std)
    return LesionDataset(df, table.task, meta, transform, use_image=cfg.model.use_image,
                         paired=cfg.model.dual_image, labelled=labelled,
                         image_options=ImageOptions.from_config(cfg.data))


# --------------------------------------------------------------------------- training
def train(cfg: RunConfig, fold: int | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Train fold ``fold`` (default ``cfg.fold``; -1 = every fold) and return the run summary.

    An existing run with the same config resumes (finished folds are skipped, an unfinished
    fold continues from its last checkpoint); one with another config is refused unless
    ``cfg.overwrite``.
    """
    fold = cfg.fold if fold is None else fold
    if fold < -1 or fold >= cfg.data.n_folds:
        raise ConfigError(f"fold must be -1 or in [0, {cfg.data.n_folds - 1}], got {fold}")
    device = resolve_device(cfg.train.device)
    info = ddp.init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if info.enabled and cfg.train.sampler != "none":
        raise ConfigError("sampler != none is not supported under torchrun (DDP); use "
                          "class_weighting instead")
    progress = progress and info.is_main and os.environ.get("MELALIB_PROGRESS", "1") != "0"
    lock = RunLock(cfg) if info.is_main else nullcontext()
    try:
        with lock:
            if info.is_main:
                run, table = RunDir.start(cfg, lambda r: build_table(cfg, r))
            ddp.barrier(info)
            if not info.is_main:
                run = RunDir.open(cfg.with_overrides({"overwrite": False}), write=False)
                table = run.load_table()
            _setup_file_log(run, info)
            folds = range(cfg.data.n_folds) if fold == -1 else [fold]
            for k in folds:
                if run.fold_done(k):
                    log.info("fold %d already finished in %s; skipping", k, run.path)
                    continue
                train_fold(cfg, table, k, run, device=device, info=info, progress=progress,
                           folds=list(folds))
            summary = finalize(run, table.task) if info.is_main else {}
            ddp.barrier(info)
            return summary
    finally:
        ddp.cleanup(info)


def _setup_file_log(run: RunDir, info: ddp.DistInfo) -> None:
    if not info.is_main:
        return
    target = str((run.path / "train.log").resolve())
    if any(getattr(h, "baseFilename", None) == target for h in log.handlers):
        return
    for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(h)
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def train_fold(cfg: RunConfig, table: LesionTable, fold: int, run: RunDir, *,
               device: torch.device, info: ddp.DistInfo = ddp.DistInfo(),
               progress: bool = True, folds: list[int] | None = None) -> dict[str, Any]:
    """Train one fold to its end, resuming from ``run``'s last checkpoint when present;
    ``folds``: every fold this training call covers (for the progress ETA)."""
    from .losses import build_loss
    from .metrics import primary_metric
    from .models import build_model, param_groups, set_backbone_trainable
    from .pseudo import row_weights
    from .samplers import build_sampler
    from .targets import report_labels, report_probs, report_task, training_table

    table = training_table(table, cfg.data.target)
    t, task = cfg.train, table.task
    reported = report_task(task)
    set_deterministic(t.deterministic)
    seed_everything(derived_seed(t.seed, fold))
    fd = fold_data(cfg, table, fold)
    precision = resolve_precision(cfg, device)

    model = build_model(cfg.model, task, fd.encoder.dim).to(device)
    if info.is_main:  # what this fold's model sees: metadata features and weight source
        write_csv(run.path / f"features_fold{fold}.csv", fd.encoder.describe())
        source = getattr(getattr(model, "backbone", None), "weights_source", "")
        run.update_info(weights_source=source or "random init" if cfg.model.use_image
                        else "metadata only")
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    two_phase = t.freeze_epochs > 0
    groups = param_groups(model, t.lr, t.backbone_lr_mult if two_phase else 1.0, t.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    ema = _make_ema(model, t.ema_decay) if t.ema else None

    train_ds = make_dataset(cfg, table, fd.train_df, fd.meta_train, train=True,
                            seed=derived_seed(t.seed, fold))
    val_ds = make_dataset(cfg, table, fd.val_df, fd.meta_val, train=False)
    labels = fd.train_df["label"].to_numpy().astype(int)
    loss_fn = build_loss(t, task, labels).to(device)
    weights = row_weights(fd.train_df, cfg.data.pseudo_weight)
    row_weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    per_rank_batch = max(1, t.batch_size // info.world_size)
    per_rank_items = math.ceil(len(train_ds) / info.world_size)
    # a last batch of one sample breaks BatchNorm: drop the incomplete batch when there is a
    # full one (the shuffle differs per epoch, so every image is still seen)
    drop_last = per_rank_items > per_rank_batch
    n_batches = per_rank_items // per_rank_batch if drop_last else \
        math.ceil(per_rank_items / per_rank_batch)
    if t.max_steps_per_epoch:
        n_batches = min(n_batches, t.max_steps_per_epoch * t.grad_accum)
    steps_per_epoch = max(1, math.ceil(n_batches / t.grad_accum))
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)

    if info.is_main:
        _remove_stale_checkpoint_temps(run, fold)
    state = _resume_state(cfg, run, fold, fd.encoder.dim, task)
    start_epoch, best, best_epoch, stale, history = 0, -math.inf, -1, 0, []
    best_val_probs: np.ndarray | None = None  # the best epoch's OOF, when made in this call
    if state is not None:
        load_model_weights(model, state, run.checkpoint(fold))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, best, best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        stale, history = state["stale"], state["history"]
        log.info("fold %d: resuming after epoch %d (best %.4f)", fold, start_epoch, best)

    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)

    if info.is_main:
        live.report(cfg.name, fold, folds or [fold], start_epoch, t.epochs,
                    [h["seconds"] for h in history if h["fold"] == fold])
    for epoch in range(start_epoch, t.epochs):
        if t.patience and stale >= t.patience:
            break
        epoch_seed = derived_seed(t.seed, fold, epoch)
        seed_everything(epoch_seed + info.rank)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        frozen = epoch < t.freeze_epochs
        set_backbone_trainable(model, not frozen)
        if info.enabled:
            sampler: Any = DistributedSampler(train_ds, num_replicas=info.world_size,
                                              rank=info.rank, shuffle=True, seed=epoch_seed)
        else:
            sampler = build_sampler(t.sampler, labels, epoch_seed)
        loader = make_loader(train_ds, per_rank_batch, shuffle=True, seed=epoch_seed,
                             num_workers=cfg.data.num_workers, sampler=sampler,
                             drop_last=drop_last)
        started = time.perf_counter()
        train_loss = _train_epoch(net, model, loader, loss_fn, optimizer, scheduler, scaler, ema,
                                  precision, device, cfg, n_batches,
                                  desc=f"fold {fold} epoch {epoch + 1}/{t.epochs}",
                                  progress=progress, row_weight=row_weight)
        eval_model = ema.module if ema is not None else model
        val_probs, val_loss = predict_distributed(
            eval_model, val_ds, task, device, info, per_rank_batch * 2, cfg.data.num_workers,
            precision=precision, channels_last=t.channels_last, loss_fn=loss_fn)
        y_val = report_labels(fd.val_df, task)
        try:
            score = float(primary_metric(reported, y_val, report_probs(val_probs, task)))
        except MelalibError as exc:
            log.warning("fold %d epoch %d: %s; selecting on -val_loss", fold, epoch + 1, exc)
            score = -val_loss
        if t.scheduler == "plateau":
            scheduler.step(score)
        improved = score > best
        if improved:
            best, best_epoch, stale = score, epoch + 1, 0
            best_val_probs = val_probs
        else:
            stale += 1
        history.append({"fold": fold, "epoch": epoch + 1, "train_loss": train_loss,
                        "val_loss": val_loss, reported.primary_metric: score,
                        "lr": optimizer.param_groups[-1]["lr"], "frozen_backbone": frozen,
                        "seconds": round(time.perf_counter() - started, 2)})
        if info.is_main:
            common = _checkpoint_state(cfg, task, fold, model, fd.encoder, history, best,
                                       best_epoch, stale, ema)
            if improved:
                save_checkpoint(run.checkpoint(fold, "best"), common)
            save_checkpoint(run.checkpoint(fold, "last"), {
                **common, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()})
            write_csv(run.history_path(fold), pd.DataFrame(history))
            _mlflow_log(cfg, run, fold, history[-1])
            log.info("fold %d epoch %d: train_loss %.4f val_loss %.4f %s %.4f%s", fold,
                     epoch + 1, train_loss, val_loss, reported.primary_metric, score,
                     " (best)" if improved else "")
            live.report(cfg.name, fold, folds or [fold], epoch + 1, t.epochs,
                        [h["seconds"] for h in history if h["fold"] == fold])
        ddp.barrier(info)
    return _predict_fold(cfg, table, fd, fold, run, device, info, precision, per_rank_batch,
                         val_probs=best_val_probs)


def _make_ema(model: nn.Module, decay: float) -> nn.Module:
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


def _remove_stale_checkpoint_temps(run: RunDir, fold: int) -> None:
    """Delete half-written checkpoint temp files (``.fold{k}_*.pt.*.tmp``) that a killed run
    of this fold left behind; only this process writes them, and they can be large."""
    for tmp in run.path.joinpath("checkpoints").glob(f".fold{fold}_*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
        log.info("fold %d: removed %s, left by an interrupted checkpoint write", fold, tmp.name)


def _resume_state(cfg: RunConfig, run: RunDir, fold: int, n_meta: int, task: Task
                  ) -> dict[str, Any] | None:
    path = run.checkpoint(fold)
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    check_compatible(state, path=path, config=cfg,
                     backbone=cfg.model.backbone, n_outputs=task.n_outputs, n_meta=n_meta)
    return state


def _checkpoint_state(cfg: RunConfig, task: Task, fold: int, model: nn.Module, encoder: Any,
                      history: list[dict[str, Any]], best: float, best_epoch: int, stale: int,
                      ema: Any) -> dict[str, Any]:
    return {
        "fingerprint": cfg.fingerprint(), "config": cfg.to_dict(), "task": task.to_dict(),
        "fold": fold, "epoch": history[-1]["epoch"], "best_score": best,
        "best_epoch": best_epoch, "stale": stale, "history": list(history),
        "backbone": cfg.model.backbone, "n_outputs": task.n_outputs,
        "n_meta": encoder.dim, "meta_encoder": encoder.to_dict(),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "ema": ema.state_dict() if ema is not None else None,
    }


def _train_epoch(net: nn.Module, model: nn.Module, loader: Iterable[dict[str, Any]],
                 loss_fn: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 scaler: torch.amp.GradScaler, ema: Any, precision: Precision,
                 device: torch.device, cfg: RunConfig, n_batches: int, *, desc: str,
                 progress: bool, row_weight: torch.Tensor | None = None) -> float:
    from .losses import weighted_loss

    t = cfg.train
    net.train()
    optimizer.zero_grad(set_to_none=True)
    total, count = 0.0, 0
    bar = tqdm(total=n_batches, desc=desc, leave=False, disable=not progress)
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        batch = to_device(batch, device, t.channels_last)
        with precision.autocast(device):
            logits = forward(net, batch)
        if row_weight is None:
            loss = loss_fn(logits.float(), batch["target"])
        else:  # pseudo-labelled rows count pseudo_weight times a real row
            w = row_weight[batch["index"].cpu()].to(device)
            loss = weighted_loss(loss_fn, logits.float(), batch["target"], w)
        if not torch.isfinite(loss):
            raise MelalibError(f"{desc}: the loss became {loss.item()} at batch {i}; lower lr "
                               "or enable clip_grad")
        scaler.scale(loss / t.grad_accum).backward()
        last = (i + 1) % t.grad_accum == 0 or i + 1 == n_batches
        if last:
            if t.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if t.scheduler != "plateau":
                scheduler.step()
            if ema is not None:
                ema.update(model)
        total += float(loss.detach()) * len(logits)
        count += len(logits)
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}")
    bar.close()
    return total / max(count, 1)


def train_epoch(net: nn.Module, model: nn.Module, batches: Iterable[dict[str, Any]],
                loss_fn: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: torch.amp.GradScaler, precision: Precision, device: torch.device,
                cfg: RunConfig, n_batches: int, ema: Any = None) -> float:
    """One epoch of the loop `train_fold` runs, over any iterable of batch dicts (``image``,
    ``meta``, ``target``): the mean training loss. ``net`` is what is called (compiled or
    DDP-wrapped), ``model`` the module underneath. benchmarks/gpu_check.py times it against
    a bare loop on the same batches."""
    return _train_epoch(net, model, batches, loss_fn, optimizer, scheduler, scaler, ema,
                        precision, device, cfg, n_batches, desc="train", progress=False)


def _predict_fold(cfg: RunConfig, table: LesionTable, fd: FoldData, fold: int, run: RunDir,
                  device: torch.device, info: ddp.DistInfo, precision: Precision,
                  batch_size: int, val_probs: np.ndarray | None = None) -> dict[str, Any]:
    """Reload the best checkpoint and write the fold's OOF (and test) predictions.

    ``val_probs``: the validation predictions that the best epoch already made with the
    weights of the best checkpoint (same model, batch size, precision, no TTA); they become
    the OOF as they are instead of a second pass over the validation images. They are
    recomputed when absent (the best epoch ran before a resume) or when ``tta`` > 1 (the
    per-epoch validation uses one view).
    """
    from .metrics import evaluate
    from .models import build_model
    from .targets import report_task

    task = table.task
    best_path = run.checkpoint(fold, "best")
    state = load_checkpoint(best_path)
    model = build_model(cfg.model, task, fd.encoder.dim).to(device)
    key = "model" if state.get("ema") is None else "ema"
    weights = state[key] if key == "model" else ema_weights(state["ema"])
    load_model_weights(model, {"model": weights}, best_path)
    kwargs = dict(precision=precision, tta=cfg.train.tta, channels_last=cfg.train.channels_last)
    if val_probs is None or cfg.train.tta != 1:
        val_ds = make_dataset(cfg, table, fd.val_df, fd.meta_val, train=False)
        val_probs, _ = predict_distributed(model, val_ds, task, device, info, batch_size * 2,
                                           cfg.data.num_workers, **kwargs)
    oof = prediction_frame(fd.val_df, task, val_probs, fold, labelled=True)
    test = None
    if len(fd.test_df):
        test_ds = make_dataset(cfg, table, fd.test_df, fd.meta_test, train=False,
                               labelled=False)
        test_probs, _ = predict_distributed(model, test_ds, task, device, info,
                                            batch_size * 2, cfg.data.num_workers, **kwargs)
        test = prediction_frame(fd.test_df, task, test_probs, fold, labelled=False)
    reported = report_task(task)
    metrics = evaluate(reported, oof["label"].to_numpy(), oof[reported.prob_columns].to_numpy())
    metrics["best_epoch"] = state["best_epoch"]
    if info.is_main:
        if test is not None:
            write_csv(run.test_path(fold), test)
        write_json(run.path / f"metrics_fold{fold}.json", metrics)
        write_csv(run.oof_path(fold), oof)  # written last: its presence marks the fold done
    return metrics


def prediction_frame(df: pd.DataFrame, task: Task, probs: np.ndarray, fold: int, *,
                     labelled: bool) -> pd.DataFrame:
    """One fold's predictions in the reported task (`melalib.targets`): a diagnosis-trained
    model's frame holds the binary label, ``prob_melanoma`` = the MEL softmax column and the
    ``dx_<class>`` probabilities."""
    from .targets import diagnosis_columns, report_labels, report_probs, report_task

    out = pd.DataFrame({"image_id": df["image_id"].to_numpy(),
                        "group_id": df["group_id"].to_numpy(), "fold": fold})
    if labelled:
        out["label"] = report_labels(df, task)
    reported = report_probs(probs, task)
    for j, col in enumerate(report_task(task).prob_columns):
        out[col] = reported[:, j]
    for col, values in diagnosis_columns(probs, task).items():
        out[col] = values
    return out


def finalize(run: RunDir, task: Task) -> dict[str, Any]:
    """Pool the finished folds' OOF predictions and write oof.csv and metrics.json."""
    from .metrics import evaluate

    done = run.done_folds()
    summary: dict[str, Any] = {"run_dir": str(run.path), "folds_done": done,
                               "n_folds": run.cfg.data.n_folds, "task": task.to_dict()}
    if not done:
        return summary
    oof = run.load_oof()
    per_fold = {}
    for k in done:
        sub = oof[oof["fold"] == k]
        try:
            per_fold[str(k)] = evaluate(task, sub["label"].to_numpy(),
                                        sub[task.prob_columns].to_numpy())
        except MelalibError as exc:
            per_fold[str(k)] = {"error": str(exc)}
    summary["per_fold"] = per_fold
    if len(done) == run.cfg.data.n_folds:
        summary["oof"] = evaluate(task, oof["label"].to_numpy(), oof[task.prob_columns].to_numpy())
        summary["primary_metric"] = task.primary_metric
        summary["oof_primary"] = summary["oof"].get(task.primary_metric)
        write_csv(run.path / "oof.csv", oof.sort_values("image_id").reset_index(drop=True))
    write_json(run.path / "metrics.json", summary)
    return summary


def _mlflow_log(cfg: RunConfig, run: RunDir, fold: int, row: dict[str, Any]) -> None:
    if not cfg.train.mlflow:
        return
    try:
        import mlflow
    except ImportError as exc:
        raise ConfigError("mlflow=true but mlflow is not installed: pip install mlflow") from exc
    mlflow.set_tracking_uri((run.path.parent / "mlruns").resolve().as_uri())
    mlflow.set_experiment(cfg.name)
    run_name = f"fold{fold}"
    active = mlflow.active_run()
    if active is None or active.info.run_name != run_name:
        if active is not None:
            mlflow.end_run()
        mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v) for k, v in cfg.to_flat().items()})
    mlflow.log_metrics({k: float(v) for k, v in row.items()
                        if isinstance(v, (int, float)) and k not in ("fold", "epoch")},
                       step=int(row["epoch"]))
