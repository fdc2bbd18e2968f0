"""The resized image cache: sizes, aspect, EXIF, failures, resume, refusal, pixel fidelity."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageOps

from melalib.data.prepare import (
    SKIPPED_FILE,
    decode_resized,
    prepare_images,
    target_size,
)
from melalib.errors import ConfigError, DataError, ImageError

N_GOOD = 30
SIZE = 128


def _photo(rng: np.random.Generator, width: int = 800, height: int = 600) -> Image.Image:
    """A photo-like RGB image: smooth colour blobs, a dark disc and sensor noise."""
    small = rng.integers(60, 230, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    r = rng.uniform(0.1, 0.3) * height
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r],
                                fill=tuple(int(v) for v in rng.integers(30, 90, 3)))
    pixels = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (height, width, 3),
                                                             dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 good JPEGs (two in a sub-folder), one PNG with alpha, one EXIF-rotated JPEG,
    and three bad ``.jpg`` files: truncated, empty, text."""
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        folder = root / "sub" if i >= N_GOOD - 2 else root
        folder.mkdir(exist_ok=True)
        _photo(rng).save(folder / f"img_{i:03d}.jpg", quality=90)
    rgba = _photo(rng).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _photo(rng).save(root / "rotated.JPG", quality=90, exif=exif)
    buf = io.BytesIO()
    _photo(rng).save(buf, format="JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "notes.txt").write_text("not matched by the patterns\n")
    return root


N_IMAGES = N_GOOD + 2  # + alpha.png + rotated.JPG
N_BAD = 3


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def prepared(src: Path, tmp_path_factory: pytest.TempPathFactory):
    before = _snapshot(src)
    dst = tmp_path_factory.mktemp("cache") / f"{SIZE}px"
    report = prepare_images(src, dst, size=SIZE, workers=2, progress=False)
    assert _snapshot(src) == before  # the source folder is never touched
    return dst, report


def test_report_counts_and_failures(prepared, src: Path) -> None:
    dst, report = prepared
    assert report.n_total == N_IMAGES + N_BAD
    assert report.n_done == N_IMAGES
    assert report.n_skipped_existing == 0
    assert report.n_failed == N_BAD == len(report.failures)
    reasons = {Path(p).name: r for p, r in report.failures}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "text.jpg"}
    assert "truncated" in reasons["truncated.jpg"]
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["text.jpg"]
    skipped = pd.read_csv(dst / SKIPPED_FILE)
    assert list(skipped.columns) == ["path", "reason"]
    assert dict(zip(skipped["path"], skipped["reason"], strict=True)) == dict(report.failures)
    assert report.seconds > 0


def test_outputs_shorter_side_and_aspect(prepared, src: Path) -> None:
    dst, _ = prepared
    outputs = sorted(p for p in dst.rglob("*.jpg"))
    assert len(outputs) == N_IMAGES
    assert (dst / "sub" / f"img_{N_GOOD - 1:03d}.jpg").is_file()  # sub-folders kept
    assert (dst / "alpha.jpg").is_file() and (dst / "rotated.jpg").is_file()
    assert not list(dst.rglob("*.tmp"))
    for path in outputs:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert min(im.size) == SIZE
            if path.name == "rotated.jpg":  # EXIF orientation 6: portrait after transpose
                assert im.size == (SIZE, round(800 * SIZE / 600))
            else:
                assert im.size == (round(800 * SIZE / 600), SIZE)


def test_pixels_close_to_full_decode(prepared, src: Path) -> None:
    """Draft (DCT-scaled) decode + the final OpenCV resize vs full decode + LANCZOS: mean
    absolute difference bounded by 8 levels of 255 on these images."""
    dst, _ = prepared
    diffs = []
    for name in ("img_000.jpg", "img_007.jpg", "img_015.jpg", "rotated.JPG", "alpha.png"):
        with Image.open(src / name) as im:
            ref = ImageOps.exif_transpose(im).convert("RGBA")
        # transparent pixels are composited on white (image_alpha's default)
        ref = Image.alpha_composite(Image.new("RGBA", ref.size, "white"), ref).convert("RGB")
        out = Image.open(dst / Path(name).with_suffix(".jpg").name)
        ref = ref.resize(out.size, Image.Resampling.LANCZOS)
        diff = np.abs(np.asarray(out, dtype=float) - np.asarray(ref, dtype=float)).mean()
        diffs.append(diff)
    assert max(diffs) < 8, diffs


