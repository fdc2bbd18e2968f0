"""The GPU check: everything melalib's CUDA path needs measured in one go (run by gpu_check.sh).

    bash benchmarks/gpu_check.sh                 # on a CUDA machine: <= 8 minutes
    bash benchmarks/gpu_check.sh --dry-run       # the same code paths on CPU, tiny sizes

Sections, each printed as it finishes:

1. training throughput of melalib's own loop (`engine.Trainer.epoch`: autocast, GradScaler,
   finite-loss check, loss bookkeeping) vs a bare timm-style loop (autocast, forward,
   BCE, scaler, step) on the SAME pre-made batches on the device, with the same
   `FusionNet` (timm backbone + metadata MLP) at 256 px: bf16 and fp16 (GradScaler),
   channels_last off / on, torch.compile off / on (compiled once per configuration and
   shared by both loops), interleaved rounds; images/s, melalib / bare, peak memory;
   GPU utilisation sampled by ``nvidia-smi`` during the section (goal: melalib >= 90 %);
2. the data loader's ceiling on real JPEGs (``--images``; generated JPEGs when absent):
   `LesionDataset` + the training transforms at 256 px, ``DataLoader`` with one worker per
   core and pinned memory, images/s of one pass;
3. a 1-GPU ``torchrun`` DDP run of ``melalib train`` (NCCL) on the synthetic data;
4. AMP vs fp32: the same synthetic run trained twice in this process (``amp=true`` /
   ``amp=false``), the OOF ROC-AUC of both and whether they agree within ``--auc-band``.

Without CUDA it says so, runs every section on CPU with tiny sizes (a dry run of the same
code paths; CPU autocast, gloo instead of NCCL, and melalib trains fp32 on CPU so section
4 compares two fp32 runs) and exits 0. Exit status 1 when a section fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from melalib import engine  # noqa: E402
from melalib.config import ModelConfig, RunConfig  # noqa: E402
from melalib.device import Precision  # noqa: E402
from melalib.losses import build_loss  # noqa: E402
from melalib.models import build_model  # noqa: E402
from melalib.runs import RunDir  # noqa: E402
from melalib.schedules import build_scheduler  # noqa: E402
from melalib.tasks import MELANOMA  # noqa: E402

DEFAULT_IMAGES = ROOT.parent / "shared/data/ham10000/images_200x150"


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: the real check on CUDA, a seconds-long dry run on CPU."""

    image: int
    batch: int
    steps: int
    warmup: int
    rounds: int
    loader_images: int
    loader_size: int
    patients: int
    train_image: int
    epochs: int
    max_steps: int  # training steps per epoch in sections 3-4 (0: all)
    train_backbone: str

    @classmethod
    def for_device(cls, cuda: bool) -> Sizes:
        if cuda:
            return cls(image=256, batch=64, steps=30, warmup=5, rounds=2, loader_images=4096,
                       loader_size=256, patients=200, train_image=64, epochs=4, max_steps=0,
                       train_backbone="resnet18")
        return cls(image=32, batch=4, steps=2, warmup=1, rounds=1, loader_images=48,
                   loader_size=64, patients=16, train_image=32, epochs=1, max_steps=2,
                   train_backbone="resnet10t")


# ------------------------------------------------------------------ 1. throughput
CONFIGS = [  # (precision, channels_last, compile)
    ("bf16", False, False), ("bf16", True, False), ("fp16", False, False),
    ("fp16", True, False), ("bf16", True, True), ("fp16", True, True)]
# compile runs with channels_last on only: each compilation costs ~1 minute of the 8


