"""benchmarks/milk10k_results.py (issue 20's five-row table): rows trained on tiny synthetic
pairs through the script itself, every figure recomputed here with scikit-learn, the
metadata row on the image runs' own lesions and folds, a run of another recipe refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import benchmark_script
from sklearn.metrics import balanced_accuracy_score, f1_score

from melalib.metrics import tune_thresholds
from melalib.runs import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SETS = ["dataset=synthetic", "synthetic_task=paired", "synthetic_patients=16",
        "synthetic_image_size=32", "image_size=32", "backbone=resnet10t", "pretrained=false",
        "freeze_epochs=0", "epochs=1", "max_steps_per_epoch=2", "batch_size=16", "n_folds=2",
        "tta=1", "meta_hidden=16,8"]


def _set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    script = benchmark_script("milk10k_results")
    root = tmp_path_factory.mktemp("milkrows")
    runs, out = root / "runs", root / "milk.json"
    args = ["--runs", str(runs), "--data-dir", str(root / "data"), "--n-boot", "30",
            *_set_args(SETS)]
    walls = root / "walls.txt"
    walls.write_text("dual_meta fold 0 rc=0 wall=600s end=x\ndual_meta fold 1 rc=1 wall=5s "
                     "end=x\ndual_meta fold 1 rc=0 wall=700s end=x\n")
    assert script.main([*args, "--train", "meta", "derm", "clin", "dual_meta", "--walls", str(walls),
                        "--out", str(out)]) == 0
    return {"script": script, "runs": runs, "args": args, "json": json.loads(out.read_text()),
            "path": out}


def _oof(run: Path) -> pd.DataFrame:
    return RunDir.read(run).oof_by_fold()


def test_rows_are_recorded_in_table_order_with_their_commands(measured) -> None:
    rec = measured["json"]
    assert [r["key"] for r in rec["results"]] == ["meta", "derm", "clin", "dual_meta",
                                                  "derm+clin+meta"]
    derm = rec["results"][1]
    assert derm["command"].startswith("melalib train --preset milk10k_dual_lite0_pretrained")
    assert "--set milk_view=dermoscopic --set use_meta=false" in derm["command"]
    assert "--set n_folds=2" in derm["command"]
    assert rec["results"][3]["fold_walls"] == {"0": 600.0, "1": 700.0}  # failed try ignored


def _probs(oof: pd.DataFrame) -> np.ndarray:
    return oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy()


def _row_oof(measured, res: dict) -> pd.DataFrame:
    """A row's pooled OOF, or for a blend its members' probabilities averaged here."""
    if "members" not in res:
        return _oof(Path(res["run"]))
    oofs = [_oof(measured["runs"] / k).sort_values("image_id", ignore_index=True)
            for k in res["members"]]
    mean = np.mean([_probs(o) for o in oofs], axis=0)
    return oofs[0].assign(**{c: mean[:, i] for i, c in enumerate(
        c for c in oofs[0].columns if c.startswith("prob_"))})


def test_every_figure_matches_scikit_learn(measured) -> None:
    for res in measured["json"]["results"]:
        oof = _row_oof(measured, res)
        probs = _probs(oof)
        y = oof["label"].to_numpy(dtype=int)
        onehot = np.eye(probs.shape[1], dtype=int)[y]
        f1 = f1_score(onehot, probs > 0.5, average=None, zero_division=0)
        np.testing.assert_allclose(res["per_class_f1"], f1)
        assert res["metrics"]["thresholded_macro_f1"]["estimate"] == pytest.approx(f1.mean())
        assert res["metrics"]["balanced_accuracy"]["estimate"] == pytest.approx(
            balanced_accuracy_score(y, probs.argmax(axis=1)))
        assert res["n"] == len(oof) and res["folds"] == [0, 1]


def test_nested_thresholds_never_see_their_own_fold(measured) -> None:
    res = measured["json"]["results"][3]
    oof = _oof(Path(res["run"]))
    probs = oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy()
    y, folds = oof["label"].to_numpy(dtype=int), oof["fold"].to_numpy()
    pred = np.zeros_like(probs, dtype=bool)
    for k in (0, 1):
        t = tune_thresholds(y[folds != k], probs[folds != k])
        np.testing.assert_allclose(list(res["nested"]["fold_thresholds"][str(k)].values()), t)
        pred[folds == k] = probs[folds == k] > t
    expected = f1_score(np.eye(probs.shape[1], dtype=int)[y], pred, average=None,
                        zero_division=0)
    np.testing.assert_allclose(res["per_class_f1_nested"], expected)
    assert res["nested"]["nested_tuned"]["estimate"] == pytest.approx(expected.mean())


def test_metadata_row_uses_the_image_rows_lesions_and_folds(measured) -> None:
    runs = measured["runs"]
    meta = _oof(runs / "meta").set_index("image_id")["fold"].sort_index()
    images = _oof(runs / "dual_meta").set_index("image_id")["fold"].sort_index()
    pd.testing.assert_series_equal(meta, images)
    assert not RunDir.read(runs / "meta").cfg.model.use_image


def test_a_run_of_another_recipe_is_refused(measured) -> None:
    script = measured["script"]
    other = [a if a != "epochs=1" else "epochs=2" for a in measured["args"]]
    with pytest.raises(SystemExit, match="not the 'meta' recipe"):
        script.main(other)


def test_rows_measured_later_join_the_recorded_ones(measured, tmp_path: Path) -> None:
    script, recorded = measured["script"], measured["json"]
    out = tmp_path / "milk.json"
    out.write_text(json.dumps({**recorded, "results": [
        {**r, "key": "dual", "inputs": "an earlier both-images row"} for r in recorded["results"][:1]]}))
    assert script.main([*measured["args"], "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["key"] for r in rows] == ["meta", "derm", "clin", "dual", "dual_meta",
                                        "derm+clin+meta"]
    assert rows[3]["inputs"] == "an earlier both-images row"


def test_section_renders_the_table_and_says_the_goal(measured) -> None:
    text = "\n".join(measured["script"].render_section(measured["path"]))
    assert "## 8. MILK10k on real image pairs" in text
    assert text.count("\n| ") >= 5 + 11  # four rows and a blend, eleven classes
    assert "Goal: thresholded macro F1 >= 0.50" in text
    assert "took 0.36 h of wall time" in text  # 600 s + 700 s
    assert "Lesion-grouped 2-fold CV" in text and "1 epochs of which 0 frozen" in text
    assert "CIs: 30 bootstrap replicates" in text
    assert "- not measured yet: both images\n" in text
    assert "- derm+clin+meta: the mean of the rows derm, clin, meta" in text
    assert "Late-fusion rows average the probabilities" in text
    assert "(melalib at commit `" in text
    best = max(measured["json"]["results"],
               key=lambda r: r["metrics"]["thresholded_macro_f1"]["estimate"])
    assert f"Best: {best['inputs']}" in text


def test_a_fold_still_training_is_neither_scored_nor_timed(measured, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "derm"
    shutil.copytree(measured["runs"] / "derm", run)
    (run / "oof_fold1.csv").unlink()  # fold 1 has a history but has not finished
    res = measured["script"].measure(RunDir.read(run), n_boot=10)
    history = pd.read_csv(run / "history_fold0.csv")
    assert res["folds"] == [0] and res["n"] == len(pd.read_csv(run / "oof_fold0.csv"))
    assert res["train_seconds"] == pytest.approx(history["seconds"].sum(), abs=0.05)
    assert "nested" not in res  # one fold: nothing to tune on


def test_late_fusion_needs_every_member_in_the_same_folds(measured, tmp_path: Path) -> None:
    import shutil

    script, runs = measured["script"], tmp_path / "runs"
    shutil.copytree(measured["runs"], runs)
    pooled = RunDir.read(runs / "meta").oof_path()  # what the blend reads
    oof = pd.read_csv(pooled)
    oof.loc[0, "fold"] = 1 - oof.loc[0, "fold"]  # one lesion held out in the other fold
    oof.to_csv(pooled, index=False)
    with pytest.raises(SystemExit, match="'meta' does not hold the same lesions"):
        script.measure_blends(runs, measured["json"]["results"], n_boot=5)


def test_metadata_row_falls_back_to_any_image_rows_table(measured, tmp_path: Path) -> None:
    import shutil

    script, runs = measured["script"], tmp_path / "runs"
    shutil.copytree(measured["runs"] / "derm", runs / "derm")
    assert script.reference(runs).path == runs / "derm"
    with pytest.raises(SystemExit, match="train one of dual_meta, dual, derm, clin"):
        script.reference(tmp_path / "empty")
