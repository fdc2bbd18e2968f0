"""Small helpers the numbered notebooks call, so that their cells hold no logic.

* `config_from_namespace(globals())`: the run config from a notebook's papermill parameters
  (every variable named like a config field; ``preset`` and ``None`` understood), with
  relative paths resolved against the project root, so the same notebook runs from the
  repository root, from ``notebooks/`` or from anywhere inside the checkout;
* `figures_dir`, `read_runs`: where a notebook writes and which runs it reads
  (`melalib.runs.RunDir` views);
* `load_table`, `table_with_folds`: the table of 01 / 02 (the EDA tables themselves are
  `melalib.eda`'s); `show_image_grid`, `show_image_sizes`: the image views, which degrade
  to a note when the images are not on disk (ISIC 2020 tables are usable without their
  33k JPEGs);
* `baseline_config`: the metadata-only baseline run of 02;
* `fold_metrics` (03); `curve_figures`, `score_test`, `write_submission`, `write_metrics`
  (04); `show_cams`, `show_pair_cams` (05); `trained_run`, `external_table`, `shift_figure` (06): the loops
  and branches a notebook cell must not hold.

The domain logic they display lives in the package: blending in `melalib.ensemble`,
cross-fitted calibration in `melalib.calibration`, sklearn baselines in
`melalib.baselines`, prediction frames in `melalib.predictions`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import explain, explain_run, external, plots, shift
from . import stack as stacking
from .config import RunConfig, field_index, get_preset, resolve
from .data.build import configured_folds, drop_missing
from .data.load import load_table as load_dataset
from .eda import image_size_stats, images_available
from .ensemble import submission
from .errors import ConfigError
from .io import atomic_path, plain, write_csv, write_json
from .localize import MaskSource
from .metrics import MetricError, chance_level, evaluate, threshold_for_sensitivity
from .predictions import frame_ci, predicted_labels, probabilities, with_table_columns
from .runs import LAYOUT, RunDir
from .table import LesionTable
from .tasks import melanoma_class

log = logging.getLogger("melalib")

#: Parameters the notebooks may declare besides config fields (name -> meaning).
EXTRA_PARAMETERS: dict[str, str] = {
    "preset": "named recipe (melalib.presets) under the other parameters; '' = none",
    "runs": "04/05: comma-separated run names (or folders) to combine; '' = this run",
    "baseline_epochs": "02: epochs of the metadata-only baseline (melalib.train)",
    "ensemble_method": "04: best (the run or blend with the best OOF score) | mean | rank | "
                       "geometric | search (weights searched on OOF)",
    "n_boot": "04, 06: bootstrap replicates of the confidence intervals",
    "stack_seeds": "04: seeds per fold of the second-stage stacker (0: no stacking)",
    "n_examples": "05: cases shown per error type (false negatives, false positives, ...)",
    "external_dataset": "06: adapter of the external table (synthetic: the run's generator "
                        "with external_seed); '' with external_csv",
    "external_data_dir": "06: folder of the external dataset's files",
    "external_image_dir": "06: folder of the external images (overrides the adapter's)",
    "external_csv": "06: a CSV of images and class names to score instead of a dataset",
    "external_seed": "06: synthetic external table: the generator's seed (unseen patients)",
    "camera_rows": "06: rows copied through a simulated other camera for the shift figure",
    "adapt_bn": "06: re-estimate the models' batch-norm statistics on the external images "
                "first (`melalib.adapt`, `melalib evaluate --adapt-bn`)",
    "n_show": "01: images shown per class in the sample grid",
    "pair_kind": "05: dual-image runs: whose image pairs are explained (fn | fp | tp | tn | "
                 "wrong)",
    "n_pairs": "05: dual-image runs: image pairs shown (both images of each, with maps)",
    "masks": "05: folder of true lesion masks the maps are measured against ('' = none)",
    "mask_pattern": "05: mask file name in masks ({image_id} and {stem} filled in)",
    "mask_kind": "05: cases measured against the masks (fn | fp | tp | tn | wrong)",
    "cam_layer": "05: the Grad-CAM layer (auto | finer | last | pooled: the map "
                 "cam_guidance trains | a stage number | a module name)",
}

#: Config fields holding paths; relative ones are resolved against the project root.
PATH_FIELDS = ("output_dir", "data_dir", "image_dir", "custom_csv", "pretrained_path",
               "guide_masks")

NOTEBOOKS = ("01_eda.ipynb", "02_features.ipynb", "03_train.ipynb", "04_ensemble.ipynb",
             "05_gradcam.ipynb", "06_external.ipynb")


# ----------------------------------------------------------------------------- paths
def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``pyproject.toml``;
    ``start`` itself when there is none (e.g. a Kaggle kernel's /kaggle/working)."""
    here = Path(start or Path.cwd()).expanduser().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


