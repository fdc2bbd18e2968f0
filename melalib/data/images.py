"""The one image reader: every part of melalib decodes a picture through `read_image`.

The dataset (training, validation, `predict`, Grad-CAM), `prepare`, the pre-flight image
check and the plots all call it, so an image looks the same everywhere:

- EXIF orientation is applied (a phone photo stored sideways is turned upright);
- 16-bit images are scaled to 8 bits (``>> 8``), not clipped to white;
- transparency is composited on a stated background (``image_alpha``: white or black), or
  refused (``image_alpha=error``); an alpha channel that is fully opaque changes nothing;
- an image with more than ``max_image_pixels`` pixels is refused with an `ImageError`
  before its pixels are decoded (a 179 Mpx image costs ~2 GB to decode);
- with ``size``, a JPEG is decoded at the smallest power-of-two DCT reduction whose sides
  stay >= ``size`` (much faster on full-size dermoscopy photographs);
- with ``color_constancy`` (config ``color_constancy=true``), the colours are corrected by
  `shades_of_gray` (Minkowski p = 6, as the ISIC 2019 winners did): the same correction in
  training, validation, TTA, prediction, Grad-CAM and ``melalib prepare --color-constancy``;
- with ``field_mask`` (config ``field_mask=ellipse``), everything outside the ellipse
  inscribed in the image is set to black (`FIELD_MASKS`): a dermoscope's round field with
  its corners, rulers and vignette removed, the same at training and everywhere after
  (the checkpoint carries the option). Applied after the colour correction.

The result is a uint8 RGB array (H, W, 3); resizing is left to the transforms and `prepare`.

An image may also be a member of an HDF5 archive holding one encoded image per key (the ISIC
2024 ``train-image.hdf5``: isic_id -> JPEG bytes): its path is the archive's path joined with
the key, ``.../train-image.hdf5/ISIC_0000001`` (`hdf5_member`). `image_nbytes` and
`image_exists` answer for files and members alike; h5py (the ``isic2024`` extra) is imported
only when a member is read.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, ImageError
from ..registry import Registry

#: the image files melalib lists in a folder (any case): image-folder datasets, `melalib
#: predict --image-dir`, unlisted-image reports, `melalib prepare`
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: the ``image_alpha`` choices: name -> background colour of transparent pixels (``None``:
#: refuse such images)
ALPHA_CHOICES: Registry[tuple[int, int, int] | None] = Registry(
    "image_alpha", {"white": (255, 255, 255), "black": (0, 0, 0), "error": None})
DEFAULT_MAX_PIXELS = 64_000_000


def inscribed_ellipse(height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie inside the ellipse inscribed in the frame."""
    yy = (np.arange(height) + 0.5 - height / 2.0) / (height / 2.0)
    xx = (np.arange(width) + 0.5 - width / 2.0) / (width / 2.0)
    return yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0


def _ellipse_field(rgb: np.ndarray) -> np.ndarray:
    return np.where(inscribed_ellipse(*rgb.shape[:2])[..., None], rgb, 0).astype(np.uint8)


#: the ``field_mask`` choices: name -> uint8 RGB -> uint8 RGB (`read_image` applies it)
FIELD_MASKS: Registry[Callable[[np.ndarray], np.ndarray]] = Registry(
    "field_mask", {"none": lambda rgb: rgb, "ellipse": _ellipse_field})
_JPEG_FORMATS = ("JPEG", "MPO")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
#: archive suffixes whose members are images (`hdf5_member`)
HDF5_SUFFIXES = (".hdf5", ".h5")
_ARCHIVES: dict[tuple[int, str], Any] = {}  # (process id, archive path) -> open h5py.File


@dataclass(frozen=True)
class ImageOptions:
    """How `read_image` treats transparency and very large images."""

    alpha: str = "white"  # `ALPHA_CHOICES`
    max_pixels: int = DEFAULT_MAX_PIXELS  # 0 = no ceiling of melalib's own
    color_constancy: bool = False  # Shades of Gray colour correction (`shades_of_gray`)
    field_mask: str = "none"  # `FIELD_MASKS`

    def __post_init__(self) -> None:
        ALPHA_CHOICES.check(self.alpha)
        FIELD_MASKS.check(self.field_mask)
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) \
                or self.max_pixels < 0:
            raise ConfigError(f"max_image_pixels must be an integer >= 0, got {self.max_pixels!r}")

    @classmethod
    def from_config(cls, data_cfg: object) -> ImageOptions:
        """The options of a `DataConfig` (defaults where it lacks the fields)."""
        return cls(alpha=getattr(data_cfg, "image_alpha", "white"),
                   max_pixels=getattr(data_cfg, "max_image_pixels", DEFAULT_MAX_PIXELS),
                   color_constancy=bool(getattr(data_cfg, "color_constancy", False)),
                   field_mask=str(getattr(data_cfg, "field_mask", "none")))


