"""Regenerate the documentation figures (docs/figures/*.png) from code, with a manifest.

    python benchmarks/docs_figures.py [--data ../shared/data] [--demo outputs/demo]
                                      [--milk10k outputs/milk10k_fold0]
                                      [--ham10000 outputs/ext/ham_base]
                                      [--ham10000-guided outputs/ext/ham_guided]
                                      [--out docs/figures]

Each figure is drawn by `melalib.plots` (the same calls the notebooks make):

* ``{ham10000,isic2020}_{class_balance,age_by_label,site_by_label}.png``: the EDA figures
  of the real tables in ``--data`` (skipped, entries kept, when the folder is absent);
* ``aspect.png``: one HAM10000 image under each ``aspect`` setting;
* ``demo_04_roc.png``: notebook 04's ROC curve of the candidate it evaluates in
  ``melalib demo`` (``ensemble_method=best``), redrawn from ``demo_04_roc_oof.csv`` (the
  chosen candidate's OOF scores, written from a demo run given by ``--demo``);
* ``demo_05_cam_true_positives.png``: notebook 05's Grad-CAM figure of the true positives,
  drawn from the demo run given by ``--demo`` (it needs the run's checkpoints);
* ``milk10k_gradcam_pair.png`` and ``milk10k_confusion.png``: notebook 05's Grad-CAM of
  both images of MILK10k lesions and notebook 04's confusion matrix, copied from the
  ``figures/`` of the MILK10k run given by ``--milk10k`` after notebooks 04 and 05 ran on it
  with the papermill commands of README's "The notebooks on the real MILK10k pairs" (the
  PNGs are the notebooks' own; the manifest records the run they came from);
* ``ham10000_gradcam_masks.png``: notebook 05's Grad-CAM of a HAM10000 run's most confident
  errors with the true lesion masks outlined and each map's concentration and pointing,
  copied from the ``figures/`` of the run given by ``--ham10000`` after notebook 05 ran on
  it with ``-p masks ../shared/data/ham10000/masks_200x150`` (README: Explanations you can check);
* ``ham10000_gradcam_masks_guided.png``: the same figure of a ``cam_guidance`` run given by
  ``--ham10000-guided``, notebook 05 run with ``-p cam_layer pooled`` (the guided map).

``figures.json`` records, per figure: the SHA-256 of its inputs, ``code`` (a SHA-256 of
the code that draws it: `melalib/plots.py`, the notebook helpers it goes through and this
script), the matplotlib version, the PNG's size and a 32 x 32 greyscale thumbnail. The
tests (tests/test_docs_figures.py) compare ``code`` with the current code, the committed
PNGs with their thumbnails, and redraw what they can (the ROC curve; the EDA figures when
the real data are present) with a tolerant pixel check, since exact PNG bytes differ
between matplotlib / FreeType builds (matplotlib is pinned in
requirements/constraints.txt).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image

from melalib import notebook, plots
from melalib.io import write_csv, write_json

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "figures"
DATA = REPO.parent / "shared" / "data"
MANIFEST = "figures.json"
ROC_OOF = "demo_04_roc_oof.csv"
ASPECT_IMAGE = "ham10000/images_200x150/ISIC_0024306.jpg"
THUMB = 32
EDA = {"class_balance": plots.class_balance_plot, "age_by_label": plots.age_by_label_plot,
       "site_by_label": plots.site_by_label_plot}
#: The helpers notebook 05's lesion-mask figure goes through.
_MASKED_CAMS = (notebook.show_masked_cams, notebook.mask_captions, notebook.case_heading,
                notebook.operating_point, notebook.layer_note)
#: The notebook helpers each demo figure goes through (hashed with plots.py).
HELPERS: dict[str, tuple[Callable[..., Any], ...]] = {
    "demo_04_roc.png": (notebook.curve_figures,),
    "demo_05_cam_true_positives.png": (notebook.show_cams, notebook.cam_captions,
                                       notebook.operating_point, notebook.layer_note),
    "milk10k_gradcam_pair.png": (notebook.show_pair_cams, notebook.pair_captions,
                                 notebook.case_heading, notebook.operating_point,
                                 notebook.layer_note),
    "milk10k_confusion.png": (notebook.operating_point,),
    "ham10000_gradcam_masks.png": _MASKED_CAMS,
    "ham10000_gradcam_masks_guided.png": _MASKED_CAMS,
}
#: docs figure -> the notebook figure of a MILK10k run it is a copy of (`copy_run_figures`).
MILK10K = {"milk10k_gradcam_pair.png": "05_cam_pairs.png",
           "milk10k_confusion.png": "04_confusion.png"}
#: docs figure -> the notebook figure of a HAM10000 run it is a copy of (`copy_run_figures`).
HAM10000 = {"ham10000_gradcam_masks.png": "05_cam_lesion_masks.png"}
#: The same figure of a run trained with cam_guidance (notebook 05 at -p cam_layer pooled).
HAM10000_GUIDED = {"ham10000_gradcam_masks_guided.png": "05_cam_lesion_masks.png"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_hash(name: str) -> str:
    """SHA-256 of the code that draws figure ``name``: plots.py, its notebook helpers'
    source and this script."""
    h = hashlib.sha256()
    for path in (REPO / "melalib" / "plots.py", Path(__file__).resolve()):
        h.update(path.read_bytes())
    for fn in HELPERS.get(name, ()):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()


def thumbnail(png: Path) -> str:
    """The PNG as a ``THUMB`` x ``THUMB`` greyscale image (box-averaged over a white
    background), as hex (one byte per pixel, rows in order)."""
    with Image.open(png) as im:
        rgba = im.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        small = flat.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    return bytes(np.asarray(small, dtype=np.uint8).ravel()).hex()


def pixel_size(png: Path) -> list[int]:
    with Image.open(png) as im:
        return list(im.size)


def thumb_distance(a: str, b: str) -> float:
    """Mean absolute difference of two `thumbnail` values, in grey levels (0-255)."""
    pa, pb = (np.frombuffer(bytes.fromhex(x), dtype=np.uint8).astype(int) for x in (a, b))
    return float(np.mean(np.abs(pa - pb)))


def read_manifest(out: Path = OUT) -> dict[str, dict[str, Any]]:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def entry(out: Path, name: str, inputs: dict[str, str], note: str) -> dict[str, Any]:
    png = out / name
    return {"inputs": inputs, "code": code_hash(name), "matplotlib": matplotlib.__version__,
            "size": pixel_size(png), "thumbnail": thumbnail(png), "made_by": note}


def draw_eda(data: Path, out: Path) -> dict[str, dict[str, Any]]:
    """The six EDA figures of the real HAM10000 and ISIC 2020 tables."""
    from melalib.data.sources.ham10000 import load_ham10000
    from melalib.data.sources.isic2020 import load_isic2020

    made = {}
    for dataset, loader, files in (
            ("ham10000", load_ham10000, ["HAM10000_metadata.csv"]),
            ("isic2020", load_isic2020, ["train.csv", "test.csv"])):
        table = loader(data / dataset)
        inputs = {f"{dataset}/{f}": sha256(data / dataset / f) for f in files}
        for kind, plot in EDA.items():
            name = f"{dataset}_{kind}.png"
            plot(table.train, table.task, save=out / name)
            made[name] = entry(out, name, inputs, f"plots.{plot.__name__} of the {dataset} "
                               "table's training rows")
    return made


def draw_aspect(data: Path, out: Path) -> dict[str, dict[str, Any]]:
    image = data / ASPECT_IMAGE
    plots.aspect_plot(image, size=128, save=out / "aspect.png")
    return {"aspect.png": entry(out, "aspect.png", {ASPECT_IMAGE: sha256(image)},
                                "plots.aspect_plot(size=128)")}


def write_roc_inputs(demo: Path, out: Path) -> str:
    """``demo_04_roc_oof.csv``: the OOF scores notebook 04 evaluates in a demo run (the
    best candidate); returns the candidate's label."""
    from melalib.demo import RUN_NAME
    from melalib.ensemble import blend

    chosen = blend([demo / RUN_NAME, demo / f"{RUN_NAME}_meta_only"], "best")
    oof = chosen.oof[["image_id", "group_id", "label", *chosen.task.prob_columns]]
    write_csv(out / ROC_OOF, oof.assign(candidate=chosen.label))
    return chosen.label


