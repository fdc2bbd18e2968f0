"""Load benchmark: a folder of many small JPEGs (a few corrupt) through melalib's data path.

    python benchmarks/load_bench.py --n 20000 --workers 2

Generates N JPEGs (128x96: a few synthetic base lesions plus per-image noise, written by a
process pool) with 5 corrupt files among them (truncated, empty, text, a cut header, random
bytes) and a custom CSV listing all of them, then runs each stage in its own subprocess:

* ``table``: `load_custom_csv` over the CSV (stats every file for ``image_bytes``),
* ``prepare``: `prepare_images` over the folder into a 64 px cache (``--workers`` processes),
* ``check``: `check_images_readable` over the table (threads) and `find_unlisted_images`,
* ``loader``: `LesionDataset` + `DataLoader` (``--workers`` workers, batch 64, validation
  transform at 64 px) over the rows the check passed, one pass.

Reports wall time, items/s and peak memory per stage, sampled every 20 ms with psutil over
the stage's process tree: PSS (shared pages split between the processes sharing them: the
honest total) and RSS (shared pages counted once per process: over-counts forked workers),
plus ``ru_maxrss`` of the stage process (``RUSAGE_SELF``). ``RUSAGE_CHILDREN`` is kept in the
JSON only: importing torch forks a short-lived helper whose RSS (the whole parent) makes it
meaningless. The corrupt files must be counted by prepare and check, never fatal.
No assertion on time: this prints figures, it is not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from melalib.runs import LAYOUT

BAD_IMAGES = LAYOUT["bad_images"].name  # named as a run names its list
WIDTH, HEIGHT = 128, 96
N_BASES = 16
CORRUPT = ("truncated", "empty", "text", "cut-header", "random-bytes")
STAGES = ("table", "prepare", "check", "loader")


# ------------------------------------------------------------------------------ the data
def _bases(folder: Path) -> np.ndarray:
    """N_BASES synthetic lesion images resized to WIDTH x HEIGHT, as uint8 (B, H, W, 3)."""
    from melalib.data.synthetic import make_synthetic

    table = make_synthetic(folder, "multiclass", n_patients=8, image_size=128, seed=0)
    out = []
    for path in table.df["image_path"].tolist()[:N_BASES]:
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB").resize((WIDTH, HEIGHT))))
    return np.stack(out)


def _write_chunk(args: tuple[str, int, int, np.ndarray]) -> int:
    folder, start, stop, bases = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        noise = rng.integers(-12, 13, size=bases[0].shape, dtype=np.int16)
        pixels = np.clip(bases[i % len(bases)].astype(np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"IMG_{i:06d}.jpg"), quality=90)
    return stop - start


def make_dataset(root: Path, n: int, workers: int) -> tuple[Path, list[str]]:
    """``root/images/IMG_*.jpg`` and ``root/lesions.csv``; returns the CSV and the names of
    the corrupt files."""
    images = root / "images"
    images.mkdir(parents=True)
    bases = _bases(root / "bases")
    step = 500
    jobs = [(str(images), s, min(s + step, n), bases) for s in range(0, n, step)]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        assert sum(pool.map(_write_chunk, jobs)) == n
    rng = np.random.default_rng(1)
    corrupt = sorted(rng.choice(n, size=min(len(CORRUPT), n), replace=False).tolist())
    names = []
    for index, how in zip(corrupt, CORRUPT, strict=False):
        path = images / f"IMG_{index:06d}.jpg"
        data = path.read_bytes()
        if how == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif how == "empty":
            path.write_bytes(b"")
        elif how == "text":
            path.write_text("<html>403 Forbidden</html>\n")
        elif how == "cut-header":
            path.write_bytes(data[:100])
        else:
            path.write_bytes(rng.integers(0, 256, size=len(data), dtype=np.uint8).tobytes())
        names.append(path.name)
    ids = np.arange(n)
    lines = ["image,label,patient,age,sex"]
    lines += [f"IMG_{i:06d}.jpg,{'melanoma' if i % 10 == 0 else 'benign'},P{i // 4:05d},"
              f"{20 + i % 60},{'male' if i % 2 else 'female'}" for i in ids]
    csv = root / "lesions.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, names


# ----------------------------------------------------------------------------- the stages
def _table(csv: Path):
    from melalib.data.sources.custom import load_custom_csv

    return load_custom_csv(csv, group_column="patient",
                           meta_columns={"age": "age", "sex": "sex"},
                           classes=("benign", "melanoma"), image_dir=csv.parent / "images")


def run_stage(stage: str, csv: Path, workers: int, size: int) -> dict[str, object]:
    """Run one stage in this process; figures as a dict."""
    import pandas as pd

    start = time.perf_counter()
    result: dict[str, object] = {"stage": stage}
    if stage == "table":
        table = _table(csv)
        result.update(items=len(table), bad=None)  # the table does not open images
    elif stage == "prepare":
        from melalib.data.prepare import prepare_images

        dst = csv.parent / f"cache_{size}"
        report = prepare_images(csv.parent / "images", dst, size=size, workers=workers,
                                progress=False)
        result.update(items=report.n_total, bad=report.n_failed,
                      bad_files=sorted(Path(p).name for p, _ in report.failures))
    elif stage == "check":
        from melalib.data.dataset import check_images_readable, find_unlisted_images

        table = _table(csv)
        start = time.perf_counter()  # the table has its own stage
        bad = check_images_readable(table.df, workers=workers)
        unlisted = find_unlisted_images(table.df)
        result.update(items=len(table), bad=len(bad), unlisted=len(unlisted),
                      bad_files=sorted(Path(p).name for p in bad["path"]))
        bad.to_csv(csv.parent / BAD_IMAGES, index=False)
    elif stage == "loader":
        import torch
        from torch.utils.data import DataLoader

        from melalib.data.dataset import LesionDataset
        from melalib.transforms import build_transforms

        torch.set_num_threads(1)
        table = _table(csv)
        bad = pd.read_csv(csv.parent / BAD_IMAGES)
        keep = np.ones(len(table), dtype=bool)
        keep[bad["row"].to_numpy() - 1] = False
        df = table.df[keep].reset_index(drop=True)
        start = time.perf_counter()
        dataset = LesionDataset(df, table.task, None, build_transforms(size, train=False))
        loader = DataLoader(dataset, batch_size=64, num_workers=workers, shuffle=False)
        seen = 0
        for batch in loader:
            seen += len(batch["image"])
        assert seen == len(df)
        result.update(items=seen, bad=int((~keep).sum()))
    else:  # pragma: no cover
        raise SystemExit(f"unknown stage {stage}")
    result["seconds"] = time.perf_counter() - start
    mib = 1024.0  # ru_maxrss is in KiB on Linux
    result["maxrss_self_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib
    result["maxrss_children_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib
    return result


def measure(stage: str, csv: Path, workers: int, size: int) -> dict[str, object]:
    """Run ``stage`` in a subprocess, sampling its process tree's RSS."""
    import psutil

    cmd = [sys.executable, __file__, "--stage", stage, "--csv", str(csv),
           "--workers", str(workers), "--size", str(size)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak = {"rss": 0, "pss": 0}

    def sample() -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                rss = pss = 0
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        info = p.memory_full_info()
                        rss, pss = rss + info.rss, pss + info.pss
                peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
                time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_tree_rss_mib"] = peak["rss"] / 2**20
    result["peak_tree_pss_mib"] = peak["pss"] / 2**20
    return result


def print_table(rows: list[dict[str, object]]) -> None:
    header = ("stage", "items", "bad counted", "wall s", "items/s", "peak tree PSS MiB",
              "peak tree RSS MiB", "ru_maxrss self MiB")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        seconds = float(r["seconds"])
        bad = "-" if r["bad"] is None else r["bad"]
        print(f"| {r['stage']} | {r['items']} | {bad} | {seconds:.1f} | "
              f"{float(r['items']) / seconds:,.0f} | {r['peak_tree_pss_mib']:.0f} | "
              f"{r['peak_tree_rss_mib']:.0f} | {r['maxrss_self_mib']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="number of images")
    parser.add_argument("--workers", type=int, default=2, help="processes / loader workers")
    parser.add_argument("--size", type=int, default=64, help="prepare and loader size (px)")
    parser.add_argument("--keep", default=None, help="generate into this folder and keep it")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:  # child process
        print(json.dumps(run_stage(args.stage, Path(args.csv), args.workers, args.size)))
        return 0
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="melalib-load-"))
    try:
        start = time.perf_counter()
        csv, corrupt = make_dataset(root, args.n, args.workers)
        generated = time.perf_counter() - start
        print(f"generated {args.n} JPEGs ({WIDTH}x{HEIGHT}) in {generated:.1f} s with "
              f"{args.workers} processes; corrupt: {', '.join(corrupt)}")
        rows = [measure(stage, csv, args.workers, args.size) for stage in STAGES]
        print_table(rows)
        for r in rows:
            if "bad_files" in r:
                counted = r["bad_files"] == corrupt
                print(f"{r['stage']}: {r['bad']} bad file(s) counted, not fatal; "
                      f"{'exactly the corrupt ones' if counted else 'DIFFERENT: ' + str(r['bad_files'])}")
        if args.json:
            Path(args.json).write_text(json.dumps({"n": args.n, "workers": args.workers,
                                                   "size": args.size, "generate_s": generated,
                                                   "corrupt": corrupt, "stages": rows},
                                                  indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
