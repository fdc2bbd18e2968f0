"""Lesion masks framed as the model sees them, localisation and border measures per image and
pooled with CIs, baselines: on synthetic images whose true masks are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melalib.errors import ConfigError, DataError
from melalib.localize import (
    MEASURES,
    MaskSource,
    border_band,
    cam_mass_on_lesion,
    centre_prior,
    dice,
    estimate_lesion_mask,
    framed_masks,
    localization,
    pooled,
)
from melalib.transforms import frame_mask

H, W, SIZE = 40, 80, 32  # a 1:2 image; the model input is 32 x 32


def _write(root: Path, image_id: str, rect: tuple[int, int, int, int]) -> dict[str, str]:
    """A 40 x 80 image with a dark rectangle (rows r0:r1, cols c0:c1) and its true mask
    as HAM stores it (``<id>_segmentation.png``, 0/1)."""
    r0, r1, c0, c1 = rect
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    img = np.full((H, W, 3), 200, np.uint8)
    img[r0:r1, c0:c1] = (90, 60, 50)
    mask = np.zeros((H, W), np.uint8)
    mask[r0:r1, c0:c1] = 1
    Image.fromarray(img).save(root / "images" / f"{image_id}.png")
    Image.fromarray(mask).save(root / "masks" / f"{image_id}_segmentation.png")
    return {"image_id": image_id, "image_path": str(root / "images" / f"{image_id}.png"),
            "group_id": image_id}


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[r0:r1, c0:c1] = True
    return m


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------------- framing
def test_crop_framing_follows_the_model_input(tmp_path: Path) -> None:
    """A lesion right of centre that the centre crop cuts: 40 x 80 -> 32 x 64 (x0.8), the
    crop keeps columns 16..48, so rows 10:30, cols 50:70 land on rows 8:24, cols 24:32."""
    rows = pd.DataFrame([_write(tmp_path, "off", (10, 30, 50, 70))])
    source = MaskSource(tmp_path / "masks")
    crop, kinds = framed_masks(rows, SIZE, "crop", source)
    assert kinds == ["true_mask"]
    truth = _box(8, 24, 24, 32)
    assert _iou(crop[0], truth) > 0.9
    # a map on the lesion as the model saw it is fully on the lesion ...
    m = localization(truth[None].astype(float), crop)
    assert m["mass_on_lesion"][0] == pytest.approx(1.0, abs=0.08)
    assert m["lesion_area"][0] == pytest.approx(truth.mean(), abs=0.02)
    assert m["pointing"][0] == 1.0
    # ... while the mask stretched to the input (the framing ignored) puts half of it off
    squashed, _ = framed_masks(rows, SIZE, "squash", source)
    assert localization(truth[None].astype(float), squashed)["mass_on_lesion"][0] < 0.6


def test_pad_framing_and_a_lesion_the_crop_cuts_off(tmp_path: Path) -> None:
    rows = pd.DataFrame([_write(tmp_path, "left", (10, 30, 2, 12))])
    source = MaskSource(tmp_path / "masks")
    padded, _ = framed_masks(rows, SIZE, "pad", source)  # 80 -> 32 (x0.4), rows 8..24 hold it
    assert _iou(padded[0], _box(12, 20, 1, 5)) > 0.6
    assert not padded[0, :8].any() and not padded[0, 24:].any()
    cropped, _ = framed_masks(rows, SIZE, "crop", source)
    assert not cropped.any()  # the crop (cols 20..60) leaves it out entirely
    m = localization(np.ones((1, SIZE, SIZE)), cropped)
    assert m["lesion_area"][0] == 0 and np.isnan(m["concentration"][0])


def test_frame_mask_matches_the_image_transform() -> None:
    """The mask goes through the same square_ops as the image (crop: scale + centre)."""
    mask = np.zeros((H, W), bool)
    mask[:, 40:] = True  # right half
    framed = frame_mask(mask, SIZE, "crop")
    assert framed.shape == (SIZE, SIZE)
    assert framed[:, 17:].all() and not framed[:, :15].any()
    with pytest.raises(ConfigError):
        frame_mask(mask[None], SIZE, "crop")


def test_masks_at_another_resolution_are_sized_to_their_image(tmp_path: Path) -> None:
    row = _write(tmp_path, "small", (10, 30, 30, 50))
    big = np.kron(np.asarray(Image.open(tmp_path / "masks" / "small_segmentation.png")),
                  np.ones((3, 3), np.uint8))  # the mask stored at 120 x 240
    Image.fromarray(big * 255).save(tmp_path / "masks" / "small_segmentation.png")
    masks, _ = framed_masks(pd.DataFrame([row]), SIZE, "crop", MaskSource(tmp_path / "masks"))
    assert _iou(masks[0], _box(8, 24, 8, 24)) > 0.85


# ----------------------------------------------------------------------- missing masks
def test_missing_masks_are_an_error_a_skip_or_a_labelled_estimate(tmp_path: Path) -> None:
    rows = pd.DataFrame([_write(tmp_path, "a", (10, 30, 30, 50)),
                         {"image_id": "b", "image_path": str(tmp_path / "images" / "a.png"),
                          "group_id": "b"}])
    source = MaskSource(tmp_path / "masks")
    with pytest.raises(DataError, match=r"no lesion mask for 1 of 2 images, e\.g\. .*b_segm"):
        framed_masks(rows, SIZE, "crop", source)
    _, kinds = framed_masks(rows, SIZE, "crop", source, missing="skip")
    assert kinds == ["true_mask", "missing"]
    image = np.full((SIZE, SIZE, 3), 200, np.uint8)
    image[8:24, 8:24] = 40
    masks, kinds = framed_masks(rows, SIZE, "crop", source, missing="estimate",
                                images=[image, image])
    assert kinds == ["true_mask", "estimate"]
    assert _iou(masks[1], _box(8, 24, 8, 24)) > 0.95
    with pytest.raises(ConfigError, match="pattern"):
        framed_masks(rows, SIZE, "crop", MaskSource(tmp_path, "{name}.png"))


def test_synthetic_masks_are_found_without_a_source(tmp_path: Path) -> None:
    from melalib.data.synthetic import make_synthetic

    table = make_synthetic(tmp_path, "binary", n_patients=4, image_size=32, seed=0)
    rows = table.df.head(3)
    masks, kinds = framed_masks(rows, 32, "squash")
    assert kinds == ["true_mask"] * 3 and masks.any(axis=(1, 2)).all()


# ---------------------------------------------------------------------------- measures
def test_measures_by_hand() -> None:
    cams = np.zeros((2, 8, 8))
    cams[0, 2:4, 2:4] = 1.0  # all on the lesion
    cams[1, 0, 0] = 3.0  # a corner peak, off the lesion
    cams[1, 2:4, 2:4] = 1.0
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:6, 2:6] = True  # area 16 / 64
    m = localization(cams, masks, border=0.125)  # band: the outermost pixel
    assert m["mass_on_lesion"].tolist() == pytest.approx([1.0, 4 / 7])
    assert m["lesion_area"].tolist() == pytest.approx([0.25, 0.25])
    assert m["concentration"].tolist() == pytest.approx([4.0, 16 / 7])
    assert m["pointing"].tolist() == [1.0, 0.0]
    assert m["border_mass"].tolist() == pytest.approx([0.0, 3 / 7])
    assert m["border_peak"].tolist() == [0.0, 1.0]


def test_all_zero_and_constant_maps_count_as_uniform_without_nan() -> None:
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:6, 2:6] = True
    cams = np.stack([np.zeros((8, 8)), np.full((8, 8), 0.3)])
    m = localization(cams, masks)
    assert not m[list(MEASURES)].isna().any().any()
    assert m["mass_on_lesion"].tolist() == pytest.approx([0.25, 0.25])
    assert m["concentration"].tolist() == pytest.approx([1.0, 1.0])
    assert m["pointing"].tolist() == [0.0, 0.0] and m["flat"].all()
    assert m["border_mass"].tolist() == pytest.approx([28 / 64] * 2)
    assert cam_mass_on_lesion(np.zeros((1, 4, 4)), masks[:1, ::2, ::2]) == pytest.approx(0.25)
    table = pooled(m, n_boot=50)
    assert not table[["estimate", "low", "high"]].isna().any().any()


def test_cam_mass_on_lesion_by_hand() -> None:
    cams = np.zeros((2, 4, 4))
    cams[0, :2, :2] = 1.0  # all mass in the top-left quarter
    cams[1] = 1.0  # uniform
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True
    assert cam_mass_on_lesion(cams, masks) == pytest.approx((4 + 4) / (4 + 16))
    assert cam_mass_on_lesion(cams[1], masks[1]) == pytest.approx(0.25)
    big = np.kron(masks.astype(np.uint8), np.ones((2, 2), np.uint8))  # masks at 8 x 8
    assert cam_mass_on_lesion(cams, big) == pytest.approx(0.4)


def test_centre_prior_and_border_band() -> None:
    prior = centre_prior((32, 32))
    assert prior.argmax() in {15 * 32 + 15, 15 * 32 + 16, 16 * 32 + 15, 16 * 32 + 16}
    band = border_band((32, 32), 0.125)
    assert band.sum() == 32 * 32 - 24 * 24 and not band[4:28, 4:28].any()
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 8:24, 8:24] = True
    m = localization(prior[None], masks)
    assert m["pointing"][0] == 1.0 and m["concentration"][0] > 1.5
    with pytest.raises(ConfigError):
        border_band((8, 8), 0.6)


def test_pooled_resamples_lesions_and_leaves_out_invisible_lesions() -> None:
    per = pd.DataFrame({"mass_on_lesion": [0.6, 0.4, 0.5, 0.0],
                        "lesion_area": [0.3, 0.2, 0.25, 0.0],
                        "concentration": [2.0, 2.0, 2.0, np.nan],
                        "pointing": [1.0, 0.0, 1.0, 0.0], "border_mass": [0.1, 0.2, 0.3, 0.4],
                        "border_peak": [0.0, 0.0, 1.0, 1.0]})
    out = pooled(per, groups=["a", "a", "b", "c"], n_boot=200).set_index("measure")
    assert out.loc["concentration", "estimate"] == pytest.approx(0.5 / 0.25)
    assert out.loc["mass_on_lesion", "estimate"] == pytest.approx(0.5)
    assert out.loc["pointing", "n"] == 3 and out.loc["border_mass", "n"] == 4
    assert out.loc["border_mass", "estimate"] == pytest.approx(0.25)
    assert (out["low"] <= out["estimate"] + 1e-12).all()
    assert (out["estimate"] <= out["high"] + 1e-12).all()
    assert out.loc["border_mass", "high"] > out.loc["border_mass", "low"]


def test_estimate_lesion_mask_finds_the_dark_centre() -> None:
    size = 64
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - 30, xx - 34)
    img = np.full((size, size, 3), 200, np.uint8)
    img[r < 12] = (90, 60, 50)  # the lesion
    img[np.hypot(yy - 31.5, xx - 31.5) > 33] = 10  # dark dermoscope rim at the corners
    mask = estimate_lesion_mask(img)
    truth = r < 12
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95
    assert not mask[0, 0]


def test_dice_by_hand() -> None:
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2], b[0, :1] = True, True  # 8 and 4 pixels, 4 shared
    a[1, :2] = True  # nothing shared
    assert dice(a, b).tolist() == pytest.approx([2 * 4 / 12, 0.0, 1.0])  # both empty: 1
    with pytest.raises(DataError):
        dice(a, b[:, :2])
