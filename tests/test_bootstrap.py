"""Group-aware bootstrap CIs (`melalib.bootstrap`): the vectorised replicates equal the
metrics on the resampled rows, coverage, whole-group and stratified resampling, speed."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn import metrics as skm

from melalib import bootstrap as B
from melalib import metrics as M
from melalib.errors import MelalibError
from melalib.metrics import MetricError
from melalib.tasks import HAM7, MELANOMA, MILK11

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_metrics import binary_case, multiclass_case  # the metric tests' synthetic cases


def test_groups_must_match_the_rows() -> None:
    with pytest.raises(MetricError, match=re.escape(
            "bootstrap: groups has 3 rows but y_true has 4")) as info:
        B.bootstrap_ci(M.roc_auc, [0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6], groups=[1, 2, 3])
    assert isinstance(info.value, MelalibError) and isinstance(info.value, ValueError)


def _expanded(fn, y, probs, counts):
    rows = np.arange(len(y))
    out = []
    for c in counts:
        idx = np.repeat(rows, c)
        try:
            out.append(fn(np.asarray(y)[idx], np.asarray(probs)[idx]))
        except MetricError:
            out.append(np.nan)
    return np.array(out, dtype=float)


def test_vectorised_replicates_equal_the_metric_on_resampled_rows() -> None:
    y, p = binary_case(5, n=120)
    groups = np.arange(120) // 3
    counts = next(B.Resampler(y, groups).chunks(25, seed=1))
    binary_fns = [M.roc_auc, M.pr_auc, M.partial_auc, M.metric_for(MELANOMA, "sensitivity", 0.6),
                  M.metric_for(MELANOMA, "specificity", 0.4)]
    yk, P = multiclass_case(6, n=150, k=4)
    P[:10] = 0.25  # all-way ties
    counts_k = next(B.Resampler(yk, stratify=False).chunks(25, seed=2))
    multi_fns = [M.accuracy, M.balanced_accuracy, M.macro_f1, M.weighted_f1, M.ovr_auc_macro]
    Y = np.eye(4, dtype=int)[yk]
    ml_fns = [M.metric_for(MILK11, "thresholded_macro_f1", 0.3), M.ovr_auc_macro]
    cases = ([(f, y, p, counts) for f in binary_fns] + [(f, yk, P, counts_k) for f in multi_fns]
             + [(f, Y, P, counts_k) for f in ml_fns])
    for fn, yy, pp, cc in cases:
        batched = B.batched_metric(fn)
        assert batched is not None, fn
        np.testing.assert_allclose(batched(yy, pp, cc), _expanded(fn, yy, pp, cc), atol=1e-12,
                                   err_msg=str(fn))


def test_bootstrap_ci_coverage_binormal() -> None:
    d, n, reps = 1.0, 200, 200
    true_auc = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(1)
    covered = 0
    for r in range(reps):
        y = np.r_[np.ones(n // 2, int), np.zeros(n // 2, int)]
        s = np.r_[rng.normal(d, 1, n // 2), rng.normal(0, 1, n // 2)]
        res = B.bootstrap_ci(M.roc_auc, y, 1 / (1 + np.exp(-s)), n_boot=200, seed=r)
        assert res["n_boot_ok"] == 200 and res["low"] <= res["estimate"] <= res["high"]
        covered += res["low"] <= true_auc <= res["high"]
    assert 0.85 <= covered / reps <= 0.99


def test_group_bootstrap_is_wider_for_clustered_data() -> None:
    rng = np.random.default_rng(0)
    g_label = np.r_[np.ones(20, int), np.zeros(20, int)]
    g_score = 1 / (1 + np.exp(-(rng.normal(0, 1, 40) + 0.8 * g_label)))
    groups = np.repeat(np.arange(40), 10)  # each group's 10 rows identical
    y, p = g_label[groups], g_score[groups]
    by_group = B.bootstrap_ci(M.roc_auc, y, p, groups=groups, n_boot=400)
    by_row = B.bootstrap_ci(M.roc_auc, y, p, groups=None, n_boot=400)
    assert by_group["estimate"] == by_row["estimate"]
    assert (by_group["high"] - by_group["low"]) > 1.5 * (by_row["high"] - by_row["low"])


def test_stratified_bootstrap_keeps_both_classes_and_skips_undefined() -> None:
    y = np.r_[1, np.zeros(49, int)]
    p = np.linspace(0.01, 0.99, 50)
    strat = B.bootstrap_ci(M.roc_auc, y, p, n_boot=300, stratify=True)
    assert strat["n_boot_ok"] == 300
    plain = B.bootstrap_ci(M.roc_auc, y, p, n_boot=300, stratify=False)
    # P(the single positive is never drawn) = (49/50)^50 ~ 0.36: those replicates are skipped
    assert 0.5 * 300 < plain["n_boot_ok"] < 0.8 * 300
    gen = B.bootstrap_ci(lambda a, b: M.roc_auc(a, b), y, p, n_boot=300, stratify=False)
    assert gen["n_boot_ok"] == plain["n_boot_ok"] and gen["low"] == pytest.approx(plain["low"])


def test_group_resampling_takes_whole_groups_and_keeps_strata() -> None:
    y = np.array([1, 1, 0, 0, 0, 0, 1, 0])
    groups = np.array(["a", "a", "b", "b", "c", "d", "e", "e"])
    sampler = B.Resampler(y, groups)
    for counts in sampler.chunks(50, seed=3):
        for row in counts:
            per_group = {g: set(row[groups == g]) for g in set(groups)}
            assert all(len(v) == 1 for v in per_group.values())  # all rows of a group alike
            # groups with a positive (a, e) are drawn twice in all, negatives (b, c, d) thrice
            assert row[0] + row[6] == 2 and row[2] + row[4] + row[5] == 3


def test_bootstrap_auc_is_fast() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 10_000)
    p = rng.random(10_000)
    start = time.perf_counter()
    res = B.bootstrap_ci(M.roc_auc, y, p, groups=rng.integers(0, 3000, 10_000), n_boot=1000)
    assert time.perf_counter() - start < 10.0
    assert res["n_boot_ok"] == 1000 and res["low"] < 0.5 < res["high"]


def test_evaluate_with_ci_table() -> None:
    y, P = multiclass_case(4, n=300, k=7)
    groups = np.arange(300) // 2
    table = B.evaluate_with_ci(HAM7, y, P, groups, n_boot=100)
    assert list(table.columns[:4]) == ["metric", "estimate", "low", "high"]
    assert set(table["metric"]) == {"accuracy", "balanced_accuracy", "macro_f1", "ovr_auc_macro"}
    est = table.set_index("metric")["estimate"]
    assert est["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, P.argmax(1)))
    assert (table["low"] <= table["estimate"]).all() and (table["estimate"] <= table["high"]).all()
    again = B.evaluate_with_ci(HAM7, y, P, groups, n_boot=100)
    pd.testing.assert_frame_equal(table, again)  # deterministic for a seed
