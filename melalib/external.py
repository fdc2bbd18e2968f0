"""External validation: a trained run (its fold ensemble) scored on another labelled table.

`evaluate_external(run, table)` predicts the table's labelled rows with
`inference.load_predictor`, maps the model's classes onto the table's through
`classmap.class_mapping` (only the classes both define are scored; what was dropped is
reported with row counts) and scores them with the tools every run uses: `metrics`
(bootstrap CIs grouped by ``group_id``, confusion matrix, per-class report, melanoma vs rest
of a multiclass scoring), `calibration` (brier, ECE, reliability), `subgroups` (per
``source`` too when the table has several) and `plots`. ``oof=True`` scores the run's own
rows out of fold (`oof_table`), `blank_metadata` blanks age, sex and site first.
`write_evaluation` stores it as a run-like folder (`runs.write_report_folder`: marker kind
``evaluate``; the stored table with the scored task and the pooled OOF file the scored
predictions, so
`RunDir.read` opens it). ``melalib evaluate`` is `melalib.cli.evaluate`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import plots
from .bootstrap import evaluate_with_ci
from .classmap import ClassMapping, class_mapping
from .config import DataConfig
from .data.load import load_table
from .errors import ConfigError, DataError
from .features import BLANKABLE
from .inference import Predictor, load_predictor
from .io import write_csv, write_json
from .metrics import confusion, evaluate, per_class_report
from .predictions import predicted_labels, prediction_frame
from .runs import RunDir, write_provenance, write_report_folder
from .shift import FLAG, SCORE, oof_scores, separation
from .shift import summary as shift_summary
from .subgroups import DEFAULT_BY, subgroup_metrics
from .table import LesionTable
from .targets import training_table
from .tasks import MELANOMA

log = logging.getLogger("melalib")
KIND = "evaluate"  # the marker kind of an evaluation folder


@dataclass
class Evaluation:
    """One external evaluation: the scored rows and predictions, the mapping, the scores."""

    run: Path
    source: str
    mapping: ClassMapping
    table: LesionTable  # the scored rows, labels in the scored task
    frame: pd.DataFrame  # prediction frame of the scored rows (`prediction_frame`, fold -1)
    metrics: dict[str, Any]
    ci: pd.DataFrame
    per_class: pd.DataFrame | None
    confusion: pd.DataFrame
    subgroups: pd.DataFrame
    dropped: dict[str, Any] = field(default_factory=dict)
    shift: dict[str, Any] | None = None  # `shift_errors`; None when the run stores no stats
    adapt_bn: bool = False  # the models' batch-norm statistics were adapted (`melalib.adapt`)

    def summary(self) -> str:
        """One line: rows scored, the primary metric with its CI, melanoma AUC if any."""
        task = self.mapping.task
        row = self.ci.set_index("metric")
        parts = [f"{len(self.frame)} rows scored ({self.source}"
                 + ("; batch norm adapted to them)" if self.adapt_bn else ")")]
        for name in (task.primary_metric, "melanoma_roc_auc"):
            if name in row.index:
                r = row.loc[name]
                parts.append(f"{name} {r.estimate:.3f} [{r.low:.3f}, {r.high:.3f}]")
        return "; ".join(parts)


def external_table(dataset: str = "", data_dir: str = "", csv: str = "", image_dir: str = "",
                   label_column: str = "label", image_column: str = "image") -> LesionTable:
    """The labelled table to score: an adapter's (``dataset`` + ``data_dir``) or a custom
    CSV of images and class names (``csv``; images under ``image_dir``)."""
    if bool(dataset) == bool(csv):
        raise ConfigError("give exactly one of --dataset (with --data-dir) or --csv")
    if csv:
        cfg = DataConfig(dataset="custom", custom_csv=str(csv), image_dir=str(image_dir or ""),
                         custom_label_column=label_column, custom_image_column=image_column)
    else:
        cfg = DataConfig(dataset=dataset, data_dir=str(data_dir or ""),
                         image_dir=str(image_dir or ""))
    return load_table(cfg)


def scored_rows(table: LesionTable, mapping: ClassMapping, image_columns: list[str],
                skip_missing_images: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows to score (labelled, a class both tasks define, images present) and what was
    left out; a missing image is a DataError naming its row unless ``skip_missing_images``."""
    df = table.df.reset_index(drop=True)
    y = mapping.labels(df["label"].to_numpy())
    absent = {c: ~df[c].map(lambda p: isinstance(p, str) and os.path.isfile(p)).to_numpy()
              for c in image_columns}
    missing = np.logical_or.reduce([*absent.values(), np.zeros(len(df), dtype=bool)])
    first = np.flatnonzero(missing & (y >= 0))
    if len(first) and not skip_missing_images:
        pos = int(first[0])
        column = next(c for c in image_columns if absent[c][pos])
        raise DataError(f"{len(first)} image(s) of scored rows are missing, the first "
                        f"{df[column].iloc[pos]!r} (image_id {df['image_id'].iloc[pos]}); "
                        "pass --skip-missing-images to score the others (they are counted "
                        "in the report)", file=table.origin or None, row=pos + 1, column=column)
    keep = (y >= 0) & ~missing
    dropped = {**mapping.report(df["label"].to_numpy()),
               "missing_images": int(np.sum(missing & (y >= 0)))}
    dropped["n_scored"] = int(keep.sum())
    out = df[keep].reset_index(drop=True)
    out["source_label"] = out["label"].to_numpy()
    out["label"] = y[keep]
    out["label_name"] = np.asarray(mapping.task.classes, dtype=object)[y[keep]]
    return out, dropped


