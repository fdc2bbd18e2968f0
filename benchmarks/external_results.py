"""External validation (issue 21), measured: HAM10000-trained runs scored on another clinic
network's dermoscopic images (MILK10k, the classes both define), side by side with their
in-domain out-of-fold figures, with and without metadata, and the image-shift score's
separation of the two clinics.

    python benchmarks/external_results.py outputs/ext/ham_base outputs/ext/ham_cc \\
        --fold 0 --out docs/results_external.json

For each run: in-domain OOF (its own held-out rows of ``--fold``; per source for a
multi-source run), the same rows re-predicted with age, sex and site blanked, and -- unless
the run trained on MILK10k rows itself -- the fold ensemble on every MILK10k dermoscopic image
present (`melalib.external.evaluate_external`, TTA as the run's config). CIs are 1,000
lesion-grouped bootstrap replicates. Every figure is measured by this run; the JSON records
the command, the git commit and the wall time of each part. Goals (issue 21, HAM-trained ->
MILK10k dermoscopic): balanced accuracy >= 0.65, melanoma AUC >= 0.90, in-domain loss <= 0.01.
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

from melalib.bootstrap import evaluate_with_ci
from melalib.classmap import class_mapping
from melalib.data.load import dataset_parts
from melalib.external import (
    Evaluation,
    blank_metadata,
    evaluate_external,
    external_table,
    oof_table,
)
from melalib.io import write_json
from melalib.runs import RunDir, git_commit
from melalib.shift import POOLED, ShiftStats
from melalib.table import LesionTable
from melalib.tasks import MELANOMA, Task

GOALS = {"external_balanced_accuracy": 0.65, "external_melanoma_auc": 0.90,
         "in_domain_loss": 0.01}
#: Config fields that tell the compared recipes apart (shown per row).
OPTIONS = ("dataset", "color_constancy", "meta_blanking", "border_aug", "augment", "epochs",
           "backbone", "use_meta")
#: The HAM10000 recipe's value of the options a row is labelled by (`options_label`).
RECIPE = {"dataset": "ham10000", "color_constancy": False, "meta_blanking": 0.0,
          "border_aug": "none", "augment": "medium", "use_meta": True}


def _ci(frame: pd.DataFrame, metric: str) -> dict[str, float] | None:
    """``{estimate, low, high}`` of ``metric`` in a `evaluate_with_ci` frame."""
    rows = frame[frame["metric"] == metric]
    if rows.empty:
        return None
    r = rows.iloc[0]
    return {"estimate": float(r["estimate"]), "low": float(r["low"]), "high": float(r["high"])}


def shared_oof(task: Task, data_task: Task, oof: pd.DataFrame
               ) -> tuple[Task, np.ndarray, np.ndarray, np.ndarray] | None:
    """The OOF rows of the classes ``task`` shares with ``data_task``, scored as the external
    table is (`classmap.class_mapping`: the other classes' probability removed and the rest
    renormalised): (scored task, labels, probabilities, groups); None when the mapping drops
    no class of ``task`` (its OOF is already scored on the shared classes)."""
    mapping = class_mapping(task, data_task)
    if not mapping.dropped_model_classes:
        return None
    scored = {c: g for g, (model, _) in enumerate(mapping.groups) for c in model}
    names = np.asarray(task.classes, dtype=object)[oof["label"].to_numpy()]
    y = np.array([scored.get(n, -1) for n in names], dtype=np.int64)
    keep = y >= 0
    probs = mapping.probs(oof[task.prob_columns].to_numpy()[keep])
    return mapping.task, y[keep], probs, oof["group_id"].to_numpy()[keep]


def oof_scores(run: RunDir, fold: int | None, n_boot: int, data_task: Task | None = None
               ) -> dict[str, Any]:
    """Balanced accuracy and melanoma-vs-rest AUC of the stored OOF, pooled and per source;
    ``shared``: on the classes the run's task shares with ``data_task`` (the external
    table's), when the run knows classes the external table lacks."""
    oof = run.oof(fold)
    task = run.task
    table = run.table().df.set_index("image_id")
    out: dict[str, Any] = {}
    sources = table["source"] if "source" in table.columns else None
    parts = {"all": oof}
    if sources is not None and sources.nunique() > 1:
        src = sources.reindex(oof["image_id"]).to_numpy()
        parts.update({str(s): oof[src == s] for s in sorted(set(src))})
    for name, part in parts.items():
        out[name] = scores(task, part["label"].to_numpy(), part[task.prob_columns].to_numpy(),
                           part["group_id"].to_numpy(), n_boot)
    shared = None if data_task is None else shared_oof(task, data_task, oof)
    if shared is not None:
        out["shared"] = scores(*shared, n_boot)
    return out


