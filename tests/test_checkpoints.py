"""A checkpoint carries its preprocessing, and a run's config is parsed once.

One tiny run is trained through the command line with `RunConfig.from_dict` counted; then
`melalib predict` reads the model's input size, aspect, mean / std and image options from the
checkpoint (an edited mean / std changes the predictions; a checkpoint written before the
record existed, i.e. by the pre-change code, still predicts exactly as before).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from melalib.checkpoints import Preprocessing, load_checkpoint, load_model
from melalib.cli import main
from melalib.config import RunConfig
from melalib.models import input_normalization
from melalib.runs import RunDir


class ParseCounter:
    """Counts `RunConfig.from_dict` calls (every config parse goes through it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = RunConfig.from_dict.__func__

        def counting(cls, *args, **kwargs):
            self.calls += 1
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(RunConfig, "from_dict", classmethod(counting))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, int]:
    """The tiny preset trained by ``melalib train`` (2 folds), and its config parses."""
    base = tmp_path_factory.mktemp("ckpt")
    with pytest.MonkeyPatch.context() as mp:
        counter = ParseCounter(mp)
        code = main(["train", "--preset", "tiny", "--name", "tiny", "--output-dir",
                     str(base / "out"), "--set", f"data_dir={base / 'data'}"])
    assert code == 0
    return RunDir.read(base / "out" / "tiny"), counter.calls


def _predict(run_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch | None = None
             ) -> tuple[pd.DataFrame, int]:
    counter = ParseCounter(monkeypatch) if monkeypatch is not None else None
    assert main(["predict", str(run_path), "--out", str(out), "--tta", "1"]) == 0
    return pd.read_csv(out, dtype={"image_id": str}), counter.calls if counter else 0


def _edit_checkpoints(run_path: Path, edit) -> None:
    for path in sorted((run_path / "checkpoints").glob("fold*_best.pt")):
        state = load_checkpoint(path)
        edit(state)
        torch.save(state, path)


def test_train_parses_its_config_once(trained: tuple[RunDir, int]) -> None:
    run, parses = trained
    assert run.complete
    assert parses == 1  # the command line's config; the folds' checkpoints reuse it


def test_resuming_a_finished_run_parses_its_config_once(trained: tuple[RunDir, int],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = trained
    counter = ParseCounter(monkeypatch)
    assert main(["train", "--preset", "tiny", "--name", "tiny", "--output-dir",
                 str(run.path.parent), "--set", f"data_dir={run.cfg.data.data_dir}"]) == 0
    assert counter.calls == 1  # config.yaml holds exactly it: compared, not parsed again


def test_predict_parses_the_run_config_once(trained: tuple[RunDir, int], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, parses = _predict(trained[0].path, tmp_path / "p.csv", monkeypatch)
    assert parses == 1  # config.yaml; not again per fold checkpoint


def test_checkpoint_stores_its_preprocessing(trained: tuple[RunDir, int]) -> None:
    run, _ = trained
    cfg = run.cfg
    state = load_checkpoint(run.checkpoint(0, "best"))
    stored = Preprocessing.from_dict(state["preprocessing"])
    mean, std = input_normalization(cfg.model)
    assert stored.mean == tuple(mean) and stored.std == tuple(std)
    assert (stored.image_size, stored.aspect) == (cfg.data.image_size, cfg.data.aspect)
    assert stored.task == run.task.name and stored.classes == tuple(run.task.classes)
    assert stored.image_options.color_constancy == cfg.data.color_constancy
    loaded = load_model(run.checkpoint(1, "best"), torch.device("cpu"), config=cfg)
    assert loaded.preprocessing == stored and loaded.cfg is cfg  # not parsed again


def test_a_checkpoint_without_preprocessing_still_predicts_the_same(
        trained: tuple[RunDir, int], tmp_path: Path) -> None:
    """A run folder written before the record existed: the key stripped, the predictions
    are those of the mean / std its config implies (what training then used)."""
    run, _ = trained
    expected, _ = _predict(run.path, tmp_path / "new.csv")
    old = tmp_path / "old_run"
    shutil.copytree(run.path, old)
    _edit_checkpoints(old, lambda state: state.pop("preprocessing"))
    assert "preprocessing" not in load_checkpoint(old / "checkpoints" / "fold0_best.pt")
    got, _ = _predict(old, tmp_path / "old.csv")
    pd.testing.assert_frame_equal(got, expected)


def test_predict_uses_the_stored_mean_and_std(trained: tuple[RunDir, int],
                                              tmp_path: Path) -> None:
    run, _ = trained
    expected, _ = _predict(run.path, tmp_path / "new.csv")
    edited = tmp_path / "edited_run"
    shutil.copytree(run.path, edited)

    def shift_normalization(state: dict) -> None:
        state["preprocessing"]["mean"] = [0.0, 0.0, 0.0]
        state["preprocessing"]["std"] = [2.0, 2.0, 2.0]

    _edit_checkpoints(edited, shift_normalization)
    got, _ = _predict(edited, tmp_path / "edited.csv")
    assert got["image_id"].tolist() == expected["image_id"].tolist()
    column = run.task.prob_columns[0]
    assert not np.allclose(got[column], expected[column])
