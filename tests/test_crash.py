"""Crash safety and no data loss.

`melalib train` runs in a subprocess and is killed with SIGKILL (a) between two epochs'
checkpoints, i.e. mid-epoch, and (b) in the middle of writing a checkpoint (a wrapper script
replaces ``torch.save`` by one that writes half the bytes, then kills its own process: an
honest simulation of dying mid-write, with no hook in library code). After each kill every
checkpoint, CSV, JSON and YAML file of the run is complete, the rerun resumes from the last
complete checkpoint, and its out-of-fold predictions equal those of an uninterrupted run.

No data loss: training, `prepare` and `predict` never write inside the user's data folder,
and a rerun with another config is refused at the command line without touching the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import melalib
from melalib.checkpoints import load_checkpoint
from melalib.cli import main
from melalib.config import RunConfig
from melalib.data.prepare import prepare_images
from melalib.data.synthetic import make_synthetic
from melalib.errors import CheckpointError
from melalib.presets import PRESETS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
KILL_ON_SAVE = '''\
"""Run `melalib` with torch.save replaced: the Nth save whose temp file belongs to TARGET
writes half of its bytes, then the process SIGKILLs itself (death in mid-write)."""
import io, os, signal, sys
import torch

TARGET, NTH = os.environ["KILL_TARGET"], int(os.environ["KILL_NTH"])
real_save, seen = torch.save, {"n": 0}


def save(obj, f, *args, **kwargs):
    if f".{TARGET}." in os.path.basename(str(f)):
        seen["n"] += 1
        if seen["n"] == NTH:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            with open(f, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.save = save
from melalib.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


# --------------------------------------------------------------------------------- helpers
def crash_config(tmp: Path, synthetic_root: Path, name: str) -> Path:
    """The tiny config with a few more epochs and steps, fold 0, as a YAML file."""
    flat = {**PRESETS["tiny"], "data_dir": str(synthetic_root), "output_dir": str(tmp / "out"),
            "name": name, "fold": 0, "epochs": EPOCHS, "max_steps_per_epoch": 3}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v
                                    for k, v in flat.items()}))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "MELALIB_PROGRESS": "0", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def launch(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None
           ) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env={**env(), **(extra_env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def history_rows(run: Path) -> int:
    try:
        return len(pd.read_csv(run / "history_fold0.csv"))
    except (OSError, pd.errors.EmptyDataError):
        return 0


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail if it exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"training exited ({proc.returncode}) before the kill:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training never reached the kill point")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def assert_no_half_written_file(run: Path) -> list[Path]:
    """Every checkpoint loads and every CSV / JSON / YAML parses; returns leftover temp
    files (``.<name>.<random>.tmp``, never read by melalib)."""
    temps = []
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            temps.append(path)
        elif path.suffix == ".pt":
            state = load_checkpoint(path)
            assert state["epoch"] >= 1 and state["model"], path
        elif path.suffix == ".csv":
            assert len(pd.read_csv(path).columns) > 0, path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict), path
    return temps


def resume_in_process(config: Path) -> RunConfig:
    cfg = RunConfig.from_yaml(config)
    melalib.train(cfg)
    return cfg


def assert_same_as_uninterrupted(run: Path, reference: Path) -> None:
    a = pd.read_csv(run / "oof_fold0.csv", dtype={"image_id": str})
    b = pd.read_csv(reference / "oof_fold0.csv", dtype={"image_id": str})
    assert a["image_id"].tolist() == b["image_id"].tolist()
    np.testing.assert_allclose(a["prob_melanoma"], b["prob_melanoma"], rtol=0, atol=1e-6)
    ha, hb = (pd.read_csv(p / "history_fold0.csv") for p in (run, reference))
    assert ha["epoch"].tolist() == hb["epoch"].tolist() == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose(ha[["train_loss", "val_loss"]], hb[["train_loss", "val_loss"]],
                               rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """The uninterrupted run every crashed run must match (trained once per module)."""
    tmp = tmp_path_factory.mktemp("reference")
    return resume_in_process(crash_config(tmp, synthetic_root, "whole")).run_dir


# -------------------------------------------------------------------------- (a) mid-epoch
def test_kill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, synthetic_root,
                                                                 reference) -> None:
    config = crash_config(tmp_path, synthetic_root, "killed")
    run = tmp_path / "out" / "killed"
    proc = launch(["-m", "melalib", "train", "--config", str(config)], tmp_path)
    kill_when(proc, lambda: history_rows(run) >= 1)  # epoch 1 checkpointed, epoch 2 running
    assert not (run / "oof_fold0.csv").exists()
    assert_no_half_written_file(run)
    done = load_checkpoint(run / "checkpoints" / "fold0_last.pt")["epoch"]
    assert 1 <= done < EPOCHS
    resume_in_process(config)
    log = (run / "train.log").read_text()
    assert f"fold 0: resuming after epoch {done} " in log
    assert_same_as_uninterrupted(run, reference)
    assert_no_half_written_file(run)


# ---------------------------------------------------------------- (b) mid-checkpoint write
@pytest.mark.parametrize(("target", "nth", "resumes_after"), [
    ("fold0_last.pt", 2, 1),  # the epoch-2 "last" checkpoint: epoch 1 stays intact
    pytest.param("fold0_best.pt", 1, None, marks=pytest.mark.slow),  # before any checkpoint
], ids=["last-of-epoch-2", "first-best"])
def test_kill_mid_checkpoint_write_leaves_the_previous_checkpoint_intact(
        tmp_path, synthetic_root, reference, target, nth, resumes_after) -> None:
    config = crash_config(tmp_path, synthetic_root, "killed")
    run = tmp_path / "out" / "killed"
    wrapper = tmp_path / "kill_on_save.py"
    wrapper.write_text(KILL_ON_SAVE)
    proc = launch([str(wrapper), "train", "--config", str(config)], tmp_path,
                  {"KILL_TARGET": target, "KILL_NTH": str(nth)})
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    temps = assert_no_half_written_file(run)
    half = [t for t in temps if t.name.startswith(f".{target}.")]
    assert len(half) == 1 and half[0].stat().st_size > 0  # the half-written temp file
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(half[0])
    last = run / "checkpoints" / "fold0_last.pt"
    if resumes_after is None:
        assert not last.exists()
    else:
        assert load_checkpoint(last)["epoch"] == resumes_after
    resume_in_process(config)
    log = (run / "train.log").read_text()
    if resumes_after is None:
        assert "resuming" not in log
    else:
        assert f"fold 0: resuming after epoch {resumes_after} " in log
    assert not half[0].exists()  # the resumed fold removed its stale checkpoint temp file
    assert_same_as_uninterrupted(run, reference)


@pytest.mark.slow
def test_repeated_kills_at_random_moments_never_corrupt_the_run(tmp_path, synthetic_root,
                                                                reference) -> None:
    """Kill each attempt at a random moment (0-0.8 s after it first writes to the run),
    several times; every time the run stays readable; the final result still equals the
    uninterrupted run."""
    config = crash_config(tmp_path, synthetic_root, "killed")
    run = tmp_path / "out" / "killed"
    rng = random.Random(0)
    for _ in range(4):
        if (run / "oof_fold0.csv").exists():
            break
        start = history_rows(run)
        proc = launch(["-m", "melalib", "train", "--config", str(config)], tmp_path)
        while proc.poll() is None and history_rows(run) <= start:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=600)
        assert proc.returncode in (0, -signal.SIGKILL)
        assert_no_half_written_file(run)
    resume_in_process(config)
    assert_same_as_uninterrupted(run, reference)


# ---------------------------------------------------------------------------- no data loss
def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under ``folder``: size, mtime and content hash (folders:
    mtime, which changes when a file is created or deleted in them, even temporarily)."""
    out: dict[str, tuple] = {".": ("dir", folder.stat().st_mtime_ns)}
    for path in sorted(folder.rglob("*")):
        st = path.stat()
        key = path.relative_to(folder).as_posix()
        if path.is_dir():
            out[key] = ("dir", st.st_mtime_ns)
        else:
            out[key] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def test_train_prepare_and_predict_never_write_into_the_data_folder(tmp_path, tiny_cfg,
                                                                   capsys) -> None:
    raw = tmp_path / "my_data"  # the user's folder: CSV + images
    table = make_synthetic(tmp_path / "gen", task="binary", n_patients=16, image_size=32,
                           seed=0)
    train = table.train.reset_index(drop=True)
    (raw / "images").mkdir(parents=True)
    for path in train["image_path"]:
        (raw / "images" / Path(path).name).write_bytes(Path(path).read_bytes())
    csv = raw / "lesions.csv"
    pd.DataFrame({"image": [Path(p).name for p in train["image_path"]],
                  "label": train["label_name"], "patient": train["group_id"],
                  "age": train["age"], "sex": train["sex"]}).to_csv(csv, index=False)
    before = snapshot(raw)

    cfg = tiny_cfg(dataset="custom", custom_csv=str(csv), image_dir=str(raw / "images"),
                   custom_group_column="patient", custom_meta_columns=("age=age", "sex=sex"),
                   custom_classes=("benign", "melanoma"), fold=0)
    melalib.train(cfg)
    assert (cfg.run_dir / "oof_fold0.csv").is_file()
    report = prepare_images(raw / "images", tmp_path / "cache", size=16, workers=1,
                            progress=False)
    assert report.n_done == len(train) and report.n_failed == 0
    code = main(["predict", str(cfg.run_dir), "--out", str(tmp_path / "pred.csv"),
                 "--csv", str(csv), "--image-dir", str(raw / "images")])
    assert code == 0, capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "pred.csv")) == len(train)

    assert snapshot(raw) == before


