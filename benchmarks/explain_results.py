"""Explanations you can trust (issue 25), measured: how a run's Grad-CAM maps localise the
lesion against the true masks, beside a centre-prior baseline and a random-weights floor, how
much of the maps and of the prediction lives in the frame border, and how faithful the maps
are (deletion / insertion against a random pixel order), and how far the mask-free Otsu
estimate is from the true masks (Dice). Several runs side by side (e.g. a
recipe with and without ``border_aug=vignette``), each with its OOF balanced accuracy.

    python benchmarks/explain_results.py outputs/ham_b_lite0_6ep \\
        --masks ../shared/data/ham10000/masks_200x150 --per-class 60 --fold 0 \\
        --out outputs/explain-results/ham_b_lite0_6ep.json

Images: the OOF rows whose mask file exists (HAM10000: 80 % of lesions), up to
``--per-class`` per true class (a seeded sample), one fold when ``--fold`` is given. Every
figure is measured by this run; the JSON records the command, the git commit and the wall
time. Goals (issue 25): concentration >= 1.6 (above the centre prior), pointing >= 0.75,
border-peak share <= 0.10.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melalib.bootstrap import bootstrap_ci
from melalib.explain import prediction_table
from melalib.explain_run import measure
from melalib.io import write_json
from melalib.localize import (
    BORDER,
    MaskSource,
    dice,
    estimate_lesion_mask,
    framed_masks,
    pooled,
)
from melalib.metrics import evaluate
from melalib.runs import RunDir, git_commit

GOALS = {"concentration": (">=", 1.6), "pointing": (">=", 0.75), "border_peak": ("<=", 0.10)}
FAITHFUL = ("border_change", "deletion", "insertion", "deletion_random", "insertion_random")


def pick_rows(run: RunDir, masks: MaskSource | None, per_class: int, fold: int | None,
              seed: int = 0) -> pd.DataFrame:
    """OOF rows with a mask file (all rows without a mask source), at most ``per_class``
    per true class, seeded; in (class, image_id) order."""
    oof = run.oof()
    if fold is not None:
        oof = oof[oof["fold"] == fold]
    table = run.table()
    rows = prediction_table(oof, table.df, table.task)
    if masks is not None:
        has = [masks.path(i, p).is_file() for i, p in zip(rows["image_id"], rows["image_path"],
                                                         strict=True)]
        rows = rows[np.asarray(has, dtype=bool)]
    picked = [part.sample(min(per_class, len(part)), random_state=seed)
              for _, part in rows.groupby("label", sort=True)]
    out = pd.concat(picked) if picked else rows.head(0)
    return out.sort_values(["label", "image_id"]).reset_index(drop=True)


def _mean_ci(values: np.ndarray, groups: np.ndarray, n_boot: int) -> dict[str, float]:
    ci = bootstrap_ci(lambda _y, v: float(np.mean(v)), np.zeros(len(values)), values,
                      groups=groups, n_boot=n_boot, stratify=False)
    return {k: ci[k] for k in ("estimate", "low", "high")}


def split_by_call(table: pd.DataFrame, n_boot: int) -> dict[str, Any]:
    """Pooled concentration and pointing of the right and the wrong calls."""
    out = {}
    for name, part in (("correct", table[table["pred"] == table["label"]]),
                       ("wrong", table[table["pred"] != table["label"]])):
        part = part[part["mask"] != "missing"]
        if len(part):
            res = pooled(part.reset_index(drop=True), part["group_id"].astype(str).to_numpy(),
                         n_boot=n_boot).set_index("measure")
            out[name] = {"n": len(part), **{m: res.loc[m, ["estimate", "low", "high"]].to_dict()
                                            for m in ("concentration", "pointing")}}
    return out


def against_prior(table: pd.DataFrame, n_boot: int) -> dict[str, Any]:
    """The model's maps against the centre prior's on the same images (rows with a mask):
    the mean per-image concentration gain, the share of images whose map is more
    concentrated on the lesion than the prior's, and the pointing of the images whose
    lesion the prior's peak misses (off-centre lesions)."""
    part = table[(table["mask"] != "missing") & np.isfinite(table["concentration"])]
    groups = part["group_id"].astype(str).to_numpy()
    gain = (part["concentration"] - part["prior_concentration"]).to_numpy(dtype=float)
    off = part[part["prior_pointing"] == 0]
    return {"n": len(part), "concentration_gain": _mean_ci(gain, groups, n_boot),
            "share_above_prior": _mean_ci((gain > 0).astype(float), groups, n_boot),
            "off_centre_n": len(off),
            "off_centre_pointing": float(off["pointing"].mean()) if len(off) else None}