def resolve_path(value: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
                 ) -> str:
    """``value`` as an absolute path: relative ones sit under ``root`` (default: the
    project root); ``""`` stays ``""`` (meaning "not set")."""
    text = str(value)
    if not text:
        return ""
    path = Path(text).expanduser()
    if path.is_absolute():
        return str(path)
    base = Path(root) if root is not None else project_root()
    return str((base / path).resolve())


def notebooks_dir() -> Path:
    """The numbered notebooks: ``notebooks/`` of the checkout this melalib comes from, else
    the copy shipped inside an installed package (``melalib/notebooks/``)."""
    package = Path(__file__).resolve().parent
    for folder in (package.parent / "notebooks", package / "notebooks"):
        if (folder / NOTEBOOKS[0]).is_file():
            return folder
    raise ConfigError(f"the melalib notebooks are not found (looked in {package.parent}/"
                      f"notebooks and {package}/notebooks); run from a melalib checkout")


# ---------------------------------------------------------------------------- config
def parameter_names() -> set[str]:
    """Every name a notebook's ``parameters`` cell may declare."""
    return set(field_index()) | set(EXTRA_PARAMETERS)


def config_from_namespace(ns: Mapping[str, Any], *, root: str | os.PathLike[str] | None = None,
                          **overrides: Any) -> RunConfig:
    """Build the run config from a notebook namespace (``globals()``) in one call.

    Every variable named like a config field is taken (so a ``parameters`` cell may hold
    any subset of the fields, and papermill may inject others); a ``None`` value means
    "not set", which is how the parameters cells leave every field a preset may set. A
    non-empty ``preset`` is applied first, the variables on top of it, then ``overrides``
    (`melalib.config.resolve`, as the CLI and Kaggle bundles do: explicit beats preset).
    Relative paths (``output_dir``, ``data_dir``, ...) are resolved against the project
    root (see `project_root`), and the synthetic dataset's empty ``data_dir`` becomes
    ``<root>/data``, so the notebook gives the same run from any working directory.
    """
    fields = field_index()
    preset = str(overrides.pop("preset", None) or ns.get("preset") or "")
    explicit = {k: list(v) if isinstance(v, tuple) else v for k, v in ns.items()
                if k in fields and v is not None}
    explicit.update({k: v for k, v in overrides.items() if v is not None})
    base = Path(root) if root is not None else project_root()
    for key in PATH_FIELDS:
        if key in explicit:
            explicit[key] = resolve_path(explicit[key], base)
    defaults = {"output_dir": resolve_path(RunConfig().output_dir, base)}
    dataset = explicit.get("dataset", (get_preset(preset) if preset else {}).get("dataset"))
    if (dataset or "synthetic") == "synthetic" and not explicit.get("data_dir"):
        defaults["data_dir"] = str(base / "data")
        explicit.pop("data_dir", None)  # "" means "not set" here
    return resolve([("notebook default", defaults), ("notebook parameter", explicit)], preset)


def config_table(cfg: RunConfig) -> pd.DataFrame:
    """Every config field with its value and where the value came from (`RunConfig.sources`:
    ``preset NAME``, ``notebook parameter``, ...; ``default`` when nobody set it)."""
    flat = cfg.to_flat()
    return pd.DataFrame({"value": pd.Series(flat, dtype=object),
                         "source": pd.Series({k: cfg.sources.get(k, "default") for k in flat})})


def figures_dir(cfg: RunConfig) -> Path:
    """``<output_dir>/<name>/figures/`` (created)."""
    folder = RunDir(cfg.run_dir, cfg).figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read_runs(cfg: RunConfig, runs: str | Sequence[str] = "") -> list[RunDir]:
    """Run folders to read (`RunDir.read`): ``runs`` is comma-separated run names (under
    ``output_dir``) or folders; empty means this config's run. Each must hold finished
    folds."""
    items = [r.strip() for r in runs.split(",")] if isinstance(runs, str) else list(runs)
    items = [r for r in items if r]
    paths = [cfg.run_dir] if not items else [
        Path(resolve_path(r)) if ("/" in r or os.sep in r) else Path(cfg.output_dir) / r
        for r in items]
    out = []
    for path in paths:
        try:
            run = RunDir.read(path)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; train it first (03_train) or fix the `runs` "
                              "parameter") from exc
        if not (run.complete or run.done_folds()):
            raise ConfigError(f"{path}: no fold has finished (no {LAYOUT['fold_oof'].glob}); "
                              "train it first (03_train)")
        out.append(run)
    return out


