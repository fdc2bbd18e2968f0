"""Run directories: create, resume or refuse; provenance; the run's table and folds.

Layout of ``outputs/<run>/``::

    config.yaml          resolved config (nested), the one `melalib reproduce` reruns
    run.json             fingerprint, seed, package versions, git commit, table hash
    table/               table.csv (with folds) + task.json, as trained on
    checkpoints/         fold{k}_last.pt (resume), fold{k}_best.pt (predictions)
    history_fold{k}.csv  per-epoch losses, metrics and learning rate
    oof_fold{k}.csv      image_id, group_id, fold, label, prob_<class>...
    test_fold{k}.csv     test-split predictions of the fold's model (if a test split)
    oof.csv, metrics.json  once every fold is done
    bad_images.csv       unreadable / missing images found by the pre-flight check
    skipped_images.csv   images left out under skip_bad_images=true (else an error)
    unlisted_images.csv  image files beside the listed ones that the table does not name
    train.log            per-epoch log lines (resumes, warnings)

run.json also counts ``n_skipped_images`` and ``n_unlisted_images``.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .config import RunConfig
from .errors import ConfigError, DataError, RunExistsError
from .io import write_json, write_yaml
from .table import LesionTable

PACKAGES = ("melalib", "torch", "torchvision", "timm", "albumentations", "numpy", "pandas",
            "scikit-learn", "grad-cam")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the melalib checkout (None outside a git checkout)."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class RunDir:
    """One run's folder; `open` decides between a fresh start, a resume and a refusal."""

    path: Path
    cfg: RunConfig

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, cfg: RunConfig, *, write: bool = True) -> RunDir:
        """Create ``cfg.run_dir``, or resume it when it holds the same config.

        A folder holding another config raises RunExistsError unless ``cfg.overwrite``;
        a non-empty folder that is not a melalib run is never deleted.
        """
        path = cfg.run_dir
        run = cls(path, cfg)
        if path.exists() and any(path.iterdir()):
            info = run.info()
            if info is None:
                raise RunExistsError(
                    f"{path} exists and is not a melalib run (no run.json); choose another "
                    "run name or output_dir: melalib never deletes folders it did not write")
            if cfg.overwrite:
                if write:
                    shutil.rmtree(path)
            else:
                old = run.load_config()
                diff = (old.result_diff(cfg) if old is not None
                        else {} if info.get("fingerprint") == cfg.fingerprint()
                        else {"config.yaml": ("missing", "")})
                if diff:
                    changed = {k: v[::-1] for k, v in diff.items()}  # (now, before)
                    raise RunExistsError(
                        f"{path} holds a run with another config (changed, now vs before: "
                        f"{changed}); resume it with the same config, pick a new run name, or "
                        "pass overwrite=True / --overwrite to replace it")
                if write and info.get("fingerprint") != cfg.fingerprint():
                    run.update_info(fingerprint=cfg.fingerprint())  # fields added since
        if write:
            run.path.mkdir(parents=True, exist_ok=True)
            (run.path / "checkpoints").mkdir(exist_ok=True)
            if run.info() is None:
                run._write_provenance()
            write_yaml(run.path / "config.yaml", cfg.to_dict())
        return run

    def _write_provenance(self) -> None:
        write_json(self.path / "run.json", {
            "fingerprint": self.cfg.fingerprint(),
            "seed": self.cfg.train.seed,
            "fold_seed": self.cfg.data.fold_seed,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "platform": platform.platform(),
        })

    def info(self) -> dict[str, Any] | None:
        p = self.path / "run.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def update_info(self, **items: Any) -> None:
        info = self.info() or {}
        info.update(items)
        write_json(self.path / "run.json", info)

    def load_config(self) -> RunConfig | None:
        p = self.path / "config.yaml"
        if not p.is_file():
            return None
        return RunConfig.from_dict(yaml.safe_load(p.read_text()))

    # ------------------------------------------------------------------ paths
    def checkpoint(self, fold: int, kind: str = "last") -> Path:
        return self.path / "checkpoints" / f"fold{fold}_{kind}.pt"

    def history_path(self, fold: int) -> Path:
        return self.path / f"history_fold{fold}.csv"

    def oof_path(self, fold: int) -> Path:
        return self.path / f"oof_fold{fold}.csv"

    def test_path(self, fold: int) -> Path:
        return self.path / f"test_fold{fold}.csv"

    def fold_done(self, fold: int) -> bool:
        return self.oof_path(fold).is_file()

    def done_folds(self) -> list[int]:
        return [k for k in range(self.cfg.data.n_folds) if self.fold_done(k)]

    # ------------------------------------------------------------------ table
    def table_dir(self) -> Path:
        return self.path / "table"

    def save_table(self, table: LesionTable) -> str:
        """Store the table trained on; a resumed run must see the same content."""
        digest = table.content_hash()
        old = (self.info() or {}).get("table_hash")
        if old is not None and old != digest:
            raise DataError(
                f"the data changed since run {self.path} started (table hash {old[:12]} -> "
                f"{digest[:12]}); start a new run (another name) or pass --overwrite",
                file=self.table_dir() / "table.csv")
        if old is None:
            table.save(self.table_dir())
            self.update_info(table_hash=digest, n_rows=len(table),
                             n_train=int((table.df["split"] == "train").sum()))
        return digest

    def load_table(self) -> LesionTable:
        return LesionTable.load(self.table_dir())

    # ------------------------------------------------------------ predictions
    def load_oof(self) -> pd.DataFrame:
        """Out-of-fold predictions of the finished folds, concatenated."""
        frames = [pd.read_csv(self.oof_path(k), dtype={"image_id": str, "group_id": str})
                  for k in self.done_folds()]
        if not frames:
            raise ConfigError(f"{self.path}: no fold has finished (no oof_fold*.csv)")
        return pd.concat(frames, ignore_index=True)

    def load_test(self) -> list[pd.DataFrame]:
        return [pd.read_csv(self.test_path(k), dtype={"image_id": str, "group_id": str})
                for k in self.done_folds() if self.test_path(k).is_file()]
