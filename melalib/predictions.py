"""The prediction frame: one row per image, ``image_id`` and the task's probability columns.

A run folder's prediction files (per-fold OOF and test files, the pooled OOF file) hold
``image_id, group_id, fold`` (+ ``label`` for out-of-fold rows) and ``task.prob_columns``
of the task the run reports (`melalib.targets.report_task`; a diagnosis-trained run adds
its ``dx_<class>`` softmax columns). This module builds such frames (`prediction_frame`,
`output_frame` for ``melalib predict``), reads them with the right dtypes
(`read_predictions`), checks and aligns several of them on ``image_id`` (`check_frame`,
`align`, `shared_labels`, `aligned_frame`, `fold_average`) and reads their probabilities
back (`probabilities`, `class_probs`, `predicted_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .arrays import argmax_labels
from .bootstrap import bootstrap_ci
from .errors import DataError, MelalibError
from .metrics import MetricError, evaluate
from .targets import diagnosis_columns, report_labels, report_probs, report_task
from .tasks import Task

#: Columns read as text whatever they look like ("0001" stays "0001").
TEXT_COLUMNS = {"image_id": str, "group_id": str}


# ------------------------------------------------------------------------------ building
def prediction_frame(df: pd.DataFrame, task: Task, probs: np.ndarray,
                     fold: int | np.ndarray, *, labelled: bool) -> pd.DataFrame:
    """One fold's predictions of the rows ``df`` (``fold``: its number, or each row's) as a
    run folder stores them (the engine's, ``melalib stack``'s), in the
    reported task: a diagnosis-trained model's frame holds the binary label,
    ``prob_melanoma`` = the MEL softmax column and the ``dx_<class>`` probabilities."""
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


def output_frame(image_ids: np.ndarray, task: Task, probs: np.ndarray) -> pd.DataFrame:
    """Predictions of new images as ``melalib predict`` writes them: ``image_id`` and the
    model's own ``prob_<class>`` columns, plus the reported melanoma score of a
    diagnosis-trained model."""
    out = pd.DataFrame({"image_id": np.asarray(image_ids)})
    for j, column in enumerate(task.prob_columns):
        out[column] = probs[:, j]
    reported = report_task(task)
    if reported != task:  # target=diagnosis: also the melanoma score the run reports
        out[reported.prob_columns[0]] = report_probs(probs, task)[:, 0]
    return out


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A prediction CSV with ``image_id`` / ``group_id`` read as text."""
    return pd.read_csv(path, dtype=TEXT_COLUMNS)


# ----------------------------------------------------------------------------- aligning
def check_frame(df: pd.DataFrame, task: Task, name: str) -> None:
    """DataError unless ``df`` has ``image_id`` (no repeats) and every probability column."""
    if "image_id" not in df.columns:
        raise DataError(f"{name} has no 'image_id' column", file=name, column="image_id")
    for column in task.prob_columns:
        if column not in df.columns:
            raise DataError(f"{name} has no probability column {column!r} (task {task.name!r} "
                            f"expects {task.prob_columns})", file=name, column=column)
    dup = df["image_id"].duplicated()
    if dup.any():
        pos = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"image_id {df['image_id'].iloc[pos]!r} appears twice", file=name,
                        row=pos + 1, column="image_id")


def _ids(df: pd.DataFrame) -> pd.Index:
    """A frame's ``image_id`` values as text (the key frames are aligned on)."""
    return pd.Index(df["image_id"].astype(str))


def align(frames: Sequence[pd.DataFrame], task: Task, what: str
          ) -> tuple[pd.Index, list[np.ndarray]]:
    """The first frame's ids and every frame's (N, n_outputs) probabilities in that order;
    DataError when the frames list different images or a probability is not finite."""
    if not frames:
        raise DataError(f"no {what} frames to combine")
    names = [f"{what} frame {i + 1}" for i in range(len(frames))]
    for df, name in zip(frames, names, strict=True):
        check_frame(df, task, name)
    ids = _ids(frames[0])
    probs = []
    for df, name in zip(frames, names, strict=True):
        own = _ids(df)
        if len(own) != len(ids) or not own.isin(ids).all():
            extra = own.difference(ids)
            missing = ids.difference(own)
            example = (f"{extra[0]!r} is only in {name}" if len(extra)
                       else f"{missing[0]!r} is missing from {name}")
            raise DataError(f"{what} frames list different images ({len(own)} vs {len(ids)} "
                            f"ids; {example}); every frame must predict the same image_ids",
                            file=name, column="image_id")
        p = df[task.prob_columns].to_numpy(dtype=np.float64)[own.get_indexer(ids)]
        bad = ~np.isfinite(p)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(f"probability {p[row, col]} is not finite", file=name,
                            row=int(own.get_loc(ids[row])) + 1, column=task.prob_columns[col])
        probs.append(p)
    return ids, probs


def shared_labels(frames: Sequence[pd.DataFrame], ids: pd.Index, what: str
                  ) -> np.ndarray | None:
    """The ``label`` column of ``ids`` (None when any frame lacks it); frames must agree."""
    if not all("label" in df.columns for df in frames):
        return None
    first = None
    for i, df in enumerate(frames):
        y = df["label"].to_numpy()[_ids(df).get_indexer(ids)].astype(np.int64)
        if first is None:
            first = y
        elif (y != first).any():
            pos = int(np.flatnonzero(y != first)[0])
            raise DataError(f"{what} frames disagree on the label of {ids[pos]!r}",
                            file=f"{what} frame {i + 1}", column="label")
    return first


