"""Ensembles: fold averaging, blends by hand, OOF weight search, blending run folders (CLI and
notebook alike), submissions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melalib import notebook as nbh
from melalib.config import RunConfig
from melalib.ensemble import (
    blend,
    blend_metrics,
    combine,
    compare_blends,
    ensemble_cli,
    search_weights,
    submission,
    submission_format,
)
from melalib.errors import ConfigError, DataError
from melalib.io import write_json, write_yaml
from melalib.metrics import roc_auc
from melalib.predictions import fold_average
from melalib.runs import RunDir
from melalib.tasks import HAM7, MELANOMA, MILK11, Task

BIN = MELANOMA.prob_columns  # ["prob_melanoma"]
TRI = Task("tri", "multiclass", ("a", "b", "c"), "balanced_accuracy")


def frame(ids: list[str], probs, task: Task = MELANOMA, labels=None) -> pd.DataFrame:
    df = pd.DataFrame({"image_id": ids})
    probs = np.asarray(probs, dtype=float).reshape(len(ids), -1)
    for j, column in enumerate(task.prob_columns):
        df[column] = probs[:, j]
    if labels is not None:
        df["label"] = labels
    return df


# ----------------------------------------------------------------------------- blending
def test_fold_average_aligns_on_image_id() -> None:
    f0 = frame(["a", "b", "c"], [0.1, 0.5, 0.9])
    f1 = frame(["c", "a", "b"], [0.3, 0.3, 0.2])  # another order
    out = fold_average([f0, f1], MELANOMA)
    assert out["image_id"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(out["prob_melanoma"], [0.2, 0.35, 0.6])
    with pytest.raises(DataError, match="'d' is only in"):
        fold_average([f0, frame(["a", "b", "d"], [0.1, 0.1, 0.1])], MELANOMA)
    with pytest.raises(DataError, match="missing from"):
        fold_average([f0, frame(["a", "b"], [0.1, 0.1])], MELANOMA)
    with pytest.raises(DataError, match="prob_melanoma"):
        fold_average([f0, f0.rename(columns={"prob_melanoma": "p"})], MELANOMA)


def test_combine_mean_weighted_and_labels_kept() -> None:
    a = frame(["x", "y"], [0.2, 0.8], labels=[0, 1])
    b = frame(["y", "x"], [0.4, 0.6], labels=[1, 0])
    out = combine([a, b], MELANOMA)
    np.testing.assert_allclose(out["prob_melanoma"], [0.4, 0.6])
    assert out["label"].tolist() == [0, 1]
    out = combine([a, b], MELANOMA, weights=[3, 1])  # normalised to 0.75 / 0.25
    np.testing.assert_allclose(out["prob_melanoma"], [0.75 * 0.2 + 0.25 * 0.6,
                                                      0.75 * 0.8 + 0.25 * 0.4])
    with pytest.raises(DataError, match="disagree on the label"):
        combine([a, frame(["x", "y"], [0.1, 0.1], labels=[1, 1])], MELANOMA)
    with pytest.raises(ConfigError):
        combine([a, b], MELANOMA, weights=[1, -1])
    with pytest.raises(ConfigError):
        combine([a, b], MELANOMA, method="median")


def test_rank_average_by_hand() -> None:
    a = frame(list("pqrs"), [0.9, 0.1, 0.5, 0.3])  # ranks 4 1 3 2 -> 1, 0, 2/3, 1/3
    b = frame(list("pqrs"), [0.2, 0.2, 0.8, 0.1])  # ranks 2.5 2.5 4 1 -> .5 .5 1 0
    out = combine([a, b], MELANOMA, method="rank")
    np.testing.assert_allclose(out["prob_melanoma"], [0.75, 0.25, 5 / 6, 1 / 6])


def test_geometric_mean_binary_and_multiclass() -> None:
    a = frame(["u"], [0.25])
    b = frame(["u"], [0.64])
    np.testing.assert_allclose(combine([a, b], MELANOMA, "geometric")["prob_melanoma"], [0.4])
    p = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
    q = [[0.5, 0.4, 0.1], [0.2, 0.2, 0.6]]
    out = combine([frame(["m", "n"], p, TRI), frame(["m", "n"], q, TRI)], TRI, "geometric")
    probs = out[TRI.prob_columns].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    raw = np.sqrt(np.array(p) * np.array(q))
    np.testing.assert_allclose(probs, raw / raw.sum(axis=1, keepdims=True))


# ------------------------------------------------------------------------- weight search
def _oof_pair(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    ids = [f"i{k}" for k in range(n)]
    good = np.clip(0.05 + 0.9 * y + rng.normal(0, 0.02, n), 0, 1)  # ranks perfectly
    noise = rng.random(n)
    return frame(ids, good, labels=y), frame(ids, noise, labels=y), y


def test_search_weights_prefers_the_perfect_model() -> None:
    good, noise, y = _oof_pair()
    w = search_weights([noise, good], MELANOMA)
    assert w.shape == (2,) and (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert w[1] == pytest.approx(1.0, abs=0.051)
    assert roc_auc(y, good["prob_melanoma"]) == 1.0
    w = search_weights([noise, good], MELANOMA, method="scipy", seed=3)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0) and w[1] > 0.9


def test_search_weights_three_models_and_custom_metric() -> None:
    good, noise, y = _oof_pair(seed=1)
    worse = frame(good["image_id"].tolist(), 1 - good["prob_melanoma"], labels=y)
    w = search_weights([worse, noise, good], MELANOMA, step=0.1)
    assert np.isclose(w.sum(), 1.0) and (w >= 0).all() and w.argmax() == 2
    # a custom metric rewarding blends near 0.5: half inverted + half good is exactly 0.5
    w = search_weights([worse, noise, good], MELANOMA, step=0.1,
                       metric=lambda yt, p: -float(np.mean(np.abs(p - 0.5))))
    np.testing.assert_allclose(w, [0.5, 0.0, 0.5])


def test_search_weights_needs_labels_and_ignores_test_frames() -> None:
    good, noise, _ = _oof_pair(n=60)
    with pytest.raises(DataError, match="label"):
        search_weights([good.drop(columns="label"), noise], MELANOMA)
    w = search_weights([noise, good], MELANOMA)
    # test predictions without any label column blend with the OOF weights
    test_a = frame(["t1", "t2"], [0.1, 0.7])
    test_b = frame(["t2", "t1"], [0.9, 0.3])
    out = combine([test_a, test_b], MELANOMA, "mean", w)
    assert "label" not in out.columns
    np.testing.assert_allclose(out["prob_melanoma"], [w[0] * 0.1 + w[1] * 0.3,
                                                      w[0] * 0.7 + w[1] * 0.9])


def test_search_weights_multiclass() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    ids = [f"m{k}" for k in range(300)]
    right = np.eye(3)[y] * 0.8 + 0.2 / 3
    random = rng.dirichlet(np.ones(3), 300)
    w = search_weights([frame(ids, random, TRI, y), frame(ids, right, TRI, y)], TRI)
    assert w[1] == pytest.approx(1.0, abs=0.051)


# ------------------------------------------------------------------------------- runs
def fake_run(root: Path, name: str, task: Task, oof: pd.DataFrame, tests: list[pd.DataFrame],
             per_fold: bool = False) -> Path:
    run = root / name
    (run / "table").mkdir(parents=True)
    write_json(run / "table" / "task.json", task.to_dict())
    if per_fold:  # a training run, partly or wholly done: its config says how many folds
        write_yaml(run / "config.yaml", RunConfig.from_dict({"n_folds": 2}).to_dict())
        half = len(oof) // 2
        oof.iloc[:half].assign(fold=0).to_csv(run / "oof_fold0.csv", index=False)
        oof.iloc[half:].assign(fold=1).to_csv(run / "oof_fold1.csv", index=False)
    else:
        oof.to_csv(run / "oof.csv", index=False)
    for k, t in enumerate(tests):
        t.assign(fold=k).to_csv(run / f"test_fold{k}.csv", index=False)
    return run


def test_run_folders_and_ensemble_cli_search(tmp_path: Path) -> None:
    good, noise, _ = _oof_pair(n=200)
    ids = ["0001", "0002", "0003"]  # ids that look like numbers stay strings
    good_tests = [frame(ids, [0.9, 0.1, 0.5]), frame(ids, [0.7, 0.3, 0.5])]
    noise_tests = [frame(ids, [0.2, 0.6, 0.4]), frame(ids[::-1], [0.4, 0.6, 0.2])]
    r_noise = fake_run(tmp_path, "noise", MELANOMA, noise, noise_tests)
    r_good = fake_run(tmp_path, "good", MELANOMA, good, good_tests, per_fold=True)
    runs = [RunDir.read(r_noise), RunDir.read(r_good)]
    oofs, tests = [r.oof() for r in runs], [r.test_mean() for r in runs]
    assert len(oofs[1]) == 200 and set(oofs[1]["image_id"]) == set(good["image_id"])
    assert tests[0] is not None and tests[1] is not None
    assert "label" not in tests[0].columns
    np.testing.assert_allclose(tests[1]["prob_melanoma"], [0.8, 0.2, 0.5])
    assert tests[1]["image_id"].tolist() == ids
    out = tmp_path / "sub.csv"
    args = argparse.Namespace(runs=[str(r_noise), str(r_good)], method="search", out=str(out))
    assert ensemble_cli(args) == 0
    sub = pd.read_csv(out, dtype={"image_name": str})
    assert list(sub.columns) == ["image_name", "target"]
    metrics = json.loads((tmp_path / "sub.metrics.json").read_text())
    w = np.array(metrics["weights"])
    assert w[1] == pytest.approx(1.0, abs=0.051)
    expected = w[0] * tests[0]["prob_melanoma"].to_numpy() + w[1] * np.array([0.8, 0.2, 0.5])
    np.testing.assert_allclose(sub["target"], expected)
    assert sub["image_name"].tolist() == ids
    assert metrics["oof"]["roc_auc"] == pytest.approx(1.0)
    assert metrics["per_run_primary"][1] == pytest.approx(1.0)
    args.method = "rank"
    assert ensemble_cli(args) == 0
    assert json.loads((tmp_path / "sub.metrics.json").read_text())["method"] == "rank"


def test_ensemble_cli_refuses_mixed_tasks_and_missing_test(tmp_path: Path) -> None:
    good, _, _ = _oof_pair(n=20)
    a = fake_run(tmp_path, "a", MELANOMA, good, [])
    b = fake_run(tmp_path, "b", HAM7, frame(["z"], np.full((1, 7), 1 / 7), HAM7, [0]), [])
    out = tmp_path / "s.csv"
    with pytest.raises(ConfigError, match="task"):
        ensemble_cli(argparse.Namespace(runs=[str(a), str(b)], method="mean", out=str(out)))
    with pytest.raises(DataError, match="no test predictions"):
        ensemble_cli(argparse.Namespace(runs=[str(a)], method="mean", out=str(out)))
    assert (tmp_path / "s.metrics.json").is_file() and not out.exists()


def test_blend_refuses_runs_of_different_tasks(tmp_path: Path) -> None:
    good, _, _ = _oof_pair(n=20)
    a = fake_run(tmp_path, "a", MELANOMA, good, [])
    b = fake_run(tmp_path, "b", HAM7, frame(["z"], np.full((1, 7), 1 / 7), HAM7, [0]), [])
    with pytest.raises(ConfigError, match=r"predicts task 'ham10000'.*but .* predicts 'melanoma'"):
        blend([a, b])
    with pytest.raises(ConfigError, match="method"):
        blend([a], "median")
    with pytest.raises(ConfigError, match="not a melalib run"):
        blend([a, tmp_path])


def test_cli_and_notebook_blend_give_the_same_frames(tmp_path: Path) -> None:
    """`melalib ensemble` and notebook 04 both go through `blend`: same weights, same OOF
    metrics, the same submission file (also for a task without a competition format)."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 90)
    ids = [f"m{k}" for k in range(90)]
    test_ids = ["t1", "t2", "t3"]
    runs = []
    for name, sharp in (("weak", 0.2), ("strong", 0.8)):
        probs = np.eye(3)[y] * sharp + rng.dirichlet(np.ones(3), 90) * (1 - sharp)
        tests = [frame(test_ids, rng.dirichlet(np.ones(3), 3), TRI) for _ in range(2)]
        oof = frame(ids, probs, TRI, y).assign(fold=np.arange(90) % 2)
        runs.append(fake_run(tmp_path, name, TRI, oof, tests))
    out = tmp_path / "cli.csv"
    assert ensemble_cli(argparse.Namespace(runs=[str(r) for r in runs], method="search",
                                           out=str(out))) == 0
    blended = blend(nbh.read_runs(RunConfig.from_dict({"output_dir": str(tmp_path)}),
                                  "weak,strong"), method="search")  # what notebook 04 does
    cli_metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert cli_metrics["weights"] == [float(w) for w in blended.weights]
    assert cli_metrics["oof"] == json.loads(json.dumps(blend_metrics(blended)["oof"]))
    notebook_sub = nbh.write_submission(blended.test, blended.task, tmp_path / "nb.csv")
    assert list(notebook_sub.columns) == ["image", "a", "b", "c"]
    assert (tmp_path / "nb.csv").read_bytes() == out.read_bytes()
    assert blended.oof["fold"].tolist() == (np.arange(90) % 2).tolist()
    table = compare_blends(blended)
    assert table.index.tolist() == ["run weak", "run strong", "mean blend", "rank blend",
                                    "geometric blend", "searched weights (mean)"]


