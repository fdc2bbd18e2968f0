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
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, check_field
from .errors import ConfigError
from .registry import Registry
from .tasks import Task

log = logging.getLogger(__name__)
#: the ``class_weighting`` choices: name -> raw weights (n / (K n_c), n_neg / n_pos) -> the
#: weights used; ``none``: no weights
CLASS_WEIGHTING: Registry[Callable[[np.ndarray], np.ndarray] | None] = Registry(
    "class_weighting", {"none": None, "balanced": lambda w: w, "sqrt": np.sqrt})


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
    shape = CLASS_WEIGHTING[mode]
    if shape is None:
        return np.ones(k)
    counts = class_counts(labels, k).astype(float)
    n = counts.sum()
    absent = counts == 0
    if absent.any():
        log.warning("classes %s are absent from the training labels: weight 1 before "
                    "normalising", np.flatnonzero(absent).tolist())
    w = shape(np.where(absent, 1.0, n / (k * np.maximum(counts, 1))))
    return w / w.mean()


def pos_weights(labels: np.ndarray, k: int, mode: str, binary: bool = False) -> np.ndarray:
    """Per-output positive weight n_neg / n_pos for sigmoid losses (``sqrt``: its root).

    ``binary``: one weight for class 1 of integer 0/1 labels. Outputs without positives or
    negatives in training get 1 (and a logged note).
    """
    shape = CLASS_WEIGHTING[mode]
    labels = np.asarray(labels)
    if binary:
        counts = class_counts(labels, 2)
        pos, n = counts[1:2].astype(float), float(counts.sum())
    else:
        pos, n = class_counts(labels, k).astype(float), float(len(labels))
    if shape is None:
        return np.ones_like(pos)
    neg = n - pos
    degenerate = (pos == 0) | (neg == 0)
    if degenerate.any():
        log.warning("outputs %s have no positive or no negative training example: "
                    "pos_weight 1", np.flatnonzero(degenerate).tolist())
    return shape(np.where(degenerate, 1.0, neg / np.maximum(pos, 1)))


def _buffer(values: np.ndarray | None) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(np.asarray(values), dtype=torch.float32)


class _FocalBase(nn.Module):
    """Shared state of the two losses: class weights (a buffer), focusing γ, smoothing ε."""

    weight_name = "weight"

    def __init__(self, weights: np.ndarray | None = None, gamma: float = 0.0,
                 smoothing: float = 0.0) -> None:
        super().__init__()
        check_field("label_smoothing", smoothing)
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
    """The configured loss for ``task`` (`LOSSES`), weighted from the training fold's labels
    (``class_weighting``: `CLASS_WEIGHTING`); ``label_smoothing``: ε."""
    return LOSSES[train_cfg.loss](train_cfg, task, np.asarray(train_labels))


def _weighted(train_cfg: TrainConfig, task: Task, labels: np.ndarray, gamma: float
              ) -> nn.Module:
    """The task's softmax (multiclass) or sigmoid loss with focusing ``gamma``."""
    mode, eps = train_cfg.class_weighting, train_cfg.label_smoothing
    none = CLASS_WEIGHTING[mode] is None
    if task.kind == "multiclass":
        weight = None if none else class_weights(labels, task.n_classes, mode)
        return SoftmaxLoss(weight, gamma=gamma, smoothing=eps)
    pw = None if none else pos_weights(labels, task.n_classes, mode, binary=task.kind == "binary")
    return SigmoidLoss(pw, gamma=gamma, smoothing=eps)


#: the ``loss`` choices: name -> ``(train_cfg, task, training labels) -> loss module``
LOSSES: Registry[Callable[[TrainConfig, Task, np.ndarray], nn.Module]] = Registry("loss")


@LOSSES.register("auto")
def auto_loss(train_cfg: TrainConfig, task: Task, labels: np.ndarray) -> nn.Module:
    """``ce`` for a multiclass task, else ``bce``."""
    return LOSSES["ce" if task.kind == "multiclass" else "bce"](train_cfg, task, labels)


@LOSSES.register("bce")
def bce_loss(train_cfg: TrainConfig, task: Task, labels: np.ndarray) -> nn.Module:
    """Sigmoid cross-entropy: binary and multilabel tasks."""
    if task.kind == "multiclass":
        raise ConfigError(f"loss=bce needs a binary or multilabel task; task {task.name!r} is "
                          "multiclass (use ce or focal)")
    return _weighted(train_cfg, task, labels, 0.0)


@LOSSES.register("focal")
def focal_loss(train_cfg: TrainConfig, task: Task, labels: np.ndarray) -> nn.Module:
    """The task's loss with focusing γ = ``focal_gamma`` (every task kind)."""
    return _weighted(train_cfg, task, labels, train_cfg.focal_gamma)


@LOSSES.register("ce")
def ce_loss(train_cfg: TrainConfig, task: Task, labels: np.ndarray) -> nn.Module:
    """Softmax cross-entropy: multiclass tasks."""
    if task.kind != "multiclass":
        raise ConfigError(f"loss=ce needs a multiclass task; task {task.name!r} is "
                          f"{task.kind} (use bce or focal)")
    return _weighted(train_cfg, task, labels, 0.0)
