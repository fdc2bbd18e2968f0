"""Every plot returns a Figure with the expected axes and lines and saves a real PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from melalib import plots
from melalib.errors import DataError, ImageError
from melalib.subgroups import subgroup_metrics
from melalib.tasks import HAM7, MELANOMA

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_show_and_closed(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("plots must never call plt.show")

    monkeypatch.setattr(plt, "show", refuse)
    yield
    left_open = plt.get_fignums()
    plt.close("all")
    assert left_open == [], "plots left figures open in pyplot"


def _saved(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def _binary(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, n), 0, 1)
    return y, p, np.arange(n) // 3


def test_roc_curve_plot_curves_band_and_legend(tmp_path: Path) -> None:
    y, p, groups = _binary()
    other = np.clip(p + np.random.default_rng(1).normal(0, 0.2, len(p)), 0, 1)
    fig = plots.roc_curve_plot(y, curves={"fusion": p, "image only": other}, groups=groups,
                               n_boot=50, save=tmp_path / "roc.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # two curves + chance
    assert len(ax.collections) == 2  # one bootstrap band per curve
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith(f"fusion: AUC {roc_auc_score(y, p):.3f} (")
    assert f"n={len(y)}" in ax.get_title()
    _saved(tmp_path / "roc.png")


def test_roc_and_pr_state_what_they_show() -> None:
    """Issue 23: the notebook's ROC was titled "ROC" with a legend saying "model" for a
    blend, no n and no CI level; the PR legend covered the curve."""
    y, p, groups = _binary()
    roc = plots.roc_curve_plot(y, p, groups=groups, n_boot=20, name="geometric blend",
                               title="ROC curve of the out-of-fold scores")
    title = roc.axes[0].get_title()
    assert title.startswith("ROC curve of the out-of-fold scores\n")
    assert f"n={len(y)} ({int(y.sum())} positive)" in title and "95 % CI" in title
    assert "20 bootstraps over patients/groups" in title
    assert roc.axes[0].get_legend().get_texts()[0].get_text().startswith("geometric blend: AUC")
    unnamed = plots.roc_curve_plot(y, p, n_boot=0)
    assert "model" not in unnamed.axes[0].get_legend().get_texts()[0].get_text()
    assert "no confidence band" in unnamed.axes[0].get_title()
    pr = plots.pr_curve_plot(y, p, groups=groups, n_boot=20, name="geometric blend")
    legend_box = pr.axes[0].get_legend().get_window_extent(_renderer(pr))
    assert legend_box.y1 <= pr.axes[0].get_window_extent(_renderer(pr)).y0  # below the axes
    assert "95 % CI" in pr.axes[0].get_title()


def test_pr_curve_plot_with_prevalence(tmp_path: Path) -> None:
    y, p, _ = _binary()
    fig = plots.pr_curve_plot(y, p, n_boot=30, save=tmp_path / "pr.png")
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 1
    assert ax.lines[1].get_ydata()[0] == pytest.approx(y.mean())
    assert f"AP {average_precision_score(y, p):.3f}" in ax.get_legend().get_texts()[0].get_text()
    _saved(tmp_path / "pr.png")
    no_band = plots.pr_curve_plot(y, p, n_boot=0)
    assert len(no_band.axes[0].collections) == 0


def test_confusion_matrix_plot_counts_and_ties(tmp_path: Path) -> None:
    y = [0, 0, 1, 1, 2, 2]
    probs = np.array([[0.8, 0.1, 0.1], [0.4, 0.4, 0.2], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1],
                      [0.1, 0.1, 0.8], [0.1, 0.2, 0.7]])
    fig = plots.confusion_matrix_plot(y, probs, ["a", "b", "c"], save=tmp_path / "cm.png")
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # matrix + colour bar
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 3 * 4 and [t.get_text() for t in ax.get_xticklabels()][-1] == "tie"
    assert texts[0] == "0.50\n(1)" and texts[3] == "0.50\n(1)"  # row a: 1 right, 1 tied
    _saved(tmp_path / "cm.png")
    counts = plots.confusion_matrix_plot(y, probs.argmax(1), ["a", "b", "c"], normalize=False)
    assert [t.get_text() for t in counts.axes[0].texts][:3] == ["2", "0", "0"]


def test_reliability_plot(tmp_path: Path) -> None:
    y, p, _ = _binary()
    fig = plots.reliability_plot(y, p, n_bins=8, save=tmp_path / "rel.png", name="blend")
    assert len(fig.axes) == 2  # curve + count bars on a twin axis
    main = fig.axes[0]
    assert "blend (ECE" in main.get_legend().get_texts()[1].get_text()
    assert sum(b.get_height() for b in fig.axes[1].patches) == len(y)
    _saved(tmp_path / "rel.png")


def test_reliability_plot_adaptive_bins_with_wilson_intervals_not_clipped() -> None:
    """Issue 23: a rarely-high score left 5 of 10 uniform bins, the points at 1.0 were cut
    by the axes and there were no intervals. Quantile bins by default, every bin used,
    Wilson 95 % error bars, and room above 1.0."""
    from melalib.calibration import reliability_curve, wilson_interval

    rng = np.random.default_rng(3)
    p = rng.random(400) ** 4  # most scores near 0: uniform bins above 0.5 stay nearly empty
    y = (rng.random(400) < np.sqrt(p)).astype(int)
    y[np.argsort(p)[-40:]] = 1  # the top bin observed at 1.0
    fig = plots.reliability_plot(y, p)
    main = fig.axes[0]
    curve = reliability_curve(y, p, 10, "quantile")
    assert (curve["count"] > 0).sum() == 10 and "10 quantile bins" in main.get_title()
    assert "95 % CI (Wilson)" in main.get_title()
    assert main.get_ylim()[1] > 1.0 and main.get_xlim()[1] > 1.0
    k = np.bincount(np.searchsorted(curve["bin_hi"].to_numpy()[:-1], p, side="left"),
                    weights=y, minlength=10)
    low, high = wilson_interval(k, curve["count"].to_numpy())
    np.testing.assert_allclose(curve["low"], low)
    caps = [c for c in main.collections if len(c.get_segments()) == 10]
    assert caps, "no error bars"
    tops = sorted(max(seg[:, 1]) for seg in caps[0].get_segments())
    np.testing.assert_allclose(tops, np.sort(high))


def _subgroup_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({"group_id": np.arange(n) // 2, "sex": rng.choice(["male", "female"], n),
                       "site": rng.choice(["torso", "head_neck", "palms_soles"], n),
                       "label": rng.integers(0, 2, n)})
    df.loc[df["site"] == "palms_soles", "label"] = 0
    df["prob_melanoma"] = np.clip(0.3 + 0.4 * df["label"] + rng.normal(0, 0.2, n), 0, 1)
    return subgroup_metrics(df, MELANOMA, by=["sex", "site"], n_boot=30, min_count=5)


def test_subgroup_plot_panels_and_single_axis(tmp_path: Path) -> None:
    table = _subgroup_table()
    fig = plots.subgroup_plot(table, "roc_auc", save=tmp_path / "sub.png", reference=0.8)
    assert len(fig.axes) == 2  # sex, site
    site_ax = fig.axes[1]
    assert [t.get_text() for t in site_ax.get_yticklabels()] == [
        "head/neck", "palms/soles", "torso"]
    notes = [t.get_text() for t in site_ax.texts]
    assert any(t.endswith("n/a") for t in notes) and all(t.startswith("n=") for t in notes)
    _saved(tmp_path / "sub.png")
    fig2, ax = plt.subplots()
    assert plots.subgroup_plot(table, "pr_auc", ax=ax) is fig2 and len(fig2.axes) == 1
    plt.close(fig2)
    with pytest.raises(DataError, match="no rows for metric 'accuracy'"):
        plots.subgroup_plot(table, "accuracy")


def _ham_like(n: int = 140) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    label = rng.choice(7, n, p=[0.05, 0.05, 0.1, 0.02, 0.1, 0.65, 0.03])
    label[:7] = np.arange(7)
    return pd.DataFrame({"label": label, "label_name": np.array(HAM7.classes)[label],
                         "age": np.where(rng.random(n) < 0.1, np.nan, rng.integers(5, 90, n)),
                         "site": rng.choice(["torso", "head_neck", "lower_extremity"], n),
                         "split": "train"})


def test_data_overview_plots(tmp_path: Path) -> None:
    df = _ham_like()
    df = pd.concat([df, df.head(3).assign(label=-1, label_name="", split="test")])
    fig = plots.class_balance_plot(df, HAM7, save=tmp_path / "bal.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 7
    assert [int(b.get_height()) for b in ax.patches] == np.bincount(
        _ham_like()["label"], minlength=7).tolist()  # test rows (label -1) not counted
    assert "n=140" in ax.get_title()
    _saved(tmp_path / "bal.png")
    age = plots.age_by_label_plot(df, HAM7, save=tmp_path / "age.png")
    assert len(age.axes) == 1 and "age missing in" in age.axes[0].get_title()
    _saved(tmp_path / "age.png")
    site = plots.site_by_label_plot(df, HAM7, save=tmp_path / "site.png")
    assert len(site.axes[0].patches) == 7 * 3  # classes x sites
    _saved(tmp_path / "site.png")


def test_image_grid_reads_files(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        path = tmp_path / f"img{i}.jpg"
        Image.fromarray(np.full((30, 40, 3), 40 * i, dtype=np.uint8)).save(path)
        paths.append(path)
    fig = plots.image_grid(paths, [f"#{i}" for i in range(5)], ncols=3,
                           save=tmp_path / "grid.png")
    assert len(fig.axes) == 6 and sum(bool(a.images) for a in fig.axes) == 5
    assert fig.axes[4].get_title() == "#4"
    _saved(tmp_path / "grid.png")
    with pytest.raises(ImageError, match="image not found"):
        plots.image_grid([tmp_path / "missing.jpg"])


def test_learning_curves_per_fold(tmp_path: Path) -> None:
    epochs = np.tile(np.arange(1, 6), 2)
    h = pd.DataFrame({"fold": np.repeat([0, 1], 5), "epoch": epochs,
                      "train_loss": 1 / epochs, "valid_loss": 1.2 / epochs,
                      "valid_roc_auc": 0.6 + 0.05 * epochs, "lr": 1e-3})
    fig = plots.learning_curves(h, save=tmp_path / "lc.png")
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 4 and len(fig.axes[1].lines) == 2
    assert fig.axes[1].get_ylabel() == "validation ROC-AUC"
    _saved(tmp_path / "lc.png")
    single = plots.learning_curves(h[h["fold"] == 0].drop(columns="fold"), metric="lr")
    assert len(single.axes[0].lines) == 2 and single.axes[1].get_ylabel() == "learning rate"


def test_cam_grid_overlays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), rng.random((20, 24, 3)),
              rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)]
    cams = [rng.random((8, 8)), rng.random((20, 24)), np.zeros((32, 32))]
    fig = plots.cam_grid(images, cams, ["a", "b", "c"], ncols=2, save=tmp_path / "cam.png")
    assert sum(bool(a.images) for a in fig.axes) == 6  # 3 cases: image + overlay
    assert len([a for a in fig.axes if a.get_ylabel().startswith("Grad-CAM")]) == 1
    assert fig.axes[1].images[0].get_array().shape[:2] == (32, 32)  # cam resized to image
    _saved(tmp_path / "cam.png")
    overlay_only = plots.cam_grid(images, cams, show_original=False, ncols=3)
    assert sum(bool(a.images) for a in overlay_only.axes) == 3
    with pytest.raises(DataError, match=r"cam 0 must hold values in \[0, 1\]"):
        plots.cam_grid(images[:1], [np.full((4, 4), 2.0)])


def test_cam_grid_outlines_the_lesion_mask_where_it_lies() -> None:
    images = [np.zeros((32, 40, 3), np.uint8)] * 2
    cams = [np.zeros((8, 8))] * 2
    mask = np.zeros((16, 20), bool)
    mask[2:6, 12:18] = True  # top right, at half the image's resolution
    fig = plots.cam_grid(images, cams, masks=[mask, np.zeros((32, 40), bool)], ncols=2)
    outlined = [a for a in fig.axes if a.images and a.collections]
    assert len(outlined) == 2  # image and overlay of the first case; the empty mask: none
    for a in outlined:
        (x0, y0), (x1, y1) = a.collections[0].get_datalim(a.transData).get_points()
        assert 20 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 16  # scaled to the image, in place
    assert "lesion mask" in next(a for a in fig.axes if a.get_ylabel()).get_ylabel()
    with pytest.raises(DataError, match="1 masks for 2 images"):
        plots.cam_grid(images, cams, masks=[mask])


def _renderer(fig: Figure):
    """A drawn Agg canvas for a figure the plot function already closed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _text_inside(fig: Figure) -> list[str]:
    """Texts (titles, labels, tick labels) that reach outside the saved figure."""
    renderer = _renderer(fig)
    box = fig.bbox
    outside = []
    for text in fig.findobj(lambda o: hasattr(o, "get_text") and hasattr(o, "get_window_extent")):
        if not text.get_visible() or not text.get_text().strip():
            continue
        ext = text.get_window_extent(renderer)
        if ext.x0 < box.x0 - 1 or ext.x1 > box.x1 + 1 or ext.y0 < box.y0 - 1 or \
                ext.y1 > box.y1 + 1:
            outside.append(text.get_text())
    return outside