def test_cli_rerun_with_another_config_is_refused_and_touches_nothing(tmp_path,
                                                                      synthetic_root,
                                                                      capsys) -> None:
    config = crash_config(tmp_path, synthetic_root, "mine")
    args = ["train", "--config", str(config), "--set", "epochs=1"]
    assert main(args) == 0
    run = tmp_path / "out" / "mine"
    capsys.readouterr()
    before = snapshot(run)
    assert main([*args, "--set", "lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("melalib train: error: ")
    assert (f"{run} holds a run with another config (changed, now vs before: "
            f"{{'lr': (0.05, 0.001)}})") in err
    assert "--overwrite" in err and "Traceback" not in err
    assert snapshot(run) == before  # refused before writing anything
    assert main(args) == 0  # the same config: the finished fold is kept as it is
    results = [k for k in before if k.startswith(("checkpoints/", "table/", "oof_", "history_",
                                                   "test_", "metrics_fold"))]
    assert len(results) >= 7
    after = snapshot(run)
    assert {k: after[k] for k in results} == {k: before[k] for k in results}
    assert main([*args, "--set", "lr=0.05", "--overwrite"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["fingerprint"] == RunConfig.from_yaml(config).with_overrides(
        ["epochs=1", "lr=0.05"]).fingerprint()
