"""MILK10k on real image pairs (issue 20), measured: which inputs carry the signal.

Five rows side by side, each a lesion-grouped 5-fold CV on the same lesions (those whose
clinical and dermoscopic images are both in ``../shared/data/milk10k``) and the same folds:

    metadata + MONET only | dermoscopic image | clinical image | both images | both + metadata

The image rows are the preset ``milk10k_dual_lite0_pretrained`` with the inputs its row
names (`ROWS`), trained with ``melalib train`` (`train_command` prints each row's command);
the metadata row is the ``milk10k_meta`` MetaMLP trained here (``--train meta``) on the image
runs' own lesions and folds. ``--train ROW ...`` trains (or resumes) rows through the engine
with the same config as their command; ``--set KEY=VALUE`` changes every row alike (a smoke
run: ``--set epochs=1 --set max_steps_per_epoch=2``). Measured per row on its pooled out-of-fold predictions: the
official thresholded macro F1 (each class positive above 0.5), the same with per-class
thresholds tuned inside the training folds only (`melalib.thresholds.nested_report`),
balanced accuracy, macro one-vs-rest AUC, per-class F1; CIs resample lesions (1,000
replicates). A row with fewer than 5 finished folds is shown as such, never as 5-fold.
Late fusion (`BLENDS`): the equal-weight mean of finished rows' probabilities, measured the
same way whenever all its member rows have every fold (no weight is fitted on labels).

    python benchmarks/milk10k_results.py --commands        # each image row's command
    python benchmarks/milk10k_results.py --runs outputs/milk --train meta \\
        --walls outputs/milk/walls.txt --out docs/results_milk10k.json
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melalib.bootstrap import evaluate_with_ci
from melalib.config import RunConfig, parse_overrides
from melalib.ensemble import blend
from melalib.io import write_json
from melalib.metrics import thresholded_f1_per_class
from melalib.predictions import probabilities
from melalib.runs import RunDir, git_commit
from melalib.tasks import Task
from melalib.thresholds import nested_probs, nested_report

PRESET = "milk10k_dual_lite0_pretrained"
META_PRESET = "milk10k_meta"
METRICS = ("thresholded_macro_f1", "balanced_accuracy", "ovr_auc_macro")
#: the recipe fields each row records (the section describes the image rows' recipe by them)
RECIPE = ("backbone", "pretrained", "image_size", "epochs", "freeze_epochs", "loss",
          "class_weighting", "tta", "n_folds", "seed")
GOAL_F1 = 0.50
WALL_LIMIT_S = 3 * 3600


@dataclass(frozen=True)
class Row:
    """One row: its run folder's name, what it feeds the model, its overrides of the preset
    (``preset`` is the image preset unless the row is the metadata-only one)."""

    key: str
    inputs: str
    overrides: dict[str, Any] = field(default_factory=dict)
    preset: str = PRESET


ROWS = (
    Row("meta", "metadata + MONET + skin tone, no images", preset=META_PRESET),
    Row("derm", "dermoscopic image only",
        {"dual_image": False, "milk_view": "dermoscopic", "use_meta": False}),
    Row("clin", "clinical close-up only",
        {"dual_image": False, "milk_view": "clinical", "use_meta": False}),
    Row("dual", "both images", {"use_meta": False}),
    Row("dual_meta", "both images + metadata + MONET + skin tone (the preset)"),
)
#: the runs whose table (lesions and folds) the metadata row trains on, first present wins;
#: every image row holds the same lesions and folds (same data, seed and ``missing_images``)
REFERENCES = ("dual_meta", "dual", "derm", "clin")
REFERENCE = REFERENCES[0]


@dataclass(frozen=True)
class BlendRow:
    """Late fusion: the equal-weight mean (`melalib.ensemble.blend`, no weight is fitted, so
    no label reaches it) of finished rows' out-of-fold probabilities."""

    key: str
    inputs: str
    members: tuple[str, ...]


BLENDS = (
    BlendRow("dual+meta", "late fusion: mean of the both-images and metadata rows",
             ("dual", "meta")),
    BlendRow("derm+clin+meta", "late fusion: mean of the dermoscopic, clinical and metadata "
             "rows", ("derm", "clin", "meta")),
    BlendRow("all", "late fusion: mean of all five rows", ("meta", "derm", "clin", "dual",
                                                           "dual_meta")),
)


def _value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


ROW_KEYS = tuple(r.key for r in ROWS)
TABLE_KEYS = ROW_KEYS + tuple(b.key for b in BLENDS)


