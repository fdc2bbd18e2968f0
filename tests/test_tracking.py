"""`mlflow=true` against a real local MLflow store (SQLite), read back with MLflow's client:
one parent run per melalib run, one nested run per fold, the config as params, per-epoch
metrics, each fold's OOF metrics with CIs and the run's figures as artifacts. Skipped when
mlflow is not installed (`pip install 'melalib[mlflow]'`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from melalib import cli
from melalib.config import RunConfig
from melalib.engine import train

mlflow = pytest.importorskip("mlflow")


def _runs(out: Path, name: str) -> tuple[object, list[object], object]:
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "melalib.run_dir" in r.data.tags]
    assert len(parents) == 1, [r.data.tags for r in runs]
    folds = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId")
                    == parents[0].info.run_id), key=lambda r: int(r.data.tags["melalib.fold"]))
    assert len(runs) == 1 + len(folds)
    return client, folds, parents[0]


def test_mlflow_logs_one_parent_and_a_nested_run_per_fold(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    cfg = RunConfig.from_preset("tiny", data_dir=str(tmp_path / "data"), output_dir=str(out),
                                name="tracked", mlflow=True, epochs=2, synthetic_patients=24)
    train(cfg, fold=0, progress=False)
    run_dir = out / "tracked"
    (run_dir / "figures").mkdir(exist_ok=True)
    (run_dir / "figures" / "03_learning_curves.png").write_bytes(b"\x89PNG stand-in")
    summary = train(cfg, fold=1, progress=False)  # a second process would resume the same way
    client, folds, parent = _runs(out, "tracked")
    assert [r.data.tags["melalib.fold"] for r in folds] == ["0", "1"]
    assert parent.data.params["epochs"] == "2" and parent.data.params["backbone"] == "resnet10t"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for fold in folds:
        k = int(fold.data.tags["melalib.fold"])
        assert fold.data.params["fold"] == str(k) and fold.info.status == "FINISHED"
        history = pd.read_csv(run_dir / f"history_fold{k}.csv")
        logged = client.get_metric_history(fold.info.run_id, "train_loss")
        assert [m.step for m in logged] == history["epoch"].tolist()
        assert [m.value for m in logged] == pytest.approx(history["train_loss"].tolist())
        final = fold.data.metrics
        assert final["oof_roc_auc"] == pytest.approx(metrics["per_fold"][str(k)]["roc_auc"])
        assert final["roc_auc_ci_low"] <= final["oof_roc_auc"] <= final["roc_auc_ci_high"]
        names = [a.path for a in client.list_artifacts(fold.info.run_id, "figures")]
        assert names == [f"figures/learning_curves_fold{k}.png"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["oof_roc_auc"] == pytest.approx(summary["oof_primary"])
    assert "roc_auc_ci_high" in parent.data.metrics
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "figures")] == \
        ["figures/03_learning_curves.png"]


def test_mlflow_without_the_package_is_refused_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    rc = cli.main(["train", "--preset", "tiny", "--set", f"data_dir={tmp_path / 'data'}",
                   "--set", "mlflow=true", "--output-dir", str(tmp_path / "out")])
    assert rc == 2 and "pip install 'melalib[mlflow]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
