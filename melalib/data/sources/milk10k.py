"""MILK10k (ISIC 2025: two images per lesion, dermoscopic and clinical close-up) -> the
canonical `LesionTable` of task MILK11, one row per lesion; `MILK_VIEWS`, the registry of
the ``milk_view`` choices (which image of the pair a single-image model sees)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from ...registry import Registry
from ...table import LesionTable
from ...tasks import MILK11
from ..csvread import (
    PathLike,
    first_row,
    numeric_column,
    onehot_labels,
    read_csv,
    require_ids,
    same_ids,
)
from .canonical import canonical_frame, canonical_meta, image_bytes, lesion_table

#: where to get it (named when a file is missing)
DOWNLOAD = ("download it from the ISIC 2025 challenge site "
            "(https://challenge.isic-archive.com/data/#2025)")
#: the file `melalib.data.load.check_data_dir` looks for in ``data_dir``
MAIN_FILE = "MILK10k_Training_Metadata.csv"
MILK_META = ("lesion_id", "image_type", "isic_id", "age_approx", "sex", "site")
#: image folders `load_milk10k` looks for under ``data_dir`` (the official name first; then
#: the resized copy of ``../shared/data/milk10k``)
MILK_IMAGE_DIRS = ("MILK10k_Training_Input", "images_256x192")


def _dermoscopic_first(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as built: the dermoscopic image is ``image_path``."""
    return df


def _clinical_first(df: pd.DataFrame) -> pd.DataFrame:
    """The two image columns and their file sizes swapped: the clinical close-up first."""
    out = df.copy()
    for a, b in (("image_path", "image_path_2"), ("image_bytes", "image_bytes_2")):
        out[a], out[b] = df[b].to_numpy(), df[a].to_numpy()
    return out


#: the ``milk_view`` choices: which image of the pair is ``image_path`` (a single-image
#: model's input; ``image_path_2`` holds the other) -> the frame with that image first
MILK_VIEWS: Registry[Callable[[pd.DataFrame], pd.DataFrame]] = Registry(
    "milk_view", {"dermoscopic": _dermoscopic_first, "clinical": _clinical_first})


def milk_view(df: pd.DataFrame, view: str) -> pd.DataFrame:
    """A MILK10k frame with ``view``'s image as ``image_path`` (`MILK_VIEWS`: dermoscopic, as
    built; clinical: the two image columns and their file sizes swapped)."""
    if view not in MILK_VIEWS:
        raise DataError(f"milk_view must be one of {', '.join(MILK_VIEWS)}; got {view!r}")
    return MILK_VIEWS[view](df)



def load_milk10k(data_dir: PathLike, image_dir: PathLike | None = None, include_test: bool = True,
                 test_image_dir: PathLike | None = None, view: str = "dermoscopic"
                 ) -> LesionTable:
    """MILK10k (ISIC 2025): one row per lesion (image_id = lesion_id), ``image_path`` the
    ``view`` image (`MILK_VIEWS`: dermoscopic, the default, or the clinical close-up),
    ``image_path_2`` the other one; task MILK11. A single-image model sees ``image_path``
    only; a dual-image one both.

    Images are ``{isic_id}.jpg`` under ``image_dir`` (default: the first folder of
    `MILK_IMAGE_DIRS` under ``data_dir`` that exists, else ``MILK10k_Training_Input``; test
    images ``MILK10k_Test_Input``), or under a ``{lesion_id}/`` subfolder there (the official
    zip layout) when that file exists. Extras: lesion_id, skin_tone, isic_id_derm /
    isic_id_clin, image_bytes_2, ``monet_<concept>_derm`` / ``_clin``.
    """
    data_dir = Path(data_dir)
    meta_csv = data_dir / "MILK10k_Training_Metadata.csv"
    gt_csv = data_dir / "MILK10k_Training_GroundTruth.csv"
    train_dir = Path(image_dir) if image_dir else _milk_image_dir(data_dir)
    meta = read_csv(meta_csv, MILK_META, DOWNLOAD)
    gt = read_csv(gt_csv, ("lesion_id", *MILK11.classes), DOWNLOAD)
    gt_ids = require_ids(gt, "lesion_id", gt_csv)
    same_ids(require_ids(meta, "lesion_id", meta_csv, unique=False).drop_duplicates(), gt_ids,
             meta_csv, gt_csv, "lesion_id", "lesion")
    labels = pd.Series(onehot_labels(gt, MILK11.classes, gt_csv), index=gt_ids.to_numpy())
    frames = [_milk_frame(meta, meta_csv, train_dir, labels, "train")]
    if include_test:
        test_csv = data_dir / "MILK10k_Test_Metadata.csv"
        test_dir = Path(test_image_dir or image_dir or data_dir / "MILK10k_Test_Input")
        frames.append(_milk_frame(read_csv(test_csv, MILK_META, DOWNLOAD), test_csv, test_dir,
                                  None, "test"))
    return lesion_table([milk_view(f, view) for f in frames], MILK11, meta_csv)