def row_by_key(key: str) -> Row:
    """The row named ``key`` (SystemExit naming the choices otherwise)."""
    for row in ROWS:
        if row.key == key:
            return row
    raise SystemExit(f"unknown row {key!r}; rows: {', '.join(ROW_KEYS)}")


def row_config(row: Row, data_dir: str, runs: str, sets: dict[str, str] | None = None
               ) -> RunConfig:
    """The row's config: its preset, its overrides, then ``sets`` (every row alike)."""
    cfg = RunConfig.from_preset(row.preset, data_dir=data_dir, output_dir=runs, name=row.key,
                                **row.overrides)
    return cfg.with_overrides(dict(sets or {})) if sets else cfg


def train_command(row: Row, data_dir: str, runs: str, sets: dict[str, str] | None = None
                  ) -> str:
    """The ``melalib train`` command of an image row (every fold; ``--fold K`` for one)."""
    items = {**{k: _value(v) for k, v in row.overrides.items()}, **(sets or {})}
    return " ".join([f"melalib train --preset {row.preset} --set data_dir={data_dir}",
                     f"--output-dir {runs} --name {row.key}",
                     *[f"--set {k}={v}" for k, v in items.items()]])


def train_row(row: Row, data_dir: str, runs: str, sets: dict[str, str] | None = None) -> None:
    """Train (or resume) every fold of ``row``; the metadata row on the reference run's
    table (its lesions and its ``fold`` column, so exactly the image rows' folds)."""
    from melalib.engine import train

    cfg = row_config(row, data_dir, runs, sets)
    table = reference(Path(runs)).table() if row.preset == META_PRESET else None
    train(cfg, -1, table=table, progress=False)


def reference(runs: Path) -> RunDir:
    """The first run of `REFERENCES` under ``runs`` that holds its table."""
    for key in REFERENCES:
        run = RunDir.read(runs / key) if (runs / key).is_dir() else None
        if run is not None and run.table_dir().is_dir():
            return run
    raise SystemExit(f"the metadata row trains on an image row's lesions and folds: train "
                     f"one of {', '.join(REFERENCES)} under {runs} first")


def _ci(frame: pd.DataFrame, metric: str) -> dict[str, float]:
    r = frame[frame["metric"] == metric].iloc[0]
    return {"estimate": float(r["estimate"]), "low": float(r["low"]), "high": float(r["high"])}


def fold_walls(walls: Path | None, key: str) -> dict[str, float]:
    """Per fold, the wall seconds the queue logged for run ``key`` (``KEY fold K rc=0
    wall=Ns``, the last line per fold wins); {} without a log."""
    if walls is None or not walls.is_file():
        return {}
    found = re.findall(rf"^{re.escape(key)} fold (\d+) rc=0 wall=(\d+)s", walls.read_text(),
                       flags=re.MULTILINE)
    return {k: float(s) for k, s in found}


def measure_oof(task: Task, oof: pd.DataFrame, n_boot: int) -> dict[str, Any]:
    """Every figure of pooled out-of-fold predictions (``label``, ``group_id``, ``fold``)."""
    y, P = oof["label"].to_numpy(dtype=int), probabilities(task, oof)
    groups, folds = oof["group_id"].astype(str).to_numpy(), oof["fold"].to_numpy(dtype=int)
    ci = evaluate_with_ci(task, y, P, groups, metrics=METRICS, n_boot=n_boot)
    out: dict[str, Any] = {"folds": sorted(int(k) for k in np.unique(folds)),
                           "n": len(oof), "n_lesions": int(oof["group_id"].nunique()),
                           "metrics": {m: _ci(ci, m) for m in METRICS}, "classes":
                           list(task.classes), "support": np.bincount(y, minlength=len(
                               task.classes)).tolist()}
    out["per_class_f1"] = thresholded_f1_per_class(y, P).tolist()
    if len(np.unique(folds)) > 1:
        report = nested_report(y, P, folds, groups, n_boot=n_boot)
        tuned = nested_probs(P, folds, report.fold_thresholds)
        out["nested"] = report.summary(task.classes)
        out["per_class_f1_nested"] = thresholded_f1_per_class(y, tuned).tolist()
    return out


