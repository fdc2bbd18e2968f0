"""`melalib ensemble` and `melalib stack`: the command lines of `melalib.ensemble` and
`melalib.stack`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..data.build import configured_folds
from ..data.load import load_table
from ..ensemble import blend, blend_metrics, submission
from ..errors import DataError, WriteError
from ..io import check_not_input, write_csv, write_json
from ..stack import load_inputs, stack, table_inputs


def ensemble_cli(args: argparse.Namespace) -> int:
    """``melalib ensemble RUN... --method mean|rank|geometric|search --out submission.csv``.

    `blend` of the runs; ``search`` fits weights on the runs' OOF predictions (printed) and
    applies them to the fold-averaged test predictions (weighted mean). The blend's OOF
    metrics go to ``<out stem>.metrics.json`` (``sub.csv`` -> ``sub.metrics.json``).
    """
    blended = blend(args.runs, args.method)
    if args.method == "search":
        print("weights searched on OOF: " + ", ".join(
            f"{r.path}={w:.3f}" for r, w in zip(blended.runs, blended.weights, strict=True)))
    metrics = blend_metrics(blended)
    out = Path(args.out)
    for target in (out, out.with_suffix(".metrics.json")):  # never over an input run's files
        check_not_input(target, [], "output file")
        owner = next((r for r in blended.runs if r.owns(target)), None)
        if owner is not None:
            raise WriteError(f"output file {target} is one of run {owner.path}'s own files, "
                             "which ensemble reads; write the submission elsewhere")
    metrics_path = write_json(out.with_suffix(".metrics.json"), metrics)
    if blended.test is None:
        raise DataError(f"run(s) {[str(p) for p in blended.no_test]} have no test predictions "
                        "(no per-fold test files): their dataset has no test split, so no submission "
                        f"was written (OOF metrics: {metrics_path})")
    sub = submission(blended.test, blended.task)
    write_csv(out, sub)
    primary = metrics["oof"].get(blended.task.primary_metric)
    print(f"wrote {out} ({len(sub)} rows); OOF {blended.task.primary_metric} of the blend: "
          f"{primary:.4f}; metrics in {metrics_path}")
    return 0


def stack_cli(args: Any, cfg: RunConfig) -> int:
    """``melalib stack RUN... --name NAME`` (or no runs + a data config: metadata alone);
    ``cfg`` is the command line's config (`melalib.cli.load_config`)."""
    if args.runs:
        inputs = load_inputs(args.runs)
    else:
        inputs = table_inputs(configured_folds(load_table(cfg.data), cfg.data))
    out = Path(cfg.output_dir) / (args.name or "stack")
    result = stack(inputs, out, model=args.model, n_seeds=args.seeds, meta=not args.no_meta,
                   context=not args.no_context, n_boot=args.n_boot, overwrite=args.overwrite)
    ci = result.metrics["oof_ci"]
    print(json.dumps({"run_dir": str(out), "seconds": result.metrics["seconds"],
                      **{m: [round(ci[m][k], 4) for k in ("estimate", "low", "high")]
                         for m in ("roc_auc", "pauc_80") if m in ci},
                      "baselines": {b: round(v["roc_auc"]["estimate"], 4)
                                    for b, v in result.metrics["baselines"].items()}},
                     indent=2))
    return 0
