"""`RunDir.read`: the one reader of run folders (a tiny trained run, a run-like folder, and
what is not a run), and `RunDir.start` adopting a folder holding only notebook outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melalib.config import RunConfig
from melalib.errors import ConfigError, RunExistsError
from melalib.predictions import fold_average
from melalib.runs import NOTEBOOK_OUTPUTS, RunDir, shared_task
from melalib.tasks import HAM7


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """The conftest tiny config (2 folds, 1 epoch of 2 steps) trained once."""
    from conftest import TINY

    from melalib.engine import train

    base = tmp_path_factory.mktemp("runs")
    cfg = RunConfig.from_dict({**TINY, "data_dir": str(base / "data"),
                               "output_dir": str(base / "out"), "name": "tiny"})
    train(cfg, progress=False)
    return RunDir.read(cfg.run_dir)


def test_read_a_trained_run(tiny_run: RunDir) -> None:
    run = tiny_run
    assert run.cfg is not None and run.cfg.name == "tiny" and run.complete
    assert run.task == run.table().task and run.task.name == "melanoma"
    assert run.done_folds() == [0, 1]
    oof = run.oof()  # the pooled oof.csv: every training row once, sorted by image_id
    train_ids = run.table().train["image_id"]
    assert sorted(oof["image_id"]) == sorted(train_ids) and oof["image_id"].is_monotonic_increasing
    by_fold = run.oof_by_fold()  # the folds' own files, in fold order
    assert by_fold["fold"].tolist() == sorted(by_fold["fold"].tolist())
    pd.testing.assert_frame_equal(by_fold.sort_values("image_id").reset_index(drop=True), oof)
    pd.testing.assert_frame_equal(run.oof(1), by_fold[by_fold["fold"] == 1].reset_index(
        drop=True))
    test = run.test_mean()
    folds = [pd.read_csv(run.test_path(k), dtype={"image_id": str}) for k in (0, 1)]
    pd.testing.assert_frame_equal(test, fold_average(folds, run.task))
    history = run.history()
    assert set(history["fold"]) == {0, 1} and len(history) == 2
    assert run.report("metrics")["folds_done"] == [0, 1]
    assert run.report("ensemble_report") == {}
    assert shared_task([run, run]) == run.task


def test_partly_done_run_pools_its_finished_folds(tiny_run: RunDir, tmp_path: Path) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_run.path, copy)
    (copy / "oof.csv").unlink()
    (copy / "oof_fold1.csv").unlink()
    run = RunDir.read(copy)
    assert not run.complete and run.done_folds() == [0]
    pd.testing.assert_frame_equal(run.oof(), tiny_run.oof(0))
    with pytest.raises(ConfigError, match="fold 1 has not finished"):
        run.oof(1)
    test = run.test_mean()  # the finished fold's test predictions only
    np.testing.assert_allclose(
        test["prob_melanoma"], pd.read_csv(run.test_path(0))["prob_melanoma"])
    (copy / "oof_fold0.csv").unlink()
    with pytest.raises(ConfigError, match="no fold has finished"):
        run.oof()
    assert run.test_mean() is None


def test_read_a_run_like_folder_without_config(tmp_path: Path) -> None:
    """``melalib stack`` writes table/ + oof.csv and no config.yaml: a run to read."""
    folder = tmp_path / "stack"
    (folder / "table").mkdir(parents=True)
    (folder / "table" / "task.json").write_text(
        '{"name": "ham10000", "kind": "multiclass", "classes": ["akiec", "bcc", "bkl", "df", '
        '"mel", "nv", "vasc"], "primary_metric": "balanced_accuracy"}')
    oof = pd.DataFrame({"image_id": ["0007", "0008"], "label": [1, 2],
                        **{c: [1 / 7, 1 / 7] for c in HAM7.prob_columns}})
    oof.to_csv(folder / "oof.csv", index=False)
    run = RunDir.read(folder)
    assert run.cfg is None and run.task == HAM7 and run.complete
    assert run.oof()["image_id"].tolist() == ["0007", "0008"]  # ids stay text
    assert run.test_mean() is None and run.done_folds() == []
    oof.iloc[:1].to_csv(folder / "test_fold3.csv", index=False)
    assert run.test_mean()["image_id"].tolist() == ["0007"]


def test_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing is not a melalib run: no such folder"):
        RunDir.read(tmp_path / "missing")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "oof.csv").write_text("image_id\n")
    with pytest.raises(ConfigError, match=r"notes is not a melalib run: no config.yaml .* no "
                                          r"table/task.json \+ oof.csv"):
        RunDir.read(tmp_path / "notes")
    cfg = RunConfig.from_dict({"output_dir": str(tmp_path), "name": "fresh"})
    RunDir.open(cfg)  # created, never trained: readable, but it has no table yet
    run = RunDir.read(cfg.run_dir)
    with pytest.raises(ConfigError, match="no stored table"):
        run.task  # noqa: B018
    with pytest.raises(ConfigError, match="no history"):
        run.history()
    (cfg.run_dir / "config.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read the run's config"):
        RunDir.read(cfg.run_dir)


def test_start_adopts_a_folder_holding_only_notebook_outputs(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({"output_dir": str(tmp_path), "name": "r", "epochs": 2})
    (cfg.run_dir / "figures").mkdir(parents=True)
    figure = cfg.run_dir / "figures" / "01_class_balance.png"
    figure.write_bytes(b"png")
    (cfg.run_dir / "features.json").write_text("{}")
    assert {"figures", "features.json"} <= set(NOTEBOOK_OUTPUTS)
    run = RunDir.open(cfg)  # what 01 and 02 left stays, the folder becomes the run
    assert run.path == cfg.run_dir and (cfg.run_dir / "run.json").is_file()
    assert figure.read_bytes() == b"png" and (cfg.run_dir / "features.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # nothing renamed aside
    assert RunDir.open(cfg).path == cfg.run_dir  # same config: resumed
    with pytest.raises(RunExistsError, match="epochs"):
        RunDir.open(cfg.with_overrides({"epochs": 3}))
    foreign = RunConfig.from_dict({"output_dir": str(tmp_path), "name": "mine"})
    (foreign.run_dir / "figures").mkdir(parents=True)
    (foreign.run_dir / "notes.txt").write_text("keep")
    with pytest.raises(RunExistsError, match="not a melalib run"):
        RunDir.open(foreign)
    assert (foreign.run_dir / "notes.txt").read_text() == "keep"


def test_every_file_a_run_holds_is_in_the_layout(tiny_run: RunDir) -> None:
    """`LAYOUT` is the whole layout: what training wrote (the table's and the checkpoints'
    folders included) is all declared there, and `RunDir.owns` protects each of it."""
    from melalib.runs import LAYOUT, RUN_ENTRIES

    names = sorted(p.name for p in tiny_run.path.iterdir())
    undeclared = [n for n in names if RUN_ENTRIES.fullmatch(n) is None]
    assert undeclared == []
    assert all(tiny_run.owns(tiny_run.path / n) for n in names)
    for key in ("config", "provenance", "table", "checkpoints", "oof", "metrics", "log"):
        assert tiny_run.file(key).exists(), key
    for key in ("history", "features", "fold_oof", "fold_record", "fold_metrics", "fold_test"):
        assert tiny_run.file(key, 1).is_file(), key
    for key in ("shift", "missing_images", "unlisted_images", "bad_images", "ci"):
        assert tiny_run.owns(LAYOUT[key].path(tiny_run.path, 3)), key


def test_layout_text_is_the_documented_layout(repo_root: Path) -> None:
    """docs/architecture.md shows `layout_text()` verbatim: the page cannot drift."""
    from melalib.runs import layout_text

    assert layout_text() in (repo_root / "docs" / "architecture.md").read_text()


def test_provenance_and_task_are_read_once_per_view(tiny_run: RunDir, monkeypatch) -> None:
    """`RunDir.info` reads run.json once per view (a copy each time), `RunDir.task` the
    stored task once (notebook 04 asks each run for it many times), and `RunDir.table`
    takes the view's task instead of reading task.json again."""
    view, expected = RunDir.read(tiny_run.path), tiny_run.task
    reads = []
    original = Path.read_text

    def counting(self: Path, *args, **kwargs):
        if self.name in (tiny_run.file("provenance").name, "task.json"):
            reads.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    first = view.info()
    first["seed"] = "changed"
    assert view.info()["seed"] == tiny_run.cfg.train.seed and view.table_root()
    view.table()
    assert reads.count("run.json") == 1
    assert view.task == view.task == expected
    assert reads.count("task.json") == 1  # by table(), for the view: task reads no more


