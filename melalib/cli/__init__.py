"""`melalib` command line: prepare | train | predict | evaluate | ensemble | stack | reproduce |
demo | presets | weights | kaggle-bundle | explain.

Every subcommand maps onto the same typed config as the Python API and the notebooks:
``--config cfg.yaml``, ``--preset NAME`` and ``--set key=value`` (any config field).
The parser and the training / run commands live here; the handlers of the other command
groups in `melalib.cli.predict` (predict), `melalib.cli.combine` (ensemble, stack) and
`melalib.cli.evaluate` (evaluate, explain). No library module imports argparse.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import (
    RunConfig,
    fields_help,
    get_preset,
    parse_overrides,
    read_yaml_layers,
    resolve,
)
from ..data.prepare import PREPARE_ASPECTS, prepare_images
from ..ensemble import BLENDS
from ..errors import ConfigError, MelalibError
from ..io import check_not_input, json_text, one_line
from ..localize import BORDER, MISSING
from ..predictions import frame_ci
from ..presets import PRESETS, describe
from ..reproduce import reproduce
from ..runs import RunDir
from .combine import ensemble_cli, stack_cli

# engine, inference and weights (timm), demo and kaggle (the Jupyter stack) are imported by
# their subcommands: `melalib --help`, `melalib presets` and `melalib prepare` stay quick.


def load_config(args: argparse.Namespace) -> RunConfig:
    """Config from --preset, then --config YAML on top (its own ``preset:`` first), then
    --set overrides and flags (`melalib.config.resolve`: explicit beats preset)."""
    preset, layers = getattr(args, "preset", None) or "", []
    if preset:
        get_preset(preset)  # an unknown --preset is named as such, not as the file's error
    overrides = _command_line(args)
    if not getattr(args, "config", None):  # one parse: the preset, then the command line
        return resolve([("command line", _as_layer(overrides))] if overrides else [], preset)
    try:
        file_preset, values = read_yaml_layers(args.config)
        if file_preset and preset:
            layers.append((f"preset {file_preset}", get_preset(file_preset)))
        preset = preset or file_preset
        layers.append((f"config {args.config}", values))
        cfg = resolve(layers, preset)
    except ConfigError as exc:  # name the file the bad key or value came from
        raise ConfigError(f"{args.config}: {exc}") from exc
    return cfg.with_overrides(overrides, source="command line") if overrides else cfg


def _command_line(args: argparse.Namespace) -> list[str]:
    """``--set`` items and the flags that set config fields, as ``key=value``."""
    overrides = list(getattr(args, "set", None) or [])
    for flag in ("fold", "name", "output_dir"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{flag}={value}")
    if getattr(args, "overwrite", False):
        overrides.append("overwrite=true")
    return overrides


def _as_layer(overrides: list[str]) -> dict[str, str]:
    """``key=value`` items as a `config.resolve` layer (``train.lr``: its last part), as
    `RunConfig.with_overrides` reads them."""
    return {key.split(".")[-1]: value for key, value in parse_overrides(overrides).items()}


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser; one taking config fields (`_add_config_args`) lists them in its
    ``--help``, from their declarations (`melalib.config.fields_help`, read only then)."""

    lists_fields = False

    def format_help(self) -> str:
        text = super().format_help()
        return f"{text}\n{fields_help()}\n" if self.lists_fields else text


def _add_config_args(p: argparse.ArgumentParser) -> None:
    if isinstance(p, _Parser):
        p.lists_fields = True
    p.add_argument("--config", help="YAML config (flat keys or data/model/train sections)")
    p.add_argument("--preset", help="named recipe under the other options (`melalib presets` "
                   "lists them), e.g. synthetic_demo, isic2020_effnet_meta")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config field, e.g. --set epochs=3 (repeatable)")
    p.add_argument("--name", help="run name (outputs/<name>)")
    p.add_argument("--output-dir", dest="output_dir", help="parent folder of run folders")


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine import train  # timm: imported when training (see the note above)

    cfg = load_config(args)
    if cfg.overwrite and getattr(args, "config", None):  # --overwrite never replaces the
        check_not_input(cfg.run_dir, [args.config], "run folder")  # --config file's folder
    summary = train(cfg)
    if summary and args.json:  # empty on the other ranks under torchrun: rank 0 reports
        print(json_text(train_report(summary, cfg.fold), sort_keys=False))
    elif summary:
        print(train_summary(summary, cfg.fold, config=cfg))
    return 0


