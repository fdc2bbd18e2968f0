"""Second-stage stacking: runs' OOF scores + metadata + patient context -> boosted trees.

The ISIC 2024 winners' recipe as a library step. Inputs are the out-of-fold (OOF) and test
predictions of one or more binary runs (or none: metadata alone, from a `DataConfig`), the
table's metadata and label-free patient-context ("ugly duckling") features:

* ``score_<run>`` per run; per patient (``patient_id``, else ``group_id``) its rank within
  the patient (``__prank``, in [0, 1]), z-score within the patient (``__pz``) and ratio to
  the patient's mean (``__pratio``);
* ``age``, ``sex_male`` (1 / 0 / NaN), one-hot ``site_<s>``, ``log_bytes`` (JPEG size, when
  the table has it), the ISIC 2024 lesion measurements (numeric ``tbp_lv_*`` and
  ``clin_size_long_diam_mm``, `features.tbp_columns`, when the table has them), each
  numeric one also as ``__prank`` / ``__pz`` within the patient;
* ``ctx_n_images`` (images of the patient) and ``ctx_n_site`` (images of the patient at the
  same site).

No feature reads a label (`stack_features` is given no label column). Patients never span
folds, so a patient's statistics come from rows of one fold only.

The model (sklearn's `HistGradientBoostingClassifier` by default, ``MODELS``) is trained on
the runs' own grouped folds: fold ``k``'s rows are predicted by models fitted on the other
folds' rows, whose image scores are themselves out-of-fold; test rows get the mean over
folds. Everything is averaged over ``n_seeds`` seeds (feature subsampling differs per seed).

`stack` writes a run-like folder through `RunDir` (the stored table, per-fold and pooled OOF
files, per-fold test files, metrics with the input runs and their plain mean blend on the
same rows as baselines) that `melalib ensemble` and the notebooks read like a training run,
plus its provenance (inputs, versions, git commit: `runs.write_provenance`), the metrics
with patient-grouped bootstrap CIs and the feature importance (mean drop of fold ROC-AUC
when a feature is permuted); `melalib.runs.LAYOUT` names the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import evaluate_with_ci
from .errors import ConfigError, DataError, LeakageError, WriteError
from .features import tbp_columns
from .io import claim_folder, write_csv, write_json
from .metrics import evaluate
from .predictions import fold_scores, prediction_frame, probabilities_of
from .registry import Registry
from .runs import RunDir, shared_task, write_provenance
from .table import SITES, LesionTable, patient_key
from .tasks import Task

EPS = 1e-6
ModelFactory = Callable[[int], Any]  # seed -> an unfitted sklearn-style binary classifier
#: the stacker's models: name -> ``() -> ModelFactory`` (`make_model`)
MODELS: Registry[Callable[[], ModelFactory]] = Registry("stack model")


@dataclass
class StackInputs:
    """What the stacker reads: the table (with ``fold``), the task and one score per run."""

    table: LesionTable
    task: Task
    scores: pd.DataFrame  # index image_id, columns score_<run>: OOF (train) / fold mean (test)
    runs: tuple[Path, ...] = ()  # the run folders the scores come from


def make_model(name: str = "hgb") -> ModelFactory:
    """Factory of the named model (`MODELS`: ``hgb``: HistGradientBoosting, ``logistic``)."""
    return MODELS[name]()


# scikit-learn is imported where a stack is fitted: it is slow to import and only
# `melalib stack` needs it
@MODELS.register("hgb")
def _hgb() -> ModelFactory:
    from sklearn.ensemble import HistGradientBoostingClassifier  # see above

    return lambda seed: HistGradientBoostingClassifier(
        learning_rate=0.03, max_iter=250, max_leaf_nodes=15, min_samples_leaf=40,
        l2_regularization=1.0, max_features=0.7, early_stopping=False, random_state=seed)


@MODELS.register("logistic")
def _logistic() -> ModelFactory:
    from sklearn.impute import SimpleImputer  # scikit-learn: the stacker only
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return lambda seed: make_pipeline(SimpleImputer(), StandardScaler(),
                                      LogisticRegression(C=0.1, max_iter=2000))


# ----------------------------------------------------------------------------- inputs
def _run_name(run_dir: Path, used: set[str]) -> str:
    name, i = run_dir.name, 2
    while name in used:
        name, i = f"{run_dir.name}_{i}", i + 1
    used.add(name)
    return name


def load_inputs(run_dirs: Sequence[RunDir | str | Path], table: LesionTable | None = None
                ) -> StackInputs:
    """The first run's table (with its folds) and every run's binary score per image;
    ``table``: that table when the caller holds it already (`RunDir.table` of the first
    run: notebook 04), so it is not read again.

    Every run must be binary, list OOF predictions for every training row of the table,
    and agree with the table on each row's fold (the same grouped folds)."""
    if not run_dirs:
        raise ConfigError("stack needs at least one run folder (or a data config)")
    runs = [r if isinstance(r, RunDir) else RunDir.read(r) for r in run_dirs]
    dirs = [r.path for r in runs]
    task = shared_task(runs)
    if task.kind != "binary":
        raise ConfigError(f"stack needs binary runs; {dirs[0]} predicts {task.kind} "
                          f"{list(task.classes)}")
    table = runs[0].table() if table is None else table
    train = table.df[table.df["split"] == "train"].set_index("image_id")
    test_ids = table.df.loc[table.df["split"] == "test", "image_id"]
    scores, used = pd.DataFrame(index=table.df["image_id"]), set()
    prob = task.prob_columns[0]
    for run in runs:
        run_dir, frame, test = run.path, run.oof(), run.test_mean()
        oof = frame.set_index("image_id")
        missing = train.index.difference(oof.index)
        if len(missing):
            raise DataError(_missing_reason(run, missing, len(train), dirs[0]), file=run_dir)
        differ = oof["fold"].reindex(train.index).to_numpy() != train["fold"].to_numpy()
        if differ.any():
            bad = train.index[np.flatnonzero(differ)[0]]
            raise LeakageError(f"{run_dir}: image {bad!r} is in fold "
                               f"{int(oof.loc[bad, 'fold'])} there but in fold "
                               f"{int(train.loc[bad, 'fold'])} in {dirs[0]}: stacking needs "
                               "the same grouped folds")
        column = pd.Series(np.nan, index=scores.index)
        column[train.index] = probabilities_of(frame, train.index, task)
        if test is not None and len(test_ids):
            t = test.set_index("image_id")[prob]
            column[test_ids.to_numpy()] = t.reindex(test_ids.to_numpy()).to_numpy()
        scores[f"score_{_run_name(run_dir, used)}"] = column.to_numpy()
    return StackInputs(table, task, scores, tuple(dirs))


