"""benchmarks/real_results.py and its modules (`real_experiments`, `results_store`,
`results_render`): docs/results.json <-> docs/results.md, the command line, the protocol-A
table, the leak count on the real HAM10000 table, and (slow) a re-run of the smallest
recorded configuration landing inside its recorded confidence interval."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from conftest import benchmark_script

from melalib.errors import LeakageError
from melalib.table import LesionTable
from melalib.tasks import HAM7

REPO = Path(__file__).resolve().parents[1]
RESULTS_JSON = REPO / "docs" / "results.json"
RESULTS_MD = REPO / "docs" / "results.md"
SMALLEST = "milk10k_lr"  # per-class sklearn logistic regression on metadata: seconds


@pytest.fixture(scope="module")
def experiments() -> ModuleType:
    return benchmark_script("real_experiments")


@pytest.fixture(scope="module")
def render() -> ModuleType:
    return benchmark_script("results_render")


@pytest.fixture(scope="module")
def recorded() -> dict:
    assert RESULTS_JSON.is_file(), "docs/results.json is missing: run benchmarks/real_results.py"
    return benchmark_script("results_store").load_results(RESULTS_JSON)


# ----------------------------------------------------------------- recorded files agree
def test_results_md_is_rendered_from_results_json(render: ModuleType, recorded: dict) -> None:
    assert RESULTS_MD.read_text() == render.render_markdown(recorded)


def test_the_command_line_lists_and_renders(recorded: dict, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`python benchmarks/real_results.py --list` names every registered experiment;
    ``--render --quick --out DIR`` renders DIR's JSON as docs/results.md is rendered."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the store's lock file
    cli = benchmark_script("real_results")
    assert cli.main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(cli.EXPERIMENTS) and SMALLEST in listed
    (tmp_path / "results_quick.json").write_text(json.dumps(recorded))
    assert cli.main(["--render", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results_quick.md").read_text() == RESULTS_MD.read_text()


def test_every_recorded_number_appears_in_results_md(recorded: dict) -> None:
    text = RESULTS_MD.read_text()
    assert recorded["experiments"], "no experiment recorded"
    for name, r in recorded["experiments"].items():
        assert not r["quick"], f"{name}: a --quick smoke result was recorded in docs/"
        assert f"--only {name} " in text, f"{name}: its command is not in results.md"
        for metric, m in r.get("metrics", {}).items():
            cell = f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"
            assert cell in text, f"{name} {metric}: {cell} not in results.md"


def test_recorded_intervals_contain_their_estimates(recorded: dict) -> None:
    for name, r in recorded["experiments"].items():
        for metric, m in r.get("metrics", {}).items():
            assert 0.0 <= m["low"] <= m["estimate"] <= m["high"] <= 1.0, (name, metric, m)
        assert r["wall_seconds"] >= 0 and r["environment"]["versions"]["torch"]


def test_published_rows_are_labelled_and_not_measured(render: ModuleType) -> None:
    text = render.render_markdown({"experiments": {}})
    for row in render.MEDMNIST_ROWS:
        line = next(ln for ln in text.splitlines() if row["model"] in ln)
        assert "**published**" in line and "not measured here" in line
        assert f"{row['accuracy']:.3f}" in line and f"{row['ovr_auc_macro']:.3f}" in line
    assert "Reported, not measured here" in text and "0.2572" in text


def test_figures_listed_in_results_exist(recorded: dict) -> None:
    files = recorded["experiments"].get("figures", {}).get("files", [])
    assert len(files) == 6
    for path in files:
        data = (REPO / path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path


# ------------------------------------------------------------ the pretrained recipe text
def _fold(curve: list[float], oof: float) -> dict:
    return {"val_by_epoch": curve, "oof_tta": oof, "n_train": 8000,
            "fastest_tuning_epoch_s": 200.0}


def _ci(v: float) -> dict:
    return {"estimate": v, "low": v - 0.01, "high": v + 0.01}


def test_recipe_section_sets_each_fold_beside_scratch_and_the_longer_run(
        render: ModuleType) -> None:
    pre = {"metrics": {"balanced_accuracy": _ci(0.69), "ovr_auc_macro": _ci(0.94)},
           "per_fold": {"0": _fold([0.45, 0.62, 0.66], 0.692), "1": _fold([0.4, 0.6], 0.65)}}
    scratch = {"per_fold": {"0": _fold([0.21, 0.30], 0.333)}}
    longer = {"per_fold": {"0": _fold([0.45, 0.70, 0.74], 0.751)}, "train_seconds": 1800.0,
              "command": "python benchmarks/real_results.py --only ham_b_lite0_fold0_8ep"}
    text = "\n".join(render.render_recipe({"ham_b_lite0_pretrained": pre,
                                           "ham_b_lite0_scratch": scratch,
                                           "ham_b_lite0_fold0_8ep": longer}))
    assert "| fold 0 | 0.450 → 0.620 → 0.660 | 0.660 | 0.692 | +0.032 | 0.210 → 0.300 | 0.333 |" \
        in text
    assert "| fold 1 | 0.400 → 0.600 | 0.600 | 0.650 | +0.050 | – | – |" in text
    assert "30 min of training" in text and "(+0.059 on this fold)" in text
    assert "best 0.740 at epoch 3, OOF with TTA 8 0.751) against 0.660 and 0.692 with 4 epochs" in text
    assert "`this row` is short of the goal" in text and "6-8" in text
    assert "In 2 of 2 folds the last of its 3 epochs is the best one" in text
    without = "\n".join(render.render_recipe({"ham_b_lite0_pretrained": pre}))
    assert "More epochs" not in without and "| fold 0 |" in without
    assert "all five folds" not in without


def test_recipe_section_reports_the_longer_five_fold_row(render: ModuleType) -> None:
    pre = {"metrics": {"balanced_accuracy": _ci(0.69), "ovr_auc_macro": _ci(0.94)},
           "per_fold": {"0": _fold([0.45, 0.62, 0.66], 0.692), "1": _fold([0.4, 0.6], 0.65)}}
    pre["metrics"]["accuracy"] = _ci(0.73)
    six = {"metrics": {"balanced_accuracy": _ci(0.712), "ovr_auc_macro": _ci(0.951)},
           "per_fold": {"0": _fold([0.45, 0.6, 0.7, 0.71, 0.72, 0.71], 0.73),
                        "1": _fold([0.4, 0.6, 0.65, 0.66, 0.67, 0.68], 0.69)},
           "train_seconds": 7200.0, "preset": "ham10000_lite0_pretrained_6ep",
           "command": "python benchmarks/real_results.py --only ham_b_lite0_6ep"}
    exps = {"ham_b_lite0_pretrained": pre, "ham_b_lite0_6ep": six}
    text = "\n".join(render.render_recipe(exps))
    assert "6 epochs on all five folds" in text and "120 min of training" in text
    assert "(+0.022 and +0.011 over 4 epochs)" in text
    assert "4 epochs in brackets: 0.730 (0.692) / 0.690 (0.650)." in text
    assert "`ham10000_lite0_pretrained_6ep` meets the goal (balanced_accuracy >= 0.70, " \
        "ovr_auc_macro >= 0.95) in its estimates; the lower CI bounds (ovr_auc_macro 0.941) " \
        "are below it." in text
    six["metrics"]["ovr_auc_macro"] = _ci(0.948)
    text = "\n".join(render.render_recipe(exps))
    assert "`ham10000_lite0_pretrained_6ep` is short of the goal (ovr_auc_macro 0.948 < 0.95)" \
        in text and "In 1 of 2 folds the last of its 6 epochs" in text and "Lite2" in text
    summary = "\n".join(render._lite0_summary(exps))
    assert "with 6 epochs (`ham10000_lite0_pretrained_6ep`): balanced accuracy 0.712" in summary


# ----------------------------------------------------------- protocol-A table and leaks
def _toy_table() -> LesionTable:
    """20 lesions x 2 images, classes cycling through HAM7."""
    rows = []
    for lesion in range(20):
        label = lesion % 7
        for k in range(2):
            rows.append({"image_id": f"I{lesion:02d}_{k}", "image_path": f"/x/I{lesion}_{k}.jpg",
                         "group_id": f"L{lesion:02d}", "lesion_id": f"L{lesion:02d}",
                         "label": label, "label_name": HAM7.classes[label], "age": 50.0,
                         "sex": "male", "site": "torso", "source": "ham10000", "split": "train"})
    return LesionTable(pd.DataFrame(rows), HAM7)


def test_split_leak_counts_by_hand(experiments: ModuleType) -> None:
    df = pd.DataFrame({"lesion_id": ["a", "a", "b", "b", "c", "d", "d"]})
    subset = pd.Series(["train", "test", "val", "test", "test", "test", "test"])
    leak = experiments.split_leak(df, subset)
    assert leak["n_test"] == 5
    assert leak["test_images_lesion_in_train"] == 1  # image of lesion a
    assert leak["test_images_lesion_in_train_or_val"] == 2  # lesions a and b
    assert leak["test_lesions"] == 4 and leak["test_lesions_shared"] == 2
    assert leak["share_test_lesion_in_train_or_val"] == pytest.approx(2 / 5)


@pytest.mark.parametrize("grouped", [False, True])
def test_protocol_a_table_layout(experiments: ModuleType, grouped: bool) -> None:
    table, leak = experiments.protocol_a_table(_toy_table(), grouped=grouped, seed=3)
    df = table.df
    test = df["split"] == "test"
    assert (df.loc[test, "label"] == -1).all() and (df.loc[test, "label_name"] == "").all()
    assert (df.loc[test, "fold"] == -1).all()
    assert set(df.loc[~test, "fold"]) == {0, 1}
    original = _toy_table().df.set_index("image_id")["label"]
    assert (df.set_index("image_id")["true_label"] == original.reindex(df["image_id"])).all()
    assert leak["n_test"] == int(test.sum())
    assert leak["n_val"] == int((df["fold"] == 0).sum())
    if grouped:
        assert leak["test_images_lesion_in_train_or_val"] == 0
        assert (df["group_id"] == df["lesion_id"]).all()
    else:
        assert (df["group_id"] == df["image_id"]).all()


def test_lesion_groups_cannot_straddle_the_engine_split(experiments: ModuleType) -> None:
    """The image-level split only passes the engine's leakage audit because each image is
    its own group there; keeping lesion groups must raise."""
    table, leak = experiments.protocol_a_table(_toy_table(), grouped=False, seed=3)
    assert leak["test_images_lesion_in_train_or_val"] > 0
    df = table.df.assign(group_id=table.df["lesion_id"])
    with pytest.raises(LeakageError):
        LesionTable(df, HAM7).validate()


@pytest.mark.realdata
def test_recorded_leak_matches_the_real_table(experiments: ModuleType, recorded: dict,
                                              shared_data: Path) -> None:
    """The protocol-A leak in results.json is recomputed from the HAM10000 metadata."""
    exp = recorded["experiments"].get("ham_a_28")
    if exp is None:
        pytest.skip("ham_a_28 not recorded")
    ctx = experiments.Ctx(data=shared_data)
    _table, leak = experiments.protocol_a_table(experiments.ham_table(ctx), grouped=False)
    assert leak == exp["leak"]
    assert leak["n_train"] + leak["n_val"] + leak["n_test"] == 10015
    md = RESULTS_MD.read_text()
    assert re.search(rf"\| ham_a_28 \| [^|]*\| {leak['test_images_lesion_in_train']} \|", md)


# ------------------------------------------------------------------------- slow re-run
@pytest.mark.slow
@pytest.mark.realdata
def test_smallest_configuration_reproduces_within_recorded_ci(
        experiments: ModuleType, recorded: dict, shared_data: Path, tmp_path: Path) -> None:
    exp = recorded["experiments"].get(SMALLEST)
    assert exp is not None, f"{SMALLEST} is not recorded in docs/results.json"
    ctx = experiments.Ctx(data=shared_data, out=tmp_path / "real", n_boot=200, figures=tmp_path / "fig")
    again = experiments.run_experiment(SMALLEST, ctx)
    for metric, m in exp["metrics"].items():
        value = again["metrics"][metric]["estimate"]
        assert m["low"] <= value <= m["high"], (metric, value, m)
        assert value == pytest.approx(m["estimate"], abs=5e-3), (metric, value, m)
    assert again["n"] == exp["n"] and again["n_groups"] == exp["n_groups"]
