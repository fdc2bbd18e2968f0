"""Ensembles: fold averaging, blending runs (mean / rank / geometric), weights searched on
out-of-fold predictions, and competition submission files.

Prediction frames are the run folder's files: ``image_id`` (+ ``group_id``, ``fold``,
``label`` for OOF) and ``task.prob_columns``. Frames are aligned on ``image_id``; every frame
must list the same ids. Weights are searched on OOF predictions only: `search_weights` takes
no test frame, so test labels can never leak into them.

``rank`` blending replaces each probability column by its rank within the frame scaled to
[0, 1] (ties share their mean rank) before averaging: the result orders rows but is not a
calibrated probability (a multiclass rank blend does not sum to 1 per row).
``geometric`` is ``exp(sum_i w_i log p_i)``, rows renormalised to 1 for a multiclass task.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .errors import ConfigError, DataError
from .io import write_csv, write_json
from .tasks import Task

METHODS = ("mean", "rank", "geometric")
FORMATS = ("isic2020", "ham10000", "isic2019", "milk10k")
MELANOMA_NAMES = ("melanoma", "mel")
EPS = 1e-7
MAX_GRID = 5000  # simplex points above which search_weights optimises with scipy instead

MetricFn = Callable[[np.ndarray, np.ndarray], float]


# --------------------------------------------------------------------------- alignment
def _check_frame(df: pd.DataFrame, task: Task, name: str) -> None:
    if "image_id" not in df.columns:
        raise DataError(f"{name} has no 'image_id' column", file=name, column="image_id")
    for column in task.prob_columns:
        if column not in df.columns:
            raise DataError(f"{name} has no probability column {column!r} (task {task.name!r} "
                            f"expects {task.prob_columns})", file=name, column=column)
    dup = df["image_id"].duplicated()
    if dup.any():
        pos = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"image_id {df['image_id'].iloc[pos]!r} appears twice", file=name,
                        row=pos + 1, column="image_id")


def _align(frames: Sequence[pd.DataFrame], task: Task, what: str
           ) -> tuple[pd.Index, list[np.ndarray]]:
    """The first frame's ids and every frame's (N, n_outputs) probabilities in that order."""
    if not frames:
        raise DataError(f"no {what} frames to combine")
    names = [f"{what} frame {i + 1}" for i in range(len(frames))]
    for df, name in zip(frames, names, strict=True):
        _check_frame(df, task, name)
    ids = pd.Index(frames[0]["image_id"].astype(str))
    probs = []
    for df, name in zip(frames, names, strict=True):
        own = pd.Index(df["image_id"].astype(str))
        if len(own) != len(ids) or not own.isin(ids).all():
            extra = own.difference(ids)
            missing = ids.difference(own)
            example = (f"{extra[0]!r} is only in {name}" if len(extra)
                       else f"{missing[0]!r} is missing from {name}")
            raise DataError(f"{what} frames list different images ({len(own)} vs {len(ids)} "
                            f"ids; {example}); every frame must predict the same image_ids",
                            file=name, column="image_id")
        p = df[task.prob_columns].to_numpy(dtype=np.float64)[own.get_indexer(ids)]
        bad = ~np.isfinite(p)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(f"probability {p[row, col]} is not finite", file=name,
                            row=int(own.get_loc(ids[row])) + 1, column=task.prob_columns[col])
        probs.append(p)
    return ids, probs


def _labels(frames: Sequence[pd.DataFrame], ids: pd.Index, what: str) -> np.ndarray | None:
    """The shared ``label`` column (None when any frame lacks it); frames must agree."""
    if not all("label" in df.columns for df in frames):
        return None
    first = None
    for i, df in enumerate(frames):
        own = pd.Index(df["image_id"].astype(str))
        y = df["label"].to_numpy()[own.get_indexer(ids)].astype(np.int64)
        if first is None:
            first = y
        elif (y != first).any():
            pos = int(np.flatnonzero(y != first)[0])
            raise DataError(f"{what} frames disagree on the label of {ids[pos]!r}",
                            file=f"{what} frame {i + 1}", column="label")
    return first


def _frame(ids: pd.Index, probs: np.ndarray, task: Task, first: pd.DataFrame,
           labels: np.ndarray | None) -> pd.DataFrame:
    out = pd.DataFrame({"image_id": np.asarray(ids, dtype=object)})
    if "group_id" in first.columns:
        own = pd.Index(first["image_id"].astype(str))
        out["group_id"] = first["group_id"].to_numpy()[own.get_indexer(ids)]
    if labels is not None:
        out["label"] = labels
    for j, column in enumerate(task.prob_columns):
        out[column] = probs[:, j]
    return out


def _weights(weights: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n:
        raise ConfigError(f"{len(w)} weights for {n} frames")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"weights must be finite, non-negative and not all zero, got {w}")
    return w / w.sum()


# ------------------------------------------------------------------------------ blending
def fold_average(test_frames: Sequence[pd.DataFrame], task: Task) -> pd.DataFrame:
    """Mean probability per image over the folds' test predictions (same ids in each)."""
    ids, probs = _align(test_frames, task, "test")
    return _frame(ids, np.mean(probs, axis=0), task, test_frames[0], None)


