"""Issue 24: nothing lost, nothing silently wrong. A refused command leaves nothing behind
(no run folder, no lock file) and an ``--overwrite`` that cannot start keeps the old run."""

from __future__ import annotations

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
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
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
