"""Every registry (name -> implementation, `melalib.registry.Registry`) and every name in it.

The registries are found by reading melalib's sources (a module-level ``X = Registry(...)``),
so a new registry fails `test_every_registry_has_a_runner` until it gets a runner here, and
the parametrisation is over each registry's contents, so a newly registered name is run by
these tests without editing them.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_adapters import (
    HAM_ROWS,
    MILK_HEADER,
    MILK_ROWS,
    ham_dir,
    image,
    isic2019_dir,
    isic2020_dir,
    milk_dir,
    onehot,
    small_tables,
    write,
)

from melalib.config import DataConfig, RunConfig, TrainConfig, choices, field_index, spec
from melalib.errors import ConfigError
from melalib.registry import Registry
from melalib.tasks import HAM7, MELANOMA

PACKAGE = Path(__file__).resolve().parents[1] / "melalib"


def _registry_names() -> list[str]:
    """``module.NAME`` of every module-level ``NAME = Registry(...)`` in melalib."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)):
                continue
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            call = node.value
            if (isinstance(target, ast.Name) and isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name) and call.func.id == "Registry"):
                found.append(f"{module}.{target.id}")
    return found


REGISTRIES = _registry_names()


def _registry(qualified: str) -> Registry[Any]:
    module, name = qualified.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


# ------------------------------------------------------------------------------ runners
def _schedule(name: str, tmp: Path) -> None:
    import torch

    from melalib.schedules import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(TrainConfig(scheduler=name, epochs=2), opt, 3)
    opt.step()
    sched.step(0.5) if name == "plateau" else sched.step()
    assert 0 < opt.param_groups[0]["lr"] <= 0.1


def _loss(name: str, tmp: Path) -> None:
    import torch

    from melalib.losses import build_loss

    task = HAM7 if name == "ce" else MELANOMA
    labels = np.array([0, 1, 1, 0, 2, 1]) if task is HAM7 else np.array([0, 1, 1, 0])
    loss = build_loss(TrainConfig(loss=name), task, labels)
    logits = torch.zeros(len(labels), task.n_outputs)
    target = torch.as_tensor(labels) if task is HAM7 else torch.as_tensor(labels).float()
    value = loss(logits, target)
    assert torch.isfinite(value) and value > 0


def _class_weighting(name: str, tmp: Path) -> None:
    from melalib.losses import class_weights, pos_weights

    labels = np.array([0, 0, 0, 1])
    w = class_weights(labels, 2, name)
    assert w.shape == (2,) and np.isclose(w.mean(), 1)
    assert (w[1] > w[0]) == (name != "none")
    assert pos_weights(labels, 2, name, binary=True).shape == (1,)


def _sampler(name: str, tmp: Path) -> None:
    from melalib.samplers import build_sampler

    labels = np.array([0] * 9 + [1])
    sampler = build_sampler(name, labels, seed=0)
    assert (sampler is None) == (name == "none")
    if sampler is not None:
        assert len(list(sampler)) == len(labels)


IMAGE = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)


def _aspect(name: str, tmp: Path) -> None:
    from melalib.transforms import build_transforms, frame_mask

    assert build_transforms(16, train=False, aspect=name)(IMAGE).shape == (3, 16, 16)
    assert frame_mask(np.ones((30, 50)), 16, name).shape == (16, 16)


def _strength(name: str, tmp: Path) -> None:
    from melalib.transforms import build_transforms

    out = build_transforms(16, train=True, strength=name, seed=0)(IMAGE)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32


def _border(name: str, tmp: Path) -> None:
    from melalib.transforms import build_transforms

    train = build_transforms(16, train=True, strength="none", seed=0, border_aug=name)
    assert train(IMAGE).shape == (3, 16, 16)
    assert ("DermoscopeVignette" in repr(train)) == (name == "vignette")


def _tta(n: int, tmp: Path) -> None:
    import torch

    from melalib.transforms import tta_views

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = tta_views(n)
    assert len(views) == n and len({tuple(v(x).flatten().tolist()) for v in views}) == n
    for view in views:
        assert torch.equal(view.inverse(view(x)), x)