# ------------------------------------------------------------------------------ data
def load_table(cfg: RunConfig) -> LesionTable:
    """The dataset the config names (`melalib.data.load.load_table`), without folds;
    under ``missing_images=drop`` without the rows whose image files are absent, as training
    leaves them out (`melalib.data.build.drop_missing`; a note counts them), so the EDA,
    the folds and the baseline of 01 / 02 are those of the rows a run trains on."""
    table = load_dataset(cfg.data)
    if cfg.data.missing_images != "drop":
        return table
    kept = drop_missing(table, cfg, None)
    gone = table.df["split"].value_counts().sub(kept.df["split"].value_counts(), fill_value=0)
    if gone.sum():
        note(f"missing_images=drop: {int(gone.get('train', 0))} of {len(table.train)} training "
             f"rows and {int(gone.get('test', 0))} of {len(table.test)} test rows have absent "
             "image files and are left out, as training leaves them out.")
    return kept


def table_with_folds(cfg: RunConfig) -> LesionTable:
    """The dataset with the grouped folds training uses (same ``n_folds``, ``fold_seed``,
    ``fold_stratify``)."""
    return configured_folds(load_table(cfg), cfg.data)


def note(text: str) -> None:
    """Show ``text`` as a Markdown note in a notebook (logged outside one)."""
    try:  # IPython ships with ipykernel; melalib does not depend on it
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover
        log.warning("%s", text)
        return
    if get_ipython() is None:
        log.warning("%s", text)
    else:
        display(Markdown(f"> **Note.** {text}"))


def _no_images_note(table: LesionTable, what: str) -> str:
    return (f"{what}: the images of this table are not on disk (e.g. "
            f"`{table.df['image_path'].iloc[0]}`); only the metadata is analysed. Download "
            "them, or point `image_dir` at a resized cache, to see this part.")


def show_image_sizes(table: LesionTable, sample: int = 300, seed: int = 0
                     ) -> pd.DataFrame | None:
    """`melalib.eda.image_size_stats` of a sample of the images, or a note (and None) when
    the images are not on disk."""
    stats = image_size_stats(table, sample, seed)
    if stats is None:
        note(_no_images_note(table, "Image size statistics"))
    return stats


def show_image_grid(table: LesionTable, n_per_class: int = 4, save: str | Path | None = None,
                    seed: int = 0) -> Any:
    """`melalib.plots.image_grid` of ``n_per_class`` training images per class, or a note
    when the images are not on disk."""
    if images_available(table.df, seed=seed) == 0.0:
        note(_no_images_note(table, "Sample images"))
        return None
    train = table.train
    train = train[[Path(p).is_file() for p in train["image_path"].astype(str)]]
    picked = (train.sample(frac=1.0, random_state=seed)
              .groupby("label", sort=True, group_keys=False).head(n_per_class)
              .sort_values(["label", "image_id"], kind="stable"))
    titles = [f"{plots.pretty(name)} | {sex}, " + (f"{age:.0f} y" if pd.notna(age) else "age ?")
              + f" | {plots.pretty(site)}"
              for name, sex, age, site in zip(picked["label_name"], picked["sex"],
                                              picked["age"], picked["site"], strict=True)]
    return plots.image_grid(picked["image_path"].tolist(), titles=titles, ncols=n_per_class,
                            save=save, title=f"{n_per_class} training images per class "
                            "(diagnosis | sex, age | site)")


# ------------------------------------------------------------------------- baselines
def baseline_config(cfg: RunConfig, epochs: int | None = None) -> RunConfig:
    """The metadata-only baseline of ``cfg``: preset ``meta_only`` (MetaMLP, no image) on
    the same data, folds and features, as the run ``<name>_meta_only``."""
    if cfg.data.features == "none":
        raise ConfigError("features=none: there is no metadata for a metadata-only baseline")
    overrides = dict(get_preset("meta_only"), name=f"{cfg.name}_meta_only", fold=-1)
    if epochs:
        overrides["epochs"] = int(epochs)
    return cfg.with_overrides(overrides)


