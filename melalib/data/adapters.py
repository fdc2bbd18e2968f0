"""Adapters: the public datasets' unmodified files -> the canonical `LesionTable`.

Every adapter reads its CSVs with string dtypes (ids stay strings), checks the columns it
needs, maps ages / sexes / sites to the shared vocabularies and raises `DataError` naming
file, 1-based data row and column on anything it cannot map. Images need not exist for a
table to load (`LesionTable.check_images()` checks them); where they do exist the file size
is kept as ``image_bytes`` (NaN otherwise).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from csv import reader as csv_reader
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..classmap import class_mapping
from ..errors import DataError
from ..table import SEX_MAP, SITE_MAP, LesionTable, normalize_ages, normalize_values
from ..tasks import HAM7, ISIC2019_8, ISIC2024, MELANOMA, MILK11, Task
from .images import IMAGE_EXTENSIONS, hdf5_member, image_nbytes
from .synthetic import VERSION, make_synthetic

if TYPE_CHECKING:
    from ..config import DataConfig

PathLike = str | Path
DOWNLOAD = {
    "isic2020": "download it from Kaggle: `kaggle competitions download -c "
                "siim-isic-melanoma-classification`",
    "isic2019": "download it from the ISIC archive (https://challenge.isic-archive.com/data/#2019)"
                " or with `isic-cli`",
    "ham10000": "download it from the Harvard Dataverse (https://doi.org/10.7910/DVN/DBW86T)",
    "milk10k": "download it from the ISIC 2025 challenge site "
               "(https://challenge.isic-archive.com/data/#2025)",
    "isic2024": "download it from Kaggle: `kaggle competitions download -c "
                "isic-2024-challenge`",
}
MAIN_FILE = {"isic2020": "train.csv", "isic2019": "ISIC_2019_Training_GroundTruth.csv",
             "ham10000": "HAM10000_metadata.csv", "milk10k": "MILK10k_Training_Metadata.csv",
             "isic2024": "train-metadata.csv"}
ISIC2019_CLASSES = ISIC2019_8.classes  # MEL NV BCC AK BKL DF VASC SCC; UNK must be 0
HAM_IMAGE_DIRS = ("images_200x150", "HAM10000_images", "HAM10000_images_part_1", "images")


# ---------------------------------------------------------------------------- shared helpers
def _first_row(mask: Iterable[bool]) -> int:
    """1-based data row of the first True."""
    return int(np.flatnonzero(np.asarray(mask, dtype=bool))[0]) + 1


def _read_csv(path: PathLike, required: Sequence[str], dataset: str | None = None) -> pd.DataFrame:
    """Read a CSV as strings (cells stripped, empty -> NaN) and require ``required`` columns."""
    path = Path(path)
    hint = f"; {DOWNLOAD[dataset]}" if dataset in DOWNLOAD else ""
    if not path.parent.is_dir():
        raise DataError(f"folder {path.parent} does not exist; expected it to hold {path.name}"
                        f"{hint}", file=path)
    if not path.is_file():
        raise DataError(f"expected file {path.name} in {path.parent}, not found{hint}", file=path)
    try:
        # index_col=False: rows one field longer than the header (a trailing comma) must not
        # turn the first column into the index and shift every other column by one
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            df = pd.read_csv(path, dtype=str, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot parse CSV: {exc}", file=path) from exc
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        row, n = _long_row(path, len(df.columns))
        raise DataError(f"the row has {n} fields but the header names {len(df.columns)} "
                        "columns; quote cells that contain commas", file=path, row=row)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"missing columns {missing}; the file has {list(df.columns)}", file=path,
                        column=", ".join(missing))
    for column in df.columns:
        values = df[column].str.strip()
        df[column] = values.mask(values == "")
    return df


def _long_row(path: Path, width: int) -> tuple[int | None, int]:
    """1-based data row and field count of the first row with non-empty cells beyond
    ``width`` fields (pandas only warns about them)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = (fields for fields in csv_reader(fh) if fields)
        next(rows, None)
        for i, fields in enumerate(rows, start=1):
            if len(fields) > width and any(f.strip() for f in fields[width:]):
                return i, len(fields)
    return None, width + 1


