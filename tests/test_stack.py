"""The stacker: fold isolation by construction, label-free features, a run-like folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melalib.stack import StackInputs, load_inputs, stack, stack_features, table_inputs
from melalib.table import LesionTable
from melalib.tasks import MELANOMA


def _table(n_patients: int = 24, per_patient: int = 4, seed: int = 0) -> LesionTable:
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    patient = np.repeat(np.arange(n_patients), per_patient)
    label = (rng.random(n) < 0.25).astype(int)
    label[:2] = [0, 1]
    df = pd.DataFrame({
        "image_id": [f"I{i:03d}" for i in range(n)], "image_path": "", "group_id": [
            f"P{p}" for p in patient], "patient_id": [f"P{p}" for p in patient],
        "label": label, "label_name": np.array(MELANOMA.classes)[label],
        "age": rng.choice([30.0, 45.0, 60.0, np.nan], n),
        "sex": rng.choice(["male", "female", "unknown"], n),
        "site": rng.choice(["torso", "head_neck", "lower_extremity"], n),
        "source": "synthetic", "split": "train", "image_bytes": rng.integers(1000, 9000, n),
        "fold": patient % 3})
    m = min(8, n)
    test = df.iloc[:m].copy()
    test["image_id"] = [f"T{i}" for i in range(m)]
    test["group_id"] = test["patient_id"] = [f"TP{i // 4}" for i in range(m)]
    test[["label", "label_name", "split", "fold"]] = [-1, "", "test", -1]
    return LesionTable(pd.concat([df, test], ignore_index=True), MELANOMA)


class Memoriser:
    """Predicts a row's label exactly when it saw that feature row in `fit`, else 0.5."""

    def __init__(self) -> None:
        self.seen: dict[bytes, int] = {}

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> Memoriser:
        for row, label in zip(np.asarray(X, dtype=float), y, strict=True):
            self.seen[np.nan_to_num(row, nan=-9.0).tobytes()] = int(label)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        keys = [np.nan_to_num(r, nan=-9.0).tobytes() for r in np.asarray(X, dtype=float)]
        p = np.array([float(self.seen.get(k, 0.5)) for k in keys])
        return np.column_stack([1 - p, p])


def test_stacker_never_trains_on_a_rows_own_fold() -> None:
    table = _table()
    rng = np.random.default_rng(1)
    scores = pd.DataFrame({"score_a": rng.random(len(table.df))}, index=table.df["image_id"])
    inputs = StackInputs(table, MELANOMA, scores)
    result = stack(inputs, None, make=lambda seed: Memoriser(), n_boot=0, importance=False)
    # every row's features are unique, so a model fitted on its own fold would recall its
    # label (AUC 1); fitted on the other folds only, it can only answer 0.5
    assert np.asarray(stack_features(table.df, scores)).shape[0] == len(table.df)
    assert (result.oof["prob_melanoma"] == 0.5).all()
    # the same memoriser fitted on every row does recall the labels: the check can fail
    X = stack_features(table.train.reset_index(drop=True), scores)
    seen = Memoriser().fit(X, table.train["label"].to_numpy()).predict_proba(X)[:, 1]
    assert np.array_equal(seen, table.train["label"].to_numpy())


def test_patient_features_use_no_labels() -> None:
    table = _table()
    scores = pd.DataFrame({"score_a": np.linspace(0, 1, len(table.df))},
                          index=table.df["image_id"])
    before = stack_features(table.df, scores)
    permuted = table.df.copy()
    rng = np.random.default_rng(3)
    permuted["label"] = rng.permutation(permuted["label"].to_numpy())
    permuted["label_name"] = "x"
    pd.testing.assert_frame_equal(before, stack_features(permuted, scores))
    dropped = table.df.drop(columns=["label", "label_name"])
    pd.testing.assert_frame_equal(before, stack_features(dropped, scores))
    assert {"score_a__prank", "score_a__pz", "score_a__pratio", "age__pz", "ctx_n_images",
            "ctx_n_site", "log_bytes__prank"} <= set(before.columns)