# -------------------------------------------------------------------------- training
#: Metrics shown in the fold tables, per task kind.
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("n", "n_pos", "roc_auc", "pr_auc", "pauc_80", "sensitivity", "specificity",
               "sens90_specificity", "ece", "best_epoch"),
    "multiclass": ("n", "balanced_accuracy", "accuracy", "macro_f1", "ovr_auc_macro", "ece",
                   "best_epoch"),
    "multilabel": ("n", "thresholded_macro_f1", "ovr_auc_macro", "balanced_accuracy",
                   "best_epoch"),
}


def fold_metrics(summary: Mapping[str, Any], columns: Sequence[str] | None = None,
                 run: RunDir | None = None, n_boot: int = 1000) -> pd.DataFrame:
    """The per-fold metrics of `melalib.train`'s summary, plus the pooled OOF row once
    every fold is done; ``columns`` picks metrics (default: `HEADLINE_METRICS` of the
    summary's task kind). With the ``run``, each row also gets the 95 % CI of the primary
    metric (`primary_cis`)."""
    out = _fold_rows(summary, columns)
    if run is not None:
        metric = (summary.get("task") or {}).get("primary_metric", "")
        out = out.join(primary_cis(run, metric, n_boot))
    return out


def primary_cis(run: RunDir, metric: str, n_boot: int = 1000) -> pd.DataFrame:
    """``<metric> 95% CI`` per finished fold and pooled (bootstrap resampling patients,
    `melalib.bootstrap.bootstrap_ci`); "n/a" where a fold's resamples leave it undefined."""
    frames = {f"fold {k}": part for k, part in run.oof_by_fold().groupby("fold")}
    if run.complete:
        frames["pooled OOF"] = run.oof()
    cis = {row: frame_ci(run.task, frame, metric, n_boot) for row, frame in frames.items()}
    return pd.DataFrame({f"{metric} 95% CI": {
        row: f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "n/a" for row, ci in cis.items()}})


def learning_curves(run: RunDir, task: Any, save: str | os.PathLike[str] | None = None
                    ) -> Any:
    """03's learning curves (`plots.learning_curves`) with the primary metric's chance
    level (`melalib.metrics.chance_level`) drawn as a dotted line."""
    fig = plots.learning_curves(run.history(), metric=task.primary_metric)
    level = chance_level(task.primary_metric, len(task.classes))
    if level is not None:
        ax = fig.axes[-1]
        ax.axhline(level, color="0.35", ls=":", lw=1.2, label=f"chance ({level:.2f})")
        ax.legend(fontsize=7)
    if save is not None:
        with atomic_path(save) as tmp:
            fig.savefig(tmp, format="png", dpi=plots.DPI)
    return fig


def _fold_rows(summary: Mapping[str, Any], columns: Sequence[str] | None) -> pd.DataFrame:
    rows = {f"fold {k}": v for k, v in summary.get("per_fold", {}).items()}
    if summary.get("oof"):
        rows["pooled OOF"] = summary["oof"]
    if not rows:
        raise ConfigError(f"{summary.get('run_dir')}: no fold has finished yet")
    out = pd.DataFrame(rows).T
    kind = (summary.get("task") or {}).get("kind")
    if columns is None and kind in HEADLINE_METRICS:
        columns = HEADLINE_METRICS[kind]
    if columns is not None:
        out = out[[c for c in columns if c in out.columns]]
    return out


