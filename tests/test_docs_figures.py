"""The committed documentation figures (docs/figures) match what their generator,
benchmarks/docs_figures.py, draws with the current code (issue 23: the site figures were
stale, drawn in tab20 red/green after the code had moved to Okabe-Ito).

Exact PNG bytes differ between matplotlib / FreeType builds, so the checks are: the
manifest's code hash equals the current code's, each PNG still matches its recorded
32 x 32 thumbnail, and what can be redrawn here (the ROC curve always, the EDA and aspect
figures when ../shared/data is present) is redrawn and compared with a tolerance."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"
#: Mean grey-level difference (0-255) of two 32 x 32 thumbnails still counted as the same
#: figure: font rasterisation moves a few levels; a changed colour or layout moves tens.
TOLERANCE = 3.0


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_figures",
                                                  REPO / "benchmarks" / "docs_figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_figures"] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()
MANIFEST = gen.read_manifest(FIGURES)
REGENERATE = "regenerate them: python benchmarks/docs_figures.py --demo outputs/demo"


def test_every_docs_figure_has_a_manifest_entry_and_is_referenced() -> None:
    pngs = {p.name for p in FIGURES.glob("*.png")}
    assert pngs == set(MANIFEST), f"figures without an entry or entries without a figure; " \
        f"{REGENERATE}"
    docs = "\n".join(p.read_text() for p in [REPO / "README.md", *REPO.glob("docs/*.md")])
    referenced = set(re.findall(r"figures/([\w.-]+\.png)", docs))
    assert referenced <= pngs, referenced - pngs


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_docs_figure_was_drawn_by_the_current_code(name: str) -> None:
    entry = MANIFEST[name]
    assert entry["code"] == gen.code_hash(name), (
        f"docs/figures/{name} was drawn by other code than melalib/plots.py and the "
        f"generator now hold; {REGENERATE}")
    assert gen.pixel_size(FIGURES / name) == entry["size"]
    assert gen.thumb_distance(gen.thumbnail(FIGURES / name), entry["thumbnail"]) == 0.0, \
        f"docs/figures/{name} was replaced without its manifest entry; {REGENERATE}"


def _same_picture(made: Path, committed: Path) -> None:
    assert gen.pixel_size(made) == gen.pixel_size(committed)
    distance = gen.thumb_distance(gen.thumbnail(made), gen.thumbnail(committed))
    assert distance <= TOLERANCE, f"{committed.name} differs from its redrawing by " \
        f"{distance:.1f} grey levels; {REGENERATE}"


def test_roc_figure_redraws_the_same(tmp_path: Path) -> None:
    (tmp_path / gen.ROC_OOF).write_bytes((FIGURES / gen.ROC_OOF).read_bytes())
    assert MANIFEST["demo_04_roc.png"]["inputs"] == {gen.ROC_OOF: gen.sha256(
        FIGURES / gen.ROC_OOF)}
    gen.draw_roc(tmp_path)
    _same_picture(tmp_path / "demo_04_roc.png", FIGURES / "demo_04_roc.png")


@pytest.mark.realdata
def test_real_data_figures_redraw_the_same(tmp_path: Path, shared_data: Path) -> None:
    made = gen.draw_eda(shared_data, tmp_path) | gen.draw_aspect(shared_data, tmp_path)
    for name, entry in made.items():
        assert entry["inputs"] == MANIFEST[name]["inputs"], f"{name}: the data changed"
        _same_picture(tmp_path / name, FIGURES / name)


def test_pixel_check_notices_a_changed_figure(tmp_path: Path) -> None:
    """The tolerance is not so loose that the stale tab20 site figure would pass."""
    from PIL import Image

    committed = FIGURES / "isic2020_site_by_label.png"
    with Image.open(committed) as im:
        shifted = im.convert("RGB").point(lambda v: 255 - v if v < 200 else v)
        shifted.save(tmp_path / "changed.png")
    with pytest.raises(AssertionError, match="grey levels"):
        _same_picture(tmp_path / "changed.png", committed)