def _missing_reason(run: RunDir, missing: pd.Index, n_train: int, first: Path) -> str:
    """Why ``run`` lacks OOF rows for ``missing`` of the first run's ``n_train`` training
    images: folds still to train, or another dataset (every fold trained)."""
    example = f"e.g. {str(missing[0])[:60]!r}"
    done = len(run.done_folds())
    if run.cfg is not None and done < run.cfg.data.n_folds:
        return (f"has no OOF prediction for {len(missing)} training image(s), {example}: "
                f"{done} of {run.cfg.data.n_folds} folds are trained; train every fold first")
    shared = 1.0 - len(missing) / max(n_train, 1)
    return (f"has no OOF prediction for {len(missing)} training image(s) of {first}, "
            f"{example}, although every fold is trained: the runs were trained on different "
            f"tables (another dataset or data_dir; {shared:.0%} of the images shared); stack "
            "runs of one dataset")


def table_inputs(table: LesionTable) -> StackInputs:
    """Metadata alone: a folded binary table and no run scores."""
    if table.task.kind != "binary":
        raise ConfigError(f"stack needs a binary task; the table's is {table.task.kind}")
    if "fold" not in table.df.columns:
        raise ConfigError("the table has no folds: assign them with melalib.folds.assign_folds")
    return StackInputs(table, table.task, pd.DataFrame(index=table.df["image_id"]))


