"""A resized image cache: full-size dermoscopy JPEGs -> small JPEGs, fast and resumable.

Decoding a 6000x4000 ISIC JPEG only to shrink it to 512 px wastes most of the time; libjpeg
can decode at 1/2, 1/4 or 1/8 scale directly from the DCT coefficients. `decode_resized`
asks Pillow for that (``Image.draft``) with the smallest scale that still covers the target,
then finishes with `resize_final`: OpenCV bilinear when less than 2x remains (always the
case after the DCT scaling; 40-49 dB PSNR from a full-decode LANCZOS resize on generated
and real sources), else Pillow's LANCZOS (``reducing_gap=3``, e.g. large PNGs). On 2 cores that is >= 8x a naive full decode
+ LANCZOS on 4000x3000 sources and not slower on small ones, where the LANCZOS kernel alone
cost more than the naive path's decode (``benchmarks/prepare_bench.py``, docs/benchmarks.md).
A JPEG that needs no resize (already at or below the target, RGB, no EXIF rotation) is
decoded once to check it, then copied byte for byte: lossless, and no re-encoding.

`prepare_images` walks a folder (recursively; sub-folders are kept), writes each output as
``<dst>/<relative path>.jpg`` through a temporary name and ``os.replace`` (so a file that
exists is complete), skips outputs that already exist (resume), and records unreadable
files in the report and ``<dst>/skipped_images.csv`` instead of failing.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import ConfigError, DataError, ImageError
from ..io import write_csv, write_error, write_json
from ..progress import bar as progress_bar
from ..transforms import ASPECTS
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageOptions, read_image

PATTERNS = tuple(f"*{e}" for e in IMAGE_EXTENSIONS)
SETTINGS_FILE = "prepare.json"
SOURCES_FILE = "prepare_sources.json"  # output name -> [size, mtime_ns] of its source
SKIPPED_FILE = "skipped_images.csv"
CHUNK = 16  # files per task sent to a worker process
LINEAR_BELOW = 2.0  # bilinear while the remaining downscale is below this; LANCZOS above
#: ``keep`` (shorter side = size, aspect ratio kept) or a training ``aspect`` baked in.
PREPARE_ASPECTS = ("keep", *ASPECTS)


@dataclass
class PrepareReport:
    """What one `prepare_images` call did."""

    src_dir: Path
    dst_dir: Path
    size: int
    n_total: int = 0  # image files found in src_dir
    n_done: int = 0  # written by this call
    n_skipped_existing: int = 0  # already in dst_dir (an earlier run), source unchanged
    n_redone: int = 0  # in dst_dir, but its source changed since: converted again
    n_failed: int = 0  # unreadable: listed in failures and skipped_images.csv
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.n_done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.n_total} images in {self.src_dir}: {self.n_done} written, "
                f"{self.n_skipped_existing} already done, "
                f"{f'{self.n_redone} redone (source changed), ' if self.n_redone else ''}"
                f"{self.n_failed} failed "
                f"({self.seconds:.1f} s, {self.images_per_second:.1f} images/s) -> {self.dst_dir}")


def target_size(width: int, height: int, size: int, aspect: str = "keep") -> tuple[int, int]:
    """The (width, height) an image is resized to before `square`: ``keep`` shorter side
    ``size`` (never enlarged); ``squash`` ``size`` x ``size``; ``crop`` shorter side
    ``size``; ``pad`` longer side ``size`` (``crop`` and ``pad`` enlarge small images, as
    the training transform does)."""
    if aspect == "squash":
        return size, size
    short, long = min(width, height), max(width, height)
    if aspect == "keep" and short <= size:
        return width, height
    scale = size / (long if aspect == "pad" else short)
    return max(1, round(width * scale)), max(1, round(height * scale))


def square(pixels: np.ndarray, size: int, aspect: str) -> np.ndarray:
    """``crop``: the centred ``size`` x ``size`` square; ``pad``: centred on black to
    ``size`` x ``size``; ``keep`` / ``squash``: unchanged (the framing of
    `melalib.transforms.square_ops`)."""
    height, width = pixels.shape[:2]
    if aspect == "crop":
        top, left = (height - size) // 2, (width - size) // 2
        return pixels[top: top + size, left: left + size]
    if aspect == "pad":
        out = np.zeros((size, size, *pixels.shape[2:]), dtype=pixels.dtype)
        top, left = (size - height) // 2, (size - width) // 2
        out[top: top + height, left: left + width] = pixels
        return out
    return pixels


def decode_resized(path: str | os.PathLike[str], size: int, aspect: str = "keep",
                   options: ImageOptions | None = None) -> Image.Image:
    """Decode an image with `melalib.data.images.read_image` (EXIF orientation, 16-bit
    scaling, alpha, pixel ceiling; JPEGs at a reduced DCT scale) and resize it.

    ``aspect``: ``keep`` makes the shorter side ``size`` (an image already smaller keeps its
    size); ``squash``, ``crop`` and ``pad`` make a ``size`` x ``size`` square as training's
    ``aspect`` does (`target_size`, `square`).
    Unreadable files raise `ImageError` naming the file and the reason.
    """
    pixels = read_image(path, size, options)
    height, width = pixels.shape[:2]
    resized = resize_final(pixels, target_size(width, height, size, aspect))
    return Image.fromarray(square(resized, size, aspect))


def resize_final(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, C) ``pixels`` at ``size`` (width, height): unchanged when equal;
    OpenCV bilinear when no axis shrinks by `LINEAR_BELOW` or more (the usual case after a
    JPEG's DCT scaling); else Pillow's LANCZOS after an integer box reduce while more than
    3x remains (``reducing_gap=3``)."""
    import cv2  # heavy (OpenCV): only for the downscales it serves

    height, width = pixels.shape[:2]
    if (width, height) == tuple(size):
        return pixels
    if max(width / size[0], height / size[1]) < LINEAR_BELOW:
        return cv2.resize(pixels, tuple(size), interpolation=cv2.INTER_LINEAR)
    image = Image.fromarray(pixels).resize(tuple(size), Image.Resampling.LANCZOS,
                                           reducing_gap=3.0)
    return np.asarray(image)


