"""Metrics against scikit-learn and hand-computed cases; subgroup tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from melalib import metrics as M
from melalib.errors import DataError, MelalibError
from melalib.metrics import MetricError
from melalib.subgroups import age_bands, confidence_bins, error_rates, subgroup_metrics
from melalib.tasks import HAM7, MELANOMA, MILK11, Task

SEEDS = (0, 1, 2)


def binary_case(seed: int, n: int = 300, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    return y, (np.round(p, 2) if ties else p)


def multiclass_case(seed: int, n: int = 400, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[y]
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, P


def _pauc_geometric(y: np.ndarray, p: np.ndarray, min_tpr: float) -> float:
    """Independent reference: area between the ROC curve and TPR = min_tpr, segment by segment."""
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr[:-1], fpr[1:], tpr[:-1], tpr[1:], strict=True):
        a, b = y0 - min_tpr, y1 - min_tpr
        if a >= 0:
            area += (x1 - x0) * (a + b) / 2
        elif b > 0:
            area += (x1 - x0) * b * b / (2 * (b - a))
    return area


# ------------------------------------------------------------------------------ binary
@pytest.mark.parametrize("seed", SEEDS)
def test_binary_metrics_match_sklearn(seed: int) -> None:
    y, p = binary_case(seed)
    assert M.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert M.pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert M.roc_auc(y, p[:, None]) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    for min_tpr in (0.8, 0.5):
        assert M.partial_auc(y, p, min_tpr) == pytest.approx(_pauc_geometric(y, p, min_tpr),
                                                             abs=1e-12)
    tm = M.threshold_metrics(y, p, 0.5)
    tn, fp, fn, tp = skm.confusion_matrix(y, (p >= 0.5).astype(int)).ravel()
    assert (tm["tp"], tm["fp"], tm["tn"], tm["fn"]) == (tp, fp, tn, fn)
    assert tm["sensitivity"] == pytest.approx(skm.recall_score(y, p >= 0.5))
    assert tm["ppv"] == pytest.approx(skm.precision_score(y, p >= 0.5))


def test_auc_six_samples_by_hand() -> None:
    # positives 0.35, 0.7, 0.9 beat 1, 2, 3 of the negatives 0.1, 0.4, 0.8 -> 6 / 9
    y = [0, 0, 1, 0, 1, 1]
    p = [0.1, 0.4, 0.35, 0.8, 0.7, 0.9]
    assert M.roc_auc(y, p) == pytest.approx(6 / 9)
    # ties count one half: the positive 0.4 ties the negative 0.4 -> (1 + 0.5 + 2 + 3) / 9
    assert M.roc_auc(y, [0.1, 0.4, 0.4, 0.8, 0.7, 0.9]) == pytest.approx(6.5 / 9)
    # AP: ranks 0.9(P) 0.8(N) 0.7(P) 0.4(N) 0.35(P): (1/1 + 2/3 + 3/5) / 3
    assert M.pr_auc(y, p) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_partial_auc_hand_cases() -> None:
    # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1): above TPR 0.8 only for FPR in [.5, 1] -> 0.5*0.2
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    p = [0.7, 0.5, 0.2, 0.1, 0.9, 0.8, 0.4, 0.3]
    assert M.roc_auc(y, p) == pytest.approx(0.75)
    assert M.partial_auc(y, p) == pytest.approx(0.1)
    assert M.partial_auc(y, [0, 0, 0, 0, 1, 1, 1, 1]) == pytest.approx(0.2)  # perfect: max
    assert M.partial_auc(y, [0.5] * 8) == pytest.approx(0.02)  # chance: triangle 0.2^2 / 2
    assert M.partial_auc(y, p, min_tpr=0.0) == pytest.approx(M.roc_auc(y, p))


def _isic2024_official(solution: np.ndarray, submission: np.ndarray, min_tpr: float = 0.80
                       ) -> float:
    """The ISIC 2024 Kaggle metric's arithmetic (score(): flip labels and scores, sklearn's
    McClish-standardised AUC up to max_fpr, then back to the raw area in [0, 0.2])."""
    v_gt = abs(np.asarray(solution) - 1)
    v_pred = np.array([1.0 - x for x in submission])
    max_fpr = abs(1 - min_tpr)
    scaled = skm.roc_auc_score(v_gt, v_pred, max_fpr=max_fpr)
    return 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_partial_auc_equals_the_isic2024_kaggle_metric(seed: int) -> None:
    y, p = binary_case(seed)
    p = np.round(p, 2)  # ties
    assert M.partial_auc(y, p) == pytest.approx(_isic2024_official(y, p), abs=1e-12)
    assert M.evaluate(MELANOMA, y, p)["pauc_80"] == pytest.approx(_isic2024_official(y, p),
                                                                 abs=1e-12)
    assert 0.0 <= M.partial_auc(y, p) <= 0.2


def test_threshold_metrics_and_operating_points_by_hand() -> None:
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    p = [0.7, 0.5, 0.2, 0.1, 0.9, 0.8, 0.4, 0.3]
    tm = M.threshold_metrics(y, p, 0.5)  # p >= 0.5: 0.9 0.8 (TP), 0.7 0.5 (FP)
    assert (tm["tp"], tm["fp"], tm["tn"], tm["fn"]) == (2, 2, 2, 2)
    assert tm["sensitivity"] == tm["specificity"] == tm["ppv"] == tm["npv"] == 0.5
    # sensitivity 0.75 first reached at threshold 0.4 (0.9 0.8 0.4), specificity 2/4
    assert M.threshold_for_sensitivity(y, p, 0.75) == pytest.approx((0.4, 0.75, 0.5))
    assert M.threshold_for_sensitivity(y, p, 0.9) == pytest.approx((0.3, 1.0, 0.5))
    # J: t=.8 -> .5, t=.3 -> 1 - .5 = .5 (tie, highest kept: .8); no threshold beats 0.5
    assert M.youden_threshold(y, p) == pytest.approx(0.8)
    assert M.youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.6, 0.7]) == pytest.approx(0.6)
    empty = M.threshold_metrics([0, 0, 1], [0.1, 0.2, 0.3], 0.9)  # no positive call
    assert np.isnan(empty["ppv"]) and empty["npv"] == pytest.approx(2 / 3)


# -------------------------------------------------------------------------- multiclass
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [3, 7])
def test_multiclass_metrics_match_sklearn(seed: int, k: int) -> None:
    y, P = multiclass_case(seed, k=k)
    pred = P.argmax(axis=1)
    assert M.accuracy(y, P) == pytest.approx(skm.accuracy_score(y, pred))
    assert M.balanced_accuracy(y, P) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert M.macro_f1(y, P) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert M.weighted_f1(y, P) == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert M.ovr_auc_macro(y, P) == pytest.approx(
        skm.roc_auc_score(y, P, multi_class="ovr", average="macro"))
    np.testing.assert_array_equal(M.confusion(y, pred, k),
                                  skm.confusion_matrix(y, pred, labels=range(k)))
    rep = M.per_class_report(y, P, [f"c{i}" for i in range(k)])
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=range(k),
                                                             zero_division=0)
    np.testing.assert_allclose(rep[["precision", "recall", "f1"]].to_numpy().T, [prec, rec, f1])
    np.testing.assert_array_equal(rep["support"], sup)
    assert rep["auc"].iloc[1] == pytest.approx(skm.roc_auc_score(y == 1, P[:, 1]))


def test_argmax_ties_count_as_wrong() -> None:
    y = [0, 0, 1, 1, 2]
    P = [[0.6, 0.2, 0.2],   # right
         [0.4, 0.4, 0.2],   # tie 0/1 -> wrong although class 0 is among the maxima
         [0.1, 0.8, 0.1],   # right
         [0.3, 0.3, 0.4],   # wrong (2)
         [0.2, 0.4, 0.4]]   # tie 1/2 -> wrong
    np.testing.assert_array_equal(M.argmax_labels(P), [0, -1, 1, 2, -1])
    assert M.accuracy(y, P) == pytest.approx(2 / 5)
    assert M.balanced_accuracy(y, P) == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    # F1: class 0 tp1 pred1 sup2 -> 2/3; class 1 tp1 pred1 sup2 -> 2/3; class 2 tp0 pred1 sup1
    assert M.macro_f1(y, P) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    with pytest.raises(MetricError, match=r"tied argmax\) in rows 2 \(first at position 1\)"):
        M.confusion(y, M.argmax_labels(P), 3)
    m = M.confusion(y, M.argmax_labels(P), 3, include_ties=True)
    np.testing.assert_array_equal(m, [[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]])


def test_ovr_auc_skips_absent_class() -> None:
    y, P = multiclass_case(3, k=4)
    keep = y != 3
    expected = np.mean([skm.roc_auc_score(y[keep] == c, P[keep, c]) for c in range(3)])
    assert M.ovr_auc_macro(y[keep], P[keep]) == pytest.approx(expected)


# -------------------------------------------------------------------------- multilabel
def test_thresholded_macro_f1_milk10k_hand_case() -> None:
    y = [0, 1, 2, 0]
    probs = [[0.9, 0.1, 0.2],   # class 0 right
             [0.3, 0.4, 0.1],   # nothing above 0.5: misses class 1 (FN), no FP
             [0.6, 0.2, 0.7],   # class 2 right + a false class 0
             [0.5, 0.2, 0.1]]   # exactly 0.5 is not above threshold: FN for class 0
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp0 fn1 -> 0; class 2: tp1 -> 1
    assert M.thresholded_macro_f1(y, probs) == pytest.approx((0.5 + 0 + 1) / 3)
    Y = np.eye(3, dtype=int)[y]
    pred = np.asarray(probs) > 0.5
    assert M.thresholded_macro_f1(Y, probs) == pytest.approx(
        skm.f1_score(Y, pred, average="macro", zero_division=0))
    # per-class thresholds: class 1 at 0.35 catches row 2
    assert M.thresholded_macro_f1(y, probs, [0.5, 0.35, 0.5]) == pytest.approx((0.5 + 1 + 1) / 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_thresholded_macro_f1_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, 300)
    probs = np.clip(rng.random((300, 6)) * 0.7 + 0.35 * np.eye(6)[y], 0, 1)
    probs[:20] = 0.1  # rows with no class above threshold
    t = rng.uniform(0.3, 0.7, 6)
    expected = skm.f1_score(np.eye(6, dtype=int)[y], probs > t, average="macro", zero_division=0)
    assert M.thresholded_macro_f1(y, probs, t) == pytest.approx(expected)
    per_class = skm.f1_score(np.eye(6, dtype=int)[y], probs > t, average=None, zero_division=0)
    np.testing.assert_allclose(M.thresholded_f1_per_class(y, probs, t), per_class)


def test_tune_thresholds_maximises_per_class_f1() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    probs = np.clip(rng.random((600, 3)) * 0.4 + 0.3 * np.eye(3)[y], 0, 1)  # true ~ [.3, .7]
    grid = np.round(np.linspace(0.05, 0.95, 19), 2)
    t = M.tune_thresholds(y, probs, grid)
    Y = np.eye(3, dtype=int)[y]
    for k in range(3):
        f1 = [skm.f1_score(Y[:, k], probs[:, k] > g, zero_division=0) for g in grid]
        assert skm.f1_score(Y[:, k], probs[:, k] > t[k]) == pytest.approx(max(f1))
    assert M.thresholded_macro_f1(y, probs, t) > M.thresholded_macro_f1(y, probs, 0.5)


# ------------------------------------------------------------------- evaluate / primary
def test_evaluate_each_task_kind() -> None:
    y, p = binary_case(0)
    out = M.evaluate(MELANOMA, y, p, threshold=0.5)
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert out["sensitivity"] == pytest.approx(M.threshold_metrics(y, p, 0.5)["sensitivity"])
    assert out["sens90_sensitivity"] >= 0.9 and out["n"] == len(y)
    assert {"pauc_80", "youden_threshold", "brier", "ece", "npv"} <= set(out)
    assert M.primary_metric(MELANOMA, y, p) == out["roc_auc"]

    y7, P7 = multiclass_case(1, k=7)
    out7 = M.evaluate(HAM7, y7, P7)
    assert out7["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(y7, P7.argmax(1)))
    assert M.primary_metric(HAM7, y7, P7) == out7["balanced_accuracy"]

    y11, P11 = multiclass_case(2, k=11)
    out11 = M.evaluate(MILK11, y11, P11)
    assert out11["thresholded_macro_f1"] == M.primary_metric(MILK11, y11, P11)
    assert out11["thresholded_macro_f1"] == pytest.approx(skm.f1_score(
        np.eye(11, dtype=int)[y11], P11 > 0.5, average="macro", zero_division=0))
    assert out11["accuracy"] == pytest.approx(skm.accuracy_score(y11, P11.argmax(1)))


def test_primary_metric_dispatches_roc_auc_to_ovr() -> None:
    y, P = multiclass_case(0, k=3)
    task = Task("t", "multiclass", ("a", "b", "c"), "roc_auc")
    assert M.primary_metric(task, y, P) == pytest.approx(
        skm.roc_auc_score(y, P, multi_class="ovr"))


# -------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("call", "message"), [
    (lambda: M.roc_auc([0] * 12, np.linspace(0, 1, 12)),
     "roc_auc needs both classes; y_true has only class 0 (n=12)"),
    (lambda: M.roc_auc([0, 1, 1], [0.1, 0.9]), "roc_auc: y_true has 3 rows but probs has 2"),
    (lambda: M.pr_auc([0, 1, 0], [0.1, np.nan, 0.3]),
     "pr_auc: probs contain NaN or inf in rows 1 (first at position 1)"),
    (lambda: M.roc_auc([0, 1, 0], [0.1, 1.3, 0.3]), "roc_auc: probs must lie in [0, 1]"),
    (lambda: M.roc_auc([0, 2, 1], [0.1, 0.2, 0.3]),
     "roc_auc: labels must be in 0..1; found [2] in rows 1 (first at position 1)"),
    (lambda: M.roc_auc([0, 1], [[0.9, 0.1], [0.2, 0.8]]),
     "binary probs must have shape (N,) or (N, 1) = P(positive), got (2, 2)"),
    (lambda: M.balanced_accuracy([0, 1, 3], np.full((3, 3), 1 / 3)),
     "labels must be in 0..2; found [3]"),
    (lambda: M.accuracy([0.5, 1], [[0.9, 0.1], [0.2, 0.8]]), "non-integer or NaN labels"),
    (lambda: M.evaluate(HAM7, [0, 1], np.full((2, 3), 1 / 3)),
     "task 'ham10000' has 7 classes: probs must be (N, 7), got (2, 3)"),
    (lambda: M.evaluate(MELANOMA, [0, 1], np.full((2, 2), 0.5)), "task 'melanoma' is binary"),
    (lambda: M.sensitivity([0, 0], [0.2, 0.7]), "sensitivity needs positives"),
    (lambda: M.ovr_auc_macro([1, 1, 1], np.full((3, 3), 1 / 3)),
     "ovr_auc_macro needs at least 2 classes in y_true; it has only class(es) [1] (n=3)"),
    (lambda: M.thresholded_macro_f1([[0, 2], [1, 0]], [[0.2, 0.8], [0.6, 0.4]]),
     "a 2-D y_true must hold 0/1 only"),
    (lambda: M.partial_auc([0, 1], [0.2, 0.7], min_tpr=1.2), "min_tpr must be in [0, 1)"),
    (lambda: M.metric_for(HAM7, "pauc_80"), "pauc_80 is a binary metric"),
])
def test_validation_messages(call, message: str) -> None:
    with pytest.raises(MetricError, match=re.escape(message)) as info:
        call()
    assert isinstance(info.value, MelalibError) and isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- subgroups
def test_age_bands_edges_and_unknown() -> None:
    bands = age_bands([0, 29.9, 30, 44, 45, 59, 60, 74.5, 75, 95, np.nan])
    assert list(bands.astype(str)) == ["<30", "<30", "30-44", "30-44", "45-59", "45-59",
                                       "60-74", "60-74", "75+", "75+", "unknown"]
    assert list(bands.cat.categories) == ["<30", "30-44", "45-59", "60-74", "75+", "unknown"]


def _subgroup_frame(seed: int = 0, n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "group_id": [f"p{i // 2}" for i in range(n)],
        "age": rng.choice([25.0, 50.0, 70.0, np.nan], n),
        "sex": rng.choice(["male", "female"], n),
        "site": rng.choice(["torso", "head_neck", "palms_soles"], n)})
    df["label"] = rng.integers(0, 2, n)
    df.loc[df["site"] == "palms_soles", "label"] = 0  # a single-class subgroup
    df["prob_melanoma"] = np.clip(0.3 + 0.4 * df["label"] + rng.normal(0, 0.2, n), 0, 1)
    return df


def test_subgroup_metrics_counts_and_undefined_subgroups() -> None:
    df = _subgroup_frame()
    out = subgroup_metrics(df, MELANOMA, metrics=["roc_auc"], n_boot=50, min_count=5)
    assert set(out["subgroup_column"]) == {"age_band", "sex", "site"}  # no skin_tone column
    for _, part in out.groupby("subgroup_column"):
        assert part["n"].sum() == len(df)
    palms = out[(out["subgroup_column"] == "site") & (out["value"] == "palms_soles")].iloc[0]
    assert np.isnan(palms["estimate"]) and np.isnan(palms["low"])
    assert "roc_auc needs both classes; y_true has only class 0" in palms["reason"]
    torso = out[(out["subgroup_column"] == "site") & (out["value"] == "torso")].iloc[0]
    mask = (df["site"] == "torso").to_numpy()
    assert torso["estimate"] == pytest.approx(
        skm.roc_auc_score(df["label"][mask], df["prob_melanoma"][mask]))
    assert torso["low"] <= torso["estimate"] <= torso["high"] and torso["reason"] == ""
    assert torso["n_pos"] == df["label"][mask].sum()
    assert out.loc[out["subgroup_column"] == "age_band", "value"].tolist() == [
        "<30", "45-59", "60-74", "unknown"]
    small = subgroup_metrics(df, MELANOMA, by=["sex"], n_boot=0, min_count=10_000)
    assert small["reason"].str.startswith("n=").all() and small["estimate"].isna().all()


def test_subgroup_metrics_rejects_bad_input() -> None:
    df = _subgroup_frame()
    with pytest.raises(DataError, match="subgroup column 'skin_tone' is not in the table"):
        subgroup_metrics(df, MELANOMA, by=["skin_tone"], n_boot=0)
    df.loc[3, "label"] = -1
    with pytest.raises(DataError, match="unlabelled test rows"):
        subgroup_metrics(df, MELANOMA, by=["sex"], n_boot=0)


def test_error_rates_binary_hand_case() -> None:
    df = pd.DataFrame({"sex": ["m", "m", "m", "f", "f", "f"], "label": [1, 1, 0, 1, 0, 0],
                       "prob_melanoma": [0.9, 0.2, 0.6, 0.4, 0.1, 0.3]})
    out = error_rates(df, MELANOMA, by=["sex"]).set_index("value")
    # m: FN (0.2), FP (0.6); f: FN (0.4)
    assert out.loc["m", ["n", "n_pos", "n_neg", "fn", "fp"]].tolist() == [3, 2, 1, 1, 1]
    assert out.loc["m", "fn_rate"] == 0.5 and out.loc["m", "fp_rate"] == 1.0
    assert out.loc["f", ["fn", "fp"]].tolist() == [1, 0] and out.loc["f", "fn_rate"] == 1.0
    assert out.loc["f", "error_rate"] == pytest.approx(1 / 3)


def test_error_rates_multiclass_with_confidence_bins() -> None:
    task = Task("t3", "multiclass", ("a", "b", "c"), "balanced_accuracy")
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.5, 0.1], [0.34, 0.33, 0.33], [0.2, 0.2, 0.6]])
    df = pd.DataFrame({"label": [0, 0, 2, 2]})
    out = error_rates(df, task, probs, by=["confidence_bin"])
    bins = confidence_bins(probs, 5)  # edges 1/3 .. 1 in steps of 2/15
    assert list(bins.astype(str)) == ["0.87-1.00", "0.47-0.60", "0.33-0.47", "0.47-0.60"]
    mid = out.set_index("value").loc["0.47-0.60"]
    assert (mid["n"], mid["n_errors"], mid["error_rate"]) == (2, 1, 0.5)
    assert out["n"].sum() == 4 and out["n_errors"].sum() == 2


@pytest.mark.realdata
def test_subgroups_on_ham10000_metadata(shared_data) -> None:
    meta = pd.read_csv(shared_data / "ham10000" / "HAM10000_metadata.csv")
    rng = np.random.default_rng(0)
    y = pd.Categorical(meta["dx"], categories=HAM7.classes).codes
    logits = rng.normal(0, 1, (len(meta), 7)) + 2.0 * np.eye(7)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    df = pd.DataFrame({"label": y, "group_id": meta["lesion_id"], "age": meta["age"],
                       "sex": meta["sex"]})
    out = subgroup_metrics(df, HAM7, probs, by=["age_band", "sex"], n_boot=20)
    assert set(out["metric"]) == {"balanced_accuracy", "accuracy"}
    for _, part in out[out["metric"] == "accuracy"].groupby("subgroup_column"):
        assert part["n"].sum() == 10_015
    assert (out.loc[out["reason"] == "", "n_groups"] <= out.loc[out["reason"] == "", "n"]).all()
