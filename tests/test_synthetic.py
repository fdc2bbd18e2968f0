"""The synthetic default dataset: determinism, cache, refusal, layout, learnability and the
patient effect that makes non-grouped cross-validation look better than it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from melalib.data import synthetic
from melalib.data.synthetic import MONET_CONCEPTS, make_synthetic
from melalib.errors import ConfigError, DataError
from melalib.table import SITES, LesionTable
from melalib.tasks import HAM7, MELANOMA, MILK11


# ------------------------------------------------------------------------------ helpers
def image_stats(path: str) -> list[float]:
    """Hand-crafted ABCD statistics: lesion = pixels far from the skin colour of a ring."""
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    s = img.shape[0]
    t = (np.arange(s) + 0.5) / s * 2 - 1
    yy, xx = np.meshgrid(t, t, indexing="ij")
    d0 = np.hypot(xx, yy)
    skin = np.median(img[(d0 > 0.6) & (d0 < 0.9)], axis=0)
    dist = np.linalg.norm(img - skin, axis=2)
    field = d0 < 0.9
    mask = (dist > 0.12) & field
    if mask.sum() < 3:  # faint lesion: its most distinct pixels
        mask = (dist >= np.quantile(dist[field], 0.95)) & field
    inside = img[mask]
    cy, cx = yy[mask].mean(), xx[mask].mean()
    ry = np.clip(np.round((cy - yy + 1 + cy) / 2 * s - 0.5).astype(int), 0, s - 1)
    rx = np.clip(np.round((cx - xx + 1 + cx) / 2 * s - 0.5).astype(int), 0, s - 1)
    flipped = mask[ry, rx]  # point reflection through the centroid
    asymmetry = 1 - (mask & flipped).sum() / max((mask | flipped).sum(), 1)
    edge = (mask ^ np.roll(mask, 1, 0)) | (mask ^ np.roll(mask, 1, 1))
    border = edge.sum() ** 2 / (4 * np.pi * max(mask.sum(), 1))
    return [mask.mean(), asymmetry, border, *inside.mean(0), *inside.std(0), *skin,
            np.quantile(inside.mean(1), 0.1), (inside[:, 0] - inside[:, 1]).mean(),
            dist[mask].mean()]


def features(df: pd.DataFrame, column: str = "image_path") -> np.ndarray:
    """Image statistics + age / sex / one-hot site."""
    images = np.array([image_stats(p) for p in df[column]])
    age = df["age"].fillna(50).to_numpy()[:, None] / 90
    male = (df["sex"] == "male").to_numpy(float)[:, None]
    site = (df["site"].to_numpy()[:, None] == np.array(SITES)[None]).astype(float)
    return np.hstack([images, age, male, site])


def cv_score(x: np.ndarray, y: np.ndarray, groups: np.ndarray, grouped: bool,
             binary: bool) -> float:
    """Logistic regression OOF score: GroupKFold on patients, or the mean of 3 shuffled
    plain KFolds. AUC (binary) or balanced accuracy."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000))
    splits = [GroupKFold(5)] if grouped else [KFold(5, shuffle=True, random_state=r)
                                              for r in range(3)]
    scores = []
    with threadpool_limits(1):
        for cv in splits:
            p = cross_val_predict(model, x, y, groups=groups if grouped else None, cv=cv,
                                  method="predict_proba")
            scores.append(roc_auc_score(y, p[:, 1]) if binary
                          else balanced_accuracy_score(y, p.argmax(1)))
    return float(np.mean(scores))


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LesionTable]:
    """The three task shapes at the default 60 patients, 32 px."""
    root = tmp_path_factory.mktemp("synthetic")
    return {task: make_synthetic(root / task, task, n_patients=60, image_size=32, seed=0)
            for task in ("binary", "multiclass", "paired")}


@pytest.fixture(scope="module")
def learn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """120 patients at 48 px, seed 0, with features of every row (all true labels)."""
    root = tmp_path_factory.mktemp("learn")
    out = {}
    for task in ("binary", "multiclass"):
        df = make_synthetic(root / task, task, n_patients=120, image_size=48, seed=0).df
        out[task] = (df, features(df))
    return out


