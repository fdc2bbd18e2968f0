"""How a non-square image becomes the square input (``aspect``), the same at training and at
prediction; the file size stays out of the metadata unless asked for; metadata far from the
training rows is flagged when predicting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melalib.cli import main
from melalib.config import RunConfig
from melalib.engine import train
from melalib.errors import ConfigError
from melalib.features import MetaEncoder
from melalib.inference import drift_file, load_predictor
from melalib.runs import RunDir
from melalib.transforms import ASPECTS, build_transforms, denormalize


def _striped(height: int = 40, width: int = 80) -> np.ndarray:
    """Left quarter red, centre half green, right quarter blue."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 4, 0] = 255
    img[:, width // 4: 3 * width // 4, 1] = 255
    img[:, 3 * width // 4:, 2] = 255
    return img


@pytest.mark.parametrize("aspect", ASPECTS)
def test_aspect_framing(aspect: str) -> None:
    out = denormalize(build_transforms(20, train=False, aspect=aspect)(_striped()))
    assert out.shape == (20, 20, 3)
    red, green, blue = (out[..., c] > 128 for c in range(3))
    if aspect == "squash":  # everything kept, stretched: all three stripes
        assert red[:, 0].all() and green[:, 10].all() and blue[:, -1].all()
    elif aspect == "crop":  # the centre square holds only the green half
        assert green.all() and not red.any() and not blue.any()
    else:  # pad: the whole image, scaled to 20x10, black bars above and below
        assert red[10, 0] and green[10, 10] and blue[10, -1]
        assert (out[:4] < 20).all() and (out[-4:] < 20).all()


def test_train_pipeline_uses_the_same_framing() -> None:
    image = _striped()
    for aspect in ("crop", "pad"):
        light = build_transforms(20, train=True, strength="none", seed=0, aspect=aspect)
        valid = build_transforms(20, train=False, aspect=aspect)
        assert np.array_equal(light(image), valid(image))


def test_border_aug_vignette_darkens_the_rim_in_training_only() -> None:
    """border_aug=vignette: about half the training draws darken the frame outside a random
    circle (corners dark, centre kept), reproducibly per seed; validation never does."""
    image = np.full((40, 40, 3), 220, np.uint8)
    train_tf = build_transforms(20, train=True, strength="none", aspect="crop",
                                border_aug="vignette")
    outs = [denormalize(train_tf(image, seed=s)) for s in range(40)]
    dark = [o[0, 0].max() < 60 for o in outs]
    assert 8 <= sum(dark) <= 32  # p = 0.5
    assert all((o[8:12, 8:12] > 200).all() for o in outs)  # the centre is never covered
    assert np.array_equal(train_tf(image, seed=3), train_tf(image, seed=3))
    plain = build_transforms(20, train=False, aspect="crop")
    valid = build_transforms(20, train=False, aspect="crop", border_aug="vignette")
    assert np.array_equal(plain(image), valid(image))
    assert "DermoscopeVignette" in repr(train_tf) and "DermoscopeVignette" not in repr(valid)


def test_border_aug_is_a_config_choice_used_by_the_training_dataset(tmp_path: Path) -> None:
    from melalib.runtime import make_dataset
    from melalib.table import LesionTable
    from melalib.tasks import MELANOMA

    with pytest.raises(ConfigError, match="border_aug must be one of none, vignette"):
        RunConfig.from_dict({"border_aug": "circle"})
    cfg = RunConfig.from_dict({"border_aug": "vignette", "backbone": "resnet10t"})
    df = pd.DataFrame({"image_id": ["a"], "image_path": [str(tmp_path / "a.png")],
                       "group_id": ["a"], "label": [1], "label_name": ["melanoma"],
                       "age": [50.0], "sex": ["male"], "site": ["torso"], "split": ["train"]})
    table = LesionTable(df, MELANOMA)
    assert "DermoscopeVignette" in repr(make_dataset(cfg, table, df, None, train=True).transform)
    assert "Vignette" not in repr(make_dataset(cfg, table, df, None, train=False).transform)


def test_aspect_is_validated() -> None:
    with pytest.raises(ConfigError, match="aspect must be one of squash, crop, pad"):
        RunConfig.from_dict({"aspect": "stretch"})


# ------------------------------------------------------------------ a tiny non-square run
@pytest.fixture(scope="module")
def crop_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    root = tmp_path_factory.mktemp("nonsquare")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = "mel" if i % 2 else "nev"
        img = rng.integers(0, 80, (30, 60, 3)).astype(np.uint8)
        img[:, 20:40, 0 if label == "mel" else 2] = 230  # the class lives in the centre
        Image.fromarray(img).save(root / f"im{i:02d}.png")
        rows.append({"image": f"im{i:02d}.png", "label": label, "age": 30 + i,
                     "image_bytes_src": 1000 + i})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    cfg = RunConfig.from_dict(
        dataset="custom", custom_csv=str(root / "labels.csv"), custom_meta_columns=("age=age",),
        backbone="resnet10t", image_size=32, aspect="crop", epochs=2, batch_size=8, n_folds=2,
        meta_hidden=(8,), tta=1, output_dir=str(root / "out"), name="crop")
    train(cfg, fold=0, progress=False)
    return RunDir.read(cfg.run_dir)


def test_prediction_frames_images_as_training_did(crop_run: RunDir) -> None:
    oof = pd.read_csv(crop_run.path / "oof_fold0.csv")
    table = crop_run.table()
    rows = table.df.set_index("image_id").loc[oof["image_id"]].reset_index()
    predictor = load_predictor(crop_run.checkpoint(0, "best"))
    assert predictor.cfg.data.aspect == "crop"
    again = predictor.predict(rows, progress=False)
    columns = [c for c in oof.columns if c.startswith("prob_")]
    np.testing.assert_allclose(again[columns].to_numpy(), oof[columns].to_numpy(), atol=1e-5)


def test_metadata_drift_is_written_and_warned_once(crop_run: RunDir, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """`melalib predict` warns each drifting feature once: printed or logged, not both."""
    table = crop_run.table()
    csv = tmp_path / "new.csv"
    new = pd.DataFrame({"image": [Path(p).name for p in table.df["image_path"][:6]],
                        "age": [95.0] * 6})
    new.to_csv(csv, index=False)
    out = tmp_path / "pred.csv"
    image_dir = str(Path(table.df["image_path"][0]).parent)
    assert main(["predict", str(crop_run.path), "--out", str(out), "--csv", str(csv),
                 "--image-dir", image_dir, "--batch-size", "8"]) == 0
    said = capsys.readouterr()
    warning = "metadata feature 'age' lies outside the training distribution"
    told = [said.out, said.err] + [r.getMessage() for r in caplog.records]
    assert sum(text.count(warning) for text in told) == 1
    drift = pd.read_csv(drift_file(out))
    flagged = drift.set_index("feature")["flagged"]
    assert bool(flagged["age"]) and not bool(flagged["age_missing"])


def test_run_lists_its_features_without_the_file_size(crop_run: RunDir) -> None:
    features = pd.read_csv(crop_run.path / "features_fold0.csv")["name"].tolist()
    assert "age" in features and not any("bytes" in f for f in features)
    assert "random init" in (crop_run.path / "run.json").read_text()


def test_file_size_is_opt_in() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"sex": ["male", "female"] * 10, "site": "torso",
                       "age": rng.normal(50, 9, 20), "image_bytes": rng.normal(4000, 300, 20),
                       "group_id": [f"p{i // 2}" for i in range(20)]})
    assert "image_bytes" not in MetaEncoder("default").fit(df).feature_names
    assert not any("bytes" in f for f in MetaEncoder("context").fit(df).feature_names)
    assert "image_bytes" in MetaEncoder("default", file_size=True).fit(df).feature_names
    assert "image_size" in MetaEncoder("isic11").fit(df).feature_names  # the preset names it
    big = df.assign(image_bytes=15000.0)
    drift = MetaEncoder("default", file_size=True).fit(df).drift(big).set_index("feature")
    assert drift.loc["image_bytes", "flagged"] and drift.loc["image_bytes", "shift_sd"] > 6
    assert not drift.drop(index="image_bytes")["flagged"].any()


def test_aspect_plot_shows_every_setting(tmp_path: Path) -> None:
    from melalib.plots import aspect_plot

    fig = aspect_plot(_striped(), size=16, save=tmp_path / "aspect.png")
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["image 80x40", *(f"aspect={a} (16x16)" for a in ASPECTS)]
    assert (tmp_path / "aspect.png").stat().st_size > 0


@pytest.mark.parametrize("aspect", ["crop", "pad", "squash"])
def test_prepare_frames_as_training_does(tmp_path: Path, aspect: str) -> None:
    """A cache prepared with ``--aspect A`` gives the model the same picture as training with
    ``aspect=A`` on the original image (up to resampling and JPEG noise)."""
    from melalib.data.prepare import prepare_images

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.repeat(np.repeat(_striped(), 4, axis=0), 4, axis=1)).save(
        src / "wide.png")
    report = prepare_images(src, tmp_path / "cache", size=32, aspect=aspect, workers=1,
                            progress=False)
    assert report.n_done == 1
    cached = np.asarray(Image.open(tmp_path / "cache" / "wide.jpg").convert("RGB"))
    assert cached.shape == (32, 32, 3)
    transform = build_transforms(32, train=False, aspect=aspect)
    from_raw = denormalize(transform(np.asarray(Image.open(src / "wide.png"))))
    from_cache = denormalize(transform(cached))
    assert np.abs(from_raw.astype(int) - from_cache.astype(int)).mean() < 12
    with pytest.raises(ConfigError, match="aspect must be one of keep"):
        prepare_images(src, tmp_path / "bad", size=32, aspect="stretch", progress=False)


def test_prepare_resumes_a_cache_recorded_by_an_older_melalib(tmp_path: Path) -> None:
    from melalib.data.prepare import SETTINGS_FILE, prepare_images

    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    cache.mkdir()
    Image.fromarray(_striped()).save(src / "a.png")
    (cache / SETTINGS_FILE).write_text('{"size": 32, "keep_aspect": true, "quality": 95}')
    assert prepare_images(src, cache, size=32, workers=1, progress=False).n_done == 1
    with pytest.raises(Exception, match="other settings"):
        prepare_images(src, cache, size=32, aspect="crop", workers=1, progress=False)
