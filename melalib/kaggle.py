"""A folder ready for ``kaggle kernels push``: metadata, a parameterised notebook, a wheel.

Competition kernels run without internet, so melalib travels as a wheel in a Kaggle dataset
and weights (if any) in another. `build_bundle` writes::

    <out>/kernel-metadata.json   id, title, code_file, notebook kernel, private, GPU,
                                 enable_internet false, dataset / competition / model sources
    <out>/<notebook>             the melalib notebook: a first cell installing the wheel
                                 offline, then the notebook with its parameters baked in
                                 (an ``injected-parameters`` cell after ``parameters``)
    <out>/wheel/                 melalib-<version>-py3-none-any.whl + dataset-metadata.json
    <out>/README.md              the upload and push steps

Steps (also in the README written into the bundle)::

    kaggle datasets create -p <out>/wheel          # once; later: kaggle datasets version
    kaggle datasets create -p <weights folder>     # optional: pretrained weights (or a
                                                   # Kaggle Model: weights_model=...)
    kaggle kernels push -p <out>
    kaggle kernels status <kernel_id>
    kaggle kernels output <kernel_id> -p results/
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
import yaml

from .config import RunConfig, field_index, get_preset, load_yaml, resolve
from .errors import ConfigError
from .io import claim_folder, write_json, write_text
from .notebook import notebooks_dir, parameter_names

log = logging.getLogger("melalib")

INPUT_ROOT = "/kaggle/input"
WORKING_DIR = "/kaggle/working"
COMPETITION_DATASETS = {"siim-isic-melanoma-classification": "isic2020"}
INSTALL_TAG = "melalib-install"
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")  # fullmatch
#: `kaggle kernels push` refuses shorter titles ("Title must be at least five characters").
MIN_TITLE = 5
#: Licence names Kaggle's dataset-metadata.json accepts (kaggle-cli docs/datasets_metadata.md,
#: "Licenses"). MIT is not among them: the wheel dataset says "other" and names MIT in its
#: description.
KAGGLE_LICENSES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0",
    "DbCL-1.0", "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL",
    "CC-BY-3.0", "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO",
    "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0",
    "LGPL-3.0", "AGPL-3.0", "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0")
WHEEL_LICENSE = "other"


def slugify(title: str) -> str:
    """Kaggle's slug of a title: lower case, runs of other characters become ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def default_title(kernel_slug: str) -> str:
    """A title whose Kaggle slug is ``kernel_slug`` (Kaggle derives the id from the title)."""
    return kernel_slug.replace("-", " ")


def _model_parts(ref: str) -> tuple[str, str]:
    """``user/model/framework/variation/version/file`` -> (the kernel's ``model_sources``
    entry, the file's path under /kaggle/input)."""
    parts = ref.strip().strip("/").split("/")
    if len(parts) < 6 or not _SLUG.fullmatch("/".join(parts[:2])) or not parts[4].isdigit():
        raise ConfigError("weights_model must be a Kaggle Model file 'user/model/framework/"
                          f"variation/version/file' (version a number), got {ref!r}")
    # Kaggle mounts a model version at /kaggle/input/<model>/<framework>/<variation>/<version>
    return "/".join(parts[:5]), "/".join(parts[1:])


def _dataset_parts(ref: str, what: str) -> tuple[str, str]:
    """``user/slug[/path/in/dataset]`` -> (``user/slug``, ``path/in/dataset`` or "")."""
    parts = ref.strip().strip("/").split("/")
    owner_slug = "/".join(parts[:2])
    if len(parts) < 2 or not _SLUG.fullmatch(owner_slug):
        raise ConfigError(f"{what} must be a Kaggle dataset 'user/dataset-slug', got {ref!r}")
    return owner_slug, "/".join(parts[2:])


