"""The table a run trains on: loaded (or handed in), images pre-flighted, folds assigned,
pseudo-labels added and validated.

`build_table(cfg, table=None)` composes the data layer's steps (`load_table`, image checks,
folds, pseudo-labels) for `melalib.engine.train` and returns the table with its pre-flight
report (`Preflight`), which the engine stores in the run through `RunDir`;
`preflight_images` is its image check.
Nothing here imports torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig, RunConfig
from ..errors import ImageError
from ..folds import assign_folds, check_predefined_folds
from ..pseudo import add_pseudo_labels
from ..table import LesionTable
from .load import load_table
from .dataset import check_images_readable, find_unlisted_images
from .images import ImageOptions
from .missing import check_missing, leave_out, left_out_rows

log = logging.getLogger("melalib")


def configured_folds(table: LesionTable, data_cfg: DataConfig) -> LesionTable:
    """``table`` with the grouped folds ``data_cfg`` asks for (``n_folds``, ``fold_seed``,
    ``fold_stratify``): the folds training assigns."""
    return assign_folds(table, n_folds=data_cfg.n_folds, seed=data_cfg.fold_seed,
                        stratify=data_cfg.fold_stratify)


def source_table(cfg: RunConfig, table: LesionTable | None = None) -> LesionTable:
    """The dataset ``cfg`` names (or ``table``), checked for absent image files
    (`melalib.data.missing.check_missing`): training calls it before it writes anything."""
    table = load_table(cfg.data) if table is None else table
    check_missing(table, cfg)
    return table


@dataclass
class Preflight:
    """What building a run's table found and left out, for the run to store (`RunDir`
    writes it: `RunDir.write_preflight`): rows left out for absent image files
    (``missing``: test rows always, training rows under ``missing_images=drop``), image files
    the table does not name (``unlisted``), unreadable images (``bad``) and the rows left
    out for them under ``skip_bad_images`` (``skipped``). ``refused``: unreadable images
    without ``skip_bad_images``; `check` then raises."""

    missing: pd.DataFrame | None = None
    n_missing_train: int = 0
    unlisted: list[str] | None = None
    bad: pd.DataFrame | None = None
    skipped: pd.DataFrame | None = None
    origin: str = ""

    @property
    def refused(self) -> bool:
        return self.bad is not None and len(self.bad) > 0 and self.skipped is None

    def check(self, where: Path | None = None) -> None:
        """ImageError for unreadable images without ``skip_bad_images`` (``where``: the
        file that lists them, named in the message)."""
        if not self.refused:
            return
        assert self.bad is not None
        first = self.bad.iloc[0]
        listed = f"; the list is in {where}" if where is not None else ""
        raise ImageError(
            f"{len(self.bad)} image(s) are missing or unreadable ({first['reason']}: "
            f"{first['path']}){listed}. Fix or remove them, or set skip_bad_images=true to "
            "train without them (the run then lists them as skipped images)",
            file=self.origin or None, row=int(first["row"]), column=str(first["column"]))


def build_table(cfg: RunConfig, table: LesionTable | None = None, progress: bool = False
                ) -> tuple[LesionTable, Preflight]:
    """Load the dataset (or take ``table``), leave out rows with absent images
    (`drop_missing`), pre-flight the other images (a progress bar with ``progress``), assign
    grouped folds unless the table has a ``fold`` column (then checked), add pseudo-labels,
    validate. Returns the table and its `Preflight` report, which the caller stores and
    checks (`Preflight.check`); when the pre-flight refuses images the table is returned as
    it was then, unfolded."""
    report = Preflight()
    table = drop_missing(load_table(cfg.data) if table is None else table, cfg, report)
    table = preflight_images(table, cfg, report, progress)
    if report.refused:
        return table, report
    if "fold" in table.df.columns:  # predefined (custom_fold_column, or a table handed in)
        table = check_predefined_folds(table, cfg.data.n_folds)
    else:
        table = configured_folds(table, cfg.data)
    if cfg.data.pseudo_run:
        table = add_pseudo_labels(table, cfg.data.pseudo_run, cfg.data.pseudo_threshold)
    table.validate()
    return table, report


def drop_missing(table: LesionTable, cfg: RunConfig, report: Preflight | None = None
                 ) -> LesionTable:
    """``table`` without its rows whose image files are absent: test rows always, training
    rows under ``missing_images=drop`` (else `check_missing` raises). The rows left out go
    to ``report`` (the run lists and counts them: training rows, test rows not predicted)."""
    missing = check_missing(table, cfg)
    gone = left_out_rows(missing, cfg)
    n_train = int((gone["split"] == "train").sum())
    if report is not None:
        report.missing, report.n_missing_train = gone, n_train
    if n_train:
        n_rows = int((table.df["split"] == "train").sum())
        log.warning("missing_images=drop: training on %d of %d training rows; %d left out "
                    "(absent image files, listed in the run folder)", n_rows - n_train,
                    n_rows, n_train)
    if len(gone) > n_train:
        log.warning("%d test rows have absent image files: not predicted (listed in the run "
                    "folder)", len(gone) - n_train)
    return leave_out(table, missing, cfg)


def preflight_images(table: LesionTable, cfg: RunConfig, report: Preflight | None = None,
                     progress: bool = False) -> LesionTable:
    """Every listed image must be readable; bad ones go to ``report`` (which refuses them,
    `Preflight.check`) or, under ``skip_bad_images``, are left out and logged. Without a
    ``report`` a bad image raises here.

    Image files next to the listed ones that the table does not name are counted and
    listed in ``report``, never fatal."""
    own = report if report is not None else Preflight()
    own.origin = table.origin
    if not cfg.model.use_image:
        return table
    unlisted = find_unlisted_images(table.df)  # reported, never fatal
    own.unlisted = unlisted
    if unlisted:
        log.warning("%d image file(s) next to the listed images are not in the table, e.g. %s",
                    len(unlisted), unlisted[0])
    bad = check_images_readable(table.df, workers=max(1, cfg.data.num_workers),
                                options=ImageOptions.from_config(cfg.data), progress=progress)
    own.bad = bad
    if bad.empty:
        return table
    if not cfg.data.skip_bad_images:
        if report is None:
            own.check()
        return table
    rows = sorted(set(bad["row"].astype(int) - 1))
    keep = np.ones(len(table.df), dtype=bool)
    keep[rows] = False
    own.skipped = table.df.iloc[rows][["image_id", "split"]].assign(
        reason=bad.groupby("row")["reason"].first().to_numpy())
    n_train = int((table.df["split"].iloc[rows] == "train").sum())
    log.warning("skip_bad_images: leaving out %d of %d rows (%d training, %d test) with "
                "unreadable images (listed in the run folder)", len(rows), len(keep), n_train,
                len(rows) - n_train)
    return table.select(keep)
