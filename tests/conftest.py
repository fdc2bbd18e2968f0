"""Shared fixtures: the real data folder (skipped when absent) and tiny configs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Tiny models on a 2-core machine: one BLAS/OpenMP thread per process is many times faster
# than two threads fighting (and subprocesses such as papermill kernels inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MELALIB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real ISIC / HAM10000 files); the test is skipped when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny CPU models: one intra-op thread avoids oversubscription on a 2-core machine
    (OMP_NUM_THREADS above covers processes started later; this covers torch if it was
    imported before the variable was read)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


TINY = dict(dataset="synthetic", synthetic_patients=16, synthetic_image_size=32, image_size=32,
            backbone="resnet10t", epochs=1, batch_size=16, n_folds=2, meta_hidden=(16, 8),
            max_steps_per_epoch=2)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for generated synthetic datasets, shared by the session (cached)."""
    return tmp_path_factory.mktemp("synthetic-data")


@pytest.fixture
def tiny_cfg(tmp_path: Path, synthetic_root: Path):
    """Factory of the tiny end-to-end config writing into this test's tmp_path."""
    from melalib.config import RunConfig

    def make(**overrides: object) -> RunConfig:
        params = {**TINY, "data_dir": str(synthetic_root), "output_dir": str(tmp_path / "out"),
                  "name": "tiny"}
        params.update(overrides)
        return RunConfig.from_dict(params)

    return make


def untrained_checkpoint(cfg, task, fold: int, model, encoder, ema=None) -> dict:
    """The engine's ``best`` checkpoint (`FoldState.checkpoint`) of an untrained ``model``
    recorded as one finished epoch scoring 0.5; ``ema``: anything with ``state_dict()``."""
    import torch

    from melalib.device import FP32
    from melalib.engine import FoldState, Trainer
    from melalib.schedules import build_scheduler

    optimizer = torch.optim.AdamW(model.parameters())
    trainer = Trainer(cfg.train, model, optimizer, build_scheduler(cfg.train, optimizer, 1),
                      torch.amp.GradScaler("cpu", enabled=False), torch.nn.BCEWithLogitsLoss(),
                      FP32, torch.device("cpu"), ema=ema)
    return FoldState(cfg, task, fold, encoder, trainer, epoch=1, best=0.5, best_epoch=1,
                     history=[{"epoch": 1}]).checkpoint()


@pytest.fixture(scope="session")
def dual_run(tmp_path_factory: pytest.TempPathFactory):
    """A tiny dual-image run (fold 0 of 2) on the synthetic pairs: a dermoscopic
    ``image_path`` and a clinical ``image_path_2`` per lesion, 11 MILK10k classes, separate
    branches; trained once per session (`melalib.runs.RunDir` view)."""
    import melalib
    from melalib.config import RunConfig
    from melalib.runs import RunDir

    root = tmp_path_factory.mktemp("dual-run")
    cfg = RunConfig.from_dict({**TINY, "data_dir": str(root / "data"),
                               "output_dir": str(root / "out"), "name": "dual",
                               "synthetic_task": "paired", "dual_image": True,
                               "shared_backbone": False, "fold": 0, "device": "cpu"})
    melalib.train(cfg, progress=False)
    return RunDir.read(cfg.run_dir)


BENCHMARKS = REPO / "benchmarks"


def benchmark_script(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package), as
    when it runs: its sibling modules import by name (the folder is on ``sys.path``, as for
    ``python benchmarks/<script>.py``), and it is registered as ``sys.modules[name]``, so
    a sibling importing it and its dataclasses see this copy."""
    import importlib.util
    import sys

    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def ham_run_and_milk_table(root: Path) -> tuple[Path, Any]:
    """A tiny multiclass (HAM7-like) run trained under ``root`` and the config of a paired
    (MILK11-like) external table: external validation's tests (test_external, test_adapt)."""
    from melalib.config import RunConfig
    from melalib.engine import train

    base = {**TINY, "data_dir": str(root / "data"), "output_dir": str(root / "out")}
    cfg = RunConfig.from_dict({**base, "name": "ham", "synthetic_task": "multiclass"})
    train(cfg, progress=False)
    ext = RunConfig.from_dict({**base, "name": "ext", "synthetic_task": "paired",
                               "synthetic_seed": 3})
    return cfg.run_dir, ext
