"""The training loop: one loop for every task kind.

`train(cfg, fold, table=None)` trains one fold or all folds into ``outputs/<run>/``: AMP on
CUDA (bf16, or fp16 with a GradScaler) and a plain fp32 path on CPU, gradient accumulation
and clipping, channels_last, optional ``torch.compile`` and EMA, AdamW with the schedules of
`melalib.schedules`, an optional frozen-backbone warm-up followed by discriminative learning
rates, early stopping on the task's primary metric, best and last checkpoints, and a resume
from the last complete epoch after a crash. Randomness is re-seeded from (seed, fold, epoch)
at every epoch, so a resumed run reproduces an uninterrupted one on CPU.
Under ``torchrun`` the same entry point runs DistributedDataParallel.

A fold's state between epochs is a `FoldState` (its `Trainer`: model, optimizer, schedule,
scaler, EMA; epoch, best score, history), written by `FoldState.save` and read back by
`FoldState.resume`. Datasets, loaders and prediction come from `melalib.runtime`, the table
from `melalib.data.build`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DistributedSampler

from . import distributed as ddp
from . import progress as live
from . import tracking
from .checkpoints import (
    Preprocessing,
    check_compatible,
    load_checkpoint,
    load_model,
    load_model_weights,
    save_checkpoint,
)
from .config import RunConfig, TrainConfig
from .data.build import build_table, source_table
from .data.dataset import LesionDataset
from .data.load import check_data_dir
from .device import (
    Precision,
    derived_seed,
    resolve_device,
    resolve_precision,
    seed_everything,
    set_deterministic,
)
from .errors import ConfigError, MelalibError
from .features import MetaEncoder
from .guidance import CamGuide
from .io import write_csv, write_json
from .losses import build_loss, weighted_loss
from .metrics import evaluate, primary_metric
from .models import (
    build_model,
    check_model,
    check_pretrained,
    param_groups,
    set_backbone_trainable,
)
from .predictions import fold_scores, prediction_frame
from .pseudo import row_weights
from .runs import RunDir, RunLock
from .runtime import (
    FoldData,
    check_pairing,
    fold_data,
    forward,
    make_dataset,
    make_loader,
    predict_distributed,
    to_device,
)
from .samplers import build_sampler
from .schedules import PER_EPOCH, build_scheduler
from .shift import SCORE as SHIFT_SCORE
from .shift import fit_fold_shift
from .table import LesionTable
from .targets import report_labels, report_probs, report_task, training_table
from .tasks import MELANOMA, Task

log = logging.getLogger("melalib")


# --------------------------------------------------------------------------- training
def train(cfg: RunConfig, fold: int | None = None, *, table: LesionTable | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train fold ``fold`` (default ``cfg.fold``; -1 = every fold) and return the run summary.

    ``table``: train on this table instead of loading ``cfg``'s dataset (its images are
    pre-flighted, its ``fold`` column checked, or grouped folds assigned when it has none).
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
    if info.is_main:  # what can fail before a run folder exists is checked first, cheapest first
        if table is None:
            check_data_dir(cfg.data)  # a missing data folder is named before weights are sought
        check_pretrained(cfg.model)  # a missing or unfit weight file
        if cfg.model.use_image:  # the backbone at this image size (the rest once the task is known)
            check_model(cfg.model, MELANOMA, 0, cfg.data.image_size)
        tracking.check(cfg)  # mlflow=true without mlflow installed
        table = source_table(cfg, table)  # an unreadable table or absent images
    lock = RunLock(cfg) if info.is_main else nullcontext()
    try:
        with lock:
            if info.is_main:
                run, table = RunDir.start(
                    cfg, lambda r: _checked_table(cfg, r, table, fold, progress))
            ddp.barrier(info)
            if not info.is_main:
                run = RunDir.open(cfg.with_overrides({"overwrite": False}), write=False)
                table = run.table()
            _setup_file_log(run, info)
            folds = range(cfg.data.n_folds) if fold == -1 else [fold]
            for k in folds:
                if _finished(run, table, cfg, k, write=info.is_main):
                    log.info("fold %d already finished in %s; skipping", k, run.path)
                    continue
                train_fold(cfg, table, k, run, device=device, info=info, progress=progress,
                           folds=list(folds))
            summary = finalize(run, table.task) if info.is_main else {}
            if info.is_main:
                tracking.end_run(cfg, run, table.task)
            ddp.barrier(info)
            return summary
    finally:
        ddp.cleanup(info)


def _checked_table(cfg: RunConfig, run: RunDir, table: LesionTable | None, fold: int,
                   progress: bool = False) -> LesionTable:
    """`build_table` (its image pre-flight with a bar under ``progress``), then what the first fold would fail on with this table (pairs for
    ``dual_image``, the loss for the task, the model on the meta device): inside
    `RunDir.start`, so a failure leaves an ``--overwrite``'s old run in place."""
    built, report = build_table(cfg, table, progress)
    run.write_preflight(report)
    report.check(run.file("bad_images"))
    run.save_table(built)
    trained = training_table(built, cfg.data.target)
    check_pairing(cfg, trained)
    fd = fold_data(cfg, trained, max(fold, 0))
    build_loss(cfg.train, trained.task, fd.train_df["label"].to_numpy().astype(int))
    check_model(cfg.model, trained.task, fd.encoder.dim, cfg.data.image_size)
    return built


