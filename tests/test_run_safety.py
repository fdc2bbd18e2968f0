"""Run folders: names that stay inside output_dir, `--overwrite` that validates first and
deletes only melalib's own folders, a lock against two trainings of one run, and failed
starts that do not block the corrected command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import melalib
from melalib.cli import main
from melalib.config import RunConfig
from melalib.errors import ConfigError, DataError, RunExistsError
from melalib.runs import MARKER, RunDir, RunLock


@pytest.mark.parametrize("name", ["", " ", ".", "..", "../x", "../../victim", "a/b", "/tmp/x",
                                  "a\0b", "a\nb", "a\\b", " run"])
def test_run_name_must_be_one_printable_component(name: str) -> None:
    with pytest.raises(ConfigError, match="run name"):
        RunConfig.from_dict({"name": name})


def test_empty_or_escaping_name_with_overwrite_deletes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "outputs"
    sibling = out / "other_run"
    sibling.mkdir(parents=True)
    (out / "run.json").write_text("{}")  # what made the old guard pass for --name ""
    (sibling / "run.json").write_text("{}")
    (sibling / "my_notes.txt").write_text("keep me")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "run.json").write_text("{}")
    (victim / "notes.txt").write_text("keep me")
    for name in ("", "../victim"):
        rc = main(["train", "--preset", "tiny", "--output-dir", str(out), "--name", name,
                   "--overwrite"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "run name" in err
    assert (sibling / "my_notes.txt").read_text() == "keep me"
    assert (victim / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError):
        melalib.train(RunConfig.from_dict({"name": "../../victim", "overwrite": True,
                                           "output_dir": str(out / "a")}))
    assert (victim / "notes.txt").is_file()


def test_symlinked_run_folder_is_refused_with_a_message(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("x")
    Path(cfg.output_dir).mkdir(parents=True)
    cfg.run_dir.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunExistsError, match="symbolic link"):
        melalib.train(cfg)
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


def _finished(tiny_cfg) -> RunConfig:
    cfg = tiny_cfg(fold=0)
    melalib.train(cfg)
    assert (cfg.run_dir / "oof_fold0.csv").is_file()
    return cfg


def test_overwrite_validates_config_and_data_before_touching_the_old_run(tiny_cfg,
                                                                          tmp_path: Path) -> None:
    cfg = _finished(tiny_cfg)
    before = sorted(p.relative_to(cfg.run_dir) for p in cfg.run_dir.rglob("*"))
    bad = tiny_cfg(fold=0, overwrite=True, dataset="custom",
                   custom_csv=str(tmp_path / "mistyped.csv"))
    with pytest.raises(DataError, match=r"mistyped\.csv"):
        melalib.train(bad)
    assert sorted(p.relative_to(cfg.run_dir) for p in cfg.run_dir.rglob("*")) == before
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == ["tiny"]
    # a valid replacement: swapped in, the old run gone, nothing left beside it
    melalib.train(tiny_cfg(fold=0, overwrite=True, lr=0.05))
    assert RunDir(cfg.run_dir, cfg).load_config().train.lr == 0.05
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == ["tiny"]


def test_overwrite_never_deletes_a_folder_without_melalib_marker(tiny_cfg) -> None:
    cfg = _finished(tiny_cfg)
    (cfg.run_dir / MARKER).unlink()  # e.g. a run copied in, or older than the marker
    (cfg.run_dir / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="no melalib marker"):
        melalib.train(tiny_cfg(fold=0, overwrite=True, lr=0.05))
    assert (cfg.run_dir / "notes.txt").read_text() == "mine"
    assert (cfg.run_dir / "oof_fold0.csv").is_file()


def test_failed_start_does_not_block_the_corrected_command(tiny_cfg, tmp_path: Path) -> None:
    # a step of the build that fails after the folder exists (here: pseudo-labels from a run
    # that is not there) removes the folder it created
    bad = tiny_cfg(fold=0, pseudo_run=str(tmp_path / "nope"))
    with pytest.raises(ConfigError):
        melalib.train(bad)
    assert not Path(bad.output_dir).exists()  # the folder it created is gone again
    bad.run_dir.mkdir(parents=True)  # a folder left by a start that died (e.g. SIGKILL)
    (bad.run_dir / MARKER).write_text(json.dumps({"melalib_run": bad.name}))
    (bad.run_dir / "run.json").write_text(json.dumps({"failed_start": "DataError: ..."}))
    (bad.run_dir / "config.yaml").write_text("name: tiny\nlr: 0.5\n")
    summary = melalib.train(tiny_cfg(fold=0))
    assert summary["folds_done"] == [0]
    assert "failed_start" not in json.loads((bad.run_dir / "run.json").read_text())


def test_unreadable_table_writes_no_run(tiny_cfg, tmp_path: Path) -> None:
    bad = tiny_cfg(fold=0, dataset="custom", custom_csv=str(tmp_path / "nope" / "t.csv"))
    with pytest.raises(DataError, match="does not exist"):
        melalib.train(bad)
    assert not bad.run_dir.exists()


def test_interrupted_swap_puts_the_old_run_back(tiny_cfg) -> None:
    cfg = _finished(tiny_cfg)
    aside = cfg.run_dir.with_name(".tiny.old-999")
    os.rename(cfg.run_dir, aside)  # died between "old aside" and "new into place"
    run = RunDir.open(cfg)
    assert run.fold_done(0) and not aside.exists()


def test_second_training_of_a_run_names_the_holder_pid(tiny_cfg, capsys) -> None:
    cfg = tiny_cfg(fold=0)
    with RunLock(cfg) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        rc = main(["train", "--preset", "tiny", "--set", f"data_dir={cfg.data.data_dir}",
                   "--output-dir", cfg.output_dir, "--name", cfg.name, "--fold", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"PID {os.getpid()}" in err and "another process" in err
    assert not cfg.run_dir.exists()  # refused before anything was written
    assert melalib.train(cfg)["folds_done"] == [0]  # released


def test_marker_names_the_run(tiny_cfg) -> None:
    run = RunDir.open(tiny_cfg())
    assert json.loads((run.path / MARKER).read_text()) == {"melalib_run": "tiny"}
