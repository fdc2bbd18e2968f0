"""target=diagnosis: the shared 9-class vocabulary, and a run that reports P(melanoma)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from melalib.errors import ConfigError, DataError
from melalib.runtime import probs_from_logits
from melalib.table import LesionTable
from melalib.targets import (
    DIAG9,
    DIAGNOSIS_CLASSES,
    diagnosis_labels,
    report_probs,
    training_table,
)
from melalib.tasks import HAM7, MELANOMA


def _table(diagnosis: list[object], label: list[int], split: list[str] | None = None
           ) -> LesionTable:
    n = len(label)
    split = split or ["train"] * n
    df = pd.DataFrame({
        "image_id": [f"I{i}" for i in range(n)], "image_path": [f"/x/I{i}.jpg" for i in range(n)],
        "group_id": [f"P{i // 2}" for i in range(n)], "label": label,
        "label_name": [("", *MELANOMA.classes)[v + 1] for v in label],
        "age": 50.0, "sex": "male", "site": "torso", "source": "isic2020", "split": split,
        "diagnosis": diagnosis})
    return LesionTable(df, MELANOMA, origin="train.csv")


def test_isic2020_and_2019_words_share_one_vocabulary() -> None:
    words = ["melanoma", "nevus", "seborrheic keratosis", "lentigo NOS", "lichenoid keratosis",
             "solar lentigo", "cafe-au-lait macule", "atypical melanocytic proliferation",
             "unknown", "MEL", "NV", "BCC", "BKL", "AK", "SCC", "VASC", "DF", None]
    label = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, -1]
    split = ["train"] * 17 + ["test"]
    got = [("", *DIAGNOSIS_CLASSES)[i + 1] for i in diagnosis_labels(_table(words, label, split))]
    assert got == ["MEL", "NV", "BKL", "BKL", "BKL", "BKL", "UNK", "UNK", "UNK",
                   "MEL", "NV", "BCC", "BKL", "AK", "SCC", "VASC", "DF", ""]


def test_diagnosis_errors_name_the_row() -> None:
    with pytest.raises(DataError, match="contradicts label") as info:
        diagnosis_labels(_table(["nevus", "melanoma"], [0, 0]))
    assert info.value.row == 2 and info.value.column == "diagnosis"
    with pytest.raises(DataError, match="not in the shared vocabulary") as info:
        diagnosis_labels(_table(["nevus", "wart"], [0, 0]))
    assert info.value.row == 2
    with pytest.raises(ConfigError, match="binary melanoma"):
        training_table(LesionTable(_table(["nevus"], [0]).df, HAM7), "diagnosis")


def test_training_table_keeps_the_binary_label() -> None:
    t = training_table(_table(["melanoma", "nevus", "BCC", None], [1, 0, 0, -1],
                              ["train", "train", "train", "test"]), "diagnosis")
    assert t.task == DIAG9
    assert t.df["label"].tolist() == [0, 1, 2, -1]
    assert t.df["melanoma_label"].tolist() == [1, 0, 0, -1]
    t.validate()


def test_melanoma_score_is_the_softmax_column() -> None:
    logits = np.random.default_rng(0).normal(size=(5, 9))
    probs = probs_from_logits(torch.from_numpy(logits), DIAG9).numpy()
    assert np.array_equal(report_probs(probs, DIAG9)[:, 0], probs[:, 0])
    assert np.array_equal(report_probs(probs, MELANOMA), probs)


def test_diagnosis_run_reports_the_melanoma_softmax_column(tiny_cfg) -> None:
    import torch

    from melalib.engine import train
    from melalib.inference import load_predictor
    from melalib.runs import RunDir

    cfg = tiny_cfg(target="diagnosis", fold=0, synthetic_patients=20)
    summary = train(cfg, fold=0)
    run = RunDir.open(cfg, write=False)
    oof = pd.read_csv(run.oof_path(0), dtype={"image_id": str})
    dx = oof[[f"dx_{c}" for c in DIAGNOSIS_CLASSES]].to_numpy()
    np.testing.assert_allclose(dx.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(oof["prob_melanoma"].to_numpy(), oof["dx_MEL"].to_numpy())
    assert set(oof["label"]) <= {0, 1}
    assert "roc_auc" in summary["per_fold"]["0"]
    # the checkpoint's 9-way softmax, recomputed by hand, gives the same melanoma column
    state = torch.load(run.checkpoint(0, "best"), weights_only=True, map_location="cpu")
    assert state["task"]["classes"] == list(DIAGNOSIS_CLASSES)
    predictor = load_predictor(run.checkpoint(0, "best"), device="cpu")
    table = run.table()
    val = table.df[table.df["image_id"].isin(oof["image_id"])]
    again = predictor.predict(val, tta=1, progress=False).set_index("image_id")
    np.testing.assert_allclose(again.loc[oof["image_id"], "prob_MEL"].to_numpy(),
                               oof["prob_melanoma"].to_numpy(), atol=1e-5)
    np.testing.assert_array_equal(again["prob_melanoma"], again["prob_MEL"])
    # Grad-CAM of the binary run's errors explains MEL (positives) / the top benign class
    from melalib.explain import explain_errors

    errors, _images, cams = explain_errors(run.path, kind="wrong", top=3, device="cpu")
    assert 0 < len(errors) == len(cams) and cams.shape[1] > 0


def test_diagnosis_cam_classes() -> None:
    from melalib.targets import diagnosis_cam_classes

    dx = np.full((3, 9), 0.05)
    dx[1, 3] = dx[2, 0] = 0.6
    assert diagnosis_cam_classes(np.array([1, 0, 0]), dx).tolist() == [0, 3, 1]


def test_merged_2019_2020_tables_map_to_the_nine_classes(shared_data) -> None:
    from melalib.data.sources.isic2019 import load_isic2019
    from melalib.data.sources.isic2020 import load_isic2020
    from melalib.data.sources.merge import merge_isic2019_2020

    merged = merge_isic2019_2020(load_isic2020(shared_data / "isic2020"),
                                 load_isic2019(shared_data / "isic2019"))
    table = training_table(merged, "diagnosis")
    train = table.df[table.df["split"] == "train"]
    counts = train["label_name"].value_counts().to_dict()
    # ISIC 2019 ground truth + ISIC 2020 train.csv (data README): NV 12,875 + 5,193; BKL
    # 2,624 + 135 seborrheic keratoses + 44 lentigo NOS + 37 lichenoid + 7 solar lentigo
    assert counts == {"UNK": 27126, "NV": 18068, "MEL": 4522 + 584, "BCC": 3323, "BKL": 2847,
                      "AK": 867, "SCC": 628, "VASC": 253, "DF": 239}
    assert (train["melanoma_label"] == (train["label_name"] == "MEL")).all()
    assert (table.df.loc[table.df["split"] == "test", "label"] == -1).all()