def make_batches(sizes: Sizes, n_meta: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(sizes.steps):
        batches.append({
            "image": torch.randn(sizes.batch, 3, sizes.image, sizes.image, generator=g),
            "meta": torch.randn(sizes.batch, n_meta, generator=g),
            "target": torch.randint(0, 2, (sizes.batch,), generator=g).float()})
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def bare_epoch(net: torch.nn.Module, batches: list[dict], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, dtype: torch.dtype, device: torch.device,
               channels_last: bool) -> None:
    """The bare loop: autocast forward, BCE, scaled backward, step. No bookkeeping."""
    net.train()
    for b in batches:
        image = b["image"]
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype):
            logits = net(image=image, meta=b["meta"])
        loss = F.binary_cross_entropy_with_logits(logits.float().view(-1), b["target"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput_row(precision: str, channels_last: bool, compiled: bool, sizes: Sizes,
                   backbone: str, device: torch.device) -> dict:
    """images/s of melalib's loop and of the bare loop, same model, same batches."""
    torch.manual_seed(0)
    n_meta = 11
    cfg = RunConfig.from_dict({"backbone": backbone, "pretrained": False,
                               "channels_last": channels_last, "compile": compiled,
                               "scheduler": "none", "device": device.type})
    model = build_model(ModelConfig(backbone=backbone, pretrained=False), MELANOMA, n_meta)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    prec = Precision(True, dtype, precision == "fp16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=prec.scaler)
    scheduler = build_scheduler(cfg.train, optimizer, sizes.steps)
    batches = make_batches(sizes, n_meta, device)
    labels = np.array([0, 1])
    loss_fn = build_loss(cfg.train, MELANOMA, labels).to(device)
    trainer = engine.Trainer(cfg.train, model, optimizer, scheduler, scaler, loss_fn, prec, device,
                             net=net)
    runs = {
        "melalib": lambda bs: trainer.epoch(bs, len(bs)),
        "bare": lambda bs: bare_epoch(net, bs, optimizer, scaler, dtype, device,
                                      channels_last)}
    warm = batches[: sizes.warmup]
    for run in runs.values():  # compiles here; warms cuDNN autotuning and the allocator
        run(warm)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(sizes.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            _sync(device)
            start = time.perf_counter()
            runs[name](batches)
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
    n = sizes.steps * sizes.batch
    ips = {k: n / float(np.median(v)) for k, v in seconds.items()}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"precision": precision, "channels_last": channels_last, "compile": compiled,
            "melalib_ips": ips["melalib"], "bare_ips": ips["bare"],
            "ratio": ips["melalib"] / ips["bare"], "peak_gib": peak}


class GpuSampler:
    """``nvidia-smi`` utilisation / memory samples every 200 ms while running."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        try:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, mem))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    def summary(self) -> str:
        if not self.samples:
            return "GPU utilisation: n/a (no nvidia-smi samples)"
        util = np.array([s[0] for s in self.samples])
        mem = max(s[1] for s in self.samples)
        return (f"GPU utilisation during section 1 (nvidia-smi, {len(util)} samples): "
                f"mean {util.mean():.0f} %, median {np.median(util):.0f} %, "
                f"max memory used {mem / 1024:.1f} GiB")


def section_throughput(sizes: Sizes, backbone: str, device: torch.device,
                       configs: list[tuple[str, bool, bool]]) -> bool:
    print(f"\n== 1. training throughput: melalib loop vs bare loop, {backbone} FusionNet "
          f"+ 11 metadata features, {sizes.image} px, batch {sizes.batch}, {sizes.steps} "
          f"steps x {sizes.rounds} interleaved rounds", flush=True)
    print(f"{'precision':<10}{'channels_last':>14}{'compile':>9}{'melalib img/s':>15}"
          f"{'bare img/s':>12}{'melalib/bare':>14}{'peak GiB':>10}", flush=True)
    ok = True
    with GpuSampler() as sampler:
        for precision, cl, comp in configs:
            try:
                row = throughput_row(precision, cl, comp, sizes, backbone, device)
            except Exception as exc:  # report it and go on with the other configurations
                print(f"{precision:<10}{cl!s:>14}{comp!s:>9}  FAILED: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200]}", flush=True)
                ok = False
                continue
            goal = ("" if device.type != "cuda"
                    else "  goal >= 0.90: " + ("met" if row["ratio"] >= 0.9 else "NOT MET"))
            print(f"{precision:<10}{cl!s:>14}{comp!s:>9}{row['melalib_ips']:>15.1f}"
                  f"{row['bare_ips']:>12.1f}{row['ratio']:>13.2f}x{row['peak_gib']:>10.2f}"
                  + goal, flush=True)
    print(sampler.summary() if device.type == "cuda" else "GPU utilisation: n/a (CPU)")
    return ok


# ------------------------------------------------------------------ 2. loader ceiling
def loader_images(folder: Path | None, n: int, tmp: Path) -> tuple[list[str], str]:
    """Up to ``n`` real JPEGs from ``folder``, else generated 600x450 JPEGs."""
    if folder is not None and folder.is_dir():
        paths = sorted(str(p) for p in folder.glob("*.jpg"))[:n]
        if paths:
            return paths, f"real JPEGs from {folder}"
    from benchmarks.prepare_bench import make_sources

    paths = [str(p) for p in make_sources(tmp / "jpegs", min(n, 256), 600, 450)]
    return paths, "generated 600x450 JPEGs (no real folder found)"


def section_loader(sizes: Sizes, folder: Path | None, tmp: Path, cuda: bool) -> bool:
    import pandas as pd

    from melalib.data.dataset import LesionDataset
    from melalib.transforms import build_transforms

    paths, what = loader_images(folder, sizes.loader_images, tmp)
    workers = os.cpu_count() or 1
    print(f"\n== 2. data-loader ceiling: {len(paths)} {what}, training transforms at "
          f"{sizes.loader_size} px, batch {sizes.batch}, {workers} workers (one per core), "
          f"pin_memory={cuda}", flush=True)
    df = pd.DataFrame({"image_id": [Path(p).stem for p in paths], "image_path": paths,
                       "label": 0})
    ds = LesionDataset(df, MELANOMA, np.zeros((len(df), 11), np.float32),
                       build_transforms(sizes.loader_size, train=True, seed=0))
    loader = torch.utils.data.DataLoader(ds, batch_size=sizes.batch, shuffle=True,
                                         num_workers=workers, pin_memory=cuda,
                                         persistent_workers=False, drop_last=False)
    start, n, first = time.perf_counter(), 0, None
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        n += len(batch["image"])
    total = time.perf_counter() - start
    steady = (n - sizes.batch) / max(total - (first or 0.0), 1e-9)
    print(f"{n} images in {total:.1f} s: {n / total:.0f} images/s overall, "
          f"{steady:.0f} images/s after the first batch (workers started)", flush=True)
    return n == len(paths)


# ------------------------------------------------------------------ 3. DDP, 4. AMP
def run_config(tmp: Path, sizes: Sizes, device: str, **extra: object) -> dict:
    cfg = {"dataset": "synthetic", "synthetic_patients": sizes.patients,
           "synthetic_image_size": sizes.train_image, "image_size": sizes.train_image,
           "backbone": sizes.train_backbone, "epochs": sizes.epochs, "batch_size": 32,
           "n_folds": 2, "max_steps_per_epoch": sizes.max_steps,
           "lr": 1e-3, "data_dir": str(tmp / "data"), "output_dir": str(tmp / "runs"),
           "device": device, "num_workers": 2, **extra}
    return cfg


def melalib_train(tmp: Path, cfg: dict, name: str, torchrun: bool = False) -> tuple[int, str]:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "melalib", "train", "--config", str(path), "--name", name]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=1", "-m", "melalib", "train", "--config", str(path),
               "--name", name]
    env = {**os.environ, "MELALIB_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    return out.returncode, (out.stderr or out.stdout)[-1500:]


def section_ddp(sizes: Sizes, tmp: Path, device: str) -> bool:
    print(f"\n== 3. torchrun DDP, 1 process ({'NCCL' if device == 'cuda' else 'gloo, CPU'}): "
          f"melalib train on synthetic data, fold 0", flush=True)
    start = time.perf_counter()
    cfg = run_config(tmp, sizes, device, fold=0)
    code, log = melalib_train(tmp, cfg, "ddp1", torchrun=True)
    ok = code == 0 and RunDir(tmp / "runs" / "ddp1", None).oof_path(0).is_file()
    print(f"{'OK' if ok else 'FAILED'} in {time.perf_counter() - start:.0f} s"
          + ("" if ok else f" (exit {code}):\n{log}"), flush=True)
    return ok


def section_amp(sizes: Sizes, tmp: Path, device: str, band: float) -> bool:
    note = "" if device == "cuda" else " (CPU: melalib trains fp32 either way)"
    print(f"\n== 4. AMP vs fp32: synthetic data, {sizes.patients} patients, "
          f"{sizes.train_backbone} at "
          f"{sizes.train_image} px, {sizes.epochs} epochs, 2 folds{note}", flush=True)
    aucs = {}
    for name, amp in (("amp", True), ("fp32", False)):  # in this process: no start-up cost
        start = time.perf_counter()
        cfg = RunConfig.from_dict({**run_config(tmp, sizes, device, amp=amp, fold=-1),
                                   "name": name})
        try:
            aucs[name] = float(engine.train(cfg, progress=False)["oof_primary"])
        except Exception as exc:  # report the failure as this section's result
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            return False
        print(f"{name}: OOF ROC-AUC {aucs[name]:.4f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    gap = abs(aucs["amp"] - aucs["fp32"])
    agree = gap <= band
    print(f"|AUC(amp) - AUC(fp32)| = {gap:.4f}: {'within' if agree else 'OUTSIDE'} the "
          f"band {band}", flush=True)
    return agree or device != "cuda"  # a tiny CPU dry run only checks the path runs


# ------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU dry run even with CUDA")
    parser.add_argument("--backbone", default="efficientnet_b0")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--auc-band", type=float, default=0.03)
    parser.add_argument("--sections", default="1,2,3,4")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    sizes = Sizes.for_device(cuda)
    name = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"melalib GPU check: torch {torch.__version__}, CUDA available "
          f"{torch.cuda.is_available()}, device {name}, {os.cpu_count()} CPU cores")
    if not cuda:
        print("NO CUDA DEVICE" + (" used (--dry-run)" if torch.cuda.is_available() else "")
              + ": dry run of the same code paths on CPU with tiny sizes; these figures "
              "say nothing about GPU speed.")
    configs = CONFIGS if cuda else [("bf16", False, False), ("fp16", True, False),
                                    ("bf16", True, True)]
    backbone = args.backbone if cuda else "resnet10t"
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        steps = {"1": lambda: section_throughput(sizes, backbone, device, configs),
                 "2": lambda: section_loader(sizes, args.images, tmp, cuda),
                 "3": lambda: section_ddp(sizes, tmp, device.type),
                 "4": lambda: section_amp(sizes, tmp, device.type, args.auc_band)}
        for key in args.sections.split(","):
            results[key] = steps[key]()
    failed = [k for k, ok in results.items() if not ok]
    print(f"\n{'all sections passed' if not failed else f'FAILED sections: {failed}'} "
          f"in {time.perf_counter() - started:.0f} s ({'CUDA' if cuda else 'CPU dry run'})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
