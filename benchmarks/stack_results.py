"""Competition-winner techniques, measured: the stacker on ISIC 2020 metadata + patient
context, and on the synthetic data image OOF + metadata stacking vs the plain blend (with the
diagnosis-level target beside the binary one).

    python benchmarks/stack_results.py --data ../shared/data --out outputs/stack-results
    python benchmarks/stack_results.py --only synthetic --out outputs/stack-results

Writes ``docs/results_stack.json`` (rendered into docs/results.md by
``benchmarks/real_results.py --render``) and prints every row. Every number is measured by
this run; each row records its command, wall time and the git commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import melalib
from melalib.bootstrap import evaluate_with_ci
from melalib.config import RunConfig, get_preset
from melalib.data.load import load_table
from melalib.folds import assign_folds
from melalib.io import write_json
from melalib.runs import RunDir, git_commit
from melalib.stack import load_inputs, stack, table_inputs

REPO = Path(__file__).resolve().parents[1]
JSON = REPO / "docs" / "results_stack.json"
METRICS = ("roc_auc", "pr_auc", "pauc_80")


def _cis(metrics: dict[str, Any]) -> dict[str, Any]:
    return {m: metrics["oof_ci"][m] for m in METRICS}


def isic2020_rows(data: Path, out: Path, n_boot: int, commit: str | None) -> list[dict]:
    """Stacker on ISIC 2020 metadata alone, with and without patient context."""
    cfg = RunConfig.from_preset("isic2020_meta_context", data_dir=str(data / "isic2020"))
    table = assign_folds(load_table(cfg.data), n_folds=cfg.data.n_folds,
                         seed=cfg.data.fold_seed, stratify=cfg.data.fold_stratify)
    rows = []
    for name, context in (("isic2020_meta_stack", True), ("isic2020_meta_stack_noctx", False)):
        started = time.perf_counter()
        result = stack(table_inputs(table), out / name, n_seeds=3, context=context,
                       n_boot=n_boot, overwrite=True)
        flag = "" if context else " --no-context"
        rows.append({
            "name": name, "inputs": "metadata + patient context" if context else "metadata",
            "n": len(result.oof), "n_pos": int(result.oof["label"].sum()),
            "n_patients": int(table.train["group_id"].nunique()), **_cis(result.metrics),
            "top_features": result.importance["feature"].head(5).tolist(),
            "seconds": round(time.perf_counter() - started, 1), "commit": commit,
            "command": "python -m melalib stack --preset isic2020_meta_context --set "
                       f"data_dir=../shared/data/isic2020 --name {name} --output-dir "
                       f"{out}{flag}"})
        print(json.dumps({k: rows[-1][k] for k in ("name", "roc_auc", "pauc_80", "seconds")}),
              flush=True)
    return rows


def _cli_value(value: Any) -> str:
    """A config value as `--set` takes it (tuples comma-joined)."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _train(params: dict[str, Any], out: Path, n_boot: int, commit: str | None
           ) -> tuple[RunConfig, dict[str, Any]]:
    """Train (or read the finished) run; its OOF metrics with CIs; its commit from its provenance."""
    cfg = RunConfig.from_dict({**params, "output_dir": str(out), "data_dir": str(out / "data")})
    started = time.perf_counter()
    run = RunDir(cfg.run_dir, cfg)
    if len(run.done_folds()) < cfg.data.n_folds:  # a finished run is read, not re-opened
        melalib.train(cfg)
    commit = (run.info() or {}).get("git_commit") or commit  # the code that trained it
    seconds = run.history()["seconds"].sum()
    oof = run.oof_by_fold()
    ci = evaluate_with_ci(run.task, oof["label"].to_numpy(),
                          oof[["prob_melanoma"]].to_numpy(), groups=oof["group_id"].to_numpy(),
                          metrics=METRICS, n_boot=n_boot)
    sets = " ".join(f"--set {shlex.quote(f'{k}={_cli_value(v)}')}"
                    for k, v in params.items() if k != "name")
    row = {"name": cfg.name, "n": len(oof), "n_pos": int(oof["label"].sum()),
           **{r["metric"]: {k: r[k] for k in ("estimate", "low", "high")}
              for r in ci.to_dict("records")},
           "seconds": round(float(seconds), 1),
           "wall_seconds": round(time.perf_counter() - started, 1), "commit": commit,
           "command": f"python -m melalib train {sets} --name {cfg.name} --output-dir {out}"}
    return cfg, row