def test_best_blend_evaluates_and_submits_the_best_oof_candidate(tmp_path: Path) -> None:
    """Issue 23: notebook 04 evaluated the equal mean blend (0.929) while one run alone
    scored 0.987. ``best`` takes the candidate of the comparison table with the best OOF
    score (rank blends excluded: their output is not a probability) for the OOF frame, the
    figures and the submission."""
    rng = np.random.default_rng(4)
    n = 300
    y = (rng.random(n) < 0.2).astype(int)
    ids = [f"i{k}" for k in range(n)]
    strong = np.clip(0.2 + 0.5 * y + rng.normal(0, 0.12, n), 0.01, 0.99)
    weak = rng.random(n)  # near chance: the mean blend is worse than the strong run alone
    tests = {"weak": [frame(["t1", "t2"], [0.9, 0.2])], "strong": [frame(["t1", "t2"],
                                                                         [0.1, 0.8])]}
    runs = [fake_run(tmp_path, name, MELANOMA, frame(ids, probs, labels=y), tests[name])
            for name, probs in (("weak", weak), ("strong", strong))]
    table = compare_blends(blend(runs, "mean"))
    usable = table.drop(index="rank blend")["roc_auc"]
    assert usable.idxmax() == "run strong" and table.loc["mean blend", "roc_auc"] < usable.max()
    chosen = blend(runs, "best")
    assert chosen.label == "run strong" and chosen.method == "best"
    assert chosen.weights.tolist() == [0.0, 1.0]
    assert roc_auc(y, chosen.oof["prob_melanoma"]) == pytest.approx(usable.max())
    assert chosen.test["prob_melanoma"].tolist() == [0.1, 0.8]
    assert blend(runs, "mean").label == "mean blend" and blend(runs[1:]).label == "run strong"


