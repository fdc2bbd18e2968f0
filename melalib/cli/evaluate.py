"""`melalib evaluate` and `melalib explain`: the command lines of `melalib.external` and
`melalib.explain_run`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from ..explain import select_rows
from ..explain_run import measure, pooled_text, write_explanations
from ..external import (
    KIND,
    blank_metadata,
    default_out,
    diagnosis_table,
    evaluate_external,
    external_table,
    oof_table,
    out_tag,
    scored_summary,
    write_evaluation,
)
from ..localize import MaskSource
from ..runs import RunDir, check_report_folder


def evaluate_cli(args: argparse.Namespace) -> int:
    """``melalib evaluate RUN (--dataset NAME --data-dir DIR | --csv FILE | --oof)
    [--image-dir DIR] [--blank-meta] [--adapt-bn] [--out DIR] [--tta N] [--n-boot N]
    [--skip-missing-images] [--overwrite]``."""
    if args.oof and (args.dataset or args.csv):
        raise ConfigError("--oof scores the run's own rows out of fold: drop --dataset / --csv")
    tag = out_tag(args.dataset or args.csv or "", oof=args.oof, by_diagnosis=args.by_diagnosis,
                  blank_meta=args.blank_meta, adapt_bn=args.adapt_bn)
    out = Path(args.out) if args.out else default_out(args.run, tag)
    inputs = tuple(str(p) for p in (args.data_dir, args.csv, args.image_dir) if p)
    check_report_folder(out, KIND, overwrite=args.overwrite, inputs=(args.run, *inputs))
    table = oof_table(args.run) if args.oof else external_table(
        args.dataset or "", args.data_dir or "", args.csv or "", args.image_dir or "",
        args.label_column, args.image_column)
    if args.by_diagnosis:
        table = diagnosis_table(table)
    if args.blank_meta:
        table = blank_metadata(table)
    ev = evaluate_external(args.run, table, tta=args.tta, batch_size=args.batch_size,
                           n_boot=args.n_boot, skip_missing_images=args.skip_missing_images,
                           oof=args.oof, adapt_bn=args.adapt_bn)
    write_evaluation(ev, out, overwrite=args.overwrite, inputs=inputs)
    print(scored_summary(ev.mapping, table, ev.dropped))
    print(ev.summary())
    if ev.shift is not None:
        auroc = ev.shift["auroc_vs_training_oof"]
        print(f"{ev.shift['summary']}; error rate flagged {_pct(ev.shift['error_rate_flagged'])}"
              f", not flagged {_pct(ev.shift['error_rate_unflagged'])}"
              + ("" if auroc is None else f"; AUROC vs the training OOF images {auroc:.3f}"))
    print(f"wrote the evaluation to {out}")
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def explain_cli(args: argparse.Namespace) -> int:
    """`melalib explain RUN (--ids ... | --kind K --top N) --out DIR ...`."""
    run = RunDir.read(args.run)
    rows = select_rows(run, ids=args.ids, kind=args.kind, top=args.top, fold=args.fold)
    source = MaskSource(args.masks, args.mask_pattern) if args.masks else None
    with_masks = not args.no_masks
    result = measure(run, rows, method=args.method, layer=args.layer, target=args.target,
                     tta=args.tta, masks=source, missing=args.missing_masks, floor=args.floor,
                     faithfulness=args.faithfulness, border=args.border, n_boot=args.n_boot,
                     device=args.device, with_masks=with_masks)
    path = write_explanations(result, args.out, run, args.overwrite, source)
    print(pooled_text(result.pooled))
    if result.options["n_estimated_masks"]:
        print(f"note: {result.options['n_estimated_masks']} mask(s) are Otsu estimates, not "
              "true masks (column mask = estimate)")
    print(f"wrote {len(rows)} explanation(s) to {os.fspath(path)}")
    return 0