def test_stack_evaluate_and_runs_share_one_provenance_record(tiny_run: RunDir,
                                                             tmp_path: Path) -> None:
    from melalib.runs import provenance, write_provenance

    keys = set(provenance())
    assert {"created", "command", "versions", "git_commit", "platform"} <= keys
    assert keys <= set(tiny_run.info())  # a training run's record holds every field
    written = write_provenance(tmp_path, kind="stack", inputs=["a"])
    assert set(RunDir(tmp_path, None).info()) == keys | {"kind", "inputs"}
    assert written == RunDir(tmp_path, None).file("provenance")


def test_a_view_reads_its_task_once(tmp_path: Path) -> None:
    """`RunDir.table` takes the task the view has read (notebook 04 reads each run's
    task.json once): a task.json spoilt after the first read is not read again."""
    from melalib.table import TASK_FILE, LesionTable
    from melalib.tasks import MELANOMA

    df = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "image_path": ["/x/a.jpg"] * 4,
                       "group_id": ["p0", "p0", "p1", "p2"], "label": [0, 1, 0, 1],
                       "label_name": ["benign", "melanoma", "benign", "melanoma"],
                       "age": [40.0, 50.0, np.nan, 60.0], "sex": "male", "site": "torso",
                       "source": "toy", "split": "train"})
    view = RunDir(tmp_path / "run", None)
    LesionTable(df, MELANOMA, "toy.csv").validate().save(view.table_dir())
    assert view.task == MELANOMA
    (view.table_dir() / TASK_FILE).write_text("spoilt")
    table = view.table()
    assert table.task == MELANOMA and table.df["image_id"].tolist() == ["a", "b", "c", "d"]
    with pytest.raises(ValueError):  # a fresh load reads the file
        LesionTable.load(view.table_dir())
    assert LesionTable.load(view.table_dir(), task=MELANOMA).task == MELANOMA