def copies_unchanged(path: str | os.PathLike[str], size: int, aspect: str = "keep") -> bool:
    """True when ``path`` is a 3-component JPEG without EXIF (so no rotation) that is
    already at its target size: `prepare` may copy it as it is. Decided from the markers
    before the frame header (a few hundred bytes), cheaper than Pillow opening the file."""
    header = _jpeg_frame(path)
    if header is None:
        return False
    width, height, components, has_exif = header
    unchanged = target_size(width, height, size, aspect) == (width, height) and (
        aspect in ("keep", "squash") or width == height == size)
    return components == 3 and not has_exif and width * height <= DEFAULT_MAX_PIXELS and unchanged


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_frame(path: str | os.PathLike[str]) -> tuple[int, int, int, bool] | None:
    """(width, height, components, has an EXIF segment) from a JPEG's markers, or None."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 16)
    except OSError:
        return None
    if data[:2] != b"\xff\xd8":
        return None
    pos, has_exif = 2, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF:
            if pos + 10 > len(data):
                return None
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return width, height, data[pos + 9], has_exif
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            has_exif = True
        if marker == 0xDA or length < 2:  # scan data before any frame header: not ours
            return None
        pos += 2 + length
    return None


def prepare_images(src_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str],
                   size: int = 512, workers: int | None = None,
                   pattern: Sequence[str] | str = PATTERNS, quality: int = 95,
                   aspect: str = "keep", progress: bool = True,
                   color_constancy: bool = False) -> PrepareReport:
    """Resize every image under ``src_dir`` into ``dst_dir`` (see the module docstring).

    ``size``: shorter side of the outputs (``aspect=keep``, never enlarged) or the side of
    square outputs framed as training's ``aspect`` (``squash``, ``crop``, ``pad``; a cache
    made so trains with the same ``aspect`` or any, since it is square). ``workers``: processes
    (default ``min(os.cpu_count(), 8)``; 1 = in this process). ``pattern``: file-name
    globs, case-insensitive. Outputs are JPEGs of ``quality`` (a JPEG source that needs no
    resize is copied as it is). ``dst_dir`` may not be
    ``src_dir``, lie inside it or contain it. A folder prepared earlier with other settings
    (size, aspect, quality) is refused, so a resume never mixes two sizes.
    ``color_constancy``: every output is colour-corrected (`images.shades_of_gray`, as
    training's ``color_constancy=true``; no JPEG is copied unchanged).
    """
    src, dst = Path(src_dir).expanduser().absolute(), Path(dst_dir).expanduser().absolute()
    patterns = (pattern,) if isinstance(pattern, str) else tuple(pattern)
    _check_args(src, dst, size, quality, workers, patterns)
    n_workers = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
    if aspect not in PREPARE_ASPECTS:
        raise ConfigError(f"aspect must be one of {', '.join(PREPARE_ASPECTS)}; got {aspect!r}")
    settings: dict[str, Any] = {"size": int(size), "aspect": aspect, "quality": int(quality)}
    if color_constancy:  # only then: caches prepared before the option keep their settings
        settings["color_constancy"] = True
    _claim(dst, settings)
    report = PrepareReport(src_dir=src, dst_dir=dst, size=int(size))
    start = time.perf_counter()
    report.n_total = sum(1 for _ in _walk(src, patterns))
    bar = progress_bar(total=report.n_total, unit="img", desc=f"prepare {size}px", disable=not progress)
    outputs: dict[str, str] = {}  # output name -> its source (two sources, one output: fail)
    stamps = _Stamps(dst)
    try:
        todo = _pending(src, dst, patterns, report, outputs, bar, stamps)
        args = (int(size), int(quality), aspect, bool(color_constancy))
        for results in _run(todo, args, n_workers):
            for source, reason in results:
                if reason is None:
                    report.n_done += 1
                    stamps.done(source)
                else:
                    report.failures.append((source, reason))
            bar.update(len(results))
    finally:
        bar.close()
        stamps.save()
    report.n_failed = len(report.failures)
    skipped = pd.DataFrame(report.failures, columns=["path", "reason"])
    write_csv(dst / SKIPPED_FILE, skipped)
    report.seconds = time.perf_counter() - start
    return report


def _check_args(src: Path, dst: Path, size: int, quality: int, workers: int | None,
                patterns: tuple[str, ...]) -> None:
    for name, value, low, high in (("size", size, 8, 100_000), ("quality", quality, 1, 100)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"prepare {name} must be an integer in [{low}, {high}], got {value!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ConfigError(f"prepare workers must be a positive integer or None, got {workers!r}")
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(f"prepare pattern must be one or more globs, got {patterns!r}")
    if not src.is_dir():
        raise DataError("source image folder does not exist or is not a folder", file=src)
    if dst.exists() and not dst.is_dir():
        raise DataError("destination exists and is not a folder", file=dst)
    rs, rd = src.resolve(), dst.resolve()
    if rd == rs or rs in rd.parents:
        raise DataError(f"destination {dst} is inside the source folder; prepare never writes "
                        "into the source: pick a folder outside it", file=src)
    if rd in rs.parents:
        raise DataError(f"destination {dst} contains the source folder; pick a folder that "
                        "does not", file=src)


def _claim(dst: Path, settings: dict[str, object]) -> None:
    """Record the settings in ``dst``; refuse a folder prepared with other settings, a
    folder holding other files (``prepare.json`` is prepare's marker) and a link."""
    marker = dst / SETTINGS_FILE
    if dst.is_symlink():
        raise DataError(f"destination is a symbolic link (to {os.readlink(dst)}); melalib does "
                        "not write through links: name the real folder", file=dst)
    if not marker.is_file() and dst.is_dir() and any(dst.iterdir()):
        raise DataError("destination holds files that melalib prepare did not write (no "
                        f"{SETTINGS_FILE}); pick a new or empty folder", file=dst)
    if marker.is_file():
        try:
            old = _current_settings(json.loads(marker.read_text()))
        except (OSError, ValueError):
            old = None
        if old != settings:
            raise DataError(f"holds images prepared with other settings ({old}, asked "
                            f"{settings}); pick another destination folder", file=marker)
        return
    dst.mkdir(parents=True, exist_ok=True)
    write_json(marker, settings)


def _current_settings(old: object) -> object:
    """Settings recorded by an older melalib (``keep_aspect``) in today's terms (``aspect``)."""
    if isinstance(old, dict) and "keep_aspect" in old and "aspect" not in old:
        old = {**old, "aspect": "keep" if old.pop("keep_aspect") else "squash"}
        return {k: old[k] for k in ("size", "aspect", "quality") if k in old}
    return old


def _walk(src: Path, patterns: tuple[str, ...]) -> Iterator[Path]:
    """Matching files under ``src``, sorted, streamed (case-insensitive globs)."""
    lowered = tuple(p.lower() for p in patterns)
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            if any(fnmatch.fnmatchcase(name.lower(), p) for p in lowered):
                yield Path(root) / name


class _Stamps:
    """Each output's source as it was converted (size, mtime in ns), in ``SOURCES_FILE``: a
    resume keeps an output only while its source is unchanged. An output without a record
    (an older melalib, or a run killed before it saved the record) is kept when it is newer
    than its source."""

    def __init__(self, dst: Path) -> None:
        self.path = dst / SOURCES_FILE
        try:
            self.recorded: dict[str, list[int]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.recorded = {}
        self.pending: dict[str, tuple[str, list[int]]] = {}  # source -> (key, stamp)

    def current(self, key: str, source: Path, out: Path) -> bool:
        """True when ``out`` was made from ``source`` as it is now; records the stamp that
        a conversion of ``source`` will be filed under."""
        st = source.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        self.pending[str(source)] = (key, stamp)
        if not (out.is_file() and out.stat().st_size > 0):
            return False
        old = self.recorded.get(key)
        fresh = old == stamp if old is not None else out.stat().st_mtime_ns >= st.st_mtime_ns
        if fresh:
            self.recorded[key] = stamp
        return fresh

    def done(self, source: str) -> None:
        key, stamp = self.pending.pop(source)
        self.recorded[key] = stamp

    def save(self) -> None:
        if self.path.parent.is_dir():
            write_json(self.path, self.recorded)


def _pending(src: Path, dst: Path, patterns: tuple[str, ...], report: PrepareReport,
             outputs: dict[str, str], bar: Any, stamps: _Stamps) -> Iterator[tuple[str, str]]:
    """(source, output) pairs still to do; counts outputs that already exist and whose
    source is unchanged; an output whose source changed is deleted and done again."""
    for path in _walk(src, patterns):
        rel = path.relative_to(src).with_suffix(".jpg")
        out = dst / rel
        key = rel.as_posix()
        if key in outputs:
            report.failures.append((str(path), f"same output name {key} as {outputs[key]}"))
            bar.update(1)
            continue
        outputs[key] = str(path)
        if stamps.current(key, path, out):
            report.n_skipped_existing += 1
            bar.update(1)
            continue
        if out.is_file():  # made from an older version of the source: never kept stale
            out.unlink()
            report.n_redone += 1
        yield str(path), str(out)


def _chunks(items: Iterator[tuple[str, str]], n: int) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run(todo: Iterator[tuple[str, str]], args: tuple[int, int, str, bool],
         workers: int) -> Iterator[list[tuple[str, str | None]]]:
    """Results per chunk; at most ``4 * workers`` chunks in flight (bounded memory)."""
    if workers <= 1:
        for chunk in _chunks(todo, CHUNK):
            yield _convert_chunk(chunk, *args)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        running: set[Future] = set()
        for chunk in _chunks(todo, CHUNK):
            running.add(pool.submit(_convert_chunk, chunk, *args))
            if len(running) >= 4 * workers:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        for future in running:
            yield future.result()


def _convert_chunk(chunk: list[tuple[str, str]], size: int, quality: int,
                   aspect: str, color_constancy: bool = False) -> list[tuple[str, str | None]]:
    """Worker: convert each (source, output); reason None on success."""
    return [(source, convert_one(source, output, size, quality, aspect, color_constancy))
            for source, output in chunk]


def convert_one(source: str | os.PathLike[str], output: str | os.PathLike[str], size: int,
                quality: int = 95, aspect: str = "keep", color_constancy: bool = False
                ) -> str | None:
    """Write ``source`` resized to ``output`` (JPEG, atomically); the failure reason or None.

    A JPEG that `copies_unchanged` is decoded at 1/8 scale (every byte is still entropy-
    decoded, so a corrupt or truncated file is refused as on the resize path) and then
    copied byte for byte instead of re-encoded."""
    copy = not color_constancy and copies_unchanged(source, size, aspect)
    options = ImageOptions(color_constancy=color_constancy)
    try:  # a copy is only checked: decoding at the smallest DCT scale reads every byte too
        pixels = read_image(source, 1 if copy else size, options)
    except ImageError as err:
        return err.detail
    output = Path(output)
    # one writer per process at a time: the pid keeps temporary names apart
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copyfile(source, tmp)
        else:
            height, width = pixels.shape[:2]
            resized = resize_final(pixels, target_size(width, height, size, aspect))
            Image.fromarray(square(resized, size, aspect)).save(tmp, format="JPEG",
                                                                quality=quality)
        os.replace(tmp, output)
    except OSError as exc:  # disk full / no permission: WriteError naming the output
        raise write_error(output, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return None