def scores(task: Any, y: np.ndarray, probs: np.ndarray, groups: np.ndarray, n_boot: int
           ) -> dict[str, Any]:
    """n, balanced accuracy and (where both occur) melanoma-vs-rest AUC, with CIs."""
    ci = evaluate_with_ci(task, y, probs, groups=groups, n_boot=n_boot,
                          metrics=("balanced_accuracy",))
    out: dict[str, Any] = {"n": len(y), "balanced_accuracy": _ci(ci, "balanced_accuracy")}
    mel = [i for i, c in enumerate(task.classes) if c.lower() == "mel"]
    if mel and 0 < np.sum(y == mel[0]) < len(y):
        mci = evaluate_with_ci(MELANOMA, (y == mel[0]).astype(int), probs[:, mel[0]],
                               groups=groups, n_boot=n_boot, metrics=("roc_auc",))
        out["melanoma_auc"] = _ci(mci, "roc_auc")
    return out


def evaluation_scores(ev: Evaluation) -> dict[str, Any]:
    """The figures of one `Evaluation` this table shows."""
    out = {"n": len(ev.frame), "balanced_accuracy": _ci(ev.ci, "balanced_accuracy"),
           "melanoma_auc": _ci(ev.ci, "melanoma_roc_auc"), "dropped": ev.dropped,
           "classes": list(ev.mapping.task.classes)}
    if ev.shift is not None:
        out["shift"] = {k: v for k, v in ev.shift.items() if k != "summary"}
    if ev.per_class is not None:
        out["per_class"] = {str(c): {k: float(r[k]) for k in ("recall", "support", "n_pred")}
                            for c, r in ev.per_class.iterrows()}
    return out


def evaluations(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, external figures) of every external evaluation of the rows: each run's, then
    its batch-norm-adapted one (``--adapt-bn``) where measured."""
    out = []
    for res in results:
        name = Path(res["run"]).name
        out += [(label, res[key]) for key, label in
                (("external", name), ("external_adapt_bn", f"{name}, batch norm adapted"))
                if res.get(key)]
    return out


def recall_table(results: list[dict[str, Any]]) -> list[str]:
    """External recall per class (predicted / true counts) of the evaluations that recorded
    it."""
    rows = [(label, ext) for label, ext in evaluations(results) if ext.get("per_class")]
    if not rows:
        return []
    first = rows[0][1]["per_class"]
    lines = ["| run | " + " | ".join(f"{c} ({first[c]['support']:.0f})" for c in first) + " |",
             "|---|" + "---|" * len(first)]
    for label, ext in rows:
        pc = ext["per_class"]
        lines.append(f"| {label} | " + " | ".join(
            f"{pc[c]['recall']:.2f} ({pc[c]['n_pred']:.0f})" for c in first) + " |")
    return lines


def adapt_table(results: list[dict[str, Any]]) -> list[str]:
    """The rows measured with ``--adapt-bn``: each figure without and with the models'
    batch-norm statistics adapted (external: to the MILK10k images; in-domain: each fold's
    model to its own held-out rows)."""
    rows = [r for r in results if r.get("external_adapt_bn")]
    if not rows:
        return []
    lines = ["| run | options | external bal. acc., plain -> adapted | external melanoma AUC, "
             "plain -> adapted | in-domain bal. acc., plain -> adapted |", "|---|---|---|---|---|"]
    for res in rows:
        ext, ada = res["external"], res["external_adapt_bn"]
        own = in_domain_parts(res)[0]
        home = res["in_domain_adapt_bn"]
        lines.append(
            f"| {Path(res['run']).name} | {options_label(res['options'])} | "
            f"{_cell(ext['balanced_accuracy'])} -> {_cell(ada['balanced_accuracy'])} | "
            f"{_cell(ext['melanoma_auc'])} -> {_cell(ada['melanoma_auc'])} | "
            f"{_cell(own['balanced_accuracy'])} -> {_cell(home['balanced_accuracy'])} |")
    return lines


def held_out(path: str, fold: int | None, source: str | None = None) -> LesionTable:
    """The run's own held-out rows (of ``fold``; of ``source`` in a multi-source table)."""
    table = oof_table(path)
    keep = np.ones(len(table.df), dtype=bool)
    if fold is not None:
        keep &= (table.df["fold"] == fold).to_numpy()
    if source is not None and "source" in table.df.columns:
        keep &= (table.df["source"] == source).to_numpy()
    if keep.all():
        return table
    return LesionTable(table.df[keep].reset_index(drop=True), table.task, origin=table.origin)


