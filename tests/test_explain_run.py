"""`melalib explain` end to end on a tiny synthetic run (true masks known): maps, measures
and baselines into a folder the command owns, from another working directory (the run's
table keeps relative image paths)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, benchmark_script

from melalib.cli import main
from melalib.config import RunConfig
from melalib.data.synthetic import make_synthetic
from melalib.engine import train
from melalib.runs import RunDir
from melalib.table import LesionTable


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder holding data/ and outputs/tiny, trained on a table whose image paths
    are relative to the project (as the HAM10000 adapter's ``../shared/data/...``)."""
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cfg = RunConfig.from_dict({**TINY, "data_dir": "data", "output_dir": "outputs",
                                   "name": "tiny", "device": "cpu"})
        table = make_synthetic("data", "binary", n_patients=16, image_size=32, seed=0)
        df = table.df.assign(image_path=[os.path.relpath(p) for p in table.df["image_path"]])
        train(cfg, table=LesionTable(df, table.task), progress=False)
    return root


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stored_table_keeps_relative_paths_that_resolve_from_anywhere(
        project: Path, elsewhere: Path) -> None:
    run = RunDir.read(project / "outputs" / "tiny")
    stored = pd.read_csv(run.table_dir() / "table.csv")
    assert not os.path.isabs(stored["image_path"].iloc[0])  # the file is as it was
    paths = run.table().df["image_path"]
    assert all(os.path.isabs(p) and Path(p).is_file() for p in paths)
    info = json.loads((run.path / "run.json").read_text())
    assert info["table_root"] == str(project)


