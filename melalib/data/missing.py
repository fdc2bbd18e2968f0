"""Partial downloads: listed rows whose image files are absent.

A table may list lesions whose files were never downloaded (the MILK10k CSVs list 5,240
training lesions; ``../shared/data/milk10k/images_256x192`` holds both images of 4,192).
`find_missing` finds them; every image column of the table counts, so a lesion with one of
its two images absent is absent as a pair and never trained as half a pair (whichever view a
single-image model uses, every row of the comparison trains on the same lesions). The
``missing_images`` config field (`MISSING_IMAGES`) decides what happens to training rows:

- ``error`` (default): `check_missing` raises one `ImageError` naming the count and the
  first absent file before a run folder is written (``skip_bad_images=true``, the older and
  broader opt-out, instead leaves them to the image pre-flight, which skips them and lists
  them in the run);
- ``drop``: training uses the rows whose images are all present; the others are listed with
  the reason and counted in the run (`melalib.runs.RunDir.write_preflight`).

Test rows whose images are absent never block training: they are left out of the test
predictions and listed with ``split`` test, never counted as training rows left out.
Counts are rows of the table (lesions for MILK10k), not image files. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import ImageError
from ..registry import Registry
from ..table import LesionTable
from .images import image_exists

if TYPE_CHECKING:
    from ..config import RunConfig

#: the ``missing_images`` choices: name -> whether training rows with absent images are left
#: out (``error``: refused before anything is written, `check_missing`)
MISSING_IMAGES: Registry[bool] = Registry("missing_images", {"error": False, "drop": True})
#: the table's image columns, in order (a paired table has both)
IMAGE_COLUMNS = ("image_path", "image_path_2")
#: the columns of the list of rows left out
COLUMNS = ("row", "image_id", "group_id", "split", "label_name", "missing", "first_path",
           "reason")


@dataclass
class Missing:
    """Rows of a table with absent image files: ``rows`` (`COLUMNS`, one per table row,
    ``row`` 1-based), ``keep`` (bool per table row: every image present)."""

    rows: pd.DataFrame
    keep: np.ndarray

    @property
    def n_train(self) -> int:
        """Training rows with an absent image."""
        return int((self.rows["split"] == "train").sum())

    @property
    def n_test(self) -> int:
        """Test rows with an absent image (left out of test predictions only)."""
        return int((self.rows["split"] == "test").sum())


def find_missing(table: LesionTable, use_image: bool = True) -> Missing:
    """Every row whose image file(s) (`IMAGE_COLUMNS` present in the table) do not exist;
    none when ``use_image`` is False."""
    df = table.df
    columns = [c for c in IMAGE_COLUMNS if c in df.columns] if use_image else []
    absent = np.zeros((len(df), len(columns)), dtype=bool)
    for j, column in enumerate(columns):
        absent[:, j] = [not image_exists(str(p)) for p in df[column].tolist()]
    bad = np.flatnonzero(absent.any(axis=1))
    records = []
    for i in bad:
        names = [c for c, a in zip(columns, absent[i], strict=True) if a]
        first = str(df[names[0]].iat[i])
        what = "both images" if len(names) == 2 else f"{names[0]}"
        records.append((int(i) + 1, str(df["image_id"].iat[i]), str(df["group_id"].iat[i]),
                        str(df["split"].iat[i]), str(df["label_name"].iat[i]),
                        " ".join(names), first, f"{what} absent ({first})"))
    keep = np.ones(len(df), dtype=bool)
    keep[bad] = False
    return Missing(pd.DataFrame.from_records(records, columns=list(COLUMNS)), keep)


def check_missing(table: LesionTable, cfg: RunConfig) -> Missing:
    """`find_missing` under ``cfg``; raise ImageError when training rows have absent
    images and ``missing_images=error`` (unless ``skip_bad_images``)."""
    missing = find_missing(table, cfg.model.use_image)
    if missing.n_train and not MISSING_IMAGES[cfg.data.missing_images] and not cfg.data.skip_bad_images:
        train = missing.rows[missing.rows["split"] == "train"]
        first = train.iloc[0]
        n_rows = int((table.df["split"] == "train").sum())
        raise ImageError(
            f"{len(train)} of {n_rows} training rows (lesions, or images, as the table "
            f"lists them) have absent image files (first missing: {first['first_path']}, image_id "
            f"{first['image_id']}). A partial download? Set missing_images=drop to train on "
            f"the {n_rows - len(train)} rows whose images are all present (the others are "
            "then listed in the run folder); nothing was written",
            file=table.origin or None, row=int(first["row"]),
            column=first["missing"].split()[0])
    return missing


def leave_out(table: LesionTable, missing: Missing, cfg: RunConfig) -> LesionTable:
    """``table`` without the rows `check_missing` says go: absent test rows always, absent
    training rows under ``missing_images=drop`` (under ``skip_bad_images`` alone the image
    pre-flight skips them)."""
    drop_train = MISSING_IMAGES[cfg.data.missing_images]
    test = (table.df["split"] == "test").to_numpy()
    keep = missing.keep | (~test & (not drop_train))
    return table if keep.all() else table.select(keep)


def left_out_rows(missing: Missing, cfg: RunConfig) -> pd.DataFrame:
    """The rows `leave_out` removes (the list a run stores)."""
    if MISSING_IMAGES[cfg.data.missing_images]:
        return missing.rows
    return missing.rows[missing.rows["split"] == "test"]