def blend(probs: Sequence[np.ndarray], task: Task, method: str = "mean",
          weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Weighted blend of aligned (N, n_outputs) probability arrays."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    w = _weights(weights, len(probs))
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])  # (M, N, K)
    if method == "mean":
        return np.tensordot(w, stack, axes=1)
    if method == "rank":
        return np.tensordot(w, _ranks(stack), axes=1)
    out = np.exp(np.tensordot(w, np.log(np.clip(stack, EPS, 1.0)), axes=1))
    if task.kind == "multiclass":
        out = out / out.sum(axis=1, keepdims=True)
    return out


def _ranks(stack: np.ndarray) -> np.ndarray:
    """Per model and column: rank among the rows, scaled to [0, 1] (ties: mean rank)."""
    n = stack.shape[1]
    ranks = rankdata(stack, axis=1, method="average")
    return (ranks - 1.0) / (n - 1) if n > 1 else np.full_like(stack, 0.5)


def combine(frames: Sequence[pd.DataFrame], task: Task, method: str = "mean",
            weights: Sequence[float] | np.ndarray | None = None) -> pd.DataFrame:
    """Blend several runs' predictions of the same images (aligned on ``image_id``).

    ``mean``: weighted mean; ``rank``: weighted mean of per-column ranks scaled to [0, 1];
    ``geometric``: weighted geometric mean (multiclass rows renormalised). A ``label``
    column present in every frame (OOF) is kept and must agree.
    """
    ids, probs = _align(frames, task, "prediction")
    labels = _labels(frames, ids, "prediction")
    return _frame(ids, blend(probs, task, method, weights), task, frames[0], labels)


# ------------------------------------------------------------------------- weight search
def _brier(task: Task, y: np.ndarray, p: np.ndarray) -> float:
    if task.kind == "binary":
        return float(np.mean((p[:, 0] - y) ** 2))
    return float(np.mean(np.sum((p - np.eye(task.n_classes)[y]) ** 2, axis=1)))


def _simplex_grid(m: int, step: float) -> np.ndarray:
    n = round(1.0 / step)
    if n < 1 or not math.isclose(n * step, 1.0, rel_tol=1e-9):
        raise ConfigError(f"step must divide 1 (e.g. 0.05, 0.1), got {step}")
    points = [c for c in itertools.product(range(n + 1), repeat=m - 1) if sum(c) <= n]
    grid = np.array([(*c, n - sum(c)) for c in points], dtype=np.float64) / n
    return grid


def search_weights(oof_frames: Sequence[pd.DataFrame], task: Task,
                   metric: MetricFn | None = None, step: float = 0.05, seed: int = 0,
                   method: str = "auto", n_starts: int = 8) -> np.ndarray:
    """Non-negative weights summing to 1 that maximise ``metric`` of the weighted mean of
    the OOF predictions (default: the task's primary metric).

    Only OOF frames (with their ``label`` column) are read. ``method``: ``grid`` (every
    point of the simplex at ``step``), ``scipy`` (Nelder-Mead on a softmax parametrisation
    from ``n_starts`` seeded starts), ``auto`` (grid when it has at most 5000 points).
    Ties in the metric (AUC plateaus) go to the lower Brier score, then to the first point.
    """
    from .metrics import metric_for

    ids, probs = _align(oof_frames, task, "OOF")
    y = _labels(oof_frames, ids, "OOF")
    if y is None:
        raise DataError("search_weights needs OOF frames with a 'label' column (the run "
                        "folders' oof.csv / oof_fold*.csv)", column="label")
    if (y < 0).any() or (y >= task.n_classes).any():
        pos = int(np.flatnonzero((y < 0) | (y >= task.n_classes))[0])
        raise DataError(f"OOF label {y[pos]} of {ids[pos]!r} is outside 0..{task.n_classes - 1}",
                        column="label")
    score_fn = metric or metric_for(task, task.primary_metric)
    m = len(probs)
    if m == 1:
        return np.ones(1)
    stack = np.stack(probs)

    def key(w: np.ndarray) -> tuple[float, float]:
        p = np.tensordot(w, stack, axes=1)
        score = float(score_fn(y, p[:, 0] if task.kind == "binary" else p))
        return (score if math.isfinite(score) else -math.inf), -_brier(task, y, p)

    if method not in ("auto", "grid", "scipy"):
        raise ConfigError(f"method must be auto, grid or scipy, got {method!r}")
    n = round(1.0 / step) if step > 0 else 0
    use_grid = method == "grid" or (method == "auto" and math.comb(n + m - 1, m - 1) <= MAX_GRID)
    if use_grid:
        candidates = _simplex_grid(m, step)
    else:
        candidates = _scipy_candidates(key, m, seed, n_starts)
    best_w, best_key = candidates[0], key(candidates[0])
    for w in candidates[1:]:
        k = key(w)
        if k[0] > best_key[0] + 1e-12 or (abs(k[0] - best_key[0]) <= 1e-12 and k[1] > best_key[1]):
            best_w, best_key = w, k
    best_w = np.clip(best_w, 0.0, None)
    return best_w / best_w.sum()


