"""Synthetic default: 5-fold CV of image+metadata vs image-only vs metadata-only, and where
Grad-CAM looks (share of the map's mass on the true lesion mask).

    python benchmarks/synthetic_results.py --out outputs/synthetic-results

Writes ``docs/results_synthetic.json`` (read by `benchmarks/real_results.py` when it renders
docs/results.md) and prints the table. Every number is measured by this run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import melalib
from melalib.bootstrap import bootstrap_ci
from melalib.config import RunConfig, get_preset
from melalib.explain import explain_errors
from melalib.io import write_json
from melalib.localize import cam_mass_on_lesion, framed_masks
from melalib.runs import RunDir

REPO = Path(__file__).resolve().parents[1]


def variants(patients: int, epochs: int, folds: int = 5) -> dict[str, dict[str, Any]]:
    base = {**get_preset("synthetic_demo"), "synthetic_patients": patients, "epochs": epochs,
            "n_folds": folds}
    return {
        "image+meta": {**base, "name": "syn_fusion"},
        "image only": {**base, "name": "syn_image", "use_meta": False},
        "metadata only": {**base, **get_preset("meta_only"), "name": "syn_meta"},
    }


def run_variant(params: dict[str, Any], out: Path, data_dir: Path, n_boot: int) -> dict[str, Any]:
    cfg = RunConfig.from_dict({**params, "output_dir": str(out), "data_dir": str(data_dir)})
    melalib.train(cfg)  # resumes (or skips) a run this script made before
    run = RunDir.read(cfg.run_dir)
    # training time as recorded per epoch (true also when the run was only resumed here)
    seconds = run.history()["seconds"].sum()
    oof = run.oof_by_fold()
    y, p, g = oof["label"].to_numpy(), oof["prob_melanoma"].to_numpy(), oof["group_id"]
    auc = bootstrap_ci("roc_auc", y, p, groups=g, n_boot=n_boot)
    ap = bootstrap_ci("pr_auc", y, p, groups=g, n_boot=n_boot)
    return {"run_dir": str(cfg.run_dir), "n_images": len(oof), "n_positive": int(y.sum()),
            "n_patients": int(g.nunique()), "roc_auc": auc, "pr_auc": ap,
            "train_seconds": round(float(seconds), 1), "flat_config": cfg.to_flat()}


def gradcam_mass(run_dir: str, top: int) -> dict[str, Any]:
    """CAM mass inside the true lesion mask vs the mask's share of the image (what a map
    spread uniformly would score), over the most confident true positives and negatives."""
    rows = {}
    for kind in ("tp", "tn"):
        table, _images, cams = explain_errors(run_dir, kind=kind, top=top, device="cpu")
        cfg = RunDir.read(run_dir).cfg
        masks, _ = framed_masks(table, cams.shape[-1], cfg.data.aspect if cfg else "squash")
        mass = cam_mass_on_lesion(cams, masks)
        area = float(masks.mean())
        rows[kind] = {"n": len(table), "cam_mass_on_lesion": mass, "lesion_area_share": area,
                      "ratio": mass / area if area else float("nan")}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/synthetic-results")
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--folds", type=int, default=5,
                    help="CV folds (5: docs/results.md; `melalib demo` uses the preset's 3)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--top", type=int, default=16, help="images per kind for Grad-CAM")
    ap.add_argument("--json", default=str(REPO / "docs" / "results_synthetic.json"))
    args = ap.parse_args()
    out = Path(args.out)
    command = "python benchmarks/synthetic_results.py " + " ".join(sys.argv[1:])
    results: dict[str, Any] = {"command": command.strip(), "machine": _machine(),
                               "variants": {}}
    for label, params in variants(args.patients, args.epochs, args.folds).items():
        results["variants"][label] = run_variant(params, out, out / "data", args.n_boot)
        r = results["variants"][label]
        print(f"{label:<14} ROC-AUC {_ci(r['roc_auc'])}  PR-AUC {_ci(r['pr_auc'])}  "
              f"({r['n_images']} images, {r['n_positive']} melanomas, "
              f"{r['train_seconds']} s of training)",
              flush=True)
    results["gradcam"] = gradcam_mass(results["variants"]["image+meta"]["run_dir"], args.top)
    for kind, r in results["gradcam"].items():
        print(f"Grad-CAM {kind}: {r['cam_mass_on_lesion']:.3f} of the map's mass on the lesion, "
              f"which covers {r['lesion_area_share']:.3f} of the image (x{r['ratio']:.2f})")
    write_json(args.json, results)
    print(f"wrote {args.json}")


def _ci(d: dict[str, float]) -> str:
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def _machine() -> dict[str, Any]:
    import torch

    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                    if ln.startswith("model name")), "")
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    main()
