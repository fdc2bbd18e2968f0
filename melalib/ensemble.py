"""Ensembles: blending runs (mean / rank / geometric, or a mean with weights searched on
out-of-fold predictions), and competition submission files.

`blend(runs, method)` is the one way runs are combined (``melalib ensemble`` and notebook 04
both call it): it reads each run (`melalib.runs.RunDir`), checks that they predict the same
task, blends their OOF and fold-averaged test predictions and returns a `Blend`.
Prediction frames (`melalib.predictions`) are aligned on ``image_id``; every frame must list
the same ids. Weights are searched on OOF predictions only: `search_weights` takes no test
frame, so test labels can never leak into them.

``rank`` blending replaces each probability column by its rank within the frame scaled to
[0, 1] (ties share their mean rank) before averaging: the result orders rows but is not a
calibrated probability (a multiclass rank blend does not sum to 1 per row).
``geometric`` is ``exp(sum_i w_i log p_i)``, rows renormalised to 1 for a multiclass task.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import rankdata

from .errors import ConfigError, DataError
from .metrics import evaluate, metric_for, primary_metric
from .predictions import (
    align,
    aligned_frame,
    check_frame,
    probabilities,
    probabilities_of,
    shared_labels,
)
from .registry import Registry
from .runs import RunDir, shared_task
from .tasks import Task, melanoma_class

#: how aligned probabilities are combined: name -> ``(weights (M,), probs (M, N, K), task)
#: -> (N, K)``
METHODS: Registry[Callable[[np.ndarray, np.ndarray, Task], np.ndarray]] = Registry("method")
#: `blend` methods: name -> ``(runs, their OOF frames, task) -> Candidate``: each of
#: `METHODS` with equal weights; search = the mean with weights searched on OOF; best = the
#: candidate of `candidates` (each run alone, the blends, the searched weights) with the
#: best OOF score (registered below `blend`)
BLENDS: Registry[Callable[[Sequence[RunDir], Sequence[pd.DataFrame], Task], Candidate]] = \
    Registry("ensemble method")
FORMATS = ("isic2020", "ham10000", "isic2019", "milk10k")
EPS = 1e-7
MAX_GRID = 5000  # simplex points above which search_weights optimises with scipy instead

MetricFn = Callable[[np.ndarray, np.ndarray], float]
RunLike = RunDir | str | os.PathLike[str]


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
def blend_probs(probs: Sequence[np.ndarray], task: Task, method: str = "mean",
                weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Weighted blend of aligned (N, n_outputs) probability arrays."""
    combine_fn = METHODS[method]
    w = _weights(weights, len(probs))
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])  # (M, N, K)
    return combine_fn(w, stack, task)


@METHODS.register("mean")
def _mean(w: np.ndarray, stack: np.ndarray, task: Task) -> np.ndarray:
    """The weighted mean of the probabilities."""
    return np.tensordot(w, stack, axes=1)


@METHODS.register("rank")
def _rank(w: np.ndarray, stack: np.ndarray, task: Task) -> np.ndarray:
    """The weighted mean of each model's ranks (a ranking, not a probability)."""
    return np.tensordot(w, _ranks(stack), axes=1)


@METHODS.register("geometric")
def _geometric(w: np.ndarray, stack: np.ndarray, task: Task) -> np.ndarray:
    """The weighted geometric mean (renormalised for a multiclass task)."""
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
    ids, probs = align(frames, task, "prediction")
    labels = shared_labels(frames, ids, "prediction")
    return aligned_frame(ids, blend_probs(probs, task, method, weights), task, frames[0], labels)


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
    ids, probs = align(oof_frames, task, "OOF")
    y = shared_labels(oof_frames, ids, "OOF")
    if y is None:
        raise DataError("search_weights needs OOF frames with a 'label' column (the run "
                        "folders' pooled or per-fold OOF files)", column="label")
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


# ------------------------------------------------------------------------------ submission
def _melanoma_column(task: Task) -> str:
    if task.kind == "binary":
        return task.prob_columns[0]
    index = melanoma_class(task)
    if index is not None:
        return task.prob_columns[index]
    raise ConfigError(f"task {task.name!r} has no melanoma class for an ISIC 2020 submission "
                      f"(classes {list(task.classes)})")