# --------------------------------------------------------------------------- features
def _within_patient(values: pd.Series, patient: pd.Series, name: str,
                    ratio: bool = False) -> dict[str, np.ndarray]:
    g = values.groupby(patient)
    mean, std = g.transform("mean"), g.transform("std", ddof=0)
    out = {f"{name}__prank": g.rank(pct=True).to_numpy(),
           f"{name}__pz": ((values - mean) / std.where(std > EPS)).fillna(0.0).where(
               values.notna()).to_numpy()}
    if ratio:
        out[f"{name}__pratio"] = (values / mean.where(mean.abs() > EPS)).to_numpy()
    return out


def stack_features(df: pd.DataFrame, scores: pd.DataFrame, meta: bool = True,
                   context: bool = True) -> pd.DataFrame:
    """The stacker's feature matrix, one row per row of ``df`` (same order).

    ``df`` is the table frame (its ``label`` column is never read); ``scores`` holds
    ``score_*`` columns indexed by ``image_id``."""
    patient = patient_key(df).reset_index(drop=True)
    feats: dict[str, np.ndarray] = {}
    numeric: dict[str, pd.Series] = {}
    for column in scores.columns:
        numeric[column] = pd.Series(scores[column].reindex(df["image_id"]).to_numpy(dtype=float))
    if meta:
        numeric["age"] = pd.Series(df["age"].to_numpy(dtype=float))
        if "image_bytes" in df.columns and pd.to_numeric(df["image_bytes"], errors="coerce"
                                                         ).gt(0).any():
            size = pd.to_numeric(df["image_bytes"], errors="coerce").to_numpy(dtype=float)
            numeric["log_bytes"] = pd.Series(np.log(np.where(size > 0, size, np.nan)))
        for column in tbp_columns(df):  # ISIC 2024 lesion measurements
            numeric[column] = pd.Series(pd.to_numeric(df[column], errors="coerce")
                                        .to_numpy(dtype=float))
        sex = df["sex"].astype(str).to_numpy()
        feats["sex_male"] = np.where(sex == "male", 1.0, np.where(sex == "female", 0.0, np.nan))
        for site in SITES:
            feats[f"site_{site}"] = (df["site"].astype(str).to_numpy() == site).astype(float)
    for name, values in numeric.items():
        feats[name] = values.to_numpy()
        if context:
            feats.update(_within_patient(values, patient, name, ratio=name.startswith("score_")))
    if context:
        site = df["site"].astype(str).reset_index(drop=True)
        feats["ctx_n_images"] = patient.groupby(patient).transform("size").to_numpy(float)
        feats["ctx_n_site"] = patient.groupby([patient, site]).transform("size").to_numpy(float)
    if not feats:
        raise ConfigError("the stacker has no features: give runs, or keep metadata on")
    return pd.DataFrame(feats)


# ------------------------------------------------------------------------------ model
@dataclass
class StackResult:
    """OOF (training rows) and test predictions, fold models' importances, the folder."""

    oof: pd.DataFrame
    test: pd.DataFrame
    importance: pd.DataFrame
    metrics: dict[str, Any]
    out_dir: Path | None


def _fit_predict(make: ModelFactory, X: pd.DataFrame, y: np.ndarray, folds: np.ndarray,
                 test_X: pd.DataFrame, n_seeds: int, importance: bool
                 ) -> tuple[np.ndarray, dict[int, np.ndarray], pd.DataFrame]:
    """Fold-wise fit on the other folds' rows only; OOF and per-fold test probabilities."""
    from sklearn.inspection import permutation_importance  # see make_model

    oof = np.zeros(len(X))
    test: dict[int, np.ndarray] = {}
    imps = []
    for k in sorted(set(folds.tolist())):
        fit_rows, val_rows = folds != k, folds == k
        if (folds[fit_rows] == k).any():  # pragma: no cover - guarded by construction
            raise LeakageError(f"fold {k}'s own rows reached its training set")
        test[k] = np.zeros(len(test_X))
        for s in range(n_seeds):
            model = make(s)
            model.fit(X[fit_rows], y[fit_rows])
            oof[val_rows] += model.predict_proba(X[val_rows])[:, 1] / n_seeds
            if len(test_X):
                test[k] += model.predict_proba(test_X)[:, 1] / n_seeds
            if importance and s == 0 and len(set(y[val_rows].tolist())) == 2:
                r = permutation_importance(model, X[val_rows], y[val_rows], scoring="roc_auc",
                                           n_repeats=2, random_state=k)
                imps.append(r.importances_mean)
    imp = pd.DataFrame({"feature": X.columns,
                        "importance": np.mean(imps, axis=0) if imps else np.nan})
    return oof, test, imp.sort_values("importance", ascending=False).reset_index(drop=True)


