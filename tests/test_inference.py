"""Prediction from checkpoints and run folders: columns, TTA, fold averaging, EMA weights,
refusal of checkpoints that do not fit, folders of images and the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import untrained_checkpoint
from PIL import Image

from melalib.checkpoints import save_checkpoint
from melalib.cli.predict import predict_cli
from melalib.config import RunConfig
from melalib.errors import CheckpointError, ConfigError, DataError, ImageError
from melalib.features import MetaEncoder
from melalib.inference import load_predictor
from melalib.models import build_model
from melalib.runs import RunDir
from melalib.table import LesionTable
from melalib.tasks import HAM7, MELANOMA, Task
from melalib.transforms import IMAGENET_MEAN, IMAGENET_STD

SITES = ["torso", "head_neck", "lower_extremity", "upper_extremity"]


# ------------------------------------------------------------------------------- helpers
def write_images(folder: Path, names: list[str], size: int = 40, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        yy, xx = np.mgrid[0:size, 0:size]
        base = rng.integers(0, 255, size=3)
        img = (base[None, None, :] * (xx[..., None] + 2 * yy[..., None]) / (3 * size)
               + rng.normal(0, 20, (size, size, 3)))
        path = folder / f"{name}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=95)
        paths.append(str(path))
    return paths


def make_table(root: Path, task: Task = MELANOMA, n_train: int = 12, n_test: int = 4,
               paired: bool = False) -> LesionTable:
    ids = [f"img{i:02d}" for i in range(n_train + n_test)]
    paths = write_images(root / "images", ids)
    n = len(ids)
    labels = np.array([i % task.n_classes for i in range(n_train)] + [-1] * n_test)
    rng = np.random.default_rng(1)
    df = pd.DataFrame({
        "image_id": ids, "image_path": paths, "group_id": ids, "label": labels,
        "label_name": [task.classes[k] if k >= 0 else "" for k in labels],
        "age": rng.integers(20, 80, n).astype(float),
        "sex": ["male", "female"] * (n // 2), "site": [SITES[i % 4] for i in range(n)],
        "source": "synthetic", "split": ["train"] * n_train + ["test"] * n_test,
        "fold": [i % 2 for i in range(n_train)] + [-1] * n_test,
        "meta_bmi": rng.normal(25, 4, n),
    })
    if paired:
        df["image_path_2"] = write_images(root / "images2", ids, seed=5)
    return LesionTable(df, task, origin="test").validate()


def make_cfg(out: Path, **overrides) -> RunConfig:
    flat = {"name": "tiny", "output_dir": str(out), "backbone": "test_resnet", "image_size": 32,
            "n_folds": 2, "tta": 1, "meta_hidden": (8,), "device": "cpu", "num_workers": 0}
    flat.update(overrides)
    return RunConfig.from_dict(flat)


def fold_checkpoint(cfg: RunConfig, table: LesionTable, fold: int, path: Path, seed: int,
                    ema_seed: int | None = None) -> tuple[torch.nn.Module, MetaEncoder]:
    """Save a checkpoint in the engine's format for an untrained model of ``fold``."""
    train, _ = table.fold(fold)
    encoder = MetaEncoder(cfg.data.features if cfg.model.use_meta else "none").fit(train)
    torch.manual_seed(seed)
    model = build_model(cfg.model, table.task, encoder.dim)
    ema, used = None, model
    if ema_seed is not None:
        torch.manual_seed(ema_seed)
        used = build_model(cfg.model, table.task, encoder.dim)
        ema = _FakeEma({f"module.{k}": v for k, v in used.state_dict().items()})
    state = untrained_checkpoint(cfg, table.task, fold, model, encoder, ema)
    save_checkpoint(path, state)
    return used.eval(), encoder


