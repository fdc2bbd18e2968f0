"""The multi-source tables: ISIC 2020 + 2019 as one binary melanoma table
(`merge_isic2019_2020`), HAM10000 + the MILK10k lesions of the HAM10000 classes
(`merge_ham_milk`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...classmap import class_mapping
from ...errors import DataError
from ...table import LesionTable
from ...tasks import HAM7, ISIC2019_8, MELANOMA, MILK11


def merge_isic2019_2020(t2020: LesionTable, t2019: LesionTable) -> LesionTable:
    """Binary melanoma table: ISIC 2020 rows (test rows kept) + ISIC 2019 training rows with
    MEL -> 1, everything else -> 0 (the 2019 class kept as ``diagnosis``).

    2019 rows whose ``isic_id`` is a 2020 image_id are dropped, then 2019 rows repeating an
    earlier isic_id; ``df.attrs`` holds ``dropped_duplicates`` (the total),
    ``dropped_duplicates_of_2020``, ``dropped_duplicates_within_2019`` and
    ``excluded_2019_test``. 2019 group ids get an ``isic2019:`` prefix so they never
    collide with 2020 patients.
    """
    for table, task, name in ((t2020, MELANOMA, "t2020"), (t2019, ISIC2019_8, "t2019")):
        if table.task != task:
            raise DataError(f"{name} must be a {task.name} table, got task {table.task.name!r}",
                            file=table.origin or None)
    if "isic_id" not in t2019.df:
        raise DataError("the 2019 table has no isic_id column (load it with load_isic2019)",
                        file=t2019.origin or None, column="isic_id")
    old = t2019.train
    of_2020 = old["isic_id"].isin(set(t2020.df["image_id"]))
    within = old["isic_id"].duplicated() & ~of_2020
    new = old[~of_2020 & ~within].copy()
    melanoma = (new["label_name"] == "MEL").to_numpy()
    new["diagnosis"] = new["label_name"]
    new["label"] = melanoma.astype(np.int64)
    new["label_name"] = np.where(melanoma, MELANOMA.classes[1], MELANOMA.classes[0])
    new["group_id"] = "isic2019:" + new["group_id"].astype(str)
    recent = t2020.df.copy()
    if "isic_id" not in recent:
        recent["isic_id"] = recent["image_id"]
    df = pd.concat([recent, new], ignore_index=True)
    df.attrs = {"dropped_duplicates": int(of_2020.sum() + within.sum()),
                "dropped_duplicates_of_2020": int(of_2020.sum()),
                "dropped_duplicates_within_2019": int(within.sum()),
                "excluded_2019_test": len(t2019.test)}
    return LesionTable(df, MELANOMA, origin=t2020.origin).validate()


def merge_ham_milk(ham: LesionTable, milk: LesionTable) -> LesionTable:
    """Multi-source HAM10000 7-class table: the HAM10000 rows + the MILK10k training lesions
    (their dermoscopic image) whose class HAM10000 defines (`classmap.class_mapping`:
    AKIEC -> akiec, ...). ``source`` (``ham10000`` / ``milk10k``) says where each row comes
    from, and training reports the OOF metrics per source; MILK10k image and group ids get
    a ``milk10k:`` prefix (folds stay grouped by lesion within each source). Only the columns
    both tables hold are kept (no source-only column becomes a shortcut; the clinical image
    is left out). ``df.attrs``: ``dropped_milk_classes`` (rows per MILK10k-only class) and
    ``excluded_milk_test``."""
    for table, task, name in ((ham, HAM7, "ham"), (milk, MILK11, "milk")):
        if table.task != task:
            raise DataError(f"{name} must be a {task.name} table, got task {table.task.name!r}",
                            file=table.origin or None)
    mapping = class_mapping(HAM7, MILK11)
    train = milk.train.reset_index(drop=True)
    labels = mapping.labels(train["label"].to_numpy())
    new = train[labels >= 0].copy()
    new["label"] = labels[labels >= 0]
    new["label_name"] = np.asarray(HAM7.classes, dtype=object)[new["label"].to_numpy()]
    for column in ("group_id", "image_id"):  # never collide with a HAM10000 id
        new[column] = "milk10k:" + new[column].astype(str)
    columns = [c for c in ham.df.columns if c in new.columns]
    df = pd.concat([ham.df[columns].assign(source="ham10000"),
                    new[columns].assign(source="milk10k")], ignore_index=True)
    df.attrs = {"dropped_milk_classes": mapping.report(train["label"])["dropped_rows_per_class"],
                "excluded_milk_test": len(milk.test)}
    return LesionTable(df, HAM7, origin=ham.origin).validate()

