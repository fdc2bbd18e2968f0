"""One image reader everywhere: EXIF orientation, 16-bit scaling, alpha, pixel ceiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melalib.config import RunConfig
from melalib.data.dataset import LesionDataset, check_images_readable, image_problem, load_image
from melalib.data.images import ImageOptions, read_image
from melalib.data.prepare import decode_resized
from melalib.errors import ConfigError, ImageError
from melalib.tasks import Task


@pytest.fixture
def deep_png(tmp_path: Path) -> Path:
    """16-bit greyscale PNG: left half 0x8000 (mid grey), right half 0x2000 (dark)."""
    values = np.full((40, 60), 0x8000, dtype=np.uint16)
    values[:, 30:] = 0x2000
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really stored with 16 bits
    return path


@pytest.fixture
def rotated_jpeg(tmp_path: Path) -> Path:
    """An 80 x 40 (landscape) JPEG whose EXIF orientation 6 says: show it as 40 x 80."""
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = (250, 10, 10)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


@pytest.fixture
def rgba_png(tmp_path: Path) -> Path:
    """Black pixels, half of them fully transparent."""
    pixels = np.zeros((20, 20, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[:, 10:, 3] = 0
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    return path


def _dataset_image(path: Path, **options: object) -> np.ndarray:
    """The image as the training / prediction dataset reads it (before transforms)."""
    df = pd.DataFrame({"image_id": ["a"], "image_path": [str(path)], "label": [0]})
    seen: list[np.ndarray] = []

    def transform(image: np.ndarray) -> np.ndarray:
        seen.append(image)
        return np.zeros((3, 4, 4), dtype=np.float32)

    ds = LesionDataset(df, Task("t", "binary", ("a", "b"), "roc_auc"), None, transform,
                       image_options=ImageOptions(**options) if options else None)
    ds[0]
    return seen[0]


def test_16bit_png_is_scaled_not_white_in_dataset_prepare_and_check(deep_png: Path) -> None:
    """Training read 16-bit PNGs as all white (img.convert('RGB') clips at 255)."""
    for image in (load_image(deep_png), _dataset_image(deep_png),
                  np.asarray(decode_resized(deep_png, 1000))):
        assert image.dtype == np.uint8 and image.shape == (40, 60, 3)
        assert image[0, 0].tolist() == [0x80] * 3
        assert image[0, -1].tolist() == [0x20] * 3
    assert image_problem(deep_png) is None


def test_exif_orientation_applied_by_the_dataset(rotated_jpeg: Path) -> None:
    """The training loader ignored EXIF orientation while `prepare` applied it."""
    image = _dataset_image(rotated_jpeg)
    assert image.shape == (80, 40, 3)  # portrait, as a viewer shows it
    prepared = np.asarray(decode_resized(rotated_jpeg, 1000))
    assert prepared.shape == image.shape
    assert np.abs(prepared.astype(int) - image.astype(int)).max() <= 2
    # orientation 6 = rotate 270 deg: the red left half ends up on top
    assert image[:40, :, 0].mean() > 200 and image[40:, :, 0].mean() < 50


def test_alpha_composited_on_stated_background_or_refused(rgba_png: Path) -> None:
    white = _dataset_image(rgba_png)
    assert white[0, 0].tolist() == [0, 0, 0] and white[0, -1].tolist() == [255, 255, 255]
    black = _dataset_image(rgba_png, alpha="black")
    assert black[0, -1].tolist() == [0, 0, 0]
    with pytest.raises(ImageError, match=r"transparent pixels.*image_alpha=error"):
        _dataset_image(rgba_png, alpha="error")
    reason = image_problem(rgba_png, ImageOptions(alpha="error"))
    assert reason is not None and "image_alpha" in reason


def test_fully_opaque_alpha_is_accepted_under_error(tmp_path: Path) -> None:
    path = tmp_path / "opaque.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 255)).save(path)
    assert read_image(path, options=ImageOptions(alpha="error"))[0, 0].tolist() == [10, 20, 30]


def test_pixel_ceiling_refuses_before_decoding(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "huge.png"
    Image.new("RGB", (3000, 2000)).save(path)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded the pixels"))
    with pytest.raises(ImageError, match=r"3000 x 2000 = 6.0 Mpx is above max_image_pixels"):
        read_image(path, options=ImageOptions(max_pixels=5_000_000))
    df = pd.DataFrame({"image_path": [str(path)]})
    bad = check_images_readable(df, options=ImageOptions(max_pixels=5_000_000))
    assert "max_image_pixels" in bad["reason"].iloc[0]


def test_image_options_come_from_the_config() -> None:
    cfg = RunConfig.from_dict({"image_alpha": "error", "max_image_pixels": 123})
    assert ImageOptions.from_config(cfg.data) == ImageOptions("error", 123)
    with pytest.raises(ConfigError, match="image_alpha"):
        RunConfig.from_dict({"image_alpha": "grey"})
    with pytest.raises(ConfigError, match="max_image_pixels"):
        RunConfig.from_dict({"max_image_pixels": -1})


def test_missing_and_corrupt_files_are_image_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match=r"bad\.png"):
        read_image(tmp_path / "bad.png")


def _short_png(path, width: int = 32, height: int = 32) -> None:
    """A well-formed PNG (valid chunks and CRCs, IEND) whose compressed pixel rows stop
    half-way: Pillow decodes it without an error, the missing rows black."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + bytes([200] * width * 3) for _ in range(height // 2))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_preflight_rejects_image_data_that_ends_early(tmp_path) -> None:
    """Issue 24: a PNG whose data ends early decoded with black rows and passed."""
    import io

    import pandas as pd

    from melalib.data.dataset import check_images_readable
    from melalib.data.images import incomplete_data

    _short_png(tmp_path / "short.png")
    jpeg = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    data = jpeg.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    good = []
    for name, kwargs in (("a.png", {}), ("i.png", {"interlace": 1}), ("b.jpg", {}),
                         ("p.jpg", {"progressive": True})):
        Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(
            tmp_path / name, **kwargs)
        good.append(str(tmp_path / name))
    assert "ends early" in incomplete_data(tmp_path / "short.png")
    paths = [str(tmp_path / "short.png"), str(tmp_path / "cut.jpg"), *good]
    bad = check_images_readable(pd.DataFrame({"image_path": paths}), workers=1)
    assert bad["path"].tolist() == paths[:2] and bad["row"].tolist() == [1, 2]
    assert "ends early" in bad["reason"].iloc[0]


