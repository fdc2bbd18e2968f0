"""Exploratory tables of a `LesionTable`: the numbers notebooks 01 and 02 show before any model.

* `overview`: one column of headline counts (images, groups, patients, classes, prevalence);
* `class_table`: training images, groups and share per class;
* `missing_values`: what is missing per column and split (NaN, empty, and the canonical
  ``unknown`` of sex and site: `MISSING_TEXT`);
* `group_sizes`: images per group (the cross-validation unit), per patient and per lesion;
* `images_available`, `image_size_stats`: whether the image files are on disk, and the
  width, height, aspect ratio and file size of a sample of them (None without images: ISIC
  2020 tables are usable without their 33k JPEGs).

Plain tables, no display: `melalib.notebook` shows them, with a note where a table needs
the images and they are absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .table import LesionTable


def overview(table: LesionTable) -> pd.DataFrame:
    """One column of headline counts: images, groups, patients, classes, prevalence."""
    df, task = table.df, table.task
    train = df[df["split"] == "train"]
    rows: dict[str, Any] = {
        "source": ", ".join(sorted(df["source"].astype(str).unique())),
        "task": f"{task.name} ({task.kind}, {task.n_classes} classes)",
        "images": len(df), "train images": len(train),
        "test images": int((df["split"] == "test").sum()),
        "groups (split unit)": int(df["group_id"].nunique()),
        "train groups": int(train["group_id"].nunique()),
    }
    if "patient_id" in df.columns:
        rows["patients"] = int(df["patient_id"].replace("", np.nan).nunique())
    if "lesion_id" in df.columns:
        rows["lesions"] = int(df["lesion_id"].replace("", np.nan).nunique())
    counts = table.class_counts()
    rows["majority class"] = f"{counts.idxmax()} ({counts.max() / max(len(train), 1):.1%})"
    rows["minority class"] = f"{counts.idxmin()} ({counts.min() / max(len(train), 1):.1%})"
    if task.kind == "binary":
        rows["positive rate"] = f"{counts.iloc[1] / max(len(train), 1):.2%}"
    return pd.DataFrame({"value": pd.Series(rows, dtype=object)})


def class_table(table: LesionTable) -> pd.DataFrame:
    """Training images, groups and share per class."""
    train = table.train
    counts = table.class_counts()
    groups = train.groupby("label_name")["group_id"].nunique().reindex(counts.index,
                                                                       fill_value=0)
    return pd.DataFrame({"images": counts, "share": counts / max(int(counts.sum()), 1),
                         "groups": groups}).rename_axis("class")


#: Values meaning "missing" in the canonical text columns.
MISSING_TEXT = {"sex": "unknown", "site": "unknown"}


def missing_values(df: pd.DataFrame) -> pd.DataFrame:
    """Per column with anything missing: count and share of NaN / empty / ``unknown``
    values per split (``unknown`` counts for sex and site, the canonical "not recorded";
    the test split's unlabelled ``label_name`` is by design and left out)."""
    missing = df.isna() | df.astype(str).apply(lambda s: s.str.strip() == "")
    for column, token in MISSING_TEXT.items():
        if column in df.columns:
            missing[column] = missing[column] | (df[column].astype(str) == token)
    split = df["split"] if "split" in df.columns else pd.Series("all", index=df.index)
    if "label_name" in missing.columns:
        missing.loc[split == "test", "label_name"] = False
    counts = missing.groupby(split.to_numpy()).sum().T
    shares = missing.groupby(split.to_numpy()).mean().T
    out = pd.concat({"missing": counts, "share": shares}, axis=1).swaplevel(axis=1)
    out = out[[c for c in out.columns.levels[0] if c in counts.columns]]
    keep = counts.sum(axis=1) > 0
    return out[keep.to_numpy()].sort_values(out.columns[0], ascending=False).rename_axis(
        "column")


def group_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """Distribution of images per group (the CV split unit) and per patient / lesion."""
    out = {}
    for column in ("group_id", "patient_id", "lesion_id"):
        if column in df.columns:
            ids = df[column].replace("", np.nan).dropna()
            same = column != "group_id" and len(ids) == len(df) and (
                ids.astype(str) == df["group_id"].astype(str)).all()
            if len(ids) and not same:  # a column equal to group_id would repeat it
                out[f"images per {column.removesuffix('_id')}"] = ids.value_counts().describe()
    return pd.DataFrame(out)


def images_available(df: pd.DataFrame, sample: int = 50, seed: int = 0) -> float:
    """Share of a random sample of ``image_path`` files that exist on disk."""
    if "image_path" not in df.columns or len(df) == 0:
        return 0.0
    paths = df["image_path"].astype(str).sample(min(sample, len(df)), random_state=seed)
    return float(np.mean([Path(p).is_file() for p in paths]))


def image_size_stats(table: LesionTable, sample: int = 300, seed: int = 0
                     ) -> pd.DataFrame | None:
    """Width, height, aspect ratio and file size of a random sample of the images
    (header reads only); None when none of a sample of them is on disk (`images_available`;
    the notebooks show a note instead: `melalib.notebook.show_image_sizes`)."""
    df = table.df
    if images_available(df, seed=seed) == 0.0:
        return None
    part = df.sample(min(sample, len(df)), random_state=seed)
    paths = [Path(p) for p in part["image_path"].astype(str)]
    found = [p for p in paths if p.is_file()]
    sizes = [_image_size(p) for p in found]
    stats = pd.DataFrame({
        "width": [w for w, _ in sizes], "height": [h for _, h in sizes],
        "kilobytes": [p.stat().st_size / 1024 for p in found]})
    stats["aspect"] = stats["width"] / stats["height"]
    out = stats.describe().T
    out["missing_files"] = len(paths) - len(found)
    return out


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size