# -------------------------------------------------------------------- files and cache
@pytest.mark.parametrize("task", ["binary", "paired"])
def test_deterministic_bytes_and_pixels(task: str, tmp_path: Path) -> None:
    a = make_synthetic(tmp_path / "a", task, n_patients=12, image_size=32, seed=3)
    b = make_synthetic(tmp_path / "b", task, n_patients=12, image_size=32, seed=3)
    for name in ("table.csv", "task.json", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    columns = ["image_path", "image_path_2"] if task == "paired" else ["image_path"]
    for column in columns:
        for pa, pb in zip(a.df[column], b.df[column], strict=True):
            assert pa != pb and Path(pa).name == Path(pb).name
            assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
    other = make_synthetic(tmp_path / "c", task, n_patients=12, image_size=32, seed=4)
    assert other.df["image_bytes"].tolist() != a.df["image_bytes"].tolist()


def test_cache_reused_without_rewriting(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    first = make_synthetic(out, "multiclass", n_patients=10, image_size=24, seed=1)
    before = _files(out)
    second = make_synthetic(out, "multiclass", n_patients=10, image_size=24, seed=1)
    assert _files(out) == before  # nothing rewritten: same files, same mtimes
    pd.testing.assert_frame_equal(first.df, second.df)
    assert second.df["image_path"].map(lambda p: Path(p).is_absolute()).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no temp folder left
    rel = pd.read_csv(out / "table.csv")["image_path"]
    assert rel.str.startswith("images/").all()  # the folder can be moved
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["version"], meta["task"], meta["n_patients"], meta["seed"]) == (
        synthetic.VERSION, "multiclass", 10, 1)


def test_refuses_foreign_or_different_folders(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="pick another"):
        make_synthetic(foreign, "binary", n_patients=8, image_size=16)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        make_synthetic(a_file, "binary", n_patients=8, image_size=16)
    out = tmp_path / "syn"
    make_synthetic(out, "binary", n_patients=8, image_size=16, seed=0)
    before = _files(out)
    with pytest.raises(DataError, match="other parameters") as err:
        make_synthetic(out, "binary", n_patients=9, image_size=16, seed=0)
    assert "n_patients" in str(err.value)
    assert _files(out) == before
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty folder is fine
    assert len(make_synthetic(empty, "binary", n_patients=8, image_size=16)) > 0


def test_incomplete_dataset_refused(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    table = make_synthetic(out, "binary", n_patients=8, image_size=16)
    Path(table.df["image_path"].iloc[3]).unlink()
    with pytest.raises(DataError, match="incomplete") as err:
        make_synthetic(out, "binary", n_patients=8, image_size=16)
    assert err.value.row == 4 and err.value.column == "image_path"
    out2 = tmp_path / "syn2"
    make_synthetic(out2, "binary", n_patients=8, image_size=16)
    with open(out2 / "table.csv", "a") as fh:
        fh.write("\n")
    with pytest.raises(DataError, match="modified"):
        make_synthetic(out2, "binary", n_patients=8, image_size=16)


def test_killed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = synthetic._render

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render", dying)
    out = tmp_path / "syn"
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(out, "binary", n_patients=8, image_size=16)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temp folder
    monkeypatch.setattr(synthetic, "_render", real)
    assert len(make_synthetic(out, "binary", n_patients=8, image_size=16)) > 0


def test_bad_arguments() -> None:
    for kwargs in ({"task": "triple"}, {"n_patients": 2}, {"image_size": 8}, {"seed": -1},
                   {"n_patients": 10.5}):
        with pytest.raises(ConfigError):
            make_synthetic("/nonexistent/never-created", **kwargs)
    assert not Path("/nonexistent/never-created").exists()


# ------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("task,expected", [("binary", MELANOMA), ("multiclass", HAM7),
                                           ("paired", MILK11)])
def test_layout_validates(small: dict[str, LesionTable], task: str, expected) -> None:
    table = small[task]
    table.validate(check_images=True)
    df = table.df
    assert table.task == expected and table.paired == (task == "paired")
    assert (df["source"] == "synthetic").all()
    assert df["site"].isin(SITES).all() and df["sex"].isin(["male", "female", "unknown"]).all()
    assert df["image_id"].is_monotonic_increasing and df["image_id"].is_unique
    assert (df["group_id"] == df["patient_id"]).all()
    assert df.groupby("patient_id")["split"].nunique().max() == 1  # whole patients
    assert df.groupby("lesion_id")["patient_id"].nunique().max() == 1
    test_patients = df.loc[df["split"] == "test", "patient_id"].nunique()
    assert test_patients == round(0.15 * 60)
    test = df["split"] == "test"
    assert (df.loc[test, "label"] == -1).all() and (df.loc[test, "label_name"] == "").all()
    assert (df.loc[~test, "label"] == df.loc[~test, "true_label"]).all()
    assert df["true_label"].between(0, expected.n_classes - 1).all()
    assert (df["n_images"] == df.groupby("patient_id")["image_id"].transform("size")).all()
    sizes = df["image_path"].map(lambda p: Path(p).stat().st_size)
    assert (sizes == df["image_bytes"]).all()
    with Image.open(df["image_path"].iloc[0]) as im:
        assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
    ages = df["age"].dropna()
    assert ages.between(15, 85).all() and (ages % 5 == 0).all()


def test_binary_positive_rate_and_folds(small: dict[str, LesionTable]) -> None:
    df = small["binary"].df
    rate = df["true_label"].mean()
    assert 0.02 <= rate <= 0.10, rate
    train = small["binary"].train
    assert train.loc[train["label"] == 1, "patient_id"].nunique() >= 5
    cv = StratifiedGroupKFold(5, shuffle=True, random_state=0)
    for _, valid in cv.split(train, train["label"], train["group_id"]):
        assert train["label"].iloc[valid].sum() > 0


