"""Losses for binary, multiclass and multilabel tasks, with class weights from training labels.

Every loss is called as ``loss(logits, targets)`` with logits (N, n_outputs) and the
dataset's targets (binary: float (N,), multiclass: long (N,), multilabel: float (N, K))
and computes in float32 (safe under autocast).

Weights always come from the labels of the training fold handed to `build_loss`:
- sigmoid losses (binary, multilabel): ``pos_weight`` = n_neg / n_pos per output
  (``sqrt``: its square root); a class with no positive (or no negative) example gets 1.
- softmax losses (multiclass): `class_weights` = n / (K n_c) (``sqrt``: its square root),
  normalised to mean 1; a class absent from training gets 1 before normalising.
Focal losses use the same weights, so ``focal_gamma=0`` equals the plain weighted loss.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .tasks import Task

if TYPE_CHECKING:  # type only: config reads this module's LOSSES and MODES
    from .config import TrainConfig

log = logging.getLogger(__name__)
LOSSES = ("auto", "bce", "focal", "ce")  # auto: bce for binary / multilabel, ce for multiclass
MODES = ("none", "balanced", "sqrt")  # class weighting


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"class_weighting must be one of {MODES}, got {mode!r}")


def class_counts(labels: np.ndarray, k: int) -> np.ndarray:
    """Examples per class from integer labels (N,) or one-hot / multi-hot (N, K)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape[1] != k:
            raise ConfigError(f"label matrix has {labels.shape[1]} columns, task has {k} classes")
        return (labels > 0.5).sum(axis=0).astype(np.int64)
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ConfigError(f"training labels must lie in 0..{k - 1} (unlabelled rows excluded), "
                          f"got range {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=k)


def class_weights(labels: np.ndarray, k: int, mode: str) -> np.ndarray:
    """Per-class weights, mean 1: ``balanced`` n / (K n_c), ``sqrt`` its root, ``none`` ones."""
    _check_mode(mode)
    if mode == "none":
        return np.ones(k)
    counts = class_counts(labels, k).astype(float)
    n = counts.sum()
    absent = counts == 0
    if absent.any():
        log.warning("classes %s are absent from the training labels: weight 1 before "
                    "normalising", np.flatnonzero(absent).tolist())
    w = np.where(absent, 1.0, n / (k * np.maximum(counts, 1)))
    if mode == "sqrt":
        w = np.sqrt(w)
    return w / w.mean()


def pos_weights(labels: np.ndarray, k: int, mode: str, binary: bool = False) -> np.ndarray:
    """Per-output positive weight n_neg / n_pos for sigmoid losses (``sqrt``: its root).

    ``binary``: one weight for class 1 of integer 0/1 labels. Outputs without positives or
    negatives in training get 1 (and a logged note).
    """
    _check_mode(mode)
    labels = np.asarray(labels)
    if binary:
        counts = class_counts(labels, 2)
        pos, n = counts[1:2].astype(float), float(counts.sum())
    else:
        pos, n = class_counts(labels, k).astype(float), float(len(labels))
    if mode == "none":
        return np.ones_like(pos)
    neg = n - pos
    degenerate = (pos == 0) | (neg == 0)
    if degenerate.any():
        log.warning("outputs %s have no positive or no negative training example: "
                    "pos_weight 1", np.flatnonzero(degenerate).tolist())
    w = np.where(degenerate, 1.0, neg / np.maximum(pos, 1))
    return np.sqrt(w) if mode == "sqrt" else w


def _buffer(values: np.ndarray | None) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(np.asarray(values), dtype=torch.float32)


class _FocalBase(nn.Module):
    """Shared state of the two losses: class weights (a buffer), focusing γ, smoothing ε."""

    weight_name = "weight"

    def __init__(self, weights: np.ndarray | None = None, gamma: float = 0.0,
                 smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0 <= smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {smoothing}")
        self.gamma = float(gamma)
        self.smoothing = float(smoothing)
        self.register_buffer(self.weight_name, _buffer(weights))


class SigmoidLoss(_FocalBase):
    """BCE-with-logits (``gamma=0``) or sigmoid focal loss, per output, averaged.

    element loss = -[w_pos y (1-p)^γ log p + (1-y) p^γ log(1-p)], p = σ(logit),
    with label smoothing y <- y (1-ε) + ε/2.
    """

    weight_name = "pos_weight"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float().reshape(logits.shape[0], -1)
        logits = logits.reshape(targets.shape)
        targets = targets * (1 - self.smoothing) + self.smoothing / 2
        w_pos = 1.0 if self.pos_weight is None else self.pos_weight.to(logits.device)
        log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
        if self.gamma == 0:
            loss = -(w_pos * targets * log_p + (1 - targets) * log_q)
        else:
            p = torch.sigmoid(logits)
            loss = -(w_pos * targets * (1 - p).pow(self.gamma) * log_p
                     + (1 - targets) * p.pow(self.gamma) * log_q)
        return loss.mean()


class SoftmaxLoss(_FocalBase):
    """Cross-entropy (``gamma=0``, torch's `F.cross_entropy`) or softmax focal loss.

    Focal: -Σ_c w_c q_c (1-p_c)^γ log p_c summed over the batch and divided by Σ_i w_{y_i},
    with q = one-hot (1-ε) + ε/K, which equals torch's weighted, smoothed CE at γ=0.
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        targets = targets.long().reshape(-1)
        weight = None if self.weight is None else self.weight.to(logits.device)
        if self.gamma == 0:
            return F.cross_entropy(logits, targets, weight=weight,
                                   label_smoothing=self.smoothing)
        k = logits.shape[1]
        log_p = F.log_softmax(logits, dim=1)
        q = F.one_hot(targets, k).float() * (1 - self.smoothing) + self.smoothing / k
        w = torch.ones(k, device=logits.device) if weight is None else weight
        loss = -(w * q * (1 - log_p.exp()).pow(self.gamma) * log_p).sum()
        return loss / w[targets].sum()


def weighted_loss(loss_fn: nn.Module, logits: torch.Tensor, targets: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` with per-row weights of few distinct values (real rows 1, pseudo-labelled
    rows ``pseudo_weight``): sum over weight groups of w * n_w * mean loss of the group,
    divided by sum of w * n_w (for an unweighted loss: the weighted mean of row losses)."""
    total = logits.new_zeros(())
    norm = logits.new_zeros(())
    for w in torch.unique(weights):
        rows = weights == w
        n = rows.sum().to(logits.dtype)
        total = total + w * n * loss_fn(logits[rows], targets[rows])
        norm = norm + w * n
    return total / norm


def build_loss(train_cfg: TrainConfig, task: Task, train_labels: np.ndarray) -> nn.Module:
    """The configured loss for ``task``, weighted from the training fold's labels.

    ``loss``: ``auto`` (bce for binary / multilabel, ce for multiclass), ``bce``, ``ce``
    or ``focal`` (γ = ``focal_gamma``); ``class_weighting``: none | balanced | sqrt;
    ``label_smoothing``: ε.
    """
    kind, name = task.kind, train_cfg.loss
    mode, eps = train_cfg.class_weighting, train_cfg.label_smoothing
    _check_mode(mode)
    if name == "auto":
        name = "ce" if kind == "multiclass" else "bce"
    if name not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
    if name == "ce" and kind != "multiclass":
        raise ConfigError(f"loss=ce needs a multiclass task; task {task.name!r} is {kind} "
                          "(use bce or focal)")
    if name == "bce" and kind == "multiclass":
        raise ConfigError(f"loss=bce needs a binary or multilabel task; task {task.name!r} is "
                          "multiclass (use ce or focal)")
    gamma = train_cfg.focal_gamma if name == "focal" else 0.0
    if gamma < 0:
        raise ConfigError(f"focal_gamma must be >= 0, got {gamma}")
    labels = np.asarray(train_labels)
    if kind == "multiclass":
        weight = None if mode == "none" else class_weights(labels, task.n_classes, mode)
        return SoftmaxLoss(weight, gamma=gamma, smoothing=eps)
    pw = None
    if mode != "none":
        pw = pos_weights(labels, task.n_classes, mode, binary=kind == "binary")
    return SigmoidLoss(pw, gamma=gamma, smoothing=eps)
