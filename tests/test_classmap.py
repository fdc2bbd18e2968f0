"""The class mapping between tasks (`melalib.classmap`): the table covers every class of
every task and diagnosis word, and scoring keeps only the classes both sides define."""

from __future__ import annotations

import numpy as np
import pytest

from melalib.classmap import (
    CLASS_CONCEPTS,
    CONCEPTS,
    KNOWN_TASKS,
    class_mapping,
    concepts_of,
    diagnosis_concept,
)
from melalib.errors import ConfigError
from melalib.targets import DIAGNOSIS_MAP
from melalib.tasks import HAM7, ISIC2019_8, MELANOMA, MILK11, Task


def test_the_table_covers_every_class_of_every_task() -> None:
    for task in KNOWN_TASKS:
        table = concepts_of(task)
        assert set(table) == set(task.classes), task.name
        for cls, concepts in table.items():
            assert concepts and set(concepts) <= set(CONCEPTS), (task.name, cls)
    assert set(CLASS_CONCEPTS) == {t.name for t in KNOWN_TASKS}


def test_classes_of_one_task_never_overlap() -> None:
    for task in KNOWN_TASKS:
        seen: list[str] = [c for concepts in concepts_of(task).values() for c in concepts]
        assert len(seen) == len(set(seen)), task.name


def test_every_diagnosis_word_has_a_concept() -> None:
    for word in DIAGNOSIS_MAP:
        assert diagnosis_concept(word) in CONCEPTS
    assert diagnosis_concept("Solar Lentigo") == "BKL"
    with pytest.raises(ConfigError):
        diagnosis_concept("made-up disease")


def test_ham_model_on_milk_data_drops_milk_only_classes_and_counts_rows() -> None:
    m = class_mapping(HAM7, MILK11)
    assert m.task.classes == HAM7.classes and m.task.kind == "multiclass"
    assert m.dropped_model_classes == ()
    assert m.dropped_data_classes == ("BEN_OTH", "INF", "MAL_OTH", "SCCKA")
    y = np.array([MILK11.index_of(c) for c in ("MEL", "SCCKA", "SCCKA", "AKIEC", "NV")] + [-1])
    assert m.labels(y).tolist() == [HAM7.index_of("mel"), -1, -1, HAM7.index_of("akiec"),
                                    HAM7.index_of("nv"), -1]
    report = m.report(y)
    assert report["dropped_rows_per_class"]["SCCKA"] == 2
    assert report["unlabelled_rows"] == 1 and report["n_scored"] == 3
    assert "SCCKA (2 rows)" in m.summary(y)


def test_isic2019_model_on_ham_data_removes_scc_and_renormalises() -> None:
    m = class_mapping(ISIC2019_8, HAM7)
    assert m.dropped_model_classes == ("SCC",) and m.dropped_data_classes == ()
    p = np.full((1, 8), 0.1)
    p[0, ISIC2019_8.index_of("SCC")] = 0.3
    out = m.probs(p)
    assert out.shape == (1, 7) and out.sum() == pytest.approx(1.0)
    assert out[0, 0] == pytest.approx(0.1 / 0.7)
    assert m.labels([HAM7.index_of("akiec")]).tolist() == [m.task.classes.index("AK")]


def test_multiclass_model_on_binary_data_is_melanoma_vs_rest() -> None:
    m = class_mapping(HAM7, MELANOMA)
    assert m.task.kind == "binary" and m.task.classes == MELANOMA.classes
    p = np.zeros((2, 7))
    p[0, HAM7.index_of("mel")], p[0, HAM7.index_of("nv")] = 0.7, 0.3
    p[1, HAM7.index_of("bcc")] = 1.0
    assert m.probs(p).tolist() == pytest.approx([0.7, 0.0])
    assert m.labels([0, 1]).tolist() == [0, 1]
    assert m.melanoma_class == 1


def test_binary_model_on_multiclass_data_collapses_the_labels() -> None:
    m = class_mapping(MELANOMA, MILK11)
    assert m.task.kind == "binary"
    y = [MILK11.index_of(c) for c in ("MEL", "BCC", "INF")]
    assert m.labels(y).tolist() == [1, 0, 0]
    assert m.probs(np.array([[0.8], [0.1], [0.2]])).tolist() == pytest.approx([0.8, 0.1, 0.2])


def test_same_task_is_the_identity_even_without_a_table_entry() -> None:
    custom = Task("custom", "multiclass", ("a", "b", "c"), "balanced_accuracy")
    m = class_mapping(custom, custom)
    assert m.task == custom and m.labels([2, 0, -1]).tolist() == [2, 0, -1]
    with pytest.raises(ConfigError, match=r"no class mapping.*\['a', 'b', 'c'\]"):
        class_mapping(custom, HAM7)


def test_a_custom_table_maps_by_class_name() -> None:
    custom = Task("custom", "multiclass", ("BCC", "MEL", "nevus", "scc"), "balanced_accuracy")
    m = class_mapping(HAM7, custom)
    assert m.task.classes == ("bcc", "mel", "nv") and m.dropped_data_classes == ("scc",)
    assert m.labels([0, 1, 2, 3]).tolist() == [0, 1, 2, -1]
    assert m.dropped_model_classes == ("akiec", "bkl", "df", "vasc")
    two = class_mapping(HAM7, Task("c", "multiclass", ("MEL", "nevus"), "balanced_accuracy"))
    assert two.task.kind == "binary" and two.labels([0, 1]).tolist() == [1, 0]


def test_milk_model_scores_isic2019_labels_on_eight_classes() -> None:
    m = class_mapping(MILK11, ISIC2019_8)
    assert len(m.task.classes) == 8 and "SCCKA" in m.task.classes
    assert m.dropped_model_classes == ("BEN_OTH", "INF", "MAL_OTH")
    assert m.melanoma_class == m.task.classes.index("MEL")
