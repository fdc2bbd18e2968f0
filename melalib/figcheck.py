"""A figure checker: is every text of a figure readable where it is drawn?

`figure_problems(fig)` draws the figure on an Agg canvas (the size and dpi it is saved
at), collects the window extents of the texts that are drawn (titles, axis labels, tick
labels inside the view, legend entries, annotations) and of the legends, and reports

* **clipped** text: a box reaching outside the figure canvas (cut off in the PNG, as
  "elanoma" was in notebook 01's sample grid);
* **overlapping** labels: two text boxes that intersect, or a text under a legend that
  is not the legend's own;
* a legend **covering** a drawn line of its axes (a curve, a reference line), checked
  along each segment every few pixels.

`check_figure(fig)` raises `FigureError` naming every problem; the tests run it on every
figure function of `melalib.plots`. Boxes are axis-aligned (a rotated label's box is its
bounding box), and a tolerance of ``tol`` pixels ignores anti-aliasing slivers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from matplotlib.axis import Tick, XTick
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from .errors import MelalibError

TOLERANCE_PX = 1.0


class FigureError(MelalibError):
    """A figure has clipped or overlapping text."""


@dataclass(frozen=True)
class Problem:
    """One readability problem: ``kind`` is ``clipped`` or ``overlap``."""

    kind: str
    what: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.what}"


def _undrawn_tick_labels(fig: Figure) -> set[int]:
    """Ids of axis texts matplotlib does not draw: every one of an axis turned off
    (``axis("off")``), and tick labels whose tick lies outside the view."""
    hidden: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if not ax.axison or not axis.get_visible():
                hidden.update(id(t) for t in axis.findobj(Text))
    for tick in fig.findobj(Tick):
        axis = tick.axes.xaxis if isinstance(tick, XTick) else tick.axes.yaxis
        lo, hi = sorted(axis.get_view_interval())
        loc = tick.get_loc()
        span = (hi - lo) * 1e-9
        if loc is None or not lo - span <= loc <= hi + span:
            hidden.update({id(tick.label1), id(tick.label2)})
    return hidden


def _shown(artist: Text) -> bool:
    """Whether the artist and every parent it hangs from are visible."""
    return artist.get_visible() and (artist.axes is None or artist.axes.get_visible())


def drawn_texts(fig: Figure) -> Iterator[tuple[Text, Bbox]]:
    """(text, window extent) of every non-empty text the figure draws; draws it first."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    hidden = _undrawn_tick_labels(fig)
    seen: set[int] = set()
    for text in fig.findobj(Text):
        if id(text) in seen or id(text) in hidden or not text.get_text().strip():
            continue
        seen.add(id(text))
        if _shown(text):
            yield text, text.get_window_extent(renderer)


def _label(text: Text) -> str:
    return repr(text.get_text().replace("\n", " ")[:60])


def _intersects(a: Bbox, b: Bbox, tol: float) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tol
            and min(a.y1, b.y1) - max(a.y0, b.y0) > tol)


def _legend_boxes(fig: Figure) -> list[tuple[Legend, Bbox, set[int]]]:
    renderer = FigureCanvasAgg(fig).get_renderer()
    out = []
    for legend in fig.findobj(Legend):
        if legend.get_visible():
            own = {id(t) for t in legend.findobj(Text)}
            out.append((legend, legend.get_window_extent(renderer), own))
    return out


def figure_problems(fig: Figure, tol: float = TOLERANCE_PX) -> list[Problem]:
    """Clipped and overlapping texts, and lines under a legend, of ``fig`` (empty when
    everything reads)."""
    texts = list(drawn_texts(fig))
    canvas = fig.bbox
    problems = []
    for text, box in texts:
        if (box.x0 < canvas.x0 - tol or box.x1 > canvas.x1 + tol
                or box.y0 < canvas.y0 - tol or box.y1 > canvas.y1 + tol):
            problems.append(Problem("clipped", f"{_label(text)} reaches outside the figure"))
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1:]:
            if _intersects(box_a, box_b, tol):
                problems.append(Problem("overlap", f"{_label(a)} overlaps {_label(b)}"))
    for legend, box, own in _legend_boxes(fig):
        for text, tbox in texts:
            if id(text) not in own and _intersects(box, tbox, tol):
                problems.append(Problem("overlap", f"the legend covers {_label(text)}"))
        problems += _covered_lines(legend, box, tol)
    return problems


def _line_points(line: Line2D, step_px: float = 2.0) -> np.ndarray:
    """A line's path in display pixels, with points every ``step_px`` along each segment."""
    xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) < 2:
        return xy
    parts = [xy[:1]]
    for a, b in itertools.pairwise(xy):
        n = max(int(np.hypot(*(b - a)) // step_px), 1) if np.isfinite(step_px) else 1
        parts.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.concatenate(parts)


def _covered_lines(legend: Legend, box: Bbox, tol: float) -> list[Problem]:
    """Lines of the legend's axes (not its own handles) passing under the legend box."""
    ax = legend.axes
    if ax is None or not isinstance(legend.parent, type(ax)):
        return []
    x0, y0, x1, y1 = box.x0 + tol, box.y0 + tol, box.x1 - tol, box.y1 - tol
    out = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        solid = line.get_linestyle() not in ("None", "none", " ", "")
        pts = _line_points(line, step_px=2.0 if solid else np.inf)
        inside = ((pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 1] > y0) & (pts[:, 1] < y1)
                  if len(pts) else np.zeros(0, bool))
        if inside.any():
            out.append(Problem("covered", f"the legend covers the line {line.get_label()!r}"))
    return out


def check_figure(fig: Figure, tol: float = TOLERANCE_PX) -> Figure:
    """``fig`` when every text reads, else `FigureError` listing the problems."""
    problems = figure_problems(fig, tol)
    if problems:
        raise FigureError(f"{len(problems)} text problem(s) in the figure: "
                          + "; ".join(map(str, problems)))
    return fig
