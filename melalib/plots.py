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
from .calibration import expected_calibration_error, reliability_curve
from .errors import DataError
from .io import atomic_path
from .metrics import Resampler, confusion
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


def _as_curves(p: Any, curves: Mapping[str, Any] | None) -> dict[str, Any]:
    if curves:
        return dict(curves)
    if p is None:
        raise DataError("pass the scores p or curves={name: probs}")
    return {"model": p}


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
                   save: str | Path | None = None, seed: int = 0, title: str | None = None
                   ) -> Figure:
    """ROC curve(s) with a 95 % group-aware bootstrap band of TPR and AUC (CI) in the
    legend; ``curves`` maps names to scores for several models on the same labels."""
    fig, axes, owned = _figure(ax, figsize=(5.5, 5.0))
    a = axes[0, 0]
    grid = np.linspace(0.0, 1.0, 101)
    for i, (name, probs) in enumerate(_as_curves(p, curves).items()):
        yb, pb = binary_inputs(y, probs, f"roc_curve_plot[{name}]")
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
        a.plot(fpr, tpr, color=color, lw=2, label=f"{name}: AUC {_auc_xy(fpr, tpr):.3f}{ci}")
    a.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    a.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false-positive rate)",
          ylabel="sensitivity (true-positive rate)", aspect="equal")
    a.set_title(title or f"ROC curve (n={len(yb)}, positives={int(yb.sum())})")
    a.legend(loc="lower right")
    return _finish(fig, save, owned)


def _pr_xy(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    recall = np.r_[0.0, tp / tp[-1]]
    precision = np.r_[1.0, tp / np.maximum(tp + fp, 1e-12)]
    return recall, precision


def _ap(recall: np.ndarray, precision: np.ndarray) -> float:
    return float(np.sum(np.diff(recall) * precision[1:]))


@_styled
def pr_curve_plot(y: Any, p: Any = None, groups: Any = None, n_boot: int = 200,
                  curves: Mapping[str, Any] | None = None, ax: Axes | None = None,
                  save: str | Path | None = None, seed: int = 0, title: str | None = None
                  ) -> Figure:
    """Precision-recall curve(s) with a bootstrap band of interpolated precision, average
    precision (CI) in the legend and the prevalence as the no-skill baseline."""
    fig, axes, owned = _figure(ax, figsize=(5.5, 5.0))
    a = axes[0, 0]
    grid = np.linspace(0.0, 1.0, 101)
    prevalence = 0.0
    for i, (name, probs) in enumerate(_as_curves(p, curves).items()):
        yb, pb = binary_inputs(y, probs, f"pr_curve_plot[{name}]")
        prevalence = float(yb.mean())
        order, starts, _ = tie_groups(pb)
        P, N = group_weights(yb, order, starts)
        recall, precision = _pr_xy(np.cumsum(P[0]), np.cumsum(N[0]))
        color = COLORS[i % len(COLORS)]
        reps = [_pr_xy(tp, fp) for tp, fp in _replicate_curves(yb, pb, groups, n_boot, seed)]
        if reps:
            band = []
            for r, pr in reps:
                envelope = np.maximum.accumulate(pr[::-1])[::-1]  # interpolated precision
                band.append(envelope[np.minimum(np.searchsorted(r, grid), len(r) - 1)])
            lo, hi = np.quantile(np.array(band), [0.025, 0.975], axis=0)
            a.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)
        ci = _ci_text([_ap(r, pr) for r, pr in reps])
        a.step(recall, precision, where="post", color=color, lw=2,
               label=f"{name}: AP {_ap(recall, precision):.3f}{ci}")
    a.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence {prevalence:.3f}")
    a.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)",
          ylabel="precision (PPV)")
    a.set_title(title or f"Precision-recall (n={len(yb)}, positives={int(yb.sum())})")
    a.legend(loc="upper right")
    return _finish(fig, save, owned)