def blanked_oof(path: str, fold: int | None, n_boot: int, source: str | None = None
                ) -> dict[str, Any]:
    """The run's own held-out rows re-predicted with age, sex and site blanked."""
    ev = evaluate_external(path, blank_metadata(held_out(path, fold, source)), oof=True,
                           n_boot=n_boot, progress=False)
    return evaluation_scores(ev)


def adapted_oof(path: str, fold: int | None, n_boot: int, source: str | None = None
                ) -> dict[str, Any]:
    """The run's own held-out rows re-predicted by each fold's model with its batch-norm
    statistics adapted to them (`melalib.adapt`): what adapting costs in the training clinic."""
    ev = evaluate_external(path, held_out(path, fold, source), oof=True, adapt_bn=True,
                           n_boot=n_boot, progress=False)
    return evaluation_scores(ev)


def run_options(run: RunDir) -> dict[str, Any]:
    """The run's value of each of `OPTIONS` (data, train or model field)."""
    cfg = run.cfg
    return {k: getattr(cfg.data, k, getattr(cfg.train, k, getattr(cfg.model, k, None)))
            for k in OPTIONS}


def trained_by(run: RunDir) -> str | None:
    """The ``melalib`` command that trained the run (its provenance's, the program path
    dropped)."""
    command = str((run.info() or {}).get("command") or "").split()
    return "melalib " + shlex.join(command[1:]) if command else None


def trained_on(run: RunDir, dataset: str) -> bool:
    """Whether the run's training rows include ``dataset``'s (then it is not external)."""
    return dataset in dataset_parts(str(run.cfg.data.dataset))


def measure_run(path: str, external: LesionTable, dataset: str, args: argparse.Namespace
                ) -> dict[str, Any]:
    """Every figure of one run, each part timed; ``external`` is ``dataset``'s table."""
    run = RunDir.read(path)
    res: dict[str, Any] = {"run": str(path), "options": run_options(run),
                           "classes_trained": list(run.task.classes),
                           "trained_by": trained_by(run), "seconds": {}}
    stats = run.shift_path(args.fold or 0)
    res["shift_score"] = ShiftStats.load(stats).kind if stats.is_file() else None
    _timed(res, "in_domain", lambda: oof_scores(run, args.fold, args.n_boot, external.task))
    first = dataset_parts(str(run.cfg.data.dataset))[0]  # the comparable source
    if run.cfg.model.use_meta:  # an image-only run has no metadata to blank
        _timed(res, "in_domain_blank_meta",
               lambda: blanked_oof(path, args.fold, args.n_boot, first))
    if not trained_on(run, dataset):
        _timed(res, "external", lambda: evaluation_scores(evaluate_external(
            path, external, skip_missing_images=True, n_boot=args.n_boot, progress=False)))
        if args.adapt_bn:
            _timed(res, "external_adapt_bn", lambda: evaluation_scores(evaluate_external(
                path, external, skip_missing_images=True, n_boot=args.n_boot, progress=False,
                adapt_bn=True)))
            _timed(res, "in_domain_adapt_bn",
                   lambda: adapted_oof(path, args.fold, args.n_boot, first))
    return res


def _timed(res: dict[str, Any], key: str, measure: Any) -> None:
    """``res[key] = measure()``, its wall time in ``res["seconds"][key]``."""
    started = time.perf_counter()
    res[key] = measure()
    res["seconds"][key] = round(time.perf_counter() - started, 1)


def _cell(r: dict[str, float] | None) -> str:
    return "-" if not r else f"{r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def options_label(options: dict[str, Any]) -> str:
    """The options a row sets beyond the HAM10000 recipe ("recipe" when none)."""
    set_ = [f"`{k}={v}`" for k, v in options.items() if k in RECIPE and v != RECIPE[k]]
    return ", ".join(set_) or "recipe"