def stack(inputs: StackInputs, out_dir: str | Path | None = None, *, model: str = "hgb",
          n_seeds: int = 3, meta: bool = True, context: bool = True, n_boot: int = 1000,
          importance: bool = True, make: ModelFactory | None = None,
          overwrite: bool = False) -> StackResult:
    """Fit the stacker on ``inputs`` fold by fold; write a run-like folder to ``out_dir``."""
    if n_seeds < 1:
        raise ConfigError(f"n_seeds must be >= 1, got {n_seeds}")
    started = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:  # the write rule (`claim_folder`), checked before the work
        _check_out(out, inputs.runs)
        _adopt_legacy(out)
        claim_folder(out, "stack", overwrite=overwrite, create=False)
    df = inputs.table.df.reset_index(drop=True)
    X_all = stack_features(df, inputs.scores, meta=meta, context=context)
    is_train = (df["split"] == "train").to_numpy()
    train_df, test_df = df[is_train], df[~is_train]
    folds = train_df["fold"].to_numpy().astype(int)
    y = train_df["label"].to_numpy().astype(int)
    oof_p, test_p, imp = _fit_predict(make or make_model(model), X_all[is_train], y, folds,
                                      X_all[~is_train], n_seeds, importance)
    oof = prediction_frame(train_df, inputs.task, _column(oof_p), folds, labelled=True)
    tests = {k: prediction_frame(test_df, inputs.task, _column(p), k, labelled=False)
             for k, p in test_p.items()}
    metrics = _metrics(inputs, oof, df, n_boot)
    metrics.update(model=model if make is None else "custom", n_seeds=n_seeds, meta=meta,
                   context=context, features=list(X_all.columns),
                   seconds=round(time.perf_counter() - started, 1))
    if out is not None:
        claim_folder(out, "stack", overwrite=overwrite, subfolders=("table",), clear=True)
        _write(out, inputs, oof, tests, imp, metrics)
    return StackResult(oof, pd.concat(tests.values(), ignore_index=True) if tests else
                       pd.DataFrame(), imp, metrics, out)


def _column(probs: np.ndarray) -> np.ndarray:
    """The stacker's P(positive) as a prediction frame's (N, 1) probabilities."""
    return np.clip(probs, 0.0, 1.0)[:, None]


def _adopt_legacy(out: Path) -> None:
    """A stack folder written before the marker existed (its provenance says ``"kind":
    "stack"``) gets the marker, so it stays replaceable with ``overwrite``."""
    if out.is_symlink() or not out.is_dir() or list(out.glob(".melalib-*")):
        return
    try:
        info = RunDir(out, None).info() or {}
    except (OSError, ValueError):
        return
    if isinstance(info, dict) and info.get("kind") == "stack":
        write_json(out / ".melalib-stack", {"melalib": "stack"})


def _check_out(out: Path, runs: Sequence[Path]) -> None:
    """The stack folder is none of the input runs, holds none, and is none of a run's own
    files (a new folder inside a run, such as notebook 04's ``<run>/stack``, is fine)."""
    real = out.resolve()
    for run in runs:
        if real == run.resolve() or run.resolve().is_relative_to(real) or \
                RunDir(run, None).owns(out):
            raise WriteError(f"stack output folder {out} would overwrite or hold the input run "
                             f"{run}; write the stack somewhere else")


