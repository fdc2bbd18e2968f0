"""Benchmark the resize cache: melalib's `prepare_images` vs a naive full decode + LANCZOS.

    python benchmarks/prepare_bench.py --n 12 --repeats 3
    python benchmarks/prepare_bench.py --n 0 --real ../shared/data/ham10000/images_200x150 \\
        --real-sizes 64,128,256 --real-n 300

Generated sources: for each ``--cases`` entry ``WIDTHxHEIGHT:SIZE`` (default: 4000x3000 at
256 and 512, 2000x1500 at 256 and 512, 1024x768 at 512, 765x572 (PH2) at 512, 600x450
(HAM10000 full size) at 256), ``--n`` dermoscopy-like JPEGs (synthetic lesions upscaled,
with skin texture and sensor grain so file sizes resemble camera JPEGs). ``--real DIR``
adds a real folder (its first ``--real-n`` JPEGs) at each of ``--real-sizes``.

Per case, one process, files read once first (page cache warm), then ``--repeats`` rounds;
each round runs every method once on the same files, in rotating order, into a fresh
folder, and its CPU time is measured (``time.process_time``):

* ``melalib``: ``prepare_images(workers=1)`` (JPEG draft decoding at the smallest DCT scale
  covering the target, OpenCV bilinear (< 1.5x left) or area final resize, JPEG save; a
  JPEG needing no resize is checked by a decode and copied byte for byte);
* ``draft+LANCZOS``: the previous melalib path (draft decoding, LANCZOS, re-encode);
* ``decode only``: `read_image` at the target (the draft decode alone, nothing resized or
  written): the ceiling of any path that has to decode the file;
* ``naive``: ``Image.open(p).convert("RGB").resize(size, LANCZOS)`` + the same JPEG save.

Prints the median seconds per method and the speed ratios vs naive (median over the
rounds of naive / method, with the range), and the quality of melalib's pixels against a
full decode + LANCZOS of the same file before JPEG encoding (PSNR, worst file; max abs
difference in grey levels).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melalib.data.images import read_image
from melalib.data.prepare import decode_resized, prepare_images, target_size
from melalib.data.synthetic import make_synthetic

DEFAULT_CASES = ("4000x3000:256,4000x3000:512,2000x1500:256,2000x1500:512,1024x768:512,"
                 "765x572:512,600x450:256")


def make_sources(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """N JPEGs (quality 92) of width x height: synthetic lesions + texture + grain."""
    folder.mkdir(parents=True, exist_ok=True)
    n_patients = max(4, n // 3 + 2)
    base = make_synthetic(folder.parent / "synthetic", "multiclass", n_patients, 256, seed)
    rng = np.random.default_rng(seed)
    paths = []
    bases = base.df["image_path"].tolist()
    for i in range(n):
        with Image.open(bases[i % len(bases)]) as im:
            img = im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        tex = rng.standard_normal((height // 8 + 1, width // 8 + 1), dtype=np.float32)
        tex_img = Image.fromarray(tex, mode="F").resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.float32)
        pixels *= 1 + 0.04 * np.asarray(tex_img)[..., None]
        pixels += 2.5 * rng.standard_normal(pixels.shape, dtype=np.float32)
        path = folder / f"ISIC_{i:07d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
        paths.append(path)
    return paths


def naive_one(source: Path, output: Path, size: int, quality: int) -> None:
    im = Image.open(source).convert("RGB")
    im = im.resize(target_size(*im.size, size), Image.Resampling.LANCZOS)
    im.save(output, format="JPEG", quality=quality)


def draft_lanczos_one(source: Path, output: Path, size: int, quality: int) -> None:
    im = Image.fromarray(read_image(source, size))
    w, h = target_size(*im.size, size)
    if (w, h) != im.size:
        im = im.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    im.save(output, format="JPEG", quality=quality)


def decode_only(source: Path, output: Path, size: int, quality: int) -> None:
    read_image(source, size)  # the draft decode alone: no resize, no encode, no write


def per_file(fn: Callable[[Path, Path, int, int], None]) -> Callable[..., None]:
    def run(paths: list[Path], src: Path, dst: Path, size: int, quality: int) -> None:
        dst.mkdir(parents=True)
        for p in paths:
            fn(p, dst / p.name, size, quality)
    return run


def run_melalib(paths: list[Path], src: Path, dst: Path, size: int, quality: int) -> None:
    report = prepare_images(src, dst, size=size, workers=1, quality=quality, progress=False)
    if report.n_failed or report.n_done != len(paths):
        raise RuntimeError(f"prepare did not convert every file: {report.summary()}")


METHODS = {"melalib": run_melalib, "draft+LANCZOS": per_file(draft_lanczos_one),
           "decode only": per_file(decode_only), "naive": per_file(naive_one)}


def quality(paths: list[Path], size: int) -> tuple[float, int]:
    """(worst PSNR in dB, max abs difference) of melalib's pixels vs full decode + LANCZOS."""
    worst, max_diff = np.inf, 0
    for p in paths[:10]:
        out = np.asarray(decode_resized(p, size), dtype=np.float64)
        with Image.open(p) as im:
            ref = ImageOps.exif_transpose(im).convert("RGB")
        ref = np.asarray(ref.resize(target_size(*ref.size, size), Image.Resampling.LANCZOS),
                         dtype=np.float64)
        mse = float(((out - ref) ** 2).mean())
        worst = min(worst, 10 * np.log10(255.0**2 / mse) if mse > 0 else np.inf)
        max_diff = max(max_diff, int(np.abs(out - ref).max()))
    return worst, max_diff