def submission_format(task: Task) -> str:
    """The submission format of a task, from its name; a task without a competition format
    (e.g. a synthetic or custom one) gets ``isic2020`` (``image_name,target``) when binary,
    else ``ham10000`` (one probability column per class)."""
    name = task.name.lower()
    if name in ("melanoma", "isic2020"):
        return "isic2020"
    if name in ("ham10000", "isic2019"):
        return "ham10000"
    if name == "milk10k":
        return "milk10k"
    return "isic2020" if task.kind == "binary" else "ham10000"


def submission(test_pred: pd.DataFrame, task: Task, format: str = "auto") -> pd.DataFrame:
    """A competition submission from test predictions (``image_id`` + prob columns).

    ``isic2020``: ``image_name,target`` (P(melanoma)); ``ham10000`` / ``isic2019``:
    ``image`` + one probability column per class name; ``milk10k``: ``lesion_id`` + the 11
    class columns in the sample submission's order. ``auto``: `submission_format`.
    Raises DataError on a NaN, a probability outside [0, 1] or a repeated id.
    """
    fmt = submission_format(task) if format == "auto" else format
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS} or auto, got {format!r}")
    check_frame(test_pred, task, "test predictions")
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


# ------------------------------------------------------------------------------- runs
@dataclass
class Blend:
    """Runs blended by `blend`: the shared task, the blended OOF predictions (``image_id``,
    ``group_id``, ``label``, probabilities, the first run's ``fold``), the blended
    fold-averaged test predictions (None when a run has none), the weights (one per run),
    the method asked for and the label of the candidate used (``best``: the one chosen)."""

    task: Task
    oof: pd.DataFrame
    test: pd.DataFrame | None
    weights: np.ndarray
    method: str
    runs: list[RunDir]
    run_oofs: list[pd.DataFrame]  # each run's own OOF predictions
    label: str = ""  # what was used, for tables and legends: "run X", "geometric blend"...

    @property
    def paths(self) -> list[Path]:
        """The run folders, in blending order."""
        return [r.path for r in self.runs]

    @property
    def no_test(self) -> list[Path]:
        """The runs without test predictions (their dataset has no test split)."""
        return [r.path for r in self.runs if r.test_mean() is None]


@dataclass(frozen=True)
class Candidate:
    """One way to combine runs: a ``label`` for tables and figure legends, the `METHODS`
    method and one weight per run (a run alone: weight 1 on it)."""

    label: str
    method: str
    weights: tuple[float, ...]

    @property
    def is_probability(self) -> bool:
        """Whether its output is a probability (a rank blend's is a ranking)."""
        return self.method != "rank"


def candidates(runs: Sequence[RunDir], oofs: Sequence[pd.DataFrame], task: Task
               ) -> list[Candidate]:
    """Each run alone, then (several runs) the equal-weight mean / rank / geometric blends
    and the mean with weights searched on the OOF predictions."""
    m = len(runs)
    out = [Candidate(f"run {run.path.name}", "mean", tuple(float(i == j) for j in range(m)))
           for i, run in enumerate(runs)]
    if m > 1:
        out += [Candidate(f"{method} blend", method, (1.0 / m,) * m) for method in METHODS]
        w = search_weights(oofs, task)
        out.append(Candidate("searched weights (mean)", "mean", tuple(float(x) for x in w)))
    return out


def candidate_scores(task: Task, oofs: Sequence[pd.DataFrame], options: Sequence[Candidate]
                     ) -> pd.DataFrame:
    """OOF primary metric (and PR-AUC for binary) of each candidate, indexed by label."""
    fns = {task.primary_metric: metric_for(task, task.primary_metric)}
    if task.kind == "binary":
        fns["pr_auc"] = metric_for(task, "pr_auc")
    rows = []
    for c in options:
        frame = combine(oofs, task, c.method, c.weights)
        y = frame["label"].to_numpy().astype(int)
        rows.append({"candidate": c.label, "weights": _weights_text(c),
                     **{k: fn(y, probabilities(task, frame)) for k, fn in fns.items()}})
    return pd.DataFrame(rows).set_index("candidate")


