"""SIIM-ISIC 2020 (Kaggle layout: ``train.csv``, ``test.csv``, ``jpeg/``) -> the canonical
`LesionTable` of task MELANOMA, patient-grouped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from ...table import LesionTable
from ...tasks import MELANOMA
from ..csvread import PathLike, class_labels, first_row, read_csv, require_ids
from .canonical import canonical_frame, canonical_meta, in_dir, lesion_table

#: where to get it (named when a file is missing)
DOWNLOAD = ("download it from Kaggle: `kaggle competitions download -c "
            "siim-isic-melanoma-classification`")
#: the file `melalib.data.load.check_data_dir` looks for in ``data_dir``
MAIN_FILE = "train.csv"


def load_isic2020(data_dir: PathLike, image_dir: PathLike | None = None, include_test: bool = True,
                  test_image_dir: PathLike | None = None) -> LesionTable:
    """SIIM-ISIC 2020 (Kaggle layout): ``train.csv`` (+ ``test.csv``); task MELANOMA.

    Images default to ``jpeg/train`` and ``jpeg/test``; an explicit ``image_dir`` (e.g. a
    flat resized cache) also serves the test images unless ``test_image_dir`` is given.
    Extras: patient_id, diagnosis, n_images (images per patient), lesion_id (from
    ``ISIC_2020_Training_GroundTruth_v2.csv`` when present).
    """
    data_dir = Path(data_dir)
    train_dir = Path(image_dir) if image_dir else data_dir / "jpeg" / "train"
    test_dir = Path(test_image_dir or image_dir or data_dir / "jpeg" / "test")
    meta = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge")
    frames = []
    for split, csv, folder in (("train", data_dir / "train.csv", train_dir),
                               ("test", data_dir / "test.csv", test_dir)):
        if split == "test" and not include_test:
            continue
        df = read_csv(csv, (*meta, "target") if split == "train" else meta, DOWNLOAD)
        ids = require_ids(df, "image_name", csv)
        patients = require_ids(df, "patient_id", csv, unique=False)
        if split == "train":
            target = df["target"].str.replace(r"\.0$", "", regex=True)  # 1.0 -> 1
            labels = class_labels(target, ("0", "1"), csv, "target")
        else:
            labels = np.full(len(df), -1)
        meta_cols = canonical_meta(df, csv, "age_approx", "sex", "anatom_site_general_challenge")
        out = canonical_frame(ids=ids, paths=in_dir(folder, ids), groups=patients, labels=labels,
                              task=MELANOMA, source="isic2020", split=split, meta=meta_cols)
        out["patient_id"] = patients.to_numpy()
        out["diagnosis"] = df["diagnosis"].to_numpy() if "diagnosis" in df else np.nan
        if split == "train":
            out["lesion_id"] = _isic2020_lesions(data_dir, ids, labels)
        frames.append(out)
    df = pd.concat(frames, ignore_index=True)
    df["n_images"] = df.groupby("patient_id")["image_id"].transform("size").astype(int)
    return lesion_table([df], MELANOMA, data_dir / "train.csv")


def _isic2020_lesions(data_dir: Path, ids: pd.Series, labels: np.ndarray) -> np.ndarray:
    """lesion_id per training image from the optional v2 ground truth (NaN when absent)."""
    gt_csv = data_dir / "ISIC_2020_Training_GroundTruth_v2.csv"
    if not gt_csv.is_file():
        return np.full(len(ids), np.nan, dtype=object)
    gt = read_csv(gt_csv, ("image_name", "lesion_id", "target"), DOWNLOAD)
    gt_ids = require_ids(gt, "image_name", gt_csv)
    target = pd.Series(labels, index=ids.to_numpy())
    shared = gt_ids.isin(target.index)
    gt_target = pd.to_numeric(gt["target"], errors="coerce")
    differ = shared & (gt_target != target.reindex(gt_ids.to_numpy()).to_numpy())
    if differ.any():
        pos = first_row(differ) - 1
        raise DataError(f"target of {gt_ids.iloc[pos]} disagrees with train.csv", file=gt_csv,
                        row=pos + 1, column="target")
    lesions = pd.Series(gt["lesion_id"].to_numpy(dtype=object), index=gt_ids.to_numpy())
    return lesions.reindex(ids.to_numpy()).to_numpy(dtype=object)

