"""Nested per-class thresholds for the thresholded macro F1 (MILK10k's metric), and baking
them into saved probabilities so the official 0.5 rule applies."""

from __future__ import annotations

import numpy as np
import pytest

from melalib.arrays import MetricError
from melalib.metrics import thresholded_macro_f1, tune_thresholds
from melalib.thresholds import bake, nested_probs, nested_report, nested_thresholds


def shifted_folds(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 folds x 60 rows, 3 classes; class 0's scores sit low in folds 0-1 (positives ~0.3,
    negatives ~0.1) and high in fold 2 (positives ~0.85, negatives ~0.6)."""
    rng = np.random.default_rng(seed)
    folds = np.repeat([0, 1, 2], 60)
    y = rng.integers(0, 3, len(folds))
    P = rng.uniform(0.0, 0.2, (len(folds), 3))
    P[np.arange(len(y)), y] += 0.5  # classes 1 and 2: well separated at 0.5
    pos = y == 0
    P[:, 0] = np.where(pos, 0.3, 0.1) + rng.uniform(-0.04, 0.04, len(y))
    late = folds == 2
    P[late, 0] = np.where(pos[late], 0.85, 0.6) + rng.uniform(-0.04, 0.04, late.sum())
    return y, P, folds


def test_bake_moves_each_threshold_to_one_half_monotonically() -> None:
    rng = np.random.default_rng(1)
    P = np.vstack([rng.uniform(0, 1, (500, 4)), [[0.0] * 4, [1.0] * 4, [0.2, 0.35, 0.5, 0.8]]])
    t = np.array([0.2, 0.35, 0.5, 0.8])
    B = bake(P, t)
    assert ((B > 0.5) == (P - t > 0)).all()  # the official rule on B = the tuned rule on P
    assert np.allclose(B[-3], [0.0] * 4) and np.allclose(B[-2], [1.0] * 4)
    assert np.allclose(B[-1], 0.5)
    for k in range(4):  # strictly increasing per class: ranks (and AUCs) unchanged
        order = np.argsort(P[:, k])
        assert (np.diff(B[order, k]) >= 0).all()
        assert (np.diff(B[order, k])[np.diff(P[order, k]) > 0] > 0).all()
    y = rng.integers(0, 4, len(P))
    assert thresholded_macro_f1(y, B) == thresholded_macro_f1(y, P, t)
    assert np.array_equal(bake(P, [0.5] * 4), P)  # 0.5 leaves probabilities as they are
    with pytest.raises(MetricError, match=r"\(0, 1\)"):
        bake(P, [0.0, 0.5, 0.5, 0.5])


def test_each_folds_thresholds_come_from_the_other_folds_only() -> None:
    y, P, folds = shifted_folds()
    per_fold = nested_thresholds(y, P, folds)
    for k in (0, 1, 2):
        assert np.array_equal(per_fold[k], tune_thresholds(y[folds != k], P[folds != k]))
    # fold 2's own rows would put class 0's threshold near 0.7; the others put it low
    assert per_fold[2][0] < 0.3 < tune_thresholds(y[folds == 2], P[folds == 2])[0]


def test_a_folds_own_labels_never_reach_its_thresholds() -> None:
    y, P, folds = shifted_folds()
    flipped = y.copy()
    late = np.flatnonzero(folds == 2)
    flipped[late] = (y[late] + 1) % 3  # every label of fold 2 changed
    before, after = nested_thresholds(y, P, folds), nested_thresholds(flipped, P, folds)
    assert np.array_equal(before[2], after[2])  # fold 2's thresholds: other folds' labels
    assert not all(np.array_equal(before[k], after[k]) for k in (0, 1))  # theirs do change
    # and the nested figure is the held-out score: leaking fold 2's labels would beat it
    nested = thresholded_macro_f1(y, nested_probs(P, folds, before))
    leaky = {k: tune_thresholds(y, P) for k in (0, 1, 2)}  # tuned on every row, own fold too
    assert nested < thresholded_macro_f1(y, nested_probs(P, folds, leaky))


def test_nested_report_puts_the_tuned_figure_beside_the_untuned_one() -> None:
    y, P, folds = shifted_folds()
    report = nested_report(y, P, folds, groups=np.arange(len(y)), n_boot=50)
    assert report.untuned["estimate"] == thresholded_macro_f1(y, P)
    per_fold = nested_thresholds(y, P, folds)
    assert report.nested["estimate"] == thresholded_macro_f1(y, nested_probs(P, folds, per_fold))
    for figure in (report.untuned, report.nested):
        assert figure["low"] <= figure["estimate"] <= figure["high"]
    summary = report.summary(("a", "b", "c"))
    assert set(summary["fold_thresholds"]) == {"0", "1", "2"}
    assert summary["thresholds_all_oof"]["a"] == tune_thresholds(y, P)[0]
    with pytest.raises(MetricError, match="at least 2 folds"):
        nested_thresholds(y, P, np.zeros(len(y), dtype=int))