def _finished(run: RunDir, table: LesionTable, cfg: RunConfig, fold: int, *,
              write: bool = True) -> bool:
    """Fold ``fold``'s OOF file is complete: its completion record matches and it holds
    exactly the fold's validation rows. A file left incomplete (truncated, edited, another
    fold's rows) is logged and the fold predicted again from its checkpoints. ``write``:
    this process may add a missing record (DDP rank 0)."""
    if not run.oof_path(fold).is_file():
        return False
    _, val_df = training_table(table, cfg.data.target).fold(fold)
    if run.check_fold(fold, val_df["image_id"].astype(str).tolist(), record=write):
        return True
    log.warning("fold %d: %s does not hold the fold's %d validation rows or does not match "
                "its completion record; training / predicting the fold again", fold,
                run.oof_path(fold).name, len(val_df))
    return False


def _setup_file_log(run: RunDir, info: ddp.DistInfo) -> None:
    if not info.is_main:
        return
    target = str(run.file("log").resolve())
    if any(getattr(h, "baseFilename", None) == target for h in log.handlers):
        return
    for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(h)
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


# ---------------------------------------------------------------------- one epoch's step
@dataclass
class Trainer:
    """What an optimisation epoch updates and how: ``net`` is what is called (compiled or
    DDP-wrapped), ``model`` the module underneath; ``row_weight`` weighs pseudo-labelled
    rows (None: every row counts once)."""

    train_cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    precision: Precision
    device: torch.device
    ema: Any = None  # timm's ModelEmaV3
    row_weight: torch.Tensor | None = None
    net: nn.Module | None = None
    guide: CamGuide | None = None  # cam_guidance's loss term (`melalib.guidance`)

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation and the best checkpoint use: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def epoch(self, batches: Iterable[dict[str, Any]], n_batches: int, *, desc: str = "train",
              progress: bool = False) -> float:
        """One epoch over ``n_batches`` batch dicts (``image``, ``meta``, ``target``,
        ``index``): the mean training loss. benchmarks/gpu_check.py times it against a bare
        loop on the same batches."""
        t, net = self.train_cfg, self.net if self.net is not None else self.model
        net.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, count = 0.0, 0
        with live.bar(total=n_batches, desc=desc, leave=False, disable=not progress) as bar:
            for i, batch in enumerate(batches):  # an error closes the bar before it is shown
                if i >= n_batches:
                    break
                loss, n = self._loss(net, batch, desc, i)
                self.scaler.scale(loss / t.grad_accum).backward()
                if (i + 1) % t.grad_accum == 0 or i + 1 == n_batches:
                    self._step()
                total += float(loss.detach()) * n
                count += n
                bar.update(1)
                bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    def _loss(self, net: nn.Module, batch: dict[str, Any], desc: str, i: int
              ) -> tuple[torch.Tensor, int]:
        """The batch's loss (pseudo-labelled rows weighted) and its size."""
        batch = to_device(batch, self.device, self.train_cfg.channels_last)
        if self.guide is not None:
            self.guide.clear()
        with self.precision.autocast(self.device):
            logits = forward(net, batch)
        if self.row_weight is None:
            loss = self.loss_fn(logits.float(), batch["target"])
        else:  # pseudo-labelled rows count pseudo_weight times a real row
            w = self.row_weight[batch["index"].cpu()].to(self.device)
            loss = weighted_loss(self.loss_fn, logits.float(), batch["target"], w)
        if self.guide is not None:
            loss = loss + self.guide.penalty(batch)
        if not torch.isfinite(loss):
            raise MelalibError(f"{desc}: the loss became {loss.item()} at batch {i}; "
                               f"{_nonfinite_cause(self.model, batch)}")
        return loss, len(logits)

    def _step(self) -> None:
        """Clip, step the optimizer (through the scaler), the schedule and the EMA."""
        t = self.train_cfg
        if t.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if t.scheduler not in PER_EPOCH:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, schedule and scaler state (the model's weights go in separately)."""
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any], path: Any) -> None:
        """Model, optimizer, schedule, scaler and EMA from a ``last`` checkpoint."""
        load_model_weights(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])


