"""The user's own CSV naming images and labels (`load_custom_csv`, task ``custom``), and the
label rules a user's classes follow (also `image_folder`'s): numeric-looking labels
normalised, case / spacing / synonym variants and likely typos refused, a binary task's
positive class named by the labels or ``positive_label`` (`binary_order`)."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from ...table import LesionTable
from ...tasks import Task
from ..csvread import PathLike, class_labels, first_row, numeric_column, read_csv, require_ids
from .canonical import canonical_frame, canonical_meta, lesion_table


def load_custom_csv(csv: PathLike, image_column: str = "image", label_column: str = "label",
                    group_column: str | None = None,
                    meta_columns: Mapping[str, str] | None = None,
                    classes: Sequence[str] | None = None, image_dir: PathLike | None = None,
                    image_ext: str = "", split_column: str | None = None,
                    fold_column: str | None = None, positive_label: str = "",
                    label_map: Mapping[str, str] | None = None) -> LesionTable:
    """A user CSV naming images and labels (task name ``custom``).

    ``meta_columns`` maps canonical names to the CSV's columns, e.g. ``{"age": "age_years",
    "sex": "gender", "site": "location"}``; any other name becomes a numeric extra
    ``meta_<name>``. ``classes`` default to the sorted labels of the training rows; two
    classes make a binary task (negative first, roc_auc), more a multiclass one
    (balanced_accuracy). Image names are resolved against ``image_dir`` (default: the
    CSV's folder), ``image_ext`` appended where missing. ``split_column`` holds train / test
    (test labels may be empty). Without ``group_column`` every image is its own group, so
    several images of one patient or lesion could land on both sides of a fold split.
    Numeric-looking labels are normalised (``0`` and ``0.0`` are one class); without
    ``classes``, a rare class named like a much larger one (``melanoma`` among ``mel``) is
    refused as a likely typo, and so are labels that differ from another only in case,
    spacing or a synonym (``Mel`` / ``melanoma`` beside ``mel``, any count) unless
    ``label_map`` maps them (``{"Mel": "mel"}``). A binary task's positive class is the one
    the labels name (melanoma, malignant, 1: `positive_class`) or ``positive_label``, never
    the sort order; a table naming neither needs ``positive_label``. ``fold_column`` holds
    predefined folds (integers >= 0); a column named ``fold`` that is not named there is
    refused, never silently ignored.
    """
    csv = Path(csv)
    meta_columns = dict(meta_columns or {})
    optional = [c for c in (group_column, split_column, fold_column) if c]
    df = read_csv(csv, [image_column, label_column, *optional, *meta_columns.values()])
    names = require_ids(df, image_column, csv)
    split = np.full(len(df), "train", dtype=object)
    if split_column:
        split = df[split_column].str.lower().to_numpy(dtype=object)
        bad = ~pd.Series(split).isin(["train", "test"])
        if bad.any():
            pos = first_row(bad) - 1
            raise DataError(f"split {df[split_column].iloc[pos]!r} is not train or test",
                            file=csv, row=pos + 1, column=split_column)
    train = split == "train"
    if len(df) == 0:
        raise DataError("the CSV has a header but no data rows", file=csv)
    if not train.any():
        raise DataError(f"no training rows: none of the {len(df)} row(s) has split 'train' "
                        f"in column {split_column!r}", file=csv, column=split_column)
    explicit = classes is not None
    classes = _custom_classes(df, label_column, train, classes, label_map, csv)
    labels = class_labels(df[label_column], classes, csv, label_column, allow_empty=True)
    if (train & (labels < 0)).any():
        raise DataError("empty label on a training row", file=csv,
                        row=first_row(train & (labels < 0)), column=label_column)
    ext = image_ext.lower()
    files = [n if not ext or n.lower().endswith(ext) else n + image_ext for n in names]
    folder = Path(image_dir) if image_dir else csv.parent
    paths = [f if os.path.isabs(f) else os.path.join(folder, f) for f in files]
    groups = require_ids(df, group_column, csv, unique=False) if group_column else names
    meta = canonical_meta(df, csv, meta_columns.get("age"), meta_columns.get("sex"),
                          meta_columns.get("site"))
    task = custom_task(classes)
    out = canonical_frame(ids=names, paths=paths, groups=groups, labels=labels, task=task,
                          source="custom", split=split, meta=meta)
    for name, column in meta_columns.items():
        if name not in ("age", "sex", "site"):
            out[f"meta_{name}"] = numeric_column(df, column, csv)
    if fold_column:
        out["fold"] = _fold_values(df, fold_column, train, csv)
    elif "fold" in df.columns:
        raise DataError("the CSV has a 'fold' column, which melalib would ignore (it assigns "
                        "grouped folds itself); set custom_fold_column=fold to use these folds "
                        "(checked for patient leakage), or rename or drop the column",
                        file=csv, column="fold")
    order = binary_order(classes, positive_label, csv, label_column, explicit)
    if order != classes:  # the positive class last: class indices follow the new order
        index = np.asarray([order.index(c) for c in classes])
        out["label"] = np.where(labels >= 0, index[np.clip(labels, 0, None)], labels)
        task = custom_task(order)
    return lesion_table([out], task, csv)


def _custom_classes(df: pd.DataFrame, column: str, train: np.ndarray,
                    classes: Sequence[str] | None, label_map: Mapping[str, str] | None,
                    csv: Path) -> tuple[str, ...]:
    """Normalise (and map) the labels in ``df[column]`` in place; the classes: the given
    ones, else the training rows' labels, sorted, after the variant and typo checks."""
    df[column] = df[column].map(_label_text, na_action="ignore")
    if label_map:
        mapping = {_label_text(k): _label_text(v) for k, v in label_map.items()}
        df[column] = df[column].map(lambda v: mapping.get(v, v), na_action="ignore")
    if classes is None:
        classes = sorted(df.loc[train, column].dropna().unique().tolist())
        _check_label_variants(df.loc[train, column], csv, column)
        _check_label_typos(df.loc[train, column], csv, column)
    classes = tuple(_label_text(str(c)) for c in classes)
    if len(classes) < 2:
        raise DataError(f"needs at least 2 classes, found {list(classes)}", file=csv,
                        column=column)
    return classes


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _label_text(value: str) -> str:
    """A class name; numeric-looking ones normalised, so ``0``, ``0.0`` and ``+0`` are one
    class (``0``) and ``1.50`` is ``1.5``."""
    text = str(value).strip()
    if not _NUMBER.fullmatch(text):
        return text
    number = float(text)
    return str(int(number)) if number.is_integer() else repr(number)


#: Labels that mean the same class (besides case, spacing, ``_`` and ``-``).
LABEL_SYNONYMS = {"melanoma": "mel", "malignant melanoma": "mel", "nevus": "nv", "naevus": "nv",
                  "nevi": "nv", "basal cell carcinoma": "bcc", "actinic keratosis": "ak",
                  "squamous cell carcinoma": "scc", "dermatofibroma": "df",
                  "vascular lesion": "vasc", "benign keratosis": "bkl"}
#: Label keys that name the positive class of a binary task.
POSITIVE_KEYS = frozenset({"mel", "malignant", "1", "positive", "true", "yes"})


def label_key(name: str) -> str:
    """What variants of one class share: case, spacing, ``_`` / ``-`` and synonyms
    (`LABEL_SYNONYMS`) ignored (``Mel``, `` MEL``, ``melanoma`` -> ``mel``)."""
    text = " ".join(re.sub(r"[_\-]+", " ", str(name)).lower().split())
    return LABEL_SYNONYMS.get(text, text)


def positive_class(classes: Sequence[str]) -> str | None:
    """The one label of a binary task that names the positive class (melanoma, malignant,
    1, positive...), or None when none or both do."""
    found = [c for c in classes if label_key(c) in POSITIVE_KEYS]
    return found[0] if len(found) == 1 else None


def binary_order(classes: Sequence[str], positive_label: str, file: Path,
                 column: str, explicit: bool = False) -> tuple[str, ...]:
    """A binary task's classes as (negative, positive): the positive one is
    ``positive_label``, else the one the labels name (`positive_class`), never the sort
    order; DataError when it cannot be told. ``explicit``: the user's own class list
    (negative first), kept unless it puts a class that names the positive first. More
    classes are returned as they are."""
    classes = tuple(classes)
    if explicit and not positive_label and len(classes) == 2:
        named = positive_class(classes)
        if named is not None and named != classes[1]:
            raise DataError(f"custom_classes {list(classes)} puts {named!r} first, i.e. as the "
                            "negative class (the list is negative first); reorder it or set "
                            f"positive_label={named}", file=file, column=column)
        return classes
    positive = _label_text(positive_label) if positive_label else None
    if len(classes) != 2:
        if positive:
            raise DataError(f"positive_label={positive_label!r} needs a binary table; this one "
                            f"has {len(classes)} classes {list(classes)}", file=file,
                            column=column)
        return classes
    if positive is not None and positive not in classes:
        raise DataError(f"positive_label={positive_label!r} is not one of the classes "
                        f"{list(classes)}", file=file, column=column)
    positive = positive or positive_class(classes)
    if positive is None:
        raise DataError(f"a binary table with classes {list(classes)}: melalib cannot tell "
                        "which one is positive (neither or both look like melanoma / "
                        "malignant / 1); say so: --set positive_label=<class>", file=file,
                        column=column)
    return (*(c for c in classes if c != positive), positive)


def _check_label_variants(labels: pd.Series, file: Path, column: str) -> None:
    """Raise DataError when two labels differ only in case, spacing or a synonym (any
    count): ``Mel`` beside ``mel`` would add a class and change the task and its metric."""
    counts = labels.value_counts()
    groups: dict[str, list[str]] = {}
    for name in counts.index:
        groups.setdefault(label_key(str(name)), []).append(name)
    for names in groups.values():
        if len(names) < 2:
            continue
        main, variant = names[0], names[1]  # value_counts: most frequent first
        rows = (np.flatnonzero((labels == variant).to_numpy()) + 1).tolist()
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise DataError(
            f"label {str(variant)[:40]!r} ({len(rows)} row(s): {shown}) looks like class "
            f"{str(main)[:40]!r} ({int(counts[main])} rows), differing only in case, spacing "
            f"or a synonym; fix the labels, or map them: --set custom_label_map="
            f"'{str(variant)[:40]}={str(main)[:40]}' (if they are two real classes, list "
            "every class in custom_classes)", file=file, row=rows[0], column=column)


def _check_label_typos(labels: pd.Series, file: Path, column: str, rare: int = 5,
                       ratio: int = 10) -> None:
    """Raise DataError when a class of at most ``rare`` rows has a name close to a class
    ``ratio`` times larger (``melanoma`` among ``mel``): most likely a typo that would add
    a class and change the task and its metric."""
    counts = labels.value_counts()
    for name, n in counts.items():
        if n > rare:
            continue
        for other, m in counts.items():
            if other != name and m >= ratio * n and _similar(str(name), str(other)):
                row = first_row((labels == name).to_numpy())
                raise DataError(
                    f"class {name!r} has only {n} row(s) and looks like a typo of class "
                    f"{other!r} ({m} rows); fix the label, or, if {name!r} is a real class, "
                    f"list every class in custom_classes (e.g. --set custom_classes="
                    f"{','.join(map(str, sorted(counts.index)))})", file=file, row=row,
                    column=column)


def _similar(a: str, b: str) -> bool:
    """Names a typo could turn into each other: equal but for case, one a prefix of the
    other, or (3+ letters) a close spelling. Numbers (class 1 beside 10) never are."""
    if _NUMBER.fullmatch(a) and _NUMBER.fullmatch(b):
        return False
    a, b = a.lower(), b.lower()
    if a == b or (min(len(a), len(b)) >= 2 and (a.startswith(b) or b.startswith(a))):
        return True
    return min(len(a), len(b)) >= 3 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.6


def _fold_values(df: pd.DataFrame, column: str, train: np.ndarray, file: Path) -> np.ndarray:
    """Predefined folds: integers >= 0 on every training row, -1 on test rows."""
    if column not in df.columns:
        raise DataError(f"custom_fold_column {column!r} is not a column; the file has "
                        f"{list(df.columns)}", file=file, column=column)
    values = pd.to_numeric(df[column], errors="coerce")
    bad = train & (values.isna() | (values < 0) | (values != values.round())).to_numpy()
    if bad.any():
        pos = first_row(bad) - 1
        raise DataError(f"fold {df[column].iloc[pos]!r} is not an integer >= 0 (training rows "
                        "need their fold)", file=file, row=pos + 1, column=column)
    return np.where(train, values.fillna(-1).to_numpy(), -1).astype(np.int64)



def custom_task(classes: Sequence[str]) -> Task:
    """Task ``custom`` over the user's classes: binary (roc_auc) for two, else multiclass
    (balanced_accuracy)."""
    if len(classes) == 2:
        return Task("custom", "binary", tuple(classes), "roc_auc")
    return Task("custom", "multiclass", tuple(classes), "balanced_accuracy")
