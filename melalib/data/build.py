"""The table a run trains on: loaded (or handed in), images pre-flighted, folds assigned,
pseudo-labels added, validated and stored in the run folder.

`build_table(cfg, run, table=None)` composes the data layer's steps (adapters, image checks,
folds, pseudo-labels) for `melalib.engine.train`; `preflight_images` is its image check.
Nothing here imports torch.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..config import DataConfig, RunConfig
from ..errors import ImageError
from ..folds import assign_folds, check_predefined_folds
from ..io import write_csv
from ..pseudo import add_pseudo_labels
from ..runs import RunDir
from ..table import LesionTable
from .adapters import load_table
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


def build_table(cfg: RunConfig, run: RunDir | None = None, table: LesionTable | None = None,
                progress: bool = False) -> LesionTable:
    """Load the dataset (or take ``table``), leave out rows with absent images
    (`drop_missing`), pre-flight the other images (a progress bar with ``progress``), assign
    grouped folds unless the table has a ``fold`` column (then checked), add pseudo-labels,
    validate, and store the result in ``run``."""
    table = drop_missing(load_table(cfg.data) if table is None else table, cfg, run)
    table = preflight_images(table, cfg, run, progress)
    if "fold" in table.df.columns:  # predefined (custom_fold_column, or a table handed in)
        table = check_predefined_folds(table, cfg.data.n_folds)
    else:
        table = configured_folds(table, cfg.data)
    if cfg.data.pseudo_run:
        table = add_pseudo_labels(table, cfg.data.pseudo_run, cfg.data.pseudo_threshold)
    table.validate()
    if run is not None:
        run.save_table(table)
    return table


def drop_missing(table: LesionTable, cfg: RunConfig, run: RunDir | None) -> LesionTable:
    """``table`` without its rows whose image files are absent: test rows always, training
    rows under ``missing_images=drop`` (else `check_missing` raises). The rows left out go
    to ``missing_images.csv`` and run.json counts them: ``n_missing_image_rows`` (training
    rows), ``n_missing_image_test_rows`` (test rows, not predicted)."""
    missing = check_missing(table, cfg)
    gone = left_out_rows(missing, cfg)
    n_train = int((gone["split"] == "train").sum())
    if run is not None:
        run.update_info(n_missing_image_rows=n_train,
                        n_missing_image_test_rows=len(gone) - n_train)
        if len(gone):
            write_csv(run.path / "missing_images.csv", gone)
    if n_train:
        n_rows = int((table.df["split"] == "train").sum())
        log.warning("missing_images=drop: training on %d of %d training rows; %d left out "
                    "(absent image files, listed in missing_images.csv)", n_rows - n_train,
                    n_rows, n_train)
    if len(gone) > n_train:
        log.warning("%d test rows have absent image files: not predicted (listed in "
                    "missing_images.csv)", len(gone) - n_train)
    return leave_out(table, missing, cfg)


def preflight_images(table: LesionTable, cfg: RunConfig, run: RunDir | None,
                     progress: bool = False) -> LesionTable:
    """Every listed image must be readable; bad ones raise, or are skipped and logged.

    Image files next to the listed ones that the table does not name are counted in
    run.json (``n_unlisted_images``) and listed in ``unlisted_images.csv``, never fatal."""
    if not cfg.model.use_image:
        return table
    unlisted = find_unlisted_images(table.df)  # reported, never fatal
    if run is not None:
        run.update_info(n_unlisted_images=len(unlisted))
        if unlisted:
            write_csv(run.path / "unlisted_images.csv", pd.DataFrame({"path": unlisted}))
    if unlisted:
        log.warning("%d image file(s) next to the listed images are not in the table, e.g. %s",
                    len(unlisted), unlisted[0])
    bad = check_images_readable(table.df, workers=max(1, cfg.data.num_workers),
                                options=ImageOptions.from_config(cfg.data), progress=progress)
    if bad.empty:
        if run is not None:
            run.update_info(n_skipped_images=0)
        return table
    if run is not None:
        write_csv(run.path / "bad_images.csv", bad)
    where = f"; the list is in {run.path / 'bad_images.csv'}" if run is not None else ""
    if not cfg.data.skip_bad_images:
        first = bad.iloc[0]
        raise ImageError(
            f"{len(bad)} image(s) are missing or unreadable ({first['reason']}: {first['path']})"
            f"{where}. Fix or remove them, or set skip_bad_images=true to train without them "
            "(they are then listed in skipped_images.csv)",
            file=table.origin or None, row=int(first["row"]), column=str(first["column"]))
    rows = sorted(set(bad["row"].astype(int) - 1))
    keep = np.ones(len(table.df), dtype=bool)
    keep[rows] = False
    if run is not None:
        skipped = table.df.iloc[rows][["image_id", "split"]].assign(
            reason=bad.groupby("row")["reason"].first().to_numpy())
        write_csv(run.path / "skipped_images.csv", skipped)
        run.update_info(n_skipped_images=len(rows))
    n_train = int((table.df["split"].iloc[rows] == "train").sum())
    log.warning("skip_bad_images: leaving out %d of %d rows (%d training, %d test) with "
                "unreadable images%s", len(rows), len(keep), n_train, len(rows) - n_train, where)
    return table.select(keep)