# -------------------------------------------------------------------------- ensemble
def curve_figures(task: Any, y: Any, probs: Any, groups: Any = None, n_boot: int = 200,
                  figures: str | os.PathLike[str] | None = None, prefix: str = "04_",
                  name: str = "scores") -> list[Any]:
    """ROC and precision-recall curves with bootstrap bands (binary; for a multiclass task
    the melanoma class one-vs-rest, else a note), the curve named ``name`` (the run or
    blend, e.g. `melalib.ensemble.Blend.label`). Saved under ``figures`` when given."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y).astype(int)
    title = ""
    if task.kind != "binary":
        mel = melanoma_class(task)
        if mel is None:
            note("ROC / PR curves are drawn for a melanoma-vs-rest score; this task has no "
                 "melanoma class: see the per-class report.")
            return []
        y, p, title = (y == mel).astype(int), p[:, mel], ", melanoma vs rest"
    where = Path(figures) if figures is not None else None
    return [
        plots.roc_curve_plot(y, p, groups=groups, n_boot=n_boot, name=name,
                             title=f"ROC curve of the out-of-fold scores{title}",
                             save=where / f"{prefix}roc.png" if where else None),
        plots.pr_curve_plot(y, p, groups=groups, n_boot=n_boot, name=name,
                            title=f"Precision-recall of the out-of-fold scores{title}",
                            save=where / f"{prefix}pr.png" if where else None)]


def score_test(test_pred: pd.DataFrame | None, table: LesionTable, threshold: float = 0.5
               ) -> dict[str, Any] | None:
    """Metrics of test predictions against hidden test labels, when the table keeps them
    (the synthetic data's ``true_label``), threshold metrics at ``threshold``; None (with
    a note) otherwise, as on Kaggle."""
    df = table.df
    if test_pred is None or "true_label" not in df.columns:
        note("The test split has no labels here (as in a competition): the submission is "
             "scored by the leaderboard, not in this notebook.")
        return None
    merged = with_table_columns(test_pred, df[df["split"] == "test"])
    y = merged["true_label"].to_numpy().astype(int)
    try:
        return evaluate(table.task, y, probabilities(table.task, merged), threshold=threshold)
    except MetricError as exc:  # e.g. a tiny test split holding one class only
        note(f"The test split cannot be scored: {exc}.")
        return None


def write_submission(test_pred: pd.DataFrame | None, task: Any,
                     path: str | os.PathLike[str]) -> pd.DataFrame | None:
    """`melalib.ensemble.submission` in the task's format (`submission_format`), written
    to ``path`` (a note and None when the dataset has no test split)."""
    if test_pred is None:
        note("This dataset has no test split, so there is nothing to submit.")
        return None
    sub = submission(test_pred, task)
    write_csv(path, sub)
    return sub


def stack_runs(runs: Sequence[RunDir | str | os.PathLike[str]], table: LesionTable,
               out_dir: str | os.PathLike[str], n_seeds: int = 3, n_boot: int = 200
               ) -> tuple[pd.DataFrame | None, Any]:
    """Notebook 04's stacking section (`melalib.stack`): the runs' OOF scores + metadata +
    patient context through boosted trees, written as a run-like folder ``out_dir``. ``table``
    is the first run's table (`RunDir.table`), which notebook 04 has read already: it is
    passed on, not read again. Returns (the runs / mean blend / stack table with CIs, the
    `StackResult`); (None, None) with a note for a non-binary task or ``n_seeds`` = 0."""
    if n_seeds < 1 or table.task.kind != "binary":
        note("Stacking skipped: it needs binary runs and stack_seeds >= 1.")
        return None, None
    result = stacking.stack(stacking.load_inputs(runs, table), out_dir,
                            n_seeds=n_seeds, n_boot=n_boot, overwrite=True)
    return stacking.summary_table(result), result


def write_metrics(path: str | os.PathLike[str], **sections: Any) -> Path:
    """Write ``sections`` as JSON, atomically, through `io.plain` with text keys: DataFrames
    become records, Series and dicts text-keyed dicts; numbers, NaN and paths as
    `io.write_json` writes every JSON file."""
    return write_json(path, plain(sections, text_keys=True))


# ----------------------------------------------------------------------------- Grad-CAM
KIND_NAMES = {"fn": "false negatives", "fp": "false positives", "tp": "true positives",
              "tn": "true negatives", "wrong": "misclassified"}


#: The one operating point notebooks 04 and 05 use for a binary task: the out-of-fold
#: threshold that catches this share of the positives (a triage tool's choice: at 1-2 %
#: prevalence a model rarely scores 0.5, so calls "at 0.5" miss most melanomas).
OPERATING_SENSITIVITY = 0.9


@dataclass(frozen=True)
class OperatingPoint:
    """How notebooks 04 and 05 call a case positive: ``threshold`` on P(positive) (binary;
    multilabel: per class), or the argmax (multiclass); ``rule`` says it in words."""

    threshold: float
    rule: str
    argmax: bool = False

    def labels(self, task: Any, probs: Any) -> np.ndarray:
        """The predicted labels at this operating point (`predictions.predicted_labels`)."""
        return predicted_labels(task, np.asarray(probs), self.threshold)

    @classmethod
    def of(cls, threshold: float | OperatingPoint) -> OperatingPoint:
        """``threshold`` itself when it is an operating point, else P >= that number."""
        if isinstance(threshold, OperatingPoint):
            return threshold
        return cls(float(threshold), f"called positive at P >= {float(threshold):.3g}")


def operating_point(task: Any, oof: pd.DataFrame,
                    sensitivity: float = OPERATING_SENSITIVITY) -> OperatingPoint:
    """Binary: the highest OOF threshold reaching ``sensitivity`` (0.5, with a note, when
    it is undefined); other tasks: the argmax (multilabel: 0.5 per class)."""
    if task.kind == "multiclass":
        return OperatingPoint(0.5, "argmax of the class probabilities", argmax=True)
    if task.kind != "binary":  # multilabel: one diagnosis per lesion, called by the argmax
        return OperatingPoint(0.5, "argmax of the class probabilities (the thresholded "
                              "macro F1 calls each class at P >= 0.5)", argmax=True)
    try:
        t = float(threshold_for_sensitivity(oof["label"].to_numpy().astype(int),
                                            probabilities(task, oof), sensitivity)[0])
    except MetricError as exc:  # e.g. OOF predictions of one class only
        note(f"No {sensitivity:.0%}-sensitivity threshold ({exc}); using 0.5.")
        return OperatingPoint(0.5, "called positive at P >= 0.5 (the default)")
    return OperatingPoint(t, f"called positive at P >= {t:.3g}, the out-of-fold threshold "
                          f"reaching {sensitivity * 100:.0f} % sensitivity")


def operating_threshold(task: Any, oof: pd.DataFrame, sensitivity: float = OPERATING_SENSITIVITY
                        ) -> float:
    """`operating_point`'s threshold (0.5 for tasks called by argmax)."""
    return operating_point(task, oof, sensitivity).threshold


