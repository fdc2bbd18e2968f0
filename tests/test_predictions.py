"""Prediction frames: built as the run folders store them, read back with their dtypes,
and their probabilities as arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melalib.errors import DataError
from melalib.io import write_csv
from melalib.predictions import (
    class_probs,
    output_frame,
    predicted_labels,
    prediction_frame,
    probabilities,
    read_predictions,
    with_table_columns,
)
from melalib.targets import DIAG9, DIAGNOSIS_CLASSES
from melalib.tasks import HAM7, MELANOMA


def _rows() -> pd.DataFrame:
    return pd.DataFrame({"image_id": ["0001", "0002", "0003"], "group_id": ["007", "007", "9"],
                         "label": [1, 0, 1], "melanoma_label": [1, 0, 0]})


def test_prediction_frame_round_trips_through_csv(tmp_path: Path) -> None:
    frame = prediction_frame(_rows(), MELANOMA, np.array([[0.9], [0.2], [0.6]]), 3,
                             labelled=True)
    assert list(frame.columns) == ["image_id", "group_id", "fold", "label", "prob_melanoma"]
    write_csv(tmp_path / "oof_fold3.csv", frame)
    back = read_predictions(tmp_path / "oof_fold3.csv")
    assert back["image_id"].tolist() == ["0001", "0002", "0003"]  # ids stay text
    assert back["group_id"].tolist() == ["007", "007", "9"]
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    unlabelled = prediction_frame(_rows(), MELANOMA, np.array([[0.9], [0.2], [0.6]]), 0,
                                  labelled=False)
    assert "label" not in unlabelled.columns


def test_diagnosis_model_frames_report_the_melanoma_score() -> None:
    probs = np.full((3, 9), 0.05)
    mel = DIAGNOSIS_CLASSES.index("MEL")
    probs[:, mel] = [0.6, 0.1, 0.3]
    stored = prediction_frame(_rows(), DIAG9, probs, 0, labelled=True)
    assert stored["label"].tolist() == [1, 0, 0]  # the binary label, not the diagnosis
    np.testing.assert_allclose(stored["prob_melanoma"], [0.6, 0.1, 0.3])
    assert [c for c in stored.columns if c.startswith("dx_")] == [
        f"dx_{c}" for c in DIAGNOSIS_CLASSES]
    out = output_frame(np.array(["a", "b", "c"]), DIAG9, probs)  # what `melalib predict` writes
    assert list(out.columns) == ["image_id", *DIAG9.prob_columns, "prob_melanoma"]
    np.testing.assert_allclose(out["prob_melanoma"], out["prob_MEL"])
    plain = output_frame(np.array(["a"]), MELANOMA, np.array([[0.4]]))
    assert list(plain.columns) == ["image_id", "prob_melanoma"]


def test_probabilities_class_probs_and_labels() -> None:
    frame = pd.DataFrame({"image_id": ["a", "b"], "prob_melanoma": [0.3, 0.5]})
    p = probabilities(MELANOMA, frame)
    assert p.shape == (2,)
    np.testing.assert_allclose(class_probs(MELANOMA, p), [[0.7, 0.3], [0.5, 0.5]])
    assert predicted_labels(MELANOMA, p).tolist() == [0, 1]  # p >= 0.5 is positive
    assert predicted_labels(MELANOMA, p, threshold=0.2).tolist() == [1, 1]
    multi = np.full((2, 7), 0.1)
    multi[0, 4], multi[1, [2, 5]] = 0.4, 0.25  # row 1: a tie, scored wrong (-1)
    frame = pd.DataFrame(multi, columns=HAM7.prob_columns).assign(image_id=["x", "y"])
    assert probabilities(HAM7, frame).shape == (2, 7)
    assert predicted_labels(HAM7, multi).tolist() == [4, -1]
    np.testing.assert_array_equal(class_probs(HAM7, multi), multi)
    with pytest.raises(KeyError):
        probabilities(HAM7, frame.drop(columns="prob_mel"))


def test_read_predictions_keeps_the_frame_checks(tmp_path: Path) -> None:
    from melalib.predictions import check_frame

    pd.DataFrame({"image_id": ["1", "1"], "prob_melanoma": [0.1, 0.2]}).to_csv(
        tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match="appears twice"):
        check_frame(read_predictions(tmp_path / "p.csv"), MELANOMA, "p.csv")


def test_with_table_columns_joins_metadata_and_hidden_labels_in_prediction_order() -> None:
    table_df = pd.DataFrame({"image_id": ["a", "b", "c"], "age": [30.0, 40.0, 50.0],
                             "true_label": [1, 0, 1], "label": [-1, -1, -1]})
    pred = pd.DataFrame({"image_id": ["c", "a"], "label": [-1, -1], "prob_x": [0.9, 0.2]})
    out = with_table_columns(pred, table_df)
    assert out["image_id"].tolist() == ["c", "a"]
    assert out["true_label"].tolist() == [1, 1] and out["age"].tolist() == [50.0, 30.0]
    assert out["label"].tolist() == [-1, -1]  # the prediction's own columns win
    with pytest.raises(DataError, match="image_id 'z'") as err:
        with_table_columns(pd.DataFrame({"image_id": ["a", "z"]}), table_df)
    assert err.value.row == 2 and err.value.column == "image_id"


def test_fold_scores_scores_each_fold_and_names_an_undefined_one() -> None:
    """The one per-fold loop (training runs' and stacks' metrics): each fold's own rows,
    folds ascending, and a fold with one class gets its error instead of a score."""
    from melalib.metrics import evaluate
    from melalib.predictions import fold_scores

    y = np.array([1, 0, 1, 0, 1, 1])
    p = np.array([0.9, 0.2, 0.6, 0.4, 0.3, 0.8])
    frame = pd.DataFrame({"image_id": list("abcdef"), "fold": [1, 1, 1, 1, 0, 0],
                          "label": y, "prob_melanoma": p})
    scores = fold_scores(MELANOMA, frame)
    assert list(scores) == ["0", "1"]
    assert scores["1"] == evaluate(MELANOMA, y[:4], p[:4])
    assert "error" in scores["0"]  # fold 0 holds positives only
    assert list(fold_scores(MELANOMA, frame, [1])) == ["1"]


def test_probabilities_of_follows_the_ids_asked_for() -> None:
    from melalib.predictions import probabilities_of

    frame = pd.DataFrame({"image_id": ["0001", "0002", "0003"],
                          "prob_melanoma": [0.1, 0.2, 0.3]})
    np.testing.assert_array_equal(probabilities_of(frame, ["0003", "0001"], MELANOMA),
                                  [0.3, 0.1])
    with pytest.raises(DataError, match="no prediction for image_id '0004'"):
        probabilities_of(frame, ["0001", "0004"], MELANOMA)