def load_milk10k_test(csv: PathLike, image_dir: PathLike | None = None,
                      view: str = "dermoscopic") -> LesionTable:
    """A MILK10k-style test table (``MILK10k_Test_Metadata.csv``: two rows per lesion,
    ``lesion_id``, ``image_type``, ``isic_id``, metadata, MONET scores): one unlabelled row
    per lesion (split test) as `load_milk10k` builds them, images ``{isic_id}.jpg`` under
    ``image_dir`` (default: ``MILK10k_Test_Input`` beside the CSV when it exists, else the
    CSV's folder), ``view`` as there."""
    csv = Path(csv)
    folder = Path(image_dir) if image_dir else csv.parent / "MILK10k_Test_Input"
    folder = folder if image_dir or folder.is_dir() else csv.parent
    frame = _milk_frame(read_csv(csv, MILK_META, DOWNLOAD), csv, folder, None, "test")
    return LesionTable(milk_view(frame, view), MILK11, origin=str(csv))  # test rows only


def is_milk10k_table(columns: Iterable[str]) -> bool:
    """Whether a CSV with these columns is in the MILK10k metadata layout (`MILK_META`)."""
    return set(MILK_META) <= {str(c).strip() for c in columns}


def _milk_image_dir(data_dir: Path) -> Path:
    """The first folder of `MILK_IMAGE_DIRS` under ``data_dir`` that exists (else the first)."""
    found = [data_dir / name for name in MILK_IMAGE_DIRS if (data_dir / name).is_dir()]
    return found[0] if found else data_dir / MILK_IMAGE_DIRS[0]


def _milk_frame(meta: pd.DataFrame, file: Path, folder: Path, labels: pd.Series | None,
                split: str) -> pd.DataFrame:
    """One row per lesion from a metadata file holding a dermoscopic and a clinical row each."""
    lesion = require_ids(meta, "lesion_id", file, unique=False)
    isic = require_ids(meta, "isic_id", file).to_numpy()
    kind = meta["image_type"].str.lower().fillna("")
    kind = np.where(kind.str.startswith("dermoscopic"), "derm",
                    np.where(kind.str.startswith("clinical"), "clin", ""))
    if (kind == "").any():
        pos = first_row(kind == "") - 1
        raise DataError(f"image_type {meta['image_type'].iloc[pos]!r} is neither dermoscopic nor "
                        "clinical", file=file, row=pos + 1, column="image_type")
    norm = canonical_meta(meta, file, "age_approx", "sex", "site")  # rows as in the file
    numeric = {c: numeric_column(meta, c, file) for c in meta.columns
               if c == "skin_tone_class" or c.startswith("MONET_")}
    first = lesion.drop_duplicates()  # index: the lesion's first row
    rows: dict[str, np.ndarray] = {}
    for k, word in (("derm", "dermoscopic"), ("clin", "clinical close-up")):
        at = pd.Series(np.flatnonzero(kind == k), index=lesion[kind == k].to_numpy())
        if at.index.duplicated().any():
            pos = int(at[at.index.duplicated()].iloc[0])
            raise DataError(f"lesion {lesion.iloc[pos]} has a second {word} image", file=file,
                            row=pos + 1, column="image_type")
        at = at.reindex(first.to_numpy())
        if at.isna().any():
            pos = int(first.index[first_row(at.isna()) - 1])
            raise DataError(f"lesion {lesion.iloc[pos]} has no {word} image row", file=file,
                            row=pos + 1, column="image_type")
        rows[k] = at.to_numpy(dtype=int)
    d, c = rows["derm"], rows["clin"]
    agree = {"age_approx": norm["age"], "sex": norm["sex"],
             "site": np.char.lower(norm["site_detail"].astype(str)).astype(object),
             "skin_tone_class": numeric.get("skin_tone_class")}
    for column, values in agree.items():
        if values is None:
            continue
        a, b = pd.Series(values[d]), pd.Series(values[c])
        differ = ~((a == b) | (a.isna() & b.isna()))
        if differ.any():
            i = first_row(differ) - 1
            raise DataError(f"lesion {first.iloc[i]}: {column} {meta[column].iloc[c[i]]!r} "
                            f"disagrees with its dermoscopic row {d[i] + 1} "
                            f"({meta[column].iloc[d[i]]!r})", file=file, row=int(c[i]) + 1,
                            column=column)
    ids = first.to_numpy()
    label = (labels.reindex(ids).to_numpy() if labels is not None else np.full(len(ids), -1))
    paths = _milk_paths(folder, ids, isic[d])
    out = canonical_frame(ids=ids, paths=paths, groups=ids, labels=label, task=MILK11,
                          source="milk10k", split=split, meta={k: v[d] for k, v in norm.items()})
    out["image_path_2"] = _milk_paths(folder, ids, isic[c])
    out["image_bytes_2"] = image_bytes(out["image_path_2"].tolist())
    out["lesion_id"] = ids
    out["isic_id_derm"], out["isic_id_clin"] = isic[d], isic[c]
    if "skin_tone_class" in numeric:
        out["skin_tone"] = numeric["skin_tone_class"][d]
    for column in (k for k in numeric if k.startswith("MONET_")):
        concept = column.removeprefix("MONET_").lower()
        out[f"monet_{concept}_derm"] = numeric[column][d]
        out[f"monet_{concept}_clin"] = numeric[column][c]
    return out


def _milk_paths(folder: Path, lesions: Sequence[str], isic_ids: Sequence[str]) -> list[str]:
    """``folder/{lesion}/{isic}.jpg`` where it exists (official zip layout), else flat."""
    out = []
    for lesion, isic in zip(lesions, isic_ids, strict=True):
        nested = os.path.join(folder, lesion, f"{isic}.jpg")
        out.append(nested if os.path.isfile(nested) else os.path.join(folder, f"{isic}.jpg"))
    return out