def layer_note(layer: str) -> str:
    """The Grad-CAM layer as a figure heading names it: nothing for the default."""
    return "" if str(layer) in ("", "auto") else f" at layer {layer}"


def cam_captions(errors: pd.DataFrame, task: Any, layer: str = "auto"
                 ) -> tuple[list[str], str]:
    """(one caption per case, the figure's heading) for `show_cams`: the number is always
    the same quantity, P(melanoma) for a binary task (P of the called class otherwise),
    and the heading says which class each map explains (the one the model called)."""
    binary = task.kind == "binary"
    positive = task.classes[-1] if binary else "called class"
    values = errors[task.prob_columns[0]] if binary else errors["confidence"]
    captions = [f"{t} called {p}, P({positive if binary else p}) = {v:.2f}" for t, p, v in
                zip(errors["label_name"], errors["pred_name"], values, strict=True)]
    heading = (f"Grad-CAM of the called class (image branch, metadata held fixed)"
               f"{layer_note(layer)}; numbers: out-of-fold P({positive})")
    return captions, heading


def show_cams(run_dir: str | os.PathLike[str], kind: str = "fn", top: int = 8,
              save: str | os.PathLike[str] | None = None,
              threshold: float | OperatingPoint = 0.5, method: str = "gradcam",
              device: str = "auto", layer: str = "auto") -> tuple[pd.DataFrame, Any]:
    """Grad-CAM overlays of a run's most confident cases of one kind at ``threshold`` (an
    `OperatingPoint`, or a number on P(positive)) (`explain_errors` at ``layer``, see
    `melalib.models.backbone_target_layer`; metadata held fixed),
    as a `melalib.plots.cam_grid` figure whose heading states the threshold, the class
    explained and what the numbers are. A note and no figure when there is no such case."""
    point = OperatingPoint.of(threshold)
    errors, images, cams = explain.explain_errors(run_dir, kind=kind, top=top, method=method,
                                                  threshold=point.threshold, device=device,
                                                  layer=layer)
    if errors.empty:
        note(f"No {KIND_NAMES.get(kind, kind)} among the out-of-fold predictions of "
             f"{Path(run_dir).name}: nothing to explain.")
        return errors, None
    task = RunDir.read(run_dir).task
    captions, heading = cam_captions(errors, task, layer)
    title = f"{case_heading(task, kind, point)}\n{heading}"
    fig = plots.cam_grid(images, cams, titles=captions, ncols=min(2, len(images)), save=save,
                         title=title)
    shown = ["image_id", "fold", "label_name", "pred_name", "confidence", "group_id", "age",
             "sex", "site"]
    return errors[[c for c in shown if c in errors.columns]], fig