def test_patient_rank_and_z_by_hand() -> None:
    table = _table(n_patients=2, per_patient=3)
    df = table.df[table.df["split"] == "train"].reset_index(drop=True)
    scores = pd.DataFrame({"score_a": [0.1, 0.3, 0.2, 0.5, 0.5, 0.9]}, index=df["image_id"])
    f = stack_features(df, scores)
    np.testing.assert_allclose(f["score_a__prank"], [1 / 3, 1, 2 / 3, 0.5, 0.5, 1])
    np.testing.assert_allclose(f["score_a__pz"][:3], [-1.2247449, 1.2247449, 0.0], atol=1e-6)
    np.testing.assert_allclose(f["score_a__pratio"][:3], [0.5, 1.5, 1.0])
    assert f["ctx_n_images"].tolist() == [3.0] * 6


def test_metadata_only_stack_writes_a_run_like_folder(tmp_path: Path) -> None:
    from melalib.runs import RunDir

    result = stack(table_inputs(_table()), tmp_path / "stack", n_seeds=2, n_boot=50)
    out = tmp_path / "stack"
    for name in ("oof.csv", "oof_fold0.csv", "test_fold2.csv", "metrics.json",
                 "feature_importance.csv", "metrics_ci.csv", "table/task.json"):
        assert (out / name).is_file(), name
    run = RunDir.read(out)  # a run-like folder: no config.yaml
    assert run.cfg is None and run.task == MELANOMA and run.done_folds() == [0, 1, 2]
    assert len(run.oof()) == 96 and len(run.test_mean()) == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"roc_auc", "pauc_80"} <= set(metrics["oof_ci"]) and "pauc_80" in metrics["oof"]
    assert result.importance["feature"].nunique() == len(metrics["features"])
    with pytest.raises(Exception, match="earlier stack"):
        stack(table_inputs(_table()), out, n_boot=0)


def test_stack_of_trained_runs_and_cli(tiny_cfg, tmp_path: Path) -> None:
    from melalib.cli import main
    from melalib.engine import train

    image = tiny_cfg(name="img", synthetic_patients=20)
    meta = tiny_cfg(name="meta", synthetic_patients=20, use_image=False)
    train(image)
    train(meta)
    inputs = load_inputs([image.run_dir, meta.run_dir])
    assert list(inputs.scores.columns) == ["score_img", "score_meta"]
    assert inputs.scores.notna().all().all()
    rc = main(["stack", str(image.run_dir), str(meta.run_dir), "--name", "st",
               "--output-dir", str(tmp_path / "out"), "--seeds", "1", "--n-boot", "20"])
    assert rc == 0
    metrics = json.loads((tmp_path / "out" / "st" / "metrics.json").read_text())
    assert {"img", "meta", "mean_blend"} <= set(metrics["baselines"])
    rc = main(["ensemble", str(tmp_path / "out" / "st"), str(image.run_dir), "--out",
               str(tmp_path / "sub.csv")])
    assert rc == 0 and (tmp_path / "sub.csv").is_file()


def test_stack_and_context_features_group_the_same_rows() -> None:
    """One patient-key rule (`table.patient_key`): a blank patient id falls back to the
    group, and a patient id never meets an equal group id, in the stacker's context features
    and in the metadata encoder's alike (the stacker once grouped both kinds together)."""
    from melalib.features import MetaEncoder

    df = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(7)],
        "patient_id": [" ", " ", "A", None, "P", "Q", "Q"],
        "group_id": ["A", "B", "x", "P", "y", "q1", "q2"],
        "age": 50.0, "sex": "male", "site": "torso", "label": 0})
    expected = [1, 1, 1, 1, 1, 2, 2]  # only the two "Q" rows share a patient (the encoder: log1p)
    scores = pd.DataFrame({"score_a": np.linspace(0.1, 0.7, 7)}, index=df["image_id"])
    stacked = stack_features(df, scores, meta=False)
    np.testing.assert_array_equal(stacked["ctx_n_images"], expected)
    enc = MetaEncoder("context").fit(df)
    stats = enc.describe().set_index("name").loc["ctx_n_images"]
    encoded = enc.transform(df)[:, enc.feature_names.index("ctx_n_images")]
    np.testing.assert_allclose(encoded * stats["std"] + stats["mean"], np.log1p(expected))
