"""`melalib predict`: the command line of `melalib.inference`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.csvread import read_columns
from ..data.sources.milk10k import is_milk10k_table, load_milk10k_test
from ..ensemble import submission
from ..errors import ConfigError, DataError, WriteError
from ..inference import Predictor, drift_file, load_predictor
from ..io import check_not_input, write_csv
from ..table import LesionTable
from ..thresholds import bake, run_thresholds


def predict_cli(args: argparse.Namespace) -> int:
    """``melalib predict SOURCE --out CSV [--csv META.csv] [--image-dir DIR] [--tta N]
    [--format auto|frame|submission] [--tune-thresholds]``.

    Without ``--csv`` / ``--image-dir`` the run's stored table's test split is predicted. A
    ``--csv`` in the MILK10k metadata layout (``MILK10k_Test_Metadata.csv``: two rows per
    lesion) is read as MILK10k lesions (`load_milk10k_test`, images under ``--image-dir``).
    ``--format``: ``frame`` (image_id + prob columns), ``submission`` (the task's competition
    format, `ensemble.submission`), ``auto`` (submission for a MILK10k table, else frame).
    ``--tune-thresholds``: per-class thresholds tuned on the run's OOF are baked into the
    probabilities (`thresholds.bake`), so the official 0.5 rule applies them. Each metadata
    feature outside the training distribution is warned once (logged by `Predictor.predict`);
    the whole drift table goes to ``<out>_metadata_drift.csv``.
    """
    predictor = load_predictor(args.source)
    csv = getattr(args, "csv", None)
    image_dir = getattr(args, "image_dir", None)
    inputs = [p for p in (csv, image_dir) if p]
    if Path(args.source).is_file():
        inputs.append(args.source)
    for target in (Path(args.out), drift_file(Path(args.out))):  # never over an input
        check_not_input(target, inputs, "output file")
        if predictor.run is not None and predictor.run.owns(target):
            raise WriteError(f"output file {target} is one of run {predictor.run.path}'s own "
                             "files, which predict reads; write the predictions elsewhere")
    tta = getattr(args, "tta", None)
    batch_size = getattr(args, "batch_size", 64) or 64
    milk = bool(csv) and _milk_csv(Path(csv))
    if milk:
        table = load_milk10k_test(csv, image_dir, view=predictor.cfg.data.milk_view)
        out = predictor.predict(table, tta=tta, batch_size=batch_size)
    elif csv or image_dir:
        out = predictor.predict_folder(image_dir, csv,
                                       image_column=getattr(args, "image_column", "image"),
                                       tta=tta, batch_size=batch_size)
    else:
        if predictor.run is None:
            raise ConfigError(f"{args.source} is a checkpoint outside a run folder: pass --csv "
                              "and/or --image-dir to name the images to predict")
        table = predictor.run.table()
        test = table.test
        if test.empty:
            raise DataError("the run's table has no test split; pass --csv or --image-dir "
                            "to predict other images", file=table.origin, column="split")
        out = predictor.predict(LesionTable(test, table.task, origin=table.origin), tta=tta,
                                batch_size=batch_size)
    if getattr(args, "tune_thresholds", False):
        out = _baked(predictor, out)
    fmt = getattr(args, "format", "auto") or "auto"
    if fmt == "submission" or (fmt == "auto" and milk):
        out = submission(out, predictor.task)
    path = write_csv(args.out, out)
    views = predictor.tta if tta is None else tta
    print(f"wrote {len(out)} predictions ({len(predictor)} model(s), tta={views}) to {path}")
    if predictor.last_shift:
        print(predictor.last_shift)
    if predictor.last_drift is not None and not predictor.last_drift.empty:
        drift_path = write_csv(drift_file(path), predictor.last_drift)
        print(f"metadata drift per feature: {drift_path}")
    return 0


def _milk_csv(csv: Path) -> bool:
    """Whether ``csv`` has the MILK10k metadata layout (header only is read)."""
    columns = read_columns(csv)
    return columns is not None and is_milk10k_table(columns)  # else the reader names it


def _baked(predictor: Predictor, out: pd.DataFrame) -> pd.DataFrame:
    """``out`` with the thresholds tuned on the run's OOF baked into its probabilities; the
    nested CV figure is printed beside the untuned one."""
    if predictor.run is None:
        raise ConfigError("--tune-thresholds tunes on a run's OOF predictions: pass a run "
                          "folder (or a checkpoint inside one)")
    report = run_thresholds(predictor.run)
    columns = predictor.task.prob_columns
    baked = out.copy()
    baked[columns] = bake(out[columns].to_numpy(dtype=np.float64), report.all_rows)
    u, n = report.untuned, report.nested
    print(f"thresholds tuned on {predictor.run.path}'s OOF, baked in: "
          + ", ".join(f"{c} {t:.2f}" for c, t in zip(predictor.task.classes, report.all_rows,
                                                     strict=True)))
    print(f"OOF thresholded macro F1: untuned {u['estimate']:.3f} [{u['low']:.3f}, "
          f"{u['high']:.3f}], nested-tuned {n['estimate']:.3f} [{n['low']:.3f}, "
          f"{n['high']:.3f}]")
    return baked