def _weights_text(c: Candidate) -> str:
    if c.label.startswith("run "):
        return "1"
    if c.label.endswith(" blend"):
        return "equal"
    return ", ".join(f"{x:.2f}" for x in c.weights)


def best_candidate(task: Task, oofs: Sequence[pd.DataFrame], options: Sequence[Candidate]
                   ) -> Candidate:
    """The probability-valued candidate (rank blends excluded: notebook 04 thresholds and
    calibrates the result) with the highest OOF primary metric; ties go to the earlier
    candidate (a single run before a blend)."""
    usable = [c for c in options if c.is_probability]
    scores = candidate_scores(task, oofs, usable)[task.primary_metric].to_numpy(float)
    return usable[int(np.argmax(np.where(np.isfinite(scores), scores, -np.inf)))]


def blend(runs: Sequence[RunLike], method: str = "mean") -> Blend:
    """Blend runs' OOF and fold-averaged test predictions with ``method``: ``mean``,
    ``rank``, ``geometric`` (equal weights), ``search`` (the mean with weights searched on
    the OOF predictions only) or ``best`` (`best_candidate`: the run or blend with the
    best OOF primary metric). ConfigError when the runs predict different tasks."""
    choose = BLENDS[method]
    views = [r if isinstance(r, RunDir) else RunDir.read(r) for r in runs]
    task = shared_task(views)
    oofs = [v.oof() for v in views]
    tests = [v.test_mean() for v in views]
    chosen = choose(views, oofs, task)
    weights = np.asarray(chosen.weights)
    oof = combine(oofs, task, chosen.method, weights)
    if "fold" in oofs[0].columns:
        oof = oof.merge(oofs[0][["image_id", "fold"]].astype({"image_id": str}),
                        on="image_id", how="left")
    test = None if any(t is None for t in tests) else combine(
        [t for t in tests if t is not None], task, chosen.method, weights)
    return Blend(task, oof, test, weights, method, views, oofs, chosen.label)


def _equal_blend(method: str) -> Callable[[Sequence[RunDir], Sequence[pd.DataFrame], Task],
                                          Candidate]:
    def choose(views: Sequence[RunDir], oofs: Sequence[pd.DataFrame], task: Task) -> Candidate:
        return Candidate(f"{method} blend" if len(views) > 1 else f"run {views[0].path.name}",
                         method, tuple(_weights(None, len(views))))

    return choose


for _method in METHODS:
    BLENDS.register(_method)(_equal_blend(_method))
BLENDS.register("search")(lambda views, oofs, task: Candidate(
    "searched weights (mean)", "mean", tuple(float(x) for x in search_weights(oofs, task))))
BLENDS.register("best")(lambda views, oofs, task: best_candidate(
    task, oofs, candidates(views, oofs, task)))


def compare_blends(blended: Blend) -> pd.DataFrame:
    """OOF primary metric (and PR-AUC for binary) of each run alone, of the blends mean /
    rank / geometric, and of the mean with weights searched on OOF (`candidates`)."""
    return candidate_scores(blended.task, blended.run_oofs,
                            candidates(blended.runs, blended.run_oofs, blended.task))


def blend_metrics(blended: Blend) -> dict[str, Any]:
    """Metrics of the blended OOF predictions and the primary metric of each run alone."""
    task, oof = blended.task, blended.oof
    y = oof["label"].to_numpy()
    per_run = [float(primary_metric(task, y, probabilities_of(df, oof["image_id"], task)))
               for df in blended.run_oofs]
    return {"task": task.to_dict(), "method": blended.method,
            "weights": [float(w) for w in blended.weights], "n_oof": len(oof),
            "primary_metric": task.primary_metric, "per_run_primary": per_run,
            "oof": evaluate(task, y, oof[task.prob_columns].to_numpy()),
            "runs": [str(r.path) for r in blended.runs]}
