"""Pseudo-labels: confident test predictions of a finished run join a second training round.

``pseudo_run=<run folder>`` (with ``pseudo_threshold``, ``pseudo_weight``) makes
`data.build.build_table` call `add_pseudo_labels`: the run's fold-averaged test predictions give
each test row of the new table a ``pseudo_label`` (binary: 1 where P(positive) >=
threshold, 0 where P(positive) <= 1 - threshold; multiclass: the argmax where its probability
>= threshold; -1 otherwise). The rows stay test rows (``split`` test, ``fold`` -1, predicted
as usual); `with_pseudo_rows` appends the pseudo-labelled ones to every fold's *training*
rows only (marked ``pseudo``; the metadata encoder is fitted on them too), and `check_validation` refuses (LeakageError) any validation frame holding one.
Their loss counts ``pseudo_weight`` times a real row's (`losses.weighted_loss`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .config import check_field
from .errors import ConfigError, DataError, LeakageError
from .runs import LAYOUT, RunDir
from .table import LesionTable
from .tasks import Task

log = logging.getLogger(__name__)

PSEUDO_COLUMN = "pseudo_label"  # table column: pseudo-label of a test row, -1 = none
FLAG = "pseudo"  # training-frame column: True for a pseudo-labelled row


def pseudo_labels(test_pred: pd.DataFrame, task: Task, threshold: float) -> pd.Series:
    """Pseudo-label per ``image_id`` (-1 where the prediction is not confident enough)."""
    check_field("pseudo_threshold", threshold)
    if task.kind == "multilabel":
        raise ConfigError("pseudo-labels need a binary or multiclass task, not multilabel")
    probs = test_pred[task.prob_columns].to_numpy(dtype=float)
    if task.kind == "binary":
        p = probs[:, 0]
        label = np.where(p >= threshold, 1, np.where(p <= 1 - threshold, 0, -1))
    else:
        label = np.where(probs.max(axis=1) >= threshold, probs.argmax(axis=1), -1)
    return pd.Series(label.astype(np.int64), index=test_pred["image_id"].astype(str).to_numpy())


def add_pseudo_labels(table: LesionTable, run_dir: str | Path, threshold: float
                      ) -> LesionTable:
    """``table`` with a ``pseudo_label`` column from ``run_dir``'s test predictions."""
    run_dir = Path(run_dir)
    try:
        run = RunDir.read(run_dir)
    except ConfigError as exc:
        raise ConfigError(f"pseudo_run: {exc}") from exc
    if run.task != table.task:
        raise ConfigError(f"pseudo_run {run_dir} predicts another task than this table's "
                          f"{table.task.name!r}")
    test = run.test_mean()
    if test is None:
        raise DataError(f"pseudo_run has no test predictions ({LAYOUT['fold_test'].glob})",
                        file=run_dir)
    labels = pseudo_labels(test, table.task, threshold)
    df = table.df.copy()
    is_test = (df["split"] == "test").to_numpy()
    test_ids = df.loc[is_test, "image_id"].astype(str)
    unknown = labels.index.difference(pd.Index(test_ids))
    if len(unknown):
        raise DataError(f"pseudo_run predicts image {unknown[0]!r}, which is not a test row "
                        "of this table", file=run_dir)
    df[PSEUDO_COLUMN] = -1
    df.loc[is_test, PSEUDO_COLUMN] = labels.reindex(test_ids.to_numpy()).fillna(-1).astype(
        np.int64).to_numpy()
    n = int((df[PSEUDO_COLUMN] >= 0).sum())
    log.info("pseudo-labels: %d of %d test rows at threshold %s", n, int(is_test.sum()),
             threshold)
    return LesionTable(df, table.task, origin=table.origin)


def pseudo_ids(df: pd.DataFrame) -> set[str]:
    """Image ids carrying a pseudo-label (any split)."""
    if PSEUDO_COLUMN not in df.columns:
        return set()
    return set(df.loc[df[PSEUDO_COLUMN] >= 0, "image_id"].astype(str))


def with_pseudo_rows(train_df: pd.DataFrame, df: pd.DataFrame, task: Task) -> pd.DataFrame:
    """A fold's training rows plus every pseudo-labelled test row (``pseudo`` True)."""
    if PSEUDO_COLUMN not in df.columns:
        return train_df
    rows = df[(df["split"] == "test") & (df[PSEUDO_COLUMN] >= 0)].copy()
    rows["split"] = "train"  # a training row now (the metadata encoder fits on it too)
    rows["label"] = rows[PSEUDO_COLUMN].astype(np.int64)
    rows["label_name"] = np.array(task.classes, dtype=object)[rows["label"].to_numpy()]
    out = pd.concat([train_df.assign(**{FLAG: False}), rows.assign(**{FLAG: True})],
                    ignore_index=True)
    return out


def check_validation(val_df: pd.DataFrame, df: pd.DataFrame) -> None:
    """LeakageError when a validation frame holds a pseudo-labelled or non-training row."""
    marked = val_df["image_id"].astype(str).isin(pseudo_ids(df))
    if FLAG in val_df.columns:
        marked |= val_df[FLAG].fillna(False).astype(bool)
    marked |= val_df["split"] != "train"
    if marked.any():
        raise LeakageError(f"validation rows include {int(marked.sum())} pseudo-labelled or "
                           f"test row(s), e.g. {val_df['image_id'].iloc[int(np.argmax(marked))]!r}")


def row_weights(train_df: pd.DataFrame, weight: float) -> np.ndarray | None:
    """Loss weight per training row (pseudo-labelled rows ``weight``, others 1); None
    without pseudo-labelled rows."""
    if FLAG not in train_df.columns or not train_df[FLAG].any():
        return None
    return np.where(train_df[FLAG].to_numpy(dtype=bool), float(weight), 1.0)
