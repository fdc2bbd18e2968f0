"""Benchmark fold assignment: melalib's `stratified_group_folds` vs scikit-learn's
`StratifiedGroupKFold`, on the same generated table, interleaved.

    python benchmarks/folds_bench.py --rows 100000 --repeats 3

Two table layouts of ``--rows`` training rows: HAM10000-like (1-3 images per group,
~2 on average) and ISIC 2020-like (patients with 1-30 images, ~16 on average); binary
labels with a 2 % positive rate per group, stratified by label and by label x size bucket.
Each repetition times scikit-learn then melalib (CPU time of this process) on identical
inputs and checks the folds are identical. Prints the per-pair ratio (median and range) and
the time of the whole `assign_folds` (which adds the leakage audit and the table checks).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melalib.folds import assign_folds, stratified_group_folds
from melalib.table import LesionTable
from melalib.tasks import MELANOMA

LAYOUTS = {"ham-like (1-3 per group)": (1, 4), "isic2020-like (1-30 per group)": (1, 31)}


def make_table(rows: int, low: int, high: int, seed: int) -> LesionTable:
    """``rows`` training rows in groups of ``low..high-1`` images; 2 % positive groups."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(low, high, rows)
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), rows)) + 1]
    sizes[-1] -= int(sizes.sum()) - rows
    group = np.repeat(np.arange(len(sizes)), sizes)
    positive = (rng.random(len(sizes)) < 0.02)[group] & (rng.random(rows) < 0.5)
    label = positive.astype(np.int64)
    df = pd.DataFrame({
        "image_id": [f"img_{i:07d}" for i in range(rows)], "image_path": "x.jpg",
        "group_id": [f"P{g:06d}" for g in group], "label": label,
        "label_name": np.where(label == 1, "melanoma", "benign"), "age": 50.0,
        "sex": "female", "site": "torso", "source": "synthetic", "split": "train"})
    return LesionTable(df, MELANOMA)


def sklearn_folds(strata: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    out = np.full(len(strata), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(strata)), strata, groups)):
        out[val] = k
    return out


def strata_of(table: LesionTable, stratify: str) -> tuple[np.ndarray, np.ndarray]:
    """(strata, group codes) as `assign_folds` builds them (label x size quartile)."""
    df = table.df.sort_values(["group_id", "image_id"], kind="mergesort")
    codes = pd.factorize(df["group_id"], sort=True)[0]
    labels = df["label"].to_numpy(dtype=np.int64)
    if stratify == "label":
        return labels, codes
    sizes = np.bincount(codes)
    buckets = pd.qcut(pd.Series(sizes), q=4, labels=False, duplicates="drop")
    buckets = buckets.fillna(0).to_numpy(dtype=np.int64)
    return labels * (int(buckets.max()) + 1) + buckets[codes], codes


def cpu(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return time.process_time() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    print(f"{args.rows} rows, {args.folds} folds, {args.repeats} interleaved repetitions, "
          "CPU seconds of this process")
    print(f"{'layout':<32}{'stratify':<12}{'groups':>8}{'sklearn s':>11}{'melalib s':>11}"
          f"{'ratio (median [min, max])':>30}{'identical':>11}")
    for name, (low, high) in LAYOUTS.items():
        table = make_table(args.rows, low, high, args.seed)
        for stratify in ("label", "label+size"):
            strata, codes = strata_of(table, stratify)
            slow_t, fast_t, same = [], [], True
            for rep in range(args.repeats):
                t, expected = cpu(sklearn_folds, strata, codes, args.folds, args.seed + rep)
                slow_t.append(t)
                t, got = cpu(stratified_group_folds, strata, codes, args.folds, args.seed + rep)
                fast_t.append(t)
                same &= bool(np.array_equal(expected, got))
            ratios = np.array(slow_t) / np.array(fast_t)
            print(f"{name:<32}{stratify:<12}{codes.max() + 1:>8}{np.median(slow_t):>11.2f}"
                  f"{np.median(fast_t):>11.2f}{np.median(ratios):>13.1f}x "
                  f"[{ratios.min():.1f}, {ratios.max():.1f}]{same!s:>12}")
        t, _ = cpu(assign_folds, table, args.folds, args.seed, "label+size")
        print(f"  whole assign_folds(stratify='label+size') on {name}: {t:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
