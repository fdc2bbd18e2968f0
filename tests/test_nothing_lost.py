"""Issue 24: nothing lost, nothing silently wrong. A refused command leaves nothing behind
(no run folder, no lock file) and an ``--overwrite`` that cannot start keeps the old run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import melalib
from melalib.cli import main
from melalib.config import RunConfig


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (the snapshot a refused command must keep)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _cli(cfg: RunConfig, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--set", f"data_dir={cfg.data.data_dir}",
            "--output-dir", cfg.output_dir, "--name", cfg.name, "--fold", "0", *extra]


def _screen(err: str) -> list[str]:
    """The lines a terminal shows of ``err``: after a carriage return (a progress bar redrawn
    or cleared) only what follows it stays visible; blank lines are dropped."""
    shown = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    return [line for line in shown if line.strip()]


BAD_SETTINGS = [["backbone=resnet5"], ["loss=ce"], ["dual_image=true"],
                ["backbone=vit_tiny_patch16_224", "image_size=32"]]


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda b: b[0])
def test_failed_overwrite_keeps_the_finished_run(tiny_cfg, capsys, bad: list[str]) -> None:
    cfg = tiny_cfg(fold=0)
    melalib.train(cfg)
    capsys.readouterr()
    before = _tree(Path(cfg.output_dir))
    args = [a for kv in bad for a in ("--set", kv)]
    rc = main(_cli(cfg, "--overwrite", *args))
    err = capsys.readouterr().err
    shown = _screen(err)  # a progress bar (image pre-flight) is cleared before the error
    assert rc == 2 and len(shown) == 1 and shown[0].startswith("melalib train: error"), err
    assert _tree(Path(cfg.output_dir)) == before  # every file, byte for byte; no lock file
    assert main(_cli(cfg)) == 0  # the original command still resumes the run


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda b: b[0])
def test_refused_fresh_train_leaves_nothing(tiny_cfg, capsys, bad: list[str]) -> None:
    cfg = tiny_cfg(fold=0)
    args = [a for kv in bad for a in ("--set", kv)]
    assert main(_cli(cfg, *args)) == 2
    assert not Path(cfg.output_dir).exists()  # no run folder, no table, no lock file
    capsys.readouterr()
    assert main(_cli(cfg)) == 0  # the corrected command just works


def test_lock_file_removed_after_a_finished_train(tiny_cfg) -> None:
    cfg = tiny_cfg(fold=0)
    melalib.train(cfg)
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == ["tiny"]


def test_nan_weights_error_names_the_weights_on_its_own_line(tiny_cfg, tmp_path: Path,
                                                             capsys) -> None:
    import timm
    import torch

    state = timm.create_model("resnet10t", num_classes=0).state_dict()
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
           for k, v in state.items()}
    weights = tmp_path / "nan_weights.pth"
    torch.save(nan, weights)
    cfg = tiny_cfg(fold=0)
    rc = main(_cli(cfg, "--set", f"pretrained_path={weights}"))
    err = capsys.readouterr().err
    line = err.splitlines()[-1]
    assert rc == 2 and line.startswith("melalib train: error: ")
    assert "weights already hold NaN" in line and "lower lr" not in line.replace(
        "a lower lr will not help", "")
    assert re.search(r"(\A|[\r\n])melalib train: error", err)  # not on the progress bar's line


def test_long_run_names_are_one_line_errors(tiny_cfg, capsys) -> None:
    cfg = tiny_cfg(fold=0)
    melalib.train(cfg)
    capsys.readouterr()
    for name, extra in (("r" * 300, []), ("q" * 246, ["--overwrite"])):
        rc = main(["train", "--preset", "tiny", "--output-dir", cfg.output_dir, "--name", name,
                   *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "at most 100" in err
        assert len(err) < 400
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == ["tiny"]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefg", "bcdefgh", strict=True)) + "lr: *h\n"


def test_yaml_alias_bombs_are_refused_in_a_short_line(tiny_cfg, tmp_path: Path,
                                                      capsys) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 1000
    rc = main(["train", "--config", str(bomb), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and len(err) < 1000 and "alias" in err
    cfg = tiny_cfg(fold=0)  # a run whose config.yaml was replaced by a bomb
    melalib.train(cfg)
    capsys.readouterr()
    (cfg.run_dir / "config.yaml").write_text(BOMB)
    rc = main(["predict", str(cfg.run_dir), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and len(err) < 1000 and "alias" in err


def test_cli_error_lines_are_capped() -> None:
    from melalib.io import one_line

    line = one_line("bad value " + "x" * 10_000_000 + "\nsecond line")
    assert "\n" not in line and len(line) < 2100 and line.endswith("characters cut)")


def test_refused_legacy_pickle_never_suggests_weights_only_false(tmp_path: Path) -> None:
    import torch

    from melalib.checkpoints import load_checkpoint
    from melalib.errors import CheckpointError, ConfigError
    from melalib.weights import read_state_dict

    path = tmp_path / "legacy.pt"
    torch.save({"f": os.system}, path, _use_new_zipfile_serialization=False)
    for load, error in ((load_checkpoint, CheckpointError), (read_state_dict, ConfigError)):
        with pytest.raises(error) as info:
            load(path)
        text = str(info.value)
        assert "Re-running" not in text and "set to `False`" not in text
        assert "weights_only=False" not in text and "posix.system" in text


def test_marker_of_another_run_is_named_as_such(tiny_cfg) -> None:
    import shutil

    from melalib.errors import RunExistsError

    cfg = tiny_cfg(fold=0)
    melalib.train(cfg)
    shutil.copytree(cfg.run_dir, cfg.run_dir.with_name("copy"))
    with pytest.raises(RunExistsError, match=r"marker of another run.*names 'tiny'"):
        melalib.train(tiny_cfg(fold=0, name="copy", overwrite=True))


def test_stack_across_datasets_names_the_reason(tiny_cfg, tmp_path: Path) -> None:
    from melalib.errors import DataError
    from melalib.stack import load_inputs, stack, table_inputs
    from tests.test_stack import _table

    cfg = tiny_cfg()  # every fold
    melalib.train(cfg)
    other = tmp_path / "other"
    stack(table_inputs(_table()), other, n_seeds=1, n_boot=0, importance=False)
    for runs in ([cfg.run_dir, other], [other, cfg.run_dir]):
        with pytest.raises(DataError, match="different tables") as info:
            load_inputs(runs)
        assert "train every fold first" not in str(info.value)
    partial = tiny_cfg(name="partial", fold=0)
    melalib.train(partial)
    with pytest.raises(DataError, match="1 of 2 folds are trained; train every fold first"):
        load_inputs([cfg.run_dir, partial.run_dir])


@pytest.mark.parametrize("with_record", [True, False], ids=["record", "legacy-run"])
def test_truncated_fold_file_is_not_a_finished_fold(tiny_cfg, with_record: bool) -> None:
    import pandas as pd

    from melalib.runs import RunDir

    cfg = tiny_cfg()
    melalib.train(cfg)
    run = RunDir.read(cfg.run_dir)
    full = run.oof_path(1).read_text().splitlines(keepends=True)
    n_rows = len(full) - 1
    assert run.fold_done(1) and run.fold_record(1)["n_rows"] == n_rows
    if not with_record:  # a run written before completion records existed
        run.fold_record_path(1).unlink()
    run.oof_path(1).write_text("".join(full[: 1 + n_rows // 2]))  # a truncated file
    assert run.fold_done(1) is (not with_record)  # the record catches it at once
    summary = melalib.train(cfg)  # the same command: resumes
    assert len(pd.read_csv(run.oof_path(1))) == n_rows
    assert summary["folds_done"] == [0, 1] and run.fold_done(1)
    assert len(pd.read_csv(cfg.run_dir / "oof.csv")) == len(run.oof(0)) + n_rows
    assert "does not hold the fold's" in (cfg.run_dir / "train.log").read_text()


def test_stack_inside_a_run_folder_as_notebook_04_writes_it(tiny_cfg) -> None:
    import json

    from melalib.errors import WriteError
    from melalib.stack import load_inputs, stack

    cfg = tiny_cfg()
    melalib.train(cfg)
    inputs = load_inputs([cfg.run_dir])
    before = _tree(cfg.run_dir)
    out = cfg.run_dir / "stack"  # a new folder inside the run: not one of its own files
    for _ in range(2):  # a rerun replaces its own stack
        stack(inputs, out, n_seeds=1, n_boot=0, importance=False, overwrite=True)
    assert (out / ".melalib-stack").is_file() and (out / "oof.csv").is_file()
    assert {k: v for k, v in _tree(cfg.run_dir).items() if not k.startswith("stack")} == before
    for target in (cfg.run_dir, cfg.run_dir / "table", cfg.run_dir.parent):
        with pytest.raises(WriteError):
            stack(inputs, target, n_seeds=1, n_boot=0, importance=False, overwrite=True)
    (out / ".melalib-stack").unlink()  # a stack written before the marker existed
    assert json.loads((out / "run.json").read_text())["kind"] == "stack"
    stack(inputs, out, n_seeds=1, n_boot=0, importance=False, overwrite=True)
    assert _tree(cfg.run_dir).keys() >= before.keys()
