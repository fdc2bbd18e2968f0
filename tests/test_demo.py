"""`melalib demo`: the notebook series run headless, resumable, never clobbering folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from melalib import cli
from melalib import demo as demo_mod
from melalib.errors import ConfigError, RunExistsError
from melalib.notebook import NOTEBOOKS
from melalib.presets import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_notebooks import executed_series  # one executed series per session


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return executed_series(tmp_path_factory.getbasetemp())


class FakePapermill:
    """Stands in for papermill.execute_notebook: records calls, writes the output file."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, source: str, target: str, parameters: dict[str, Any], **kwargs: Any
                 ) -> None:
        self.calls.append((Path(source).name, dict(parameters)))
        nbformat.write(nbformat.v4.new_notebook(), target)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePapermill:
    import papermill

    fake = FakePapermill()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    return fake


def test_quick_demo_runs_the_series_into_one_folder(executed: dict[str, Any]) -> None:
    summary = executed["summary"]
    out = summary["output_dir"]
    assert summary["run_dir"] == out / "synthetic"
    assert [p.name for p in summary["notebooks"]] == list(NOTEBOOKS)
    assert all(p.is_file() for p in summary["notebooks"])
    state = json.loads((out / "demo.json").read_text())
    assert state["done"] == list(NOTEBOOKS) and set(state["seconds"]) == set(NOTEBOOKS)
    assert state["parameters"]["preset"] == "tiny"
    assert state["parameters"]["output_dir"] == str(out)
    assert summary["figures"] and all(p.is_file() for p in summary["figures"])
    assert summary["submission"].is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary["metrics"]))
    assert metrics["primary_metric"] == "roc_auc"
    assert 0.0 <= metrics["oof_primary"] <= 1.0
    ci = metrics["oof_ci"]  # patient-level bootstrap of the same OOF score
    assert ci["estimate"] == pytest.approx(metrics["oof_primary"])
    assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert metrics["baseline_ci"]["estimate"] == pytest.approx(
        metrics["baseline_oof"]["roc_auc"])
    # ensemble_method=best: the weights of the candidate with the best OOF score (issue 23)
    from melalib.ensemble import blend

    best = blend([out / "synthetic", out / "synthetic_meta_only"], "best")
    assert state["parameters"]["ensemble_method"] == "best"
    assert metrics["ensemble_weights"] == pytest.approx(best.weights.tolist())
    assert (out / "synthetic_meta_only" / "oof.csv").is_file()


def test_rerun_of_a_finished_demo_executes_nothing(executed: dict[str, Any],
                                                   fake: FakePapermill) -> None:
    summary = executed["summary"]
    again = demo_mod.run_demo(summary["output_dir"], quick=True, progress=False,
                              data_dir=executed["data_dir"])
    assert fake.calls == []
    assert again["metrics"] == summary["metrics"]


def test_rerun_continues_after_the_last_finished_notebook(tmp_path: Path,
                                                          fake: FakePapermill) -> None:
    out = tmp_path / "demo"
    demo_mod.run_demo(out, quick=True, progress=False, data_dir=tmp_path / "data")
    assert fake.names == list(NOTEBOOKS)
    state = json.loads((out / "demo.json").read_text())
    state["done"] = list(NOTEBOOKS[:2])  # as if 03 had been interrupted
    (out / "demo.json").write_text(json.dumps(state))
    fake.calls.clear()
    demo_mod.run_demo(out, quick=True, progress=False, data_dir=tmp_path / "data")
    assert fake.names == list(NOTEBOOKS[2:])
    # every notebook receives the same full parameter set (one shared run)
    params = [p for _, p in fake.calls]
    assert all(p == params[0] for p in params)
    assert params[0]["name"] == "synthetic" and params[0]["output_dir"] == str(out)
    assert params[0]["runs"] == "synthetic,synthetic_meta_only"


def test_other_parameters_are_refused_unless_overwrite(tmp_path: Path,
                                                       fake: FakePapermill) -> None:
    out = tmp_path / "demo"
    demo_mod.run_demo(out, quick=True, progress=False, data_dir=tmp_path / "data")
    marker = out / "synthetic" / "marker.txt"
    marker.parent.mkdir()
    marker.write_text("x")
    with pytest.raises(RunExistsError, match="other parameters"):
        demo_mod.run_demo(out, quick=False, progress=False, data_dir=tmp_path / "data")
    assert marker.is_file() and len(fake.calls) == len(NOTEBOOKS)
    demo_mod.run_demo(out, quick=False, overwrite=True, progress=False,
                      data_dir=tmp_path / "data")
    assert not marker.exists()
    assert len(fake.calls) == 2 * len(NOTEBOOKS)
    assert fake.calls[-1][1]["preset"] == "synthetic_demo"


