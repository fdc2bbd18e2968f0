"""Metadata-only scikit-learn baselines over a table's cross-validation folds.

`oof_predictions(table, features, make_model)` refits `MetaEncoder(features)` and a fresh
model on each fold's training rows (`LesionTable.fold`) and predicts the fold's validation
rows: out-of-fold probabilities as a `melalib.predictions` frame, for binary, multiclass and
multilabel tasks (one binary model per class). `cv_leakage_check` scores the same model
with patient-grouped and with image-level folds (notebook 02).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from .features import MetaEncoder
from .folds import assign_folds
from .metrics import primary_metric
from .predictions import prediction_frame, probabilities
from .registry import Registry
from .table import LesionTable

ModelFactory = Callable[[], Any]  # () -> an unfitted sklearn classifier
#: quick metadata models: name -> ``seed -> ModelFactory`` (`classifier`)
MODELS: Registry[Callable[[int], ModelFactory]] = Registry("model", {
    "forest": lambda seed: lambda: RandomForestClassifier(
        n_estimators=100, min_samples_leaf=1, n_jobs=1, random_state=seed),
    "logistic": lambda seed: lambda: LogisticRegression(max_iter=1000),
})


def classifier(name: str, seed: int = 0) -> ModelFactory:
    """Factory of a named quick metadata model: ``forest`` (100 trees) or ``logistic``."""
    return MODELS[name](seed)


def _fold_probs(task: Any, make_model: ModelFactory, x_fit: np.ndarray, y_fit: np.ndarray,
                x_val: np.ndarray) -> np.ndarray:
    """(N_val, n_outputs) probabilities of a model fitted on one fold's training rows;
    a class absent from the training rows gets probability 0."""
    if task.kind == "multilabel":
        probs = np.zeros((len(x_val), task.n_classes))
        for c in range(task.n_classes):
            target = (y_fit == c).astype(int)
            if target.any():
                probs[:, c] = make_model().fit(x_fit, target).predict_proba(x_val)[:, 1]
        return probs
    model = make_model().fit(x_fit, y_fit)
    probs = np.zeros((len(x_val), task.n_classes))
    probs[:, model.classes_.astype(int)] = model.predict_proba(x_val)
    return probs[:, 1:] if task.kind == "binary" else probs


def oof_predictions(table: LesionTable, features: str, make_model: ModelFactory,
                    extra: np.ndarray | None = None) -> pd.DataFrame:
    """Out-of-fold predictions of ``make_model()`` on `MetaEncoder(features)` features, both
    fitted on each fold's training rows; columns as a run's per-fold OOF files (image_id,
    group_id, fold, label, prob_*), folds in order. ``extra``: per-row features of
    ``table.df`` (e.g. frozen image embeddings), placed before the metadata columns."""
    task = table.task

    def inputs(df: pd.DataFrame, encoder: MetaEncoder) -> np.ndarray:
        meta = encoder.transform(df)
        return meta if extra is None else np.hstack([extra[df.index.to_numpy()], meta])

    frames = []
    for k in sorted(table.train["fold"].unique()):
        fit_df, val_df = table.fold(k)
        encoder = MetaEncoder(features).fit(fit_df)
        probs = _fold_probs(task, make_model, inputs(fit_df, encoder),
                            fit_df["label"].to_numpy(dtype=np.int64), inputs(val_df, encoder))
        frames.append(prediction_frame(val_df, task, probs, int(k), labelled=True))
    return pd.concat(frames, ignore_index=True)


def group_overlap(table: LesionTable) -> float:
    """Share of validation images whose group also has images in their fold's training rows
    (0 for grouped folds)."""
    train = table.train
    shared = 0
    for k in sorted(train["fold"].unique()):
        fit_df, val_df = table.fold(k)
        shared += int(val_df["group_id"].isin(set(fit_df["group_id"])).sum())
    return shared / len(train)


def cv_leakage_check(table: LesionTable, features: str = "default", n_folds: int = 5,
                     seed: int = 42, model: str = "forest", stratify: str = "label"
                     ) -> pd.DataFrame:
    """Grouped vs image-level cross-validation of a metadata-only sklearn model.

    Both schemes use `melalib.folds.assign_folds` (stratified, same seed); the image-level
    one treats every image as its own group, as a naive ``StratifiedKFold`` would. The
    difference in the task's primary metric is the optimism a patient-mixing split adds.
    """
    df = table.df.drop(columns=["fold"], errors="ignore")
    base = LesionTable(df, table.task, table.origin)
    schemes = {
        "grouped (group_id)": assign_folds(base, n_folds=n_folds, seed=seed, stratify=stratify),
        "image-level (leaky)": assign_folds(
            LesionTable(df.assign(group_id=df["image_id"].astype(str)), table.task,
                        table.origin), n_folds=n_folds, seed=seed, stratify=stratify),
    }
    make_model = classifier(model, seed)
    rows = []
    for scheme, folded in schemes.items():
        if scheme.startswith("image"):  # score against the real groups' overlap
            real = dict(zip(df["image_id"].astype(str), df["group_id"], strict=True))
            folded.df["group_id"] = folded.df["image_id"].astype(str).map(real)
        oof = oof_predictions(folded, features, make_model)
        oof = oof.set_index("image_id").loc[folded.train["image_id"]]  # the table's order
        rows.append({"scheme": scheme, "model": model,
                     table.task.primary_metric: primary_metric(
                         table.task, oof["label"].to_numpy(), probabilities(table.task, oof)),
                     "val images whose group is in training": group_overlap(folded)})
    return pd.DataFrame(rows).set_index("scheme")
