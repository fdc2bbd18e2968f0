"""The canonical frame every source builds (`canonical_frame`) from its ids, image paths,
groups, labels and the metadata `canonical_meta` maps to the shared vocabularies, and the
validated `LesionTable` it becomes (`lesion_table`).

Images need not exist for a table to load (`LesionTable.check_images()` checks them); where
they do exist the file size is kept as ``image_bytes`` (NaN otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...table import SEX_MAP, SITE_MAP, LesionTable, normalize_ages, normalize_values
from ...tasks import Task
from ..images import hdf5_member, image_nbytes


def image_bytes(paths: Sequence[str]) -> np.ndarray:
    """File size of each existing image (or HDF5 archive member), NaN where missing (folders
    that do not exist are skipped without a stat per file)."""
    out = np.full(len(paths), np.nan)
    present: dict[str, bool] = {}
    for i, path in enumerate(paths):
        parent = os.path.dirname(path)
        if parent not in present:
            present[parent] = os.path.isdir(parent or ".") or hdf5_member(path) is not None
        if present[parent]:
            out[i] = image_nbytes(path)
    return out


def in_dir(directory: Path, names: Iterable[str], ext: str = ".jpg") -> list[str]:
    """``directory/{name}{ext}`` per name."""
    return [os.path.join(directory, f"{name}{ext}") for name in names]


def canonical_meta(df: pd.DataFrame, file: Path, age: str | None, sex: str | None,
                   site: str | None) -> dict[str, np.ndarray]:
    """age / sex / site / site_detail from the raw columns named (None = unknown)."""
    unknown = np.full(len(df), "unknown", dtype=object)
    return {
        "age": (normalize_ages(df[age], file=file, column=age).to_numpy() if age
                else np.full(len(df), np.nan)),
        "sex": (normalize_values(df[sex], SEX_MAP, file=file, column=sex, what="sex")
                .to_numpy(dtype=object) if sex else unknown),
        "site": (normalize_values(df[site], SITE_MAP, file=file, column=site, what="site")
                 .to_numpy(dtype=object) if site else unknown),
        "site_detail": (df[site].fillna("").to_numpy(dtype=object) if site
                        else np.full(len(df), "", dtype=object)),
    }


def canonical_frame(*, ids: Iterable[str], paths: list[str], groups: Iterable[str],
                    labels: np.ndarray, task: Task, source: str, split: str,
                    meta: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The canonical columns (meta from `canonical_meta`); labels -1 = unknown."""
    labels = np.asarray(labels, dtype=np.int64)
    return pd.DataFrame({
        "image_id": np.asarray(list(ids), dtype=object),
        "image_path": paths,
        "group_id": np.asarray(list(groups), dtype=object),
        "label": labels,
        "label_name": np.array((*task.classes, ""), dtype=object)[labels],
        **meta,
        "source": source,
        "split": split,
        "image_bytes": image_bytes(paths),
    })


def lesion_table(frames: Sequence[pd.DataFrame], task: Task, origin: Path,
                 attrs: Mapping[str, object] | None = None) -> LesionTable:
    """The frames as one validated `LesionTable` (``attrs`` added to its ``df.attrs``)."""
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df.attrs.update(attrs or {})
    return LesionTable(df, task, origin=str(origin)).validate()