def test_rerun_skips_done_and_regenerates_deleted(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cache"
    first = prepare_images(src, dst, size=64, workers=2, progress=False)
    assert first.n_done == N_IMAGES
    again = prepare_images(src, dst, size=64, workers=2, progress=False)
    assert (again.n_done, again.n_skipped_existing, again.n_failed) == (0, N_IMAGES, N_BAD)
    victim = dst / "img_004.jpg"
    kept = dst / "img_005.jpg"
    kept_mtime = kept.stat().st_mtime_ns
    victim.unlink()
    third = prepare_images(src, dst, size=64, workers=1, progress=False)
    assert (third.n_done, third.n_skipped_existing) == (1, N_IMAGES - 1)
    with Image.open(victim) as im:
        assert min(im.size) == 64
    assert kept.stat().st_mtime_ns == kept_mtime


def test_other_settings_refused(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "cache"
    prepare_images(src, dst, size=48, workers=1, progress=False, pattern="img_00*.jpg")
    with pytest.raises(DataError, match="other settings"):
        prepare_images(src, dst, size=64, workers=1, progress=False)


def test_destination_inside_source_refused(src: Path, tmp_path: Path) -> None:
    before = _snapshot(src)
    for dst in (src, src / "resized", src / "sub" / "x"):
        with pytest.raises(DataError, match="inside the source"):
            prepare_images(src, dst, size=64, progress=False)
    with pytest.raises(DataError, match="contains the source"):
        prepare_images(src, src.parent, size=64, progress=False)
    assert _snapshot(src) == before
    with pytest.raises(DataError, match="does not exist"):
        prepare_images(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        prepare_images(src, tmp_path / "a_file", progress=False)
    with pytest.raises(ConfigError):
        prepare_images(src, tmp_path / "out", size=0, progress=False)
    with pytest.raises(ConfigError):
        prepare_images(src, tmp_path / "out", workers=0, progress=False)


def test_square_outputs_and_name_collision(src: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    _photo(rng, 300, 200).save(raw / "a.jpg")
    _photo(rng, 300, 200).save(raw / "a.png")  # same output name a.jpg
    _photo(rng, 50, 40).save(raw / "small.jpg")
    report = prepare_images(raw, tmp_path / "sq", size=64, aspect="squash", workers=1,
                            progress=False)
    assert (report.n_done, report.n_failed) == (2, 1)
    assert "same output name" in report.failures[0][1]
    assert report.failures[0][0].endswith("a.png")
    for name in ("a.jpg", "small.jpg"):
        with Image.open(tmp_path / "sq" / name) as im:
            assert im.size == (64, 64)


def test_decode_resized_and_target_size(src: Path) -> None:
    assert target_size(800, 600, 128) == (171, 128)
    assert target_size(600, 800, 128) == (128, 171)
    assert target_size(100, 50, 128) == (100, 50)  # never enlarged
    assert target_size(800, 600, 128, aspect="squash") == (128, 128)
    im = decode_resized(src / "img_001.jpg", 100)
    assert im.mode == "RGB" and im.size == (133, 100)
    for name, reason in (("empty.jpg", "empty"), ("text.jpg", "not an image"),
                         ("truncated.jpg", "truncated")):
        with pytest.raises(ImageError, match=reason) as err:
            decode_resized(src / name, 100)
        assert err.value.file == str(src / name)


def test_jpeg_decoded_at_reduced_dct_scale(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """800x600 to a 128 px shorter side: libjpeg's 1/4 scale (200x150) still covers the
    target, so the final resize starts from 200x150, not from the full 800x600."""
    from melalib.data import prepare

    seen: list[tuple[int, int]] = []
    original = prepare.resize_final

    def spy(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        seen.append((pixels.shape[1], pixels.shape[0]))
        return original(pixels, size)

    monkeypatch.setattr(prepare, "resize_final", spy)
    out = decode_resized(src / "img_002.jpg", 128)
    assert out.size == (171, 128)
    assert seen == [(200, 150)]
    seen.clear()
    png = decode_resized(src / "alpha.png", 128)  # PNG: no draft, full decode
    assert png.size == (171, 128) and seen == [(800, 600)]


def test_sixteen_bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    """Pillow's own I;16 -> RGB conversion clips at 255; decode_resized scales to 8 bits."""
    ramp = np.tile(np.linspace(0, 65535, 400).astype(np.uint16), (300, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode == "I;16"
    out = np.asarray(decode_resized(tmp_path / "deep.png", 100), dtype=float)
    assert out.shape == (100, 133, 3)
    assert abs(out.mean() - 127.5) < 3 and out[:, :5].mean() < 10 and out[:, -5:].mean() > 245


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return 10 * np.log10(255.0**2 / mse) if mse else float("inf")


@pytest.mark.parametrize(("shape", "target"), [((1000, 1000), (512, 512)),
                                               ((800, 600), (683, 512)),
                                               ((1600, 1200), (171, 128))])
def test_final_resize_close_to_lanczos(shape: tuple[int, int], target: tuple[int, int]) -> None:
    """Bilinear below 2x (here 1.17x and 1.95x), Pillow LANCZOS with a box reduce above
    (9.4x): >= 40 dB PSNR from a plain LANCZOS resize on a textured image."""
    from melalib.data.prepare import resize_final

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (shape[1] // 8, shape[0] // 8, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize(shape, Image.Resampling.BICUBIC))
    pixels = np.clip(pixels + rng.normal(0, 3, pixels.shape), 0, 255).astype(np.uint8)
    ref = np.asarray(Image.fromarray(pixels).resize(target, Image.Resampling.LANCZOS))
    out = resize_final(pixels, target)
    assert out.shape == ref.shape and out.dtype == np.uint8
    assert _psnr(out, ref) >= 40
    assert resize_final(pixels, shape) is pixels  # nothing to do: no copy


def test_small_jpeg_is_copied_byte_for_byte(tmp_path: Path) -> None:
    """A JPEG already at or below the target is checked and copied, not re-encoded; one
    with EXIF, a PNG, a larger JPEG and a truncated JPEG take the decode path."""
    from melalib.data.prepare import copies_unchanged

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src / "small.jpg", quality=80)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(src / "rotated.jpg", quality=80, exif=exif.tobytes())
    Image.fromarray(pixels).save(src / "other.png")
    Image.fromarray(np.repeat(np.repeat(pixels, 4, 0), 4, 1)).save(src / "large.jpg")
    data = (src / "small.jpg").read_bytes()
    (src / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert copies_unchanged(src / "small.jpg", 128)
    assert not copies_unchanged(src / "small.jpg", 64)  # needs a resize
    assert not copies_unchanged(src / "rotated.jpg", 128)
    assert not copies_unchanged(src / "other.png", 128)
    assert not copies_unchanged(src / "large.jpg", 128)
    report = prepare_images(src, tmp_path / "dst", size=128, workers=1, quality=95,
                            progress=False)
    assert report.n_done == 4 and [Path(f).name for f, _ in report.failures] == ["cut.jpg"]
    dst = tmp_path / "dst"
    assert (dst / "small.jpg").read_bytes() == data
    assert (dst / "rotated.jpg").read_bytes() != (src / "rotated.jpg").read_bytes()
    with Image.open(dst / "rotated.jpg") as im:
        assert im.size == (90, 120)  # EXIF orientation 6 applied
    with Image.open(dst / "large.jpg") as im:
        assert im.size == (171, 128)
    assert not list(dst.glob(".*.tmp"))


def test_resume_redoes_an_output_whose_source_changed(tmp_path: Path) -> None:
    """Issue 24: `prepare` resumed after a source image changed used to keep the stale copy."""
    import os

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    rng = np.random.default_rng(3)
    _photo(rng, 200, 160).save(src / "a.jpg")
    _photo(rng, 200, 160).save(src / "b.jpg")
    first = prepare_images(src, dst, size=64, workers=1, progress=False)
    assert (first.n_done, first.n_redone) == (2, 0)
    old = (dst / "a.jpg").read_bytes()
    Image.new("RGB", (200, 160), (250, 10, 10)).save(src / "a.jpg")  # the source changes
    stat = (src / "a.jpg").stat()
    os.utime(src / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**10))  # even older
    again = prepare_images(src, dst, size=64, workers=1, progress=False)
    assert (again.n_done, again.n_redone, again.n_skipped_existing) == (1, 1, 1)
    assert (dst / "a.jpg").read_bytes() != old
    assert np.asarray(Image.open(dst / "a.jpg"))[..., 0].mean() > 200  # the new content
    third = prepare_images(src, dst, size=64, workers=1, progress=False)
    assert (third.n_done, third.n_skipped_existing) == (0, 2)


def test_prepare_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "mine"
    src.mkdir()
    _photo(np.random.default_rng(4), 64, 64).save(src / "a.jpg")
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="did not write"):
        prepare_images(src, dst, size=32, workers=1, progress=False)
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
