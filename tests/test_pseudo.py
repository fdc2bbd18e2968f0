"""Pseudo-labels: thresholds, the validation guard, the row-weighted loss, a second round."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from melalib.errors import LeakageError
from melalib.losses import SigmoidLoss, weighted_loss
from melalib.pseudo import (
    PSEUDO_COLUMN,
    check_validation,
    pseudo_labels,
    row_weights,
    with_pseudo_rows,
)
from melalib.table import LesionTable
from melalib.tasks import HAM7, MELANOMA


def test_pseudo_labels_take_confident_rows_only() -> None:
    pred = pd.DataFrame({"image_id": ["a", "b", "c", "d"],
                         "prob_melanoma": [0.97, 0.5, 0.03, 0.95]})
    assert pseudo_labels(pred, MELANOMA, 0.95).tolist() == [1, -1, 0, 1]
    probs = np.full((2, 7), 0.01)
    probs[0, 3], probs[1, 3] = 0.94, 0.5
    multi = pd.DataFrame(probs, columns=HAM7.prob_columns).assign(image_id=["x", "y"])
    assert pseudo_labels(multi, HAM7, 0.9).tolist() == [3, -1]


def _folded(n_train: int = 30, n_test: int = 10) -> pd.DataFrame:
    n = n_train + n_test
    split = ["train"] * n_train + ["test"] * n_test
    return pd.DataFrame({
        "image_id": [f"I{i}" for i in range(n)], "group_id": [f"P{i // 2}" for i in range(n)],
        "label": [i % 2 for i in range(n_train)] + [-1] * n_test, "split": split,
        "fold": [(i // 2) % 3 for i in range(n_train)] + [-1] * n_test,
        PSEUDO_COLUMN: [-1] * n_train + [1, 0, -1, 1, 0, -1, -1, 1, 0, 0]})


def test_no_pseudo_labelled_row_enters_a_validation_fold(tiny_cfg) -> None:
    from melalib.data.build import build_table
    from melalib.runtime import fold_data

    cfg = tiny_cfg()
    table, _ = build_table(cfg)
    df = table.df.copy()
    df[PSEUDO_COLUMN] = -1
    test = (df["split"] == "test").to_numpy()
    df.loc[test, PSEUDO_COLUMN] = np.arange(int(test.sum())) % 2
    table = LesionTable(df, table.task)
    pseudo = set(df.loc[test, "image_id"])
    for fold in range(cfg.data.n_folds):
        fd = fold_data(cfg, table, fold)
        assert not pseudo & set(fd.val_df["image_id"])
        assert pseudo <= set(fd.train_df["image_id"])
        assert fd.train_df["pseudo"].sum() == len(pseudo)
        assert len(fd.meta_train) == len(fd.train_df)
    # the guard itself: a validation frame holding a pseudo-labelled row is refused
    leaky = pd.concat([fd.val_df, df[test].head(1)], ignore_index=True)
    with pytest.raises(LeakageError, match="pseudo-labelled"):
        check_validation(leaky, df)
    smuggled = fd.val_df.copy()
    smuggled.loc[0, "image_id"] = next(iter(pseudo))
    with pytest.raises(LeakageError):
        check_validation(smuggled, df)


def test_with_pseudo_rows_and_weights() -> None:
    df = _folded()
    train, _ = LesionTable(df, MELANOMA).fold(0)
    out = with_pseudo_rows(train, df, MELANOMA)
    assert len(out) == len(train) + 7 and out["pseudo"].sum() == 7
    assert out.loc[out["pseudo"], "label"].tolist() == [1, 0, 1, 0, 1, 0, 0]
    w = row_weights(out, 0.25)
    assert w is not None and set(w[out["pseudo"].to_numpy()]) == {0.25}
    assert row_weights(train, 0.25) is None


def test_weighted_loss_is_the_weighted_row_mean() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(10, 1), (torch.rand(10) > 0.5).float()
    w = torch.tensor([1.0] * 6 + [0.3] * 4)
    rows = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, 0], targets, reduction="none")
    expected = (w * rows).sum() / w.sum()
    got = weighted_loss(SigmoidLoss(), logits, targets, w)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    ones = weighted_loss(SigmoidLoss(), logits, targets, torch.ones(10))
    assert float(ones) == pytest.approx(float(SigmoidLoss()(logits, targets)), rel=1e-6)


def test_second_round_trains_on_pseudo_labels(tiny_cfg) -> None:
    from melalib.engine import train
    from melalib.runs import RunDir

    first = tiny_cfg(name="round1")
    train(first)
    p = RunDir.read(first.run_dir).test_mean()["prob_melanoma"].to_numpy()
    margin = float(np.sort(np.abs(p - 0.5))[len(p) // 2])  # about half the test rows
    assert margin > 0
    second = tiny_cfg(name="round2", pseudo_run=str(first.run_dir),
                      pseudo_threshold=0.5 + margin, pseudo_weight=0.5)
    summary = train(second)
    table = RunDir.read(second.run_dir).table()
    assert (table.df[PSEUDO_COLUMN] >= 0).sum() > 0
    assert (table.df.loc[table.df["split"] == "train", PSEUDO_COLUMN] == -1).all()
    oof = RunDir.read(second.run_dir).oof()
    assert set(oof["image_id"]) == set(table.df.loc[table.df["split"] == "train", "image_id"])
    assert "oof" in summary