def measure(run: RunDir, n_boot: int) -> dict[str, Any]:
    """Every figure of one row from its run folder's finished folds."""
    out = {**measure_oof(run.task, run.oof_by_fold(), n_boot),
           "n_folds": run.cfg.data.n_folds}
    flat = run.cfg.to_flat()
    out["config"] = {k: flat[k] for k in RECIPE}
    out["trained_commit"] = (run.info() or {}).get("git_commit")
    history = run.history()
    done = history[history["fold"].isin(run.done_folds())]  # not a fold still training
    out["train_seconds"] = round(float(done["seconds"].sum()), 1)
    out["best_epoch"] = [int(run.metrics(k).get("best_epoch", -1)) for k in run.done_folds()]
    return out


def check_config(row: Row, run: RunDir, expected_cfg: RunConfig) -> None:
    """The run folder must hold the row's recipe (its preset, overrides and ``--set``)."""
    diff = run.cfg.result_diff(expected_cfg)
    if diff:
        raise SystemExit(f"{run.path}: not the {row.key!r} recipe; (stored, expected): {diff}")


def measure_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows whose run folders hold at least one finished fold, in `ROWS` order."""
    runs, walls = Path(args.runs), Path(args.walls) if args.walls else None
    sets = parse_overrides(args.set)
    results = []
    for row in ROWS:
        run_dir = runs / row.key
        run = RunDir.read(run_dir) if run_dir.is_dir() else None
        if run is None or not run.done_folds():
            continue
        check_config(row, run, row_config(row, args.data_dir, args.runs, sets))
        res = {"key": row.key, "inputs": row.inputs, "preset": row.preset,
               "overrides": row.overrides, "run": str(run_dir), **measure(run, args.n_boot)}
        res["command"] = (meta_command(args) if row.preset == META_PRESET else
                          train_command(row, args.data_dir, args.runs, sets))
        res["fold_walls"] = fold_walls(walls, row.key)
        res["git_commit"] = git_commit()
        results.append(res)
    return results + measure_blends(runs, results, args.n_boot)


def same_folds(b: BlendRow, oofs: list[pd.DataFrame]) -> None:
    """A blend is out-of-fold only when every member (its OOF frame, ``oofs``) held each
    lesion out in the same fold."""
    folds = [o.set_index("image_id")["fold"].sort_index() for o in oofs]
    for key, f in zip(b.members[1:], folds[1:], strict=True):
        if not f.equals(folds[0]):
            raise SystemExit(f"blend {b.key!r}: row {key!r} does not hold the same lesions "
                             f"in the same folds as row {b.members[0]!r}")


def measure_blends(runs: Path, rows: list[dict[str, Any]], n_boot: int
                   ) -> list[dict[str, Any]]:
    """The `BLENDS` whose member rows are all measured here with every fold finished."""
    done = {r["key"] for r in rows if complete(r)}
    results = []
    for b in BLENDS:
        if not set(b.members) <= done:
            continue
        mixed = blend([RunDir.read(runs / k) for k in b.members], "mean")
        same_folds(b, mixed.run_oofs)  # each member's OOF as blend read it
        res = {"key": b.key, "inputs": b.inputs, "members": list(b.members),
               **measure_oof(mixed.task, mixed.oof, n_boot), "git_commit": git_commit()}
        results.append({**res, "n_folds": len(res["folds"])})
    return results


def meta_command(args: argparse.Namespace) -> str:
    """The command that trains the metadata row (after the reference run exists)."""
    return shlex.join(["python", "benchmarks/milk10k_results.py", "--runs", args.runs,
                       "--data-dir", args.data_dir, "--train", "meta",
                       *[a for s in args.set for a in ("--set", s)]])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="outputs/milk", help="folder of the rows' run folders")
    p.add_argument("--data-dir", default="../shared/data/milk10k")
    p.add_argument("--train", nargs="*", default=[], choices=ROW_KEYS, metavar="ROW",
                   help=f"train (or resume) these rows first ({', '.join(ROW_KEYS)}; the "
                        "metadata row needs the dual_meta run's table)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override applied to every row alike")
    p.add_argument("--walls", default=None, help="the training queue's wall-time log")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", default=None,
                   help="JSON file to write; rows it holds that this call does not measure "
                        "are kept (rows measured at different times share one table)")
    p.add_argument("--commands", action="store_true", help="print each row's training command")
    return p.parse_args(argv)


def merged(out: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``out``'s recorded rows, replaced by ``results``' rows of the same key, in `ROWS`
    order."""
    old = json.loads(out.read_text())["results"] if out.is_file() else []
    by = {r["key"]: r for r in old} | {r["key"]: r for r in results}
    return [by[k] for k in TABLE_KEYS if k in by]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sets = parse_overrides(args.set)
    if args.commands:
        for row in ROWS:
            if row.preset != META_PRESET:
                print(train_command(row, args.data_dir, args.runs, sets))
        return 0
    for key in sorted(args.train, key=ROW_KEYS.index, reverse=True):  # the reference first
        train_row(row_by_key(key), args.data_dir, args.runs, sets)
    results = measure_rows(args)
    if args.out:
        command = "python benchmarks/milk10k_results.py " + shlex.join(
            sys.argv[1:] if argv is None else argv)
        results = merged(Path(args.out), results)
        write_json(Path(args.out), {"command": command, "git_commit": git_commit(),
                                    "n_boot": args.n_boot,
                                    "goal_thresholded_macro_f1": GOAL_F1, "results": results})
    print("\n".join(render(results)))
    return 0