def evaluate_external(run: str | os.PathLike[str] | Predictor, table: LesionTable, *,
                      tta: int | None = None, batch_size: int = 64, n_boot: int = 1000,
                      skip_missing_images: bool = False, progress: bool = True,
                      oof: bool = False, adapt_bn: bool = False) -> Evaluation:
    """Score ``run``'s fold ensemble on ``table``'s labelled rows (see the module doc).

    ``oof``: ``table`` is the run's own (`oof_table`): each row is predicted by the model of
    the fold that held it out, as training's out-of-fold predictions were. ``adapt_bn``:
    each model's image batch-norm statistics are first re-estimated on the images it scores
    (`melalib.adapt`; unlabelled, so no label reaches the predictions)."""
    predictor = run if isinstance(run, Predictor) else load_predictor(run)
    mapping = class_mapping(predictor.task, table.task)
    columns = predictor.required_columns()[1:]
    df, dropped = scored_rows(table, mapping, columns, skip_missing_images)
    if len(df) == 0:
        raise DataError(f"no row left to score: {mapping.summary(table.df['label'])}",
                        file=table.origin or None)
    log.info("evaluate: %s", scored_summary(mapping, table, dropped))
    predictor.impute_absent(df, table.origin or "the external table")
    raw = _predict(predictor, LesionTable(df, predictor.task, origin=table.origin), oof,
                   adapt_bn, tta=tta, batch_size=batch_size, progress=progress)
    scored = LesionTable(df, mapping.task, origin=table.origin)
    probs = mapping.probs(raw[predictor.task.prob_columns].to_numpy())
    frame = prediction_frame(df, mapping.task, _as_2d(probs), -1, labelled=True)
    extra = [c for c in raw.columns if c not in predictor.task.prob_columns and c != "image_id"]
    for column in extra:  # e.g. the image-shift score of `inference`
        frame[column] = raw[column].to_numpy()
    scores = _scores(mapping, df, probs, n_boot)
    if SCORE in frame.columns:
        scores["shift"] = shift_errors(frame, mapping.task, probs, _oof_shift(predictor))
    source = str(table.origin or "table")
    return Evaluation(Path(str(predictor.run.path if predictor.run else run)), source, mapping,
                      scored, frame, dropped=dropped, adapt_bn=adapt_bn, **scores)


def oof_table(run: str | os.PathLike[str]) -> LesionTable:
    """The run's own training rows, with their folds, to score out of fold."""
    table = RunDir.read(run).table()
    df = table.df[table.df["split"] == "train"].reset_index(drop=True)
    return LesionTable(df, table.task, origin=f"{table.origin} (out of fold)")