def _require_ids(df: pd.DataFrame, column: str, file: Path, unique: bool = True) -> pd.Series:
    """The column as strings; empty or (if ``unique``) repeated values raise DataError."""
    values = df[column]
    if values.isna().any():
        row = _first_row(values.isna())
        raise DataError(f"{_missing_cell(file, column, row)} {column}", file=file, row=row,
                        column=column)
    dup = values.duplicated()
    if unique and dup.any():
        first = values[dup].iloc[0]
        rows = (np.flatnonzero((values == first).to_numpy()) + 1).tolist()
        raise DataError(f"duplicate {column} {first!r} (rows {rows}); "
                        f"{int(dup.sum())} repeated row(s)", file=file, row=rows[1], column=column)
    return values.astype(str)


def _missing_cell(file: Path, column: str, row: int) -> str:
    """How a cell read as missing is described: 'empty', or the text pandas took for NA."""
    try:
        raw = pd.read_csv(file, dtype=str, keep_default_na=False, index_col=False,
                          usecols=lambda c: str(c).strip() == column).iloc[row - 1, 0].strip()
    except (OSError, ValueError, IndexError, pd.errors.ParserError):
        return "empty"
    if not raw:
        return "empty"
    return (f"{raw!r}, which CSV readers treat as a missing value (like NA, None, null, NaN), "
            "is not a usable")


def _numeric(df: pd.DataFrame, column: str, file: Path) -> np.ndarray:
    """A numeric column (NaN allowed); text raises DataError with row and column."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        pos = _first_row(bad) - 1
        raise DataError(f"{df[column].iloc[pos]!r} is not a number", file=file, row=pos + 1,
                        column=column)
    return values.to_numpy(dtype=float)


def _onehot_labels(df: pd.DataFrame, classes: Sequence[str], file: Path,
                   ignored: Sequence[str] = ()) -> np.ndarray:
    """Class index per row from one-hot columns; anything but exactly one 1 among ``classes``
    (e.g. UNK set, two 1s, no 1) raises DataError naming row and column(s)."""
    columns = [*classes, *[c for c in ignored if c in df.columns]]
    onehot = np.zeros((len(df), len(columns)), dtype=int)
    for j, column in enumerate(columns):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            pos = _first_row(bad) - 1
            raise DataError(f"one-hot value {df[column].iloc[pos]!r} is not 0 or 1", file=file,
                            row=pos + 1, column=column)
        onehot[:, j] = values.to_numpy(dtype=int)
    bad = (onehot.sum(axis=1) != 1) | (onehot[:, : len(classes)].sum(axis=1) != 1)
    if bad.any():
        pos = _first_row(bad) - 1
        on = [c for c, v in zip(columns, onehot[pos], strict=True) if v == 1]
        where = ", ".join(on) if on else ", ".join(classes)
        raise DataError(f"exactly one of {list(classes)} must be 1, found {on or 'none'}",
                        file=file, row=pos + 1, column=where)
    return onehot[:, : len(classes)].argmax(axis=1)


def _class_labels(values: pd.Series, classes: Sequence[str], file: Path, column: str,
                  allow_empty: bool = False) -> np.ndarray:
    """Class index per row from class names; -1 for empty cells where ``allow_empty``."""
    index = {c: i for i, c in enumerate(classes)}
    labels = values.map(lambda v: -1 if pd.isna(v) else index.get(v, -2))
    bad = (labels == -2) | ((labels == -1) & (not allow_empty))
    if bad.any():
        pos = _first_row(bad) - 1
        raise DataError(f"label {values.iloc[pos]!r} is not one of the classes {list(classes)}",
                        file=file, row=pos + 1, column=column)
    return labels.to_numpy(dtype=np.int64)


def _image_bytes(paths: Sequence[str]) -> np.ndarray:
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


def _in_dir(directory: Path, names: Iterable[str], ext: str = ".jpg") -> list[str]:
    return [os.path.join(directory, f"{name}{ext}") for name in names]


def _meta_columns(df: pd.DataFrame, file: Path, age: str | None, sex: str | None,
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


def _canonical(*, ids: Iterable[str], paths: list[str], groups: Iterable[str],
               labels: np.ndarray, task: Task, source: str, split: str,
               meta: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The canonical columns (meta from `_meta_columns`); labels -1 = unknown."""
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
        "image_bytes": _image_bytes(paths),
    })