def _scipy_candidates(key: Callable[[np.ndarray], tuple[float, float]], m: int, seed: int,
                      n_starts: int) -> np.ndarray:
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    starts = [np.zeros(m)] + [np.log(rng.dirichlet(np.ones(m))) for _ in range(n_starts - 1)]
    found = [np.full(m, 1.0 / m), *np.eye(m)]

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max())
        return e / e.sum()

    def objective(z: np.ndarray) -> float:
        score, neg_brier = key(softmax(z))
        return -score - 1e-6 * neg_brier

    for z0 in starts:
        res = minimize(objective, z0, method="Nelder-Mead",
                       options={"xatol": 1e-3, "fatol": 1e-9, "maxiter": 200 * m})
        found.append(softmax(res.x))
    return np.array(found)


# ----------------------------------------------------------------------------- run folders
def _read_prediction_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "group_id": str})


def run_task(run_dir: str | Path) -> Task:
    """The task a run folder was trained on (``table/task.json``)."""
    path = Path(run_dir) / "table" / "task.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a melalib run folder with a stored table "
                          "(no table/task.json)")
    return Task.from_dict(json.loads(path.read_text()))


def load_runs(run_dirs: Sequence[str | Path]
              ) -> tuple[list[pd.DataFrame], list[pd.DataFrame | None]]:
    """Per run: its OOF predictions (``oof.csv``, else the ``oof_fold*.csv`` concatenated)
    and its fold-averaged test predictions (None when the run has no ``test_fold*.csv``)."""
    oofs: list[pd.DataFrame] = []
    tests: list[pd.DataFrame | None] = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        task = run_task(run_dir)
        if (run_dir / "oof.csv").is_file():
            oof = _read_prediction_csv(run_dir / "oof.csv")
        else:
            parts = sorted(run_dir.glob("oof_fold*.csv"))
            if not parts:
                raise DataError("the run has no OOF predictions (oof.csv or oof_fold*.csv): "
                                "train at least one fold", file=run_dir)
            oof = pd.concat([_read_prediction_csv(p) for p in parts], ignore_index=True)
        oofs.append(oof)
        test_files = sorted(run_dir.glob("test_fold*.csv"))
        tests.append(fold_average([_read_prediction_csv(p) for p in test_files], task)
                     if test_files else None)
    return oofs, tests


# ------------------------------------------------------------------------------ submission
def _melanoma_column(task: Task) -> str:
    if task.kind == "binary":
        return task.prob_columns[0]
    for name in task.classes:
        if name.lower() in MELANOMA_NAMES:
            return f"prob_{name}"
    raise ConfigError(f"task {task.name!r} has no melanoma class for an ISIC 2020 submission "
                      f"(classes {list(task.classes)})")


def submission_format(task: Task) -> str:
    """The submission format of a task, from its name."""
    name = task.name.lower()
    if name in ("melanoma", "isic2020"):
        return "isic2020"
    if name in ("ham10000", "isic2019"):
        return "ham10000"
    if name == "milk10k":
        return "milk10k"
    raise ConfigError(f"no submission format for task {task.name!r}; pass format= one of "
                      f"{FORMATS}")