def bench_case(label: str, paths: list[Path], size: int, repeats: int, root: Path,
               quality_: int) -> None:
    """Time every method ``repeats`` times, interleaved, and print one row per method."""
    src = paths[0].parent
    for p in paths:
        p.read_bytes()  # page cache warm for every method
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    names = list(METHODS)
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            dst = Path(tempfile.mkdtemp(prefix=f"{name.replace('+', '_')}_", dir=root))
            start = time.process_time()
            METHODS[name](paths, src, dst / "out", size, quality_)
            times[name].append(time.process_time() - start)
    psnr, max_diff = quality(paths, size)
    naive = np.array(times["naive"])
    for name in ("melalib", "draft+LANCZOS", "decode only"):
        ratio = naive / np.array(times[name])
        print(f"{label:<34}{size:>5}{name:>15}{np.median(times[name]):>9.2f}"
              f"{np.median(naive):>9.2f}{np.median(ratio):>8.2f}x [{ratio.min():.2f}, "
              f"{ratio.max():.2f}]" + (f"{psnr:>9.1f}{max_diff:>6}" if name == "melalib" else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=12, help="generated sources per case (0: none)")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="WxH:SIZE,... generated cases")
    parser.add_argument("--real", type=Path, default=None, help="a folder of real JPEGs")
    parser.add_argument("--real-sizes", default="128,256", help="target sizes for --real")
    parser.add_argument("--real-n", type=int, default=200, help="JPEGs taken from --real")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the outputs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"CPU seconds per round (process_time), median of {args.repeats} interleaved rounds, "
          f"1 process; cpu_count {os.cpu_count()}; ratio = naive / method (median [min, max])")
    print(f"{'source':<34}{'size':>5}{'method':>15}{'seconds':>9}{'naive s':>9}"
          f"{'ratio':>9}{'':>14}{'PSNR dB':>9}{'max':>6}")
    with tempfile.TemporaryDirectory(prefix="prepare_bench_") as tmp:
        root = Path(tmp)
        if args.n > 0:
            for case in args.cases.split(","):
                shape, size = case.split(":")
                width, height = (int(v) for v in shape.lower().split("x"))
                paths = make_sources(root / f"src_{shape}", args.n, width, height, args.seed)
                kb = sum(p.stat().st_size for p in paths) / len(paths) / 1e3
                bench_case(f"generated {shape} ({kb:.0f} kB) x{args.n}", paths, int(size),
                           args.repeats, root, args.quality)
        if args.real is not None:
            paths = sorted(p for p in args.real.iterdir()
                           if p.suffix.lower() in (".jpg", ".jpeg"))[: args.real_n]
            if not paths:
                raise SystemExit(f"no JPEGs in {args.real}")
            link = root / "real"
            link.mkdir()
            for p in paths:  # the subset as its own folder (prepare walks a folder)
                os.symlink(p.resolve(), link / p.name)
            local = sorted(link.iterdir())
            with Image.open(local[0]) as im:
                shape = f"{im.width}x{im.height}"
            for size in (int(s) for s in args.real_sizes.split(",")):
                bench_case(f"{args.real.name} ({shape}) x{len(local)}", local, size,
                           args.repeats, root, args.quality)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