@_styled
def confusion_matrix_plot(y: Any, pred: Any, class_names: Sequence[str],
                          normalize: bool = True, ax: Axes | None = None,
                          save: str | Path | None = None, title: str | None = None) -> Figure:
    """Confusion matrix (rows: true class; shares of the row when ``normalize``, counts in
    brackets). ``pred`` is labels or (N, K) probabilities; argmax ties get a 'tie' column."""
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
    # at least ~5 x 4 in: the title and the colour bar's label fit at the size the notebook
    # shows the figure, for two classes too
    fig, axes, owned = _figure(ax, figsize=(max(6.0, 2.8 + 0.8 * len(cols)),
                                            max(4.4, 1.6 + 0.7 * k)))
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
    a.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    a.set_yticks(range(k), [f"{c} (n={n})" for c, n in zip(class_names, m.sum(axis=1),
                                                             strict=True)])
    a.set(xlabel="predicted", ylabel="true")
    a.set_title(title or f"Confusion matrix (n={int(m.sum())})")
    bar = fig.colorbar(im, ax=a, fraction=0.046, pad=0.03)
    bar.set_label("share of true class" if normalize else "count", labelpad=8)
    return _finish(fig, save, owned)


@_styled
def reliability_plot(y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform",
                     ax: Axes | None = None, save: str | Path | None = None,
                     title: str | None = None) -> Figure:
    """Observed frequency vs. mean predicted probability per bin, the diagonal of perfect
    calibration, and bars of the bin counts on a second axis (multiclass: top-label)."""
    curve = reliability_curve(y, p, n_bins, strategy)  # type: ignore[arg-type]
    ece = expected_calibration_error(y, p, n_bins, strategy)  # type: ignore[arg-type]
    fig, axes, owned = _figure(ax, figsize=(5.5, 5.0))
    a = axes[0, 0]
    counts = a.twinx()
    counts.bar((curve["bin_lo"] + curve["bin_hi"]) / 2, curve["count"],
               width=(curve["bin_hi"] - curve["bin_lo"]) * 0.9, color="grey", alpha=0.25)
    counts.set_ylabel("count per bin")
    counts.grid(False)
    a.set_zorder(counts.get_zorder() + 1)
    a.patch.set_visible(False)
    a.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    used = curve[curve["count"] > 0]
    a.plot(used["mean_pred"], used["frac_pos"], marker="o", lw=2, color=COLORS[0],
           label=f"model (ECE {ece:.3f})")
    a.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability",
          ylabel="observed frequency")
    a.set_title(title or f"Reliability (n={int(curve['count'].sum())}, {len(used)} bins)")
    a.legend(loc="upper left")
    return _finish(fig, save, owned)