def baked_parameters(competition: str, weights_dataset: str | None, enable_gpu: bool,
                     kernel_slug: str, input_root: str = INPUT_ROOT,
                     parameters: Mapping[str, Any] | None = None, *,
                     weights_model: str | None = None) -> dict[str, Any]:
    """The parameters written into the kernel notebook: Kaggle paths and devices first,
    then ``parameters`` (strings like ``"15"`` or ``"true"`` are read as YAML scalars).
    Weights (a dataset or a Kaggle Model file) need the backbone they were made for, named
    explicitly: the notebook's default backbone would not load them."""
    baked: dict[str, Any] = {
        "data_dir": f"{input_root}/{competition}",
        "output_dir": f"{WORKING_DIR}/outputs",
        "name": kernel_slug,
        "num_workers": 2,
        "device": "cuda" if enable_gpu else "cpu",
    }
    if competition in COMPETITION_DATASETS:
        baked["dataset"] = COMPETITION_DATASETS[competition]
    if enable_gpu:
        baked["amp_dtype"] = "fp16"  # Kaggle's T4 / P100 have no bf16
    if weights_dataset and weights_model:
        raise ConfigError("give weights_dataset or weights_model, not both")
    if weights_dataset:
        slug, file = _dataset_parts(weights_dataset, "weights_dataset")
        if file:
            baked["pretrained_path"] = f"{input_root}/{slug.split('/')[1]}/{file}"
    if weights_model:
        baked["pretrained_path"] = f"{input_root}/{_model_parts(weights_model)[1]}"
    for key, value in dict(parameters or {}).items():
        baked[key] = _scalar(value)
    preset = get_preset(str(baked["preset"])) if baked.get("preset") else {}
    if baked.get("pretrained_path") and "backbone" not in {**preset, **baked}:
        raise ConfigError("pretrained weights are baked but no backbone: pass -p backbone=<the "
                          "timm model the weights were made for> (the notebook's default "
                          "would not load them)")
    unknown = sorted(set(baked) - parameter_names())
    if unknown:
        raise ConfigError(f"unknown notebook parameter(s) {unknown}; use config fields "
                          "(melalib.config) or melalib.notebook.EXTRA_PARAMETERS")
    if weights_dataset and not baked.get("pretrained_path"):
        raise ConfigError("weights_dataset names no file: pass it as user/dataset/file.pth or "
                          f"set pretrained_path={input_root}/<dataset-slug>/<file>")
    bundle_config(baked)  # fail early
    return baked


def bundle_config(baked: Mapping[str, Any]) -> RunConfig:
    """The config the kernel will train: the baked ``preset`` under the baked parameters,
    resolved as the notebook resolves them (`melalib.config.resolve`)."""
    fields = field_index()
    return resolve([("kaggle bundle", {k: v for k, v in baked.items() if k in fields})],
                   str(baked.get("preset") or ""))


def _scalar(value: Any) -> Any:
    if not isinstance(value, str):
        return list(value) if isinstance(value, tuple) else value
    try:
        parsed = load_yaml(value)  # aliases refused: a value never expands
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, (bool, int, float)) else value


def install_cell(wheel_dataset: str, input_root: str = INPUT_ROOT) -> nbformat.NotebookNode:
    """The first cell: melalib from the attached wheel dataset, offline, without deps."""
    slug = _dataset_parts(wheel_dataset, "wheel_dataset")[0].split("/")[1]
    cell = nbformat.v4.new_code_cell(
        "# Competition kernels run without internet: melalib comes from the attached dataset\n"
        f"# {wheel_dataset}. Kaggle preinstalls torch, timm, albumentations, pandas, ...,\n"
        "# hence --no-deps (attach wheels of anything missing, e.g. grad-cam for 05).\n"
        f"%pip install --no-index --no-deps {input_root}/{slug}/melalib-*.whl")
    cell.metadata["tags"] = [INSTALL_TAG]
    return cell


def bundle_notebook(notebook: str | Path, parameters: Mapping[str, Any], wheel_dataset: str,
                    input_root: str = INPUT_ROOT) -> nbformat.NotebookNode:
    """The kernel notebook: install cell, then ``notebook`` parameterised papermill-style
    (kernelspec kept: Kaggle runs pushed notebooks with papermill)."""
    # papermill (the Jupyter stack) only when a bundle is built
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook  # the Jupyter stack

    path = Path(notebook)
    if not path.is_file():
        path = notebooks_dir() / path.name
    nb = load_notebook_node(str(path))  # papermill's reader: adds the metadata it expects
    if not nb.metadata.get("kernelspec"):
        raise ConfigError(f"{path} has no kernelspec; Kaggle's papermill run needs one")
    nb = parameterize_notebook(nb, dict(parameters), report_mode=False)
    nb.cells.insert(0, install_cell(wheel_dataset, input_root))
    for i, cell in enumerate(nb.cells):
        cell["id"] = cell.get("id") or f"kaggle-{i:02d}"
        for key in ("tags", "papermill"):
            if not cell.metadata.get(key):
                cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(nb)
    return nb


