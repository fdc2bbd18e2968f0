"""ISIC 2024 / SLICE-3D (Kaggle layout: ``train-metadata.csv``, ``train-image.hdf5``) -> the
canonical `LesionTable` of task ISIC2024, patient-grouped, with the ``tbp_lv_*``
measurements and the ``iddx_*`` diagnoses."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ...table import LesionTable
from ...tasks import ISIC2024
from ..csvread import PathLike, class_labels, numeric_column, read_csv, require_ids
from .canonical import canonical_frame, canonical_meta, in_dir, lesion_table

#: where to get it (named when a file is missing)
DOWNLOAD = ("download it from Kaggle: `kaggle competitions download -c "
            "isic-2024-challenge`")
#: the file `melalib.data.load.check_data_dir` looks for in ``data_dir``
MAIN_FILE = "train-metadata.csv"
ISIC2024_META = ("isic_id", "patient_id", "age_approx", "sex", "anatom_site_general")
#: text columns of the official table kept as they are (the rest of ``tbp_lv_*`` is numeric)
ISIC2024_TEXT = ("tbp_lv_location", "tbp_lv_location_simple", "image_type", "tbp_tile_type",
                 "attribution", "copyright_license", "lesion_id", "iddx_full", "iddx_1",
                 "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index")
#: ISIC 2024 ``iddx_3`` / ``iddx_2`` diagnoses (lower-cased) -> the shared diagnosis classes
#: of `melalib.targets` (the ``diagnosis`` column; anything else benign is UNK)
ISIC2024_DIAGNOSIS = {
    "melanoma invasive": "MEL", "melanoma in situ": "MEL", "melanoma, nos": "MEL",
    "melanoma metastasis": "MEL", "malignant melanocytic proliferations (melanoma)": "MEL",
    "basal cell carcinoma": "BCC",
    "malignant adnexal epithelial proliferations - follicular": "BCC",
    "squamous cell carcinoma, invasive": "SCC", "squamous cell carcinoma in situ": "SCC",
    "squamous cell carcinoma, nos": "SCC", "malignant epidermal proliferations": "SCC",
    "solar or actinic keratosis": "AK", "seborrheic keratosis": "BKL", "solar lentigo": "BKL",
    "lichen planus like keratosis": "BKL", "pigmented benign keratosis": "BKL",
    "benign melanocytic proliferations": "NV", "nevus": "NV", "dermatofibroma": "DF",
    "hemangioma": "VASC", "angioma": "VASC", "angiokeratoma": "VASC",
}


def load_isic2024(data_dir: PathLike, image_dir: PathLike | None = None,
                  include_test: bool = True) -> LesionTable:
    """ISIC 2024 / SLICE-3D (Kaggle layout): ``train-metadata.csv`` (+ ``test-metadata.csv``
    when present); task ISIC2024 (benign / malignant; the challenge scores pauc_80, which
    `metrics.evaluate` reports beside the ROC AUC that selects epochs); group_id =
    patient_id (patient-grouped folds).

    Images: ``image_dir`` ({isic_id}.jpg), else the official ``{split}-image.hdf5`` (isic_id
    -> JPEG bytes, read in place: `melalib.data.images.hdf5_member`), else the folder
    ``{split}-image/image``. Extras: patient_id, n_images (per patient), every ``tbp_lv_*``
    column and ``clin_size_long_diam_mm`` (numbers; the location words as text), lesion_id,
    the ``iddx_*`` diagnosis columns and ``diagnosis`` (`ISIC2024_DIAGNOSIS` of iddx_3, else
    iddx_2, else UNK: the shared classes ``target=diagnosis`` trains on).
    """
    data_dir = Path(data_dir)
    frames = []
    for split in ("train", "test"):
        csv = data_dir / f"{split}-metadata.csv"
        if split == "test" and (not include_test or not csv.is_file()):
            continue
        df = read_csv(csv, (*ISIC2024_META, "target") if split == "train" else ISIC2024_META,
                      DOWNLOAD)
        ids = require_ids(df, "isic_id", csv)
        labels = (class_labels(df["target"].str.replace(r"\.0$", "", regex=True), ("0", "1"),
                               csv, "target") if split == "train" else np.full(len(df), -1))
        patients = require_ids(df, "patient_id", csv, unique=False)
        out = canonical_frame(ids=ids, paths=_isic2024_paths(data_dir, image_dir, split, ids),
                              groups=patients, labels=labels, task=ISIC2024, source="isic2024",
                              split=split, meta=canonical_meta(df, csv, "age_approx", "sex",
                                                               "anatom_site_general"))
        frames.append(_isic2024_extras(out, df, csv, patients))
    df = pd.concat(frames, ignore_index=True)
    df["n_images"] = df.groupby("patient_id")["image_id"].transform("size").astype(int)
    return lesion_table([df], ISIC2024, data_dir / MAIN_FILE)


def _isic2024_paths(data_dir: Path, image_dir: PathLike | None, split: str,
                    ids: pd.Series) -> list[str]:
    """Image paths: ``image_dir``, else members of ``{split}-image.hdf5``, else the folder."""
    if image_dir:
        return in_dir(Path(image_dir), ids)
    archive, folder = data_dir / f"{split}-image.hdf5", data_dir / f"{split}-image" / "image"
    if not archive.is_file() and folder.is_dir():
        return in_dir(folder, ids)
    return [os.path.join(archive, name) for name in ids]


def _isic2024_extras(out: pd.DataFrame, df: pd.DataFrame, csv: Path,
                     patients: pd.Series) -> pd.DataFrame:
    """patient_id, the tbp_lv_* and clin_size numbers, the text columns, ``diagnosis``."""
    out["patient_id"] = patients.to_numpy()
    for column in df.columns:
        if column in ISIC2024_TEXT:
            out[column] = df[column].to_numpy(dtype=object)
        elif column.startswith("tbp_lv_") or column == "clin_size_long_diam_mm":
            out[column] = numeric_column(df, column, csv)
    diagnosis = pd.Series("UNK", index=df.index, dtype=object)
    for column in ("iddx_2", "iddx_3"):  # the more specific level wins
        if column in df.columns:
            words = df[column].str.strip().str.lower().map(ISIC2024_DIAGNOSIS)
            diagnosis = words.where(words.notna(), diagnosis)
    out["diagnosis"] = np.where(out["split"] == "train", diagnosis.to_numpy(), np.nan)
    return out