# ------------------------------------------------------------------------------ render
def _cell(m: dict[str, float] | None) -> str:
    return "—" if m is None else f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def _wall(res: dict[str, Any]) -> str:
    if "members" in res:
        return "— (its rows' runs)"
    walls = res.get("fold_walls") or {}
    if not walls:
        return f"{res['train_seconds'] / 60:.0f} min (training epochs only)"
    return f"{sum(walls.values()) / 60:.0f} min ({len(walls)} folds)"


def complete(res: dict[str, Any]) -> bool:
    """Whether every fold of the row's run has finished."""
    return len(res["folds"]) == res["n_folds"]


def _folds(res: dict[str, Any]) -> str:
    n, total = len(res["folds"]), res["n_folds"]
    return str(n) if n == total else (
        f"{n} of {total} (folds {', '.join(map(str, res['folds']))})")


def render(results: list[dict[str, Any]]) -> list[str]:
    """The main table and the per-class F1 table."""
    head = ["inputs", "folds", "thresholded macro F1 (official, 0.5)",
            "thresholded macro F1, nested-tuned thresholds", "balanced accuracy",
            "macro AUC", "wall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        m = r["metrics"]
        lines.append("| " + " | ".join([
            r["inputs"], _folds(r), _cell(m["thresholded_macro_f1"]),
            _cell((r.get("nested") or {}).get("nested_tuned")), _cell(m["balanced_accuracy"]),
            _cell(m["ovr_auc_macro"]), _wall(r)]) + " |")
    return [*lines, "", *render_per_class(results)]


def render_per_class(results: list[dict[str, Any]]) -> list[str]:
    """Per-class F1 at 0.5 (nested-tuned in brackets), one column per row."""
    if not results:
        return []
    classes, support = results[0]["classes"], results[0]["support"]
    lines = ["| class (lesions) | " + " | ".join(r["key"] for r in results) + " |",
             "|" + "---|" * (len(results) + 1)]
    for i, (c, n) in enumerate(zip(classes, support, strict=True)):
        cells = []
        for r in results:
            nested = r.get("per_class_f1_nested")
            cells.append(f"{r['per_class_f1'][i]:.2f}" + (
                f" ({nested[i]:.2f})" if nested else ""))
        lines.append(f"| {c} ({n}) | " + " | ".join(cells) + " |")
    return lines


def _signal(results: list[dict[str, Any]]) -> str:
    """One sentence: each row's official figure, and what adding an input changed."""
    by = {r["key"]: r["metrics"]["thresholded_macro_f1"]["estimate"] for r in results
          if complete(r)}
    parts = [f"{r['inputs']} {by[r['key']]:.3f}" for r in results if r["key"] in by]
    if not parts:
        return "No row has all its folds yet."
    text = "Thresholded macro F1 at 0.5, rows with every fold: " + "; ".join(parts) + "."
    if {"dual", "derm", "clin"} <= by.keys():
        text += (f" The pair against the better single image: "
                 f"{by['dual'] - max(by['derm'], by['clin']):+.3f}.")
    if {"dual", "dual_meta"} <= by.keys():
        text += f" Adding metadata + MONET to the pair: {by['dual_meta'] - by['dual']:+.3f}."
    if {"dual+meta", "dual_meta"} <= by.keys():
        text += (f" Late fusion of the pair and metadata rows against the preset's fused "
                 f"model: {by['dual+meta'] - by['dual_meta']:+.3f}.")
    return text


def _goal(results: list[dict[str, Any]]) -> str:
    full = [r for r in results if complete(r)]
    if not full:
        return ""
    best = max(full, key=lambda r: r["metrics"]["thresholded_macro_f1"]["estimate"])
    untuned = best["metrics"]["thresholded_macro_f1"]["estimate"]
    nested = ((best.get("nested") or {}).get("nested_tuned") or {}).get("estimate")
    verdict = "meets" if max(untuned, nested or 0) >= GOAL_F1 else "misses"
    return (f"Goal: thresholded macro F1 >= {GOAL_F1:.2f} for the best row. Best: "
            f"{best['inputs']}, {untuned:.3f} at 0.5" + (
                f", {nested:.3f} with nested-tuned thresholds" if nested is not None else "")
            + f" — {verdict} the goal.")


def _preset_wall(results: list[dict[str, Any]]) -> str:
    row = next((r for r in results if r["key"] == REFERENCE), None)
    walls = (row or {}).get("fold_walls") or {}
    if row is None or not complete(row) or len(walls) < row["n_folds"]:
        return ""
    total = sum(walls.values())
    return (f"The preset's full {row['n_folds']}-fold run took {total / 3600:.2f} h of wall time on the 2-core "
            f"CPU, one fold after another (folds {', '.join(f'{s / 60:.0f}' for s in walls.values())}"
            f" min), against the 3-hour limit: "
            + ("within it." if total <= WALL_LIMIT_S else "over it."))


INTRO = ("Lesion-grouped {n_folds}-fold CV on the MILK10k lesions whose clinical and "
         "dermoscopic images are all present (`../shared/data/milk10k/images_256x192` holds "
         "both images of 4,192 of the 5,240 training lesions; the rest are withheld on "
         "purpose and `missing_images=drop` lists them in each run). Every row uses the same "
         "lesions, the same folds and the same seed; the image rows are the preset "
         "`milk10k_dual_lite0_pretrained` ({backbone}, {weights}, {image_size} px, {epochs} "
         "epochs of which {freeze_epochs} frozen, loss {loss} with {class_weighting} "
         "pos_weight, TTA {tta}) with the inputs the row names; the metadata row is the "
         "`milk10k_meta` MetaMLP on the same lesions and folds. The official metric calls "
         "each class positive above 0.5; the nested figure tunes one threshold per class on "
         "the other folds' OOF rows only and applies it to the held-out fold "
         "(`melalib.thresholds`), so no fold's labels reach its own thresholds. CIs: {n_boot:,} "
         "bootstrap replicates resampling lesions. Per-class table: F1 at 0.5, nested-tuned "
         "in brackets; wall: the training queue's time per fold (training, TTA out-of-fold "
         "and test predictions, the image-shift statistics), one fold after another on the "
         "shared 2-core CPU, other work running beside it at times.")


LATE = (" Late-fusion rows average the probabilities of finished rows with equal weights "
        "(`melalib.ensemble.blend`): no weight is fitted, so no label reaches them and they "
        "are out-of-fold like their rows; they are refused unless every member row held each "
        "lesion out in the same fold.")


def intro(recorded: dict[str, Any]) -> str:
    """`INTRO` filled from the image rows' recorded recipe (the reference row's first)."""
    images = [r for r in recorded["results"] if r.get("preset") == PRESET]
    ref = next((r for r in images if r["key"] == REFERENCE), images[0] if images else None)
    if ref is None:
        return "Only the metadata row is recorded."
    cfg = ref["config"]
    return INTRO.format(**cfg, weights="ImageNet weights" if cfg["pretrained"] else
                        "random weights", n_boot=recorded.get("n_boot", 1000))


def render_section(path: Path) -> list[str]:
    """The results.md section from the JSON this script writes (nothing when absent)."""
    if not path.is_file():
        return []
    recorded = json.loads(path.read_text())
    results = recorded["results"]
    commands = [f"- {r['key']}: `{r['command']}`" + (
        f" (melalib at commit `{r['trained_commit'][:10]}`)" if r.get("trained_commit") else "")
        for r in results if "command" in r]
    commands += [f"- {r['key']}: the mean of the rows {', '.join(r['members'])} "
                 "(`melalib.ensemble.blend`, equal weights)" for r in results if "members" in r]
    absent = [row.inputs for row in ROWS if row.key not in {r["key"] for r in results}]
    if absent:
        commands.append(f"- not measured yet: {'; '.join(absent)}")
    lines = ["## 8. MILK10k on real image pairs: which inputs carry the signal", "",
             intro(recorded) + (LATE if any("members" in r for r in results) else ""), "",
             f"Measured by `{recorded['command']}` (commit `{recorded['git_commit'][:10]}`). "
             "Each row's run:", "", *commands, ""]
    lines += render(results)
    extra = [s for s in (_signal(results), _goal(results), _preset_wall(results)) if s]
    lines.append("")
    if extra:
        lines += [" ".join(extra), ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