@pytest.mark.parametrize("k", [2, 7])
def test_confusion_matrix_is_readable(k: int) -> None:
    """Issue 12: the binary matrix was 2.5 in wide, its title cut, the colour-bar label over
    the ticks. Every text now lies inside the figure, which is at least 6 x 4.4 in."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, 200)
    names = ["benign", "melanoma"] if k == 2 else list(HAM7.classes)
    fig = plots.confusion_matrix_plot(y, rng.integers(0, k, 200), names)
    width, height = fig.get_size_inches()
    assert width >= 6.0 and height >= 4.4
    assert _text_inside(fig) == []
    bar_axes = fig.axes[1]
    label = bar_axes.yaxis.label
    ticks = [t for t in bar_axes.get_yticklabels() if t.get_text()]
    renderer = _renderer(fig)
    assert label.get_window_extent(renderer).x0 > max(t.get_window_extent(renderer).x1
                                                      for t in ticks)


def test_learning_curves_have_integer_epoch_ticks() -> None:
    h = pd.DataFrame({"fold": 0, "epoch": [1, 2], "train_loss": [1.0, 0.5], "auc": [0.6, 0.7]})
    fig = plots.learning_curves(h)
    _renderer(fig)
    for a in fig.axes:
        ticks = [t for t in a.get_xticks() if a.get_xlim()[0] <= t <= a.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_site_plot_uses_okabe_ito_then_hatches_and_grey_for_unknown() -> None:
    sites = [f"site{i}" for i in range(9)] + ["unknown"]
    df = pd.DataFrame({"label": [0, 1] * 10, "label_name": ["benign", "melanoma"] * 10,
                       "site": sites * 2, "split": "train"})
    fig = plots.site_by_label_plot(df, MELANOMA)
    a = fig.axes[0]
    fills = {}
    for patch, label in zip(a.patches, [s for s in sorted(set(sites)) for _ in range(2)],
                            strict=True):
        fills[label] = (mpl_hex(patch.get_facecolor()), patch.get_hatch())
    assert [fills[f"site{i}"][0] for i in range(8)] == [c.lower() for c in plots.COLORS]
    assert fills["site8"] == (plots.COLORS[0].lower(), "//")
    assert fills["unknown"][0] == plots.UNKNOWN_COLOR.lower()


def mpl_hex(rgba: tuple[float, ...]) -> str:
    from matplotlib.colors import to_hex

    return to_hex(rgba)


def test_cam_grid_titles_stay_readable_when_scaled_to_a_notebook() -> None:
    """Lab shows a figure at most ~1000 px wide: the grid is at most ~10.5 in wide (1260 px
    at DPI 120), so 11 pt titles stay >= 9 px high on screen."""
    images = [np.zeros((32, 32, 3), np.uint8)] * 8
    cams = [np.zeros((4, 4))] * 8
    fig = plots.cam_grid(images, cams, titles=["mel -> nevus (0.91)"] * 8)
    width_px = fig.get_size_inches()[0] * plots.DPI
    titles = [a.title for a in fig.axes if a.title.get_text()] + \
        [a._left_title for a in fig.axes if a._left_title.get_text()]
    size_px = min(t.get_fontsize() for t in titles) * plots.DPI / 72
    assert size_px * min(1.0, 1000 / width_px) >= 9


def test_subgroup_plot_shows_chance_positives_and_plain_labels() -> None:
    """Issue 23: the axis started at 0.66 with no 0.5 line, no positive counts, raw
    `roc_auc` / `age_band` labels."""
    table = _subgroup_table()
    fig = plots.subgroup_plot(table, "roc_auc")
    for a in fig.axes:
        lo, hi = a.get_xlim()
        assert lo < 0.5 < hi
        assert any(list(line.get_xdata()) == [0.5, 0.5] for line in a.lines)  # chance line
        assert a.get_xlabel() == "ROC-AUC"
        assert all("pos" in t.get_text() for t in a.texts)
    texts = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
    assert not any("_" in t for t in texts if t), [t for t in texts if "_" in t]
    assert "95 % CI" in fig._suptitle.get_text() and "chance 0.50" in fig._suptitle.get_text()
    assert plots.pretty("age_band") == "age band" and plots.pretty("valid_roc_auc") == \
        "validation ROC-AUC"


def test_confusion_matrix_states_its_threshold() -> None:
    y = np.array([0, 0, 1, 1])
    fig = plots.confusion_matrix_plot(y, [0, 1, 1, 0], ["benign", "melanoma"], threshold=0.123)
    assert "n=4" in fig.axes[0].get_title() and "score >= 0.123" in fig.axes[0].get_title()
    by_argmax = plots.confusion_matrix_plot(y, np.eye(2)[[0, 1, 1, 0]], ["a", "b"])
    assert "argmax" in by_argmax.axes[0].get_title()


def test_cam_grid_uses_a_uniform_map_a_colour_bar_and_headers() -> None:
    """Issue 23: the maps were drawn in jet, with no colour bar and no headers."""
    image = np.zeros((16, 16, 3), np.uint8)
    cam = np.tile(np.linspace(0, 1, 16), (16, 1))
    fig = plots.cam_grid([image], [cam], titles=["melanoma called benign, P(melanoma) = 0.10"],
                         alpha=1.0, title="False negatives")
    overlay = fig.axes[1].images[0].get_array()
    expected = plt.get_cmap(plots.CAM_CMAP)(cam)[..., :3]
    np.testing.assert_allclose(overlay, expected)
    assert plots.CAM_CMAP in ("viridis", "inferno", "magma", "plasma", "cividis")
    assert [a.get_title() for a in fig.axes[:2]] == ["image", "Grad-CAM"]
    bars = [a for a in fig.axes if a.get_ylabel().startswith("Grad-CAM weight")]
    assert len(bars) == 1
    captions = [t.get_text() for a in fig.axes for t in a.texts]
    assert captions == ["melanoma called benign, P(melanoma) = 0.10"]


def test_image_grid_wraps_long_titles() -> None:
    """Issue 23: notebook 01's titles ran into each other and off the figure ("elanoma")."""
    from melalib.figcheck import figure_problems

    images = [np.zeros((30, 40, 3), np.uint8)] * 8
    titles = ["melanoma | female, 45 y | lower extremity"] * 8
    old_style = plots.image_grid(images, titles, ncols=4, tile=1.6)
    assert figure_problems(old_style) == []
    assert all("\n" in a.get_title() for a in old_style.axes)


