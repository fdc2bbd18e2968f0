"""Benchmark test-time augmentation: TTA-8 vs TTA-1 vs the forward-pass floor.

    python benchmarks/tta_bench.py --n 128 --size 128 --backbone resnet18 --repeats 3

Predicts ``--n`` real JPEGs (``--images``, default ../shared/data/ham10000/images_200x150;
generated synthetic lesions when absent) with melalib's `runtime.predict_probs` and a
`FusionNet` (random weights, 8 metadata features), one process, DataLoader without
workers. Each interleaved round measures (CPU seconds, ``time.process_time``):

* ``load``: one pass of the loader alone (decode, resize, normalise, collate);
* ``fwd1``: the model's forward passes alone on the already-collated batches;
* ``tta1`` / ``tta8``: `predict_probs` with 1 and 8 views, loader included;
* ``reads``: image files opened per image during ``tta8`` (1: views come from one tensor).

Prints the medians and TTA-8 / TTA-1, TTA-8 / floor where floor = load + 8 x fwd1 (one
decode, eight forwards: nothing cheaper computes eight views), and 8 x TTA-1 (what one
decode per view would cost) / TTA-8.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melalib.data import dataset as dataset_mod
from melalib.data.dataset import LesionDataset
from melalib.models import FusionNet
from melalib.runtime import make_loader, predict_probs
from melalib.tasks import MELANOMA
from melalib.transforms import build_transforms

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/ham10000/images_200x150"


def image_paths(folder: Path | None, n: int, tmp: Path) -> list[str]:
    if folder is not None and folder.is_dir():
        paths = sorted(str(p) for p in folder.glob("*.jpg"))[:n]
        if paths:
            return paths
    from melalib.data.synthetic import make_synthetic

    table = make_synthetic(tmp, "binary", max(8, n // 3 + 2), 256, 0)
    return table.df["image_path"].astype(str).tolist()[:n]


def cpu(fn):
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="tta_bench_") as tmp:
        paths = image_paths(args.images, args.n, Path(tmp))
        df = pd.DataFrame({"image_id": [Path(p).stem for p in paths], "image_path": paths,
                           "label": -1})
        meta = np.random.default_rng(0).standard_normal((len(df), 8)).astype(np.float32)
        ds = LesionDataset(df, MELANOMA, meta, build_transforms(args.size, train=False),
                           labelled=False)
        loader = make_loader(ds, args.batch_size, shuffle=False, seed=0, num_workers=0)
        model = FusionNet(args.backbone, MELANOMA.n_outputs, n_meta=8).eval()
        device = torch.device("cpu")
        batches = list(loader)

        @torch.no_grad()
        def forward_only() -> None:
            for b in batches:
                model(image=b["image"], meta=b["meta"])

        real_read = dataset_mod.read_image
        reads: list[str] = []

        def counting(path, *a, **k):
            reads.append(str(path))
            return real_read(path, *a, **k)

        runs = {"load": lambda: list(loader), "fwd1": forward_only,
                "tta1": lambda: predict_probs(model, loader, MELANOMA, device, tta=1),
                "tta8": lambda: predict_probs(model, loader, MELANOMA, device, tta=8)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        names = list(runs)
        for rep in range(args.repeats):
            for name in names[rep % 4:] + names[: rep % 4]:
                dataset_mod.read_image = counting
                reads.clear()
                try:
                    t, _ = cpu(runs[name])
                finally:
                    dataset_mod.read_image = real_read
                times[name].append(t)
                if name == "tta8":
                    per_image = len(reads) / len(df)
    med = {k: float(np.median(v)) for k, v in times.items()}
    t1, t8 = np.array(times["tta1"]), np.array(times["tta8"])
    floor = np.array(times["load"]) + 8 * np.array(times["fwd1"])
    print(f"{len(df)} images ({'real' if args.images.is_dir() else 'synthetic'}), "
          f"{args.backbone} FusionNet at {args.size} px, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved rounds")
    for k, v in med.items():
        print(f"  {k:<5} {v:7.2f} CPU s")
    print(f"image files read per image during TTA-8: {per_image:.0f}")
    print(f"TTA-8 / TTA-1: {np.median(t8 / t1):.2f}x [{(t8 / t1).min():.2f}, {(t8 / t1).max():.2f}]")
    print(f"TTA-8 / floor (load + 8 x forward): {np.median(t8 / floor):.2f}x "
          f"[{(t8 / floor).min():.2f}, {(t8 / floor).max():.2f}]")
    print(f"8 x TTA-1 (a decode per view) / TTA-8: {np.median(8 * t1 / t8):.2f}x")
    print(f"load share of TTA-1: {med['load'] / med['tta1']:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
