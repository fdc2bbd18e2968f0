"""Reproducibility: a run records what it needs to be re-run, and `melalib reproduce`
re-runs it, reports ``match: true`` (exit 0), and catches a tampered prediction (exit 1)."""

from __future__ import annotations

import json
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import yaml

import melalib
from melalib.cli import main
from melalib.config import RunConfig
from melalib.data.build import preflight_images
from melalib.data.load import load_table
from melalib.folds import assign_folds
from melalib.runs import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> RunConfig:
    """A tiny two-epoch run of fold 0 (trained once for the module)."""
    from melalib.presets import PRESETS

    out = tmp_path_factory.mktemp("runs")
    cfg = RunConfig.from_dict({**PRESETS["tiny"], "data_dir": str(synthetic_root),
                               "output_dir": str(out), "name": "original", "fold": 0,
                               "epochs": 2, "seed": 7})
    melalib.train(cfg)
    return cfg


def test_a_run_records_config_versions_commit_seed_table_hash_and_folds(finished_run) -> None:
    cfg, run = finished_run, finished_run.run_dir
    recorded = RunConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert recorded == cfg and recorded.to_dict() == cfg.to_dict()  # the resolved config
    info = json.loads((run / "run.json").read_text())
    assert info["fingerprint"] == cfg.fingerprint()
    assert info["seed"] == 7 and info["fold_seed"] == cfg.data.fold_seed
    for package in ("torch", "numpy", "pandas", "timm", "scikit-learn"):
        assert info["versions"][package] == metadata.version(package), package
    assert "git_commit" in info  # None outside a git checkout
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(melalib.__file__).parent,
                          capture_output=True, text=True, check=False)
    if head.returncode == 0:
        assert info["git_commit"] == head.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{40}", info["git_commit"])
    # the table trained on, with its folds, and its hash
    stored = RunDir(run, cfg).table()
    assert info["table_hash"] == stored.content_hash()
    again = load_table(cfg.data)  # independently: load, pre-flight, fold, hash
    again = assign_folds(preflight_images(again, cfg, None), n_folds=cfg.data.n_folds,
                         seed=cfg.data.fold_seed, stratify=cfg.data.fold_stratify)
    assert again.content_hash() == info["table_hash"]
    saved = pd.read_csv(run / "table" / "table.csv", dtype={"image_id": str})
    assert saved["fold"].tolist() == again.df["fold"].tolist()
    assert set(saved.loc[saved["split"] == "train", "fold"]) == {0, 1}


def test_reproduce_matches_and_a_tampered_prediction_does_not(finished_run, tmp_path,
                                                              capsys) -> None:
    run = finished_run.run_dir
    original = (run / "oof_fold0.csv").read_bytes()
    rerun = tmp_path / "rerun"
    code = main(["reproduce", str(run), "--output-dir", str(rerun)])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["match"] is True
    assert result["folds"] == [0] and result["table_hash_match"] is True
    assert result["max_abs_diff"] <= result["atol"] == 1e-5
    assert (run / "oof_fold0.csv").read_bytes() == original  # the original is only read
    assert Path(result["rerun_dir"]).parent.parent == rerun  # a fresh folder under it
    fresh = pd.read_csv(Path(result["rerun_dir"]) / "oof_fold0.csv")
    pd.testing.assert_frame_equal(fresh, pd.read_csv(run / "oof_fold0.csv"), atol=1e-5)

    # tamper with one probability of the original: the comparison must catch it, even when
    # --output-dir is the run's own parent (the re-run goes to a fresh folder, never the run)
    oof = pd.read_csv(run / "oof_fold0.csv", dtype={"image_id": str, "group_id": str})
    oof.loc[3, "prob_melanoma"] = 1.0 - oof.loc[3, "prob_melanoma"] + 0.01
    delta = abs(oof.loc[3, "prob_melanoma"] - fresh.loc[3, "prob_melanoma"])
    oof.to_csv(run / "oof_fold0.csv", index=False)
    for target in (rerun, run.parent):
        code = main(["reproduce", str(run), "--output-dir", str(target)])
        captured = capsys.readouterr()
        assert code == 1, captured.err
        result = json.loads(captured.out)
        assert code == 1 and result["match"] is False
        assert result["table_hash_match"] is True
        assert result["max_abs_diff"] == pytest.approx(delta, abs=1e-6)
        assert result["changed_since_training"] == [0]  # the completion record tells
    assert main(["reproduce", str(run), "--output-dir", str(run / "inside")]) == 2
    assert not (run / "inside").exists()
    (run / "oof_fold0.csv").write_bytes(original)


def test_reproduce_refuses_a_folder_that_is_not_a_run(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["reproduce", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("melalib reproduce: error: ") and "is not a melalib run" in err
