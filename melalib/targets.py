"""Training targets of a binary task: the label itself, or the diagnosis classes.

``target=label`` (default) trains on the binary label. ``target=diagnosis`` trains a
softmax over one shared 9-class diagnosis vocabulary (`DIAGNOSIS_CLASSES`, as the SIIM-ISIC
2020 winners did) built from the ``diagnosis`` column the dataset sources keep (ISIC 2020
``train.csv`` words, the ISIC 2019 classes in the merged 2019 + 2020 table, the synthetic
generator's lesion looks, ISIC 2024's ``iddx_*`` levels) and reports the binary task's
positive probability: the melanoma class's softmax probability as ``prob_melanoma``
(MELANOMA), the sum over the malignant classes MEL + BCC + SCC as ``prob_malignant``
(ISIC2024) (`DIAGNOSIS_TASKS`); prediction files, metrics and ensembles still see the binary
task. The diagnosis probabilities are kept beside it as ``dx_<class>`` columns.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .registry import Registry
from .table import LesionTable
from .tasks import ISIC2024, MELANOMA, Task

#: the ``target`` choices: name -> ``table -> the table a fold trains on`` (`training_table`)
TARGETS: Registry[Callable[[LesionTable], LesionTable]] = Registry("target")
DIAGNOSIS_CLASSES = ("MEL", "NV", "BCC", "BKL", "AK", "SCC", "VASC", "DF", "UNK")
DIAG9 = Task("diagnosis9", "multiclass", DIAGNOSIS_CLASSES, "balanced_accuracy")
DIAG9_MALIGNANT = Task("diagnosis9_malignant", "multiclass", DIAGNOSIS_CLASSES,
                       "balanced_accuracy")
#: binary task -> the diagnosis task ``target=diagnosis`` trains
DIAGNOSIS_TASKS = {MELANOMA: DIAG9, ISIC2024: DIAG9_MALIGNANT}
#: diagnosis task -> (the binary task it reports, its positive diagnosis classes)
REPORTED = {DIAG9: (MELANOMA, ("MEL",)), DIAG9_MALIGNANT: (ISIC2024, ("MEL", "BCC", "SCC"))}
MELANOMA_CLASS = "MEL"
BINARY_LABEL = "melanoma_label"  # the binary label kept beside the diagnosis label
DX_PREFIX = "dx_"

# Every diagnosis word of the public tables (lower-cased) -> the shared class.
DIAGNOSIS_MAP: dict[str, str] = {
    # ISIC 2020 train.csv `diagnosis`
    "melanoma": "MEL", "nevus": "NV", "seborrheic keratosis": "BKL", "lentigo nos": "BKL",
    "lichenoid keratosis": "BKL", "solar lentigo": "BKL", "cafe-au-lait macule": "UNK",
    "atypical melanocytic proliferation": "UNK", "unknown": "UNK",
    # ISIC 2019 ground-truth classes (kept as `diagnosis` by merge_isic2019_2020)
    **{c.lower(): c for c in DIAGNOSIS_CLASSES},
    # HAM10000 / synthetic looks
    "mel": "MEL", "nv": "NV", "akiec": "AK", "bkl": "BKL", "df": "DF", "vasc": "VASC",
}


def check_diagnosis_task(task: Task) -> None:
    """``target=diagnosis`` needs the binary melanoma task."""
    if task not in DIAGNOSIS_TASKS:
        raise ConfigError(f"target=diagnosis needs a binary melanoma or malignancy dataset "
                          f"(isic2020, isic2020+2019, isic2024, synthetic binary); this "
                          f"table's task is {task.name!r} {list(task.classes)}")


def diagnosis_labels(table: LesionTable) -> np.ndarray:
    """Class index in `DIAGNOSIS_CLASSES` per row (-1 for test rows); DataError names the
    first row whose diagnosis is missing, unknown or contradicts the melanoma label."""
    df = table.df
    file = table.origin or None
    if "diagnosis" not in df.columns:
        raise DataError("target=diagnosis needs a 'diagnosis' column (ISIC 2020 train.csv, "
                        "the merged 2019 + 2020 table or synthetic v3 data)", file=file,
                        column="diagnosis")
    train = (df["split"] == "train").to_numpy()
    out = np.full(len(df), -1, dtype=np.int64)
    words = df["diagnosis"].astype(object).where(df["diagnosis"].notna(), None)
    for pos in np.flatnonzero(train):
        word = words.iloc[pos]
        key = str(word).strip().lower() if word is not None else ""
        if key not in DIAGNOSIS_MAP:
            raise DataError(f"diagnosis {word!r} is not in the shared vocabulary "
                            f"{sorted(DIAGNOSIS_MAP)}", file=file, row=pos + 1,
                            column="diagnosis")
        out[pos] = DIAGNOSIS_CLASSES.index(DIAGNOSIS_MAP[key])
    positives = REPORTED[DIAGNOSIS_TASKS[table.task]][1] if table.task in DIAGNOSIS_TASKS \
        else (MELANOMA_CLASS,)
    is_pos = np.isin(out, [DIAGNOSIS_CLASSES.index(c) for c in positives])
    clash = train & (is_pos != (df["label"].to_numpy() == 1))
    if clash.any():
        pos = int(np.flatnonzero(clash)[0])
        raise DataError(f"diagnosis {words.iloc[pos]!r} contradicts label "
                        f"{int(df['label'].iloc[pos])}", file=file, row=pos + 1,
                        column="diagnosis")
    return out


def training_table(table: LesionTable, target: str) -> LesionTable:
    """The table a fold trains on: ``table`` itself for ``label``; for ``diagnosis`` a copy
    with the 9-class labels (task `DIAG9`, or `DIAG9_MALIGNANT` for ISIC 2024) and the
    binary label in ``melanoma_label`` (`TARGETS`)."""
    return TARGETS[target](table)


TARGETS.register("label")(lambda table: table)


@TARGETS.register("diagnosis")
def diagnosis_table(table: LesionTable) -> LesionTable:
    """A copy of ``table`` with the 9-class diagnosis labels (``target=diagnosis``)."""
    check_diagnosis_task(table.task)
    labels = diagnosis_labels(table)
    df = table.df.copy()
    df[BINARY_LABEL] = df["label"].to_numpy()
    df["label"] = labels
    df["label_name"] = np.array((*DIAGNOSIS_CLASSES, ""), dtype=object)[labels]
    return LesionTable(df, DIAGNOSIS_TASKS[table.task], origin=table.origin)


def report_task(task: Task) -> Task:
    """The task a run reports: the binary task of a diagnosis-trained model, else ``task``."""
    return REPORTED[task][0] if task in REPORTED else task


def report_labels(df: pd.DataFrame, task: Task) -> np.ndarray:
    """Labels of the reported task (the binary label for a diagnosis-trained model)."""
    column = BINARY_LABEL if task in REPORTED else "label"
    return df[column].to_numpy().astype(int)


def report_probs(probs: np.ndarray, task: Task) -> np.ndarray:
    """Probabilities of the reported task: for a diagnosis task, the sum of its positive
    classes' softmax columns (N, 1) (`REPORTED`: MEL; MEL + BCC + SCC)."""
    probs = np.asarray(probs)
    if task not in REPORTED:
        return probs
    columns = [DIAGNOSIS_CLASSES.index(c) for c in REPORTED[task][1]]
    return probs[:, columns].sum(axis=1, keepdims=True)


def diagnosis_columns(probs: np.ndarray, task: Task) -> dict[str, np.ndarray]:
    """``dx_<class>`` columns of a diagnosis-trained model's softmax (empty otherwise)."""
    if task not in REPORTED:
        return {}
    return {f"{DX_PREFIX}{c}": np.asarray(probs)[:, j] for j, c in enumerate(DIAGNOSIS_CLASSES)}


def diagnosis_cam_classes(binary: np.ndarray, dx_probs: np.ndarray) -> np.ndarray:
    """Grad-CAM classes of a diagnosis-trained model for binary targets: 1 -> MEL; 0 -> the
    most probable non-melanoma class of that image (``dx_probs`` (N, 9), `DIAGNOSIS_CLASSES`
    order)."""
    mel = DIAGNOSIS_CLASSES.index(MELANOMA_CLASS)
    other = np.asarray(dx_probs, dtype=float).copy()
    other[:, mel] = -np.inf
    return np.where(np.asarray(binary) == 1, mel, other.argmax(axis=1))