def in_domain_parts(res: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row's in-domain figures comparable with the other rows' (on the shared classes,
    else its first source's rows, else all) and, by source, those of the other sources it
    trained on (a multi-source run's)."""
    ind = res["in_domain"]
    first = dataset_parts(str(res["options"]["dataset"]))[0]
    others = {k: v for k, v in ind.items() if k not in ("all", "shared", first)}
    return ind.get("shared") or ind.get(first) or ind["all"], others


def render(results: list[dict[str, Any]]) -> list[str]:
    """One row per run: in-domain, in-domain without metadata, external, image shift."""
    lines = ["| run | options | in-domain bal. acc. | in-domain, metadata blanked | "
             "external bal. acc. | external melanoma AUC | shift AUROC | flagged | "
             "error flagged / not |", "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        ext = res.get("external")
        own, others = in_domain_parts(res)
        shift = (ext or {}).get("shift") or {}
        opts = options_label(res["options"])
        other = next(iter(others.values()), {})
        blank = res.get("in_domain_blank_meta")
        ext_cells = (["(trained on it: " + _cell(other.get("balanced_accuracy"))
                      + " out of fold)", _cell(other.get("melanoma_auc")), "-", "-", "-"]
                     if ext is None else
            [_cell(ext["balanced_accuracy"]), _cell(ext["melanoma_auc"]),
             "-" if shift.get("auroc_vs_training_oof") is None
             else f"{shift['auroc_vs_training_oof']:.3f} ({res.get('shift_score') or POOLED})",
             _pct(shift.get("share_flagged")),
             f"{_pct(shift.get('error_rate_flagged'))} / "
             f"{_pct(shift.get('error_rate_unflagged'))}"])
        lines.append(f"| {Path(res['run']).name} | {opts} | {_cell(own['balanced_accuracy'])} | "
                     f"{_cell(blank['balanced_accuracy']) if blank else '- (no metadata input)'}"
                     " | "
                     + " | ".join(ext_cells) + " |")
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="HAM10000-trained run folders, side by side")
    p.add_argument("--dataset", default="milk10k", help="the external table's adapter")
    p.add_argument("--data-dir", default="../shared/data/milk10k")
    p.add_argument("--image-dir", default="../shared/data/milk10k/images_256x192")
    p.add_argument("--fold", type=int, default=None, help="in-domain: only this fold's rows")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--adapt-bn", action="store_true", help="also score each run with its "
                   "batch-norm statistics adapted to the external images (and, in-domain, to "
                   "its own held-out rows): `melalib evaluate --adapt-bn`")
    p.add_argument("--out", default=None, help="JSON file to write; rows of other runs it already holds are kept")
    return p.parse_args(argv)


def merged(out: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``out``'s recorded rows with ``results`` replacing those of the same run (in the
    recorded order, new runs last): runs finished at different times share one table."""
    if not out.is_file():
        return results
    fresh = {r["run"]: r for r in results}
    recorded = json.loads(out.read_text())
    old = [r if "git_commit" in r or "git_commit" not in recorded
           else {**r, "git_commit": recorded["git_commit"]}  # keeps the commit that measured it
           for r in recorded["results"]]
    kept = [fresh.pop(r["run"], r) for r in old]
    return kept + [r for r in results if r["run"] in fresh]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    table = external_table(args.dataset, args.data_dir, image_dir=args.image_dir)
    commit = git_commit()
    results = [{**measure_run(path, table, args.dataset, args), "git_commit": commit}
               for path in args.runs]
    print("\n".join(render(results)))
    if args.out:
        rows = merged(Path(args.out), results)
        flags = [a for a in (sys.argv[1:] if argv is None else argv) if a not in args.runs]
        command = "python benchmarks/external_results.py " + shlex.join(
            [r["run"] for r in rows] + flags)
        write_json(Path(args.out), {"command": command, "git_commit": commit,
                                    "dataset": args.dataset, "goals": GOALS, "results": rows})
    return 0


def _goal_line(results: list[dict[str, Any]]) -> str:
    """Which single-source evaluation reaches the goals, judged on the point estimates (an
    adapted one's in-domain figure is its models adapted to their own held-out rows)."""
    base = next((r for r in results
                 if options_label(r["options"]) == "recipe" and "external" in r), None)
    home = None if base is None else base["in_domain"]["all"]["balanced_accuracy"]["estimate"]
    lines = []
    for res in results:
        for key, own_key, tag in (("external", "in_domain", ""),
                                  ("external_adapt_bn", "in_domain_adapt_bn",
                                   ", batch norm adapted")):
            ext = res.get(key)
            if ext is None:
                continue
            own = res[own_key].get("all", res[own_key])["balanced_accuracy"]["estimate"]
            lines.append(_goal_verdict(f"{Path(res['run']).name}{tag}", ext,
                                       None if home is None or (res is base and not tag)
                                       else own - home))
    return "; ".join(lines) + "."


def _goal_verdict(label: str, ext: dict[str, Any], change: float | None) -> str:
    """One evaluation against the goals: its figures and whether it meets them."""
    bal = ext["balanced_accuracy"]["estimate"]
    mel = (ext["melanoma_auc"] or {}).get("estimate", float("nan"))
    ok = (bal >= GOALS["external_balanced_accuracy"] and mel >= GOALS["external_melanoma_auc"]
          and (change is None or -change <= GOALS["in_domain_loss"]))
    return (f"{label}: external balanced accuracy {bal:.3f}, melanoma AUC {mel:.3f}"
            + ("" if change is None else f", in-domain change {change:+.3f}")
            + (" — meets the goals" if ok else " — misses the goals"))


def _multi_source_line(results: list[dict[str, Any]]) -> str:
    """What a multi-source row's own MILK10k rows show against the single-source rows'
    external figures (empty without both kinds of row)."""
    external = [r["external"] for r in results if r.get("external")]
    lines = []
    for res in results:
        if res.get("external") or not external:
            continue
        own, others = in_domain_parts(res)
        if not others:
            continue
        (source, figures), = others.items()
        first = dataset_parts(str(res["options"]["dataset"]))[0]
        own_n = next(r["in_domain"]["all"]["n"] for r in results if r.get("external"))
        bal = [e["balanced_accuracy"]["estimate"] for e in external]
        mel = [e["melanoma_auc"]["estimate"] for e in external if e.get("melanoma_auc")]
        lines.append(
            f"{Path(res['run']).name} trained on both clinics: its {figures['n']} {source} rows "
            f"held out in the fold reach balanced accuracy "
            f"{figures['balanced_accuracy']['estimate']:.3f} and melanoma AUC "
            f"{(figures.get('melanoma_auc') or {}).get('estimate', float('nan')):.3f}, against "
            f"{min(bal):.3f} to {max(bal):.3f} and {min(mel):.3f} to {max(mel):.3f} for the "
            f"single-source rows on all {external[0]['n']} {source} images (not the same "
            f"images: a fold's share of them). Its folds are drawn over the merged table, so "
            f"its in-domain cells are {own['n']} {first} "
            f"images, not the single-source rows' {own_n}: the comparison is not paired.")
    return " ".join(lines)


def render_section(path: Path, reverse: Path | None = None) -> list[str]:
    """The results.md section from the JSON this script writes (nothing when absent), and
    ``reverse``'s subsection (MILK10k-trained runs on HAM10000) when that JSON exists."""
    if not path.is_file():
        return []
    return _forward_section(path) + ([] if reverse is None else render_reverse(reverse))


def _replicates_line(results: list[dict[str, Any]]) -> str:
    """Rows with identical options (the same recipe trained twice): how far apart their
    figures lie, the run-to-run variation the option rows are to be read against."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        if res.get("external"):
            groups.setdefault(json.dumps(res["options"], sort_keys=True), []).append(res)
    lines = []
    for rows in (g for g in groups.values() if len(g) > 1):
        names = " and ".join(Path(r["run"]).name for r in rows)
        spread = {label: [get(r) for r in rows] for label, get in (
            ("in-domain balanced accuracy",
             lambda r: in_domain_parts(r)[0]["balanced_accuracy"]["estimate"]),
            ("external balanced accuracy",
             lambda r: r["external"]["balanced_accuracy"]["estimate"]),
            ("external melanoma AUC", lambda r: r["external"]["melanoma_auc"]["estimate"]))}
        lines.append(f"{names} share every option: the same recipe trained twice (same fold "
                     "and seed; the thread count and melalib's commit may differ). Their "
                     + ", ".join(f"{label} {' / '.join(f'{v:.3f}' for v in values)}"
                                 for label, values in spread.items())
                     + ": the run-to-run variation the other rows' differences are read "
                     "against.")
    return " ".join(lines)


def _adapt_line(results: list[dict[str, Any]]) -> str:
    """What adapting changed, per adapted row."""
    parts = []
    for res in results:
        ext, ada = res.get("external"), res.get("external_adapt_bn")
        if not (ext and ada):
            continue
        change = {k: ada[k]["estimate"] - ext[k]["estimate"]
                  for k in ("balanced_accuracy", "melanoma_auc") if ext.get(k) and ada.get(k)}
        home = (res["in_domain_adapt_bn"]["balanced_accuracy"]["estimate"]
                - in_domain_parts(res)[0]["balanced_accuracy"]["estimate"])
        parts.append(f"{Path(res['run']).name}: external balanced accuracy "
                     f"{change.get('balanced_accuracy', float('nan')):+.3f}, melanoma AUC "
                     f"{change.get('melanoma_auc', float('nan')):+.3f}, in-domain {home:+.3f}")
    return ("Adapting changed, against the same run unadapted: " + "; ".join(parts) + "."
            if parts else "")


def _other_recipes(results: list[dict[str, Any]]) -> str:
    """The rows trained by another preset than the recipe's, with their commands."""
    others = [f"{Path(r['run']).name} by `{r['trained_by']}`" for r in results
              if "--preset" in str(r.get("trained_by"))
              and "--preset ham10000_lite0_pretrained_6ep " not in str(r["trained_by"])]
    return "; the other presets' rows: " + "; ".join(others) if others else ""


def commits(recorded: dict[str, Any]) -> str:
    """Which commit measured which rows: the file's commit, or per commit its rows when the
    rows were measured at different commits (`merged` keeps each row's)."""
    by: dict[str, list[str]] = {}
    for r in recorded["results"]:
        by.setdefault(str(r.get("git_commit") or recorded["git_commit"])[:10], []).append(
            Path(r["run"]).name)
    if len(by) == 1:
        return f"commit `{next(iter(by))}`"
    return "; ".join(f"{', '.join(runs)} at commit `{c}`" for c, runs in by.items())


def render_reverse(path: Path) -> list[str]:
    """The reverse direction's subsection: MILK10k-trained runs scored on HAM10000."""
    if not path.is_file():
        return []
    recorded = json.loads(path.read_text())
    results = recorded["results"]
    lines = ["### The reverse: MILK10k-trained models on HAM10000", "",
             "Each run is trained on MILK10k's dermoscopic images (one fold of the "
             "lesion-grouped 5-fold split of the 4,192 lesions present) and scored on every "
             "HAM10000 image of the classes both define. In-domain: its own out-of-fold rows "
             "of that fold on the same shared classes, scored as the external table is (the "
             "probability of MILK10k's four other classes removed and the rest "
             "renormalised; `shared_oof`); the 11-class figure beside it. An image-only run "
             "has no metadata to blank. CIs: 1,000 lesion-grouped bootstrap replicates.", "",
             f"Made by `{recorded['command']}` ({commits(recorded)}); the runs by "
             + "; ".join(f"`{r['trained_by']}`" for r in results if r.get("trained_by"))
             + ".", ""]
    lines += render(results)
    for res in results:
        ind, ext = res["in_domain"], res.get("external")
        if ext is None or "shared" not in ind:
            continue
        lines += ["", f"{Path(res['run']).name}: in-domain balanced accuracy "
                  f"{_cell(ind['all']['balanced_accuracy'])} over its "
                  f"{len(res['classes_trained'])} classes, "
                  f"{_cell(ind['shared']['balanced_accuracy'])} on the {len(ext['classes'])} "
                  f"shared classes; on HAM10000 {_cell(ext['balanced_accuracy'])} (change "
                  f"{ext['balanced_accuracy']['estimate'] - ind['shared']['balanced_accuracy']['estimate']:+.3f}); "
                  f"melanoma AUC {_cell(ind['shared'].get('melanoma_auc'))} in-domain, "
                  f"{_cell(ext['melanoma_auc'])} on HAM10000. Measurement time: "
                  f"{sum(res['seconds'].values()):.0f} s."]
    return [*lines, ""]


def _forward_section(path: Path) -> list[str]:
    """Section 6 proper: HAM10000-trained runs on MILK10k (and multi-source rows)."""
    recorded = json.loads(path.read_text())
    results = recorded["results"]
    seconds = {Path(r["run"]).name: sum(r["seconds"].values()) for r in results}
    lines = ["## 6. External validation: HAM10000-trained models on MILK10k dermoscopic images",
             "",
             "Each run is the 6-epoch pretrained Lite0 recipe (`ham10000_lite0_pretrained_6ep`) "
             "trained on HAM10000 fold 0 (lesion-grouped, the same fold, seed and epochs for "
             "every row: a paired comparison on one fold, not 5-fold CV), with the options its "
             "row names. In-domain: its out-of-fold rows of fold 0, TTA 8; then the same "
             "rows re-predicted with age, sex and site blanked. External: every MILK10k "
             "dermoscopic image present in `../shared/data` of the classes both label sets "
             "define (`melalib.classmap`: HAM10000's 7 against MILK10k's 11; MILK10k's "
             "BEN_OTH, INF, MAL_OTH and SCCKA rows are dropped), through `melalib evaluate`'s "
             "code. Shift AUROC: how well the image-shift score each run stored at training "
             "(`melalib.shift`) tells MILK10k images from the run's own out-of-fold HAM10000 "
             "images; flagged: the share of MILK10k images above the in-domain 95 % "
             "threshold, and the error rates of flagged and unflagged images; in brackets, the "
             "score the run stored: `pooled-mahalanobis`, the first score (a Mahalanobis distance of the "
             "pooled penultimate features), which fails here, or `style-mahalanobis`, melalib's score "
             "now (the style statistics of the backbone stage at 1/4 resolution; storage "
             "controls in docs/techniques.md, section 4; `shift.refit_run` upgrades a run's "
             "stored score without retraining). A run trained on MILK10k images too "
             "(multi-source, `dataset=ham10000+milk10k`) is not scored externally: its "
             "in-domain cell is its HAM10000 rows of fold 0 and the external cells show its "
             "out-of-fold MILK10k rows of fold 0 (lesions it never trained on, from a clinic "
             "network it trained on). CIs: 1,000 lesion-grouped bootstrap replicates.", "",
             f"Made by `{recorded['command']}` ({commits(recorded)}); the "
             "runs by `melalib train --preset ham10000_lite0_pretrained_6ep --set "
             "data_dir=../shared/data/ham10000 --fold 0 --output-dir outputs/ext --name "
             "RUN` with the row's options added as `--set OPTION=VALUE` (the recipe row: none; "
             "the multi-source row: `--set dataset=ham10000+milk10k --set "
             "data_dir=../shared/data --set missing_images=drop`), "
             "one torch thread per run (`OMP_NUM_THREADS=1`), on the shared 2-core CPU"
             + _other_recipes(results) + ".", ""]
    lines += render(results)
    lines += ["", "Goals (HAM10000-trained, MILK10k dermoscopic, shared classes): balanced "
              f"accuracy >= {GOALS['external_balanced_accuracy']}, melanoma AUC >= "
              f"{GOALS['external_melanoma_auc']}, in-domain loss <= "
              f"{GOALS['in_domain_loss']}. " + _goal_line(results),
              *(["", line] if (line := _multi_source_line(results)) else []),
              *(["", line] if (line := _replicates_line(results)) else []),
              "", "Measurement time per run (prediction passes and bootstraps, not training): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ".", ""]
    adapted = adapt_table(results)
    if adapted:
        lines += ["### Test-time batch-norm adaptation", "",
                  "The same runs scored with `--adapt-bn` (`melalib evaluate RUN ... "
                  "--adapt-bn`, `melalib.adapt`): before scoring, each model's image "
                  "batch-norm statistics are re-estimated on the unlabelled images it scores "
                  "(AdaBN, Li et al. 2016): the MILK10k images for the external cells, each "
                  "fold's own held-out HAM10000 rows for the in-domain cell (what adapting "
                  "costs at home). No label and no weight is touched; the image-shift score "
                  "is still measured with the unadapted models.", "", *adapted, "",
                  _adapt_line(results), ""]
    recalls = recall_table(results)
    if recalls:
        lines += ["External recall per class (in brackets: how many MILK10k images the model "
                  "called that class; the header gives the true count), for the rows that "
                  "recorded it:", "", *recalls, ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