def diagnosis_table(table: LesionTable) -> LesionTable:
    """A binary melanoma table (ISIC 2020 ``train.csv``, the merged 2019 + 2020 table,
    synthetic binary data) labelled by its ``diagnosis`` words in the 9 shared diagnosis
    classes (`targets.training_table`), so a multiclass model is scored on every class
    both define, not on melanoma vs rest alone."""
    if table.task != MELANOMA:
        raise ConfigError(f"scoring by diagnosis needs a binary melanoma table with a "
                          f"diagnosis column (ISIC 2020 train.csv, isic2020+2019, synthetic "
                          f"binary); this table's task is {table.task.name!r} "
                          f"{list(table.task.classes)}")
    return training_table(table, "diagnosis")


def blank_metadata(table: LesionTable) -> LesionTable:
    """``table`` with age, sex and site blanked ("not recorded", `features.BLANKABLE`): how
    a model does where a clinic records no metadata."""
    df = table.df.assign(**{c: missing for c, missing in BLANKABLE if c in table.df.columns})
    return LesionTable(df, table.task, origin=f"{table.origin} (metadata blanked)")


def _predict(predictor: Predictor, table: LesionTable, oof: bool, adapt_bn: bool,
             **kwargs: Any) -> pd.DataFrame:
    """The ensemble's predictions of ``table``, or with ``oof`` each fold model's of the rows
    of its own fold (rows of folds without a model are an error); with ``adapt_bn`` by
    models adapted to the rows they predict (`Predictor.adapted`)."""
    def adapted(p: Predictor, rows: LesionTable) -> Predictor:
        return p.adapted(rows, batch_size=kwargs.get("batch_size", 64),
                         progress=kwargs.get("progress", True)) if adapt_bn else p

    if not oof:
        return adapted(predictor, table).predict(table, **kwargs)
    df = table.df
    folds = {m.fold for m in predictor.members}
    missing = ~df["fold"].isin(folds)
    if missing.any():
        raise DataError(f"{int(missing.sum())} rows belong to folds without a trained model "
                        f"(trained: {sorted(folds)}); train every fold first",
                        file=table.origin or None, row=int(np.flatnonzero(missing)[0]) + 1,
                        column="fold")
    frames = []
    for m in predictor.members:
        if not (df["fold"] == m.fold).any():
            continue  # a fold whose rows are not asked for
        rows = LesionTable(df[df["fold"] == m.fold].reset_index(drop=True), table.task,
                           origin=table.origin)
        one = Predictor([m], predictor.task, predictor.device, run=predictor.run)
        frames.append(adapted(one, rows).predict(rows, **kwargs))
    return pd.concat(frames).set_index("image_id").loc[df["image_id"]].reset_index()


def shift_errors(frame: pd.DataFrame, task: Any, probs: np.ndarray,
                 in_domain: np.ndarray | None = None) -> dict[str, Any]:
    """Are the flagged images (``image_shift_flag``) the wrong ones more often? The share
    flagged and the error rate of flagged and unflagged rows; with ``in_domain`` (the run's
    OOF scores) the AUROC of the score telling these images from the training clinic's."""
    wrong = predicted_labels(task, probs) != frame["label"].to_numpy()
    flag = frame[FLAG].to_numpy(dtype=bool)

    def rate(mask: np.ndarray) -> float | None:
        return float(wrong[mask].mean()) if mask.any() else None

    return {"n": len(frame), "n_flagged": int(flag.sum()), "share_flagged": float(flag.mean()),
            "error_rate_flagged": rate(flag), "error_rate_unflagged": rate(~flag),
            "median_score": float(np.median(frame[SCORE])),
            "auroc_vs_training_oof": (None if in_domain is None or not len(in_domain)
                                      else separation(in_domain, frame[SCORE].to_numpy())),
            "summary": shift_summary(frame[SCORE].to_numpy())}


def scored_summary(mapping: ClassMapping, table: LesionTable, dropped: dict[str, Any]) -> str:
    """The class mapping's line, the rows left out for a missing image and the rows scored."""
    line = mapping.summary(table.df["label"])
    if dropped.get("missing_images"):
        line += f"; {dropped['missing_images']} of them have no image file (left out)"
    return f"{line}; {dropped['n_scored']} rows scored"


def _oof_shift(predictor: Predictor) -> np.ndarray | None:
    """The run's out-of-fold image-shift scores (in-domain, `shift.oof_scores`), when it
    stores them."""
    if predictor.run is None or not predictor.run.done_folds():
        return None
    return oof_scores(predictor.run)


def _as_2d(probs: np.ndarray) -> np.ndarray:
    return probs.reshape(-1, 1) if probs.ndim == 1 else probs