def _table(tmp: Path, task: str = "binary") -> Any:
    from melalib.data.synthetic import make_synthetic

    return make_synthetic(tmp / "synthetic", task, n_patients=16, image_size=16, seed=0)


def _stratify(name: str, tmp: Path) -> None:
    from melalib.folds import assign_folds

    folds = assign_folds(_table(tmp), n_folds=2, seed=0, stratify=name).df["fold"]
    assert set(folds[folds >= 0]) == {0, 1}


def _synthetic_task(name: str, tmp: Path) -> None:
    from melalib.data.synthetic import TASKS

    table = _table(tmp, name)
    assert table.task == TASKS[name] and len(table.df)


def _target(name: str, tmp: Path) -> None:
    from melalib.targets import training_table

    table = _table(tmp)
    out = training_table(table, name)
    assert (out is table) == (name == "label")
    assert len(out.df) == len(table.df)


def _alpha(name: str, tmp: Path) -> None:
    from PIL import Image

    from melalib.data.images import ImageOptions, read_image
    from melalib.errors import ImageError

    path = tmp / "half.png"
    Image.fromarray(np.full((4, 4, 4), (200, 0, 0, 128), np.uint8), "RGBA").save(path)
    if name == "error":
        with pytest.raises(ImageError, match="image_alpha"):
            read_image(path, options=ImageOptions(alpha=name))
    else:
        out = read_image(path, options=ImageOptions(alpha=name))
        assert out.shape == (4, 4, 3) and out[0, 0, 0] > out[0, 0, 1]


def _field_mask(name: str, tmp: Path) -> None:
    from PIL import Image

    from melalib.data.images import ImageOptions, read_image

    path = tmp / "grey.png"
    Image.fromarray(np.full((6, 8, 3), 200, np.uint8)).save(path)
    out = read_image(path, options=ImageOptions(field_mask=name))
    assert out.shape == (6, 8, 3) and out[3, 4].tolist() == [200, 200, 200]
    assert out[0, 0].tolist() == ([200] * 3 if name == "none" else [0, 0, 0])


def _feature_set(name: str, tmp: Path) -> None:
    from melalib.features import MetaEncoder

    df = pd.DataFrame({"image_id": list("abcd"), "group_id": ["p1", "p1", "p2", "p3"],
                       "sex": ["male", "female", "male", "female"],
                       "site": ["torso", "head_neck", "torso", "torso"],
                       "age": [30.0, 50.0, 70.0, 60.0], "image_bytes": [1e5, 2e5, 3e5, 4e5],
                       "tbp_lv_area": [1.0, 2.0, 3.0, 4.0], "split": "train"})
    x = MetaEncoder(name).fit(df).transform(df)
    assert x.shape[0] == 4 and np.isfinite(x).all()
    assert (x.shape[1] == 0) == (name == "none")


def _missing(name: str, tmp: Path) -> None:
    from melalib.data.missing import MISSING_IMAGES

    assert RunConfig.from_dict({"missing_images": name}).data.missing_images == name
    assert isinstance(MISSING_IMAGES[name], bool)


def _amp(name: str, tmp: Path) -> None:
    from melalib.device import AMP_DTYPES

    if name == "auto" and not _cuda():
        pytest.skip("auto asks the GPU whether it has bf16")
    assert isinstance(AMP_DTYPES[name](), bool)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _oofs() -> list[pd.DataFrame]:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 10)
    return [pd.DataFrame({"image_id": [f"i{i}" for i in range(20)], "label": labels,
                          "fold": np.arange(20) % 2,
                          "prob_melanoma": np.clip(labels * 0.3 + rng.random(20) * 0.7, 0, 1)})
            for _ in range(2)]


def _method(name: str, tmp: Path) -> None:
    from melalib.ensemble import blend_probs

    probs = [np.array([[0.2], [0.8]]), np.array([[0.4], [0.6]])]
    out = blend_probs(probs, MELANOMA, name)
    assert out.shape == (2, 1) and out[1, 0] > out[0, 0]


