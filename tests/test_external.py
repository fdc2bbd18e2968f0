"""External validation (`melalib.external`, ``melalib evaluate``): a tiny synthetic HAM10000-like
run scored on a synthetic MILK10k-like table; the run-like folder it writes, the classes it
drops, the folders it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import benchmark_script, ham_run_and_milk_table
from sklearn.metrics import roc_auc_score

from melalib import cli
from melalib.config import RunConfig
from melalib.data.load import load_table
from melalib.errors import ConfigError, DataError, RunExistsError
from melalib.external import (
    blank_metadata,
    diagnosis_table,
    evaluate_external,
    oof_table,
    write_evaluation,
)
from melalib.metrics import confusion, evaluate
from melalib.predictions import predicted_labels
from melalib.runs import RunDir, check_report_folder, write_report_folder
from melalib.targets import DIAG9, DIAGNOSIS_MAP
from melalib.tasks import HAM7, MILK11


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunConfig]:
    return ham_run_and_milk_table(tmp_path_factory.mktemp("external"))


def test_scores_only_shared_classes_and_writes_a_run_like_folder(trained, tmp_path: Path
                                                                 ) -> None:
    run, ext = trained
    table = load_table(ext.data)
    assert table.task == MILK11
    ev = evaluate_external(run, table, n_boot=20, progress=False)
    assert ev.mapping.task.classes == HAM7.classes
    labelled = table.df[table.df["label"] >= 0]
    milk_only = labelled["label"].isin([MILK11.index_of(c) for c in
                                        ("BEN_OTH", "INF", "MAL_OTH", "SCCKA")])
    assert len(ev.frame) == int((~milk_only).sum()) == ev.dropped["n_scored"]
    assert sum(ev.dropped["dropped_rows_per_class"].values()) == int(milk_only.sum())
    out = write_evaluation(ev, tmp_path / "ham_on_milk").path
    view = RunDir.read(out)
    assert view.task == ev.mapping.task
    oof = view.oof()
    probs = oof[view.task.prob_columns].to_numpy()
    y = oof["label"].to_numpy()
    stored = json.loads(view.metrics_path().read_text())
    assert stored["external"]["balanced_accuracy"] == pytest.approx(
        evaluate(view.task, y, probs)["balanced_accuracy"])
    matrix = pd.read_csv(view.report_path("confusion")).set_index("true")
    assert matrix[list(HAM7.classes)].to_numpy().tolist() == confusion(
        y, predicted_labels(view.task, probs), 7, include_ties=True)[:, :7].tolist()
    names = {p.name for p in view.figures_dir().glob("*.png")}
    assert {"external_confusion.png", "external_reliability.png"} <= names
    assert view.table().df["source_label"].isin(range(MILK11.n_classes)).all()
    shift = json.loads(view.report_path("shift").read_text())
    assert shift["n_flagged"] == int(oof["image_shift_flag"].sum())
    assert shift["n"] == len(oof)
    in_domain = pd.concat([RunDir.read(run).oof(k) for k in (0, 1)])["image_shift"]
    y = np.r_[np.zeros(len(in_domain)), np.ones(len(oof))]
    assert shift["auroc_vs_training_oof"] == pytest.approx(
        roc_auc_score(y, np.r_[in_domain, oof["image_shift"]]))


def test_missing_images_are_an_error_unless_skipped_and_counted(trained, tmp_path: Path
                                                               ) -> None:
    run, ext = trained
    table = load_table(ext.data)
    scored = table.df.index[table.df["label"] == MILK11.index_of("NV")]
    table.df.loc[scored[0], "image_path"] = str(tmp_path / "gone.png")
    with pytest.raises(DataError, match=r"missing.*gone\.png") as info:
        evaluate_external(run, table, n_boot=10, progress=False)
    assert info.value.row == int(scored[0]) + 1
    ev = evaluate_external(run, table, n_boot=10, skip_missing_images=True, progress=False)
    assert ev.dropped["missing_images"] == 1


def test_refuses_folders_it_did_not_write_and_its_inputs(trained, tmp_path: Path) -> None:
    run, _ = trained
    with pytest.raises(RunExistsError, match="training run"):
        check_report_folder(run, "evaluate", overwrite=True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(RunExistsError, match="not a melalib report"):
        check_report_folder(foreign, "evaluate", overwrite=True)
    with pytest.raises(RunExistsError, match="overlaps the input"):
        check_report_folder(tmp_path / "data" / "out", "evaluate", inputs=[tmp_path / "data"])
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_cli_writes_replaces_its_own_folder_and_refuses_others(
        trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, ext = trained
    table = load_table(ext.data)
    df = table.df[table.df["label"] >= 0]
    csv = tmp_path / "ext.csv"
    pd.DataFrame({"image": df["image_path"], "label": np.asarray(MILK11.classes)[df["label"]],
                  "age": df["age"], "sex": df["sex"], "site": df["site"]}).to_csv(csv, index=False)
    out = tmp_path / "report"
    args = ["evaluate", str(run), "--csv", str(csv), "--out", str(out), "--n-boot", "10"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "SCCKA" in printed and "balanced_accuracy" in printed
    assert RunDir.read(out).task.classes == HAM7.classes
    assert cli.main(args) == 2  # an earlier report: replaced only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 0
    assert cli.main(["evaluate", str(run), "--csv", str(csv), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (run / "config.yaml").is_file()


def test_oof_mode_reproduces_the_training_oof_and_blanked_metadata_changes_it(
        trained, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = trained
    ev = evaluate_external(run, oof_table(run), oof=True, n_boot=10, progress=False)
    stored = RunDir.read(run).oof().set_index("image_id")
    got = ev.frame.set_index("image_id")
    columns = HAM7.prob_columns
    assert len(got) == len(stored)
    assert np.allclose(got[columns], stored.loc[got.index, columns], atol=1e-5)
    assert np.allclose(got["image_shift"], stored.loc[got.index, "image_shift"], rtol=1e-3)
    blank = evaluate_external(run, blank_metadata(oof_table(run)), oof=True, n_boot=10,
                              progress=False)
    assert not np.allclose(blank.frame[columns], ev.frame[columns])
    assert cli.main(["evaluate", str(run), "--oof", "--blank-meta", "--n-boot", "10"]) == 0
    assert RunDir.read(run.parent / "ham_on_oof_blank_meta").oof()["fold"].eq(-1).all()
    assert cli.main(["evaluate", str(run), "--oof", "--dataset", "ham10000"]) == 2
    assert "--oof" in capsys.readouterr().err


def test_a_failed_write_keeps_the_earlier_report(tmp_path: Path) -> None:
    def fill(run: RunDir) -> None:
        (run.path / "oof.csv").write_text("first")

    out = tmp_path / "report"
    write_report_folder(out, "evaluate", fill)

    def broken(run: RunDir) -> None:
        (run.path / "oof.csv").write_text("half")
        raise DataError("disk trouble")

    with pytest.raises(DataError):
        write_report_folder(out, "evaluate", broken, overwrite=True)
    assert (out / "oof.csv").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging left


def test_notebook_06_tables(trained, tmp_path: Path) -> None:
    from melalib import notebook as nb

    run, _ = trained
    cfg = RunDir.read(run).cfg
    table = nb.external_table(cfg, "synthetic", seed=4)
    assert table.task == HAM7
    assert table.content_hash() != RunDir.read(run).table().content_hash()  # drawn anew
    assert nb.trained_run(cfg).path == run  # a finished run is read, not retrained
    with pytest.raises(ConfigError, match="external_dataset"):
        nb.external_table(cfg.with_overrides(["dataset=ham10000"]), "synthetic")


def test_a_binary_table_is_scored_by_its_diagnosis_words(trained, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    run, ext = trained
    binary = load_table(ext.with_overrides(["synthetic_task=binary"]).data)
    table = diagnosis_table(binary)
    assert table.task == DIAG9
    ev = evaluate_external(run, table, n_boot=10, progress=False)
    assert ev.mapping.task.kind == "multiclass" and "mel" in ev.mapping.task.classes
    words = binary.train["diagnosis"].str.lower().map(DIAGNOSIS_MAP)
    shared = {"AK", "BCC", "BKL", "DF", "MEL", "NV", "VASC"}
    assert len(ev.frame) == int(words.isin(shared).sum())
    binary_ev = evaluate_external(run, binary, n_boot=10, progress=False)
    assert binary_ev.mapping.task.kind == "binary"  # without: melanoma vs rest
    csv = tmp_path / "binary.csv"
    df = binary.train
    df.assign(image=df["image_path"], label=df["label_name"]).to_csv(csv, index=False)
    assert cli.main(["evaluate", str(run), "--csv", str(csv), "--by-diagnosis",
                     "--out", str(tmp_path / "dx"), "--n-boot", "10"]) == 2
    err = capsys.readouterr().err  # a custom CSV's task is not the binary melanoma task
    assert "scoring by diagnosis needs a binary melanoma table" in err
    assert err.count("\n") == 1


# ----------------------------------------------------------- benchmarks/external_results
def _bench():
    return benchmark_script("external_results")


def test_benchmark_row_holds_in_domain_blanked_and_external_figures(trained, tmp_path: Path
                                                                    ) -> None:
    bench = _bench()
    run, ext = trained
    table = load_table(ext.data)
    args = bench.parse([str(run), "--fold", "0", "--n-boot", "20"])
    res = bench.measure_run(str(run), table, "milk10k", args)
    oof = RunDir.read(run).oof(0)
    task = RunDir.read(run).task
    own = res["in_domain"]["all"]
    assert own["n"] == len(oof)
    assert own["balanced_accuracy"]["estimate"] == pytest.approx(evaluate(
        task, oof["label"].to_numpy(), oof[task.prob_columns].to_numpy())["balanced_accuracy"])
    assert res["in_domain_blank_meta"]["n"] == len(oof)  # fold 0's rows, re-predicted
    ev = evaluate_external(run, table, n_boot=20, progress=False)
    assert res["external"]["n"] == len(ev.frame)
    assert res["external"]["balanced_accuracy"]["estimate"] == pytest.approx(
        ev.metrics["balanced_accuracy"])
    assert res["external"]["shift"]["n"] == len(ev.frame)
    per_class = res["external"]["per_class"]
    assert [per_class[c]["recall"] for c in HAM7.classes] == pytest.approx(
        ev.per_class["recall"].tolist())
    assert sum(v["support"] for v in per_class.values()) == len(ev.frame)
    (row,) = bench.render([res])[2:]
    assert f"{own['balanced_accuracy']['estimate']:.3f}" in row
    assert f"{res['external']['balanced_accuracy']['estimate']:.3f}" in row
    recorded = tmp_path / "external.json"
    recorded.write_text(json.dumps({"command": "python benchmarks/external_results.py x",
                                    "git_commit": "0" * 40, "results": [res]}))
    section = bench.render_section(recorded)
    assert section[0].startswith("## 6. External validation") and row in section
    assert any("misses the goals" in line or "meets the goals" in line for line in section)
    header = section.index(next(x for x in section if x.startswith("External recall")))
    assert section[header + 4].startswith(f"| {Path(res['run']).name} | "
                                          f"{per_class['akiec']['recall']:.2f} (")
    assert bench.render_section(tmp_path / "absent.json") == []


def test_benchmark_does_not_call_a_training_source_external(trained) -> None:
    bench = _bench()
    run, ext = trained
    args = bench.parse([str(run), "--fold", "0", "--n-boot", "20"])
    res = bench.measure_run(str(run), load_table(ext.data), "synthetic", args)
    assert "external" not in res
    assert "(trained on it" in bench.render([res])[2]


def test_benchmark_json_keeps_other_runs_rows_and_replaces_a_rerun(tmp_path: Path) -> None:
    bench = _bench()
    out = tmp_path / "external.json"
    out.write_text(json.dumps({"results": [{"run": "a", "v": 1}, {"run": "b", "v": 1}]}))
    rows = bench.merged(out, [{"run": "c", "v": 2}, {"run": "a", "v": 2}])
    assert rows == [{"run": "a", "v": 2}, {"run": "b", "v": 1}, {"run": "c", "v": 2}]
    assert bench.merged(tmp_path / "none.json", [{"run": "c"}]) == [{"run": "c"}]


def test_benchmark_scores_a_wider_model_on_the_shared_classes_in_domain_too() -> None:
    """A MILK10k-trained model's own OOF, scored as HAM10000 will be: MILK10k-only classes'
    rows dropped, their probability removed and the rest renormalised."""
    bench = _bench()
    rng = np.random.default_rng(0)
    labels = np.array([MILK11.index_of(c) for c in
                       ("MEL", "BEN_OTH", "NV", "SCCKA", "BCC", "VASC", "INF", "MEL")])
    probs = rng.dirichlet(np.ones(MILK11.n_classes), size=len(labels))
    oof = pd.DataFrame(probs, columns=MILK11.prob_columns).assign(
        label=labels, group_id=[f"g{i}" for i in range(len(labels))])
    task, y, scored, groups = bench.shared_oof(MILK11, HAM7, oof)
    kept = ~np.isin(labels, [MILK11.index_of(c) for c in ("BEN_OTH", "SCCKA", "INF")])
    assert [c.lower() for c in task.classes] == list(HAM7.classes)
    assert list(groups) == [g for g, k in zip(oof["group_id"], kept, strict=True) if k]
    assert [task.classes[k] for k in y] == [MILK11.classes[k] for k in labels[kept]]
    shared = [MILK11.index_of(c.upper()) for c in HAM7.classes]
    expected = probs[kept][:, shared]
    np.testing.assert_allclose(scored, expected / expected.sum(1, keepdims=True))
    assert bench.shared_oof(HAM7, MILK11, oof) is None  # HAM10000's classes: none dropped


def test_benchmark_reverse_row_and_section(trained, tmp_path: Path) -> None:
    """A MILK10k-like run scored on a HAM10000-like table: the row's in-domain cell is its
    shared-class OOF, the reverse subsection says both in-domain figures."""
    from melalib.engine import train

    bench = _bench()
    ham_run, ext = trained
    milk = RunConfig.from_dict({**ext.to_flat(), "name": "milk", "use_meta": False})
    train(milk, progress=False)
    ham_table = load_table(RunDir.read(ham_run).cfg.data)
    args = bench.parse([str(milk.run_dir), "--fold", "0", "--n-boot", "20"])
    res = bench.measure_run(str(milk.run_dir), ham_table, "ham10000", args)
    assert "in_domain_blank_meta" not in res  # image only: nothing to blank
    assert res["classes_trained"] == list(MILK11.classes)
    shared = bench.shared_oof(MILK11, HAM7, RunDir.read(milk.run_dir).oof(0))
    assert res["in_domain"]["shared"]["n"] == len(shared[1]) < res["in_domain"]["all"]["n"]
    (row,) = bench.render([res])[2:]
    assert _shown(res["in_domain"]["shared"]["balanced_accuracy"]) in row
    assert "no metadata input" in row and "`use_meta=False`" in row
    reverse = tmp_path / "reverse.json"
    reverse.write_text(json.dumps({"command": "python benchmarks/external_results.py m",
                                   "git_commit": "1" * 40, "results": [res]}))
    section = bench.render_reverse(reverse)
    assert section[0] == "### The reverse: MILK10k-trained models on HAM10000"
    text = "\n".join(section)
    assert row in text and "over its 11 classes" in text and "on the 7 shared classes" in text
    assert res["trained_by"].startswith("melalib ") and f"`{res['trained_by']}`" in text
    assert _shown(res["external"]["balanced_accuracy"]) in text
    assert bench.render_section(tmp_path / "absent.json", reverse) == []  # no section 6
    assert bench.render_reverse(tmp_path / "absent.json") == []


def _shown(ci: dict[str, float]) -> str:
    return f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def _ci_of(v: float) -> dict[str, float]:
    return {"estimate": v, "low": v - 0.05, "high": v + 0.05}


def test_benchmark_names_each_rows_commit_and_the_multi_source_rows_own_clinic(
        tmp_path: Path) -> None:
    bench = _bench()
    out = tmp_path / "external.json"
    out.write_text(json.dumps({"git_commit": "a" * 40, "results": [{"run": "x/old"}]}))
    rows = bench.merged(out, [{"run": "x/new", "git_commit": "b" * 40}])
    assert [r["git_commit"] for r in rows] == ["a" * 40, "b" * 40]  # the old row keeps its
    assert bench.commits({"git_commit": "b" * 40, "results": rows}) == (
        f"old at commit `{'a' * 10}`; new at commit `{'b' * 10}`")
    assert bench.commits({"git_commit": "c" * 40, "results": [{"run": "y"}]}) == (
        f"commit `{'c' * 10}`")
    single = {"run": "x/cc", "external": {"n": 3732, "balanced_accuracy": _ci_of(0.589),
                                          "melanoma_auc": _ci_of(0.838)},
              "in_domain": {"all": {"n": 2004, "balanced_accuracy": _ci_of(0.7)}}}
    multi = {"run": "x/both", "options": {"dataset": "ham10000+milk10k"}, "in_domain": {
        "all": {"n": 2749}, "ham10000": {"n": 1985},
        "milk10k": {"n": 764, "balanced_accuracy": _ci_of(0.657),
                    "melanoma_auc": _ci_of(0.891)}}}
    line = bench._multi_source_line([single, multi])
    assert line.startswith("both trained on both clinics: its 764 milk10k rows")
    assert "0.657" in line and "0.891" in line and "0.589 to 0.589" in line
    assert "are 1985 ham10000 images, not the single-source rows' 2004" in line
    assert bench._multi_source_line([single]) == ""