def _scores(mapping: ClassMapping, df: pd.DataFrame, probs: np.ndarray, n_boot: int
            ) -> dict[str, Any]:
    """Point metrics, bootstrap CIs (grouped by ``group_id``), confusion, per-class report
    and subgroup metrics of the scored rows; melanoma vs rest of a multiclass scoring."""
    task, y, groups = mapping.task, df["label"].to_numpy(), df["group_id"].to_numpy()
    metrics = evaluate(task, y, probs)
    ci = evaluate_with_ci(task, y, probs, groups=groups, n_boot=n_boot)
    mel = mapping.melanoma_class
    if task.kind != "binary" and mel is not None and 0 < np.sum(y == mel) < len(y):
        y_mel, p_mel = (y == mel).astype(int), probs[:, mel]
        metrics["melanoma"] = evaluate(MELANOMA, y_mel, p_mel)
        mci = evaluate_with_ci(MELANOMA, y_mel, p_mel, groups=groups, n_boot=n_boot,
                               metrics=("roc_auc", "pr_auc"))
        ci = pd.concat([ci, mci.assign(metric="melanoma_" + mci["metric"])], ignore_index=True)
    k = task.n_classes
    pred = predicted_labels(task, probs)
    matrix = confusion(y, pred, k, include_ties=task.kind != "binary")
    names = list(task.classes) + (["tie"] if matrix.shape[1] > k else [])
    conf = pd.DataFrame(matrix, index=pd.Index(task.classes, name="true"), columns=names)
    per_class = (per_class_report(y, probs, task.classes) if task.kind == "multiclass"
                 else None)
    by = None
    if "source" in df.columns and df["source"].nunique() > 1:  # e.g. ham10000+milk10k
        by = [c for c in DEFAULT_BY if c in df.columns or (c == "age_band" and "age" in df)]
        by.append("source")
    sub = subgroup_metrics(df, task, _as_2d(probs), n_boot=min(n_boot, 200), by=by)
    return {"metrics": metrics, "ci": ci, "per_class": per_class, "confusion": conf,
            "subgroups": sub}


def scored_source_table(ev: Evaluation, n_rows: int | None = None, seed: int = 0
                        ) -> LesionTable:
    """The rows ``ev`` scored, with their own labels and task back (``source_label``); a
    seeded sample of ``n_rows`` when given (e.g. for `shift.simulate_camera`)."""
    df = ev.table.df
    if n_rows is not None and len(df) > n_rows:
        df = df.sample(n_rows, random_state=seed)
    df = df.reset_index(drop=True).assign(label=df["source_label"].to_numpy())
    names = np.asarray(ev.mapping.data_task.classes, dtype=object)
    return LesionTable(df.assign(label_name=names[df["label"].to_numpy()]),
                       ev.mapping.data_task, origin=ev.table.origin)


def comparison(evaluations: dict[str, Evaluation]) -> pd.DataFrame:
    """One row per named evaluation: rows scored, the primary metric and melanoma AUC with
    CIs (``estimate [low, high]``), the share of images flagged as shifted and the error
    rates of flagged and unflagged rows."""
    rows = {}
    for name, ev in evaluations.items():
        ci = ev.ci.set_index("metric")
        row: dict[str, Any] = {"n": len(ev.frame)}
        for metric in (ev.mapping.task.primary_metric, "roc_auc", "melanoma_roc_auc"):
            if metric in ci.index:
                r = ci.loc[metric]
                row[metric] = f"{r.estimate:.3f} [{r.low:.3f}, {r.high:.3f}]"
        if ev.shift is not None:
            row.update(flagged=ev.shift["share_flagged"],
                       error_flagged=ev.shift["error_rate_flagged"],
                       error_unflagged=ev.shift["error_rate_unflagged"])
        rows[name] = row
    return pd.DataFrame(rows).T.rename_axis("evaluation")


# ----------------------------------------------------------------------------- writing
def default_out(run: str | os.PathLike[str], source: str) -> Path:
    """``<run>_on_<source>`` beside the run folder (``source``: dataset or CSV stem)."""
    run = Path(run).resolve()
    return run.parent / f"{run.name}_on_{Path(source).stem or 'external'}"