def _blend(name: str, tmp: Path) -> None:
    from melalib.ensemble import BLENDS

    views = [SimpleNamespace(path=Path(f"run{i}")) for i in range(2)]
    chosen = BLENDS[name](views, _oofs(), MELANOMA)
    assert len(chosen.weights) == 2 and np.isclose(sum(chosen.weights), 1)


def _xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    return x, (x[:, 0] > 0).astype(int)


def _baseline(name: str, tmp: Path) -> None:
    from melalib.baselines import classifier

    x, y = _xy()
    assert classifier(name, seed=0)().fit(x, y).predict_proba(x).shape == (60, 2)


def _stacker(name: str, tmp: Path) -> None:
    from melalib.stack import make_model

    x, y = _xy()
    assert make_model(name)(0).fit(x, y).predict_proba(x).shape == (60, 2)


def _isic2019_files(folder: Path) -> Path:
    return isic2019_dir(folder, [f"ISIC_1,{onehot('NV')}", f"ISIC_2,{onehot('MEL')}"],
                        ["ISIC_1,55,anterior torso,,female", "ISIC_2,30,,L_1,male"])


def _ham_files(folder: Path) -> Path:
    return ham_dir(folder, *HAM_ROWS)


def _milk_files(folder: Path) -> Path:
    """A MILK10k folder with training and test metadata (two lesions each)."""
    milk_dir(folder)
    write(folder / "MILK10k_Test_Metadata.csv", MILK_HEADER,
          *(row.replace("IL_", "IL_T").replace("ISIC_", "ISIC_9") for row in MILK_ROWS))
    return folder


def _isic2024_files(folder: Path) -> Path:
    write(folder / "train-metadata.csv",
          "isic_id,patient_id,age_approx,sex,anatom_site_general,target,tbp_lv_area,iddx_3",
          "ISIC_1,IP_1,40,male,posterior torso,0,1.5,",
          "ISIC_2,IP_1,40,male,head/neck,1,2.0,Melanoma in situ", "ISIC_3,IP_2,,female,,0,,")
    return folder


def _isic2020_2019_files(folder: Path) -> Path:
    small_tables(folder)  # writes isic2020/ and isic2019/
    return folder


def _ham_milk_files(folder: Path) -> Path:
    _ham_files(folder / "ham10000")
    _milk_files(folder / "milk10k")
    return folder


def _class_folders(folder: Path) -> Path:
    for name in ("benign/b1.jpg", "benign/b2.png", "melanoma/m1.jpg"):
        image(folder / name)
    return folder


def _custom_csv(folder: Path) -> dict[str, Any]:
    csv = write(folder / "mine.csv", "image,label,age", "a.jpg,mel,40", "b.jpg,nv,NA", "c.jpg,nv,")
    return {"custom_csv": str(csv)}


def _folder(build: Callable[[Path], Path]) -> Callable[[Path], dict[str, Any]]:
    return lambda tmp: {"data_dir": str(build(tmp))}


#: dataset name -> small files of it under a folder (the builders of test_adapters): the
#: `DataConfig` fields naming them; a dataset missing here fails its registry test
DATASET_FILES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "synthetic": lambda tmp: {"data_dir": str(tmp), "synthetic_patients": 8,
                              "synthetic_image_size": 16},
    "isic2020": _folder(isic2020_dir),
    "isic2019": _folder(_isic2019_files),
    "isic2020+2019": _folder(_isic2020_2019_files),
    "ham10000": _folder(_ham_files),
    "milk10k": _folder(_milk_files),
    "ham10000+milk10k": _folder(_ham_milk_files),
    "isic2024": _folder(_isic2024_files),
    "custom": _custom_csv,
    "image_folder": _folder(_class_folders),
}


#: the ``source`` column of each dataset's rows where it is not the dataset's name
SOURCES = {"isic2020+2019": {"isic2020", "isic2019"}, "ham10000+milk10k": {"ham10000", "milk10k"},
           "image_folder": {"custom"}}