def train_summary(summary: dict[str, Any], fold: int, n_boot: int = 1000,
                  config: RunConfig | None = None) -> str:
    """What `melalib train` prints: each trained fold's primary metric with its 95 % CI
    (bootstrap over patients) and size, the pooled out-of-fold score once every fold is
    done, and where every metric is (`RunDir.metrics_path`)."""
    report = train_report(summary, fold)
    metric, run_dir = report["primary_metric"] or "", str(report["run_dir"])
    try:
        run = RunDir.read(run_dir, config=config)  # ``config``: parsed already
    except MelalibError:  # no run folder to resample (nothing to add CIs from)
        run = None
    lines = [f"{run_dir}: {len(report['folds_done'] or [])} of {report['n_folds']} folds done"]
    for k, values in report["fold_metrics"].items():
        ci = _fold_ci(run, metric, int(k), n_boot)
        size = f"{values['n']:.0f} images" if "n" in values else ""
        size += f", {values['n_pos']:.0f} positive" if "n_pos" in values else ""
        lines.append(f"fold {k}: {metric} {_fmt(values.get(metric))}{_ci(ci)} ({size})")
    if "oof_primary" in report:
        ci = frame_ci(run.task, run.oof(), metric, n_boot) if run is not None else None
        lines.append(f"pooled out-of-fold: {metric} {_fmt(report['oof_primary'])}{_ci(ci)}")
    where = (run or RunDir(Path(run_dir), None)).metrics_path()
    lines.append(f"[low, high]: 95 % CI, bootstrap over patients; every metric: {where} "
                 "(--json prints this summary as JSON)")
    return "\n".join(lines)


def _fold_ci(run: RunDir | None, metric: str, fold: int, n_boot: int) -> dict[str, float] | None:
    if run is None or fold not in run.done_folds():
        return None
    oof = run.oof_by_fold()
    return frame_ci(run.task, oof[oof["fold"] == fold], metric, n_boot)


def train_report(summary: dict[str, Any], fold: int) -> dict[str, Any]:
    """What `melalib train` prints: the trained fold's metrics (``fold`` >= 0) or every
    finished fold's, and the pooled OOF score once all folds are done."""
    per_fold = summary.get("per_fold") or {}
    shown = {k: v for k, v in per_fold.items() if fold < 0 or k == str(fold)}
    report = {"run_dir": summary.get("run_dir"), "folds_done": summary.get("folds_done"),
              "n_folds": summary.get("n_folds"),
              "primary_metric": (summary.get("task") or {}).get("primary_metric"),
              "fold_metrics": shown}
    if summary.get("oof_primary") is not None:
        report["oof_primary"] = summary["oof_primary"]
    return report


