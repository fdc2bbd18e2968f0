"""Training throughput and peak memory: backbones x image sizes x precision x memory format.

Each configuration runs in its own subprocess (clean peak-RSS / peak-CUDA-memory figures) on
random input through the real melalib model + loss + AdamW step, and the table prints
images/s with the ratio to the fp32 / contiguous run of the same backbone and size, all
measured side by side in one run (these machines are noisy: compare ratios, not absolutes).

    python benchmarks/train_bench.py                      # CPU defaults
    python benchmarks/train_bench.py --device cuda --backbones resnet50,efficientnet_b3 \
        --sizes 256,384 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def run_one(backbone: str, size: int, precision: str, channels_last: bool, device: str,
            batch_size: int, steps: int, warmup: int, n_meta: int) -> dict:
    import torch

    from melalib.config import ModelConfig, TrainConfig
    from melalib.losses import build_loss
    from melalib.models import build_model
    from melalib.tasks import MELANOMA

    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(ModelConfig(backbone=backbone, pretrained=False), MELANOMA, n_meta).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch_size,)).numpy()
    loss_fn = build_loss(TrainConfig(), MELANOMA, labels).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    image = torch.randn(batch_size, 3, size, size, device=dev)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    meta = torch.randn(batch_size, n_meta, device=dev)
    target = torch.as_tensor(labels, dtype=torch.float32, device=dev)
    model.train()

    def step() -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            logits = model(image=image, meta=meta)
        loss = loss_fn(logits.float(), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"backbone": backbone, "size": size, "precision": precision,
            "channels_last": channels_last, "images_per_s": batch_size * steps / seconds,
            "peak_mib": peak, "device": device}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="resnet18,efficientnet_b0,convnext_atto")
    p.add_argument("--sizes", default="64,128")
    p.add_argument("--precisions", default=None,
                   help="default: fp32,bf16 on CPU; fp32,bf16,fp16 on CUDA")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--n-meta", type=int, default=11)
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        backbone, size, precision, cl = args.one.split(":")
        row = run_one(backbone, int(size), precision, cl == "1", args.device, args.batch_size,
                      args.steps, args.warmup, args.n_meta)
        print(json.dumps(row))
        return
    precisions = (args.precisions or ("fp32,bf16,fp16" if args.device.startswith("cuda")
                                      else "fp32,bf16")).split(",")
    rows = []
    for backbone in args.backbones.split(","):
        for size in map(int, args.sizes.split(",")):
            for precision in precisions:
                for cl in (0, 1):
                    cmd = [sys.executable, __file__, "--one", f"{backbone}:{size}:{precision}:{cl}",
                           "--device", args.device, "--batch-size", str(args.batch_size),
                           "--steps", str(args.steps), "--warmup", str(args.warmup),
                           "--n-meta", str(args.n_meta)]
                    out = subprocess.run(cmd, capture_output=True, text=True,
                                         env={**os.environ, "MELALIB_PROGRESS": "0"})
                    if out.returncode != 0:
                        print(f"# {backbone} {size} {precision} cl={cl} failed: "
                              f"{out.stderr.strip().splitlines()[-1:]}")
                        continue
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(_fmt(rows[-1], rows), flush=True)
    import torch

    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, device {args.device}, batch {args.batch_size}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


def _fmt(row: dict, rows: list[dict]) -> str:
    base = next((r for r in rows if r["backbone"] == row["backbone"] and r["size"] == row["size"]
                 and r["precision"] == "fp32" and not r["channels_last"]), None)
    ratio = row["images_per_s"] / base["images_per_s"] if base else float("nan")
    return (f"{row['backbone']:<18} {row['size']:>4}px {row['precision']:<5} "
            f"channels_last={int(row['channels_last'])}  {row['images_per_s']:8.1f} img/s  "
            f"x{ratio:4.2f} vs fp32  peak {row['peak_mib']:7.0f} MiB")


if __name__ == "__main__":
    main()