def test_every_folder_reader_lists_the_same_image_files(tmp_path: Path) -> None:
    """One extension list (`data.images.IMAGE_EXTENSIONS`, any case): an image-folder
    dataset, the unlisted-image report and `melalib prepare` see the same files of a folder
    and skip the same others."""
    from melalib.data.dataset import find_unlisted_images
    from melalib.data.prepare import prepare_images
    from melalib.data.sources.image_folder import load_image_folder

    names = {"a.jpg": "JPEG", "b.JPEG": "JPEG", "c.png": "PNG", "d.bmp": "BMP",
             "e.tif": "TIFF", "f.webp": "WEBP"}
    for cls in ("mel", "nev"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for name, fmt in names.items():
            Image.new("RGB", (12, 10), (90, 40, 30)).save(tmp_path / "tree" / cls / name, fmt)
    images = {"a.jpg", "b.JPEG", "c.png"}
    table = load_image_folder(tmp_path / "tree")
    assert {Path(p).name for p in table.df["image_path"]} == images
    unlisted = find_unlisted_images(table.df.iloc[:0], image_dir=tmp_path / "tree" / "mel")
    assert {Path(p).name for p in unlisted} == images
    report = prepare_images(tmp_path / "tree" / "mel", tmp_path / "cache", size=8, workers=1)
    assert report.n_total == len(images)