def test_best_blend_picks_a_blend_when_it_beats_every_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    n = 400
    y = (rng.random(n) < 0.3).astype(int)
    ids = [f"i{k}" for k in range(n)]
    signal = 0.3 * y  # two runs with independent noise: their blends beat either alone
    runs = [fake_run(tmp_path, f"r{k}", MELANOMA, frame(
        ids, np.clip(0.3 + signal + rng.normal(0, 0.25, n), 0.01, 0.99), labels=y), [])
        for k in range(2)]
    table = compare_blends(blend(runs))
    best = table.drop(index="rank blend")["roc_auc"].idxmax()
    assert not best.startswith("run ")
    assert blend(runs, "best").label == best


# ----------------------------------------------------------------------------- submission
def test_submission_formats() -> None:
    sub = submission(frame(["ISIC_1", "ISIC_2"], [0.2, 0.9]), MELANOMA)
    assert list(sub.columns) == ["image_name", "target"]
    np.testing.assert_allclose(sub["target"], [0.2, 0.9])
    probs = np.full((2, 7), 1 / 7)
    ham = submission(frame(["ISIC_a", "ISIC_b"], probs, HAM7), HAM7)
    assert list(ham.columns) == ["image", *HAM7.classes]
    # a multiclass model with a melanoma class scores ISIC 2020 with P(mel)
    probs[:, HAM7.index_of("mel")] = [0.3, 0.6]
    isic = submission(frame(["ISIC_a", "ISIC_b"], probs, HAM7), HAM7, format="isic2020")
    np.testing.assert_allclose(isic["target"], [0.3, 0.6])
    milk = submission(frame(["IL_1"], np.full((1, 11), 0.1), MILK11), MILK11)
    assert list(milk.columns) == ["lesion_id", *MILK11.classes]
    with pytest.raises(DataError, match="twice"):
        submission(frame(["a", "a"], [0.1, 0.2]), MELANOMA)
    with pytest.raises(DataError, match="probability"):
        submission(frame(["a", "b"], [0.1, 1.2]), MELANOMA)
    with pytest.raises(DataError, match=r"nan is not a probability"):
        submission(frame(["a", "b"], [0.1, np.nan]), MELANOMA)
    # a task without a competition format: one column per class (binary: image_name,target)
    assert submission_format(TRI) == "ham10000"
    assert submission_format(Task("lesion", "binary", ("no", "yes"), "roc_auc")) == "isic2020"
    assert list(submission(frame(["a"], [0.1, 0.2, 0.7], TRI), TRI).columns) == ["image", "a",
                                                                               "b", "c"]
    with pytest.raises(ConfigError, match="format"):
        submission(frame(["a"], [0.1, 0.2, 0.7], TRI), TRI, format="kaggle")


def test_milk10k_header_matches_the_sample_submission(shared_data: Path) -> None:
    sample = shared_data / "milk10k" / "MILK10k_Sample_Submit.csv"
    if not sample.is_file():
        pytest.skip("MILK10k sample submission absent")
    header = sample.read_text().splitlines()[0].split(",")
    ids = pd.read_csv(sample, dtype=str)["lesion_id"].head(5).tolist()
    sub = submission(frame(ids, np.full((5, 11), 0.5), MILK11), MILK11, format="milk10k")
    assert list(sub.columns) == header
    assert sub.to_csv(index=False).splitlines()[0] == sample.read_text().splitlines()[0]


def test_cli_method_choices_are_the_blend_methods() -> None:
    from melalib.cli import build_parser
    from melalib.ensemble import BLENDS

    parser = build_parser()
    args = parser.parse_args(["ensemble", "r1", "--method", "search", "--out", "s.csv"])
    assert args.method == "search" and tuple(BLENDS) == ("mean", "rank", "geometric", "search",
                                                          "best")
    with pytest.raises(SystemExit):
        parser.parse_args(["ensemble", "r1", "--method", "median", "--out", "s.csv"])