def pair_captions(rows: pd.DataFrame, views: Sequence[str]) -> list[str]:
    """One caption per image of each pair, in `show_pair_cams`' order (each row's views in
    branch order): the view, the lesion, its true class and the class the map explains
    with the run's out-of-fold probability of it (`melalib.explain.explain_pairs`' rows)."""
    return [f"{view} · {r.image_id}: true {r.label_name}\nmap of {r.explained_name}, "
            f"P({r.explained_name}) = {r.explained_prob:.2f}"
            for r in rows.itertuples(index=False) for view in views]


def case_heading(task: Any, kind: str, point: OperatingPoint) -> str:
    """What a set of cases is, and by which rule the run called them: ``fn`` / ``fp`` /
    ``tp`` / ``tn`` of the melanoma class (the positive class of a binary task)."""
    name = KIND_NAMES.get(kind, kind).capitalize()
    if task.kind != "binary" and kind != "wrong":
        mel = melanoma_class(task)
        name = f"{name} of {'the positive class' if mel is None else task.classes[mel]}"
    return f"{name} ({point.rule})"


def show_pair_cams(run_dir: str | os.PathLike[str], kind: str = "tp", top: int = 2,
                   save: str | os.PathLike[str] | None = None,
                   threshold: float | OperatingPoint = 0.5, method: str = "gradcam",
                   device: str = "auto", layer: str = "auto") -> tuple[pd.DataFrame, Any]:
    """Grad-CAM (at ``layer``) of both images of a dual-image run's ``top`` most confident cases of one
    kind (`melalib.explain.explain_pairs`: each image's map with the other image and the
    metadata held fixed, for the class the run called), one lesion per row of a
    `melalib.plots.cam_grid` figure: first image | map | second image | map, each captioned
    with its view, the true class and the explained class with its probability. A note and
    no figure for a single-image run or when there is no such case."""
    point = OperatingPoint.of(threshold)
    run = RunDir.read(run_dir)
    if len(explain.branch_views(run.load_config())) != 2:
        note(f"{run.path.name} is a single-image run: there is no image pair to explain.")
        return pd.DataFrame(), None
    rows = explain.select_rows(run, kind=kind, top=top, threshold=point.threshold)
    if rows.empty:
        note(f"No {KIND_NAMES.get(kind, kind)} among the out-of-fold predictions of "
             f"{run.path.name}: no pair to explain.")
        return rows, None
    pairs = explain.explain_pairs(run, rows, method=method, layer=layer, device=device)
    images = [im for both in zip(*pairs.images, strict=True) for im in both]
    cams = [cam for both in zip(*pairs.cams, strict=True) for cam in both]
    title = (f"{case_heading(run.task, kind, point)}: both images of each lesion\nGrad-CAM of "
             f"the class named under each image{layer_note(layer)} (the other image and the "
             "metadata held fixed); P: out-of-fold probability")
    fig = plots.cam_grid(images, cams, titles=pair_captions(pairs.rows, pairs.views), ncols=2,
                         save=save, title=title)
    shown = ["image_id", "fold", "label_name", "pred_name", "explained_name",
             "explained_prob", "age", "sex", "site"]
    return pairs.rows[[c for c in shown if c in pairs.rows.columns]], fig


def mask_captions(table: pd.DataFrame) -> list[str]:
    """One caption per measured case: id, true class, the class explained with its
    out-of-fold probability, and how the map met the lesion (concentration: CAM mass on the
    lesion / lesion area, 1.0 = a uniform map; peak on or off the lesion)."""
    out = []
    for r in table.itertuples(index=False):
        where = ("no mask" if r.mask == "missing" else
                 "the framing cut the lesion off" if not np.isfinite(r.concentration) else
                 f"concentration {r.concentration:.2f}, peak "
                 f"{'on' if r.pointing else 'off'} the lesion")
        out.append(f"{r.image_id}: true {r.label_name}\nmap of {r.explained_name}, "
                   f"P = {r.explained_prob:.2f}; {where}")
    return out