# ------------------------------------------------------------------ the figure checker
def _figure_with(*problems: str) -> Figure:
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], label="curve")
    if "clipped" in problems:
        fig.text(0.9, 0.5, "runs off the right edge")
    if "overlap" in problems:
        ax.text(0.2, 0.5, "first label")
        ax.text(0.22, 0.5, "second label")
    if "covered" in problems:
        ax.legend(loc="center")
    return fig


@pytest.mark.parametrize("kind", ["clipped", "overlap", "covered"])
def test_figcheck_finds_each_problem(kind: str) -> None:
    from melalib.figcheck import FigureError, check_figure, figure_problems

    assert figure_problems(_figure_with()) == []
    found = figure_problems(_figure_with(kind))
    assert [p.kind for p in found] == [kind], found
    with pytest.raises(FigureError, match=kind):
        check_figure(_figure_with(kind))


def test_figcheck_ignores_what_is_not_drawn() -> None:
    """Tick labels outside the view and axes turned off draw nothing, so they cannot clip."""
    from melalib.figcheck import figure_problems

    fig = Figure(figsize=(2, 2))
    ax = fig.add_subplot()
    ax.imshow(np.zeros((40, 40)))
    ax.axis("off")
    ax.set_xlabel("a long label that would run far off the figure if it were drawn")
    assert figure_problems(fig) == []