def _table(frames: Sequence[pd.DataFrame], task: Task, origin: Path,
           attrs: Mapping[str, object] | None = None) -> LesionTable:
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df.attrs.update(attrs or {})
    return LesionTable(df, task, origin=str(origin)).validate()


def _task_for(classes: Sequence[str], name: str) -> Task:
    if len(classes) == 2:
        return Task(name, "binary", tuple(classes), "roc_auc")
    return Task(name, "multiclass", tuple(classes), "balanced_accuracy")


def _same_ids(left: pd.Series, right: pd.Series, left_file: Path, right_file: Path,
              column: str, what: str) -> None:
    """Every id of ``left`` must appear in ``right`` and vice versa."""
    for a, b, fa, fb in ((left, right, left_file, right_file), (right, left, right_file, left_file)):
        missing = ~a.isin(set(b))
        if missing.any():
            pos = _first_row(missing) - 1
            raise DataError(f"{what} {a.iloc[pos]!r} has no row in {fb}", file=fa, row=pos + 1,
                            column=column)


# ---------------------------------------------------------------------------------- ISIC 2020
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
        df = _read_csv(csv, (*meta, "target") if split == "train" else meta, "isic2020")
        ids = _require_ids(df, "image_name", csv)
        patients = _require_ids(df, "patient_id", csv, unique=False)
        if split == "train":
            target = df["target"].str.replace(r"\.0$", "", regex=True)  # 1.0 -> 1
            labels = _class_labels(target, ("0", "1"), csv, "target")
        else:
            labels = np.full(len(df), -1)
        meta_cols = _meta_columns(df, csv, "age_approx", "sex", "anatom_site_general_challenge")
        out = _canonical(ids=ids, paths=_in_dir(folder, ids), groups=patients, labels=labels,
                         task=MELANOMA, source="isic2020", split=split, meta=meta_cols)
        out["patient_id"] = patients.to_numpy()
        out["diagnosis"] = df["diagnosis"].to_numpy() if "diagnosis" in df else np.nan
        if split == "train":
            out["lesion_id"] = _isic2020_lesions(data_dir, ids, labels)
        frames.append(out)
    df = pd.concat(frames, ignore_index=True)
    df["n_images"] = df.groupby("patient_id")["image_id"].transform("size").astype(int)
    return _table([df], MELANOMA, data_dir / "train.csv")


def _isic2020_lesions(data_dir: Path, ids: pd.Series, labels: np.ndarray) -> np.ndarray:
    """lesion_id per training image from the optional v2 ground truth (NaN when absent)."""
    gt_csv = data_dir / "ISIC_2020_Training_GroundTruth_v2.csv"
    if not gt_csv.is_file():
        return np.full(len(ids), np.nan, dtype=object)
    gt = _read_csv(gt_csv, ("image_name", "lesion_id", "target"), "isic2020")
    gt_ids = _require_ids(gt, "image_name", gt_csv)
    target = pd.Series(labels, index=ids.to_numpy())
    shared = gt_ids.isin(target.index)
    gt_target = pd.to_numeric(gt["target"], errors="coerce")
    differ = shared & (gt_target != target.reindex(gt_ids.to_numpy()).to_numpy())
    if differ.any():
        pos = _first_row(differ) - 1
        raise DataError(f"target of {gt_ids.iloc[pos]} disagrees with train.csv", file=gt_csv,
                        row=pos + 1, column="target")
    lesions = pd.Series(gt["lesion_id"].to_numpy(dtype=object), index=gt_ids.to_numpy())
    return lesions.reindex(ids.to_numpy()).to_numpy(dtype=object)