def _dataset(name: str, tmp: Path) -> None:
    from melalib.data.load import DATASETS, load_table

    cfg = DataConfig(dataset=name, **DATASET_FILES[name](tmp))
    table = load_table(cfg)
    assert set(table.df["source"]) == SOURCES.get(name, {name}) and len(table.train) >= 2
    assert DATASETS[name](cfg).content_hash() == table.content_hash()


def _milk_view(name: str, tmp: Path) -> None:
    from melalib.data.sources.milk10k import load_milk10k

    df = load_milk10k(milk_dir(tmp), include_test=False, view=name).df
    first, other = ("derm", "clin") if name == "dermoscopic" else ("clin", "derm")
    assert [Path(p).stem for p in df["image_path"]] == df[f"isic_id_{first}"].tolist()
    assert [Path(p).stem for p in df["image_path_2"]] == df[f"isic_id_{other}"].tolist()


RUNNERS: dict[str, Callable[[Any, Path], None]] = {
    "melalib.schedules.SCHEDULES": _schedule,
    "melalib.losses.LOSSES": _loss,
    "melalib.losses.CLASS_WEIGHTING": _class_weighting,
    "melalib.samplers.SAMPLERS": _sampler,
    "melalib.transforms.ASPECTS": _aspect,
    "melalib.transforms.STRENGTHS": _strength,
    "melalib.transforms.BORDER_AUGS": _border,
    "melalib.transforms.TTA_COUNTS": _tta,
    "melalib.folds.STRATIFY": _stratify,
    "melalib.data.synthetic.TASKS": _synthetic_task,
    "melalib.data.load.DATASETS": _dataset,
    "melalib.data.sources.milk10k.MILK_VIEWS": _milk_view,
    "melalib.targets.TARGETS": _target,
    "melalib.data.images.ALPHA_CHOICES": _alpha,
    "melalib.data.images.FIELD_MASKS": _field_mask,
    "melalib.data.missing.MISSING_IMAGES": _missing,
    "melalib.features.FEATURE_SETS": _feature_set,
    "melalib.device.AMP_DTYPES": _amp,
    "melalib.ensemble.METHODS": _method,
    "melalib.ensemble.BLENDS": _blend,
    "melalib.baselines.MODELS": _baseline,
    "melalib.stack.MODELS": _stacker,
}
ENTRIES = [(qualified, name) for qualified in REGISTRIES for name in _registry(qualified)]


def test_every_registry_has_a_runner() -> None:
    assert len(REGISTRIES) >= len(RUNNERS) > 0
    assert set(REGISTRIES) == set(RUNNERS), set(REGISTRIES) ^ set(RUNNERS)
    for qualified in REGISTRIES:
        assert isinstance(_registry(qualified), Registry) and len(_registry(qualified)), qualified


@pytest.mark.parametrize(("registry", "name"), ENTRIES, ids=[f"{r}[{n}]" for r, n in ENTRIES])
def test_every_registered_name_runs(registry: str, name: Any, tmp_path: Path) -> None:
    RUNNERS[registry](name, tmp_path)


@pytest.mark.parametrize("registry", REGISTRIES)
def test_an_unknown_name_is_one_config_error(registry: str) -> None:
    reg = _registry(registry)
    with pytest.raises(ConfigError, match=rf"^{reg.field} must be one of .*; got 'zzzq'$"):
        reg["zzzq"]


def test_each_config_choice_field_is_its_registry() -> None:
    """A registry named after a config field is that field's choices (same object, same
    keys in the same order), and every choice field of the config points at its owner."""
    for qualified in REGISTRIES:
        reg = _registry(qualified)
        if reg.field in field_index():
            lazy = spec(reg.field).choices
            assert lazy is not None and f"{lazy.module}.{lazy.name}" == qualified
            assert choices(reg.field) == tuple(reg)
    for name in field_index():
        if spec(name).choices is not None:
            assert choices(name), name
