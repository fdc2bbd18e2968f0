"""The one reader of dataset and user CSVs (every source of `melalib.data.sources` and the
``--csv`` of `melalib predict`), and the cell checks that name file, row and column.

The NA rule (one for training tables and prediction): every cell is read as text (ids stay
strings: ``007`` stays ``007``) and stripped of surrounding spaces; a cell is missing (NaN)
when it is empty or blank, or when its text as written is one of the words pandas reads as
missing by default (``NA``, ``N/A``, ``n/a``, ``NaN``, ``nan``, ``-NaN``, ``null``,
``NULL``, ``None``, ``#N/A``, ``#NA``, ``<NA>``, ``1.#IND``, ...: `pandas.read_csv`'s
default ``na_values``). The word must fill the cell: `` NA `` with spaces around is kept as
the text ``NA`` (the words are matched before the strip). A required id that is missing is
refused by `require_ids`, which names the word it found. A row with cells beyond the
header's columns is refused (pandas only warns), so a trailing comma never shifts the
columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from csv import reader as csv_reader
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError

PathLike = str | Path


def first_row(mask: Iterable[bool]) -> int:
    """1-based data row of the first True."""
    return int(np.flatnonzero(np.asarray(mask, dtype=bool))[0]) + 1


def read_csv(path: PathLike, required: Sequence[str] = (), download: str = "") -> pd.DataFrame:
    """Read a CSV as strings under the NA rule (cells stripped, empty -> NaN) and require
    ``required`` columns; ``download`` (where to get a dataset's file) is added to the
    message of a missing file."""
    path = Path(path)
    hint = f"; {download}" if download else ""
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


def read_columns(path: PathLike) -> list[str] | None:
    """The header's column names (nothing else is read), stripped; None when the file
    cannot be read as a CSV (`read_csv` then names the problem)."""
    try:
        columns = pd.read_csv(path, nrows=0).columns
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    return [str(c).strip() for c in columns]


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


def require_ids(df: pd.DataFrame, column: str, file: Path, unique: bool = True) -> pd.Series:
    """The column as strings; empty or (if ``unique``) repeated values raise DataError."""
    values = df[column]
    if values.isna().any():
        row = first_row(values.isna())
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


def same_ids(left: pd.Series, right: pd.Series, left_file: Path, right_file: Path,
             column: str, what: str) -> None:
    """Every id of ``left`` must appear in ``right`` and vice versa."""
    for a, b, fa, fb in ((left, right, left_file, right_file), (right, left, right_file, left_file)):
        missing = ~a.isin(set(b))
        if missing.any():
            pos = first_row(missing) - 1
            raise DataError(f"{what} {a.iloc[pos]!r} has no row in {fb}", file=fa, row=pos + 1,
                            column=column)


def numeric_column(df: pd.DataFrame, column: str, file: Path) -> np.ndarray:
    """A numeric column (NaN allowed); text raises DataError with row and column."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        pos = first_row(bad) - 1
        raise DataError(f"{df[column].iloc[pos]!r} is not a number", file=file, row=pos + 1,
                        column=column)
    return values.to_numpy(dtype=float)


def onehot_labels(df: pd.DataFrame, classes: Sequence[str], file: Path,
                  ignored: Sequence[str] = ()) -> np.ndarray:
    """Class index per row from one-hot columns; anything but exactly one 1 among ``classes``
    (e.g. UNK set, two 1s, no 1) raises DataError naming row and column(s)."""
    columns = [*classes, *[c for c in ignored if c in df.columns]]
    onehot = np.zeros((len(df), len(columns)), dtype=int)
    for j, column in enumerate(columns):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            pos = first_row(bad) - 1
            raise DataError(f"one-hot value {df[column].iloc[pos]!r} is not 0 or 1", file=file,
                            row=pos + 1, column=column)
        onehot[:, j] = values.to_numpy(dtype=int)
    bad = (onehot.sum(axis=1) != 1) | (onehot[:, : len(classes)].sum(axis=1) != 1)
    if bad.any():
        pos = first_row(bad) - 1
        on = [c for c, v in zip(columns, onehot[pos], strict=True) if v == 1]
        where = ", ".join(on) if on else ", ".join(classes)
        raise DataError(f"exactly one of {list(classes)} must be 1, found {on or 'none'}",
                        file=file, row=pos + 1, column=where)
    return onehot[:, : len(classes)].argmax(axis=1)


def class_labels(values: pd.Series, classes: Sequence[str], file: Path, column: str,
                 allow_empty: bool = False) -> np.ndarray:
    """Class index per row from class names; -1 for empty cells where ``allow_empty``."""
    index = {c: i for i, c in enumerate(classes)}
    labels = values.map(lambda v: -1 if pd.isna(v) else index.get(v, -2))
    bad = (labels == -2) | ((labels == -1) & (not allow_empty))
    if bad.any():
        pos = first_row(bad) - 1
        raise DataError(f"label {values.iloc[pos]!r} is not one of the classes {list(classes)}",
                        file=file, row=pos + 1, column=column)
    return labels.to_numpy(dtype=np.int64)
