"""`melalib.baselines`: OOF probabilities of a sklearn model on the metadata features, per
task kind, and the grouped vs image-level cross-validation check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melalib.baselines import classifier, cv_leakage_check, group_overlap, oof_predictions
from melalib.errors import ConfigError
from melalib.folds import assign_folds
from melalib.table import LesionTable
from melalib.tasks import HAM7, MELANOMA, MILK11, Task

SITES = ["head_neck", "torso", "upper_extremity"]


def _table(task: Task, n: int = 90) -> LesionTable:
    """Two images per patient; the class (cycling through the first three) is given away by
    the site, so a linear model separates it perfectly."""
    cls = [(i // 2) % 3 if task.kind != "binary" else (i // 2) % 2 for i in range(n)]
    rows = [{"image_id": f"i{i}", "image_path": "", "group_id": f"g{i // 2}",
             "label": c, "label_name": task.classes[c], "age": 40.0 + i % 5, "sex": "female",
             "site": SITES[c], "source": "custom", "split": "train"}
            for i, c in enumerate(cls)]
    return assign_folds(LesionTable(pd.DataFrame(rows), task), n_folds=3, seed=0)


@pytest.mark.parametrize("task", [MELANOMA, HAM7, MILK11], ids=lambda t: t.kind)
def test_oof_predictions_put_the_mass_on_the_true_class(task: Task) -> None:
    table = _table(task)
    oof = oof_predictions(table, "default", classifier("logistic"))
    assert list(oof.columns) == ["image_id", "group_id", "fold", "label", *task.prob_columns]
    assert sorted(oof["image_id"]) == sorted(table.df["image_id"])
    by_id = table.df.set_index("image_id")["fold"]
    assert (oof["fold"].to_numpy() == by_id.reindex(oof["image_id"]).to_numpy()).all()
    assert oof["fold"].is_monotonic_increasing  # folds in order
    probs = oof[task.prob_columns].to_numpy()
    y = oof["label"].to_numpy()
    if task.kind == "binary":
        assert ((probs[:, 0] > 0.5) == (y == 1)).all()
        return
    assert (probs.argmax(axis=1) == y).all()
    assert (probs[:, 3:] == 0).all()  # classes never seen in training get no mass
    if task.kind == "multiclass":
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    else:  # one binary model per class: the columns need not sum to 1
        assert not np.allclose(probs.sum(axis=1), 1.0)


def test_group_overlap_and_cv_leakage_check() -> None:
    table = _table(MELANOMA)
    assert group_overlap(table) == 0.0
    leaky = assign_folds(LesionTable(table.df.drop(columns="fold").assign(
        group_id=table.df["image_id"]), MELANOMA), n_folds=3, seed=0)
    leaky.df["group_id"] = table.df["group_id"].to_numpy()
    assert group_overlap(leaky) > 0.5
    check = cv_leakage_check(table, n_folds=3, seed=0, model="logistic")
    assert check.index.tolist() == ["grouped (group_id)", "image-level (leaky)"]
    assert check.loc["grouped (group_id)", "val images whose group is in training"] == 0.0
    assert check.loc["image-level (leaky)", "val images whose group is in training"] > 0.5
    assert check["roc_auc"].between(0, 1).all()
    with pytest.raises(ConfigError, match="model must be one of"):
        classifier("svm")


def test_oof_predictions_use_extra_per_row_features() -> None:
    """``extra`` rows follow ``table.df``: with the metadata features empty (``none``), a
    column that encodes the label is all the model sees, and it separates the classes."""
    table = _table(HAM7)
    extra = table.df["label"].to_numpy(dtype=np.float64)[:, None]
    oof = oof_predictions(table, "none", classifier("logistic"), extra=extra)
    probs = oof[HAM7.prob_columns].to_numpy()
    assert (probs.argmax(axis=1) == oof["label"].to_numpy()).all()
    rows = np.random.default_rng(0).permutation(len(extra))  # the column no longer matches
    shuffled = oof_predictions(table, "none", classifier("logistic"), extra=extra[rows])
    assert (shuffled[HAM7.prob_columns].to_numpy().argmax(axis=1)
            != shuffled["label"].to_numpy()).any()