def _all_figures() -> dict[str, Figure]:
    """One figure of every figure function of `plots` (and the notebook's grids), on small
    synthetic data with realistic (long, underscored) labels."""
    from melalib.tasks import HAM7

    y, p, groups = _binary()
    table = _subgroup_table()
    ham = _ham_like()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    h = pd.DataFrame({"fold": np.repeat([0, 1], 5), "epoch": np.tile(np.arange(1, 6), 2),
                      "train_loss": 1.0, "valid_loss": 1.1, "valid_roc_auc": 0.7})
    return {
        "roc": plots.roc_curve_plot(y, curves={"image+metadata run": p, "geometric blend":
                                               p ** 2}, groups=groups, n_boot=20),
        "pr": plots.pr_curve_plot(y, p, groups=groups, n_boot=20, name="searched weights"),
        "confusion2": plots.confusion_matrix_plot(
            y, (p > 0.5).astype(int), ["benign", "melanoma"], threshold="called positive at "
            "P >= 0.0645, the out-of-fold threshold reaching 90 % sensitivity"),
        "confusion7": plots.confusion_matrix_plot(rng.integers(0, 7, 200),
                                                  rng.integers(0, 7, 200), list(HAM7.classes)),
        "reliability": plots.reliability_plot(y, p ** 3, name="geometric blend"),
        "subgroups": plots.subgroup_plot(table, "roc_auc", reference=0.83),
        "class_balance": plots.class_balance_plot(ham, HAM7),
        "age_by_label": plots.age_by_label_plot(ham, HAM7),
        "site_by_label": plots.site_by_label_plot(ham, HAM7),
        "image_grid": plots.image_grid(images, ["melanoma | female, 45 y | lower extremity"]
                                       * 6, ncols=3, title="3 training images per class"),
        "cam_grid": plots.cam_grid(images[:4], [rng.random((8, 8)) for _ in range(4)],
                                   ["melanoma called benign, P(melanoma) = 0.09"] * 4,
                                   title="False negatives (called positive at P >= 0.0123)"),
        "learning_curves": plots.learning_curves(h),
        "aspect": plots.aspect_plot(images[0], size=32),
    }


def test_every_figure_passes_the_figure_check() -> None:
    """Issue 23: no figure function draws clipped text, overlapping labels or a legend over
    a curve (today the PR legend covered its curve and 01's grid titles overlapped)."""
    from melalib.figcheck import figure_problems

    problems = {name: [str(p) for p in figure_problems(fig)]
                for name, fig in _all_figures().items()}
    assert {k: v for k, v in problems.items() if v} == {}
