"""Figures the notebooks show: ROC / PR with bootstrap bands, confusion, calibration,
subgroups, data overviews, image and Grad-CAM grids, learning curves.

Every function returns a `matplotlib.figure.Figure`, never calls ``plt.show``, draws into
``ax`` when given (the caller owns that figure) and writes a PNG at 120 dpi atomically when
``save`` is a path. Figures it creates are closed in pyplot before being returned, so they
do not pile up in long notebook runs; show one with ``display(fig)`` or as a cell's last
expression.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .arrays import argmax_labels, binary_inputs, group_weights, tie_groups
from .bootstrap import Resampler
from .calibration import expected_calibration_error, reliability_curve
from .errors import DataError
from .io import atomic_path
from .metrics import confusion
from .tasks import Task

DPI = 120
# Okabe-Ito: distinguishable with the common colour-vision deficiencies
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False,
         "axes.prop_cycle": mpl.cycler(color=COLORS)}
F = TypeVar("F", bound=Callable[..., Figure])


def _styled(fn: F) -> F:
    """Draw under `STYLE`; close figures the call opened if it fails half-way."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        before = set(plt.get_fignums())
        try:
            with mpl.rc_context(STYLE):
                return fn(*args, **kwargs)
        except BaseException:
            for num in set(plt.get_fignums()) - before:
                plt.close(num)
            raise
    return wrapper  # type: ignore[return-value]


def _figure(ax: Axes | None, nrows: int = 1, ncols: int = 1,
            figsize: tuple[float, float] = (6.0, 5.0),
            height_ratios: Sequence[float] | None = None) -> tuple[Figure, np.ndarray, bool]:
    """(figure, axes grid, owned): ``ax``'s figure when given, else a new one."""
    if ax is not None:
        return ax.figure, np.array([[ax]]), False
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained",
                             height_ratios=height_ratios)
    return fig, axes, True


def _finish(fig: Figure, save: str | Path | None, owned: bool) -> Figure:
    if save is not None:
        with atomic_path(save) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    if owned:
        plt.close(fig)
    return fig


#: Display names of metric and column codes (`pretty` falls back to spaces for "_").
LABELS = {
    "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC (average precision)", "pauc_80": "pAUC above 80 % TPR",
    "ovr_auc_macro": "macro one-vs-rest AUC", "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1", "thresholded_macro_f1": "macro F1 (thresholded)",
    "ece": "expected calibration error", "age_band": "age band", "head_neck": "head/neck",
    "palms_soles": "palms/soles", "oral_genital": "oral/genital", "valid_loss": "validation loss",
    "train_loss": "training loss", "lr": "learning rate",
}
#: Metrics whose chance level is 0.5 (a random score ranks a positive first half the time).
CHANCE_HALF = ("roc_auc", "ovr_auc_macro")
CI_LEVEL = "95 % CI"


def pretty(code: Any) -> str:
    """A display label for a metric, column or category code: `LABELS`, else the code with
    underscores as spaces (``valid_roc_auc`` -> ``valid ROC-AUC``)."""
    text = str(code)
    if text in LABELS:
        return LABELS[text]
    for prefix in ("valid_", "train_", "test_"):
        if text.startswith(prefix) and text[len(prefix):] in LABELS:
            return f"{prefix[:-1].replace('valid', 'validation')} {LABELS[text[len(prefix):]]}"
    return text.replace("_", " ")


