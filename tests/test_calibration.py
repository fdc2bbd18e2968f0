"""Calibration: reliability curves vs scikit-learn, ECE / Brier by hand, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from melalib.calibration import (
    TemperatureScaler,
    brier_score,
    cross_fitted_scaling,
    expected_calibration_error,
    logit,
    negative_log_likelihood,
    reliability_curve,
    temperature_report,
    wilson_interval,
)
from melalib.metrics import MetricError
from melalib.tasks import HAM7, MELANOMA, MILK11, Task

THREE = Task("three", "multiclass", ("a", "b", "c"), "balanced_accuracy")


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("seed", [0, 1])
def test_reliability_curve_matches_sklearn(strategy: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.beta(0.8, 2.0, 500)
    p[:5] = [0.0, 0.1, 0.2, 0.5, 1.0]  # values on bin edges
    y = (rng.random(500) < p).astype(int)
    curve = reliability_curve(y, p, n_bins=10, strategy=strategy)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy=strategy)
    used = curve[curve["count"] > 0]
    np.testing.assert_allclose(used["frac_pos"], frac)
    np.testing.assert_allclose(used["mean_pred"], mean)
    assert curve["count"].sum() == 500
    if strategy == "uniform":
        assert len(curve) == 10 and curve["bin_lo"].iloc[3] == pytest.approx(0.3)


def test_wilson_interval_by_hand_and_in_the_reliability_curve() -> None:
    """The reliability diagram's error bars (issue 23): 95 % Wilson intervals, inside
    [0, 1] even at 0 of n and n of n."""
    low, high = wilson_interval([0, 5, 10], [10, 10, 10])
    # 0/10: (0, z^2 / (n + z^2)); 5/10: 0.5 -/+ 0.2366 (textbook values)
    np.testing.assert_allclose(low, [0.0, 0.2366, 0.7225], atol=1e-4)
    np.testing.assert_allclose(high, [0.2775, 0.7634, 1.0], atol=1e-4)
    assert np.isnan(wilson_interval([0], [0])[0][0])
    rng = np.random.default_rng(0)
    p = rng.random(200)
    y = (rng.random(200) < p).astype(int)
    curve = reliability_curve(y, p, n_bins=5)
    lo, hi = wilson_interval(curve["frac_pos"] * curve["count"], curve["count"])
    np.testing.assert_allclose(curve["low"], lo)
    np.testing.assert_allclose(curve["high"], hi)
    assert (curve["low"] <= curve["frac_pos"]).all() and (curve["frac_pos"] <= curve["high"]).all()


def test_ece_binary_by_hand() -> None:
    # bins of width 0.2; 0.2 falls in the first bin (right-closed): gaps |.2-.5| and |.8-1|
    y, p = [0, 1, 1, 1], [0.2, 0.2, 0.8, 0.8]
    assert expected_calibration_error(y, p, n_bins=5) == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_ece_multiclass_is_top_label() -> None:
    P = [[0.7, 0.2, 0.1], [0.7, 0.1, 0.2], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]]
    y = [0, 1, 2, 0]
    # confidences .7 (right), .7 (wrong), .6 (right), .4 (tie: wrong); bins of width 0.1
    expected = (2 * abs(0.7 - 0.5) + abs(0.6 - 1.0) + abs(0.4 - 0.0)) / 4
    assert expected_calibration_error(y, P, n_bins=10) == pytest.approx(expected)


def test_brier_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.random(200)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    yk = rng.integers(0, 4, 200)
    P = rng.dirichlet(np.ones(4), 200)
    assert brier_score(yk, P) == pytest.approx(brier_score_loss(yk, P, labels=range(4)))
    assert brier_score([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0


def _calibrated_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    return z, (rng.random(n) < expit(z)).astype(int)


def _calibrated_multiclass(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    cum = softmax(z, axis=1).cumsum(axis=1)
    y = np.minimum((rng.random((n, 1)) > cum).sum(axis=1), k - 1)
    return z, y


def test_temperature_scaling_binary_overconfident() -> None:
    z, y = _calibrated_binary(6000, 0)
    over = 3.0 * z
    scaler = TemperatureScaler().fit(over, y, MELANOMA)
    assert scaler.temperature == pytest.approx(3.0, rel=0.12)
    before = expected_calibration_error(y, expit(over))
    after = expected_calibration_error(y, scaler.transform(over))
    assert after < 0.5 * before
    assert log_loss(y, scaler.transform(over)) < log_loss(y, expit(over))
    assert scaler.nll_after < scaler.nll_before
    assert scaler.transform(over[:, None]).shape == (6000, 1)


def test_temperature_scaling_multiclass_overconfident() -> None:
    z, y = _calibrated_multiclass(6000, 7, 1)
    over = 3.0 * z
    scaler = TemperatureScaler().fit(over, y, HAM7)
    assert scaler.temperature == pytest.approx(3.0, rel=0.12)
    probs = scaler.transform(over)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert expected_calibration_error(y, probs) < 0.5 * expected_calibration_error(
        y, softmax(over, axis=1))
    np.testing.assert_array_equal(probs.argmax(axis=1), over.argmax(axis=1))  # ranks kept


def test_temperature_scaling_multilabel_shared_temperature() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1.5, (3000, 11))
    Y = (rng.random((3000, 11)) < expit(z)).astype(int)
    scaler = TemperatureScaler().fit(2.0 * z, Y, MILK11)
    assert scaler.temperature == pytest.approx(2.0, rel=0.1)
    assert scaler.transform(2.0 * z).shape == (3000, 11)


def test_temperature_scaler_errors_and_roundtrip() -> None:
    with pytest.raises(MetricError, match="TemperatureScaler is not fitted"):
        TemperatureScaler().transform([0.1, 0.2])
    with pytest.raises(MetricError, match="binary logits must be"):
        TemperatureScaler().fit(np.zeros((4, 2)), [0, 1, 0, 1], "binary")
    with pytest.raises(MetricError, match="logits contain NaN or inf"):
        TemperatureScaler().fit([0.1, np.inf], [0, 1], "binary")
    z, y = _calibrated_binary(500, 3)
    fitted = TemperatureScaler().fit(z, y, "binary")
    again = TemperatureScaler.from_dict(fitted.to_dict())
    np.testing.assert_allclose(again.transform(z), fitted.transform(z))


def test_logit_clips_and_inverts() -> None:
    p = np.array([0.0, 0.25, 0.5, 1.0])
    z = logit(p)
    assert np.isfinite(z).all() and z[2] == 0.0
    assert expit(z[1]) == pytest.approx(0.25)


def test_temperature_report_cross_fits_by_fold() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    logits = (2 * y - 1) * 0.5 + rng.normal(0, 1, 400)
    over = 1 / (1 + np.exp(-4 * logits))  # over-confident: temperature should be > 1
    folds = np.arange(400) % 4
    table, temperature = temperature_report(MELANOMA, y, over, folds)
    assert temperature == pytest.approx(4.0, rel=0.25)
    before, after = table.iloc[0], table.iloc[1]
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert before["nll"] == pytest.approx(log_loss(y, over))
    assert negative_log_likelihood(MELANOMA, y, over) == pytest.approx(log_loss(y, over))


def test_cross_fitted_scaling_never_uses_the_held_out_fold() -> None:
    """Each fold is scaled by the temperature of the other folds: changing one fold's labels
    leaves that fold's scaled probabilities unchanged; one fold alone stays unscaled."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    p = softmax(3 * np.eye(3)[y] + rng.normal(0, 1.5, (300, 3)), axis=1)
    folds = np.arange(300) % 3
    scaled, overall = cross_fitted_scaling(THREE, y, p, folds)
    flipped = y.copy()
    flipped[folds == 0] = (flipped[folds == 0] + 1) % 3
    again, _ = cross_fitted_scaling(THREE, flipped, p, folds)
    np.testing.assert_allclose(scaled[folds == 0], again[folds == 0])
    assert not np.allclose(scaled[folds == 1], again[folds == 1])
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    assert overall.temperature > 0
    same, _ = cross_fitted_scaling(THREE, y, p)  # no folds: nothing to cross-fit on
    np.testing.assert_array_equal(same, p)