def synthetic_rows(out: Path, patients: int, epochs: int, folds: int, n_boot: int,
                   commit: str | None) -> list[dict]:
    """Image-only runs (binary label, diagnosis target), a metadata-only run, their plain
    mean blend and the stacker over them."""
    base = {**get_preset("synthetic_demo"), "synthetic_patients": patients, "epochs": epochs,
            "n_folds": folds}
    runs = {"syn_image": {**base, "name": "syn_image", "use_meta": False},
            "syn_image_dx": {**base, "name": "syn_image_dx", "use_meta": False,
                             "target": "diagnosis"},
            "syn_meta": {**base, **get_preset("meta_only"), "name": "syn_meta"}}
    rows, cfgs = [], {}
    for name, params in runs.items():
        cfgs[name], row = _train({k: v for k, v in params.items()}, out, n_boot, commit)
        rows.append({**row, "kind": "run"})
        print(json.dumps({k: row[k] for k in ("name", "roc_auc", "pauc_80", "seconds")}),
              flush=True)
    for name, members, context, model in (
            ("syn_stack", ("syn_image", "syn_meta"), True, "hgb"),
            ("syn_stack_noctx", ("syn_image", "syn_meta"), False, "hgb"),
            ("syn_stack_logistic", ("syn_image", "syn_meta"), True, "logistic"),
            ("syn_stack_dx", ("syn_image_dx", "syn_meta"), True, "hgb")):
        started = time.perf_counter()
        dirs = [cfgs[m].run_dir for m in members]
        result = stack(load_inputs(dirs), out / name, n_seeds=3, context=context,
                       n_boot=n_boot, overwrite=True, model=model)
        flag = ("" if context else " --no-context") + \
            ("" if model == "hgb" else f" --model {model}")
        blend = result.metrics["baselines"]["mean_blend"]
        if model != "hgb" or not context:  # the same blend as syn_stack's: listed once
            blend = None
        if blend is not None:
            rows.append({"name": f"{'+'.join(members)} mean blend", "kind": "blend",
                         "n": len(result.oof), "n_pos": int(result.oof["label"].sum()), **blend,
                         "seconds": None, "commit": commit,
                         "command": f"python -m melalib ensemble {' '.join(map(str, dirs))} "
                                    f"--method mean --out {out}/{name}_blend.csv"})
        rows.append({"name": name, "kind": "stack", "n": len(result.oof),
                     "n_pos": int(result.oof["label"].sum()), **_cis(result.metrics),
                     "top_features": result.importance["feature"].head(5).tolist(),
                     "seconds": round(time.perf_counter() - started, 1), "commit": commit,
                     "command": f"python -m melalib stack {' '.join(map(str, dirs))} "
                                f"--name {name} --output-dir {out}{flag}"})
        print(json.dumps({k: rows[-1][k] for k in ("name", "roc_auc", "pauc_80")}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default="outputs/stack-results")
    ap.add_argument("--only", default="isic2020,synthetic")
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--folds", type=int, default=5, help="synthetic CV folds (5 as before the "
                    "demo preset moved to 3)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", default=str(JSON))
    args = ap.parse_args()
    out, commit = Path(args.out), git_commit(REPO)
    results = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    # absolute paths are recorded relative to the checkout: committed docs never name this machine's absolute paths
    argv = [os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in sys.argv[1:]]
    command = ("python benchmarks/stack_results.py " + " ".join(argv)).strip()
    only = set(args.only.split(","))
    sections = {"isic2020": lambda: isic2020_rows(Path(args.data), out, args.n_boot, commit),
                "synthetic": lambda: synthetic_rows(out, args.patients, args.epochs,
                                                    args.folds, args.n_boot, commit)}
    for section, rows in sections.items():
        if section in only:
            results[section] = {"command": command, "date": time.strftime("%Y-%m-%d"),
                                "rows": rows()}
    write_json(args.json, results)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
