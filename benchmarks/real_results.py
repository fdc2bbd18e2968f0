"""Results on the real data in ``../shared/data``: every number of ``docs/results.md``.

The command line over three modules of this folder, one job each: `real_experiments` (one
function per experiment, returning metrics with group-aware bootstrap 95 % CIs, sizes, wall
time and the command that made it), `results_store` (``docs/results.json``, one key per
experiment, merged under a file lock so parallel invocations can share it) and
`results_render` (``docs/results.md``, regenerated from the JSON as a whole).

    python benchmarks/real_results.py --list
    python benchmarks/real_results.py --only isic2020_lr,isic2020_ctx_hgb
    python benchmarks/real_results.py --only ham_a_28 --quick      # smoke run, not recorded
    python benchmarks/real_results.py --render                      # JSON -> results.md only

``--quick`` subsamples HAM10000 and caps the steps, and writes to ``<out>/results_quick.*``
instead of ``docs/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from real_experiments import (  # noqa: E402
    DEFAULT_DATA,
    DEFAULT_OUT,
    EXPERIMENTS,
    FIGURES,
    N_BOOT,
    Ctx,
    run_experiment,
)
from results_render import render_markdown  # noqa: E402
from results_store import RESULTS_JSON, RESULTS_MD, quick_paths, record, rerender  # noqa: E402

log = logging.getLogger("real_results")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated experiment names (default: all)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="run folders go here")
    p.add_argument("--quick", action="store_true", help="smoke run: subsample, cap steps, "
                   "write <out>/results_quick.* instead of docs/")
    p.add_argument("--fresh", action="store_true", help="retrain existing run folders")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--render", action="store_true", help="only regenerate results.md")
    p.add_argument("--list", action="store_true", help="list the experiments")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.list:
        for name, (section, title, _fn) in EXPERIMENTS.items():
            print(f"{name:22s} {section:9s} {title}")
        return 0
    out = Path(args.out)
    json_path, md_path = quick_paths(out) if args.quick else (RESULTS_JSON, RESULTS_MD)
    if args.render:
        rerender(json_path, md_path, render_markdown)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {unknown}; --list shows them")
    ctx = Ctx(data=Path(args.data), out=out, quick=args.quick, n_boot=args.n_boot,
              fresh=args.fresh, figures=out / "figures" if args.quick else FIGURES)
    for name in names:
        log.info("running %s", name)
        result = run_experiment(name, ctx)
        record(result, json_path, md_path, render_markdown)
        shown = {k: v["estimate"] for k, v in result.get("metrics", {}).items()}
        log.info("%s done in %.0f s: %s", name, result["wall_seconds"], shown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