def aligned_frame(ids: pd.Index, probs: np.ndarray, task: Task, first: pd.DataFrame,
                  labels: np.ndarray | None) -> pd.DataFrame:
    """A prediction frame of ``ids`` (``group_id`` taken from ``first`` when it has one)."""
    out = pd.DataFrame({"image_id": np.asarray(ids, dtype=object)})
    if "group_id" in first.columns:
        out["group_id"] = first["group_id"].to_numpy()[_ids(first).get_indexer(ids)]
    if labels is not None:
        out["label"] = labels
    for j, column in enumerate(task.prob_columns):
        out[column] = probs[:, j]
    return out


def fold_average(test_frames: Sequence[pd.DataFrame], task: Task) -> pd.DataFrame:
    """Mean probability per image over the folds' test predictions (same ids in each)."""
    ids, probs = align(test_frames, task, "test")
    return aligned_frame(ids, np.mean(probs, axis=0), task, test_frames[0], None)


# ------------------------------------------------------------------------ probabilities
def with_table_columns(pred: pd.DataFrame, table_df: pd.DataFrame) -> pd.DataFrame:
    """``pred`` (row order kept) joined on ``image_id`` with its rows of the table: metadata
    (age, sex, site, ...) and, where the table keeps them, hidden test labels
    (``true_label``). DataError when a prediction has no row in the table."""
    meta = table_df.assign(image_id=table_df["image_id"].astype(str))
    meta = meta[[c for c in meta.columns if c == "image_id" or c not in pred.columns]]
    out = pred.assign(image_id=pred["image_id"].astype(str)).merge(
        meta, on="image_id", how="left", validate="one_to_one", indicator=True)
    missing = out["_merge"] != "both"
    if missing.any():
        first = out.loc[missing, "image_id"].iloc[0]
        raise DataError(f"{int(missing.sum())} predictions have no row in the table (first: "
                        f"image_id {first!r}); the predictions and the table disagree",
                        row=int(np.flatnonzero(missing.to_numpy())[0]) + 1, column="image_id")
    return out.drop(columns="_merge")


def probabilities(task: Task, frame: pd.DataFrame) -> np.ndarray:
    """The probability columns of a prediction frame: (N,) for binary, else (N, K)."""
    p = frame[task.prob_columns].to_numpy(dtype=np.float64)
    return p[:, 0] if task.kind == "binary" else p


def fold_scores(task: Task, frame: pd.DataFrame, folds: Sequence[int] | None = None
                ) -> dict[str, Any]:
    """`metrics.evaluate` of each fold's rows of a labelled prediction frame, keyed by the
    fold as text, folds ascending (``folds``: these, in this order); a fold whose metrics
    are undefined (one class) gets ``{"error": reason}``. The per-fold scores of a training
    run's and of a stack's metrics."""
    out: dict[str, Any] = {}
    for k in sorted(set(frame["fold"].tolist())) if folds is None else folds:
        sub = frame[frame["fold"] == k]
        try:
            out[str(k)] = evaluate(task, sub["label"].to_numpy(), probabilities(task, sub))
        except MelalibError as exc:
            out[str(k)] = {"error": str(exc)}
    return out


def probabilities_of(frame: pd.DataFrame, ids: Sequence[str] | pd.Index, task: Task
                     ) -> np.ndarray:
    """`probabilities` of ``frame``'s rows of ``ids`` (text), in that order; DataError when
    the frame has no row for one of them."""
    own = _ids(frame)
    at = own.get_indexer(pd.Index([str(i) for i in ids]))
    if (at < 0).any():
        missing = list(ids)[int(np.flatnonzero(at < 0)[0])]
        raise DataError(f"no prediction for image_id {missing!r}", column="image_id")
    return probabilities(task, frame.iloc[at])


def frame_ci(task: Task, frame: pd.DataFrame, metric: str, n_boot: int = 1000
             ) -> dict[str, float] | None:
    """``metric`` of a labelled prediction frame with its 95 % bootstrap CI, resampling the
    frame's groups (patients): dict(estimate, low, high, ...); None where it is undefined
    (e.g. a fold with one class)."""
    try:
        return bootstrap_ci(metric, frame["label"].to_numpy(), probabilities(task, frame),
                            groups=frame["group_id"].to_numpy(), n_boot=n_boot)
    except MetricError:
        return None


def class_probs(task: Task, probs: np.ndarray) -> np.ndarray:
    """(N, K) class probabilities: binary P(positive) becomes [1 - p, p]."""
    p = np.asarray(probs, dtype=np.float64)
    if task.kind == "binary":
        p = p.reshape(-1)
        return np.column_stack([1.0 - p, p])
    return p


def predicted_labels(task: Task, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary: ``p >= threshold``; otherwise the argmax (ties -1, scored wrong)."""
    p = np.asarray(probs, dtype=np.float64)
    if task.kind == "binary":
        return (p.reshape(-1) >= threshold).astype(np.int64)
    return argmax_labels(p)