# ----------------------------------------------------------------------------- report
def _metrics(inputs: StackInputs, oof: pd.DataFrame, df: pd.DataFrame, n_boot: int
             ) -> dict[str, Any]:
    """Training-run-shaped metrics, plus CIs and the input runs / their mean blend."""
    task, prob = inputs.task, inputs.task.prob_columns[0]
    y = oof["label"].to_numpy()
    groups = patient_key(df.set_index("image_id").loc[oof["image_id"]].reset_index())
    per_fold = fold_scores(task, oof)  # a fold with one class (tiny tables): its error
    ci = evaluate_with_ci(task, y, oof[prob].to_numpy(), groups=groups.to_numpy(),
                          n_boot=n_boot)
    baselines: dict[str, Any] = {}
    scores = inputs.scores.reindex(oof["image_id"])
    for column in scores.columns:
        baselines[column.removeprefix("score_")] = _baseline(task, y, scores[column], groups,
                                                             n_boot)
    if len(scores.columns) > 1:
        baselines["mean_blend"] = _baseline(task, y, scores.mean(axis=1), groups, n_boot)
    return {"task": task.to_dict(), "folds_done": sorted(int(k) for k in per_fold),
            "n_folds": len(per_fold), "per_fold": per_fold,
            "oof": evaluate(task, y, oof[prob].to_numpy()),
            "oof_ci": {r["metric"]: {k: r[k] for k in ("estimate", "low", "high")}
                       for r in ci.to_dict("records")},
            "primary_metric": task.primary_metric,
            "oof_primary": evaluate(task, y, oof[prob].to_numpy())[task.primary_metric],
            "baselines": baselines, "ci": "patient-grouped stratified bootstrap, "
            f"{n_boot} replicates, 95 %"}


def _baseline(task: Task, y: np.ndarray, p: pd.Series, groups: pd.Series, n_boot: int
              ) -> dict[str, Any]:
    ci = evaluate_with_ci(task, y, p.to_numpy(), groups=groups.to_numpy(), n_boot=n_boot,
                          metrics=("roc_auc", "pr_auc", "pauc_80"))
    return {r["metric"]: {k: r[k] for k in ("estimate", "low", "high")}
            for r in ci.to_dict("records")}


def _write(out: Path, inputs: StackInputs, oof: pd.DataFrame, tests: dict[int, pd.DataFrame],
           imp: pd.DataFrame, metrics: dict[str, Any]) -> None:
    run = RunDir(out, None)  # a run-like folder: `RunDir.read` and `melalib ensemble` read it
    inputs.table.save(run.table_dir())
    write_provenance(out, kind="stack", inputs=[str(r) for r in inputs.runs],
                     model=metrics["model"], n_seeds=metrics["n_seeds"],
                     table_hash=inputs.table.content_hash())
    for k, sub in oof.groupby("fold"):
        write_csv(run.oof_path(int(k)), sub.reset_index(drop=True))
    for k, test in tests.items():
        write_csv(run.test_path(k), test)
    write_csv(run.oof_path(), oof.sort_values("image_id").reset_index(drop=True))
    write_csv(run.file("feature_importance"), imp)
    rows = [{"metric": m, **v} for m, v in metrics["oof_ci"].items()]
    write_csv(run.report_path("ci"), pd.DataFrame(rows))
    write_json(run.metrics_path(), {**metrics, "run_dir": str(out)})


def summary_table(result: StackResult) -> pd.DataFrame:
    """One row per input run, their mean blend and the stack: ROC-AUC, PR-AUC and pAUC80
    with their CIs (``estimate [low, high]``)."""
    rows = {**result.metrics["baselines"], "stack": result.metrics["oof_ci"]}
    table = {name: {m: f"{v[m]['estimate']:.3f} [{v[m]['low']:.3f}, {v[m]['high']:.3f}]"
                    for m in ("roc_auc", "pr_auc", "pauc_80") if m in v}
             for name, v in rows.items()}
    return pd.DataFrame(table).T.rename_axis("model")
