"""Benchmark the resize cache: melalib's draft-mode prepare vs a naive full decode + resize.

    python benchmarks/prepare_bench.py --n 200 --src-size 2000x1500 --size 256 --workers 2

Generates N large dermoscopy-like JPEGs (synthetic lesions upscaled, with skin texture and
sensor grain so file sizes resemble camera JPEGs) in a temporary folder, reads them once
(page cache warm for every method), then times side by side on the same files:

* melalib ``prepare_images`` (JPEG ``draft`` DCT downscaling + LANCZOS), 1 and N workers;
* naive ``Image.open(p).convert("RGB").resize(size, LANCZOS)`` + the same JPEG save, with
  the same process pool layout, 1 and N workers.

Prints images/s per method and the ratios (draft / naive at equal workers, N / 1 worker),
and the mean absolute pixel difference between the two methods' outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melalib.data.prepare import prepare_images, target_size
from melalib.data.synthetic import make_synthetic


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


def _naive_one(args: tuple[str, str, int, int]) -> None:
    source, output, size, quality = args
    im = Image.open(source).convert("RGB")
    im = im.resize(target_size(*im.size, size), Image.Resampling.LANCZOS)
    im.save(output, format="JPEG", quality=quality)


def run_naive(paths: list[Path], dst: Path, size: int, workers: int, quality: int) -> float:
    """Seconds for the naive full decode + resize of every file (same pool layout)."""
    dst.mkdir(parents=True)
    jobs = [(str(p), str(dst / p.name), size, quality) for p in paths]
    start = time.perf_counter()
    if workers <= 1:
        for job in jobs:
            _naive_one(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_naive_one, jobs, chunksize=16))
    return time.perf_counter() - start


def run_prepare(src: Path, dst: Path, size: int, workers: int, quality: int) -> float:
    report = prepare_images(src, dst, size=size, workers=workers, quality=quality,
                            progress=False)
    if report.n_failed or report.n_done != report.n_total:
        raise RuntimeError(f"prepare did not convert every file: {report.summary()}")
    return report.seconds


def mean_abs_diff(a: Path, b: Path, names: list[str]) -> float:
    diffs = []
    for name in names:
        x = np.asarray(Image.open(a / name), dtype=np.float64)
        y = np.asarray(Image.open(b / name), dtype=np.float64)
        diffs.append(np.abs(x - y).mean())
    return float(np.mean(diffs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of source images")
    parser.add_argument("--src-size", default="2000x1500", help="source WIDTHxHEIGHT")
    parser.add_argument("--size", type=int, default=256, help="shorter side of the outputs")
    parser.add_argument("--workers", type=int, default=2, help="processes for the N-worker runs")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the outputs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.src_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="prepare_bench_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        paths = make_sources(root / "src", args.n, width, height, args.seed)
        total = sum(p.stat().st_size for p in paths)
        for p in paths:  # warm the page cache so no method pays the first read
            p.read_bytes()
        print(f"{args.n} source JPEGs {width}x{height}, mean {total / args.n / 1e3:.0f} kB "
              f"(generated in {time.perf_counter() - t0:.1f} s); output shorter side "
              f"{args.size}, quality {args.quality}; cpu_count {os.cpu_count()}")
        runs = {}
        for workers in sorted({1, args.workers}):
            runs[("draft", workers)] = run_prepare(root / "src", root / f"draft_w{workers}",
                                                   args.size, workers, args.quality)
            runs[("naive", workers)] = run_naive(paths, root / f"naive_w{workers}", args.size,
                                                 workers, args.quality)
        print(f"{'method':<28}{'workers':>8}{'seconds':>10}{'images/s':>10}")
        for (method, workers), seconds in runs.items():
            label = ("melalib prepare (draft)" if method == "draft"
                     else "naive open+convert+resize")
            print(f"{label:<28}{workers:>8}{seconds:>10.2f}{args.n / seconds:>10.1f}")
        for workers in sorted({1, args.workers}):
            ratio = runs[("naive", workers)] / runs[("draft", workers)]
            print(f"draft / naive speed, {workers} worker(s): {ratio:.2f}x")
        if args.workers > 1:
            for method in ("draft", "naive"):
                scale = runs[(method, 1)] / runs[(method, args.workers)]
                print(f"{method}: {args.workers} workers / 1 worker speed: {scale:.2f}x")
        names = [p.name for p in paths[: min(10, len(paths))]]
        diff = mean_abs_diff(root / "draft_w1", root / "naive_w1", names)
        print(f"mean |draft - naive| pixel difference: {diff:.2f} / 255")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