def draw_roc(out: Path) -> dict[str, dict[str, Any]]:
    """notebook 04's ROC figure (`notebook.curve_figures`, as the demo calls it: 200
    bootstrap resamples of patients) from ``demo_04_roc_oof.csv``."""
    from melalib.tasks import MELANOMA

    oof = pd.read_csv(out / ROC_OOF, dtype={"image_id": str, "group_id": str})
    roc = notebook.curve_figures(MELANOMA, oof["label"], oof["prob_melanoma"],
                                 groups=oof["group_id"], n_boot=200,
                                 name=str(oof["candidate"].iloc[0]))[0]
    roc.savefig(out / "demo_04_roc.png", dpi=plots.DPI)
    return {"demo_04_roc.png": entry(out, "demo_04_roc.png", {ROC_OOF: sha256(out / ROC_OOF)},
                                     "notebook.curve_figures of demo_04_roc_oof.csv")}


def draw_cam(demo: Path, out: Path) -> dict[str, dict[str, Any]]:
    """notebook 05's true-positive Grad-CAM figure, drawn from a demo run's checkpoints as
    the notebook draws it (`notebook.show_cams` at `notebook.operating_point`, 8 cases)."""
    from melalib.demo import RUN_NAME
    from melalib.runs import RunDir

    name = "demo_05_cam_true_positives.png"
    run = RunDir.read(demo / RUN_NAME)
    point = notebook.operating_point(run.task, run.oof())
    notebook.show_cams(run.path, "tp", top=8, threshold=point, device="cpu", save=out / name)
    config = run.load_config()
    inputs = {"demo OOF predictions": sha256(run.oof_path()),
              "demo config fingerprint": config.fingerprint() if config else ""}
    return {name: entry(out, name, inputs, "notebook.show_cams(kind='tp', top=8) of the "
                        "melalib demo run, at notebook.operating_point")}


