"""DDP: two gloo processes under torchrun match a single-process run (CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd
import yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one(tmp_path, synthetic_root) -> None:
    cfg = {"preset": "tiny", "data_dir": str(synthetic_root), "output_dir": str(tmp_path),
           "use_image": False, "meta_hidden": [16, 8], "meta_dropout": 0.0,
           "head_dropout": 0.0, "batch_size": 64, "epochs": 3, "max_steps_per_epoch": 0,
           "fold": 0}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "MELALIB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    single = [sys.executable, "-m", "melalib", "train", "--config", str(path), "--name", "one"]
    subprocess.run(single, check=True, env=env, capture_output=True, timeout=300)
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "melalib", "train", "--config", str(path),
           "--name", "two"]
    out = subprocess.run(ddp, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a = pd.read_csv(tmp_path / "one" / "oof_fold0.csv")
    b = pd.read_csv(tmp_path / "two" / "oof_fold0.csv")
    assert a["image_id"].tolist() == b["image_id"].tolist()
    # same global batch and gradient average; only BatchNorm statistics are per rank
    assert (a["prob_melanoma"] - b["prob_melanoma"]).abs().max() < 0.01
    # rank 1 wrote nothing of its own: one history, one set of checkpoints
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [
        "fold0_best.pt", "fold0_last.pt"]