def test_a_folder_that_is_not_a_demo_is_never_deleted(tmp_path: Path,
                                                      fake: FakePapermill) -> None:
    keep = tmp_path / "mine.txt"
    keep.write_text("precious")
    with pytest.raises(RunExistsError, match="not a melalib demo folder"):
        demo_mod.run_demo(tmp_path, quick=True, overwrite=True, progress=False)
    assert keep.read_text() == "precious" and fake.calls == []


def test_unknown_parameters_are_refused(tmp_path: Path, fake: FakePapermill) -> None:
    with pytest.raises(ConfigError, match="epoch"):
        demo_mod.run_demo(tmp_path / "d", quick=True, progress=False, parameters={"epoch": 2})
    assert not (tmp_path / "d").exists() and fake.calls == []


def test_demo_parameters_follow_the_presets(tmp_path: Path) -> None:
    quick = demo_mod.demo_parameters(tmp_path / "q", quick=True, data_dir=tmp_path / "data")
    full = demo_mod.demo_parameters("outputs/demo", quick=False)
    # the preset itself is passed, so the notebooks resolve it as any other preset (under
    # their parameters) and run.json names it
    assert quick["preset"] == "tiny" and full["preset"] == "synthetic_demo"
    assert not set(PRESETS["synthetic_demo"]) & set(full)
    assert quick["output_dir"] == str(tmp_path / "q")
    assert Path(full["output_dir"]).is_absolute() and full["output_dir"].endswith("outputs/demo")
    assert Path(full["data_dir"]).name == "data" and Path(full["data_dir"]).is_absolute()


def test_cli_demo_calls_run_demo(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    def fake_run_demo(**kw: Any) -> dict[str, Any]:
        seen.update(kw)
        return {"seconds": {"01_eda.ipynb": 5.0, "02_features.ipynb": 7.0},
                "output_dir": Path("somewhere"),
                "run_dir": Path("somewhere/synthetic"),
                "metrics": {"primary_metric": "roc_auc", "oof_primary": 0.912,
                            "oof_ci": {"low": 0.85, "high": 0.95},
                            "baseline_oof": {"roc_auc": 0.701}, "baseline_ci": None}}

    monkeypatch.setattr(demo_mod, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--quick", "--output-dir", "somewhere"]) == 0
    assert seen == {"output_dir": "somewhere", "quick": True, "overwrite": False}
    out = capsys.readouterr().out
    assert "image+metadata model 0.912 [0.850, 0.950]" in out
    assert "metadata-only baseline 0.701;" not in out and "baseline 0.701\n" in out
    assert "(12 s of notebooks)" in out
    # the closing lines say what OOF and the CI mean, and flag --quick numbers
    assert "OOF (out-of-fold): each image scored by the fold model that never trained" in out
    assert "95 % confidence interval, bootstrap resampling patients" in out
    assert "--quick: smoke values" in out and "not a result" in out


def test_cli_demo_names_the_submission(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    submission = tmp_path / "synthetic" / "submission.csv"
    submission.parent.mkdir()
    submission.write_text("image_name,target\n")
    monkeypatch.setattr(demo_mod, "run_demo", lambda **kw: {
        "seconds": {}, "output_dir": tmp_path, "run_dir": submission.parent,
        "submission": submission, "metrics": {"primary_metric": "roc_auc"}})
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert f"submission (notebook 04's blend): {submission}" in out
    assert "smoke values" not in out


def test_quick_demo_has_its_own_default_folder(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path, fake: FakePapermill) -> None:
    """`melalib demo` then `melalib demo --quick` (both without --output-dir) write two
    folders; in one shared folder the refusal names the way that keeps the full demo."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(demo_mod, "run_demo", lambda **kw: seen.append(kw) or {
        "seconds": {}, "output_dir": Path("x"), "run_dir": Path("x/synthetic"), "metrics": {}})
    assert cli.main(["demo"]) == 0 and cli.main(["demo", "--quick"]) == 0
    folders = [demo_mod.demo_parameters(kw["output_dir"], kw["quick"])["output_dir"]
               for kw in seen]
    assert folders[0].endswith("outputs/demo") and folders[1].endswith("outputs/demo-quick")
    monkeypatch.undo()
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake)
    demo_mod.run_demo(tmp_path / "d", progress=False, data_dir=tmp_path / "data")
    with pytest.raises(RunExistsError, match=r"another output_dir.*to keep it"):
        demo_mod.run_demo(tmp_path / "d", quick=True, progress=False, data_dir=tmp_path / "data")


def test_the_python3_kernel_runs_this_interpreter() -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    cmd = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert Path(cmd[0]).resolve() == Path(sys.executable).resolve(), (spec.resource_dir, cmd)


@pytest.mark.slow
def test_full_demo_on_the_synthetic_default(tmp_path: Path) -> None:
    summary = demo_mod.run_demo(tmp_path / "demo", progress=False, data_dir=tmp_path / "data")
    metrics = summary["metrics"]
    assert metrics["oof_primary"] is not None and 0.0 <= metrics["oof_primary"] <= 1.0
    assert metrics["test"] is not None  # 60 patients: the test split has both classes
    assert len(summary["figures"]) >= 12