def out_tag(source: str, *, oof: bool = False, by_diagnosis: bool = False,
            blank_meta: bool = False, adapt_bn: bool = False) -> str:
    """The name an evaluation's folder gets after ``<run>_on_`` (`default_out`): the source
    (dataset, or a CSV's stem; ``oof`` for the run's own rows) and how it was scored."""
    return ("oof" if oof else Path(source).stem) + "".join(
        suffix for flag, suffix in ((by_diagnosis, "_diagnosis"), (blank_meta, "_blank_meta"),
                                    (adapt_bn, "_adapt_bn")) if flag)


def write_evaluation(ev: Evaluation, out: str | os.PathLike[str], *, overwrite: bool = False,
                     inputs: tuple[str, ...] = (), n_boot_plot: int = 200) -> RunDir:
    """Store ``ev`` as a run-like folder `RunDir.read` opens (see the module doc)."""
    return write_report_folder(out, KIND, lambda run: _fill(run, ev, n_boot_plot),
                               overwrite=overwrite, inputs=(str(ev.run), *inputs))


def _fill(run: RunDir, ev: Evaluation, n_boot_plot: int) -> None:
    ev.table.save(run.table_dir())
    write_csv(run.oof_path(), ev.frame)
    write_csv(run.report_path("ci"), ev.ci)
    write_csv(run.report_path("confusion"), ev.confusion.reset_index())
    if ev.per_class is not None:
        write_csv(run.report_path("per_class"), ev.per_class.reset_index())
    write_csv(run.report_path("subgroups"), ev.subgroups)
    write_json(run.report_path("class_mapping"), ev.dropped)
    if ev.shift is not None:
        write_json(run.report_path("shift"), ev.shift)
    write_json(run.metrics_path(), {
        "kind": KIND, "run": str(ev.run), "source": ev.source, "task": ev.mapping.task.to_dict(),
        "primary_metric": ev.mapping.task.primary_metric, "external": ev.metrics,
        "external_ci": {r["metric"]: {k: r[k] for k in ("estimate", "low", "high")}
                        for r in ev.ci.to_dict("records")},
        "class_mapping": ev.dropped, "image_shift": ev.shift, "adapt_bn": ev.adapt_bn,
        "summary": ev.summary()})
    write_provenance(run.path, kind=KIND, run=str(ev.run), source=ev.source, adapt_bn=ev.adapt_bn,
                     table_hash=ev.table.content_hash())
    evaluation_figures(ev, run.figures_dir(), n_boot=n_boot_plot)


def evaluation_figures(ev: Evaluation, folder: Path | None = None, n_boot: int = 200,
                       prefix: str = "external_") -> list[Any]:
    """ROC and PR (binary, or melanoma vs rest), confusion matrix, reliability and the
    primary metric per subgroup; saved under ``folder`` when given."""
    task = ev.mapping.task
    y = ev.frame["label"].to_numpy()
    probs = ev.frame[task.prob_columns].to_numpy(dtype=float)
    groups = ev.frame["group_id"].to_numpy()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)

    def save(name: str) -> Path | None:
        return folder / f"{prefix}{name}.png" if folder is not None else None

    figs = []
    mel = 0 if task.kind == "binary" else ev.mapping.melanoma_class
    if mel is not None and 0 < np.sum((y == mel) if task.kind != "binary" else y) < len(y):
        y_b = y if task.kind == "binary" else (y == mel).astype(int)
        p_b = probs[:, mel]
        what = "" if task.kind == "binary" else " (melanoma vs rest)"
        figs += [plots.roc_curve_plot(y_b, p_b, groups=groups, n_boot=n_boot,
                                      title=f"External ROC{what}", save=save("roc")),
                 plots.pr_curve_plot(y_b, p_b, groups=groups, n_boot=n_boot,
                                     title=f"External precision-recall{what}", save=save("pr"))]
    p_cm = probs[:, 0] if task.kind == "binary" else probs
    figs.append(plots.confusion_matrix_plot(y, predicted_labels(task, p_cm), task.classes,
                                            title="External confusion", save=save("confusion")))
    figs.append(plots.reliability_plot(y, p_cm, title="External reliability",
                                       save=save("reliability")))
    sub = ev.subgroups[ev.subgroups["metric"] == task.primary_metric]
    if not sub.empty:
        figs.append(plots.subgroup_plot(sub, task.primary_metric, save=save("subgroups")))
    return figs