def submission(test_pred: pd.DataFrame, task: Task, format: str = "auto") -> pd.DataFrame:
    """A competition submission from test predictions (``image_id`` + prob columns).

    ``isic2020``: ``image_name,target`` (P(melanoma)); ``ham10000`` / ``isic2019``:
    ``image`` + one probability column per class name; ``milk10k``: ``lesion_id`` + the 11
    class columns in the sample submission's order. ``auto`` picks from ``task.name``.
    Raises DataError on a NaN, a probability outside [0, 1] or a repeated id.
    """
    fmt = submission_format(task) if format == "auto" else format
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS} or auto, got {format!r}")
    _check_frame(test_pred, task, "test predictions")
    ids = test_pred["image_id"].astype(str).to_numpy()
    if fmt == "isic2020":
        column = _melanoma_column(task)
        out = pd.DataFrame({"image_name": ids, "target": test_pred[column].to_numpy(float)})
    else:
        if fmt == "milk10k" and task.kind == "binary":
            raise ConfigError("a MILK10k submission needs the 11-class task")
        key = "lesion_id" if fmt == "milk10k" else "image"
        out = pd.DataFrame({key: ids})
        for name, column in zip(task.classes, task.prob_columns, strict=True):
            out[name] = test_pred[column].to_numpy(dtype=np.float64)
    validate_submission(out)
    return out


def validate_submission(sub: pd.DataFrame) -> None:
    """Raise DataError on a NaN, a value outside [0, 1] or a repeated id (first column)."""
    id_column = sub.columns[0]
    if sub.empty:
        raise DataError("the submission has no rows")
    ids = sub[id_column]
    if ids.isna().any():
        raise DataError("empty id", row=int(np.flatnonzero(ids.isna())[0]) + 1, column=id_column)
    dup = ids.duplicated()
    if dup.any():
        pos = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"id {ids.iloc[pos]!r} appears twice", row=pos + 1, column=id_column)
    for column in sub.columns[1:]:
        values = sub[column].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise DataError(f"value {values[pos]} is not a probability in [0, 1]", row=pos + 1,
                            column=column)


# ------------------------------------------------------------------------------------- CLI
def ensemble_oof_metrics(oofs: Sequence[pd.DataFrame], task: Task, method: str,
                         weights: np.ndarray) -> dict[str, Any]:
    """Metrics of the blended OOF predictions and of each run alone."""
    from .metrics import evaluate, primary_metric

    blended = combine(oofs, task, method, weights)
    y = blended["label"].to_numpy()
    probs = blended[task.prob_columns].to_numpy()
    per_run = []
    for df in oofs:
        aligned = df.set_index(df["image_id"].astype(str)).loc[blended["image_id"]]
        per_run.append(float(primary_metric(task, y, aligned[task.prob_columns].to_numpy())))
    return {"task": task.to_dict(), "method": method, "weights": [float(w) for w in weights],
            "n_oof": len(blended), "primary_metric": task.primary_metric,
            "per_run_primary": per_run, "oof": evaluate(task, y, probs)}


def ensemble_cli(args: argparse.Namespace) -> int:
    """``melalib ensemble RUN... --method mean|rank|geometric|search --out submission.csv``.

    ``search`` fits weights on the runs' OOF predictions (printed) and applies them to the
    fold-averaged test predictions (weighted mean). The blend's OOF metrics go to
    ``<out stem>.metrics.json`` (``sub.csv`` -> ``sub.metrics.json``).
    """
    runs = [Path(r) for r in args.runs]
    tasks = [run_task(r) for r in runs]
    task = tasks[0]
    for r, t in zip(runs, tasks, strict=True):
        if t != task:
            raise ConfigError(f"run {r} predicts task {t.name!r} {list(t.classes)} but "
                              f"{runs[0]} predicts {task.name!r} {list(task.classes)}")
    oofs, tests = load_runs(runs)
    method = args.method
    if method == "search":
        weights = search_weights(oofs, task)
        blend_method = "mean"
        print("weights searched on OOF: " + ", ".join(
            f"{r}={w:.3f}" for r, w in zip(runs, weights, strict=True)))
    else:
        weights, blend_method = _weights(None, len(runs)), method
    metrics = ensemble_oof_metrics(oofs, task, blend_method, weights)
    metrics.update(method=method, runs=[str(r) for r in runs])
    out = Path(args.out)
    metrics_path = write_json(Path(out).with_suffix(".metrics.json"), metrics)
    missing = [str(r) for r, t in zip(runs, tests, strict=True) if t is None]
    if missing:
        raise DataError(f"run(s) {missing} have no test predictions (test_fold*.csv): their "
                        f"dataset has no test split, so no submission was written (OOF "
                        f"metrics: {metrics_path})")
    test = combine([t for t in tests if t is not None], task, blend_method, weights)
    sub = submission(test, task)
    write_csv(out, sub)
    primary = metrics["oof"].get(task.primary_metric)
    print(f"wrote {out} ({len(sub)} rows); OOF {task.primary_metric} of the blend: "
          f"{primary:.4f}; metrics in {metrics_path}")
    return 0
