"""Calibration: reliability curves, ECE, Brier score and temperature scaling.

Binary scores are P(positive); for (N, K) multiclass probabilities the reliability curve and
ECE are *top-label*: confidence = the largest probability, outcome = argmax correct (ties
count as wrong, as in `melalib.metrics`). Fit `TemperatureScaler` on out-of-fold logits only.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logsumexp, softmax

from .arrays import (
    MetricError,
    argmax_labels,
    binary_inputs,
    check_labels,
    float_array,
    multiclass_inputs,
    multilabel_inputs,
)
from .tasks import Task

Strategy = Literal["uniform", "quantile"]


def logit(p: Any, eps: float = 1e-7) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps] (finite for 0 and 1)."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(q) - np.log1p(-q)


def _pairs(y_true: Any, probs: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(outcome 0/1, confidence): binary as given, multiclass top-label."""
    if np.ndim(probs) == 1 or (np.ndim(probs) == 2 and np.shape(probs)[1] == 1):
        y, p = binary_inputs(y_true, probs, name, need_both=False)
        return y.astype(np.float64), p
    y, P = multiclass_inputs(y_true, probs, name)
    return (argmax_labels(P) == y).astype(np.float64), P.max(axis=1)


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if n_bins < 1:
        raise MetricError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
        edges[0], edges[-1] = min(edges[0], 0.0), max(edges[-1], 1.0)
        return edges if len(edges) > 1 else np.array([0.0, 1.0])
    raise MetricError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


def reliability_curve(y_true: Any, probs: Any, n_bins: int = 10, strategy: Strategy = "uniform"
                      ) -> pd.DataFrame:
    """Per bin: bin_lo, bin_hi, mean_pred, frac_pos, count, and low / high, the 95 % Wilson
    interval of frac_pos (every bin kept; an empty bin has count 0 and NaN means). Bins are
    right-closed, the first includes 0, as scikit-learn's ``calibration_curve``; quantile
    edges that coincide are merged."""
    y, p = _pairs(y_true, probs, "reliability_curve")
    edges = _bin_edges(p, n_bins, strategy)
    idx = np.searchsorted(edges[1:-1], p, side="left")
    k = len(edges) - 1
    count = np.bincount(idx, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(idx, weights=p, minlength=k) / count
        frac_pos = np.bincount(idx, weights=y, minlength=k) / count
    low, high = wilson_interval(np.bincount(idx, weights=y, minlength=k), count)
    return pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "mean_pred": mean_pred,
                         "frac_pos": frac_pos, "count": count, "low": low, "high": high})