def oof_primary(run: RunDir, fold: int | None) -> float:
    """The run's primary metric on its OOF rows of ``fold`` (the fold whose images are
    explained), on all its OOF rows without one."""
    oof = run.oof()
    if fold is not None:
        oof = oof[oof["fold"] == fold]
    task = run.task
    return evaluate(task, oof["label"].to_numpy(),
                    oof[task.prob_columns].to_numpy())[task.primary_metric]


def measure_run(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of one run."""
    started = time.perf_counter()
    run = RunDir.read(path)
    source = MaskSource(args.masks, args.mask_pattern) if args.masks else None
    rows = pick_rows(run, source, args.per_class, args.fold, args.seed)
    result = measure(run, rows, method=args.method, layer=args.layer, tta=args.tta,
                     masks=source, missing="skip", floor=not args.no_floor,
                     faithfulness=not args.no_faithfulness, border=args.border,
                     n_boot=args.n_boot, device=args.device)
    table = result.table
    groups = table["group_id"].astype(str).to_numpy()
    faithful = {c: _mean_ci(table[c].to_numpy(dtype=float), groups, args.n_boot)
                for c in FAITHFUL if c in table.columns}
    estimates = np.stack([estimate_lesion_mask(im) for im in result.explanation.images])
    true = table["mask"].to_numpy() == "true_mask"
    masks, _ = framed_masks(table[true], estimates.shape[-1], run.cfg.data.aspect, source)
    otsu = _mean_ci(dice(estimates[true], masks), groups[true], args.n_boot) if true.any() \
        else None
    task = run.task
    return {"run": str(path), "n_images": len(rows), "options": result.options,
            "primary_metric": task.primary_metric, "oof_primary": oof_primary(run, args.fold),
            "pooled": result.pooled.to_dict(orient="records"),
            "by_call": split_by_call(table, args.n_boot),
            "against_prior": against_prior(table, args.n_boot), "faithfulness": faithful,
            "otsu_estimate_dice": otsu,
            "seconds": round(time.perf_counter() - started, 1)}


def _cell(r: dict[str, Any]) -> str:
    return f"{r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _off_centre(prior: dict[str, Any]) -> str:
    """`against_prior`'s pointing on off-centre lesions as a cell ("-" when there are none)."""
    off = prior["off_centre_pointing"]
    return "-" if off is None else f"{off:.3f}"


def render(results: list[dict[str, Any]]) -> str:
    """One markdown table per run: each measure for the model, the centre prior and the
    random floor, with the goal; then the faithfulness and right / wrong lines."""
    lines = []
    for res in results:
        lines += [f"### {res['run']} ({res['n_images']} images; OOF {res['primary_metric']} "
                  f"{res['oof_primary']:.3f})", "",
                  "| measure | model | centre prior | random weights | goal |",
                  "|---|---|---|---|---|"]
        frame = pd.DataFrame(res["pooled"])
        for measure_name, part in frame.groupby("measure", sort=False):
            by = {r["maps"]: r for r in part.to_dict(orient="records")}
            goal = " ".join(map(str, GOALS.get(str(measure_name), ("", ""))))
            lines.append(f"| {measure_name} | " + " | ".join(
                _cell(by[m]) if m in by else "-" for m in
                ("model", "centre_prior", "random_weights")) + f" | {goal} |")
        for name, r in res["faithfulness"].items():
            lines.append(f"| {name} | {_cell(r)} | | | |")
        if res.get("otsu_estimate_dice"):
            lines.append(f"| Dice of the Otsu estimate vs the true masks | "
                         f"{_cell(res['otsu_estimate_dice'])} | | | |")
        if prior := res.get("against_prior"):
            lines += [f"| concentration gain over the centre prior, per image (n={prior['n']}) "
                      f"| {_cell(prior['concentration_gain'])} | | | |",
                      f"| share of images above the centre prior | "
                      f"{_cell(prior['share_above_prior'])} | | | |",
                      f"| pointing where the prior's peak misses the lesion "
                      f"(n={prior['off_centre_n']}) | {_off_centre(prior)} | 0 | | |"]
        for name, r in res["by_call"].items():
            lines.append(f"| concentration ({name}, n={r['n']}) | {_cell(r['concentration'])} "
                         "| | | |")
        lines.append("")
    return "\n".join(lines)


def compare(results: list[dict[str, Any]]) -> str:
    """The runs side by side: one row per run, the goal measures and the border occlusion."""
    head = ["run", "OOF", "concentration", "pointing", "border_peak", "border_mass",
            "border_change"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        model = {r["measure"]: r for r in res["pooled"] if r["maps"] == "model"}
        cells = [_cell(model[m]) if m in model else "-" for m in head[2:6]]
        change = res["faithfulness"].get("border_change")
        lines.append(f"| {res['run']} | {res['oof_primary']:.3f} | " + " | ".join(cells)
                     + f" | {_cell(change) if change else '-'} |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders, measured side by side")
    p.add_argument("--masks", default=None, help="folder of true lesion masks (default: the "
                   "synthetic data's own masks)")
    p.add_argument("--mask-pattern", default="{image_id}_segmentation.png")
    p.add_argument("--per-class", type=int, default=60, help="images per true class")
    p.add_argument("--fold", type=int, default=None, help="only this fold's OOF rows")
    p.add_argument("--method", default="gradcam")
    p.add_argument("--layer", default=None)
    p.add_argument("--tta", type=int, default=1, help="maps averaged over this many views")
    p.add_argument("--border", type=float, default=BORDER)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-floor", action="store_true", help="skip the random-weights floor")
    p.add_argument("--no-faithfulness", action="store_true",
                   help="skip border occlusion and deletion / insertion")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="JSON file to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results = [measure_run(path, args) for path in args.runs]
    print(render(results))
    if len(results) > 1:
        print(compare(results))
    if args.out:
        command = "python benchmarks/explain_results.py " + shlex.join(
            sys.argv[1:] if argv is None else argv)
        write_json(Path(args.out), {"command": command, "git_commit": git_commit(),
                                    "results": results})
    return 0


def render_section(path: Path, *variants: Path) -> list[str]:
    """The results.md section from the JSON this script writes (nothing when absent), then
    the side-by-side table of each ``variants`` JSON (the same runs measured otherwise,
    e.g. ``--layer finer``, or other runs of the recipe) under its command."""
    if not path.is_file():
        return []
    recorded = json.loads(path.read_text())
    results = recorded["results"]
    lines = ["## 7. Explanations against true lesion masks (HAM10000)", "",
             "Grad-CAM maps (melalib's `explain` code, pytorch-grad-cam) of out-of-fold "
             "HAM10000 images that have a true lesion mask in `../shared/data` (80 % of "
             "lesions), up to the same seeded number per true class, each explaining its "
             "run's own call; masks framed exactly as the model input (`aspect=crop`). "
             "Concentration = share of map mass on the lesion / lesion's share of the frame "
             "(1 = a uniform map); pointing = the map's maximum lies on the lesion; border "
             "peak / mass = the maximum / the mass in the outer eighth of the frame; "
             "border_change = the drop of the explained probability when that band is "
             "occluded; deletion / insertion = area under the probability curve as the most "
             "(least) salient pixels are removed (inserted), beside a random pixel order. "
             "Centre prior: a fixed Gaussian at the frame centre; random weights: the same "
             "network re-initialised. CIs: 1,000 lesion-grouped bootstrap replicates. The "
             "runs are trained on fold 0 only (paired: same fold, seed and epochs).", "",
             f"Made by `{recorded['command']}` (commit `{recorded['git_commit'][:10]}`).", ""]
    if len(results) > 1:
        lines += [compare(results), ""]
    lines += [render(results), ""]
    for variant in (v for v in variants if v.is_file()):
        other = json.loads(variant.read_text())
        lines += [f"Also measured, by `{other['command']}` (commit "
                  f"`{other['git_commit'][:10]}`; the runs, fold and images per class it "
                  "names, each run trained like the rows above with its own option):", "",
                  compare(other["results"]), ""]
        lines += prior_table(other["results"])
    return lines


def prior_table(results: list[dict[str, Any]]) -> list[str]:
    """Each run's maps against the centre prior on the same images (`against_prior`), one
    row per run that recorded it; nothing when none did."""
    rows = [(res["run"], res["against_prior"]) for res in results if res.get("against_prior")]
    if not rows:
        return []
    lines = ["| run | concentration gain over the centre prior, per image | share of images "
             "above the prior | pointing where the prior's peak misses the lesion |",
             "|---|---|---|---|"]
    for run, prior in rows:
        lines.append(f"| {run} | {_cell(prior['concentration_gain'])} | "
                     f"{_cell(prior['share_above_prior'])} | "
                     f"{_off_centre(prior)} (n={prior['off_centre_n']}) |")
    return [*lines, ""]


if __name__ == "__main__":
    sys.exit(main())