def _nonfinite_cause(model: nn.Module, batch: dict[str, Any]) -> str:
    """What to do about a NaN / inf loss: weights that already hold NaN / inf (a weight file
    or checkpoint), inputs that do (the metadata), or else a diverging optimisation."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return (f"the model's weights already hold NaN or inf ({len(bad)} tensor(s), e.g. "
                f"{bad[0]}): check the pretrained weights file (pretrained_path) or the "
                "checkpoint resumed from; a lower lr will not help")
    bad_inputs = [k for k in ("image", "image2", "meta") if isinstance(batch.get(k), torch.Tensor)
                  and batch[k].is_floating_point() and not torch.isfinite(batch[k]).all()]
    if bad_inputs:
        return f"the batch's {', '.join(bad_inputs)} hold NaN or inf: check the input data"
    return "lower lr or enable clip_grad"


# ------------------------------------------------------------------------ a fold's state
@dataclass
class FoldState:
    """One fold's training between epochs: its `Trainer` and the counters a checkpoint
    carries. ``epoch`` counts finished epochs; ``best_val_probs`` are the best epoch's
    validation predictions when that epoch ran in this process (None after a resume)."""

    cfg: RunConfig
    task: Task
    fold: int
    encoder: MetaEncoder
    trainer: Trainer
    epoch: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_probs: np.ndarray | None = None

    def checkpoint(self) -> dict[str, Any]:
        """The ``best`` checkpoint: model (and EMA) weights, config, task, encoder, counters."""
        cfg, trainer = self.cfg, self.trainer
        return {
            "fingerprint": cfg.fingerprint(), "config": cfg.to_dict(),
            "task": self.task.to_dict(), "fold": self.fold, "epoch": self.epoch,
            "best_score": self.best, "best_epoch": self.best_epoch, "stale": self.stale,
            "history": list(self.history), "backbone": cfg.model.backbone,
            "n_outputs": self.task.n_outputs, "n_meta": self.encoder.dim,
            "meta_encoder": self.encoder.to_dict(),
            "preprocessing": Preprocessing.of(cfg, self.task).to_dict(),
            "model": {k: v.detach().cpu().clone()
                      for k, v in trainer.model.state_dict().items()},
            "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        }

    def save(self, run: RunDir, *, best: bool) -> None:
        """Write the ``last`` checkpoint (resume point), and the ``best`` one when ``best``."""
        common = self.checkpoint()
        if best:
            save_checkpoint(run.checkpoint(self.fold, "best"), common)
        save_checkpoint(run.checkpoint(self.fold, "last"), {**common,
                                                            **self.trainer.state_dict()})

    def resume(self, run: RunDir) -> bool:
        """Continue from ``run``'s ``last`` checkpoint of this fold when there is one (it must
        come from this config and model); False when the fold starts fresh."""
        path = run.checkpoint(self.fold)
        if not path.is_file():
            return False
        state = load_checkpoint(path)
        check_compatible(state, path=path, config=self.cfg, backbone=self.cfg.model.backbone,
                         n_outputs=self.task.n_outputs, n_meta=self.encoder.dim)
        self.trainer.load_state_dict(state, path)
        self.epoch, self.best, self.best_epoch = (state["epoch"], state["best_score"],
                                                  state["best_epoch"])
        self.stale, self.history = state["stale"], state["history"]
        log.info("fold %d: resuming after epoch %d (best %.4f)", self.fold, self.epoch, self.best)
        return True

    def record(self, row: dict[str, Any], score: float, val_probs: np.ndarray) -> bool:
        """Count a finished epoch (its history ``row``); True when ``score`` is a new best."""
        improved = score > self.best
        if improved:
            self.best, self.best_epoch, self.stale = score, row["epoch"], 0
            self.best_val_probs = val_probs
        else:
            self.stale += 1
        self.epoch = row["epoch"]
        self.history.append(row)
        return improved

    def seconds(self) -> list[float]:
        """Seconds per finished epoch of this fold (for the progress ETA)."""
        return [h["seconds"] for h in self.history if h["fold"] == self.fold]


# ---------------------------------------------------------------------------- one fold
@dataclass
class BatchPlan:
    """Batches per rank and epoch: a last batch of one sample breaks BatchNorm, so the
    incomplete batch is dropped when there is a full one (the shuffle differs per epoch, so
    every image is still seen)."""

    batch_size: int
    drop_last: bool
    n_batches: int
    steps_per_epoch: int

    @classmethod
    def of(cls, train_cfg: TrainConfig, n_items: int, world_size: int) -> BatchPlan:
        t = train_cfg
        batch = max(1, t.batch_size // world_size)
        items = math.ceil(n_items / world_size)
        drop_last = items > batch
        n_batches = items // batch if drop_last else math.ceil(items / batch)
        if t.max_steps_per_epoch:
            n_batches = min(n_batches, t.max_steps_per_epoch * t.grad_accum)
        return cls(batch, drop_last, n_batches, max(1, math.ceil(n_batches / t.grad_accum)))


@dataclass
class _Fold:
    """What stays fixed while one fold trains."""

    cfg: RunConfig
    table: LesionTable
    run: RunDir
    info: ddp.DistInfo
    device: torch.device
    data: FoldData
    train_ds: LesionDataset
    val_ds: LesionDataset
    labels: np.ndarray
    plan: BatchPlan
    progress: bool
    folds: list[int]


def train_fold(cfg: RunConfig, table: LesionTable, fold: int, run: RunDir, *,
               device: torch.device, info: ddp.DistInfo = ddp.DistInfo(),
               progress: bool = True, folds: list[int] | None = None) -> dict[str, Any]:
    """Train one fold to its end, resuming from ``run``'s last checkpoint when present;
    ``folds``: every fold this training call covers (for the progress ETA)."""
    table = training_table(table, cfg.data.target)
    t = cfg.train
    set_deterministic(t.deterministic)
    seed_everything(derived_seed(t.seed, fold))
    fd = fold_data(cfg, table, fold)
    precision = resolve_precision(cfg, device)
    model = _fold_model(cfg, table.task, fd, run, fold, device, info)
    two_phase = t.freeze_epochs > 0
    groups = param_groups(model, t.lr, t.backbone_lr_mult if two_phase else 1.0, t.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    ema = ModelEmaV3(model, decay=t.ema_decay) if t.ema else None
    job = _Fold(cfg, table, run, info, device, fd,
                make_dataset(cfg, table, fd.train_df, fd.meta_train, train=True,
                             seed=derived_seed(t.seed, fold), encoder=fd.encoder),
                make_dataset(cfg, table, fd.val_df, fd.meta_val, train=False),
                fd.train_df["label"].to_numpy().astype(int),
                BatchPlan.of(t, len(fd.train_df), info.world_size), progress, folds or [fold])
    weights = row_weights(fd.train_df, cfg.data.pseudo_weight)
    trainer = Trainer(t, model, optimizer, build_scheduler(t, optimizer, job.plan.steps_per_epoch),
                      scaler, build_loss(t, table.task, job.labels).to(device), precision, device,
                      ema, None if weights is None else torch.as_tensor(weights, dtype=torch.float32))
    if t.cam_guidance > 0:  # after the EMA's copy, which would copy the hook
        trainer.guide = CamGuide(model, table.task, t.cam_guidance)
    state = FoldState(cfg, table.task, fold, fd.encoder, trainer)
    if info.is_main:
        _remove_stale_checkpoint_temps(run, fold)
    state.resume(run)
    trainer.net = _wrap(model, cfg, info, device)
    if info.is_main:
        live.report(cfg.name, fold, job.folds, state.epoch, t.epochs, state.seconds())
    for epoch in range(state.epoch, t.epochs):
        if t.patience and state.stale >= t.patience:
            break
        _run_epoch(job, state, epoch)
    return _predict_fold(job, state)


def _fold_model(cfg: RunConfig, task: Task, fd: FoldData, run: RunDir, fold: int,
                device: torch.device, info: ddp.DistInfo) -> nn.Module:
    """The fold's fresh model; the run records its metadata features and weight source."""
    model = build_model(cfg.model, task, fd.encoder.dim).to(device)
    if info.is_main:  # what this fold's model sees: metadata features and weight source
        write_csv(run.features_path(fold), fd.encoder.describe())
        source = getattr(getattr(model, "backbone", None), "weights_source", "")
        run.update_info(weights_source=source or "random init" if cfg.model.use_image
                        else "metadata only")
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _wrap(model: nn.Module, cfg: RunConfig, info: ddp.DistInfo, device: torch.device
          ) -> nn.Module:
    """What the training loop calls: ``model`` under DDP and / or ``torch.compile``."""
    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    return net