def cmd_prepare(args: argparse.Namespace) -> int:
    report = prepare_images(args.src, args.dst, size=args.size, workers=args.workers,
                            aspect=args.aspect, color_constancy=args.color_constancy)
    print(report.summary())
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    width = max(map(len, PRESETS))
    for name in PRESETS:
        print(f"{name:<{width}}  {describe(name)}")
    print("\nUse: melalib train --preset NAME (overrides: --set key=value); the values: "
          "melalib.presets.PRESETS")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_cli  # timm (see the note above)

    return predict_cli(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_cli  # timm (see the note above)

    return evaluate_cli(args)


def cmd_ensemble(args: argparse.Namespace) -> int:
    return ensemble_cli(args)


def cmd_stack(args: argparse.Namespace) -> int:
    return stack_cli(args, load_config(args))


def cmd_reproduce(args: argparse.Namespace) -> int:
    result = reproduce(args.run_dir, atol=args.atol, output_dir=args.output_dir)
    print(json_text(result, sort_keys=False))
    return 0 if result["match"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo  # the Jupyter stack (see the note above)

    summary = run_demo(output_dir=args.output_dir, quick=args.quick, overwrite=args.overwrite)
    metrics, metric = summary["metrics"], summary["metrics"].get("primary_metric") or ""
    print(f"demo finished ({sum(summary['seconds'].values()):.0f} s of notebooks): executed in "
          f"{summary['output_dir']}, figures in {summary['run_dir'] / 'figures'}")
    print(f"OOF {metric}: image+metadata model {_fmt(metrics.get('oof_primary'))}"
          f"{_ci(metrics.get('oof_ci'))}; metadata-only baseline "
          f"{_fmt((metrics.get('baseline_oof') or {}).get(metric))}"
          f"{_ci(metrics.get('baseline_ci'))}")
    print("  OOF (out-of-fold): each image scored by the fold model that never trained on it;"
          "\n  [low, high]: 95 % confidence interval, bootstrap resampling patients")
    if summary.get("submission") and Path(summary["submission"]).is_file():
        print(f"submission (notebook 04's blend): {summary['submission']}")
    if args.quick:
        tiny = PRESETS["tiny"]
        print(f"--quick: smoke values (preset tiny: {tiny['synthetic_patients']} patients, "
              f"{tiny['epochs']} epoch of {tiny['max_steps_per_epoch']} steps), not a result; "
              "`melalib demo` gives the real numbers")
    return 0


def _ci(ci: dict[str, float] | None) -> str:
    """`` [low, high]`` (95 % CI) or ``""``."""
    return f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def cmd_explain(args: argparse.Namespace) -> int:
    from .evaluate import explain_cli  # timm and pytorch-grad-cam (see the note above)

    return explain_cli(args)


def cmd_kaggle_bundle(args: argparse.Namespace) -> int:
    from ..kaggle import build_bundle  # nbformat / papermill (see the note above)

    out = args.out or default_bundle_dir(args.kernel_id)
    path = build_bundle(out, kernel_id=args.kernel_id, title=args.title,
                        notebook=args.notebook, competition=args.competition,
                        weights_dataset=args.weights_dataset, wheel_dataset=args.wheel_dataset,
                        weights_model=args.weights_model, weights_file=args.weights_file,
                        enable_gpu=not args.no_gpu, parameters=dict(
                            s.split("=", 1) for s in (args.parameter or [])))
    print(path)
    return 0


def default_bundle_dir(kernel_id: str) -> str:
    """``outputs/kaggle/<kernel-slug>``: where `melalib kaggle-bundle` writes by default."""
    return f"outputs/kaggle/{kernel_id.rsplit('/', 1)[-1]}"


def cmd_weights(args: argparse.Namespace) -> int:
    from ..weights import offline_table, write_timm_file  # timm (see the note above)

    if args.write:
        if not args.out:
            raise ConfigError("melalib weights --write BACKBONE needs --out FILE")
        path = write_timm_file(args.write, args.out)
        print(f"wrote {args.write} ImageNet weights (timm key names) to {path}; use it as "
              f"pretrained_path={path}")
        return 0
    for row in offline_table():
        print(f"{row['backbone']:<24} {row['status']:<14} {row['package']} {row['version']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melalib",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for add in (_add_training_commands, _add_prediction_commands, _add_evaluate_command,
                _add_run_commands, _add_kaggle_command, _add_explain_command):
        add(sub)
    return parser


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    """train, prepare, presets."""
    p = sub.add_parser("train", help="train one fold or all folds (resumes an existing run)")
    _add_config_args(p)
    p.add_argument("--fold", type=int, help="fold to train (-1 = all; default from config)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON (default: lines with 95 %% CIs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prepare", help="resize a folder of JPEGs into a cache (resumable)")
    p.add_argument("src", help="folder of the original images (searched recursively)")
    p.add_argument("dst", help="cache folder to write (then train with image_dir=DST)")
    p.add_argument("--size", type=int, default=512, help="shorter side in pixels")
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: CPU count, at most 8)")
    p.add_argument("--aspect", default="keep", choices=PREPARE_ASPECTS,
                   help="keep: shorter side = --size (default); squash / crop / pad: square "
                   "outputs framed as training's aspect option")
    p.add_argument("--color-constancy", dest="color_constancy", action="store_true",
                   help="Shades of Gray colour correction of every output (as training's "
                   "color_constancy=true)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("presets", help="list the named recipes for --preset")
    p.set_defaults(func=cmd_presets)


def _add_prediction_commands(sub: argparse._SubParsersAction) -> None:
    """predict, ensemble, stack."""
    p = sub.add_parser("predict", help="predict with a run or checkpoint (TTA)")
    p.add_argument("source", help="run folder or checkpoint file")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--csv", help="metadata CSV of the images to predict (default: the run's "
                   "test split)")
    p.add_argument("--image-dir", dest="image_dir", help="folder of the images in --csv")
    p.add_argument("--image-column", dest="image_column", default="image",
                   help="column of --csv holding the image file names (default: image)")
    p.add_argument("--tta", type=int, default=None, help="1, 2, 4 or 8 views")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=64,
                   help="images per forward pass (default: 64)")
    p.add_argument("--format", default="auto", choices=("auto", "frame", "submission"),
                   help="frame: image_id + prob columns; submission: the competition format; "
                   "auto (default): submission for a MILK10k-style --csv, else frame")
    p.add_argument("--tune-thresholds", dest="tune_thresholds", action="store_true",
                   help="multilabel (MILK10k): bake per-class thresholds tuned on the run's "
                   "OOF into the probabilities, so the official 0.5 rule applies them")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ensemble", help="combine runs' OOF/test predictions; submission")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--method", default="mean", choices=BLENDS,
                   help="mean, rank or geometric average, weights searched on OOF, or best "
                   "(the run or blend with the best OOF score)")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("stack", help="boosted trees on runs' OOF scores + metadata + patient "
                       "context; writes a run-like folder")
    p.add_argument("runs", nargs="*", help="binary run folders (none: metadata alone, from "
                   "the data config)")
    _add_config_args(p)
    p.add_argument("--model", default="hgb", help="hgb (HistGradientBoosting) or logistic")
    p.add_argument("--seeds", type=int, default=3, help="seeds averaged per fold")
    p.add_argument("--n-boot", dest="n_boot", type=int, default=1000, help="bootstrap draws")
    p.add_argument("--no-meta", dest="no_meta", action="store_true", help="no metadata")
    p.add_argument("--no-context", dest="no_context", action="store_true",
                   help="no patient-context features")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_stack)