# ---------------------------------------------------------------------------------- ISIC 2019
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
    gt = _read_csv(gt_csv, ("image", *ISIC2019_CLASSES), "isic2019")
    meta_cols = ("image", "age_approx", "anatom_site_general", "sex")
    meta = _read_csv(meta_csv, meta_cols, "isic2019")
    gt_ids, meta_ids = _require_ids(gt, "image", gt_csv), _require_ids(meta, "image", meta_csv)
    _same_ids(gt_ids, meta_ids, gt_csv, meta_csv, "image", "image")
    labels = pd.Series(_onehot_labels(gt, ISIC2019_CLASSES, gt_csv, ignored=("UNK",)),
                       index=gt_ids.to_numpy())
    lesions = (meta["lesion_id"] if "lesion_id" in meta else pd.Series(np.nan, index=meta.index))
    frames = [_isic2019_frame(meta, meta_csv, meta_ids, lesions,
                              labels.reindex(meta_ids.to_numpy()).to_numpy(), train_dir, "train")]
    if include_test:
        test_csv = data_dir / "ISIC_2019_Test_Metadata.csv"
        test = _read_csv(test_csv, meta_cols, "isic2019")
        test_ids = _require_ids(test, "image", test_csv)
        test_dir = Path(test_image_dir or image_dir or data_dir / "ISIC_2019_Test_Input")
        frames.append(_isic2019_frame(test, test_csv, test_ids, pd.Series(np.nan, index=test.index),
                                      np.full(len(test), -1), test_dir, "test"))
    df = pd.concat(frames, ignore_index=True)
    attrs = {"group_from_image": int(df["lesion_id"].isna().sum())}
    return _table([df], ISIC2019_8, gt_csv, attrs)


def _isic2019_frame(df: pd.DataFrame, file: Path, ids: pd.Series, lesions: pd.Series,
                    labels: np.ndarray, folder: Path, split: str) -> pd.DataFrame:
    groups = np.where(lesions.isna().to_numpy(), ids.to_numpy(), lesions.to_numpy(dtype=object))
    out = _canonical(ids=ids, paths=_in_dir(folder, ids), groups=groups, labels=labels,
                     task=ISIC2019_8, source="isic2019", split=split,
                     meta=_meta_columns(df, file, "age_approx", "sex", "anatom_site_general"))
    out["lesion_id"] = lesions.to_numpy(dtype=object)
    out["isic_id"] = ids.str.replace(r"_downsampled$", "", regex=True).to_numpy()
    return out


# ---------------------------------------------------------------------------------- HAM10000
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
    df = _read_csv(csv, ("lesion_id", "image_id", "dx", "age", "sex", "localization"), "ham10000")
    ids = _require_ids(df, "image_id", csv)
    lesions = _require_ids(df, "lesion_id", csv, unique=False)
    labels = _class_labels(df["dx"].str.lower(), HAM7.classes, csv, "dx")
    out = _canonical(ids=ids, paths=_ham_paths(data_dir, image_dir, ids), groups=lesions,
                     labels=labels, task=HAM7, source="ham10000", split="train",
                     meta=_meta_columns(df, csv, "age", "sex", "localization"))
    out["lesion_id"] = lesions.to_numpy()
    for extra in ("dx_type", "dataset"):
        if extra in df:
            out[extra] = df[extra].to_numpy(dtype=object)
    return _table([out], HAM7, csv)


def _ham_paths(data_dir: Path, image_dir: PathLike | None, ids: pd.Series) -> list[str]:
    if image_dir:
        return _in_dir(Path(image_dir), ids)
    for name in HAM_IMAGE_DIRS:
        folder = data_dir / name
        if not folder.is_dir():
            continue
        part2 = data_dir / "HAM10000_images_part_2"
        if name.endswith("_part_1") and part2.is_dir():
            in_part2 = {p.stem for p in part2.iterdir()}
            return [os.path.join(part2 if i in in_part2 else folder, f"{i}.jpg") for i in ids]
        return _in_dir(folder, ids)
    return _in_dir(data_dir / "images", ids)