def wilson_interval(successes: Any, n: Any, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (default 95 %): stays inside [0, 1] and is
    honest for small counts and proportions near 0 or 1; NaN where ``n`` is 0."""
    k = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = k / m
        centre = (phat + z * z / (2 * m)) / (1 + z * z / m)
        half = z * np.sqrt(phat * (1 - phat) / m + z * z / (4 * m * m)) / (1 + z * z / m)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15,
                               strategy: Strategy = "uniform") -> float:
    """Sum over bins of (bin share) x |mean confidence - observed frequency|; binary on
    P(positive), multiclass top-label."""
    curve = reliability_curve(y_true, probs, n_bins, strategy)
    used = curve[curve["count"] > 0]
    gap = (used["mean_pred"] - used["frac_pos"]).abs()
    return float(np.sum(used["count"] * gap) / used["count"].sum())


def brier_score(y_true: Any, probs: Any) -> float:
    """Binary: mean (p - y)^2. Multiclass: mean over rows of the summed squared error
    against the one-hot label (scikit-learn's ``brier_score_loss``, range [0, 2])."""
    if np.ndim(probs) == 1 or (np.ndim(probs) == 2 and np.shape(probs)[1] == 1):
        y, p = binary_inputs(y_true, probs, "brier_score", need_both=False)
        return float(np.mean((p - y) ** 2))
    y, P = multiclass_inputs(y_true, probs, "brier_score")
    return float(np.mean(np.sum((P - np.eye(P.shape[1])[y]) ** 2, axis=1)))


class TemperatureScaler:
    """One temperature T dividing the logits, fitted by L-BFGS on the negative
    log-likelihood of out-of-fold predictions.

    binary: sigmoid(z / T) on the single logit; multiclass: softmax(z / T);
    multilabel: one T shared by every class's sigmoid. ``T > 1`` softens over-confident
    scores.
    """

    def __init__(self) -> None:
        self.temperature: float | None = None
        self.kind: str | None = None
        self.nll_before: float | None = None
        self.nll_after: float | None = None

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _prepare(logits: Any, y: Any, kind: str) -> tuple[np.ndarray, np.ndarray]:
        z = float_array(logits, "TemperatureScaler.fit", "logits")
        if kind == "binary":
            if z.ndim == 2 and z.shape[1] == 1:
                z = z[:, 0]
            if z.ndim != 1:
                raise MetricError(f"TemperatureScaler.fit: binary logits must be (N,) or "
                                  f"(N, 1), got {z.shape}")
            t = check_labels(y, "TemperatureScaler.fit", 2).astype(np.float64)
        elif z.ndim != 2 or z.shape[1] < 2:
            raise MetricError(f"TemperatureScaler.fit: {kind} logits must be (N, K), got "
                              f"{z.shape}")
        elif kind == "multiclass":
            t = multiclass_inputs(y, np.full(z.shape, 1.0 / z.shape[1]),
                                  "TemperatureScaler.fit")[0]
        else:
            t = multilabel_inputs(y, np.full(z.shape, 0.5), "TemperatureScaler.fit")[0]
        if len(t) != len(z) or len(z) == 0:
            raise MetricError(f"TemperatureScaler.fit: {len(t)} labels for {len(z)} logits")
        if not np.isfinite(z).all():
            raise MetricError("TemperatureScaler.fit: logits contain NaN or inf")
        return z, t

    @staticmethod
    def _nll_grad(log_t: float, z: np.ndarray, t: np.ndarray, kind: str
                  ) -> tuple[float, float]:
        s = z * np.exp(-log_t)  # scaled logits; d s / d log_t = -s
        if kind == "multiclass":
            lse = logsumexp(s, axis=1)
            nll = np.mean(lse - s[np.arange(len(s)), t])
            resid = softmax(s, axis=1)
            resid[np.arange(len(s)), t] -= 1.0
        else:  # binary and multilabel: Bernoulli log-likelihood per logit
            nll = -np.sum(t * log_expit(s) + (1 - t) * log_expit(-s)) / len(s)
            resid = expit(s) - t
        grad = -np.sum(resid * s) / len(s)
        return float(nll), float(grad)

    # --------------------------------------------------------------------- public
    def fit(self, logits: Any, y: Any, task: Task | str) -> TemperatureScaler:
        """Fit T on (OOF) logits and labels; ``task`` is a Task or its kind."""
        kind = task.kind if isinstance(task, Task) else str(task)
        if kind not in ("binary", "multiclass", "multilabel"):
            raise MetricError(f"TemperatureScaler.fit: unknown task kind {kind!r}")
        z, t = self._prepare(logits, y, kind)
        res = minimize(self._nll_grad, x0=np.zeros(1), args=(z, t, kind), jac=True,
                       method="L-BFGS-B", bounds=[(-5.0, 5.0)])
        if not np.isfinite(res.fun):
            raise MetricError(f"TemperatureScaler.fit: optimisation failed ({res.message})")
        self.kind = kind
        self.temperature = float(np.exp(res.x[0]))
        self.nll_before = self._nll_grad(0.0, z, t, kind)[0]
        self.nll_after = float(res.fun)
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities, same shape as ``logits``."""
        if self.temperature is None:
            raise MetricError("TemperatureScaler is not fitted; call fit(logits, y, task) on "
                              "out-of-fold logits first")
        z = float_array(logits, "TemperatureScaler.transform", "logits") / self.temperature
        if not np.isfinite(z).all():
            raise MetricError("TemperatureScaler.transform: logits contain NaN or inf")
        if self.kind == "multiclass":
            if z.ndim != 2:
                raise MetricError(f"TemperatureScaler.transform: multiclass logits must be "
                                  f"(N, K), got {z.shape}")
            return softmax(z, axis=1)
        return expit(z)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "kind": self.kind,
                "nll_before": self.nll_before, "nll_after": self.nll_after}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemperatureScaler:
        out = cls()
        out.temperature = None if d.get("temperature") is None else float(d["temperature"])
        out.kind, out.nll_before, out.nll_after = d.get("kind"), d.get("nll_before"), \
            d.get("nll_after")
        return out


# ------------------------------------------------------------------- cross-fitted scaling
def probability_logits(task: Task, probs: Any) -> np.ndarray:
    """The logits temperature scaling divides: log-probabilities (multiclass) or
    log-odds (binary, multilabel) of ``probs``, clipped to stay finite."""
    p = np.asarray(probs, dtype=np.float64)
    if task.kind == "multiclass":
        return np.log(np.clip(p, 1e-7, 1.0))
    return logit(p)


def negative_log_likelihood(task: Task, y_true: Any, probs: Any) -> float:
    """Mean NLL of integer labels under ``probs`` ((N,) binary, (N, K) multiclass)."""
    y = np.asarray(y_true).astype(int)
    q = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    if task.kind == "binary":
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    return float(-np.mean(np.log(q[np.arange(len(y)), y])))


def cross_fitted_scaling(task: Task, y_true: Any, probs: Any, folds: Any = None
                         ) -> tuple[np.ndarray, TemperatureScaler]:
    """Temperature-scaled probabilities where each fold's rows are scaled by a temperature
    fitted on the other folds' rows (so a gain is not measured on the rows the temperature
    saw), and the scaler fitted on every row (for new data). ``folds`` None: one fold, left
    unscaled."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    z = probability_logits(task, p)
    folds = np.zeros(len(y), int) if folds is None else np.asarray(folds)
    scaled = np.array(p, dtype=np.float64, copy=True)
    for k in np.unique(folds):
        held = folds == k
        if held.all():
            break
        t = TemperatureScaler().fit(z[~held], y[~held], task)
        scaled[held] = t.transform(z[held])
    return scaled, TemperatureScaler().fit(z, y, task)


def temperature_report(task: Task, y_true: Any, probs: Any, folds: Any = None,
                       n_bins: int = 15) -> tuple[pd.DataFrame, float]:
    """ECE, Brier score and NLL of ``probs`` before and after cross-fitted temperature
    scaling (`cross_fitted_scaling`), and the temperature fitted on every row.
    Rank-blended scores are not probabilities and should not be calibrated this way."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    scaled, overall = cross_fitted_scaling(task, y, p, folds)
    rows = {name: {"ece": expected_calibration_error(y, q, n_bins), "brier": brier_score(y, q),
                   "nll": negative_log_likelihood(task, y, q)}
            for name, q in (("OOF as predicted", p),
                            ("temperature-scaled (cross-fitted)", scaled))}
    return pd.DataFrame(rows).T, overall.temperature
