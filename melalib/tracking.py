"""Experiment tracking in MLflow (``mlflow=true``; optional: ``pip install 'melalib[mlflow]'``).

One MLflow run per melalib run (the parent: run name = the melalib run name, params = the
flat config, tag ``melalib.run_dir``) and one nested run per fold under it (params = the
config and ``fold``; metrics per epoch with ``step`` = epoch: the losses, the primary metric,
the learning rate; at the fold's end its out-of-fold metrics as ``oof_<metric>`` with
``<metric>_ci_low`` / ``<metric>_ci_high``, 95 % bootstrap CIs resampling patients, and its
learning curve as an artifact). Once every fold is done the parent gets the pooled OOF
metrics with CIs and the run's figures (``<run>/figures/*.png``). A resumed fold or a fold
trained on another machine finds its runs again by their tags, so a melalib run stays one
parent.

The store: ``$MLFLOW_TRACKING_URI`` when set, else a local SQLite store
``<output_dir>/mlflow.db`` with artifacts under ``<output_dir>/mlartifacts/`` (MLflow 3
refuses its old file store). Browse it with ``mlflow ui --backend-store-uri
sqlite:///outputs/mlflow.db``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from .bootstrap import evaluate_with_ci
from .config import RunConfig
from .errors import ConfigError
from .metrics import MetricError, evaluate
from .predictions import probabilities
from .runs import RunDir
from .tasks import Task

RUN_TAG = "melalib.run_dir"
FOLD_TAG = "melalib.fold"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for a nested run
#: Bootstrap replicates of the logged CIs.
N_BOOT = 1000


def _mlflow() -> Any:
    try:
        import mlflow  # optional: only mlflow=true needs it
    except ImportError as exc:
        raise ConfigError("mlflow=true but mlflow is not installed: pip install "
                          "'melalib[mlflow]' (or mlflow=false)") from exc
    return mlflow


def check(cfg: RunConfig) -> None:
    """ConfigError now (before anything is written) when ``mlflow=true`` cannot log."""
    if cfg.train.mlflow:
        _mlflow()


def tracking_uri(cfg: RunConfig) -> str:
    """``$MLFLOW_TRACKING_URI``, else the SQLite store ``<output_dir>/mlflow.db``."""
    default = f"sqlite:///{(Path(cfg.output_dir) / 'mlflow.db').resolve()}"
    return os.environ.get("MLFLOW_TRACKING_URI") or default


class Tracker:
    """One melalib run's MLflow records: the parent run and a nested run per fold."""

    def __init__(self, cfg: RunConfig, run: RunDir) -> None:
        mlflow = _mlflow()
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        self.client = mlflow.MlflowClient(tracking_uri(cfg))
        self.cfg, self.run = cfg, run
        self.experiment_id = self._experiment()
        self.parent_id = self._find_or_create({RUN_TAG: str(run.path)}, cfg.name, {})

    def _experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.cfg.name)
        if found is not None:
            return str(found.experiment_id)
        where = None if os.environ.get("MLFLOW_TRACKING_URI") else \
            (Path(self.cfg.output_dir).resolve() / "mlartifacts" / self.cfg.name).as_uri()
        return str(self.client.create_experiment(self.cfg.name, artifact_location=where))

    def _find_or_create(self, tags: dict[str, str], name: str, extra: dict[str, Any]) -> str:
        """The run carrying ``tags`` in the experiment, else a new one with the config (and
        ``extra``) as params."""
        from mlflow.entities import Param  # optional dependency, as above

        quoted = {k: v.replace("'", "\\'") for k, v in tags.items()}  # a path may hold '
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in quoted.items())
        found = self.client.search_runs([self.experiment_id], query, max_results=1)
        if found:
            return str(found[0].info.run_id)
        run_id = str(self.client.create_run(self.experiment_id, run_name=name,
                                            tags=tags).info.run_id)
        params = {**self.cfg.to_flat(), **extra}
        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000])
                                              for k, v in params.items()])
        return run_id

    def fold_run(self, fold: int) -> str:
        """The nested run of ``fold`` (created on first use)."""
        return self._find_or_create({PARENT_TAG: self.parent_id, FOLD_TAG: str(fold)},
                                    f"fold{fold}", {"fold": fold})

    def log(self, run_id: str, values: dict[str, Any], step: int = 0) -> None:
        """Numeric ``values`` as metrics at ``step`` (booleans and text are left out)."""
        from mlflow.entities import Metric  # optional dependency, as above

        now = int(pd.Timestamp.now().timestamp() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def log_scores(self, run_id: str, task: Task, frame: pd.DataFrame) -> None:
        """A prediction frame's metrics (``oof_<metric>``) and their 95 % CIs."""
        labels, probs = frame["label"].to_numpy(), probabilities(task, frame)
        self.log(run_id, {f"oof_{k}": v for k, v in evaluate(task, labels, probs).items()})
        try:
            cis = evaluate_with_ci(task, labels, probs, groups=frame["group_id"].to_numpy(),
                                   n_boot=N_BOOT)
        except MetricError:  # a fold too small for its CIs keeps its point estimates
            return
        self.log(run_id, {f"{row.metric}_ci_{side}": getattr(row, side)
                          for row in cis.itertuples() for side in ("low", "high")})

    def figure(self, run_id: str, fig: Any, name: str) -> None:
        """A matplotlib figure as the PNG artifact ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            fig.savefig(path, dpi=100)
            self.client.log_artifact(run_id, str(path), artifact_path="figures")


_TRACKERS: dict[str, Tracker] = {}


def tracker(cfg: RunConfig, run: RunDir) -> Tracker | None:
    """The run's `Tracker` (one per run folder and process), None when ``mlflow=false``."""
    if not cfg.train.mlflow:
        return None
    key = str(run.path)
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(cfg, run)
    return _TRACKERS[key]


def log_epoch(cfg: RunConfig, run: RunDir, fold: int, row: dict[str, Any]) -> None:
    """One history row (losses, primary metric, learning rate) at step = its epoch."""
    t = tracker(cfg, run)
    if t is not None:
        t.log(t.fold_run(fold), {k: v for k, v in row.items() if k not in ("fold", "epoch")},
              step=int(row["epoch"]))


def end_fold(cfg: RunConfig, run: RunDir, fold: int, task: Task, oof: pd.DataFrame) -> None:
    """The finished fold: its OOF metrics with CIs and its learning curve; run closed."""
    t = tracker(cfg, run)
    if t is None:
        return
    from . import plots  # matplotlib: only when tracking

    run_id = t.fold_run(fold)
    t.log_scores(run_id, task, oof)
    history = run.history()
    history = history[history["fold"] == fold] if "fold" in history.columns else history
    if len(history):
        fig = plots.learning_curves(history, metric=task.primary_metric)
        t.figure(run_id, fig, f"learning_curves_fold{fold}.png")
    t.client.set_terminated(run_id)


def end_run(cfg: RunConfig, run: RunDir, task: Task) -> None:
    """Every fold done: the pooled OOF metrics with CIs and the run's figures on the
    parent, which is then closed."""
    t = tracker(cfg, run)
    if t is None or not run.complete:
        return
    t.log_scores(t.parent_id, task, run.oof())
    for png in sorted(run.figures_dir().glob("*.png")):
        t.client.log_artifact(t.parent_id, str(png), artifact_path="figures")
    t.client.set_terminated(t.parent_id)
