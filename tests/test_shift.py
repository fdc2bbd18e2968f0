"""Image shift (`melalib.shift`): per-fold feature statistics stored at training, a score in
every prediction that separates colour/contrast-shifted images from in-domain ones, old runs
without statistics still predict."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from sklearn.metrics import roc_auc_score

from melalib.config import RunConfig
from melalib.data.load import load_table
from melalib.errors import CheckpointError, RunExistsError
from melalib.inference import load_predictor
from melalib.runs import RunDir
from melalib.shift import (
    FLAG,
    FLAG_QUANTILE,
    SCORE,
    ShiftStats,
    fit_stats,
    separation,
    simulate_camera,
)
from melalib.table import LesionTable
from melalib.tasks import MELANOMA


def test_threshold_flags_the_oof_quantile_and_shifted_features_stand_out() -> None:
    rng = np.random.default_rng(0)
    cov = np.diag(np.linspace(0.2, 3.0, 20))
    train = rng.multivariate_normal(np.zeros(20), cov, size=300)
    oof = rng.multivariate_normal(np.zeros(20), cov, size=400)
    stats = fit_stats(train, oof)
    assert np.mean(stats.score(oof) > 1) == pytest.approx(1 - FLAG_QUANTILE, abs=0.01)
    shifted = rng.multivariate_normal(np.full(20, 1.5), cov, size=400)
    y = np.r_[np.zeros(400), np.ones(400)]
    assert roc_auc_score(y, np.r_[stats.score(oof), stats.score(shifted)]) > 0.95


def test_statistics_round_trip_without_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    stats = fit_stats(rng.normal(size=(50, 4)), rng.normal(size=(30, 4)))
    back = ShiftStats.load(stats.save(tmp_path / "s.npz"))
    x = rng.normal(size=(5, 4))
    assert back.score(x) == pytest.approx(stats.score(x), rel=1e-5)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(CheckpointError, match="image-shift"):
        ShiftStats.load(tmp_path / "bad.npz")


@pytest.fixture(scope="module")
def run_and_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, Path]:
    """A tiny trained binary run and in-domain rows it never saw (another synthetic seed)."""
    from melalib.engine import train

    root = tmp_path_factory.mktemp("shift")
    base = {**TINY, "data_dir": str(root / "data"), "output_dir": str(root / "out")}
    cfg = RunConfig.from_dict({**base, "name": "run"})
    train(cfg, progress=False)
    other = load_table(RunConfig.from_dict({**base, "synthetic_seed": 5}).data)
    return cfg.run_dir, other.df, root


def test_training_stores_statistics_and_predictions_separate_shifted_images(run_and_rows
                                                                          ) -> None:
    run, df, root = run_and_rows
    view = RunDir.read(run)
    assert all(view.shift_path(k).is_file() for k in view.done_folds())
    for k in view.done_folds():  # the threshold is the fold's own OOF 95th percentile
        oof = view.oof(k)[SCORE].to_numpy()
        assert np.mean(oof > 1) <= 1 - FLAG_QUANTILE + 1 / len(oof)
        assert np.quantile(oof, FLAG_QUANTILE) == pytest.approx(1.0)
    predictor = load_predictor(run)
    inside = predictor.predict(df, progress=False)
    table = LesionTable(df, predictor.task)
    shifted = predictor.predict(simulate_camera(table, root / "camera").df, progress=False)
    assert {SCORE, FLAG} <= set(inside.columns)
    y = np.r_[np.zeros(len(inside)), np.ones(len(shifted))]
    assert roc_auc_score(y, np.r_[inside[SCORE], shifted[SCORE]]) > 0.8
    assert separation(inside[SCORE], shifted[SCORE]) == pytest.approx(
        roc_auc_score(y, np.r_[inside[SCORE], shifted[SCORE]]))
    assert shifted[FLAG].mean() > inside[FLAG].mean()
    assert "image shift:" in predictor.last_shift


def test_a_run_without_statistics_predicts_without_the_score_and_says_so_once(
        run_and_rows, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    run, df, _ = run_and_rows
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for path in old.glob("shift_fold*.npz"):
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="melalib"):
        predictor = load_predictor(old)
        out = predictor.predict(df, progress=False)
        predictor.predict(df, progress=False)
    assert SCORE not in out.columns and predictor.last_shift is None
    said = [r for r in caplog.records if "no image-shift statistics" in r.getMessage()]
    assert len(said) == 1


def test_simulated_camera_writes_only_into_its_own_folder(run_and_rows, tmp_path: Path) -> None:
    _, df, _ = run_and_rows
    table = LesionTable(df.head(3).reset_index(drop=True), MELANOMA)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"keep")
    with pytest.raises(RunExistsError):
        simulate_camera(table, foreign)
    out = simulate_camera(table, tmp_path / "camera")
    again = simulate_camera(table, tmp_path / "camera")  # its own folder: rewritten
    assert list(out.df["image_path"]) == list(again.df["image_path"])
    assert (foreign / "holiday.jpg").read_bytes() == b"keep"