def copy_run_figures(run_dir: Path, out: Path, figures: dict[str, str], what: str,
                     where: str) -> dict[str, dict[str, Any]]:
    """``figures`` (docs name -> notebook PNG): the notebooks' own PNGs of the run
    ``run_dir`` (its ``figures/``), copied; the inputs are the run's OOF predictions and
    config; ``what`` names the run and ``where`` the README section with its commands."""
    from melalib.runs import RunDir

    run = RunDir.read(run_dir)
    config = run.load_config()
    oof = [run.oof_path()] if run.complete else [run.oof_path(k) for k in run.done_folds()]
    inputs = {f"{what} run {path.name}": sha256(path) for path in oof}
    inputs[f"{what} run config fingerprint"] = config.fingerprint() if config else ""
    made = {}
    for name, source in figures.items():
        (out / name).write_bytes((run.figures_dir() / source).read_bytes())
        made[name] = entry(out, name, inputs, f"notebook {source[:2]}'s {source} of the {what} "
                           f"run (README: {where})")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the real data folder")
    parser.add_argument("--demo", type=Path, default=None,
                        help="a finished `melalib demo` folder: refresh the demo figures")
    parser.add_argument("--milk10k", type=Path, default=None,
                        help="a MILK10k run that notebooks 04 and 05 ran on: copy its figures")
    parser.add_argument("--ham10000", type=Path, default=None,
                        help="a HAM10000 run that notebook 05 ran on with masks: copy its figure")
    parser.add_argument("--ham10000-guided", type=Path, default=None,
                        help="a HAM10000 cam_guidance run that notebook 05 ran on with masks "
                        "and -p cam_layer pooled: copy its figure")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / MANIFEST
    old = read_manifest(args.out)
    made: dict[str, Any] = {}
    if args.data.is_dir():
        made |= draw_eda(args.data, args.out) | draw_aspect(args.data, args.out)
    else:
        print(f"{args.data} is absent: the EDA and aspect figures are kept as they are",
              file=sys.stderr)
    if args.demo is not None:
        print(f"demo candidate: {write_roc_inputs(args.demo, args.out)}")
        made |= draw_cam(args.demo, args.out)
    if args.milk10k is not None:
        made |= copy_run_figures(args.milk10k, args.out, MILK10K, "MILK10k",
                                 "The notebooks on the real MILK10k pairs")
    if args.ham10000 is not None:
        made |= copy_run_figures(args.ham10000, args.out, HAM10000, "HAM10000",
                                 "Explanations you can check")
    if args.ham10000_guided is not None:
        made |= copy_run_figures(args.ham10000_guided, args.out, HAM10000_GUIDED,
                                 "HAM10000 cam_guidance", "Explanations you can check")
    if (args.out / ROC_OOF).is_file():
        made |= draw_roc(args.out)
    manifest = {name: made.get(name, old.get(name)) for name in sorted(set(old) | set(made))}
    write_json(manifest_path, manifest)
    print(f"wrote {len(made)} figure(s) and {manifest_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
