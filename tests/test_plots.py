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
    fig = plots.reliability_plot(y, p, n_bins=8, save=tmp_path / "rel.png")
    assert len(fig.axes) == 2  # curve + count bars on a twin axis
    main = fig.axes[0]
    assert len(main.lines) == 2 and "ECE" in main.get_legend().get_texts()[1].get_text()
    assert sum(b.get_height() for b in fig.axes[1].patches) == len(y)
    _saved(tmp_path / "rel.png")


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
        "head_neck", "palms_soles", "torso"]
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
    assert fig.axes[1].get_ylabel() == "valid_roc_auc"
    _saved(tmp_path / "lc.png")
    single = plots.learning_curves(h[h["fold"] == 0].drop(columns="fold"), metric="lr")
    assert len(single.axes[0].lines) == 2 and single.axes[1].get_ylabel() == "lr"


def test_cam_grid_overlays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), rng.random((20, 24, 3)),
              rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)]
    cams = [rng.random((8, 8)), rng.random((20, 24)), np.zeros((32, 32))]
    fig = plots.cam_grid(images, cams, ["a", "b", "c"], ncols=2, save=tmp_path / "cam.png")
    assert len(fig.axes) == 8  # 2 rows x 2 pairs (image + overlay)
    assert sum(bool(a.images) for a in fig.axes) == 6
    assert fig.axes[1].images[0].get_array().shape[:2] == (32, 32)  # cam resized to image
    _saved(tmp_path / "cam.png")
    overlay_only = plots.cam_grid(images, cams, show_original=False, ncols=3)
    assert len(overlay_only.axes) == 3
    with pytest.raises(DataError, match=r"cam 0 must hold values in \[0, 1\]"):
        plots.cam_grid(images[:1], [np.full((4, 4), 2.0)])


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
