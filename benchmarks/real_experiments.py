"""The real-data experiments behind ``docs/results.md``: one registered function per
experiment, run on the public data in ``../shared/data``.

Each experiment takes a `Ctx` (where the data is, where runs go, how big they are) and
returns a dict: metrics with group-aware bootstrap 95 % CIs, sizes, wall time;
`run_experiment` stamps it with the command that re-runs it and the environment. Recording
the dict is `results_store`'s job, turning the record into markdown `results_render`'s;
``benchmarks/real_results.py`` is the command line over the three.

Everything goes through melalib: adapters, folds (`assign_folds`, `random_split`,
`grouped_split`), `MetaEncoder`, the engine's `train` (with a table built here), `evaluate_with_ci`
and the plots. ``Ctx(quick=True)`` subsamples HAM10000 and caps the steps.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MELALIB_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pandas as pd

from melalib.baselines import oof_predictions
from melalib.bootstrap import evaluate_with_ci
from melalib.config import RunConfig, get_preset
from melalib.errors import ConfigError
from melalib.predictions import (
    read_predictions,
    with_table_columns,
)
from melalib.table import LesionTable
from melalib.tasks import Task

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "outputs" / "real"
FIGURES = REPO / "docs" / "figures"
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
    from melalib.data.sources.ham10000 import load_ham10000

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
    from melalib.data.sources.ham10000 import load_ham10000
    from melalib.data.sources.isic2019 import load_isic2019
    from melalib.data.sources.isic2020 import load_isic2020
    from melalib.data.sources.milk10k import load_milk10k

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
    from melalib.data.sources.ham10000 import load_ham10000
    from melalib.data.sources.isic2020 import load_isic2020
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