@_styled
def subgroup_plot(subgroup_df: pd.DataFrame, metric: str, ax: Axes | None = None,
                  save: str | Path | None = None, reference: float | None = None,
                  title: str | None = None) -> Figure:
    """Estimate with CI error bars per subgroup value, one panel per subgroup column (one
    axis when ``ax`` is given), counts annotated; undefined subgroups are marked 'n/a'."""
    d = subgroup_df[subgroup_df["metric"] == metric]
    if d.empty:
        raise DataError(f"no rows for metric {metric!r}; the table has "
                        f"{sorted(subgroup_df['metric'].unique())}", column="metric")
    columns = list(dict.fromkeys(d["subgroup_column"]))
    panels = [d] if ax is not None else [d[d["subgroup_column"] == c] for c in columns]
    heights = [max(len(x), 1) for x in panels]
    fig, axes, owned = _figure(ax, nrows=len(panels),
                               figsize=(7.0, 0.8 + sum(0.32 * h + 0.55 for h in heights)),
                               height_ratios=[h + 1.2 for h in heights])
    values = d[["low", "high", "estimate"]].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    lo, hi = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    if reference is not None:
        lo, hi = min(lo, reference), max(hi, reference)
    pad = max(0.05 * (hi - lo), 0.01)
    for a, part in zip(axes[:, 0], panels, strict=True):
        pos = np.arange(len(part))[::-1]
        names = [f"{c}={v}" if ax is not None else str(v)
                 for c, v in zip(part["subgroup_column"], part["value"], strict=True)]
        est = part["estimate"].to_numpy(dtype=float)
        err = np.vstack([est - part["low"].to_numpy(dtype=float),
                         part["high"].to_numpy(dtype=float) - est])
        a.errorbar(est, pos, xerr=np.nan_to_num(np.abs(err)), fmt="o", color=COLORS[0],
                   capsize=3)
        side = a.get_yaxis_transform()  # x in axes fraction, y in data
        for y_pos, (_, row) in zip(pos, part.iterrows(), strict=True):
            label = f"n={int(row['n'])}" + ("" if np.isfinite(row["estimate"]) else " n/a")
            a.text(1.01, y_pos, label, transform=side, va="center", fontsize=8)
        if reference is not None:
            a.axvline(reference, ls="--", color="grey", lw=1)
        a.set_yticks(pos, names)
        a.set(xlim=(lo - pad, hi + pad), ylim=(-0.6, len(part) - 0.4), xlabel=metric)
        if ax is None:
            a.set_title(str(part["subgroup_column"].iloc[0]), loc="left")
    heading = title or f"{metric} by subgroup (95 % CI)"
    if ax is None:
        fig.suptitle(heading)
    else:
        axes[0, 0].set_title(heading)
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
        a.barh(range(len(order)), shares[site], left=left, label=site, edgecolor="white",
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


@_styled
def image_grid(paths: Sequence[Any], titles: Sequence[str] | None = None, ncols: int = 4,
               save: str | Path | None = None, tile: float = 2.6) -> Figure:
    """Images (paths read with PIL, or arrays) in a grid of ``ncols`` columns; unused cells
    are blanked."""
    if titles is not None and len(titles) != len(paths):
        raise DataError(f"{len(titles)} titles for {len(paths)} images")
    nrows, ncols = _grid_shape(len(paths), ncols)
    fig, axes, owned = _figure(None, nrows, ncols, figsize=(tile * ncols, tile * nrows + 0.3))
    for i, a in enumerate(axes.ravel()):
        a.axis("off")
        if i < len(paths):
            a.imshow(_read_image(paths[i]))
            if titles is not None:
                a.set_title(titles[i], fontsize=10)
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


@_styled
def cam_grid(images: Sequence[Any], cams: Sequence[Any], titles: Sequence[str] | None = None,
             ncols: int = 2, alpha: float = 0.45, show_original: bool = True,
             save: str | Path | None = None, tile: float = 2.6) -> Figure:
    """Grad-CAM heatmaps (H x W in [0, 1], resized to the image) over H x W x 3 images
    (uint8 or float in [0, 1]); with ``show_original`` each image is shown beside its
    overlay, so a row holds ``ncols`` pairs (two pairs: about 10 in wide, so titles stay
    readable where a notebook scales the figure to its width)."""
    if len(images) != len(cams):
        raise DataError(f"{len(images)} images but {len(cams)} cams")
    if titles is not None and len(titles) != len(images):
        raise DataError(f"{len(titles)} titles for {len(images)} images")
    per = 2 if show_original else 1
    nrows, ncols = _grid_shape(len(images), ncols)
    fig, axes, owned = _figure(None, nrows, ncols * per,
                               figsize=(tile * ncols * per, tile * nrows + 0.3))
    cmap = plt.get_cmap("jet")
    flat = axes.reshape(nrows * ncols, per)
    for i, cells in enumerate(flat):
        for a in cells:
            a.axis("off")
        if i >= len(images):
            continue
        img = _to_float_image(images[i], i)
        cam = _fit_cam(cams[i], img.shape[:2], i)
        overlay = (1 - alpha) * img + alpha * cmap(cam)[..., :3]
        if show_original:
            cells[0].imshow(img)
        cells[-1].imshow(np.clip(overlay, 0, 1))
        if titles is not None:
            cells[0].set_title(titles[i], fontsize=11, loc="left")
    return _finish(fig, save, owned)


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
                name = col if fold is None else f"{col} fold {fold}"
                a.plot(part["epoch"], part[col], ls=styles[ci % len(styles)],
                       color=COLORS[fi % len(COLORS)], marker="o", ms=3, label=name)
        a.set(xlabel="epoch", ylabel=label)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_title(f"{label} per epoch ({len(folds)} fold{'s' if len(folds) > 1 else ''})")
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
