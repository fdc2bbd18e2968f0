"""Safety: no code runs from a checkpoint; failed writes keep the last good file."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import pytest
import torch

from melalib import checkpoints
from melalib.checkpoints import load_checkpoint, save_checkpoint
from melalib.cli import main
from melalib.errors import CheckpointError, WriteError
from melalib.io import write_csv, write_text


class _Payload:
    """Unpickling this object creates ``marker``: the stand-in for a malicious payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.marker, "w")


def _crafted(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file whose unpickling would create ``marker``."""
    probe = marker.with_name("probe")
    pickle.loads(pickle.dumps(_Payload(probe))).close()  # the payload really runs when unpickled
    assert probe.is_file()
    probe.unlink()
    torch.save({"format": checkpoints.FORMAT, "model": {}, "evil": _Payload(marker)}, path)
    return path


def test_load_checkpoint_refuses_crafted_pickle_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match=r"refused.*io\.open.*weights_only=True"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_predict_refuses_crafted_checkpoint(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "evil.pt", marker)
    rc = main(["predict", str(evil), "--out", str(tmp_path / "p.csv")])
    assert rc == 2 and not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was refused" in err


def test_resumed_train_refuses_planted_checkpoint(tiny_cfg, tmp_path: Path, capsys) -> None:
    from melalib.engine import train

    cfg = tiny_cfg()
    train(cfg, fold=0, progress=False)
    marker = tmp_path / "pwned"
    _crafted(cfg.run_dir / "checkpoints" / "fold1_last.pt", marker)
    with pytest.raises(CheckpointError, match="was refused"):
        train(cfg, fold=1, progress=False)
    assert not marker.exists()


def test_checkpoints_round_trip_numpy_values_with_weights_only(tmp_path: Path) -> None:
    import numpy as np

    path = save_checkpoint(tmp_path / "c.pt", {"history": [{"loss": np.float32(0.5)}],
                                               "mean": np.arange(3.0), "w": torch.ones(2)})
    state = torch.load(path, weights_only=True)
    assert state["history"][0]["loss"] == 0.5 and state["mean"] == [0.0, 1.0, 2.0]
    # an older checkpoint with a numpy scalar in it still loads (allow-listed)
    torch.save({"format": checkpoints.FORMAT, "best": np.float64(0.25)}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["best"] == 0.25


def _disk_full(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                 "writing file data/3: file write failed"),
])
def test_checkpoint_write_failure_names_path_and_keeps_last_good(tmp_path: Path, monkeypatch,
                                                                 failure: Exception) -> None:
    path = save_checkpoint(tmp_path / "fold0_last.pt", {"epoch": 1, "w": torch.ones(3)})

    def broken_save(obj: object, f: object) -> None:
        Path(f).write_bytes(b"PK half a file")
        raise failure

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
    with pytest.raises(WriteError, match=r"cannot write .*fold0_last\.pt.*intact"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["fold0_last.pt"]  # no temp file left


def test_output_write_failure_is_a_write_error(tmp_path: Path, monkeypatch) -> None:
    import pandas as pd

    target = write_text(tmp_path / "metrics.json", "{}\n")
    monkeypatch.setattr(pd.DataFrame, "to_csv", _disk_full)
    with pytest.raises(WriteError, match=r"oof\.csv: No space left on device \(ENOSPC\)"):
        write_csv(tmp_path / "oof.csv", pd.DataFrame({"a": [1]}))
    monkeypatch.setattr(Path, "write_text", _disk_full)
    with pytest.raises(WriteError, match=r"metrics\.json"):
        write_text(target, "new")
    assert target.read_text() == "{}\n"


def test_train_disk_full_is_one_line_and_resumes(tiny_cfg, monkeypatch, capsys) -> None:
    """Disk full at the second epoch's checkpoint: one line naming the file; the first
    epoch's checkpoint stays, and the same command resumes from it."""
    cfg = tiny_cfg(epochs=2)
    real_save = torch.save
    calls = {"n": 0}

    def filling_disk(obj: object, f: object) -> None:
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 writes best + last; epoch 2 hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoints.torch, "save", filling_disk)
    monkeypatch.setenv("MELALIB_PROGRESS", "0")  # the error line alone on stderr, no bars
    args = ["train", "--preset", "tiny", "--set", f"data_dir={cfg.data.data_dir}",
            "--set", "epochs=2", "--output-dir", cfg.output_dir, "--name", cfg.name,
            "--fold", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert "fold0_" in err and "intact" in err
    assert load_checkpoint(cfg.run_dir / "checkpoints" / "fold0_last.pt")["epoch"] == 1
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    assert main(args) == 0
    assert load_checkpoint(cfg.run_dir / "checkpoints" / "fold0_last.pt")["epoch"] == 2


def test_prepare_disk_full_names_the_output(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    from melalib.data.prepare import convert_one

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image.Image, "save", _disk_full)
    with pytest.raises(WriteError, match=r"out[/\\]a\.jpg: No space left on device"):
        convert_one(tmp_path / "a.png", tmp_path / "out" / "a.jpg", 16)
    assert list((tmp_path / "out").iterdir()) == []  # no temp file left
