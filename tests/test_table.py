"""The canonical table: validation errors name file, row and column; vocabularies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from melalib.errors import DataError, ImageError, LeakageError
from melalib.runtime import probs_from_logits
from melalib.table import SITE_MAP, SITES, LesionTable, normalize_ages, normalize_values
from melalib.tasks import HAM7, MELANOMA, MILK11, Task


def make_df(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [f"img{i}" for i in range(n)],
        "image_path": [f"/nowhere/img{i}.jpg" for i in range(n)],
        "group_id": [f"p{i // 2}" for i in range(n)],
        "label": [i % 2 for i in range(n)],
        "label_name": [MELANOMA.classes[i % 2] for i in range(n)],
        "age": [30.0, np.nan, 45.0, 60.0, 0.0, 85.0][:n],
        "sex": ["male", "female", "unknown", "male", "female", "male"][:n],
        "site": ["torso", "head_neck", "unknown", "palms_soles", "torso", "lower_extremity"][:n],
        "source": "test", "split": "train",
    })


def test_valid_table_roundtrips(tmp_path) -> None:
    table = LesionTable(make_df(), MELANOMA, origin="t.csv").validate()
    table.save(tmp_path)
    again = LesionTable.load(tmp_path)
    pd.testing.assert_frame_equal(again.df, table.df, check_dtype=False)
    assert again.task == MELANOMA and again.content_hash() == table.content_hash()


@pytest.mark.parametrize(("column", "row", "value", "message"), [
    ("sex", 3, "yes", "'yes' is not one of"),
    ("site", 2, "elbow", "'elbow' is not one of"),
    ("age", 4, -3.0, "outside"),
    ("age", 1, 300.0, "outside"),
    ("label", 5, 2, "outside 0..1"),
    ("split", 6, "valid", "'valid' is not one of"),
    ("label_name", 1, "melanoma", "does not match label 0"),
])
def test_bad_cells_name_file_row_and_column(column: str, row: int, value: object,
                                            message: str) -> None:
    df = make_df()
    df[column] = df[column].astype(object)
    df.loc[row - 1, column] = value
    with pytest.raises(DataError) as err:
        LesionTable(df, MELANOMA, origin="table.csv").validate()
    assert message in str(err.value)
    assert err.value.file == "table.csv" and err.value.row == row and err.value.column == column
    assert f"row {row}" in str(err.value) and repr(column) in str(err.value)


def test_duplicates_missing_columns_and_empty_train() -> None:
    df = make_df()
    df.loc[4, "image_id"] = "img1"
    with pytest.raises(DataError, match=r"duplicate image_id 'img1' in rows \[2, 5\]"):
        LesionTable(df, MELANOMA).validate()
    with pytest.raises(DataError, match=r"missing required columns \['site'\]"):
        LesionTable(make_df().drop(columns="site"), MELANOMA).validate()
    test_only = make_df().assign(split="test", label=-1, label_name="")
    with pytest.raises(DataError, match="no training rows"):
        LesionTable(test_only, MELANOMA).validate()
    unlabelled = make_df()
    unlabelled.loc[2, ["label", "label_name"]] = [-1, ""]
    with pytest.raises(DataError, match="training row without a label"):
        LesionTable(unlabelled, MELANOMA).validate()


def test_fold_column_triggers_the_leakage_audit() -> None:
    df = make_df().assign(fold=[0, 1, 0, 0, 1, 1])  # group p0 = rows 0, 1 spans folds 0 and 1
    with pytest.raises(LeakageError, match="p0"):
        LesionTable(df, MELANOMA).validate()


def test_fold_gives_the_other_folds_and_fold_k_of_the_training_rows() -> None:
    df = make_df().assign(split=["train", "train", "train", "train", "test", "test"],
                          fold=[1, 1, 0, 0, -1, -1])
    table = LesionTable(df, MELANOMA)
    train, val = table.fold(0)
    assert train["image_id"].tolist() == ["img0", "img1"]  # test rows are in neither
    assert val["image_id"].tolist() == ["img2", "img3"]
    assert val.index.tolist() == [2, 3]  # the rows' positions in table.df
    train, val = table.fold(1)
    assert (train["image_id"].tolist(), val["image_id"].tolist()) == (["img2", "img3"],
                                                                      ["img0", "img1"])
    with pytest.raises(DataError, match="no 'fold' column"):
        LesionTable(make_df(), MELANOMA).fold(0)


def test_missing_images_are_reported_with_a_count(tmp_path) -> None:
    df = make_df()
    (tmp_path / "img0.jpg").write_bytes(b"x")
    df["image_path"] = [str(tmp_path / f"img{i}.jpg") for i in range(len(df))]
    with pytest.raises(ImageError, match="5 image"):
        LesionTable(df, MELANOMA, origin="t.csv").validate(check_images=True)


def test_vocabularies() -> None:
    assert set(SITE_MAP.values()) <= set(SITES)
    s = pd.Series(["Head/Neck", None, "", "acral", "trunk_post"])
    assert normalize_values(s, SITE_MAP, file="f.csv", column="site", what="site").tolist() == [
        "head_neck", "unknown", "unknown", "palms_soles", "torso"]
    with pytest.raises(DataError, match="unknown site 'elbow'") as err:
        normalize_values(pd.Series(["torso", "elbow"]), SITE_MAP, file="f.csv", column="loc",
                         what="site")
    assert err.value.row == 2 and err.value.column == "loc"
    ages = normalize_ages(pd.Series(["45", None, "70.0"]), file="f.csv", column="age")
    assert ages.iloc[0] == 45.0 and np.isnan(ages.iloc[1])
    with pytest.raises(DataError, match="'forty' is not a number"):
        normalize_ages(pd.Series(["45", "forty"]), file="f.csv", column="age")


def test_task_shapes_and_probabilities() -> None:
    assert MELANOMA.n_outputs == 1 and MELANOMA.prob_columns == ["prob_melanoma"]
    assert HAM7.n_outputs == 7 and MILK11.n_outputs == 11
    p = probs_from_logits(torch.zeros((2, 7)), HAM7).numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs_from_logits(torch.tensor([[0.0], [100.0]]), MELANOMA).ravel(),
                               [0.5, 1.0])
    assert MILK11.targets(np.array([2])).tolist()[0][2] == 1.0


def test_targets_of_unknown_labels() -> None:
    """The dataset's targets: unlabelled rows (-1) stay -1, or a zero row when multilabel."""
    labels = np.array([1, -1, 0])
    assert MELANOMA.targets(labels).tolist() == [1.0, -1.0, 0.0]
    assert MELANOMA.targets(labels).dtype == np.float32
    assert HAM7.targets(labels).tolist() == [1, -1, 0] and HAM7.targets(labels).dtype == np.int64
    onehot = MILK11.targets(labels)
    assert onehot.dtype == np.float32 and onehot.sum(axis=1).tolist() == [1.0, 0.0, 1.0]
    assert onehot[0, 1] == 1.0 and onehot[2, 0] == 1.0
    assert Task.from_dict(HAM7.to_dict()) == HAM7
    with pytest.raises(Exception, match="exactly 2 classes"):
        Task("x", "binary", ("a", "b", "c"), "roc_auc")
