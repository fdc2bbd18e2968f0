"""Losses against hand-computed values; class weights; samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from melalib.config import TrainConfig
from melalib.errors import ConfigError
from melalib.losses import SigmoidLoss, SoftmaxLoss, build_loss, class_weights, pos_weights
from melalib.samplers import build_sampler
from melalib.tasks import Task

BINARY = Task("b", "binary", ("neg", "pos"), "roc_auc")
MULTI = Task("m", "multiclass", ("a", "b", "c"), "balanced_accuracy")
LABEL = Task("l", "multilabel", ("a", "b", "c"), "thresholded_macro_f1")


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------- weights
def test_class_weights_balanced_sqrt_and_absent() -> None:
    labels = np.array([0, 0, 0, 1])
    # balanced n/(K n_c) = [4/6, 4/2] -> mean 4/3 -> [0.5, 1.5]
    assert np.allclose(class_weights(labels, 2, "balanced"), [0.5, 1.5])
    raw = np.sqrt([4 / 6, 2.0])
    assert np.allclose(class_weights(labels, 2, "sqrt"), raw / raw.mean())
    assert np.allclose(class_weights(labels, 2, "none"), [1.0, 1.0])
    # class 2 absent: weight 1 before normalising: [2/3, 2/3, 1] / (7/9)
    assert np.allclose(class_weights(np.array([0, 0, 1, 1]), 3, "balanced"),
                       [6 / 7, 6 / 7, 9 / 7])
    onehot = np.eye(2)[labels]
    assert np.allclose(class_weights(onehot, 2, "balanced"), [0.5, 1.5])
    with pytest.raises(ConfigError, match="class_weighting"):
        class_weights(labels, 2, "inverse")
    with pytest.raises(ConfigError, match=r"0\.\.1"):
        class_weights(np.array([0, 2]), 2, "balanced")


def test_pos_weights_binary_and_multilabel() -> None:
    assert np.allclose(pos_weights(np.array([0, 0, 0, 1]), 2, "balanced", binary=True), [3.0])
    assert np.allclose(pos_weights(np.array([0, 0, 0, 1]), 2, "sqrt", binary=True),
                       [math.sqrt(3)])
    # multilabel from class indices: positives [1, 2, 1, 0] of n=4 -> [3, 1, 3, 1 (absent)]
    labels = np.array([0, 1, 1, 2])
    assert np.allclose(pos_weights(labels, 4, "balanced"), [3.0, 1.0, 3.0, 1.0])
    multi_hot = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 0]])
    assert np.allclose(pos_weights(multi_hot, 3, "balanced"), [3.0, 1 / 3, 3.0])
    assert np.allclose(pos_weights(multi_hot, 3, "none"), [1.0, 1.0, 1.0])


# ------------------------------------------------------------------- sigmoid losses
def test_bce_pos_weight_and_smoothing_by_hand() -> None:
    logits, y = [2.0, -1.0, 0.5], [1.0, 0.0, 1.0]
    pw, eps = 3.0, 0.1
    expected = 0.0
    for x, t in zip(logits, y, strict=True):
        ts = t * (1 - eps) + eps / 2
        expected += -(pw * ts * math.log(_sig(x)) + (1 - ts) * math.log(1 - _sig(x)))
    expected /= 3
    loss = SigmoidLoss(np.array([pw]), smoothing=eps)
    got = loss(torch.tensor(logits).reshape(3, 1), torch.tensor(y))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    smoothed = torch.tensor(y) * (1 - eps) + eps / 2
    torch_ref = F.binary_cross_entropy_with_logits(torch.tensor(logits), smoothed,
                                                   pos_weight=torch.tensor([pw]))
    assert got.item() == pytest.approx(torch_ref.item(), rel=1e-6)


def test_binary_focal_gamma2_by_hand() -> None:
    # logit 0, y = 1: p = 0.5 -> (1-p)^2 * log 2 = 0.25 * 0.6931
    one = SigmoidLoss(gamma=2.0)(torch.zeros(1, 1), torch.ones(1))
    assert one.item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    logits, y = [1.5, -0.5, 3.0, -2.0], [1.0, 1.0, 0.0, 0.0]
    pw = 2.0
    expected = 0.0
    for x, t in zip(logits, y, strict=True):
        p = _sig(x)
        expected += -(pw * t * (1 - p) ** 2 * math.log(p) + (1 - t) * p**2 * math.log(1 - p))
    expected /= 4
    got = SigmoidLoss(np.array([pw]), gamma=2.0)(torch.tensor(logits)[:, None], torch.tensor(y))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # gamma 0 is the weighted BCE
    g0 = SigmoidLoss(np.array([pw]), gamma=0.0)(torch.tensor(logits)[:, None], torch.tensor(y))
    ref = F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(y),
                                             pos_weight=torch.tensor([pw]))
    assert g0.item() == pytest.approx(ref.item(), rel=1e-6)


def test_multilabel_bce_per_class_pos_weight_by_hand() -> None:
    train_labels = np.array([0, 1, 1, 2])  # pos_weight [3, 1, 3]
    loss = build_loss(TrainConfig(loss="auto", class_weighting="balanced"), LABEL, train_labels)
    assert np.allclose(loss.pos_weight.numpy(), [3.0, 1.0, 3.0])
    logits = np.array([[0.3, -1.2, 2.0], [-0.7, 0.4, -0.1]])
    targets = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    pw = np.array([3.0, 1.0, 3.0])
    p = 1 / (1 + np.exp(-logits))
    expected = np.mean(-(pw * targets * np.log(p) + (1 - targets) * np.log(1 - p)))
    got = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets))
    assert got.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------- softmax losses
LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
TARGETS = np.array([0, 2, 1, 1])
WEIGHTS = np.array([0.5, 1.0, 1.5])


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_weighted_smoothed_ce_by_hand_and_torch() -> None:
    eps, k = 0.1, 3
    logp = _log_softmax(LOGITS)
    num = 0.0
    for i, y in enumerate(TARGETS):
        q = np.full(k, eps / k)
        q[y] += 1 - eps
        num += -(WEIGHTS * q * logp[i]).sum()
    expected = num / WEIGHTS[TARGETS].sum()
    loss = SoftmaxLoss(WEIGHTS, smoothing=eps)
    got = loss(torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(TARGETS))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    ref = F.cross_entropy(torch.tensor(LOGITS), torch.tensor(TARGETS),
                          weight=torch.tensor(WEIGHTS), label_smoothing=eps)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_multiclass_focal_gamma2_by_hand() -> None:
    logp = _log_softmax(LOGITS)
    p = np.exp(logp)
    rows = [-WEIGHTS[y] * (1 - p[i, y]) ** 2 * logp[i, y] for i, y in enumerate(TARGETS)]
    expected = sum(rows) / WEIGHTS[TARGETS].sum()
    loss = SoftmaxLoss(WEIGHTS, gamma=2.0)
    got = loss(torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(TARGETS))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # focal at gamma 0 (explicit path) equals torch's weighted, smoothed CE
    focal0 = SoftmaxLoss(WEIGHTS, gamma=1e-12, smoothing=0.2)
    ref = F.cross_entropy(torch.tensor(LOGITS), torch.tensor(TARGETS),
                          weight=torch.tensor(WEIGHTS), label_smoothing=0.2)
    got0 = focal0(torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(TARGETS))
    assert got0.item() == pytest.approx(ref.item(), rel=1e-5)


# --------------------------------------------------------------------- build_loss
def test_build_loss_dispatch_and_weights_from_training_labels() -> None:
    bce = build_loss(TrainConfig(class_weighting="sqrt", label_smoothing=0.05), BINARY,
                     np.array([0] * 9 + [1]))
    assert isinstance(bce, SigmoidLoss) and bce.gamma == 0 and bce.smoothing == 0.05
    assert bce.pos_weight.numpy() == pytest.approx([3.0])
    focal = build_loss(TrainConfig(loss="focal", focal_gamma=1.5), BINARY, np.array([0, 1]))
    assert isinstance(focal, SigmoidLoss) and focal.gamma == 1.5 and focal.pos_weight is None
    ce = build_loss(TrainConfig(class_weighting="balanced"), MULTI, np.array([0, 0, 0, 1, 2, 2]))
    assert isinstance(ce, SoftmaxLoss) and ce.gamma == 0
    raw = 6 / (3 * np.array([3, 1, 2]))
    assert np.allclose(ce.weight.numpy(), raw / raw.mean())
    mfocal = build_loss(TrainConfig(loss="focal"), MULTI, np.array([0, 1, 2]))
    assert isinstance(mfocal, SoftmaxLoss) and mfocal.gamma == 2.0 and mfocal.weight is None
    with pytest.raises(ConfigError, match="loss=ce needs a multiclass task"):
        build_loss(TrainConfig(loss="ce"), BINARY, np.array([0, 1]))
    with pytest.raises(ConfigError, match="loss=bce needs a binary or multilabel"):
        build_loss(TrainConfig(loss="bce"), MULTI, np.array([0, 1]))
    with pytest.raises(ConfigError, match="training labels"):
        build_loss(TrainConfig(class_weighting="balanced"), MULTI, np.array([0, -1]))


def test_losses_accept_half_precision_logits_and_backprop() -> None:
    logits = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    loss = SoftmaxLoss(WEIGHTS, gamma=2.0, smoothing=0.1)(logits, torch.tensor(TARGETS))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


# ------------------------------------------------------------------------ samplers
def _draw(sampler, rounds: int) -> np.ndarray:
    return np.concatenate([np.fromiter(iter(sampler), dtype=np.int64) for _ in range(rounds)])


def test_sampler_balances_classes() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    assert build_sampler("none", labels, seed=0) is None
    balanced = build_sampler("balanced", labels, seed=0)
    assert len(balanced) == 100
    drawn = labels[_draw(balanced, 60)]
    assert abs(drawn.mean() - 0.5) < 0.04
    sqrt = build_sampler("sqrt", labels, seed=0)
    expected = math.sqrt(10) / (math.sqrt(90) + math.sqrt(10))  # 0.25
    assert abs(labels[_draw(sqrt, 60)].mean() - expected) < 0.04
    again = build_sampler("balanced", labels, seed=0)
    assert np.array_equal(_draw(again, 2), _draw(build_sampler("balanced", labels, 0), 2))
    assert not np.array_equal(_draw(again, 1), _draw(build_sampler("balanced", labels, 1), 1))
    with pytest.raises(ConfigError, match="sampler"):
        build_sampler("oversample", labels, seed=0)
    with pytest.raises(ConfigError, match=">= 0"):
        build_sampler("balanced", np.array([0, -1]), seed=0)
