"""HAM10000 (``HAM10000_metadata.csv``, Dataverse or Kaggle variant) -> the canonical
`LesionTable` of task HAM7, grouped by lesion."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ...table import LesionTable
from ...tasks import HAM7
from ..csvread import PathLike, class_labels, read_csv, require_ids
from .canonical import canonical_frame, canonical_meta, in_dir, lesion_table

#: where to get it (named when a file is missing)
DOWNLOAD = "download it from the Harvard Dataverse (https://doi.org/10.7910/DVN/DBW86T)"
#: the file `melalib.data.load.check_data_dir` looks for in ``data_dir``
MAIN_FILE = "HAM10000_metadata.csv"
HAM_IMAGE_DIRS = ("images_200x150", "HAM10000_images", "HAM10000_images_part_1", "images")


def load_ham10000(data_dir: PathLike, image_dir: PathLike | None = None,
                  metadata_csv: PathLike | None = None) -> LesionTable:
    """HAM10000: ``HAM10000_metadata.csv`` (Dataverse, or Kaggle's float-age variant via
    ``metadata_csv``); task HAM7; group_id = lesion_id; extras lesion_id, dx_type, dataset.

    Images: ``image_dir``, else the first of ``images_200x150``, ``HAM10000_images``,
    ``HAM10000_images_part_1`` + ``_part_2`` (each image from the part that holds it),
    ``images`` found under ``data_dir``.
    """
    data_dir = Path(data_dir)
    csv = Path(metadata_csv) if metadata_csv else data_dir / "HAM10000_metadata.csv"
    df = read_csv(csv, ("lesion_id", "image_id", "dx", "age", "sex", "localization"), DOWNLOAD)
    ids = require_ids(df, "image_id", csv)
    lesions = require_ids(df, "lesion_id", csv, unique=False)
    labels = class_labels(df["dx"].str.lower(), HAM7.classes, csv, "dx")
    out = canonical_frame(ids=ids, paths=_ham_paths(data_dir, image_dir, ids), groups=lesions,
                          labels=labels, task=HAM7, source="ham10000", split="train",
                          meta=canonical_meta(df, csv, "age", "sex", "localization"))
    out["lesion_id"] = lesions.to_numpy()
    for extra in ("dx_type", "dataset"):
        if extra in df:
            out[extra] = df[extra].to_numpy(dtype=object)
    return lesion_table([out], HAM7, csv)


def _ham_paths(data_dir: Path, image_dir: PathLike | None, ids: pd.Series) -> list[str]:
    if image_dir:
        return in_dir(Path(image_dir), ids)
    for name in HAM_IMAGE_DIRS:
        folder = data_dir / name
        if not folder.is_dir():
            continue
        part2 = data_dir / "HAM10000_images_part_2"
        if name.endswith("_part_1") and part2.is_dir():
            in_part2 = {p.stem for p in part2.iterdir()}
            return [os.path.join(part2 if i in in_part2 else folder, f"{i}.jpg") for i in ids]
        return in_dir(folder, ids)
    return in_dir(data_dir / "images", ids)