# ----------------------------------------------------------------------------------- MILK10k
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
    meta = _read_csv(meta_csv, MILK_META, "milk10k")
    gt = _read_csv(gt_csv, ("lesion_id", *MILK11.classes), "milk10k")
    gt_ids = _require_ids(gt, "lesion_id", gt_csv)
    _same_ids(_require_ids(meta, "lesion_id", meta_csv, unique=False).drop_duplicates(), gt_ids,
              meta_csv, gt_csv, "lesion_id", "lesion")
    labels = pd.Series(_onehot_labels(gt, MILK11.classes, gt_csv), index=gt_ids.to_numpy())
    frames = [_milk_frame(meta, meta_csv, train_dir, labels, "train")]
    if include_test:
        test_csv = data_dir / "MILK10k_Test_Metadata.csv"
        test_dir = Path(test_image_dir or image_dir or data_dir / "MILK10k_Test_Input")
        frames.append(_milk_frame(_read_csv(test_csv, MILK_META, "milk10k"), test_csv, test_dir,
                                  None, "test"))
    return _table([milk_view(f, view) for f in frames], MILK11, meta_csv)


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
    frame = _milk_frame(_read_csv(csv, MILK_META, "milk10k"), csv, folder, None, "test")
    return LesionTable(milk_view(frame, view), MILK11, origin=str(csv))  # test rows only


def is_milk10k_table(columns: Iterable[str]) -> bool:
    """Whether a CSV with these columns is in the MILK10k metadata layout (`MILK_META`)."""
    return set(MILK_META) <= {str(c).strip() for c in columns}


MILK_META = ("lesion_id", "image_type", "isic_id", "age_approx", "sex", "site")
#: the ``milk_view`` choices: which image of the pair is ``image_path`` (a single-image
#: model's input; ``image_path_2`` holds the other)
MILK_VIEWS = ("dermoscopic", "clinical")
#: image folders `load_milk10k` looks for under ``data_dir`` (the official name first; then
#: the resized copy of ``../shared/data/milk10k``)
MILK_IMAGE_DIRS = ("MILK10k_Training_Input", "images_256x192")


def _milk_image_dir(data_dir: Path) -> Path:
    """The first folder of `MILK_IMAGE_DIRS` under ``data_dir`` that exists (else the first)."""
    found = [data_dir / name for name in MILK_IMAGE_DIRS if (data_dir / name).is_dir()]
    return found[0] if found else data_dir / MILK_IMAGE_DIRS[0]


def milk_view(df: pd.DataFrame, view: str) -> pd.DataFrame:
    """A MILK10k frame with ``view``'s image as ``image_path`` (dermoscopic: as built; clinical:
    the two image columns and their file sizes swapped)."""
    if view not in MILK_VIEWS:
        raise DataError(f"milk_view must be one of {', '.join(MILK_VIEWS)}; got {view!r}")
    if view == "dermoscopic":
        return df
    out = df.copy()
    for a, b in (("image_path", "image_path_2"), ("image_bytes", "image_bytes_2")):
        out[a], out[b] = df[b].to_numpy(), df[a].to_numpy()
    return out


