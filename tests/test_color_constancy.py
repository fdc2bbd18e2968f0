"""Colour constancy (`color_constancy=true`, `melalib prepare --color-constancy`): one Shades
of Gray correction in the one image reader, so training, prediction, Grad-CAM and prepare
see the same colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melalib.config import RunConfig
from melalib.data.images import ImageOptions, read_image, shades_of_gray
from melalib.data.load import load_table
from melalib.data.prepare import prepare_images
from melalib.errors import ConfigError, DataError
from melalib.runtime import make_dataset


def _cast_image(tmp_path: Path) -> Path:
    """A lesion-like image under a strong yellow cast."""
    yy, xx = np.mgrid[0:40, 0:50]
    blob = np.exp(-((yy - 20) ** 2 + (xx - 25) ** 2) / 120.0)
    base = (180 - 110 * blob + 0.5 * xx)[..., None]  # smooth skin with a dark lesion
    cast = np.clip(base * np.array([1.2, 1.0, 0.45]), 0, 255).astype(np.uint8)
    path = tmp_path / "cast.png"
    Image.fromarray(cast).save(path)
    return path


def _p_norms(image: np.ndarray, p: int = 6) -> np.ndarray:
    return np.power(np.mean(np.power(image.astype(np.float64), p), axis=(0, 1)), 1 / p)


def test_shades_of_gray_equalises_the_channel_norms_and_is_idempotent(tmp_path: Path) -> None:
    image = read_image(_cast_image(tmp_path))
    norms = _p_norms(image)
    assert norms.max() / norms.min() > 2
    corrected = shades_of_gray(image)
    fixed = _p_norms(corrected)
    assert fixed.max() / fixed.min() == pytest.approx(1.0, abs=0.02)
    again = shades_of_gray(corrected)
    assert np.abs(again.astype(int) - corrected.astype(int)).max() <= 2
    black = np.zeros((4, 4, 3), np.uint8)
    assert (shades_of_gray(black) == black).all()


def test_the_reader_applies_it_only_when_asked(tmp_path: Path) -> None:
    path = _cast_image(tmp_path)
    plain = read_image(path)
    assert (read_image(path, options=ImageOptions()) == plain).all()
    assert (read_image(path, options=ImageOptions(color_constancy=True))
            == shades_of_gray(plain)).all()
    cfg = RunConfig.from_dict({"color_constancy": True})
    assert ImageOptions.from_config(cfg.data).color_constancy
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"color_constancy": "sometimes"})


def test_the_dataset_of_training_and_prediction_sees_corrected_images(tmp_path: Path) -> None:
    base = {"dataset": "synthetic", "synthetic_patients": 8, "synthetic_image_size": 32,
            "image_size": 32, "data_dir": str(tmp_path), "augment": "none"}
    plain = RunConfig.from_dict(base)
    corrected = RunConfig.from_dict({**base, "color_constancy": True})
    table = load_table(plain.data)
    df = table.df.head(3).reset_index(drop=True)
    for cfg, expect_cc in ((plain, False), (corrected, True)):
        for train in (True, False):
            item = make_dataset(cfg, table, df, None, train=train)[0]
            raw = read_image(df["image_path"][0])
            source = shades_of_gray(raw) if expect_cc else raw
            reference = make_dataset(plain, table, df, None, train=False).transform(source)
            assert np.allclose(np.asarray(item["image"]), reference, atol=1e-5)


def test_prepare_bakes_the_correction_and_keeps_it_apart(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(read_image(_cast_image(tmp_path))).save(src / "a.jpg", quality=95)
    dst = tmp_path / "dst"
    report = prepare_images(src, dst, size=32, workers=1, progress=False,
                            color_constancy=True)
    assert report.n_done == 1
    out = read_image(dst / "a.jpg")
    norms = _p_norms(out)
    assert norms.max() / norms.min() < 1.1
    plain = prepare_images(src, tmp_path / "plain", size=32, workers=1, progress=False)
    assert plain.n_done == 1
    norms = _p_norms(read_image(tmp_path / "plain" / "a.jpg"))
    assert norms.max() / norms.min() > 2
    with pytest.raises(DataError, match="other settings"):  # made with the correction
        prepare_images(src, dst, size=32, workers=1, progress=False)