class _FakeEma:
    """Stands in for timm's ModelEmaV3 in `FoldState.checkpoint` (keys prefixed 'module.')."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def make_run(root: Path, task: Task = MELANOMA, **overrides) -> tuple[RunDir, LesionTable,
                                                                     list[torch.nn.Module]]:
    table = make_table(root / "data", task, paired=overrides.get("dual_image", False))
    cfg = make_cfg(root / "outputs", **overrides)
    run = RunDir.open(cfg)
    run.save_table(table)
    models = []
    for k in range(2):
        model, _ = fold_checkpoint(cfg, table, k, run.checkpoint(k, "best"), seed=10 + k)
        models.append(model)
        _, val = table.fold(k)
        pd.DataFrame({"image_id": val["image_id"], "fold": k}).to_csv(run.oof_path(k),
                                                                      index=False)
    return run, table, models


def manual_probs(model: torch.nn.Module, encoder: MetaEncoder, df: pd.DataFrame, size: int,
                 flips: bool = False) -> np.ndarray:
    """Independent reference: PIL resize + ImageNet normalisation + the model, by hand."""
    mean = np.array(IMAGENET_MEAN, np.float32)
    std = np.array(IMAGENET_STD, np.float32)
    images = []
    for path in df["image_path"]:
        img = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        arr = (np.asarray(img, np.float32) / 255.0 - mean) / std
        images.append(arr.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(images))
    meta = torch.from_numpy(encoder.transform(df)) if encoder.dim else None
    with torch.no_grad():
        p = torch.sigmoid(model(image=x, meta=meta))
        if flips:
            p = (p + torch.sigmoid(model(image=torch.flip(x, (-1,)), meta=meta))) / 2
    return p.numpy()


# --------------------------------------------------------------------------------- tests
def test_predict_checkpoint_columns_order_and_reference(tmp_path: Path) -> None:
    run, table, models = make_run(tmp_path)
    predictor = load_predictor(run.checkpoint(0, "best"), device="cpu")
    test = table.test.iloc[::-1]  # any order: output follows the input
    out = predictor.predict(test, progress=False)
    assert list(out.columns) == ["image_id", "prob_melanoma"]
    assert out["image_id"].tolist() == test["image_id"].tolist()
    # encoded with the fold-0 encoder (fitted on fold 1's training rows) and fold 0's model
    encoder = MetaEncoder("default").fit(table.fold(0)[0])
    ref = manual_probs(models[0], encoder, test, 32)
    # albumentations resizes with cv2 (INTER_LINEAR) and PIL differs by a few grey levels
    np.testing.assert_allclose(out["prob_melanoma"].to_numpy(), ref[:, 0], atol=2e-3)
    assert predictor.run is not None and predictor.run.path == run.path


def test_tta_views_are_averaged(tmp_path: Path) -> None:
    run, table, models = make_run(tmp_path, tta=2)
    predictor = load_predictor(run.checkpoint(1, "best"), device="cpu")
    test = table.test
    p1 = predictor.predict(test, tta=1, progress=False)["prob_melanoma"].to_numpy()
    p2 = predictor.predict(test, progress=False)["prob_melanoma"].to_numpy()  # config: 2
    p8 = predictor.predict(test, tta=8, progress=False)["prob_melanoma"].to_numpy()
    for p in (p1, p2, p8):
        assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert np.abs(p8 - p1).max() > 1e-5
    encoder = predictor.encoder
    ref = manual_probs(models[1], encoder, test, 32, flips=True)
    np.testing.assert_allclose(p2, ref[:, 0], atol=2e-3)


def test_run_dir_averages_its_folds(tmp_path: Path) -> None:
    run, table, _ = make_run(tmp_path)
    test = table.test
    both = load_predictor(run.path, device="cpu")
    assert len(both) == 2
    one = [load_predictor(run.checkpoint(k, "best"), device="cpu").predict(test, progress=False)
           for k in range(2)]
    assert np.abs(one[0]["prob_melanoma"] - one[1]["prob_melanoma"]).max() > 1e-4
    mean = (one[0]["prob_melanoma"] + one[1]["prob_melanoma"]) / 2
    out = both.predict(test, progress=False, batch_size=3)
    np.testing.assert_allclose(out["prob_melanoma"], mean, rtol=0, atol=1e-6)


def test_multiclass_rows_sum_to_one(tmp_path: Path) -> None:
    run, table, _ = make_run(tmp_path, task=HAM7, use_meta=False, tta=4)
    predictor = load_predictor(run.path, device="cpu")
    out = predictor.predict(table, progress=False)
    assert list(out.columns) == ["image_id", *HAM7.prob_columns]
    assert len(out) == len(table.df)
    np.testing.assert_allclose(out[HAM7.prob_columns].sum(axis=1), 1.0, atol=1e-5)


def test_ema_weights_are_used(tmp_path: Path) -> None:
    table = make_table(tmp_path / "data")
    cfg = make_cfg(tmp_path / "out")
    path = tmp_path / "ema.pt"
    shadow, encoder = fold_checkpoint(cfg, table, 0, path, seed=1, ema_seed=2)
    out = load_predictor(path, device="cpu").predict(table.test, progress=False)
    ref = manual_probs(shadow, encoder, table.test, 32)
    np.testing.assert_allclose(out["prob_melanoma"], ref[:, 0], atol=2e-3)


def test_checkpoints_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    table = make_table(tmp_path / "data")
    cfg = make_cfg(tmp_path / "out")
    good = tmp_path / "good.pt"
    fold_checkpoint(cfg, table, 0, good, seed=1)
    state = torch.load(good, weights_only=False)
    # weights of another backbone under this config
    other = build_model(make_cfg(tmp_path / "o", backbone="test_convnext").model, MELANOMA,
                        state["n_meta"])
    bad = dict(state, model=other.state_dict())
    save_checkpoint(tmp_path / "bad.pt", {k: v for k, v in bad.items() if k != "format"})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_predictor(tmp_path / "bad.pt", device="cpu")
    # a metadata width that disagrees with the stored encoder
    save_checkpoint(tmp_path / "meta.pt", {**{k: v for k, v in state.items() if k != "format"},
                                           "n_meta": state["n_meta"] + 3})
    with pytest.raises(CheckpointError, match="n_meta"):
        load_predictor(tmp_path / "meta.pt", device="cpu")
    # missing keys, a foreign file, and a missing file
    save_checkpoint(tmp_path / "partial.pt", {"model": state["model"]})
    with pytest.raises(CheckpointError, match="lacks"):
        load_predictor(tmp_path / "partial.pt", device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_predictor(tmp_path / "junk.pt", device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_predictor(tmp_path / "absent.pt", device="cpu")


def test_run_dir_refuses_a_checkpoint_of_another_config(tmp_path: Path) -> None:
    run, table, _ = make_run(tmp_path)
    foreign = make_cfg(tmp_path / "elsewhere", lr=0.5)
    fold_checkpoint(foreign, table, 1, run.checkpoint(1, "best"), seed=3)
    with pytest.raises(CheckpointError, match=r"another config \(checkpoint vs now: \{'lr'"):
        load_predictor(run.path, device="cpu")
    assert load_predictor(run.checkpoint(1, "best"), device="cpu")  # alone it loads


def test_checkpoints_of_different_tasks_cannot_be_averaged(tmp_path: Path) -> None:
    a, _, _ = make_run(tmp_path / "a")
    b, _, _ = make_run(tmp_path / "b", task=HAM7)
    with pytest.raises(CheckpointError, match="cannot be averaged"):
        load_predictor([a.checkpoint(0, "best"), b.checkpoint(0, "best")], device="cpu")


def test_metadata_only_model_needs_no_images(tmp_path: Path) -> None:
    run, table, models = make_run(tmp_path, use_image=False)
    test = table.test.drop(columns=["image_path"])
    out = load_predictor(run.checkpoint(0, "best"), device="cpu").predict(test, progress=False)
    enc = MetaEncoder("default").fit(table.fold(0)[0])
    with torch.no_grad():
        ref = torch.sigmoid(models[0](meta=torch.from_numpy(enc.transform(test)))).numpy()
    np.testing.assert_allclose(out["prob_melanoma"], ref[:, 0], atol=1e-6)


def test_predict_folder_with_and_without_metadata(tmp_path: Path) -> None:
    run, _, _ = make_run(tmp_path)
    predictor = load_predictor(run.path, device="cpu")
    folder = tmp_path / "new"
    write_images(folder, ["b", "a", "c"], seed=9)
    (folder / "notes.txt").write_text("not an image")
    plain = predictor.predict_folder(folder, progress=False)
    assert plain["image_id"].tolist() == ["a", "b", "c"]
    assert plain.attrs["imputed_columns"] == ["meta_bmi"]
    csv = folder / "meta.csv"
    pd.DataFrame({"image": ["c", "a"], "age_approx": ["70", ""], "sex": ["male", "female"],
                  "anatom_site_general_challenge": ["head/neck", "torso"]}).to_csv(csv,
                                                                                 index=False)
    with_meta = predictor.predict_folder(None, csv, progress=False)
    assert with_meta["image_id"].tolist() == ["c", "a"]
    # the same rows as a canonical frame give the same probabilities
    canonical = pd.DataFrame({"image_id": ["c", "a"],
                              "image_path": [str(folder / "c.jpg"), str(folder / "a.jpg")],
                              "age": [70.0, np.nan], "sex": ["male", "female"],
                              "site": ["head_neck", "torso"], "meta_bmi": np.nan})
    ref = predictor.predict(canonical, progress=False)
    np.testing.assert_allclose(with_meta["prob_melanoma"], ref["prob_melanoma"], atol=1e-7)
    # metadata changes the fusion model's output for image "a"
    a_plain = plain.set_index("image_id").loc["a", "prob_melanoma"]
    assert abs(with_meta.set_index("image_id").loc["a", "prob_melanoma"] - a_plain) > 1e-7
    pd.DataFrame({"image": ["a", "zz"]}).to_csv(folder / "missing.csv", index=False)
    with pytest.raises(ImageError, match="zz"):
        predictor.predict_folder(folder, folder / "missing.csv", progress=False)
    pd.DataFrame({"image": ["a"], "sex": ["robot"]}).to_csv(folder / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"row 1, column 'sex'.*robot"):
        predictor.predict_folder(folder, folder / "bad.csv", progress=False)


def test_prediction_and_training_csvs_share_one_na_rule(tmp_path: Path) -> None:
    """One CSV reader (`melalib.data.csvread.read_csv`) for a training CSV and predict's
    ``--csv``: empty, blank and NA-word cells (NA, None, null, n/a...) are missing in both
    (predict used to refuse age 'NA' and keep 'null' as text, which made a numeric column
    text); a word with spaces around stays text; a missing image name and a row longer than
    the header are refused naming file, row and column."""
    from melalib.data.sources.custom import load_custom_csv
    from melalib.inference import _csv_frame

    def both(csv: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
        meta = {"age": "age", "sex": "sex", "bmi": "bmi"}
        return load_custom_csv(csv, meta_columns=meta).df, _csv_frame(csv, None, "image", None)

    csv = tmp_path / "meta.csv"
    csv.write_text("image,label,age,sex,bmi\na.jpg,mel,NA,None,null\nb.jpg,nv,  ,n/a,3\n"
                   "c.jpg,nv,41,male,\n")
    train, pred = both(csv)
    for df in (train, pred):
        assert df["age"].isna().tolist() == [True, True, False]
        assert df["sex"].tolist() == ["unknown", "unknown", "male"]
    assert train["meta_bmi"].isna().tolist() == pred["bmi"].isna().tolist() == [True, False, True]
    assert pred["bmi"].dtype == float
    for text, row, column, words in (
            ("image,label,age,sex,bmi\nNA,mel,1,m,2\nb.jpg,nv,4,f,3\n", 1, "image",
             "'NA', which CSV readers treat as a missing value"),
            ("image,label,age,sex,bmi\na.jpg,mel,1,m,2\n,nv,4,f,3\n", 2, "image", "empty image"),
            ("image,label,age,sex,bmi\na.jpg,mel, NA ,m,2\nb.jpg,nv,4,f,3\n", 1, "age",
             "age 'NA' is not a number"),
            ("image,label,age,sex,bmi\na.jpg,mel,1,m,2,x\nb.jpg,nv,4,f,3\n", 1, None,
             "the row has 6 fields but the header names 5 columns")):
        csv.write_text(text)
        for read in (lambda: load_custom_csv(csv, meta_columns={"age": "age"}),
                     lambda: _csv_frame(csv, None, "image", None)):
            with pytest.raises(DataError, match=words) as info:
                read()
            assert (info.value.file, info.value.row, info.value.column) == (str(csv), row, column)


def test_predict_cli_writes_the_test_split(tmp_path: Path) -> None:
    run, table, _ = make_run(tmp_path)
    out = tmp_path / "pred" / "test.csv"
    args = argparse.Namespace(source=str(run.path), out=str(out), csv=None, image_dir=None,
                              image_column="image", tta=2, batch_size=5)
    assert predict_cli(args) == 0
    written = pd.read_csv(out, dtype={"image_id": str})
    assert written["image_id"].tolist() == table.test["image_id"].tolist()
    ref = load_predictor(run.path, device="cpu").predict(table.test, tta=2, progress=False)
    np.testing.assert_allclose(written["prob_melanoma"], ref["prob_melanoma"], atol=1e-6)
    csv = tmp_path / "one.csv"
    pd.DataFrame({"image": ["img00.jpg"]}).to_csv(csv, index=False)
    args = argparse.Namespace(source=str(run.checkpoint(0, "best")), out=str(out), csv=str(csv),
                              image_dir=str(tmp_path / "data" / "images"), image_column="image",
                              tta=None, batch_size=64)
    assert predict_cli(args) == 0
    assert pd.read_csv(out)["image_id"].tolist() == ["img00.jpg"]


def test_dual_image_model_reads_both_images(tmp_path: Path) -> None:
    run, table, _ = make_run(tmp_path, task=HAM7, dual_image=True, use_meta=False)
    predictor = load_predictor(run.path, device="cpu")
    test = table.test
    out = predictor.predict(test, progress=False)
    np.testing.assert_allclose(out[HAM7.prob_columns].sum(axis=1), 1.0, atol=1e-5)
    swapped = test.assign(image_path=test["image_path_2"], image_path_2=test["image_path"])
    assert np.abs(predictor.predict(swapped, progress=False)[HAM7.prob_columns].to_numpy()
                  - out[HAM7.prob_columns].to_numpy()).max() > 1e-6
    with pytest.raises(DataError, match="image_path_2"):
        predictor.predict(test.drop(columns="image_path_2"), progress=False)
    csv = tmp_path / "pairs.csv"
    pd.DataFrame({"image": test["image_path"], "image2": test["image_path_2"]}).to_csv(
        csv, index=False)
    from_csv = predictor.predict_folder(None, csv, progress=False)
    np.testing.assert_allclose(from_csv[HAM7.prob_columns], out[HAM7.prob_columns], atol=1e-7)
    with pytest.raises(ConfigError, match="two images"):
        predictor.predict_folder(tmp_path / "data" / "images", progress=False)


def test_tta_decodes_each_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TTA views are tensor flips / transposes of one decoded, resized batch: 8 views still
    read each image file once."""
    from melalib.data import dataset

    run, table, _ = make_run(tmp_path, tta=1)
    predictor = load_predictor(run.checkpoint(0, "best"), device="cpu")
    real = dataset.read_image
    reads: list[str] = []

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dataset, "read_image", counting)
    test = table.test
    for tta in (1, 8):
        reads.clear()
        predictor.predict(test, tta=tta, progress=False, num_workers=0)
        assert sorted(reads) == sorted(test["image_path"].astype(str))