def _as_curves(p: Any, curves: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    if curves:
        return dict(curves)
    if p is None:
        raise DataError("pass the scores p or curves={name: probs}")
    return {name: p}


def _band_note(groups: Any, n_boot: int) -> str:
    """What the bands and bracketed intervals are, for a figure's subtitle."""
    if n_boot <= 0:
        return "no confidence band (n_boot=0)"
    unit = "patients/groups" if groups is not None else "images"
    return f"band and brackets: {CI_LEVEL} ({n_boot} bootstraps over {unit})"


def _heading(a: Axes, title: str, detail: str, pad: float = 6.0, share: float = 0.95
             ) -> None:
    """An axes title: what the figure shows, then its n / CI / threshold lines, wrapped to
    ``share`` of the figure's width."""
    width = a.figure.get_size_inches()[0] * share
    a.set_title(_fit_title(f"{title}\n{detail}", width, 10, bars=False), fontsize=10, pad=pad)


def _replicate_curves(y: np.ndarray, p: np.ndarray, groups: Any, n_boot: int, seed: int
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cumulative (true positives, false positives) per tie group for each replicate."""
    order, starts, _ = tie_groups(p)
    out = []
    if n_boot <= 0:
        return out
    for counts in Resampler(y, groups, binary=True).chunks(n_boot, seed):
        P, N = group_weights(y, order, starts, counts)
        out.extend(zip(np.cumsum(P, axis=1), np.cumsum(N, axis=1), strict=True))
    return out


def _roc_xy(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def _auc_xy(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _ci_text(values: Sequence[float], alpha: float = 0.05) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)])
    if not len(v):
        return ""
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return f" ({lo:.3f}-{hi:.3f})"


@_styled
def roc_curve_plot(y: Any, p: Any = None, groups: Any = None, n_boot: int = 200,
                   curves: Mapping[str, Any] | None = None, ax: Axes | None = None,
                   save: str | Path | None = None, seed: int = 0, title: str | None = None,
                   name: str = "scores") -> Figure:
    """ROC curve(s) with a 95 % group-aware bootstrap band of TPR and AUC (CI) in the
    legend; ``curves`` maps names to scores for several models on the same labels, else
    ``p`` is drawn under ``name`` (say which model or blend it is). The title's second
    line gives n, the positives and what the band is."""
    fig, axes, owned = _figure(ax, figsize=(5.5, 5.6))
    a = axes[0, 0]
    grid = np.linspace(0.0, 1.0, 101)
    for i, (label, probs) in enumerate(_as_curves(p, curves, name).items()):
        yb, pb = binary_inputs(y, probs, f"roc_curve_plot[{label}]")
        order, starts, _ = tie_groups(pb)
        P, N = group_weights(yb, order, starts)
        fpr, tpr = _roc_xy(np.cumsum(P[0]), np.cumsum(N[0]))
        color = COLORS[i % len(COLORS)]
        reps = [_roc_xy(tp, fp) for tp, fp in _replicate_curves(yb, pb, groups, n_boot, seed)]
        if reps:
            band = np.array([t[np.searchsorted(f, grid, side="right") - 1] for f, t in reps])
            lo, hi = np.quantile(band, [0.025, 0.975], axis=0)
            a.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0, step="post")
        ci = _ci_text([_auc_xy(f, t) for f, t in reps])
        a.plot(fpr, tpr, color=color, lw=2, label=f"{label}: AUC {_auc_xy(fpr, tpr):.3f}{ci}")
    a.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC 0.5)")
    a.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false-positive rate)",
          ylabel="sensitivity (true-positive rate)", aspect="equal")
    _heading(a, title or "ROC curve", f"n={len(yb)} ({int(yb.sum())} positive)\n"
             + _band_note(groups, n_boot))
    a.legend(loc="lower right")
    return _finish(fig, save, owned)


def _pr_xy(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    recall = np.r_[0.0, tp / tp[-1]]
    precision = np.r_[1.0, tp / np.maximum(tp + fp, 1e-12)]
    return recall, precision


def _ap(recall: np.ndarray, precision: np.ndarray) -> float:
    return float(np.sum(np.diff(recall) * precision[1:]))


def _pr_band(reps: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    band = []
    for r, pr in reps:
        envelope = np.maximum.accumulate(pr[::-1])[::-1]  # interpolated precision
        band.append(envelope[np.minimum(np.searchsorted(r, grid), len(r) - 1)])
    lo, hi = np.quantile(np.array(band), [0.025, 0.975], axis=0)
    return lo, hi


@_styled
def pr_curve_plot(y: Any, p: Any = None, groups: Any = None, n_boot: int = 200,
                  curves: Mapping[str, Any] | None = None, ax: Axes | None = None,
                  save: str | Path | None = None, seed: int = 0, title: str | None = None,
                  name: str = "scores") -> Figure:
    """Precision-recall curve(s) with a bootstrap band of interpolated precision, average
    precision (CI) in the legend and the prevalence as the no-skill baseline. The legend
    sits below the axes, so it never covers a curve."""
    fig, axes, owned = _figure(ax, figsize=(5.5, 6.2))
    a = axes[0, 0]
    grid = np.linspace(0.0, 1.0, 101)
    prevalence = 0.0
    for i, (label, probs) in enumerate(_as_curves(p, curves, name).items()):
        yb, pb = binary_inputs(y, probs, f"pr_curve_plot[{label}]")
        prevalence = float(yb.mean())
        order, starts, _ = tie_groups(pb)
        P, N = group_weights(yb, order, starts)
        recall, precision = _pr_xy(np.cumsum(P[0]), np.cumsum(N[0]))
        color = COLORS[i % len(COLORS)]
        reps = [_pr_xy(tp, fp) for tp, fp in _replicate_curves(yb, pb, groups, n_boot, seed)]
        if reps:
            a.fill_between(grid, *_pr_band(reps, grid), color=color, alpha=0.2, linewidth=0)
        ci = _ci_text([_ap(r, pr) for r, pr in reps])
        a.step(recall, precision, where="post", color=color, lw=2,
               label=f"{label}: AP {_ap(recall, precision):.3f}{ci}")
    a.axhline(prevalence, ls="--", color="grey", lw=1,
              label=f"no skill: prevalence {prevalence:.3f}")
    a.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)",
          ylabel="precision (PPV)")
    _heading(a, title or "Precision-recall curve", f"n={len(yb)} ({int(yb.sum())} "
             f"positive)\n" + _band_note(groups, n_boot))
    a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=1, frameon=False)
    return _finish(fig, save, owned)


def _threshold_note(pred: np.ndarray, threshold: float | str | None) -> str:
    """How the predicted classes were called, for the confusion matrix's title."""
    if isinstance(threshold, str):
        return threshold
    if threshold is not None:
        return f"called positive at score >= {threshold:.3g}"
    return "argmax of the class probabilities" if pred.ndim == 2 else "labels as given"


@_styled
def confusion_matrix_plot(y: Any, pred: Any, class_names: Sequence[str],
                          normalize: bool = True, ax: Axes | None = None,
                          save: str | Path | None = None, title: str | None = None,
                          threshold: float | str | None = None) -> Figure:
    """Confusion matrix (rows: true class; shares of the row when ``normalize``, counts in
    brackets). ``pred`` is labels or (N, K) probabilities; argmax ties get a 'tie' column.
    The title states n and how the labels were called: ``threshold`` (the score cut-off
    that made binary labels, or a sentence), else argmax / labels as given."""
    k = len(class_names)
    pr = np.asarray(pred)
    labels = argmax_labels(pr) if pr.ndim == 2 else pr
    m = confusion(y, labels, k, include_ties=True)
    cols = list(class_names)
    if m[:, k].sum() == 0:
        m = m[:, :k]
    else:
        cols.append("tie")
    with np.errstate(invalid="ignore", divide="ignore"):
        shown = m / m.sum(axis=1, keepdims=True) if normalize else m.astype(float)
    # at least ~6 x 4.6 in: the title and the colour bar's label fit at the size the
    # notebook shows the figure, for two classes too
    fig, axes, owned = _figure(ax, figsize=(max(6.0, 2.8 + 0.8 * len(cols)),
                                            max(4.6, 1.8 + 0.7 * k)))
    a = axes[0, 0]
    im = a.imshow(np.nan_to_num(shown), cmap="Blues", vmin=0,
                  vmax=1 if normalize else max(shown.max(), 1))
    a.grid(False)
    for i in range(k):
        for j in range(len(cols)):
            v = shown[i, j]
            text = f"{v:.2f}\n({m[i, j]})" if normalize else f"{m[i, j]}"
            dark = np.nan_to_num(v) > (0.5 if normalize else shown.max() / 2)
            a.text(j, i, text, ha="center", va="center", fontsize=9,
                   color="white" if dark else "black")
    a.set_xticks(range(len(cols)), [pretty(c) for c in cols], rotation=45, ha="right")
    a.set_yticks(range(k), [f"{pretty(c)} (n={n})" for c, n in zip(class_names, m.sum(axis=1),
                                                                     strict=True)])
    a.set(xlabel="predicted", ylabel="true")
    _heading(a, title or "Confusion matrix", f"n={int(m.sum())}; "
             + _threshold_note(pr, threshold), pad=12, share=0.7)  # clear of the colour bar
    bar = fig.colorbar(im, ax=a, fraction=0.046, pad=0.03)
    bar.set_label("share of true class" if normalize else "count", labelpad=8)
    return _finish(fig, save, owned)


@_styled
def reliability_plot(y: Any, p: Any, n_bins: int = 10, strategy: str = "quantile",
                     ax: Axes | None = None, save: str | Path | None = None,
                     title: str | None = None, name: str = "scores") -> Figure:
    """Observed frequency (95 % Wilson interval as error bars) vs. mean predicted
    probability per bin, the diagonal of perfect calibration, and bars of the bin counts
    on a second axis (multiclass: top-label). ``quantile`` bins (the default) hold equal
    numbers of cases, so a rarely-positive score does not leave most bins empty; points
    at 0 and 1 are drawn whole, not clipped by the axes."""
    curve = reliability_curve(y, p, n_bins, strategy)  # type: ignore[arg-type]
    ece = expected_calibration_error(y, p, n_bins, strategy)  # type: ignore[arg-type]
    fig, axes, owned = _figure(ax, figsize=(5.8, 5.2))
    a = axes[0, 0]
    counts = a.twinx()
    counts.bar((curve["bin_lo"] + curve["bin_hi"]) / 2, curve["count"],
               width=(curve["bin_hi"] - curve["bin_lo"]) * 0.9, color="grey", alpha=0.25)
    counts.set_ylabel("cases per bin")
    counts.grid(False)
    a.set_zorder(counts.get_zorder() + 1)
    a.patch.set_visible(False)
    a.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    used = curve[curve["count"] > 0]
    est = used["frac_pos"].to_numpy(float)
    err = np.vstack([est - used["low"].to_numpy(float), used["high"].to_numpy(float) - est])
    a.errorbar(used["mean_pred"], est, yerr=np.abs(err), marker="o", lw=2, capsize=3,
               color=COLORS[0], clip_on=False, label=f"{name} (ECE {ece:.3f})")
    a.set(xlim=(-0.02, 1.02), ylim=(-0.03, 1.06), xlabel="mean predicted probability",
          ylabel="observed frequency")
    _heading(a, title or "Reliability diagram", f"n={int(curve['count'].sum())}, {len(used)} "
             f"{strategy} bins; error bars: {CI_LEVEL} (Wilson)")
    a.legend(loc="best")
    return _finish(fig, save, owned)


def _subgroup_range(d: pd.DataFrame, reference: float | None, chance: float | None
                    ) -> tuple[float, float]:
    values = d[["low", "high", "estimate"]].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    lo, hi = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    for line in (reference, chance):
        if line is not None:
            lo, hi = min(lo, line), max(hi, line)
    pad = max(0.05 * (hi - lo), 0.01)
    return lo - pad, hi + pad


def _count_note(row: pd.Series) -> str:
    """``n=40, 5 pos`` (binary) / ``n=40`` beside a subgroup's point; ``n/a`` if undefined."""
    note = f"n={int(row['n'])}"
    if "n_pos" in row and pd.notna(row["n_pos"]):
        note += f", {int(row['n_pos'])} pos"
    return note + ("" if np.isfinite(row["estimate"]) else " n/a")


def _subgroup_panel(a: Axes, part: pd.DataFrame, single: bool, lines: dict[str, float | None],
                    xlim: tuple[float, float], metric: str) -> None:
    pos = np.arange(len(part))[::-1]
    names = [f"{pretty(c)}: {pretty(v)}" if single else pretty(v)
             for c, v in zip(part["subgroup_column"], part["value"], strict=True)]
    est = part["estimate"].to_numpy(dtype=float)
    err = np.vstack([est - part["low"].to_numpy(dtype=float),
                     part["high"].to_numpy(dtype=float) - est])
    a.errorbar(est, pos, xerr=np.nan_to_num(np.abs(err)), fmt="o", color=COLORS[0], capsize=3)
    side = a.get_yaxis_transform()  # x in axes fraction, y in data
    for y_pos, (_, row) in zip(pos, part.iterrows(), strict=True):
        a.text(1.01, y_pos, _count_note(row), transform=side, va="center", fontsize=8)
    styles = {"reference": ("--", "grey"), "chance": (":", COLORS[1])}
    for what, value in lines.items():
        if value is not None:
            a.axvline(value, ls=styles[what][0], color=styles[what][1], lw=1)
    a.set_yticks(pos, names)
    a.set(xlim=xlim, ylim=(-0.6, len(part) - 0.4), xlabel=pretty(metric))
    if not single:
        a.set_title(pretty(part["subgroup_column"].iloc[0]), loc="left")


@_styled
def subgroup_plot(subgroup_df: pd.DataFrame, metric: str, ax: Axes | None = None,
                  save: str | Path | None = None, reference: float | None = None,
                  title: str | None = None, chance: float | None = None) -> Figure:
    """Estimate with 95 % CI error bars per subgroup value, one panel per subgroup column
    (one axis when ``ax`` is given), n and positives annotated; undefined subgroups are
    marked 'n/a'. The axis always includes the chance level (dotted; 0.5 for AUC-like
    metrics unless ``chance`` says otherwise) and ``reference`` (dashed, e.g. the overall
    score)."""
    d = subgroup_df[subgroup_df["metric"] == metric]
    if d.empty:
        raise DataError(f"no rows for metric {metric!r}; the table has "
                        f"{sorted(subgroup_df['metric'].unique())}", column="metric")
    if chance is None and metric in CHANCE_HALF:
        chance = 0.5
    columns = list(dict.fromkeys(d["subgroup_column"]))
    panels = [d] if ax is not None else [d[d["subgroup_column"] == c] for c in columns]
    heights = [max(len(x), 1) for x in panels]
    fig, axes, owned = _figure(ax, nrows=len(panels),
                               figsize=(7.0, 1.2 + sum(0.32 * h + 0.65 for h in heights)),
                               height_ratios=[h + 1.4 for h in heights])
    xlim = _subgroup_range(d, reference, chance)
    lines = {"reference": reference, "chance": chance}
    for a, part in zip(axes[:, 0], panels, strict=True):
        _subgroup_panel(a, part, ax is not None, lines, xlim, metric)
    marks = "; ".join(f"{k} {v:.2f}" for k, v in (("dotted: chance", chance),
                                                   ("dashed: reference", reference))
                      if v is not None)
    n = int(d.groupby("subgroup_column")["n"].sum().max())
    heading = (f"{title or pretty(metric) + ' by subgroup'} (n={n})\nerror bars: {CI_LEVEL}, "
               f"bootstrap over patients/groups" + (f"\n{marks}" if marks else ""))
    if ax is None:
        fig.suptitle(heading, fontsize=10)
    else:
        axes[0, 0].set_title(heading, fontsize=10)
    return _finish(fig, save, owned)


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    if "label" not in df.columns:
        raise DataError("the table has no 'label' column", column="label")
    return df[pd.to_numeric(df["label"], errors="coerce") >= 0]


def _label_names(df: pd.DataFrame, task: Task | None) -> tuple[pd.Series, list[str]]:
    if task is not None:
        names = pd.Series(np.asarray(task.classes, dtype=object)[df["label"].astype(int)],
                          index=df.index)
        return names, list(task.classes)
    col = df["label_name"] if "label_name" in df.columns else df["label"].astype(str)
    return col.astype(str), sorted(col.astype(str).unique())


@_styled
def class_balance_plot(df: pd.DataFrame, task: Task, ax: Axes | None = None,
                       save: str | Path | None = None, log: bool | None = None) -> Figure:
    """Images per class among labelled rows, counts and shares annotated (log scale when
    the largest class outnumbers the smallest 50-fold, unless ``log`` says otherwise)."""
    d = _labelled(df)
    names, order = _label_names(d, task)
    counts = names.value_counts().reindex(order, fill_value=0)
    fig, axes, owned = _figure(ax, figsize=(max(4.5, 0.7 * len(order) + 2), 4.0))
    a = axes[0, 0]
    a.bar(range(len(order)), counts.to_numpy(), color=COLORS[0])
    if log is None:
        log = counts.max() > 50 * max(counts[counts > 0].min(), 1)
    if log:
        a.set_yscale("log")
    total = max(int(counts.sum()), 1)
    for i, c in enumerate(counts.to_numpy()):
        a.annotate(f"{c}\n{100 * c / total:.1f}%", (i, max(c, 1)), ha="center", va="bottom",
                   fontsize=8, xytext=(0, 2), textcoords="offset points")
    a.set_xticks(range(len(order)), order, rotation=45 if len(order) > 4 else 0, ha="right"
                 if len(order) > 4 else "center")
    a.set(ylabel="images" + (" (log scale)" if log else ""))
    a.set_title(f"Class balance: {task.name} (n={int(counts.sum())})")
    a.margins(y=0.15)
    return _finish(fig, save, owned)


@_styled
def age_by_label_plot(df: pd.DataFrame, task: Task | None = None, ax: Axes | None = None,
                      save: str | Path | None = None) -> Figure:
    """Box plot of age per class (labelled rows with a known age), n per class in labels."""
    d = _labelled(df)
    names, order = _label_names(d, task)
    age = pd.to_numeric(d["age"], errors="coerce")
    known = age.notna()
    groups = [age[known & (names == c)].to_numpy() for c in order]
    fig, axes, owned = _figure(ax, figsize=(max(4.5, 0.7 * len(order) + 2), 4.0))
    a = axes[0, 0]
    a.boxplot([g if len(g) else [np.nan] for g in groups], showfliers=False, widths=0.6,
              medianprops={"color": COLORS[1], "lw": 2})
    a.set_xticks(range(1, len(order) + 1), [f"{c}\n(n={len(g)})" for c, g in
                                              zip(order, groups, strict=True)],
                 rotation=45 if len(order) > 5 else 0)
    a.set(ylabel="age (years)")
    a.set_title(f"Age by diagnosis (n={int(known.sum())}, age missing in {int((~known).sum())})")
    return _finish(fig, save, owned)


@_styled
def site_by_label_plot(df: pd.DataFrame, task: Task | None = None, ax: Axes | None = None,
                       save: str | Path | None = None) -> Figure:
    """Share of anatomical sites within each class (stacked horizontal bars)."""
    d = _labelled(df)
    if "site" not in d.columns:
        raise DataError("the table has no 'site' column", column="site")
    names, order = _label_names(d, task)
    table = pd.crosstab(names, d["site"].fillna("unknown")).reindex(order, fill_value=0)
    shares = table.div(table.sum(axis=1).replace(0, 1), axis=0)
    fig, axes, owned = _figure(ax, figsize=(7.5, 1.5 + 0.4 * len(order)))
    a = axes[0, 0]
    left = np.zeros(len(order))
    for j, site in enumerate(shares.columns):
        a.barh(range(len(order)), shares[site], left=left, label=pretty(site), edgecolor="white",
               linewidth=0.5, **category_style(j, unknown=site == "unknown"))
        left += shares[site].to_numpy()
    a.set_yticks(range(len(order)), [f"{c} (n={n})" for c, n in
                                     zip(order, table.sum(axis=1), strict=True)])
    a.invert_yaxis()
    a.set(xlim=(0, 1), xlabel="share of images")
    a.set_title(f"Anatomical site by diagnosis (n={int(table.to_numpy().sum())})")
    a.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return _finish(fig, save, owned)


#: Hatches that tell apart categories beyond the eight Okabe-Ito colours.
HATCHES = ("", "//", "..", "xx")
UNKNOWN_COLOR = "#BBBBBB"


def category_style(j: int, unknown: bool = False) -> dict[str, Any]:
    """Fill of the ``j``-th category: the Okabe-Ito colours in order, then again with a
    hatch; grey for "unknown"."""
    if unknown:
        return {"color": UNKNOWN_COLOR}
    return {"color": COLORS[j % len(COLORS)],
            "hatch": HATCHES[(j // len(COLORS)) % len(HATCHES)] or None}


def _read_image(item: Any) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    from .data.images import read_image  # Pillow decoders: image figures only

    return read_image(item)


def _grid_shape(n: int, ncols: int) -> tuple[int, int]:
    if n == 0:
        raise DataError("no images to show")
    ncols = max(1, min(ncols, n))
    return -(-n // ncols), ncols


def _fit_title(text: str, width_in: float, fontsize: float, bars: bool = True) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` points (about
    0.56 em per character): first at its `` | `` separators (``bars``), then at spaces."""
    chars = max(int(width_in * 72 / (0.56 * fontsize)), 8)
    lines = []
    for part in str(text).split("\n"):
        pieces = part.split(" | ") if bars and len(part) > chars else [part]
        for piece in pieces:
            lines += textwrap.wrap(piece, chars, break_long_words=True) or [""]
    return "\n".join(lines)


@_styled
def image_grid(paths: Sequence[Any], titles: Sequence[str] | None = None, ncols: int = 4,
               save: str | Path | None = None, tile: float = 2.6, title: str | None = None
               ) -> Figure:
    """Images (paths read with PIL, or arrays) in a grid of ``ncols`` columns; unused cells
    are blanked. Titles are wrapped to the tile's width (at their `` | `` separators first),
    so neighbouring titles never overlap or run off the figure; ``title`` heads the grid."""
    if titles is not None and len(titles) != len(paths):
        raise DataError(f"{len(titles)} titles for {len(paths)} images")
    nrows, ncols = _grid_shape(len(paths), ncols)
    lines = max((len(_fit_title(t, tile, 9).split("\n")) for t in titles or []), default=0)
    fig, axes, owned = _figure(None, nrows, ncols, figsize=(
        tile * ncols, (tile + 0.17 * lines) * nrows + (0.5 if title else 0.2)))
    for i, a in enumerate(axes.ravel()):
        a.axis("off")
        if i < len(paths):
            a.imshow(_read_image(paths[i]))
            if titles is not None:
                a.set_title(_fit_title(titles[i], tile, 9), fontsize=9)
    if title:
        fig.suptitle(_fit_title(title, tile * ncols, 11, bars=False), fontsize=11)
    return _finish(fig, save, owned)


def _to_float_image(img: Any, i: int) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise DataError(f"image {i} must be H x W x 3, got shape {a.shape}")
    a = a.astype(np.float64)
    return a / 255.0 if a.max() > 1.0 else a


def _fit_cam(cam: Any, shape: tuple[int, int], i: int) -> np.ndarray:
    c = np.asarray(cam, dtype=np.float64)
    if c.ndim != 2:
        raise DataError(f"cam {i} must be an H x W map, got shape {c.shape}")
    if not np.isfinite(c).all() or c.min() < -1e-6 or c.max() > 1 + 1e-6:
        raise DataError(f"cam {i} must hold values in [0, 1], got min {np.nanmin(c):.3g}, "
                        f"max {np.nanmax(c):.3g}")
    if c.shape != shape:
        resized = Image.fromarray(c.astype(np.float32)).resize(
            (shape[1], shape[0]), Image.Resampling.BILINEAR)
        c = np.asarray(resized, dtype=np.float64)
    return np.clip(c, 0.0, 1.0)


#: Grad-CAM's colour map: perceptually uniform (equal steps look equal, dark = low), read
#: in greyscale and with the common colour-vision deficiencies, unlike jet / rainbow.
CAM_CMAP = "inferno"


#: The lesion outline drawn over a map: a colour the inferno map does not hold.
MASK_COLOUR = "#00e5ff"


def _fit_mask(mask: Any, shape: tuple[int, int], i: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(f"mask {i} must be an H x W array, got shape {m.shape}")
    if m.shape != shape:
        resized = Image.fromarray(m.astype(bool).astype(np.uint8) * 255).resize(
            (shape[1], shape[0]), Image.Resampling.NEAREST)
        m = np.asarray(resized)
    return m.astype(bool)


def _cam_pair(cells: Sequence[Axes], img: np.ndarray, cam: np.ndarray, alpha: float,
              mask: np.ndarray | None = None) -> None:
    """One case: the image, then the Grad-CAM overlay, headed 'image' | 'Grad-CAM'; with
    ``mask`` (H x W bool) the lesion's outline on both."""
    overlay = (1 - alpha) * img + alpha * plt.get_cmap(CAM_CMAP)(cam)[..., :3]
    cells[-1].imshow(np.clip(overlay, 0, 1))
    if len(cells) == 2:
        cells[0].imshow(img)
        cells[0].set_title("image", fontsize=9)
    cells[-1].set_title("Grad-CAM", fontsize=9)
    if mask is not None and mask.any():
        for a in cells:
            a.contour(mask.astype(float), levels=[0.5], colors=MASK_COLOUR, linewidths=1.2)


def _cam_layout(n: int, ncols: int, per: int, tile: float, lines: int, title: bool
                ) -> tuple[Figure, list[list[Axes]], list[Axes]]:
    """The figure, per case its ``per`` image axes, and per case a caption strip spanning
    them (a grid row below each row of cases), so captions never widen a column."""
    nrows, ncols = _grid_shape(n, ncols)
    strip = 0.18 * max(lines, 1) + 0.05
    fig = plt.figure(figsize=(tile * ncols * per + 1.0,
                              (tile + 0.3 + strip) * nrows + (0.6 if title else 0.0)),
                     layout="constrained")
    grid = fig.add_gridspec(2 * nrows, ncols * per, height_ratios=[tile, strip] * nrows)
    cells, strips = [], []
    for i in range(nrows * ncols):
        r, c = divmod(i, ncols)
        cells.append([fig.add_subplot(grid[2 * r, c * per + j]) for j in range(per)])
        strips.append(fig.add_subplot(grid[2 * r + 1, c * per:(c + 1) * per]))
    for a in [*(x for row in cells for x in row), *strips]:
        a.axis("off")
    return fig, cells, strips


@_styled
def cam_grid(images: Sequence[Any], cams: Sequence[Any], titles: Sequence[str] | None = None,
             ncols: int = 2, alpha: float = 0.45, show_original: bool = True,
             save: str | Path | None = None, tile: float = 2.6, title: str | None = None,
             masks: Sequence[Any] | None = None) -> Figure:
    """Grad-CAM heatmaps (H x W in [0, 1], resized to the image) over H x W x 3 images
    (uint8 or float in [0, 1]) in the perceptually uniform `CAM_CMAP`, with a colour bar;
    with ``show_original`` each image is shown beside its overlay under the headers
    'image' | 'Grad-CAM', so a row holds ``ncols`` pairs (two pairs: about 11 in wide, so
    text stays readable where a notebook scales the figure to its width). ``titles`` are
    the captions under each case; ``title`` heads the figure (say which class the maps
    explain and what the numbers are). ``masks`` (H x W bool per image, e.g. true lesion
    masks in the model's framing): the lesion outline, in `MASK_COLOUR`, on both panels
    (an empty mask draws nothing)."""
    if len(images) != len(cams):
        raise DataError(f"{len(images)} images but {len(cams)} cams")
    if masks is not None and len(masks) != len(images):
        raise DataError(f"{len(masks)} masks for {len(images)} images")
    if titles is not None and len(titles) != len(images):
        raise DataError(f"{len(titles)} titles for {len(images)} images")
    per = 2 if show_original else 1
    captions = [_fit_title(t, tile * per, 10) for t in titles or []]
    fig, cells, strips = _cam_layout(len(images), ncols, per, tile,
                                     max((c.count("\n") + 1 for c in captions), default=0),
                                     bool(title))
    for i, img_in in enumerate(images):
        img = _to_float_image(img_in, i)
        mask = None if masks is None else _fit_mask(masks[i], img.shape[:2], i)
        _cam_pair(cells[i], img, _fit_cam(cams[i], img.shape[:2], i), alpha, mask)
        if captions:
            strips[i].text(0.0, 1.0, captions[i], fontsize=10, ha="left", va="top",
                           transform=strips[i].transAxes)
    mappable = mpl.cm.ScalarMappable(mpl.colors.Normalize(0.0, 1.0), CAM_CMAP)
    bar = fig.colorbar(mappable, ax=[a for row in cells for a in row], pad=0.02, aspect=25,
                       shrink=min(0.9, 2.2 / len(strips) * ncols + 0.2))
    bar.set_label("Grad-CAM weight (0 = none, 1 = strongest)"
                  + ("; outline: lesion mask" if masks is not None else ""))
    if title:
        fig.suptitle(_fit_title(title, tile * ncols * per, 11, bars=False), fontsize=11)
    return _finish(fig, save, True)


_NOT_METRICS = {"epoch", "fold", "lr", "time", "seconds", "step", "epoch_time", "wall_s"}


@_styled
def learning_curves(history_df: pd.DataFrame, metric: str | None = None,
                    save: str | Path | None = None) -> Figure:
    """Loss columns (names containing 'loss') and one metric per epoch, one line per fold
    when a ``fold`` column exists; the metric defaults to the first other numeric column."""
    h = history_df
    if "epoch" not in h.columns:
        raise DataError(f"history needs an 'epoch' column, has {list(h.columns)}",
                        column="epoch")
    losses = [c for c in h.columns if "loss" in c.lower()]
    if metric is None:
        others = [c for c in h.columns if c not in losses and c.lower() not in _NOT_METRICS
                  and pd.api.types.is_numeric_dtype(h[c])]
        metric = others[0] if others else None
    elif metric not in h.columns:
        raise DataError(f"history has no column {metric!r}", column=metric)
    if not losses and metric is None:
        raise DataError(f"history has no loss or metric column: {list(h.columns)}")
    panels = ([("loss", losses)] if losses else []) + ([(metric, [metric])] if metric else [])
    fig, axes, owned = _figure(None, 1, len(panels), figsize=(5.0 * len(panels), 4.0))
    folds = sorted(h["fold"].unique()) if "fold" in h.columns else [None]
    styles = ["-", "--", ":", "-."]
    for a, (label, cols) in zip(axes[0], panels, strict=True):
        for fi, fold in enumerate(folds):
            part = h if fold is None else h[h["fold"] == fold]
            for ci, col in enumerate(cols):
                name = pretty(col) if fold is None else f"{pretty(col)}, fold {fold}"
                a.plot(part["epoch"], part[col], ls=styles[ci % len(styles)],
                       color=COLORS[fi % len(COLORS)], marker="o", ms=3, label=name)
        a.set(xlabel="epoch", ylabel=pretty(label))
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_title(f"{pretty(label)} per epoch ({len(folds)} fold{'s' if len(folds) > 1 else ''})")
        a.legend(fontsize=7)
    return _finish(fig, save, owned)


def aspect_plot(image: Any, size: int = 128, save: str | Path | None = None) -> Figure:
    """One image as read, then as the model sees it under each ``aspect`` (squash, crop,
    pad) at ``size`` pixels: the validation transform, de-normalised."""
    from .transforms import ASPECTS, build_transforms, denormalize  # albumentations

    raw = _read_image(image)
    views = [raw] + [denormalize(build_transforms(size, train=False, aspect=a)(raw))
                     for a in ASPECTS]
    height, width = raw.shape[:2]
    titles = [f"image {width}x{height}"] + [f"aspect={a} ({size}x{size})" for a in ASPECTS]
    return image_grid(views, titles=titles, ncols=len(views), save=save)


@_styled
def shift_plot(scores: Mapping[str, Any], threshold: float = 1.0, ax: Axes | None = None,
               save: str | Path | None = None, title: str | None = None) -> Figure:
    """Histograms of image-shift scores (`melalib.shift`), one per named set, with the
    in-domain threshold and each set's flagged share in the legend."""
    if not scores:
        raise DataError("shift_plot needs at least one named set of scores")
    fig, axes, owned = _figure(ax, figsize=(7.0, 4.5))
    a = axes[0, 0]
    arrays = {name: np.asarray(s, dtype=float) for name, s in scores.items()}
    finite = np.concatenate([s[np.isfinite(s)] for s in arrays.values()])
    top = max(float(finite.max()) if len(finite) else threshold, threshold) * 1.05
    bins = np.linspace(0.0, top, 40)
    for name, s in arrays.items():
        share = float(np.mean(s > threshold)) if len(s) else float("nan")
        a.hist(s, bins=bins, alpha=0.55, density=True,
               label=f"{name} (n={len(s)}, {share:.0%} flagged)")
    a.axvline(threshold, ls="--", color="grey", lw=1, label="threshold (in-domain 95 %)")
    a.set(xlabel="image shift (distance / fold threshold)", ylabel="density")
    a.legend(loc="upper right", fontsize=8)
    a.set_title(title or "Image shift of the model's features")
    return _finish(fig, save, owned)