def shades_of_gray(image: np.ndarray, p: int = 6) -> np.ndarray:
    """Shades of Gray colour constancy (Finlayson & Trezzi 2004): each channel is scaled so
    that the illuminant estimated by its Minkowski p-norm mean becomes grey. uint8 RGB in
    and out; an all-black image is returned unchanged."""
    rgb = np.asarray(image, dtype=np.float32)
    norms = np.power(np.mean(np.power(rgb, p), axis=(0, 1)), 1.0 / p)
    length = float(np.sqrt(np.sum(norms ** 2)))
    if length == 0.0 or not np.all(norms > 0):
        return np.asarray(image, dtype=np.uint8)
    scale = 1.0 / (norms / length * np.sqrt(3.0))
    return np.clip(rgb * scale, 0, 255).round().astype(np.uint8)


def hdf5_member(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """(archive, key) when ``path`` names a member of an HDF5 archive (its parent has a
    `HDF5_SUFFIXES` suffix and is a file), else None."""
    p = Path(path)
    if p.parent.suffix.lower() in HDF5_SUFFIXES and p.parent.is_file():
        return p.parent, p.name
    return None


def _archive(path: Path) -> Any:
    """The open archive (one handle per process: DataLoader workers open their own)."""
    key = (os.getpid(), str(path))
    if key not in _ARCHIVES:
        import h5py  # optional dependency (the isic2024 extra): only HDF5 archives need it

        _ARCHIVES[key] = h5py.File(path, "r")
    return _ARCHIVES[key]


def _member(path: str | os.PathLike[str]) -> Any:
    """The h5py dataset of an archive member; FileNotFoundError when there is none."""
    member = hdf5_member(path)
    if member is None:
        raise FileNotFoundError(str(path))
    archive, key = member
    handle = _archive(archive)
    if key not in handle:
        raise FileNotFoundError(f"{archive} holds no image {key!r}")
    return handle[key]


def member_bytes(path: str | os.PathLike[str]) -> bytes:
    """The encoded bytes of an archive member (`hdf5_member`), stored as a scalar byte
    string (what ``h5py`` writes for ``create_dataset(key, data=jpeg_bytes)``)."""
    value = _member(path)[()]
    return value if isinstance(value, bytes) else np.asarray(value).tobytes()


def image_nbytes(path: str | os.PathLike[str]) -> float:
    """Size in bytes of an image file or archive member; NaN when there is none (a
    fixed-length member's size is read from its type, without reading the image)."""
    try:
        if hdf5_member(path) is None:
            return float(os.stat(path).st_size)
        data = _member(path)
        if data.dtype.kind == "S" and data.shape == ():
            return float(data.dtype.itemsize)
        return float(len(member_bytes(path)))
    except OSError:
        return float("nan")


def image_exists(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an image file or an archive member (`hdf5_member`)."""
    if hdf5_member(path) is not None:
        return not np.isnan(image_nbytes(path))
    return os.path.isfile(path)


def _source(path: Path) -> Path | io.BytesIO:
    """What Pillow opens: the file, or an archive member's bytes; ImageError when empty."""
    if hdf5_member(path) is not None:
        data = member_bytes(path)
        if not data:
            raise ImageError("empty archive member (0 bytes)", file=path)
        return io.BytesIO(data)
    if path.stat().st_size == 0:
        raise ImageError("empty file (0 bytes)", file=path)
    return path


def read_image(path: str | os.PathLike[str], size: int | None = None,
               options: ImageOptions | None = None) -> np.ndarray:
    """Decode the image at ``path`` to uint8 RGB (H, W, 3) (see the module docstring).

    Every failure is an `ImageError` naming the file: missing, empty, not an image,
    truncated or corrupt, too many pixels, or transparent under ``image_alpha=error``.
    """
    options = options or ImageOptions()
    path = Path(path)
    try:
        with Image.open(_source(path)) as img:
            _check_pixels(img, path, options)
            if size and img.format in _JPEG_FORMATS:  # DCT-domain downscale
                img.draft("RGB", (size, size))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img, path, options)
        rgb = shades_of_gray(rgb) if options.color_constancy else rgb
        return FIELD_MASKS[options.field_mask](rgb)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("image not found", file=path) from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file", file=path) from None
    except UnidentifiedImageError:
        raise ImageError("not an image (Pillow cannot identify the format)", file=path) from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large: {err}; shrink it (melalib prepare)",
                         file=path) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"corrupt or truncated: {err}", file=path) from None