def _run_epoch(job: _Fold, state: FoldState, epoch: int) -> None:
    """Train, validate, record and checkpoint epoch ``epoch`` of the fold."""
    cfg, info, trainer, t = job.cfg, job.info, state.trainer, job.cfg.train
    epoch_seed = derived_seed(t.seed, state.fold, epoch)
    seed_everything(epoch_seed + info.rank)
    job.train_ds.set_epoch(epoch)
    frozen = epoch < t.freeze_epochs
    set_backbone_trainable(trainer.model, not frozen)
    if info.enabled:
        sampler: Any = DistributedSampler(job.train_ds, num_replicas=info.world_size,
                                          rank=info.rank, shuffle=True, seed=epoch_seed)
    else:
        sampler = build_sampler(t.sampler, job.labels, epoch_seed)
    loader = make_loader(job.train_ds, job.plan.batch_size, shuffle=True, seed=epoch_seed,
                         num_workers=cfg.data.num_workers, sampler=sampler,
                         drop_last=job.plan.drop_last)
    started = time.perf_counter()
    train_loss = trainer.epoch(loader, job.plan.n_batches,
                               desc=f"fold {state.fold} epoch {epoch + 1}/{t.epochs}",
                               progress=job.progress)
    val_probs, val_loss, score = _validate(job, state, epoch)
    if t.scheduler in PER_EPOCH:
        trainer.scheduler.step(score)
    metric = report_task(state.task).primary_metric
    improved = state.record(
        {"fold": state.fold, "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
         metric: score, "lr": trainer.optimizer.param_groups[-1]["lr"],
         "frozen_backbone": frozen, "seconds": round(time.perf_counter() - started, 2)},
        score, val_probs)
    if info.is_main:
        state.save(job.run, best=improved)
        write_csv(job.run.history_path(state.fold), pd.DataFrame(state.history))
        tracking.log_epoch(cfg, job.run, state.fold, state.history[-1])
        log.info("fold %d epoch %d: train_loss %.4f val_loss %.4f %s %.4f%s", state.fold,
                 epoch + 1, train_loss, val_loss, metric, score, " (best)" if improved else "")
        live.report(cfg.name, state.fold, job.folds, epoch + 1, t.epochs, state.seconds())
    ddp.barrier(info)