def test_multiclass_every_class_in_five_patients(small: dict[str, LesionTable]) -> None:
    train = small["multiclass"].train
    patients = train.groupby("label_name")["patient_id"].nunique()
    assert set(patients.index) == set(HAM7.classes)
    assert patients.min() >= 5
    counts = small["multiclass"].class_counts()
    assert counts.idxmax() == "nv" and counts["nv"] > 2 * counts.drop("nv").max()


def test_paired_images_and_extras(small: dict[str, LesionTable]) -> None:
    table = small["paired"]
    df = table.df
    assert table.class_counts().min() > 0 and table.class_counts().idxmax() == "BCC"
    assert df["lesion_id"].is_unique  # one row per lesion
    assert (df["image_path"] != df["image_path_2"]).all()
    assert df["image_path_2"].map(lambda p: Path(p).is_file()).all()
    assert (df["image_bytes_2"] == df["image_path_2"].map(lambda p: Path(p).stat().st_size)).all()
    assert df["skin_tone"].between(0, 5).all() and df["skin_tone"].dtype.kind == "i"
    monet = [f"monet_{c}_{k}" for k in ("derm", "clin") for c in MONET_CONCEPTS]
    assert [c for c in df.columns if c.startswith("monet_")] == monet
    assert df[monet].apply(lambda s: s.between(0, 1)).all().all()
    pigmented = df.groupby("true_label")["monet_pigmented_derm"].mean()
    brown = [MILK11.index_of(c) for c in ("MEL", "NV")]
    pink = [MILK11.index_of(c) for c in ("INF", "VASC", "BEN_OTH")]
    assert pigmented[brown].min() > pigmented[pink].max()
    # the clinical view is a wider field: the lesion covers less of the image
    derm = np.array([image_stats(p)[0] for p in df["image_path"]])
    clin = np.array([image_stats(p)[0] for p in df["image_path_2"]])
    assert np.median(clin) < 0.75 * np.median(derm)


# ----------------------------------------------------------------------- learnability
def test_labels_learnable_from_images_and_metadata(learn) -> None:
    """Logistic regression on ABCD image statistics + metadata, GroupKFold on patients.
    Measured at 120 patients / 48 px over seeds 0-7: binary AUC 0.79-0.96 (seed 0: 0.95),
    multiclass balanced accuracy 0.63-0.70 (seed 0: 0.67; chance 1/7 = 0.14)."""
    df, x = learn["binary"]
    auc = cv_score(x, df["true_label"].to_numpy(), df["patient_id"].to_numpy(), True, True)
    assert auc > 0.80, auc
    df, x = learn["multiclass"]
    bacc = cv_score(x, df["true_label"].to_numpy(), df["patient_id"].to_numpy(), True, False)
    assert bacc > 0.45, bacc


def test_metadata_carries_signal(learn) -> None:
    """Melanoma / BCC / AKIEC patients are older; BCC and AKIEC favour the head and neck.
    Measured over seeds 0-7 (lesion level): melanoma vs benign +1.5 to +14 years,
    akiec/bcc/mel vs nv +10 to +16 years."""
    df = learn["binary"][0].drop_duplicates("lesion_id")
    assert df.loc[df["true_label"] == 1, "age"].mean() > df.loc[df["true_label"] == 0,
                                                                "age"].mean()
    df = learn["multiclass"][0].drop_duplicates("lesion_id")
    name = np.array(HAM7.classes)[df["true_label"]]
    old = np.isin(name, ["akiec", "bcc", "mel"])
    assert df.loc[old, "age"].mean() > df.loc[name == "nv", "age"].mean() + 5
    head = df["site"] == "head_neck"
    assert head[np.isin(name, ["akiec", "bcc"])].mean() > head[name == "nv"].mean()


def test_patient_effect_inflates_ungrouped_cv(learn) -> None:
    """The same classifier scores higher with plain KFold than with patient-grouped CV.
    Measured (multiclass, balanced accuracy, seeds 0-7): +0.04 to +0.09 (seed 0: +0.07).
    A patient-id-only target encoding (binary) scores per-fold AUC 0.66-0.82 under plain
    KFold; under grouped CV a validation patient is never in training, so it is constant."""
    df, x = learn["multiclass"]
    y, g = df["true_label"].to_numpy(), df["patient_id"].to_numpy()
    grouped, plain = cv_score(x, y, g, True, False), cv_score(x, y, g, False, False)
    assert plain > grouped + 0.02, (plain, grouped)

    df = learn["binary"][0]
    y, g = df["true_label"].to_numpy(), df["patient_id"].to_numpy()

    def encoded(cv: KFold | GroupKFold) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for tr, va in cv.split(y, y, g if isinstance(cv, GroupKFold) else None):
            rate = pd.Series(y[tr]).groupby(g[tr]).mean()
            out.append((y[va], rate.reindex(g[va]).fillna(y[tr].mean()).to_numpy()))
        return out

    aucs = [roc_auc_score(t, f) for r in range(3)
            for t, f in encoded(KFold(5, shuffle=True, random_state=r)) if 0 < t.sum() < len(t)]
    assert np.mean(aucs) > 0.6, aucs
    for _, f in encoded(GroupKFold(5)):
        assert np.ptp(f) == 0