def _check_pixels(img: Image.Image, path: Path, options: ImageOptions) -> None:
    """Refuse an image above the ceiling from its header, before decoding any pixel."""
    width, height = img.size
    if options.max_pixels and width * height > options.max_pixels:
        raise ImageError(
            f"image of {width} x {height} = {width * height / 1e6:.1f} Mpx is above "
            f"max_image_pixels={options.max_pixels} ({options.max_pixels / 1e6:g} Mpx); "
            "shrink it (melalib prepare) or raise max_image_pixels", file=path)


def _to_rgb(img: Image.Image, path: Path, options: ImageOptions) -> np.ndarray:
    """uint8 RGB: 16-bit and 32-bit integer greyscale scaled, alpha composited or refused."""
    if img.mode.startswith("I;16") or img.mode == "I":
        deep = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray((deep >> 8).astype(np.uint8))
    elif img.mode == "F":
        flat = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(flat, initial=0.0) <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.nan_to_num(flat) * scale, 0, 255).astype(np.uint8))
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))
        alpha = rgba[..., 3:].astype(np.float32) / 255.0
        if (alpha < 1.0).any():
            colour = ALPHA_CHOICES[options.alpha]
            if colour is None:
                raise ImageError(
                    "image has transparent pixels (alpha channel) and image_alpha=error "
                    "refuses them; set image_alpha=white or black to composite them",
                    file=path)
            background = np.array(colour, dtype=np.float32)
            rgb = rgba[..., :3].astype(np.float32) * alpha + background * (1.0 - alpha)
            return np.ascontiguousarray(np.rint(rgb).astype(np.uint8))
        return np.ascontiguousarray(rgba[..., :3])
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


# ------------------------------------------------------------- strict completeness check
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))


def incomplete_data(path: str | os.PathLike[str]) -> str | None:
    """Why the image data of a PNG or JPEG at ``path`` ends early, or None. Pillow decodes a
    PNG whose compressed rows stop short (the rest comes out black) and a JPEG whose scan
    data stops before its end marker without an error; the pre-flight refuses both."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head == _PNG_SIGNATURE:
            return _png_short(fh)
        if head[:2] == b"\xff\xd8":
            data = head + fh.read()
            if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
                return "JPEG data ends before its end-of-image marker (truncated)"
    return None


def _png_expected(width: int, height: int, depth: int, color: int, interlace: int) -> int:
    """Bytes of filtered scanlines a complete PNG of this header decompresses to."""
    bits = _PNG_CHANNELS.get(color, 4) * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-(w * bits) // 8))
    return total


def _png_short(fh: Any) -> str | None:
    """The PNG's IDAT stream, decompressed in pieces (never held whole): short or unended."""
    inflate, produced, expected = zlib.decompressobj(), 0, None
    while True:
        header = fh.read(8)
        if len(header) < 8:
            return "PNG data ends before its IEND chunk (truncated)"
        length, kind = struct.unpack(">I4s", header)
        body = fh.read(length)
        fh.read(4)  # CRC: Pillow's verify() checks it
        if kind == b"IHDR" and len(body) >= 13:
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
            expected = _png_expected(width, height, depth, color, interlace)
        elif kind == b"IDAT":
            try:
                while body and produced <= (expected or 0):
                    produced += len(inflate.decompress(body, 1 << 20))
                    body = inflate.unconsumed_tail
            except zlib.error as exc:
                return f"PNG image data is corrupt ({exc})"
        elif kind == b"IEND":
            break
    if expected is not None and produced < expected:
        return (f"PNG image data ends early: {produced} of {expected} bytes of pixel rows "
                "(the missing rows would be black)")
    return None
