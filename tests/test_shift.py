"""Image shift (`melalib.shift`): per-fold feature statistics stored at training (style
statistics of an early backbone stage, arrays only), a score in every prediction that
separates colour/contrast-shifted images from in-domain ones, old runs (Mahalanobis files of
format 1, or no statistics) still predict, `refit_run` upgrades a finished run writing only
its shift files."""

from __future__ import annotations

import hashlib
import logging
import shutil
import zipfile
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
    FORMAT_VERSION,
    POOLED,
    SCORE,
    STYLE,
    ShiftStats,
    fit_stats,
    frame_features,
    oof_scores,
    refit_run,
    separation,
    simulate_camera,
    style_layer,
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


def _files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _save_format_1(stats: ShiftStats, path: Path) -> None:
    """A shift file as melalib wrote it before format 2 (pooled-feature Mahalanobis)."""
    np.savez(path, mean=stats.mean.astype(np.float32),
             precision=stats.precision.astype(np.float32),
             threshold=np.float64(stats.threshold), n_train=np.int64(stats.n_train))


def _features(run: Path, df: pd.DataFrame, layer: str, fold: int = 0) -> np.ndarray:
    """The fold's model's features of ``df`` (evaluation transforms), ``layer`` as stored."""
    import torch

    from melalib.checkpoints import load_model

    view = RunDir.read(run)
    loaded = load_model(view.checkpoint(fold, "best"), torch.device("cpu"), config=view.cfg)
    table = LesionTable(df, view.task)
    return frame_features(loaded.model, view.cfg, table, df, torch.device("cpu"), 32,
                          layer=layer, preprocessing=loaded.preprocessing)


def test_the_stored_score_is_the_style_of_an_early_stage_and_separates_a_camera(
        run_and_rows) -> None:
    """The fold's stored statistics score the style statistics of the early stage; fitted on
    the training images, they tell in-domain images from the same kind of images through
    another camera. The controls -- the score of a constant feature, and of the features
    with their rows shuffled between the two sets -- land near chance, far below the bar."""
    run, df, root = run_and_rows
    view = RunDir.read(run)
    stats = ShiftStats.load(view.shift_path(0))
    assert stats.kind == STYLE and stats.layer == "layer1"  # resnet10t: 1/4 resolution
    table = LesionTable(df, view.task)
    camera = simulate_camera(table, root / "camera-style").df
    inside = _features(run, df, stats.layer)
    shifted = _features(run, camera, stats.layer)
    assert inside.shape[1] == 2 * 64  # channel means and SDs of resnet10t's layer1
    assert separation(stats.score(inside), stats.score(shifted)) > 0.95
    constant = np.ones(len(inside) + len(shifted))
    assert separation(constant[:len(inside)], constant[len(inside):]) == pytest.approx(0.5)
    both = np.r_[inside, shifted]
    mixed = stats.score(both[np.random.default_rng(0).permutation(len(both))])
    assert abs(separation(mixed[:len(inside)], mixed[len(inside):]) - 0.5) < 0.2


def test_the_stored_file_holds_arrays_only_and_its_oof_scores(run_and_rows) -> None:
    run, _, _ = run_and_rows
    view = RunDir.read(run)
    path = view.shift_path(0)
    with zipfile.ZipFile(path) as z:  # an npz: .npy members, none of them pickled objects
        assert all(name.endswith(".npy") for name in z.namelist())
    with np.load(path, allow_pickle=False) as z:
        assert int(z["version"]) == FORMAT_VERSION and str(z["kind"]) == STYLE
        assert all(z[k].dtype != object for k in z.files)
    assert path.stat().st_size < 2_000_000
    stats = ShiftStats.load(path)
    oof = view.oof(0)
    assert list(stats.oof_ids) == list(oof["image_id"].astype(str))
    assert stats.oof_scores == pytest.approx(oof[SCORE].to_numpy(), rel=1e-5)
    assert oof_scores(view) == pytest.approx(view.oof_by_fold()[SCORE].to_numpy(), rel=1e-5)


def test_a_later_format_is_refused(tmp_path: Path) -> None:
    stats = fit_stats(np.random.default_rng(2).normal(size=(30, 3)),
                      np.random.default_rng(3).normal(size=(10, 3)))
    path = stats.save(tmp_path / "s.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(path, **{**arrays, "version": np.int64(FORMAT_VERSION + 1)})
    with pytest.raises(CheckpointError, match="upgrade melalib"):
        ShiftStats.load(path)


def test_an_old_run_with_format_1_files_still_scores_its_predictions(
        run_and_rows, tmp_path: Path) -> None:
    """A run trained before format 2 stores Mahalanobis statistics of the pooled features
    (no version, kind or layer): they load as that kind and score predictions as before."""
    run, df, _ = run_and_rows
    old = tmp_path / "old"
    shutil.copytree(run, old)
    view = RunDir.read(old)
    expected = np.zeros(len(df))
    for k in view.done_folds():
        train, val = (d.reset_index(drop=True) for d in view.table().fold(k))
        pooled = fit_stats(_features(old, train, "", k), _features(old, val, "", k))
        _save_format_1(pooled, view.shift_path(k))
        expected += pooled.score(_features(old, df, "", k)) / len(view.done_folds())
    back = ShiftStats.load(view.shift_path(0))
    assert back.kind == POOLED and back.layer == "" and back.center is None
    assert len(back.oof_scores) == 0
    out = load_predictor(old).predict(df, progress=False)
    assert out[SCORE].to_numpy() == pytest.approx(expected, rel=1e-4)
    assert oof_scores(view) == pytest.approx(view.oof_by_fold()[SCORE].to_numpy())


def test_refit_upgrades_an_old_run_and_writes_only_its_shift_files(run_and_rows,
                                                                  tmp_path: Path) -> None:
    run, df, _ = run_and_rows
    parent = tmp_path / "copy"
    parent.mkdir()
    old = parent / "old"
    shutil.copytree(run, old)
    view = RunDir.read(old)
    for k in view.done_folds():  # made an old run: format-1 statistics
        _save_format_1(fit_stats(np.random.default_rng(k).normal(size=(20, 512)),
                                 np.random.default_rng(9).normal(size=(5, 512))),
                       view.shift_path(k))
    before = _files(old)
    written = refit_run(old)
    after = _files(old)
    shift_files = {view.shift_path(k).relative_to(old).as_posix() for k in view.done_folds()}
    assert {p.relative_to(old).as_posix() for p in written.values()} == shift_files
    assert set(after) == set(before)  # nothing added or removed ...
    assert {k for k in after if after[k] != before[k]} == shift_files  # ... only these changed
    assert sorted(p.name for p in parent.iterdir()) == ["old"]  # nothing beside the run
    refitted = ShiftStats.load(view.shift_path(0))
    assert refitted.kind == STYLE and refitted.layer == style_layer(
        load_predictor(old).model.backbone)
    assert np.quantile(refitted.oof_scores, FLAG_QUANTILE) == pytest.approx(1.0)
    assert {SCORE, FLAG} <= set(load_predictor(old).predict(df, progress=False).columns)
    with pytest.raises(CheckpointError, match="not finished"):
        refit_run(old, folds=[len(view.done_folds())])  # no such fold
