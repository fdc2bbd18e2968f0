"""melalib's metrics against the ISIC's own scorer (`isic-challenge-scoring`, the code that
scored the ISIC 2016-2019 classification challenges): the same predictions, written as the
challenge's ground-truth and submission CSVs, must give the same numbers.

One documented difference: at the 0.5 operating threshold the ISIC scorer calls a case
positive when ``p > 0.5``, melalib when ``p >= 0.5`` (melalib's operating points are score
values, and a threshold taken from the ROC curve must include the case it came from). They
differ only for scores of exactly 0.5; `test_the_only_threshold_difference_is_p_equal_half`
pins that down. And "AUC above 80 % sensitivity" names two metrics: the scorer's
``auc_sens_80`` (ISIC 2018-19, area under the curve) and melalib's ``pauc_80`` (ISIC 2024,
area above TPR 0.8); the binary test checks the exact relation between them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from melalib.metrics import evaluate, ovr_pr_auc_macro, per_class_report
from melalib.tasks import HAM7, MELANOMA

scoring = pytest.importorskip("isic_challenge_scoring.classification")
# The scorer (2021) uses pandas/NumPy idioms now deprecated; its warnings are not ours.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:isic_challenge_scoring.*"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:rdp.*")]


def _official(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> scoring.ClassificationScore:
    """Score with the challenge's `ClassificationScore` on the frames its CSV parser builds
    (truth: one-hot rows, weights 1; submission: probabilities, indexed by image). Its CSV
    layer itself (`from_stream`) calls `DataFrame.applymap`, gone in pandas 3, so the frames
    are built here; the metric code is the scorer's own."""
    images = pd.Index([f"ISIC_{i:07d}" for i in range(len(y))], name="image")
    truth = pd.DataFrame(np.eye(len(classes))[y], columns=classes, index=images)
    pred = pd.DataFrame(probs, columns=classes, index=images)
    weights = pd.DataFrame({"score_weight": 1.0, "validation_weight": 1.0}, index=images)
    return scoring.ClassificationScore(truth, pred, weights,
                                       scoring.ClassificationMetric.BALANCED_ACCURACY)


def _binary_case(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.2).astype(int)
    p = 1 / (1 + np.exp(-(1.6 * y - 1.2 + rng.normal(0, 1, n))))
    p = np.round(p, 3)  # realistic ties among scores, but none exactly at 0.5
    p[p == 0.5] = 0.501
    return y, p


def test_binary_task_matches_the_official_scorer() -> None:
    y, p = _binary_case()
    ours = evaluate(MELANOMA, y, p)
    official = _official(y, np.column_stack([1 - p, p]), ["benign", "melanoma"])
    mel = official.per_category.loc["melanoma"]
    assert ours["roc_auc"] == pytest.approx(mel["auc"], abs=1e-12)
    assert ours["pr_auc"] == pytest.approx(mel["ap"], abs=1e-12)
    # Two metrics share the name "partial AUC above 80 % TPR": the scorer's auc_sens_80
    # (ISIC 2018-19) is the area UNDER the ROC curve where TPR >= 0.8; melalib's pauc_80 is
    # ISIC 2024's (Kaggle), the area between the curve and the TPR = 0.8 line, range
    # [0, 0.2]. They differ by the rectangle 0.8 x (1 - FPR at TPR 0.8):
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    i = int(np.searchsorted(tpr, 0.8, side="left"))
    fpr_at_80 = float(np.interp(0.8, tpr[i - 1:i + 1], fpr[i - 1:i + 1]))
    assert ours["pauc_80"] == pytest.approx(mel["auc_sens_80"] - 0.8 * (1 - fpr_at_80),
                                            abs=1e-9)
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        assert ours[key] == pytest.approx(mel[key], abs=1e-12), key
    # balanced multiclass accuracy over the two columns (argmax of [1 - p, p])
    assert evaluate(HAM7.__class__(name="two", kind="multiclass", classes=("benign", "melanoma"),
                                   primary_metric="balanced_accuracy"),
                    y, np.column_stack([1 - p, p]))["balanced_accuracy"] == pytest.approx(
        official.aggregate["balanced_accuracy"], abs=1e-12)


def _multiclass_case(n: int = 700, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = len(HAM7.classes)
    y = rng.choice(k, size=n, p=[0.04, 0.05, 0.11, 0.01, 0.11, 0.66, 0.02])
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.5
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    P[:10, :] = 1.0 / k  # argmax ties: both scorers count them as wrong
    P[10:20, :2] = P[10:20].max(axis=1, keepdims=True)
    return y, P / P.sum(axis=1, keepdims=True)


def test_seven_class_task_matches_the_official_scorer() -> None:
    y, P = _multiclass_case()
    classes = list(HAM7.classes)
    ours = evaluate(HAM7, y, P)
    official = _official(y, P, classes)
    assert ours["n_tied"] >= 20
    assert ours["balanced_accuracy"] == pytest.approx(official.aggregate["balanced_accuracy"],
                                                      abs=1e-12)
    assert ours["ovr_auc_macro"] == pytest.approx(official.macro_average["auc"], abs=1e-12)
    assert ovr_pr_auc_macro(y, P) == pytest.approx(official.macro_average["ap"], abs=1e-12)
    report = per_class_report(y, P, classes)
    np.testing.assert_allclose(report["auc"].to_numpy(),
                               official.per_category.loc[classes, "auc"].to_numpy(), atol=1e-12)


def test_the_only_threshold_difference_is_p_equal_half() -> None:
    """Scores of exactly 0.5: positive for melalib (p >= t), negative for the ISIC scorer
    (p > 0.5). Everything else agrees (the tests above)."""
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.5, 0.9, 0.5, 0.1, 0.2, 0.7])
    ours = evaluate(MELANOMA, y, p)
    mel = _official(y, np.column_stack([1 - p, p]), ["benign", "melanoma"]).per_category.loc[
        "melanoma"]
    assert ours["sensitivity"] == pytest.approx(2 / 3) and mel["sensitivity"] == pytest.approx(
        1 / 3)
    assert ours["specificity"] == pytest.approx(1 / 3) and mel["specificity"] == pytest.approx(
        2 / 3)
    assert ours["roc_auc"] == pytest.approx(mel["auc"])  # threshold-free metrics agree