def check_weights(backbone: str, weights_file: str | Path) -> None:
    """Load a local copy of the weights into ``backbone`` (ConfigError when they do not fit),
    so a mismatch shows at bundle time, not hours into a Kaggle session."""
    from .models import create_backbone  # timm: only --weights-file needs it

    try:
        create_backbone(backbone, pretrained=True, pretrained_path=str(weights_file))
    except ConfigError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"weights_file {weights_file} does not fit the baked backbone "
                          f"{backbone!r} (-p backbone=...): {first}") from None


def build_wheel(dest: str | Path, root: str | Path | None = None) -> Path:
    """Build melalib's wheel into ``dest`` from the checkout this melalib comes from.

    The sources are copied to a temporary folder first (no ``build/`` left in the checkout,
    no stale files, only the numbered notebooks); `setup.py`'s build hook puts them,
    stripped, into ``melalib/notebooks/`` so the wheel ships them as package data.
    ``root``: another source tree (default: this melalib's checkout).
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "melalib"' not in pyproject.read_text():
        raise ConfigError(f"building the wheel needs a melalib source checkout; {root} is not "
                          "one (pass build_wheel=False and upload a wheel you built)")
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("melalib-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="melalib-wheel-") as tmp:
        stage = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
        shutil.copytree(root / "melalib", stage / "melalib", ignore=ignore)
        (stage / "notebooks").mkdir()
        for notebook in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            shutil.copy2(notebook, stage / "notebooks" / notebook.name)
        for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
            if (root / name).is_file():
                shutil.copy2(root / name, stage / name)
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
               str(dest), str(stage)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                   "--no-index", "-w", str(dest), str(stage)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(f"building the melalib wheel failed:\n{done.stderr[-2000:]}")
    wheels = sorted(dest.glob("melalib-*.whl"))
    if len(wheels) != 1:
        raise ConfigError(f"expected one melalib wheel in {dest}, found {wheels}")
    return wheels[0]


def build_bundle(out: str | Path, kernel_id: str, title: str | None = None,
                 notebook: str = "03_train.ipynb",
                 competition: str = "siim-isic-melanoma-classification",
                 weights_dataset: str | None = None, wheel_dataset: str | None = None,
                 enable_gpu: bool = True, parameters: Mapping[str, Any] | None = None, *,
                 weights_model: str | None = None, weights_file: str | Path | None = None,
                 input_root: str = INPUT_ROOT, with_wheel: bool = True) -> Path:
    """Write a Kaggle kernel bundle into ``out`` and return ``out``.

    ``kernel_id``: ``user/kernel-slug``; ``wheel_dataset``: ``user/dataset-slug`` that will
    hold the wheel (required); ``title``: default `default_title` (its slug is the kernel
    slug); ``weights_dataset``: ``user/dataset-slug/file.pth`` of pretrained weights, or
    ``weights_model``: ``user/model/framework/variation/version/file`` of a Kaggle Model
    (either is baked as ``pretrained_path`` and needs ``parameters["backbone"]``);
    ``weights_file``: a local copy of those weights, loaded into the backbone now to check
    that they fit; ``parameters``: notebook parameters
    on top of the Kaggle defaults (``data_dir=/kaggle/input/<competition>``,
    ``output_dir=/kaggle/working/outputs``, ``device``, ``amp_dtype=fp16`` on GPU);
    ``input_root``: where Kaggle mounts datasets (tests point it at a local folder);
    ``with_wheel``: build the wheel into ``out/wheel/``.

    Then: ``kaggle datasets create -p <out>/wheel``, (weights dataset), ``kaggle kernels
    push -p <out>`` - see the README.md written into ``out``.
    """
    if not _SLUG.fullmatch(kernel_id or ""):
        raise ConfigError(f"kernel_id must be 'user/kernel-slug' (lower case, digits, '-'), "
                          f"got {kernel_id!r}")
    if len(title or default_title(kernel_id.split("/")[1])) < MIN_TITLE:
        raise ConfigError(f"kernel_id {kernel_id!r}: Kaggle derives the kernel slug from its "
                          f"title and refuses titles under {MIN_TITLE} characters (kaggle "
                          "kernels push: 'Title must be at least five characters'); use a "
                          "longer slug or pass a --title of that slug")
    if not wheel_dataset:
        raise ConfigError("wheel_dataset is required: the Kaggle dataset ('user/slug') that "
                          "holds the melalib wheel (kernels run without internet)")
    wheel_ref = _dataset_parts(wheel_dataset, "wheel_dataset")[0]
    weights_ref = _dataset_parts(weights_dataset, "weights_dataset")[0] if weights_dataset \
        else None
    kernel_slug = kernel_id.split("/")[1]
    title = title or default_title(kernel_slug)
    if slugify(title) != kernel_slug:
        log.warning("Kaggle derives a kernel's slug from its title: %r gives %r, not %r; the "
                    "pushed kernel may get another id", title, slugify(title), kernel_slug)
    params = baked_parameters(competition, weights_dataset, enable_gpu, kernel_slug,
                              input_root, parameters, weights_model=weights_model)
    if weights_file:
        check_weights(bundle_config(params).model.backbone, weights_file)
    name = Path(notebook).name
    nb = bundle_notebook(notebook, params, wheel_ref, input_root)
    out = claim_folder(out, "kaggle-bundle", overwrite=True, subfolders=("wheel",))
    write_text(out / name, nbformat.writes(nb) + "\n")
    write_json(out / "kernel-metadata.json", {
        "id": kernel_id, "title": title, "code_file": name, "language": "python",
        "kernel_type": "notebook", "is_private": True, "enable_gpu": bool(enable_gpu),
        "enable_tpu": False, "enable_internet": False,
        "dataset_sources": [wheel_ref, *([weights_ref] if weights_ref else [])],
        "competition_sources": [competition], "kernel_sources": [],
        "model_sources": [_model_parts(weights_model)[0]] if weights_model else [],
    })
    wheel_dir = out / "wheel"
    if with_wheel:
        build_wheel(wheel_dir)
    wheel_dir.mkdir(exist_ok=True)
    write_json(wheel_dir / "dataset-metadata.json", {
        "title": f"melalib wheel ({wheel_ref.split('/')[1]})"[:50], "id": wheel_ref,
        "licenses": [{"name": WHEEL_LICENSE}],
        "description": "The melalib Python wheel, installed offline by melalib's Kaggle "
                       "kernels. Licence: MIT (the package's own licence; Kaggle's list has "
                       "no MIT entry, hence 'other')."})
    write_text(out / "README.md", _readme(kernel_id, name, competition, wheel_ref,
                                          weights_ref, params,
                                          _model_parts(weights_model)[0] if weights_model
                                          else None))
    return out


def _readme(kernel_id: str, notebook: str, competition: str, wheel_ref: str,
            weights_ref: str | None, params: Mapping[str, Any],
            model_ref: str | None = None) -> str:
    baked = "\n".join(f"    {k} = {v!r}" for k, v in params.items())
    weights = (f"2. Publish the pretrained weights as the Kaggle Model `{model_ref}` (it is "
               "attached through `model_sources`).\n" if model_ref else
               f"2. Upload the pretrained weights as the dataset `{weights_ref}` "
               f"(`kaggle datasets create -p <folder with the weights and a "
               f"dataset-metadata.json>`).\n" if weights_ref else
               "2. (No weights dataset: the backbone trains from scratch or uses "
               "`pretrained_path` from another attached dataset.)\n")
    return f"""# Kaggle kernel bundle: {kernel_id}

Competition kernels of `{competition}` run **without internet**, so melalib comes from a
dataset holding its wheel and is installed offline by the notebook's first cell
(`pip install --no-index --no-deps`; torch, timm and albumentations are preinstalled).

1. Upload the wheel (first time; `kaggle datasets version -p wheel -m "melalib update"`
   afterwards):

       kaggle datasets create -p wheel

{weights}3. Push and run the kernel (GPU and internet settings are in `kernel-metadata.json`):

       kaggle kernels push -p .
       kaggle kernels status {kernel_id}
       kaggle kernels output {kernel_id} -p results/

The notebook `{notebook}` is melalib's, with these parameters baked in after its
`parameters` cell (Kaggle executes it with papermill):

{baked}

Change them by rebuilding: `melalib kaggle-bundle ... -p key=value`.
"""
