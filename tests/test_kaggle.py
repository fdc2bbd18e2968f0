"""Kaggle kernel bundles: metadata, the offline install cell, baked parameters, the wheel,
and the bundled notebook executing headless the way Kaggle runs it (papermill, no
parameters) against local stand-ins for /kaggle/input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import nbformat
import pytest

from melalib import cli
from melalib.errors import ConfigError
from melalib.kaggle import (
    INSTALL_TAG,
    KAGGLE_LICENSES,
    build_bundle,
    build_wheel,
    default_title,
    slugify,
)
from melalib.presets import PRESETS

COMPETITION = "siim-isic-melanoma-classification"


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _injected(nb: nbformat.NotebookNode) -> dict[str, Any]:
    """The injected-parameters cell, executed into a dict, and its position checks."""
    tags = [_tags(c) for c in nb.cells]
    i = next(k for k, t in enumerate(tags) if "injected-parameters" in t)
    assert "parameters" in tags[i - 1], "the injected cell must follow the parameters cell"
    assert sum("injected-parameters" in t for t in tags) == 1
    ns: dict[str, Any] = {}
    exec(nb.cells[i].source, ns)
    ns.pop("__builtins__")
    return ns


def test_bundle_structure(tmp_path: Path) -> None:
    out = build_bundle(tmp_path / "bundle", "alice/melalib-isic-train", "melalib ISIC train",
                       weights_dataset="alice/effnet-weights/b3/model.pth",
                       wheel_dataset="alice/melalib-wheel", enable_gpu=True,
                       parameters={"epochs": "15", "backbone": "tf_efficientnet_b3.ns_jft_in1k",
                                   "pretrained": "true", "image_size": 384},
                       with_wheel=False)
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta == {
        "id": "alice/melalib-isic-train", "title": "melalib ISIC train",
        "code_file": "03_train.ipynb", "language": "python", "kernel_type": "notebook",
        "is_private": True, "enable_gpu": True, "enable_tpu": False, "enable_internet": False,
        "dataset_sources": ["alice/melalib-wheel", "alice/effnet-weights"],
        "competition_sources": [COMPETITION], "kernel_sources": [], "model_sources": []}
    nb = nbformat.read(out / "03_train.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    first = nb.cells[0]
    assert first.cell_type == "code" and INSTALL_TAG in _tags(first)
    assert ("%pip install --no-index --no-deps /kaggle/input/melalib-wheel/melalib-*.whl"
            in first.source)
    params = _injected(nb)
    assert params["data_dir"] == f"/kaggle/input/{COMPETITION}"
    assert params["output_dir"] == "/kaggle/working/outputs"
    assert params["pretrained_path"] == "/kaggle/input/effnet-weights/b3/model.pth"
    assert params["dataset"] == "isic2020" and params["device"] == "cuda"
    assert params["amp_dtype"] == "fp16"
    assert params["epochs"] == 15 and params["pretrained"] is True  # CLI strings parsed
    assert params["image_size"] == 384 and params["name"] == "melalib-isic-train"
    assert all(c.outputs == [] for c in nb.cells if c.cell_type == "code")
    readme = (out / "README.md").read_text()
    for command in ("kaggle datasets create -p wheel", "kaggle kernels push -p .",
                    "kaggle kernels status alice/melalib-isic-train"):
        assert command in readme
    wheel_meta = json.loads((out / "wheel" / "dataset-metadata.json").read_text())
    assert wheel_meta["id"] == "alice/melalib-wheel"


def test_bundle_without_gpu_or_weights(tmp_path: Path) -> None:
    out = build_bundle(tmp_path / "b", "bob/eda-run", "EDA run", notebook="01_eda.ipynb",
                       competition="some-competition", wheel_dataset="bob/wheel",
                       enable_gpu=False, with_wheel=False)
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["enable_gpu"] is False and meta["enable_internet"] is False
    assert meta["dataset_sources"] == ["bob/wheel"] and meta["code_file"] == "01_eda.ipynb"
    params = _injected(nbformat.read(out / "01_eda.ipynb", as_version=4))
    assert params["device"] == "cpu" and "amp_dtype" not in params
    assert "dataset" not in params  # unknown competition: the notebook's default stays
    assert params["data_dir"] == "/kaggle/input/some-competition"


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_id="no-slash"), "kernel_id"),
    (dict(kernel_id="alice/k-one\n"), "kernel_id"),  # '$' matched before a final newline
    (dict(wheel_dataset=None), "wheel_dataset is required"),
    (dict(wheel_dataset="justaname"), "wheel_dataset"),
    (dict(parameters={"epoch": 3}), "unknown notebook parameter"),
    (dict(parameters={"epochs": 0}), "epochs must be >= 1"),
    (dict(weights_dataset="alice/weights"), "names no file"),
    # one lower-case character is a valid slug shape; Kaggle refuses the short title
    (dict(kernel_id="alice/k", title=None), "refuses titles under 5 characters"),
])
def test_bad_bundle_requests_raise(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = dict(kernel_id="alice/k-one", title="k one",
                                wheel_dataset="alice/wheel", with_wheel=False)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        build_bundle(tmp_path / "b", **args)
    assert not (tmp_path / "b" / "kernel-metadata.json").exists()


def test_cli_kaggle_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    import melalib.kaggle as kaggle

    monkeypatch.setattr(kaggle, "build_wheel", lambda dest: Path(dest))
    rc = cli.main(["kaggle-bundle", str(tmp_path / "b"), "--kernel-id", "me/melalib-run",
                   "--wheel-dataset", "me/melalib-wheel", "--no-gpu", "-p", "epochs=2",
                   "-p", "fold=0"])
    assert rc == 0 and str(tmp_path / "b") in capsys.readouterr().out
    params = _injected(nbformat.read(tmp_path / "b" / "03_train.ipynb", as_version=4))
    assert params["epochs"] == 2 and params["fold"] == 0 and params["device"] == "cpu"


def test_slugify_matches_kaggle_rules() -> None:
    assert slugify("melalib ISIC 2020 training") == "melalib-isic-2020-training"
    assert slugify("  A -- b!c ") == "a-b-c"


def test_bundled_notebook_runs_headless_like_kaggle(tmp_path: Path) -> None:
    """Build the bundle with a real wheel, mount it under a local input root, and execute
    the notebook with papermill and no parameters, as Kaggle does. pip runs with
    --dry-run so the test environment's editable melalib stays in place."""
    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS["tiny"].items()}
    inputs = tmp_path / "input"
    out = build_bundle(
        tmp_path / "bundle", "me/melalib-tiny", "melalib tiny", wheel_dataset="me/melalib-wheel",
        enable_gpu=False, input_root=str(inputs),
        parameters={**tiny, "dataset": "synthetic", "data_dir": str(tmp_path / "data"),
                    "output_dir": str(tmp_path / "working"), "fold": 0,
                    "max_steps_per_epoch": 1})
    wheels = list((out / "wheel").glob("melalib-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
    assert {"melalib/__init__.py", "melalib/engine.py", "melalib/notebook.py",
            "melalib/notebooks/03_train.ipynb"} <= names
    assert not any("__pycache__" in n for n in names)
    (inputs / "melalib-wheel").mkdir(parents=True)
    shutil.copy2(wheels[0], inputs / "melalib-wheel" / wheels[0].name)

    nb = nbformat.read(out / "03_train.ipynb", as_version=4)
    install = nb.cells[0]
    assert f"{inputs}/melalib-wheel/melalib-*.whl" in install.source
    install.source = install.source.replace("pip install", "pip install --dry-run")
    runnable = tmp_path / "kernel.ipynb"
    nbformat.write(nb, runnable)
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(runnable), str(tmp_path / "executed.ipynb"),
         "--no-progress-bar"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MELALIB_PROGRESS": "0"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    pip_out = "".join(o.get("text", "") for o in executed.cells[0].outputs)
    assert "Would install melalib" in pip_out, pip_out
    run = tmp_path / "working" / "melalib-tiny"
    assert (run / "oof_fold0.csv").is_file() and not (run / "oof_fold1.csv").exists()
    assert (run / "figures" / "03_learning_curves.png").is_file()


def test_default_title_keeps_the_kernel_id_and_the_licence_is_kaggles(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = build_bundle(tmp_path / "b", "alice/melalib-isic2020", wheel_dataset="alice/wheel",
                       with_wheel=False)
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["title"] == default_title("melalib-isic2020") == "melalib isic2020"
    assert slugify(meta["title"]) == "melalib-isic2020"
    assert "slug" not in caplog.text  # no "Kaggle derives a kernel's slug" warning
    wheel_meta = json.loads((out / "wheel" / "dataset-metadata.json").read_text())
    assert [lic["name"] for lic in wheel_meta["licenses"]] == ["other"]
    assert wheel_meta["licenses"][0]["name"] in KAGGLE_LICENSES and "MIT" in wheel_meta[
        "description"]
    assert "MIT" not in KAGGLE_LICENSES  # why "other": Kaggle's documented list has no MIT


def test_weights_need_the_backbone_they_were_made_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no backbone"):
        build_bundle(tmp_path / "b", "alice/k-one", wheel_dataset="alice/wheel",
                     weights_dataset="alice/effnet/tf_efficientnet_b3.bin", with_wheel=False)
    assert not (tmp_path / "b" / "kernel-metadata.json").exists()


def test_weights_from_a_kaggle_model(tmp_path: Path) -> None:
    out = build_bundle(tmp_path / "b", "alice/k-one", wheel_dataset="alice/wheel",
                       weights_model="alice/effnet-b0/pytorch/default/3/b0.pth",
                       parameters={"backbone": "efficientnet_b0"}, with_wheel=False)
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["model_sources"] == ["alice/effnet-b0/pytorch/default/3"]
    assert meta["dataset_sources"] == ["alice/wheel"]
    params = _injected(nbformat.read(out / "03_train.ipynb", as_version=4))
    assert params["pretrained_path"] == "/kaggle/input/effnet-b0/pytorch/default/3/b0.pth"
    assert "Kaggle Model `alice/effnet-b0/pytorch/default/3`" in (out / "README.md").read_text()
    with pytest.raises(ConfigError, match="Kaggle Model file"):
        build_bundle(tmp_path / "c", "alice/k-one", wheel_dataset="alice/wheel",
                     weights_model="alice/effnet-b0/pytorch/default", with_wheel=False)


def test_weights_are_checked_against_the_baked_backbone(tmp_path: Path) -> None:
    import timm
    import torch

    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), weights)
    common = dict(wheel_dataset="alice/wheel", weights_dataset="alice/r10-weights/resnet10t.pth",
                  weights_file=weights, with_wheel=False)
    out = build_bundle(tmp_path / "ok", "alice/k-one", parameters={"backbone": "resnet10t"},
                       **common)
    assert (out / "kernel-metadata.json").is_file()
    with pytest.raises(ConfigError, match="does not fit the baked backbone 'resnet18'"):
        build_bundle(tmp_path / "bad", "alice/k-one", parameters={"backbone": "resnet18"},
                     **common)
    assert not (tmp_path / "bad" / "kernel-metadata.json").exists()


def test_the_wheel_ships_stripped_numbered_notebooks_only(tmp_path: Path) -> None:
    """A notebook left open in Lab (outputs, language_info) and an executed copy in
    notebooks/: the wheel holds the five sources, stripped."""
    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(repo / "melalib", src / "melalib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / "notebooks", src / "notebooks",
                    ignore=shutil.ignore_patterns("out*.ipynb", ".ipynb_checkpoints"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(repo / name, src / name)
    dirty = json.loads((src / "notebooks" / "03_train.ipynb").read_text())
    dirty["metadata"]["language_info"] = {"name": "python", "version": "3.11.2"}
    code = next(c for c in dirty["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["secret\\n"]}]
    code["execution_count"] = 7
    (src / "notebooks" / "03_train.ipynb").write_text(json.dumps(dirty))
    (src / "notebooks" / "out.ipynb").write_text(json.dumps(dirty))
    wheel = build_wheel(tmp_path / "dist", root=src)
    with zipfile.ZipFile(wheel) as zf:
        shipped = sorted(n for n in zf.namelist() if n.endswith(".ipynb"))
        nb = json.loads(zf.read("melalib/notebooks/03_train.ipynb"))
    assert shipped == [f"melalib/notebooks/{n}" for n in sorted(
        p.name for p in (repo / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    assert "language_info" not in nb["metadata"] and nb["metadata"]["kernelspec"]
    assert all(c["outputs"] == [] and c["execution_count"] is None
               for c in nb["cells"] if c["cell_type"] == "code")
    assert any("parameters" in c["metadata"].get("tags", []) for c in nb["cells"])


def test_a_preset_is_resolved_under_the_baked_parameters(tmp_path: Path) -> None:
    """``-p preset=...``: the kernel trains the preset's backbone, size and weights; baked
    values win over it, and weights need no extra backbone when the preset names one."""
    build_bundle(tmp_path / "b", kernel_id="alice/k-one", wheel_dataset="alice/wheel",
                 weights_dataset="alice/w/lite0.pth", with_wheel=False,
                 parameters={"preset": "ham10000_lite0_pretrained", "epochs": "2"})
    nb = nbformat.read(tmp_path / "b" / "03_train.ipynb", as_version=4)
    params = _injected(nb)
    from melalib import notebook as nbh

    ns: dict[str, Any] = {}
    exec(next(c.source for c in nb.cells if "parameters" in _tags(c)), ns)
    ns.update(params)
    cfg = nbh.config_from_namespace(ns, root=tmp_path)
    preset = PRESETS["ham10000_lite0_pretrained"]
    assert (cfg.model.backbone, cfg.data.image_size) == (preset["backbone"], preset["image_size"])
    assert cfg.train.epochs == 2 and cfg.data.dataset == "isic2020"  # baked beats preset
    assert cfg.sources["backbone"] == "preset ham10000_lite0_pretrained"