def _validate(job: _Fold, state: FoldState, epoch: int) -> tuple[np.ndarray, float, float]:
    """Validation probabilities, loss and primary score (-loss when the metric is undefined)."""
    trainer, task = state.trainer, state.task
    val_probs, val_loss = predict_distributed(
        trainer.eval_model, job.val_ds, task, job.device, job.info, job.plan.batch_size * 2,
        job.cfg.data.num_workers, precision=trainer.precision,
        channels_last=job.cfg.train.channels_last, loss_fn=trainer.loss_fn,
        progress=job.progress, desc=f"fold {state.fold} validation")
    y_val = report_labels(job.data.val_df, task)
    try:
        score = float(primary_metric(report_task(task), y_val, report_probs(val_probs, task)))
    except MelalibError as exc:
        log.warning("fold %d epoch %d: %s; selecting on -val_loss", state.fold, epoch + 1, exc)
        score = -val_loss
    return val_probs, val_loss, score


def _remove_stale_checkpoint_temps(run: RunDir, fold: int) -> None:
    """Delete half-written checkpoint temp files (``.fold{k}_*.pt.*.tmp``) that a killed run
    of this fold left behind; only this process writes them, and they can be large."""
    for tmp in run.checkpoint(fold).parent.glob(f".fold{fold}_*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
        log.info("fold %d: removed %s, left by an interrupted checkpoint write", fold, tmp.name)


def _predict_fold(job: _Fold, state: FoldState) -> dict[str, Any]:
    """Reload the best checkpoint and write the fold's OOF (and test) predictions.

    ``state.best_val_probs``: the validation predictions that the best epoch already made
    with the weights of the best checkpoint (same model, batch size, precision, no TTA); they
    become the OOF as they are instead of a second pass over the validation images. They are
    recomputed when absent (the best epoch ran before a resume) or when ``tta`` > 1 (the
    per-epoch validation uses one view).
    """
    cfg, table, fd, fold, run, device, info = (job.cfg, job.table, job.data, state.fold,
                                               job.run, job.device, job.info)
    precision, batch_size, val_probs = (state.trainer.precision, job.plan.batch_size,
                                        state.best_val_probs)
    task = table.task
    best = load_model(run.checkpoint(fold, "best"), device, config=cfg)
    model = best.model
    kwargs = dict(precision=precision, tta=cfg.train.tta, channels_last=cfg.train.channels_last)
    if val_probs is None or cfg.train.tta != 1:
        val_ds = make_dataset(cfg, table, fd.val_df, fd.meta_val, train=False)
        val_probs, _ = predict_distributed(model, val_ds, task, device, info, batch_size * 2,
                                           cfg.data.num_workers, progress=job.progress,
                                           desc=f"fold {fold} out-of-fold", **kwargs)
    oof = prediction_frame(fd.val_df, task, val_probs, fold, labelled=True)
    test = None
    if len(fd.test_df):
        test_ds = make_dataset(cfg, table, fd.test_df, fd.meta_test, train=False,
                               labelled=False)
        test_probs, _ = predict_distributed(model, test_ds, task, device, info,
                                            batch_size * 2, cfg.data.num_workers,
                                            progress=job.progress, desc=f"fold {fold} test",
                                            **kwargs)
        test = prediction_frame(fd.test_df, task, test_probs, fold, labelled=False)
    reported = report_task(task)
    metrics = evaluate(reported, oof["label"].to_numpy(), oof[reported.prob_columns].to_numpy())
    metrics["best_epoch"] = best.best_epoch
    if info.is_main:
        shift = fit_fold_shift(model, cfg, table, fd.train_df, fd.val_df, device,
                               run.shift_path(fold), batch_size * 2)
        if shift is not None:
            oof[SHIFT_SCORE] = shift
        if test is not None:
            write_csv(run.test_path(fold), test)
        write_json(run.metrics_path(fold), metrics)
        write_csv(run.oof_path(fold), oof)  # then its record: together they mark it done
        run.record_fold(fold)
        tracking.end_fold(cfg, run, fold, reported, oof)
    return metrics


def finalize(run: RunDir, task: Task) -> dict[str, Any]:
    """Pool the finished folds' OOF predictions and write the run's pooled OOF file and
    metrics (`RunDir.oof_path`, `RunDir.metrics_path`)."""
    done = run.done_folds()
    summary: dict[str, Any] = {"run_dir": str(run.path), "folds_done": done,
                               "n_folds": run.cfg.data.n_folds, "task": task.to_dict()}
    if not done:
        return summary
    oof = run.oof_by_fold()
    summary["per_fold"] = fold_scores(task, oof, done)
    if len(done) == run.cfg.data.n_folds:
        summary["oof"] = evaluate(task, oof["label"].to_numpy(), oof[task.prob_columns].to_numpy())
        summary["primary_metric"] = task.primary_metric
        summary["oof_primary"] = summary["oof"].get(task.primary_metric)
        per_source = _per_source(run, task, oof)
        if per_source:
            summary["per_source"] = per_source
        write_csv(run.oof_path(), oof.sort_values("image_id").reset_index(drop=True))
    write_json(run.metrics_path(), summary)
    return summary


def _per_source(run: RunDir, task: Task, oof: pd.DataFrame) -> dict[str, Any]:
    """Pooled OOF metrics per ``source`` of a multi-source table (``ham10000+milk10k``);
    {} for a single source."""
    table = run.table().df
    if "source" not in table.columns or table["source"].nunique() < 2:
        return {}
    source = table.set_index(table["image_id"].astype(str))["source"]
    rows = source.reindex(oof["image_id"].astype(str)).to_numpy()
    out: dict[str, Any] = {}
    for name in sorted(pd.unique(rows[pd.notna(rows)])):
        sub = oof[rows == name]
        try:
            out[str(name)] = evaluate(task, sub["label"].to_numpy(),
                                      sub[task.prob_columns].to_numpy())
        except MelalibError as exc:
            out[str(name)] = {"error": str(exc)}
    return out
