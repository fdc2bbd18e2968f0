"""Class mapping between tasks, as data: which classes of a model's task and a labelled
table's task mean the same lesions, so a model trained on one dataset is scored on another.

Every class of every known task maps to one or more *concepts* (`CONCEPTS`, the shared
diagnosis vocabulary of `melalib.targets` plus MILK10k's three extra classes). Two tasks
meet on the partition their classes induce together: concepts that share a class on either
side form one group (binary melanoma: {MEL} and everything else). A group with a class on
both sides is scored; a group with classes on one side only is dropped: a model class by
removing its probability (the others are renormalised), a data class by dropping its rows.
`class_mapping(model_task, data_task)` says what it kept and dropped.

Known approximations: HAM10000's ``akiec`` and MILK10k's ``AKIEC`` (actinic keratosis and
intraepithelial carcinoma / Bowen's disease) are treated as ISIC 2019's ``AK``; MILK10k's
``SCCKA`` (squamous cell carcinoma and keratoacanthoma) as ``SCC``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError
from .predictions import class_probs
from .targets import DIAG9, DIAGNOSIS_CLASSES, DIAGNOSIS_MAP
from .tasks import HAM7, ISIC2019_8, MELANOMA, MILK11, Task

#: The concepts every class maps onto: the shared diagnosis classes and MILK10k's extras.
CONCEPTS = (*DIAGNOSIS_CLASSES, "INF", "BEN_OTH", "MAL_OTH")
_NOT_MEL = tuple(c for c in CONCEPTS if c != "MEL")

#: task name -> class -> the concepts that class covers (the mapping table).
CLASS_CONCEPTS: dict[str, dict[str, tuple[str, ...]]] = {
    MELANOMA.name: {"benign": _NOT_MEL, "melanoma": ("MEL",)},
    HAM7.name: {"akiec": ("AK",), "bcc": ("BCC",), "bkl": ("BKL",), "df": ("DF",),
                "mel": ("MEL",), "nv": ("NV",), "vasc": ("VASC",)},
    ISIC2019_8.name: {c: (c,) for c in ISIC2019_8.classes},
    MILK11.name: {"AKIEC": ("AK",), "BCC": ("BCC",), "BEN_OTH": ("BEN_OTH",), "BKL": ("BKL",),
                  "DF": ("DF",), "INF": ("INF",), "MAL_OTH": ("MAL_OTH",), "MEL": ("MEL",),
                  "NV": ("NV",), "SCCKA": ("SCC",), "VASC": ("VASC",)},
    DIAG9.name: {c: (c,) for c in DIAGNOSIS_CLASSES},
}
#: The tasks the table covers (a test checks it against every class of each).
KNOWN_TASKS = (MELANOMA, HAM7, ISIC2019_8, MILK11, DIAG9)


def diagnosis_concept(word: str) -> str:
    """The concept of a diagnosis word of the public tables (ISIC 2020 ``diagnosis``,
    `targets.DIAGNOSIS_MAP`); ConfigError for a word outside the vocabulary."""
    key = str(word).strip().lower()
    if key not in DIAGNOSIS_MAP:
        raise ConfigError(f"diagnosis {word!r} is not in the shared vocabulary")
    return DIAGNOSIS_MAP[key]


@dataclass(frozen=True)
class ClassMapping:
    """How a model's task is scored on a data task.

    ``groups``: per scored class, (model classes, data classes); ``task``: the task scored
    (binary melanoma when the groups are {MEL} and the rest, else multiclass);
    ``dropped_model_classes`` / ``dropped_data_classes``: classes without a counterpart.
    """

    model_task: Task
    data_task: Task
    groups: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    task: Task
    dropped_model_classes: tuple[str, ...] = ()
    dropped_data_classes: tuple[str, ...] = ()
    _data_index: dict[int, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def melanoma_class(self) -> int | None:
        """Index of the scored class that is melanoma alone (None when there is none)."""
        model = CLASS_CONCEPTS.get(self.model_task.name, {})
        for g, (m, _) in enumerate(self.groups):
            if [model.get(c, ()) for c in m] == [("MEL",)] or m in (("mel",), ("MEL",),
                                                                   ("melanoma",)):
                return g
        return None

    def labels(self, data_labels: Any) -> np.ndarray:
        """The scored class of each data label (-1: unlabelled or a dropped class)."""
        y = np.asarray(data_labels, dtype=np.int64).reshape(-1)
        lookup = np.full(self.data_task.n_classes + 1, -1, dtype=np.int64)
        for j, g in self._data_index.items():
            lookup[j] = g
        return lookup[np.where(y < 0, self.data_task.n_classes, y)]

    def probs(self, model_probs: Any) -> np.ndarray:
        """The model's probabilities of the scored classes: (N,) positive-class probability
        when the scored task is binary, else (N, K); dropped model classes removed and the
        rest renormalised (multilabel sigmoids are normalised the same way)."""
        p = class_probs(self.model_task, np.asarray(model_probs, dtype=np.float64))
        index = {c: j for j, c in enumerate(self.model_task.classes)}
        out = np.column_stack([p[:, [index[c] for c in model].copy()].sum(axis=1)
                               for model, _ in self.groups])
        total = out.sum(axis=1, keepdims=True)
        out = np.where(total > 0, out / np.where(total > 0, total, 1.0), 1.0 / out.shape[1])
        return out[:, 1] if self.task.kind == "binary" else out

    def report(self, data_labels: Any) -> dict[str, Any]:
        """What was scored and dropped: the scored classes, the dropped model / data
        classes and the rows dropped per data class (plus unlabelled rows)."""
        y = np.asarray(data_labels, dtype=np.int64).reshape(-1)
        dropped_rows = {c: int(np.sum(y == self.data_task.index_of(c)))
                        for c in self.dropped_data_classes}
        return {"model_task": self.model_task.name, "data_task": self.data_task.name,
                "scored_task": self.task.to_dict(),
                "scored_classes": {name: {"model": list(m), "data": list(d)} for name, (m, d)
                                   in zip(self.task.classes, self.groups, strict=True)},
                "dropped_model_classes": list(self.dropped_model_classes),
                "dropped_data_classes": list(self.dropped_data_classes),
                "dropped_rows_per_class": dropped_rows, "unlabelled_rows": int(np.sum(y < 0)),
                "n_rows": len(y), "n_scored": int(np.sum(self.labels(y) >= 0))}

    def summary(self, data_labels: Any) -> str:
        """One line: the classes scored and what was dropped, with row counts."""
        r = self.report(data_labels)
        rows = ", ".join(f"{c} ({n} rows)" for c, n in r["dropped_rows_per_class"].items())
        parts = [f"{r['n_scored']} of {r['n_rows']} rows have one of the "
                 f"{len(self.task.classes)} classes both tasks define {list(self.task.classes)}"]
        if self.dropped_model_classes:
            parts.append(f"model classes without a counterpart (probability removed): "
                         f"{list(self.dropped_model_classes)}")
        if rows:
            parts.append(f"data classes the model does not know (rows dropped): {rows}")
        if r["unlabelled_rows"]:
            parts.append(f"{r['unlabelled_rows']} unlabelled rows dropped")
        return "; ".join(parts)


def _name_concepts() -> dict[str, tuple[str, ...]]:
    """Lower-cased class names and diagnosis words -> concepts (for a custom table)."""
    names = {word: (concept,) for word, concept in DIAGNOSIS_MAP.items()}
    for table in CLASS_CONCEPTS.values():
        names.update({c.lower(): concepts for c, concepts in table.items()})
    return names


#: Every class name of `CLASS_CONCEPTS` and diagnosis word, lower-cased -> its concepts.
NAME_CONCEPTS = _name_concepts()


def concepts_of(task: Task) -> dict[str, tuple[str, ...]]:
    """Class -> concepts of ``task``: its `CLASS_CONCEPTS` entry, else (a custom CSV's task)
    each class by its name (`NAME_CONCEPTS`); ConfigError naming the unknown classes."""
    table = CLASS_CONCEPTS.get(task.name)
    if table is not None and set(table) == set(task.classes):
        return table
    unknown = [c for c in task.classes if c.strip().lower() not in NAME_CONCEPTS]
    if unknown:
        raise ConfigError(f"no class mapping for task {task.name!r}: classes {unknown} are "
                          f"neither classes of {sorted(CLASS_CONCEPTS)} nor diagnosis words "
                          "(melalib.classmap.CLASS_CONCEPTS / NAME_CONCEPTS)")
    return {c: NAME_CONCEPTS[c.strip().lower()] for c in task.classes}


def _concept_groups(*tables: dict[str, tuple[str, ...]]) -> list[set[str]]:
    """Connected components of the concepts, linked by every class of every table."""
    groups: list[set[str]] = []
    for table in tables:
        for concepts in table.values():
            merged = set(concepts)
            for g in [g for g in groups if g & merged]:
                merged |= g
                groups.remove(g)
            groups.append(merged)
    return groups


def class_mapping(model_task: Task, data_task: Task) -> ClassMapping:
    """How ``model_task``'s predictions are scored on ``data_task``'s labels (identity for
    the same task; otherwise through `CLASS_CONCEPTS`)."""
    if model_task == data_task:
        groups = tuple(((c,), (c,)) for c in model_task.classes)
        return ClassMapping(model_task, data_task, groups, model_task,
                            _data_index={j: j for j in range(model_task.n_classes)})
    model, data = concepts_of(model_task), concepts_of(data_task)
    kept, dropped_m, dropped_d = [], [], []
    for g in _concept_groups(model, data):
        m = tuple(c for c in model_task.classes if set(model[c]) <= g)
        d = tuple(c for c in data_task.classes if set(data[c]) <= g)
        if m and d:
            kept.append((m, d))
        else:
            dropped_m += m
            dropped_d += d
    if len(kept) < 2:
        raise ConfigError(f"tasks {model_task.name!r} and {data_task.name!r} share fewer than "
                          "2 classes: nothing to score")
    kept.sort(key=lambda md: model_task.classes.index(md[0][0]))
    task = _scored_task(model_task, data_task, kept, model)
    if task.kind == "binary" and model[kept[0][0][0]] == ("MEL",):
        kept.reverse()  # negative first: the melanoma group is the positive class
    index = {data_task.index_of(c): g for g, (_, d) in enumerate(kept) for c in d}
    return ClassMapping(model_task, data_task, tuple(kept), task,
                        tuple(c for c in model_task.classes if c in dropped_m),
                        tuple(c for c in data_task.classes if c in dropped_d), index)


def _scored_task(model_task: Task, data_task: Task,
                 kept: list[tuple[tuple[str, ...], tuple[str, ...]]],
                 model: dict[str, tuple[str, ...]]) -> Task:
    """Binary melanoma when the shared groups are {MEL} and the rest, else multiclass named
    by the model's classes (``a+b`` for a group of several)."""
    name = f"{model_task.name}_on_{data_task.name}"
    mel = [i for i, (m, _) in enumerate(kept) if any("MEL" in model[c] for c in m)]
    if len(kept) == 2 and mel and all(model[c] == ("MEL",) for c in kept[mel[0]][0]):
        return Task(name, "binary", MELANOMA.classes, "roc_auc")
    return Task(name, "multiclass", tuple("+".join(m) for m, _ in kept), "balanced_accuracy")