def show_masked_cams(run_dir: str | os.PathLike[str], masks: str | os.PathLike[str],
                     pattern: str = "{image_id}_segmentation.png", kind: str = "wrong",
                     top: int = 8, threshold: float | OperatingPoint = 0.5,
                     method: str = "gradcam", n_boot: int = 1000, device: str = "auto",
                     save: str | os.PathLike[str] | None = None, layer: str = "auto"
                     ) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """Grad-CAM (at ``layer``) of a run's ``top`` most confident cases of ``kind`` measured against true
    lesion masks (``masks`` folder, file ``pattern``; `melalib.explain_run.measure`, masks
    framed as the model saw the image; cases without a mask are shown and left out of the
    measures): the pooled measures with CIs beside the centre prior, the per-case table,
    and a `melalib.plots.cam_grid` figure with the lesion outlined on image and map.
    ``masks`` "": a synthetic run's own true masks; any other run gets a note and nothing
    is measured (melalib never guesses masks here)."""
    run = RunDir.read(run_dir)
    folder = resolve_path(masks) if str(masks) else ""
    synthetic = run.cfg is not None and run.cfg.data.dataset == "synthetic"
    if (folder and not Path(folder).is_dir()) or (not folder and not synthetic):
        note(f"No lesion-mask folder {'at ' + folder if folder else 'given'} (parameter "
             "`masks`): the maps are not measured against lesions. HAM10000's masks: "
             "-p masks ../shared/data/ham10000/masks_200x150")
        return pd.DataFrame(), pd.DataFrame(), None
    source = MaskSource(folder, pattern) if folder else None
    point = OperatingPoint.of(threshold)
    rows = explain.select_rows(run, kind=kind, top=top, threshold=point.threshold)
    if rows.empty:
        note(f"No {KIND_NAMES.get(kind, kind)} among the out-of-fold predictions of "
             f"{run.path.name}: nothing to measure.")
        return pd.DataFrame(), rows, None
    result = explain_run.measure(run, rows, method=method, layer=layer, masks=source,
                                 missing="skip", n_boot=n_boot, device=device)
    expl = result.explanation
    title = (f"{case_heading(run.task, kind, point)}\nGrad-CAM of the class named under each "
             f"image{layer_note(layer)}; outline: the true lesion mask, framed as the model "
             "saw the image")
    fig = plots.cam_grid(expl.images, list(expl.cams), titles=mask_captions(result.table),
                         ncols=min(2, len(rows)), save=save, title=title, masks=result.masks)
    shown = ["image_id", "label_name", "explained_name", "explained_prob", "mask",
             "lesion_area", "mass_on_lesion", "concentration", "pointing", "border_peak",
             "prior_concentration"]
    return result.pooled, result.table[[c for c in shown if c in result.table.columns]], fig


# -------------------------------------------------------------------------- external
def trained_run(cfg: RunConfig) -> RunDir:
    """The run ``cfg`` names: read when its folder holds a finished run (whatever config
    trained it), else trained now with ``cfg`` (resumed when partly done) and read."""
    try:
        run = RunDir.read(cfg.run_dir)
        if run.complete:
            return run
    except ConfigError:
        pass
    from .engine import train  # timm: imported only when a run has to be trained

    train(cfg, progress=False)
    return RunDir.read(cfg.run_dir)


def external_table(cfg: RunConfig, dataset: str = "synthetic", data_dir: str = "",
                   image_dir: str = "", csv: str = "", seed: int = 1) -> LesionTable:
    """The labelled table notebook 06 scores: ``synthetic``: ``cfg``'s generator with
    ``seed`` (patients the run never saw); else an adapter's or a CSV's
    (`external.external_table`; relative paths against the project root)."""
    if dataset == "synthetic" and not csv:
        if cfg.data.dataset != "synthetic":
            raise ConfigError(f"external_dataset=synthetic draws the run's own synthetic "
                              f"generator anew, but this run trained on {cfg.data.dataset}: "
                              "name the external table (external_dataset / external_csv)")
        return load_dataset(replace(cfg.data, synthetic_seed=int(seed)))
    root = project_root()
    return external.external_table(dataset, resolve_path(data_dir, root),
                                   resolve_path(csv, root), resolve_path(image_dir, root))


def shift_figure(evaluations: Mapping[str, Any], save: str | os.PathLike[str] | None = None
                 ) -> Any:
    """`plots.shift_plot` of the evaluations' ``image_shift`` columns, or a note when the
    run stores no image-shift statistics (trained before melalib stored them)."""
    scores = {name: ev.frame[shift.SCORE] for name, ev in evaluations.items()
              if shift.SCORE in ev.frame.columns}
    if not scores:
        note("This run stores no image-shift statistics (trained before melalib stored "
             "them): retrain it to get the image_shift score.")
        return None
    return plots.shift_plot(scores, save=save)