def _milk_frame(meta: pd.DataFrame, file: Path, folder: Path, labels: pd.Series | None,
                split: str) -> pd.DataFrame:
    """One row per lesion from a metadata file holding a dermoscopic and a clinical row each."""
    lesion = _require_ids(meta, "lesion_id", file, unique=False)
    isic = _require_ids(meta, "isic_id", file).to_numpy()
    kind = meta["image_type"].str.lower().fillna("")
    kind = np.where(kind.str.startswith("dermoscopic"), "derm",
                    np.where(kind.str.startswith("clinical"), "clin", ""))
    if (kind == "").any():
        pos = _first_row(kind == "") - 1
        raise DataError(f"image_type {meta['image_type'].iloc[pos]!r} is neither dermoscopic nor "
                        "clinical", file=file, row=pos + 1, column="image_type")
    norm = _meta_columns(meta, file, "age_approx", "sex", "site")  # rows as in the file
    numeric = {c: _numeric(meta, c, file) for c in meta.columns
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
            pos = int(first.index[_first_row(at.isna()) - 1])
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
            i = _first_row(differ) - 1
            raise DataError(f"lesion {first.iloc[i]}: {column} {meta[column].iloc[c[i]]!r} "
                            f"disagrees with its dermoscopic row {d[i] + 1} "
                            f"({meta[column].iloc[d[i]]!r})", file=file, row=int(c[i]) + 1,
                            column=column)
    ids = first.to_numpy()
    label = (labels.reindex(ids).to_numpy() if labels is not None else np.full(len(ids), -1))
    paths = _milk_paths(folder, ids, isic[d])
    out = _canonical(ids=ids, paths=paths, groups=ids, labels=label, task=MILK11,
                     source="milk10k", split=split, meta={k: v[d] for k, v in norm.items()})
    out["image_path_2"] = _milk_paths(folder, ids, isic[c])
    out["image_bytes_2"] = _image_bytes(out["image_path_2"].tolist())
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


# ---------------------------------------------------------------------------------- ISIC 2024
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
        df = _read_csv(csv, (*ISIC2024_META, "target") if split == "train" else ISIC2024_META,
                       "isic2024")
        ids = _require_ids(df, "isic_id", csv)
        labels = (_class_labels(df["target"].str.replace(r"\.0$", "", regex=True), ("0", "1"),
                                csv, "target") if split == "train" else np.full(len(df), -1))
        patients = _require_ids(df, "patient_id", csv, unique=False)
        out = _canonical(ids=ids, paths=_isic2024_paths(data_dir, image_dir, split, ids),
                         groups=patients, labels=labels, task=ISIC2024, source="isic2024",
                         split=split, meta=_meta_columns(df, csv, "age_approx", "sex",
                                                         "anatom_site_general"))
        frames.append(_isic2024_extras(out, df, csv, patients))
    df = pd.concat(frames, ignore_index=True)
    df["n_images"] = df.groupby("patient_id")["image_id"].transform("size").astype(int)
    return _table([df], ISIC2024, data_dir / MAIN_FILE["isic2024"])


def _isic2024_paths(data_dir: Path, image_dir: PathLike | None, split: str,
                    ids: pd.Series) -> list[str]:
    """Image paths: ``image_dir``, else members of ``{split}-image.hdf5``, else the folder."""
    if image_dir:
        return _in_dir(Path(image_dir), ids)
    archive, folder = data_dir / f"{split}-image.hdf5", data_dir / f"{split}-image" / "image"
    if not archive.is_file() and folder.is_dir():
        return _in_dir(folder, ids)
    return [os.path.join(archive, name) for name in ids]


def _isic2024_extras(out: pd.DataFrame, df: pd.DataFrame, csv: Path,
                     patients: pd.Series) -> pd.DataFrame:
    """patient_id, the tbp_lv_* and clin_size numbers, the text columns, ``diagnosis``."""
    out["patient_id"] = patients.to_numpy()
    for column in df.columns:
        if column in ISIC2024_TEXT:
            out[column] = df[column].to_numpy(dtype=object)
        elif column.startswith("tbp_lv_") or column == "clin_size_long_diam_mm":
            out[column] = _numeric(df, column, csv)
    diagnosis = pd.Series("UNK", index=df.index, dtype=object)
    for column in ("iddx_2", "iddx_3"):  # the more specific level wins
        if column in df.columns:
            words = df[column].str.strip().str.lower().map(ISIC2024_DIAGNOSIS)
            diagnosis = words.where(words.notna(), diagnosis)
    out["diagnosis"] = np.where(out["split"] == "train", diagnosis.to_numpy(), np.nan)
    return out


# ----------------------------------------------------------------------------- 2019 + 2020
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


# ------------------------------------------------------------------------ user's own data
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
    df = _read_csv(csv, [image_column, label_column, *optional, *meta_columns.values()])
    names = _require_ids(df, image_column, csv)
    split = np.full(len(df), "train", dtype=object)
    if split_column:
        split = df[split_column].str.lower().to_numpy(dtype=object)
        bad = ~pd.Series(split).isin(["train", "test"])
        if bad.any():
            pos = _first_row(bad) - 1
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
    labels = _class_labels(df[label_column], classes, csv, label_column, allow_empty=True)
    if (train & (labels < 0)).any():
        raise DataError("empty label on a training row", file=csv,
                        row=_first_row(train & (labels < 0)), column=label_column)
    ext = image_ext.lower()
    files = [n if not ext or n.lower().endswith(ext) else n + image_ext for n in names]
    folder = Path(image_dir) if image_dir else csv.parent
    paths = [f if os.path.isabs(f) else os.path.join(folder, f) for f in files]
    groups = _require_ids(df, group_column, csv, unique=False) if group_column else names
    meta = _meta_columns(df, csv, meta_columns.get("age"), meta_columns.get("sex"),
                         meta_columns.get("site"))
    task = _task_for(classes, "custom")
    out = _canonical(ids=names, paths=paths, groups=groups, labels=labels, task=task,
                     source="custom", split=split, meta=meta)
    for name, column in meta_columns.items():
        if name not in ("age", "sex", "site"):
            out[f"meta_{name}"] = _numeric(df, column, csv)
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
        task = _task_for(order, "custom")
    return _table([out], task, csv)


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
    return tuple(c for c in classes if c != positive) + (positive,)


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
                row = _first_row((labels == name).to_numpy())
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
        pos = _first_row(bad) - 1
        raise DataError(f"fold {df[column].iloc[pos]!r} is not an integer >= 0 (training rows "
                        "need their fold)", file=file, row=pos + 1, column=column)
    return np.where(train, values.fillna(-1).to_numpy(), -1).astype(np.int64)


def load_image_folder(root: PathLike, classes: Sequence[str] | None = None,
                      positive_label: str = "") -> LesionTable:
    """Class-per-subfolder images (``root/<class>/*.jpg|jpeg|png``), metadata unknown, each
    image its own group (image_id ``<class>/<file name>``). Other entries are ignored and
    counted in ``df.attrs["ignored_files"]`` (folders outside ``classes`` in
    ``ignored_folders``); an empty class folder raises DataError. Two classes: the positive
    one as in `load_custom_csv` (`binary_order`), never the sort order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("image folder does not exist", file=root)
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    folders = [p.name for p in entries if p.is_dir()]
    ignored = sum(1 for p in root.iterdir() if not p.is_dir())
    explicit = classes is not None
    classes = tuple(folders if classes is None else (str(c) for c in classes))
    missing = [c for c in classes if c not in folders]
    if missing:
        raise DataError(f"no class folder(s) {missing}; found {folders}", file=root)
    if len(classes) < 2:
        raise DataError(f"needs at least 2 class folders, found {list(classes)}", file=root)
    classes = binary_order(classes, positive_label, root, "class folder", explicit)
    ids: list[str] = []
    paths: list[str] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = sorted((root / name).iterdir())
        images = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise DataError(f"class folder {name!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})",
                            file=root / name)
        ignored += len(found) - len(images)
        ids += [f"{name}/{p.name}" for p in images]
        paths += [str(p) for p in images]
        labels += [k] * len(images)
    task = _task_for(classes, "custom")
    out = _canonical(ids=ids, paths=paths, groups=ids, labels=np.array(labels), task=task,
                     source="custom", split="train",
                     meta=_meta_columns(pd.DataFrame(index=range(len(ids))), root, None, None, None))
    attrs = {"ignored_files": ignored, "ignored_folders": len(folders) - len(classes)}
    return _table([out], task, root, attrs)


# ----------------------------------------------------------------------------------- dispatch
LOADERS = {"isic2020": load_isic2020, "isic2019": load_isic2019, "ham10000": load_ham10000,
           "milk10k": load_milk10k, "isic2024": load_isic2024}
#: every ``dataset`` that `load_table` serves (`melalib.config` validates against it)
DATASETS = ("synthetic", "isic2020", "isic2019", "isic2020+2019", "ham10000", "milk10k",
            "ham10000+milk10k", "isic2024", "custom", "image_folder")
#: the multi-source datasets: name -> (subfolders of data_dir, merge)
MERGED = {"isic2020+2019": (("isic2020", "isic2019"), merge_isic2019_2020),
          "ham10000+milk10k": (("ham10000", "milk10k"), merge_ham_milk)}


def load_table(data_cfg: DataConfig) -> LesionTable:
    """The table a `DataConfig` names; ``image_dir`` (if set) overrides the image folder.

    ``isic2020+2019`` expects ``data_dir`` to hold ``isic2020/`` (Kaggle files) and
    ``isic2019/`` (ISIC 2019 CSVs); an ``image_dir`` override then serves both (a flat
    cache). ``synthetic`` generates (or reuses) data under ``data_dir`` (default ``data``).
    """
    dataset, image_dir = data_cfg.dataset, data_cfg.image_dir or None
    if dataset == "synthetic":
        name = (f"{data_cfg.synthetic_task}_{data_cfg.synthetic_patients}p_"
                f"{data_cfg.synthetic_image_size}px_s{data_cfg.synthetic_seed}_v{VERSION}")
        return make_synthetic(out_dir=Path(data_cfg.data_dir or "data") / "synthetic" / name,
                              task=data_cfg.synthetic_task, n_patients=data_cfg.synthetic_patients,
                              image_size=data_cfg.synthetic_image_size, seed=data_cfg.synthetic_seed)
    if dataset == "custom":
        if not data_cfg.custom_csv:
            raise DataError("dataset=custom needs custom_csv, a CSV naming images and labels")
        return load_custom_csv(
            data_cfg.custom_csv, image_column=data_cfg.custom_image_column,
            label_column=data_cfg.custom_label_column,
            group_column=data_cfg.custom_group_column or None,
            split_column=data_cfg.custom_split_column or None,
            meta_columns=parse_meta_columns(data_cfg.custom_meta_columns),
            classes=data_cfg.custom_classes or None, image_dir=image_dir,
            fold_column=data_cfg.custom_fold_column or None,
            positive_label=data_cfg.positive_label,
            label_map=parse_meta_columns(data_cfg.custom_label_map))
    if dataset == "image_folder":
        if not data_cfg.data_dir:
            raise DataError("dataset=image_folder needs data_dir, a folder of class folders "
                            "(<data_dir>/<class>/*.jpg)")
        return load_image_folder(data_cfg.data_dir, classes=data_cfg.custom_classes or None,
                                 positive_label=data_cfg.positive_label)
    if dataset not in (*LOADERS, *MERGED):
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    check_data_dir(data_cfg)
    data_dir = Path(data_cfg.data_dir)
    if dataset in MERGED:
        (first, second), merge = MERGED[dataset]
        return merge(LOADERS[first](data_dir / first, image_dir),
                     LOADERS[second](data_dir / second, image_dir))
    if dataset == "milk10k":
        return load_milk10k(data_dir, image_dir, view=data_cfg.milk_view)
    return LOADERS[dataset](data_dir, image_dir)


def check_data_dir(data_cfg: DataConfig) -> None:
    """DataError naming the folder when a downloaded dataset's ``data_dir`` is missing (a
    cheap check `melalib.train` makes before anything slower, such as looking for weights);
    the synthetic, custom and image-folder sources are left to `load_table`."""
    dataset = data_cfg.dataset
    if dataset not in (*LOADERS, *MERGED):
        return
    if dataset in MERGED:
        parts = MERGED[dataset][0]
        expected = " and ".join(f"{p}/{MAIN_FILE[p]}" for p in parts)
        hint = "; ".join(DOWNLOAD[p] for p in parts)
    else:
        expected, hint = MAIN_FILE[dataset], DOWNLOAD[dataset]
    if not data_cfg.data_dir or not Path(data_cfg.data_dir).is_dir():
        where = f"data_dir {data_cfg.data_dir!r} does not exist" if data_cfg.data_dir else \
            "data_dir is empty"
        raise DataError(f"{where}: dataset {dataset} expects a folder holding {expected}; {hint}",
                        file=data_cfg.data_dir or None)
    for name in expected.split(" and "):
        if not (Path(data_cfg.data_dir) / name).is_file():
            raise DataError(f"{name} does not exist in data_dir: dataset {dataset} expects a "
                            f"folder holding {expected}; {hint}",
                            file=Path(data_cfg.data_dir) / name)


def parse_meta_columns(items: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``["age=age_years", "bmi"]`` -> ``{"age": "age_years", "bmi": "bmi"}``."""
    if isinstance(items, Mapping):
        return dict(items)
    out = {}
    for item in items:
        name, _, column = item.partition("=")
        out[name.strip()] = (column or name).strip()
    return out
