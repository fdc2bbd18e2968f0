"""ISIC 2019 (one-hot ground truth + metadata CSVs) -> the canonical `LesionTable` of task
ISIC2019_8, grouped by lesion where the metadata names one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...table import LesionTable
from ...tasks import ISIC2019_8
from ..csvread import PathLike, onehot_labels, read_csv, require_ids, same_ids
from .canonical import canonical_frame, canonical_meta, in_dir, lesion_table

#: where to get it (named when a file is missing)
DOWNLOAD = ("download it from the ISIC archive (https://challenge.isic-archive.com/data/#2019)"
            " or with `isic-cli`")
#: the file `melalib.data.load.check_data_dir` looks for in ``data_dir``
MAIN_FILE = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_CLASSES = ISIC2019_8.classes  # MEL NV BCC AK BKL DF VASC SCC; UNK must be 0


def load_isic2019(data_dir: PathLike, image_dir: PathLike | None = None,
                  include_test: bool = False,
                  test_image_dir: PathLike | None = None) -> LesionTable:
    """ISIC 2019: one-hot ``ISIC_2019_Training_GroundTruth.csv`` + ``..._Metadata.csv``;
    task ISIC2019_8 (a row with UNK or not exactly one 1 raises DataError).

    image_id is the listed name (``_downsampled`` kept); extras lesion_id and isic_id (the
    name without ``_downsampled``). 2019 has no patient ids: group_id = lesion_id, else the
    image id (count in ``df.attrs["group_from_image"]``). ``include_test`` adds
    ``ISIC_2019_Test_Metadata.csv`` rows (split test, label -1).
    """
    data_dir = Path(data_dir)
    gt_csv = data_dir / "ISIC_2019_Training_GroundTruth.csv"
    meta_csv = data_dir / "ISIC_2019_Training_Metadata.csv"
    train_dir = Path(image_dir) if image_dir else data_dir / "ISIC_2019_Training_Input"
    gt = read_csv(gt_csv, ("image", *ISIC2019_CLASSES), DOWNLOAD)
    meta_cols = ("image", "age_approx", "anatom_site_general", "sex")
    meta = read_csv(meta_csv, meta_cols, DOWNLOAD)
    gt_ids, meta_ids = require_ids(gt, "image", gt_csv), require_ids(meta, "image", meta_csv)
    same_ids(gt_ids, meta_ids, gt_csv, meta_csv, "image", "image")
    labels = pd.Series(onehot_labels(gt, ISIC2019_CLASSES, gt_csv, ignored=("UNK",)),
                       index=gt_ids.to_numpy())
    lesions = (meta["lesion_id"] if "lesion_id" in meta else pd.Series(np.nan, index=meta.index))
    frames = [_isic2019_frame(meta, meta_csv, meta_ids, lesions,
                              labels.reindex(meta_ids.to_numpy()).to_numpy(), train_dir, "train")]
    if include_test:
        test_csv = data_dir / "ISIC_2019_Test_Metadata.csv"
        test = read_csv(test_csv, meta_cols, DOWNLOAD)
        test_ids = require_ids(test, "image", test_csv)
        test_dir = Path(test_image_dir or image_dir or data_dir / "ISIC_2019_Test_Input")
        frames.append(_isic2019_frame(test, test_csv, test_ids, pd.Series(np.nan, index=test.index),
                                      np.full(len(test), -1), test_dir, "test"))
    df = pd.concat(frames, ignore_index=True)
    attrs = {"group_from_image": int(df["lesion_id"].isna().sum())}
    return lesion_table([df], ISIC2019_8, gt_csv, attrs)


def _isic2019_frame(df: pd.DataFrame, file: Path, ids: pd.Series, lesions: pd.Series,
                    labels: np.ndarray, folder: Path, split: str) -> pd.DataFrame:
    groups = np.where(lesions.isna().to_numpy(), ids.to_numpy(), lesions.to_numpy(dtype=object))
    out = canonical_frame(ids=ids, paths=in_dir(folder, ids), groups=groups, labels=labels,
                          task=ISIC2019_8, source="isic2019", split=split,
                          meta=canonical_meta(df, file, "age_approx", "sex", "anatom_site_general"))
    out["lesion_id"] = lesions.to_numpy(dtype=object)
    out["isic_id"] = ids.str.replace(r"_downsampled$", "", regex=True).to_numpy()
    return out

