"""Shared input checks of the scoring modules (metrics, calibration, plots).

Every check raises `MetricError` (a `ValueError`) naming the metric and the first offending
row; `tie_groups` / `group_weights` are the tie-aware ranking primitives of the AUC and AP
computations and of the plotted curves. Depends on nothing else in melalib but `errors`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import MelalibError

PROB_TOL = 1e-6  # softmax / float32 round-off allowed outside [0, 1] before clipping


class MetricError(MelalibError, ValueError):
    """A metric that cannot be computed on this input (shape, NaN, range, one class...)."""


def positions(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    return f"{len(rows)} (first at position {int(rows[0])})"


def float_array(x: Any, name: str, what: str = "probs") -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricError(f"{name}: {what} must be numeric ({exc})") from None


def check_prob_values(p: np.ndarray, name: str) -> np.ndarray:
    """NaN / inf / outside [0, 1] raise; round-off within 1e-6 is clipped."""
    if p.size == 0:
        return p
    flat = p.reshape(len(p), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise MetricError(f"{name}: probs contain NaN or inf in rows {positions(bad)}")
    out = (flat < -PROB_TOL).any(axis=1) | (flat > 1 + PROB_TOL).any(axis=1)
    if out.any():
        raise MetricError(f"{name}: probs must lie in [0, 1]; rows outside: {positions(out)}, "
                          f"min {flat.min():.4g}, max {flat.max():.4g}")
    return np.clip(p, 0.0, 1.0)


def check_labels(y: Any, name: str, n_classes: int) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise MetricError(f"{name}: y_true must be 1-D integer labels, got shape {a.shape}")
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    if a.dtype.kind not in "iuf":
        raise MetricError(f"{name}: y_true must be integer labels, got dtype {a.dtype}")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            raise MetricError(f"{name}: y_true has non-integer or NaN labels: {positions(bad)}")
    a = a.astype(np.int64)
    bad = (a < 0) | (a >= n_classes)
    if bad.any():
        raise MetricError(f"{name}: labels must be in 0..{n_classes - 1}; found "
                          f"{sorted(set(a[bad].tolist()))[:5]} in rows {positions(bad)}")
    return a


def check_lengths(y: np.ndarray, p: np.ndarray, name: str) -> None:
    if len(y) != len(p):
        raise MetricError(f"{name}: y_true has {len(y)} rows but probs has {len(p)}")
    if len(y) == 0:
        raise MetricError(f"{name}: no rows to score")


def require_both_classes(y: np.ndarray, name: str) -> None:
    if y.min() == y.max():
        raise MetricError(f"{name} needs both classes; y_true has only class {int(y[0])} "
                          f"(n={len(y)})")


def binary_inputs(y: Any, p: Any, name: str = "metric", need_both: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Validated (labels int (N,), P(positive) float (N,)) for a binary metric."""
    p = float_array(p, name)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise MetricError(f"{name}: binary probs must have shape (N,) or (N, 1) = P(positive), "
                          f"got {p.shape}")
    y = check_labels(y, name, 2)
    check_lengths(y, p, name)
    p = check_prob_values(p, name)
    if need_both:
        require_both_classes(y, name)
    return y, p


def prob_matrix(probs: Any, name: str) -> np.ndarray:
    """(N, K) class probabilities; binary (N,) / (N, 1) becomes [1 - p, p]."""
    P = float_array(probs, name)
    if P.ndim == 1 or (P.ndim == 2 and P.shape[1] == 1):
        p = check_prob_values(P.reshape(-1), name)
        return np.column_stack([1.0 - p, p])
    if P.ndim != 2 or P.shape[1] < 2:
        raise MetricError(f"{name}: probs must have shape (N, K) with K >= 2, got {P.shape}")
    return check_prob_values(P, name)


def multiclass_inputs(y: Any, probs: Any, name: str = "metric"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Validated (labels int (N,), probs (N, K)); a one-hot (N, K) y is turned into labels."""
    P = prob_matrix(probs, name)
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] > 1:
        if a.shape != P.shape:
            raise MetricError(f"{name}: y_true shape {a.shape} does not match probs {P.shape}")
        onehot = np.isin(a, (0, 1)).all(axis=1) & (a.sum(axis=1) == 1)
        if not onehot.all():
            raise MetricError(f"{name}: a 2-D y_true must be one-hot; rows that are not: "
                              f"{positions(~onehot)}")
        a = a.argmax(axis=1)
    y = check_labels(a, name, P.shape[1])
    check_lengths(y, P, name)
    return y, P


def multilabel_inputs(y: Any, probs: Any, name: str = "metric"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Validated (targets int (N, K) 0/1, probs (N, K)); integer labels become one-hot."""
    P = float_array(probs, name)
    if P.ndim != 2 or P.shape[1] < 2:
        raise MetricError(f"{name}: multilabel probs must have shape (N, K) with K >= 2, "
                          f"got {P.shape}")
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] > 1:
        if a.shape != P.shape:
            raise MetricError(f"{name}: y_true shape {a.shape} does not match probs {P.shape}")
        bad = ~np.isin(a, (0, 1)).all(axis=1)
        if bad.any():
            raise MetricError(f"{name}: a 2-D y_true must hold 0/1 only; rows that do not: "
                              f"{positions(bad)}")
        Y = a.astype(np.int64)
    else:
        Y = np.eye(P.shape[1], dtype=np.int64)[check_labels(a, name, P.shape[1])]
    check_lengths(Y, P, name)
    return Y, check_prob_values(P, name)


def tie_groups(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order by descending score; start index and value of each run of equal scores."""
    order = np.argsort(-p, kind="mergesort")
    ps = p[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    return order, starts, ps[starts]


def group_weights(y: np.ndarray, order: np.ndarray, starts: np.ndarray,
                   counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per tie group, (b, G); counts (b, N) are row weights."""
    w = np.ones((1, len(y))) if counts is None else counts
    ws = w[:, order].astype(np.float64)
    pos = (y[order] == 1)
    P = np.add.reduceat(ws * pos, starts, axis=1)
    N = np.add.reduceat(ws * ~pos, starts, axis=1)
    return P, N


def argmax_labels(probs: Any) -> np.ndarray:
    """Argmax class per row; -1 where the maximum is shared by several classes (a tie)."""
    P = prob_matrix(probs, "argmax_labels")
    top = P.max(axis=1, keepdims=True)
    pred = P.argmax(axis=1)
    pred[np.equal(P, top).sum(axis=1) > 1] = -1
    return pred
