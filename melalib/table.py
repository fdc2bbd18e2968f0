"""The canonical lesion table every adapter produces and every later step reads.

One row per image (per lesion for paired tasks). Columns:

- ``image_id`` (unique), ``image_path`` (and ``image_path_2`` for a second modality),
- ``group_id``: patient where known, else lesion, else image; folds split on it,
- ``label`` (int class index, -1 where unknown, i.e. test rows) and ``label_name``,
- ``age`` (float years, NaN allowed), ``sex`` (male / female / unknown),
  ``site`` (the shared vocabulary `SITES`), ``site_detail`` (the dataset's own word),
- ``source`` (isic2020, isic2019, ham10000, milk10k, synthetic, custom) and ``split``
  (train / test), ``fold`` once folds are assigned (-1 for test rows),
- any extras: ``patient_id``, ``lesion_id``, ``skin_tone``, ``dx_type``, ``monet_*``,
  ``image_bytes``, ...
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, ImageError
from .io import write_csv, write_json
from .leakage import audit_leakage
from .tasks import Task

REQUIRED = ("image_id", "image_path", "group_id", "label", "label_name", "age", "sex", "site",
            "source", "split")
SEXES = ("male", "female", "unknown")
SITES = ("head_neck", "upper_extremity", "lower_extremity", "torso", "palms_soles",
         "oral_genital", "unknown")
SPLITS = ("train", "test")
#: The files of a stored table (`LesionTable.save`): a run's ``table/`` folder, the
#: synthetic generator's cache.
TABLE_FILE, TASK_FILE = "table.csv", "task.json"
MAX_AGE = 120.0

# Every site word the public datasets use, lower-cased, mapped to the shared vocabulary.
SITE_MAP: dict[str, str] = {
    # ISIC 2020 / 2019 (anatom_site_general[_challenge])
    "head/neck": "head_neck", "upper extremity": "upper_extremity",
    "lower extremity": "lower_extremity", "torso": "torso", "anterior torso": "torso",
    "posterior torso": "torso", "lateral torso": "torso", "palms/soles": "palms_soles",
    "oral/genital": "oral_genital",
    # HAM10000 localization
    "scalp": "head_neck", "ear": "head_neck", "face": "head_neck", "neck": "head_neck",
    "back": "torso", "trunk": "torso", "chest": "torso", "abdomen": "torso",
    "hand": "upper_extremity", "foot": "lower_extremity", "acral": "palms_soles",
    "genital": "oral_genital", "unknown": "unknown",
    # MILK10k site
    "head_neck_face": "head_neck", "upper_extremity": "upper_extremity",
    "lower_extremity": "lower_extremity", "trunk_ant": "torso", "trunk_post": "torso",
    "trunk_lat": "torso", "foot_sole": "palms_soles", "hand_palm": "palms_soles",
    "oral_genital": "oral_genital",
    # the canonical words map to themselves
    **{s: s for s in SITES},
}
SEX_MAP: dict[str, str] = {"male": "male", "m": "male", "female": "female", "f": "female",
                           "unknown": "unknown"}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip() == "")


def normalize_values(series: pd.Series, mapping: dict[str, str], *, file: str | Path | None,
                     column: str, what: str, row_offset: int = 1) -> pd.Series:
    """Map raw words to a vocabulary; empty -> 'unknown'; an unknown word raises DataError
    naming the file, the first offending row (1-based data row) and the column."""
    out = []
    for pos, value in enumerate(series.tolist()):
        if _missing(value):
            out.append("unknown")
            continue
        key = str(value).strip().lower()
        if key not in mapping:
            known = sorted(set(mapping))
            raise DataError(f"unknown {what} {value!r}; expected one of {known} or empty",
                            file=file, row=pos + row_offset, column=column)
        out.append(mapping[key])
    return pd.Series(out, index=series.index, dtype=object)


def normalize_ages(series: pd.Series, *, file: str | Path | None, column: str,
                   row_offset: int = 1) -> pd.Series:
    """Ages as float years, NaN kept (missing); text, negative or > 120 raise DataError."""
    numeric = pd.to_numeric(series, errors="coerce")
    bad_text = numeric.isna() & series.notna() & (series.astype(str).str.strip() != "")
    if bad_text.any():
        pos = int(np.flatnonzero(bad_text.to_numpy())[0])
        raise DataError(f"age {series.iloc[pos]!r} is not a number", file=file,
                        row=pos + row_offset, column=column)
    absurd = (numeric < 0) | (numeric > MAX_AGE) | np.isinf(numeric)
    if absurd.any():
        pos = int(np.flatnonzero(absurd.to_numpy())[0])
        raise DataError(f"age {numeric.iloc[pos]} is outside [0, {MAX_AGE:g}]", file=file,
                        row=pos + row_offset, column=column)
    return numeric.astype(float)


def patient_key(df: pd.DataFrame) -> pd.Series:
    """The one patient-key rule (the ``context`` metadata features, the stacker's
    within-patient features and its patient-grouped CIs): ``p:<patient_id>`` where the id is
    known (not missing, not blank), else ``g:<group_id>`` (ISIC 2019 rows: the lesion); the
    prefixes keep a patient id from meeting an equal group id. Indexed as ``df``."""
    if "group_id" not in df.columns:
        raise DataError("a patient key needs column 'group_id'", column="group_id")
    groups = df["group_id"].astype(str).to_numpy(dtype=object)
    if "patient_id" not in df.columns:
        return pd.Series([f"g:{g}" for g in groups], index=df.index, dtype=object)
    patients = df["patient_id"]
    known = (patients.notna() & (patients.astype(str).str.strip() != "")).to_numpy()
    # element-wise: pandas 3 keeps a missing value missing through astype(str)
    ids = patients.to_numpy(dtype=object)
    return pd.Series([f"p:{p}" if k else f"g:{g}" for p, k, g in zip(ids, known, groups,
                                                                      strict=True)],
                     index=df.index, dtype=object)


@dataclass
class LesionTable:
    """A validated DataFrame in the canonical layout, with the `Task` it serves."""

    df: pd.DataFrame
    task: Task
    origin: str = ""  # the file or folder it came from, for error messages

    def __post_init__(self) -> None:
        self.df = self.df.reset_index(drop=True)

    # ------------------------------------------------------------------ views
    @property
    def train(self) -> pd.DataFrame:
        return self.df[self.df["split"] == "train"]

    @property
    def test(self) -> pd.DataFrame:
        return self.df[self.df["split"] == "test"]

    def fold(self, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(training rows of the other folds, training rows of fold ``k``) for cross-validation
        fold ``k``; both keep the table's row index (the row's position in ``df``)."""
        if "fold" not in self.df.columns:
            raise DataError("the table has no 'fold' column; call assign_folds first",
                            file=self.origin or None, column="fold")
        train = self.df[self.df["split"] == "train"]
        in_fold = train["fold"] == k
        return train[~in_fold], train[in_fold]

    @property
    def paired(self) -> bool:
        return "image_path_2" in self.df.columns

    def __len__(self) -> int:
        return len(self.df)

    def class_counts(self) -> pd.Series:
        train = self.train
        return train["label_name"].value_counts().reindex(list(self.task.classes), fill_value=0)

    # ------------------------------------------------------------- validation
    def validate(self, check_images: bool = False) -> LesionTable:
        """Raise DataError on anything a later step would trip over; return self."""
        df, file = self.df, self.origin or None
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            raise DataError(f"missing required columns {missing}", file=file)
        if len(df) == 0:
            raise DataError("the table is empty", file=file)
        if df["image_id"].isna().any():
            row = int(np.flatnonzero(df["image_id"].isna().to_numpy())[0]) + 1
            raise DataError("empty image_id", file=file, row=row, column="image_id")
        dup = df["image_id"].duplicated(keep=False)
        if dup.any():
            ids = df.loc[dup, "image_id"]
            first = ids.iloc[0]
            rows = (np.flatnonzero((df["image_id"] == first).to_numpy()) + 1).tolist()
            raise DataError(f"duplicate image_id {first!r} in rows {rows} "
                            f"({ids.nunique()} ids repeated)", file=file, column="image_id")
        if df["group_id"].isna().any() or (df["group_id"].astype(str).str.strip() == "").any():
            bad = df["group_id"].isna() | (df["group_id"].astype(str).str.strip() == "")
            raise DataError("empty group_id", file=file, row=int(np.flatnonzero(bad.to_numpy())[0]) + 1,
                            column="group_id")
        for column, allowed in (("split", SPLITS), ("sex", SEXES), ("site", SITES)):
            bad = ~df[column].isin(allowed)
            if bad.any():
                pos = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{df[column].iloc[pos]!r} is not one of {list(allowed)}",
                                file=file, row=pos + 1, column=column)
        normalize_ages(df["age"], file=file, column="age")
        labels = pd.to_numeric(df["label"], errors="coerce")
        k = self.task.n_classes
        bad = labels.isna() | (labels < -1) | (labels >= k) | (labels != labels.round())
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"label {df['label'].iloc[pos]!r} is outside 0..{k - 1} "
                            f"(classes {list(self.task.classes)})", file=file, row=pos + 1,
                            column="label")
        train = (df["split"] == "train").to_numpy()
        if not train.any():
            raise DataError("no training rows (split == 'train')", file=file, column="split")
        unlabelled = train & (labels.to_numpy() < 0)
        if unlabelled.any():
            pos = int(np.flatnonzero(unlabelled)[0])
            raise DataError("training row without a label", file=file, row=pos + 1, column="label")
        names = np.array((*self.task.classes, ""), dtype=object)[labels.astype(int).to_numpy()]
        mismatch = df["label_name"].fillna("").astype(str).to_numpy() != names
        if mismatch.any():
            pos = int(np.flatnonzero(mismatch)[0])
            raise DataError(f"label_name {df['label_name'].iloc[pos]!r} does not match label "
                            f"{int(labels.iloc[pos])} ({names[pos]!r})", file=file, row=pos + 1,
                            column="label_name")
        if "fold" in df.columns:
            audit_leakage(df)
        if check_images:
            self.check_images()
        return self

    def check_images(self) -> None:
        """Raise ImageError listing the images the table names that are not on disk."""
        for column in ("image_path", "image_path_2"):
            if column not in self.df.columns:
                continue
            paths = self.df[column].astype(str)
            exists = np.array([Path(p).is_file() for p in paths])
            if not exists.all():
                rows = np.flatnonzero(~exists)
                sample = ", ".join(paths.iloc[rows[:3]])
                raise ImageError(f"{len(rows)} image(s) listed but missing on disk, e.g. {sample}",
                                 file=self.origin or None, row=int(rows[0]) + 1, column=column)

    # ---------------------------------------------------------------- storage
    def content_hash(self) -> str:
        """SHA-256 of the table's content (column order and row order included)."""
        payload = self.df.to_csv(index=False).encode() + json.dumps(self.task.to_dict()).encode()
        return hashlib.sha256(payload).hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write `TABLE_FILE` and `TASK_FILE` atomically under ``directory``."""
        directory = Path(directory)
        write_csv(directory / TABLE_FILE, self.df)
        write_json(directory / TASK_FILE, self.task.to_dict())
        return directory

    @classmethod
    def load(cls, directory: str | Path, task: Task | None = None) -> LesionTable:
        """The table `save` wrote under ``directory``; ``task``: its `TASK_FILE`'s task when
        the caller has read it already (a `melalib.runs.RunDir` view), so it is read once."""
        directory = Path(directory)
        if task is None:
            task = Task.from_dict(json.loads((directory / TASK_FILE).read_text()))
        df = pd.read_csv(directory / TABLE_FILE, keep_default_na=True,
                         dtype={"image_id": str, "group_id": str, "label_name": str})
        df["label_name"] = df["label_name"].fillna("")
        return cls(df, task, origin=str(directory / TABLE_FILE)).validate()

    def select(self, mask: Iterable[bool] | pd.Series) -> LesionTable:
        return LesionTable(self.df[np.asarray(mask, dtype=bool)].copy(), self.task, self.origin)