def _add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    """evaluate (external validation; `melalib.external`)."""
    p = sub.add_parser("evaluate", help="score a trained run on another labelled table "
                       "(external validation); writes a run-like folder")
    p.add_argument("run", help="trained run folder (its fold ensemble is scored)")
    p.add_argument("--dataset", help="adapter of the external table (ham10000, milk10k, ...)")
    p.add_argument("--data-dir", dest="data_dir", help="folder of the --dataset files")
    p.add_argument("--csv", help="or: a CSV of images and class names (custom adapter)")
    p.add_argument("--image-dir", dest="image_dir", help="folder of the images")
    p.add_argument("--label-column", dest="label_column", default="label",
                   help="--csv: column of class names (default: label)")
    p.add_argument("--image-column", dest="image_column", default="image",
                   help="--csv: column of image file names (default: image)")
    p.add_argument("--out", help="folder to write (default: <run>_on_<dataset or csv name>)")
    p.add_argument("--tta", type=int, default=None, help="1, 2, 4 or 8 views")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=64,
                   help="images per forward pass (default: 64)")
    p.add_argument("--n-boot", dest="n_boot", type=int, default=1000, help="bootstrap draws")
    p.add_argument("--skip-missing-images", dest="skip_missing_images", action="store_true",
                   help="score the rows whose images exist (the others are counted)")
    p.add_argument("--oof", action="store_true", help="score the run's own rows out of fold "
                   "(each by the model of the fold that held it out) instead of a table")
    p.add_argument("--blank-meta", dest="blank_meta", action="store_true",
                   help="blank age, sex and site of the scored rows (a clinic without metadata)")
    p.add_argument("--adapt-bn", dest="adapt_bn", action="store_true",
                   help="re-estimate the models' image batch-norm statistics on the scored "
                   "images first (AdaBN test-time adaptation; no label is used)")
    p.add_argument("--by-diagnosis", dest="by_diagnosis", action="store_true",
                   help="score a binary melanoma table by its diagnosis words (ISIC 2020): "
                   "every class both define, not melanoma vs rest alone")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation")
    p.set_defaults(func=cmd_evaluate)


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """reproduce, demo, weights."""
    p = sub.add_parser("reproduce", help="re-run a finished run and compare its OOF")
    p.add_argument("run_dir", help="finished run folder (outputs/<name>)")
    p.add_argument("--atol", type=float, default=1e-5,
                   help="largest allowed OOF probability difference (default: 1e-5)")
    p.add_argument("--output-dir", dest="output_dir", default=None,
                   help="folder in which the re-run gets a fresh <name>-reproduce-XXXX "
                   "folder (default: a temporary folder)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("demo", help="run the notebook series headless on synthetic data")
    p.add_argument("--output-dir", dest="output_dir", default=None,
                   help="folder for the executed notebooks and runs (default: outputs/demo, "
                   "with --quick outputs/demo-quick)")
    p.add_argument("--quick", action="store_true",
                   help="the tiny configuration (seconds; smoke values, not a result)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a demo folder made with other parameters")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("weights", help="list backbones with offline ImageNet weights; write one "
                       "as a timm-format file")
    p.add_argument("--write", metavar="BACKBONE", help="backbone whose weights to write")
    p.add_argument("--out", help="file to write (with --write), e.g. for a Kaggle dataset")
    p.set_defaults(func=cmd_weights)


def _add_kaggle_command(sub: argparse._SubParsersAction) -> None:
    """kaggle-bundle."""
    p = sub.add_parser("kaggle-bundle", help="folder ready for `kaggle kernels push`")
    p.add_argument("out", nargs="?", default=None,
                   help="bundle folder to write (default: outputs/kaggle/<kernel-slug>, "
                   "beside the runs and ignored by git)")
    p.add_argument("--kernel-id", dest="kernel_id", required=True, help="user/kernel-slug")
    p.add_argument("--title", default=None,
                   help="kernel title (default: derived from the kernel slug, so Kaggle keeps "
                   "the id)")
    p.add_argument("--notebook", default="03_train.ipynb",
                   help="numbered notebook to run (default: 03_train.ipynb)")
    p.add_argument("--competition", default="siim-isic-melanoma-classification",
                   help="competition whose data is attached (default: SIIM-ISIC 2020)")
    p.add_argument("--weights-dataset", dest="weights_dataset", default=None,
                   help="user/dataset-slug/file of pretrained weights (baked as "
                   "pretrained_path)")
    p.add_argument("--weights-model", dest="weights_model", default=None,
                   help="user/model/framework/variation/version/file of weights published as a "
                   "Kaggle Model (attached through model_sources)")
    p.add_argument("--weights-file", dest="weights_file", default=None,
                   help="local copy of the weights: loaded into the backbone now to check them")
    p.add_argument("--wheel-dataset", dest="wheel_dataset", required=True,
                   help="user/dataset-slug holding the melalib wheel")
    p.add_argument("--no-gpu", dest="no_gpu", action="store_true",
                   help="run the kernel on CPU (default: a GPU kernel)")
    p.add_argument("-p", "--parameter", action="append", metavar="KEY=VALUE",
                   help="papermill parameter baked into the kernel notebook")
    p.set_defaults(func=cmd_kaggle_bundle)


def _add_explain_command(sub: argparse._SubParsersAction) -> None:
    """explain (issue 25): maps of a run's images measured against lesion masks."""
    p = sub.add_parser("explain", help="Grad-CAM maps of a run's images, measured against "
                       "lesion masks and baselines, into a folder this command owns")
    p.add_argument("run", help="run folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", nargs="+", help="image ids to explain")
    which.add_argument("--kind", help="the run's most confident rows of a kind: fn, fp, tp, "
                       "tn or wrong")
    p.add_argument("--top", type=int, default=8, help="rows of --kind (default: 8)")
    p.add_argument("--fold", type=int, default=None, help="only this fold's rows")
    p.add_argument("--out", required=True, help="output folder (created and marked as its own)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier explain folder")
    p.add_argument("--method", default="gradcam", help="gradcam (default), gradcam++, "
                   "hirescam, layercam, xgradcam, eigencam")
    p.add_argument("--layer", default=None, help="auto (default: deepest stage with >= 7 cells "
                   "a side), last, finer, pooled (the map the head pools, the one "
                   "cam_guidance trains), a stage number or a backbone module name")
    p.add_argument("--target", default="run", help="run (the run's own TTA call, default), "
                   "true, or a class name")
    p.add_argument("--tta", type=int, default=1, help="maps averaged over 1, 2, 4 or 8 views")
    p.add_argument("--masks", default=None, help="folder of true lesion masks (default: the "
                   "synthetic data's own masks/ folder)")
    p.add_argument("--mask-pattern", dest="mask_pattern", default="{image_id}_segmentation.png",
                   help="mask file name with {image_id} / {stem} (default: HAM10000's)")
    p.add_argument("--missing-masks", dest="missing_masks", default="error", choices=MISSING,
                   help="an image without a mask: error (default), skip it, or estimate one "
                   "(Otsu, labelled as an estimate)")
    p.add_argument("--no-masks", dest="no_masks", action="store_true",
                   help="border measures only (no masks needed)")
    p.add_argument("--floor", action="store_true", help="also the random-weights floor")
    p.add_argument("--faithfulness", action="store_true",
                   help="also border occlusion and deletion / insertion")
    p.add_argument("--border", type=float, default=BORDER,
                   help=f"border band as a share of the side (default: {BORDER})")
    p.add_argument("--n-boot", dest="n_boot", type=int, default=1000, help="bootstrap draws")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda...")
    p.set_defaults(func=cmd_explain)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MelalibError as exc:
        print(f"melalib {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"melalib {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