def test_an_older_run_without_a_recorded_root_resolves_through_output_dir(
        project: Path, elsewhere: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "copy"
    shutil.copytree(project, old)  # the project moved: its run has no valid record ...
    info_file = old / "outputs" / "tiny" / "run.json"
    info = json.loads(info_file.read_text())
    del info["table_root"]  # ... and, like runs before issue 25, no record at all
    info_file.write_text(json.dumps(info))
    paths = RunDir.read(old / "outputs" / "tiny").table().df["image_path"]
    assert all(p.startswith(str(old)) and Path(p).is_file() for p in paths)


def test_masks_follow_the_checkpoints_framing_not_the_run_config(
        project: Path, tmp_path: Path) -> None:
    """The framing a mask is mapped through is the checkpoint's stored preprocessing: a run
    whose config.yaml says otherwise (edited, or written by another melalib) still gets the
    framing its model was trained with."""
    import shutil

    import yaml

    from melalib.explain import explain, select_rows

    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    run = RunDir.read(copy / "outputs" / "tiny")
    config_file = run.file("config")
    cfg = yaml.safe_load(config_file.read_text())
    assert cfg["data"]["aspect"] == "squash"
    cfg["data"]["aspect"] = "crop"
    config_file.write_text(yaml.safe_dump(cfg))
    run = RunDir.read(copy / "outputs" / "tiny")
    assert run.cfg.data.aspect == "crop"
    rows = select_rows(run, ids=[str(run.oof()["image_id"].iloc[0])])
    assert explain(run, rows, device="cpu").aspect == "squash"


def _explain(run: Path, out: Path, *extra: str) -> int:
    return main(["explain", str(run), "--out", str(out), "--n-boot", "20", "--device", "cpu",
                 *extra])


def test_explain_cli_from_another_directory_writes_measures_and_baselines(
        project: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = project / "outputs" / "tiny"
    out = elsewhere / "maps"
    assert _explain(run, out, "--kind", "wrong", "--top", "3", "--floor", "--faithfulness",
                    "--layer", "finer", "--method", "gradcam++") == 0
    printed = capsys.readouterr().out
    assert "concentration" in printed and "centre_prior" in printed
    table = pd.read_csv(out / "explanations.csv")
    assert len(table) == 3 and set(table["mask"]) == {"true_mask"}
    for column in ("mass_on_lesion", "concentration", "pointing", "border_mass", "border_peak",
                   "prior_concentration", "random_concentration", "border_change",
                   "deletion", "insertion", "deletion_random", "explained_prob"):
        assert table[column].notna().all(), column
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == "finer" and summary["method"] == "gradcam++"
    assert {r["maps"] for r in summary["pooled"]} == {"model", "centre_prior", "random_weights"}
    assert len(list((out / "overlays").glob("*.png"))) == 3
    assert (out / ".melalib-explain").is_file() and (out / "maps.npz").is_file()


def test_explain_owns_its_folder_and_never_writes_over_inputs(
        project: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = project / "outputs" / "tiny"
    out = elsewhere / "maps"
    first_id = RunDir.read(run).oof()["image_id"].iloc[0]
    assert _explain(run, out, "--ids", str(first_id), "--no-masks") == 0
    assert _explain(run, out, "--ids", str(first_id), "--no-masks") == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert _explain(run, out, "--ids", str(first_id), "--no-masks", "--overwrite") == 0
    mine = elsewhere / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _explain(run, mine, "--ids", str(first_id), "--no-masks", "--overwrite") == 2
    err = capsys.readouterr().err
    assert "melalib did not create it" in err and "Traceback" not in err
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    assert _explain(run, run / "explain", "--ids", str(first_id), "--no-masks") == 2
    assert "would overwrite or hold this command's input" in capsys.readouterr().err
    assert not (run / "explain").exists()


def test_absent_masks_are_one_clear_line_or_a_labelled_estimate(
        project: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = project / "outputs" / "tiny"
    empty = elsewhere / "no-masks"
    empty.mkdir()
    assert _explain(run, elsewhere / "a", "--kind", "wrong", "--top", "2",
                    "--masks", str(empty)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no lesion mask for 2 of 2 images" in err
    assert str(empty) in err
    assert not (elsewhere / "a").exists()
    assert _explain(run, elsewhere / "b", "--kind", "wrong", "--top", "2", "--masks", str(empty),
                    "--missing-masks", "estimate") == 0
    assert "2 mask(s) are Otsu estimates" in capsys.readouterr().out
    assert set(pd.read_csv(elsewhere / "b" / "explanations.csv")["mask"]) == {"estimate"}


# ------------------------------------------------------------- benchmarks/explain_results
def _bench():
    return benchmark_script("explain_results")


def test_benchmark_measures_a_run_and_records_its_table(
        project: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    run = project / "outputs" / "tiny"
    out = elsewhere / "explain.json"
    assert bench.main([str(run), "--per-class", "2", "--n-boot", "20", "--device", "cpu",
                       "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    recorded = json.loads(out.read_text())
    (res,) = recorded["results"]
    assert res["n_images"] == 4 and recorded["command"].startswith("python benchmarks/")
    pooled = {(r["maps"], r["measure"]): r for r in res["pooled"]}
    assert {m for m, _ in pooled} == {"model", "centre_prior", "random_weights"}
    row = next(line for line in printed.splitlines() if line.startswith("| concentration |"))
    assert f"{pooled[('model', 'concentration')]['estimate']:.3f}" in row
    assert f"{pooled[('centre_prior', 'concentration')]['estimate']:.3f}" in row
    assert ">= 1.6" in row
    assert set(res["faithfulness"]) >= {"border_change", "deletion", "insertion"}
    assert 0 <= res["otsu_estimate_dice"]["estimate"] <= 1
    assert "Dice of the Otsu estimate" in printed
    assert res["against_prior"]["n"] <= res["n_images"]
    assert "share of images above the centre prior" in printed
    assert f"{res['oof_primary']:.3f}" in printed
    assert "| run | OOF |" not in printed  # one run: no side-by-side table
    section = "\n".join(bench.render_section(out))
    assert section.startswith("## 7. Explanations") and recorded["command"] in section
    assert row in section
    assert bench.render_section(elsewhere / "absent.json") == []
    variant = elsewhere / "variant.json"
    variant.write_text(json.dumps({**recorded, "command": "python benchmarks/x --layer finer",
                                   "results": [res, {**res, "run": "other"}]}))
    section = "\n".join(bench.render_section(out, variant, elsewhere / "absent.json"))
    assert "`python benchmarks/x --layer finer`" in section and "| run | OOF |" in section
    gain = res["against_prior"]["concentration_gain"]
    assert f"| other | {gain['estimate']:.3f} [{gain['low']:.3f}, {gain['high']:.3f}] |" \
        in section


def test_benchmark_sets_runs_side_by_side(project: Path) -> None:
    bench = _bench()
    res = {"run": "a", "oof_primary": 0.5, "faithfulness": {},
           "pooled": [{"maps": "model", "measure": "concentration", "estimate": 1.2,
                       "low": 1.1, "high": 1.3},
                      {"maps": "centre_prior", "measure": "concentration", "estimate": 1.5,
                       "low": 1.5, "high": 1.5}]}
    table = bench.compare([res, {**res, "run": "b", "oof_primary": 0.6}]).splitlines()
    assert table[0].startswith("| run | OOF | concentration |")
    assert table[2] == "| a | 0.500 | 1.200 [1.100, 1.300] | - | - | - | - |"
    assert table[3].startswith("| b | 0.600 | 1.200")


def test_benchmark_compares_each_map_with_the_centre_prior_on_the_same_image() -> None:
    """Paired against the prior: the per-image gain, the share above it, and pointing on the
    images whose lesion the prior's peak misses; rows without a mask are left out."""
    bench = _bench()
    table = pd.DataFrame({"mask": ["true_mask"] * 4 + ["missing"],
                          "group_id": ["a", "b", "c", "d", "e"],
                          "concentration": [2.0, 1.0, 1.5, 3.0, 9.0],
                          "prior_concentration": [1.5, 1.5, 1.5, 1.0, 1.0],
                          "prior_pointing": [1, 1, 0, 0, 0], "pointing": [1, 0, 0, 1, 1]})
    res = bench.against_prior(table, n_boot=50)
    assert res["n"] == 4 and res["off_centre_n"] == 2 and res["off_centre_pointing"] == 0.5
    assert res["concentration_gain"]["estimate"] == pytest.approx((0.5 - 0.5 + 0 + 2) / 4)
    assert res["share_above_prior"]["estimate"] == pytest.approx(0.5)  # a tie is not above


def test_benchmark_picks_only_images_with_a_mask(project: Path, elsewhere: Path) -> None:
    from melalib.localize import MaskSource

    bench = _bench()
    run = RunDir.read(project / "outputs" / "tiny")
    masks = elsewhere / "masks"
    masks.mkdir()
    ids = run.oof()["image_id"].astype(str).tolist()[:3]
    for i in ids:
        (masks / f"{i}_segmentation.png").write_bytes(b"")
    rows = bench.pick_rows(run, MaskSource(masks), per_class=10, fold=None)
    assert sorted(rows["image_id"]) == sorted(ids)
    one = bench.pick_rows(run, None, per_class=1, fold=0)
    assert len(one) == 2 and set(one["fold"]) == {0} and set(one["label"]) == {0, 1}
    from melalib.metrics import evaluate

    oof = run.oof()
    for fold in (0, 1):
        part = oof[oof["fold"] == fold]
        want = evaluate(run.task, part["label"].to_numpy(),
                        part[run.task.prob_columns].to_numpy())[run.task.primary_metric]
        assert bench.oof_primary(run, fold) == pytest.approx(want)
