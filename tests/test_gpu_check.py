"""benchmarks/gpu_check.sh: on a machine without CUDA it says so and its CPU dry run of every
section (throughput incl. torch.compile, loader, torchrun DDP, AMP vs fp32) exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_passes_on_cpu() -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    text = out.stdout
    assert out.returncode == 0, (text + out.stderr)[-3000:]
    assert "NO CUDA DEVICE" in text and "dry run" in text
    for header in ("== 1. training throughput", "== 2. data-loader ceiling",
                   "== 3. torchrun DDP", "== 4. AMP vs fp32", "all sections passed"):
        assert header in text, header
    if not torch.cuda.is_available():
        assert "no CUDA device on this machine" in text
    # three throughput rows (bf16, fp16 + channels_last, compiled), none failed
    assert text.count("x       nan") == 3 and "FAILED" not in text


def test_gpu_check_throughput_row_runs_both_loops_on_the_same_batches() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.gpu_check import Sizes, throughput_row

    sizes = Sizes.for_device(False)
    row = throughput_row("bf16", True, False, sizes, "resnet10t", torch.device("cpu"))
    assert row["melalib_ips"] > 0 and row["bare_ips"] > 0
    assert row["ratio"] == pytest.approx(row["melalib_ips"] / row["bare_ips"])
