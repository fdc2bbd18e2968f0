"""A task is data: kind (binary / multiclass / multilabel), classes and primary metric.

The training loop, losses, metrics and submission writers read a `Task`; none of them
forks on the dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from .errors import ConfigError

TaskKind = Literal["binary", "multiclass", "multilabel"]
KINDS = ("binary", "multiclass", "multilabel")
METRICS = ("roc_auc", "pr_auc", "balanced_accuracy", "macro_f1", "thresholded_macro_f1", "accuracy")


@dataclass(frozen=True)
class Task:
    """What is predicted and how it is scored.

    ``classes`` lists class names in label-index order. For a binary task it has two
    names, negative first; the model emits one logit, the probability of ``classes[1]``.
    A multilabel task scores each class with its own sigmoid (MILK10k: thresholded at 0.5).
    """

    name: str
    kind: TaskKind
    classes: tuple[str, ...]
    primary_metric: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.classes) < 2:
            raise ConfigError(f"task {self.name!r} needs at least 2 classes, got {self.classes}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"task {self.name!r} repeats a class name: {self.classes}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise ConfigError(f"binary task {self.name!r} needs exactly 2 classes")
        if self.primary_metric not in METRICS:
            raise ConfigError(f"primary_metric must be one of {METRICS}, got {self.primary_metric!r}")
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_outputs(self) -> int:
        """Width of the model's output layer (1 logit for binary)."""
        return 1 if self.kind == "binary" else self.n_classes

    @property
    def positive_class(self) -> str | None:
        return self.classes[1] if self.kind == "binary" else None

    @property
    def prob_columns(self) -> list[str]:
        """Columns of prediction files: ``prob_<class>`` per output."""
        if self.kind == "binary":
            return [f"prob_{self.classes[1]}"]
        return [f"prob_{c}" for c in self.classes]

    def index_of(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise ConfigError(f"{name!r} is not a class of task {self.name!r}: {self.classes}") from None

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """Training targets from integer labels: float (N,) binary, int (N,) multiclass,
        float one-hot (N, K) multilabel; an unknown label (< 0) stays -1 (a zero row when
        multilabel)."""
        labels = np.asarray(labels, dtype=np.int64)
        if self.kind == "binary":
            return labels.astype(np.float32)
        if self.kind == "multiclass":
            return labels
        onehot = np.zeros((len(labels), self.n_classes), dtype=np.float32)
        known = np.flatnonzero(labels >= 0)
        onehot[known, labels[known]] = 1.0
        return onehot

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(name=d["name"], kind=d["kind"], classes=tuple(d["classes"]),
                   primary_metric=d["primary_metric"])


#: class names that mean melanoma (case-insensitive): the one melanoma-class lookup
MELANOMA_NAMES = ("melanoma", "mel")


def melanoma_class(task: Task) -> int | None:
    """Index of ``task``'s class named melanoma / mel (any case), None when it has none
    (an ISIC 2020 submission's column, error tables, melanoma-vs-rest curves)."""
    return next((i for i, name in enumerate(task.classes) if name.lower() in MELANOMA_NAMES),
                None)


MELANOMA = Task("melanoma", "binary", ("benign", "melanoma"), "roc_auc")
HAM7 = Task("ham10000", "multiclass", ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
            "balanced_accuracy")
ISIC2019_8 = Task("isic2019", "multiclass", ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"),
                  "balanced_accuracy")
ISIC2024 = Task("isic2024", "binary", ("benign", "malignant"), "roc_auc")
MILK11 = Task("milk10k", "multilabel",
              ("AKIEC", "BCC", "BEN_OTH", "BKL", "DF", "INF", "MAL_OTH", "MEL", "NV", "SCCKA", "VASC"),
              "thresholded_macro_f1")
