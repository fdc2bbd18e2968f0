"""The table a config's ``dataset`` names: `DATASETS`, the registry of the ``dataset`` choices
(name -> loader of a `DataConfig`), `load_table` (what training, the notebooks and
``melalib evaluate`` call), `check_data_dir` (a downloaded dataset's folder, checked before
anything slower) and the multi-source datasets (`MERGED`).

Each source reads its files in `melalib.data.sources` (CSVs through `melalib.data.csvread`);
this module only picks one and hands it the config's fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from ..registry import Registry
from ..table import LesionTable
from .csvread import PathLike
from .sources import ham10000, isic2019, isic2020, isic2024, milk10k
from .sources.custom import load_custom_csv
from .sources.image_folder import load_image_folder
from .sources.merge import merge_ham_milk, merge_isic2019_2020
from .synthetic import VERSION, make_synthetic

if TYPE_CHECKING:
    from ..config import DataConfig


@dataclass(frozen=True)
class Download:
    """A public dataset read from its own folder as downloaded: its loader
    ``(data_dir, image_dir) -> LesionTable``, the file `check_data_dir` looks for in
    ``data_dir`` and where to get it (named by the errors)."""

    load: Callable[[Path, PathLike | None], LesionTable]
    main_file: str
    hint: str


#: the downloaded datasets: name -> `Download` (the source module's loader and facts)
DOWNLOADS = {
    "isic2020": Download(isic2020.load_isic2020, isic2020.MAIN_FILE, isic2020.DOWNLOAD),
    "isic2019": Download(isic2019.load_isic2019, isic2019.MAIN_FILE, isic2019.DOWNLOAD),
    "ham10000": Download(ham10000.load_ham10000, ham10000.MAIN_FILE, ham10000.DOWNLOAD),
    "milk10k": Download(milk10k.load_milk10k, milk10k.MAIN_FILE, milk10k.DOWNLOAD),
    "isic2024": Download(isic2024.load_isic2024, isic2024.MAIN_FILE, isic2024.DOWNLOAD),
}
#: the multi-source datasets: name -> (subfolders of data_dir, each a `DOWNLOADS` name; merge)
MERGED = {"isic2020+2019": (("isic2020", "isic2019"), merge_isic2019_2020),
          "ham10000+milk10k": (("ham10000", "milk10k"), merge_ham_milk)}


def dataset_parts(dataset: str) -> tuple[str, ...]:
    """The datasets whose rows ``dataset`` holds: a `MERGED` dataset's parts (the first is
    the label space's own), else the dataset itself."""
    return MERGED[dataset][0] if dataset in MERGED else (dataset,)


def _synthetic(data_cfg: DataConfig) -> LesionTable:
    """Generated (or reused) under ``data_dir`` (default ``data``)."""
    name = (f"{data_cfg.synthetic_task}_{data_cfg.synthetic_patients}p_"
            f"{data_cfg.synthetic_image_size}px_s{data_cfg.synthetic_seed}_v{VERSION}")
    return make_synthetic(out_dir=Path(data_cfg.data_dir or "data") / "synthetic" / name,
                          task=data_cfg.synthetic_task, n_patients=data_cfg.synthetic_patients,
                          image_size=data_cfg.synthetic_image_size, seed=data_cfg.synthetic_seed)


def _downloaded(dataset: str, data_cfg: DataConfig) -> LesionTable:
    """A `DOWNLOADS` dataset from ``data_dir`` (checked first)."""
    check_data_dir(data_cfg)
    return DOWNLOADS[dataset].load(Path(data_cfg.data_dir), data_cfg.image_dir or None)


def _milk10k(data_cfg: DataConfig) -> LesionTable:
    """MILK10k from ``data_dir`` (checked first), ``milk_view``'s image as ``image_path``."""
    check_data_dir(data_cfg)
    return milk10k.load_milk10k(Path(data_cfg.data_dir), data_cfg.image_dir or None,
                                view=data_cfg.milk_view)


def _merged(dataset: str, data_cfg: DataConfig) -> LesionTable:
    """A `MERGED` dataset: each part from its subfolder of ``data_dir`` (checked first), an
    ``image_dir`` override serving both (a flat cache)."""
    check_data_dir(data_cfg)
    data_dir, image_dir = Path(data_cfg.data_dir), data_cfg.image_dir or None
    (first, second), merge = MERGED[dataset]
    return merge(DOWNLOADS[first].load(data_dir / first, image_dir),
                 DOWNLOADS[second].load(data_dir / second, image_dir))


def _custom(data_cfg: DataConfig) -> LesionTable:
    """The user's CSV (`load_custom_csv`) with the config's ``custom_*`` fields."""
    if not data_cfg.custom_csv:
        raise DataError("dataset=custom needs custom_csv, a CSV naming images and labels")
    return load_custom_csv(
        data_cfg.custom_csv, image_column=data_cfg.custom_image_column,
        label_column=data_cfg.custom_label_column,
        group_column=data_cfg.custom_group_column or None,
        split_column=data_cfg.custom_split_column or None,
        meta_columns=parse_meta_columns(data_cfg.custom_meta_columns),
        classes=data_cfg.custom_classes or None, image_dir=data_cfg.image_dir or None,
        fold_column=data_cfg.custom_fold_column or None,
        positive_label=data_cfg.positive_label,
        label_map=parse_meta_columns(data_cfg.custom_label_map))


def _image_folder(data_cfg: DataConfig) -> LesionTable:
    """Class folders under ``data_dir`` (`load_image_folder`)."""
    if not data_cfg.data_dir:
        raise DataError("dataset=image_folder needs data_dir, a folder of class folders "
                        "(<data_dir>/<class>/*.jpg)")
    return load_image_folder(data_cfg.data_dir, classes=data_cfg.custom_classes or None,
                             positive_label=data_cfg.positive_label)


#: the ``dataset`` choices: name -> loader of the table a `DataConfig` names (the order is
#: the documented one; `melalib.config` validates ``dataset`` against it)
DATASETS: Registry[Callable[[DataConfig], LesionTable]] = Registry("dataset", {
    "synthetic": _synthetic,
    "isic2020": partial(_downloaded, "isic2020"),
    "isic2019": partial(_downloaded, "isic2019"),
    "isic2020+2019": partial(_merged, "isic2020+2019"),
    "ham10000": partial(_downloaded, "ham10000"),
    "milk10k": _milk10k,
    "ham10000+milk10k": partial(_merged, "ham10000+milk10k"),
    "isic2024": partial(_downloaded, "isic2024"),
    "custom": _custom,
    "image_folder": _image_folder,
})


def _milk10k_pair(data_cfg: DataConfig) -> tuple[str, ...]:
    view = data_cfg.milk_view
    return (view, *(v for v in milk10k.MILK_VIEWS if v != view))


def _synthetic_pair(data_cfg: DataConfig) -> tuple[str, ...] | None:
    return tuple(milk10k.MILK_VIEWS) if data_cfg.synthetic_task == "paired" else None


#: dataset name -> the names of its two images in branch order (a dual-image model's first
#: and second input); a dataset not listed has no names for them (`pair_views`)
PAIR_VIEWS: dict[str, Callable[[DataConfig], tuple[str, ...] | None]] = {
    "milk10k": _milk10k_pair,  # the ``milk_view`` image first, then the other
    "synthetic": _synthetic_pair,  # synthetic_task=paired: dermoscopic, then clinical
}


def pair_views(data_cfg: DataConfig) -> tuple[str, ...]:
    """The names of the two images a dual-image model on ``data_cfg``'s table takes, in
    branch order (`PAIR_VIEWS`); ``("image 1", "image 2")`` where the dataset names none."""
    named = PAIR_VIEWS.get(data_cfg.dataset)
    return (named(data_cfg) if named else None) or ("image 1", "image 2")


def load_table(data_cfg: DataConfig) -> LesionTable:
    """The table a `DataConfig` names (`DATASETS`); ``image_dir`` (if set) overrides the
    image folder.

    ``isic2020+2019`` expects ``data_dir`` to hold ``isic2020/`` (Kaggle files) and
    ``isic2019/`` (ISIC 2019 CSVs); an ``image_dir`` override then serves both (a flat
    cache). ``synthetic`` generates (or reuses) data under ``data_dir`` (default ``data``).
    """
    if data_cfg.dataset not in DATASETS:
        raise DataError(f"unknown dataset {data_cfg.dataset!r}; known: {', '.join(DATASETS)}")
    return DATASETS[data_cfg.dataset](data_cfg)


def check_data_dir(data_cfg: DataConfig) -> None:
    """DataError naming the folder when a downloaded dataset's ``data_dir`` is missing (a
    cheap check `melalib.train` makes before anything slower, such as looking for weights);
    the synthetic, custom and image-folder sources are left to `load_table`."""
    dataset = data_cfg.dataset
    if dataset not in (*DOWNLOADS, *MERGED):
        return
    if dataset in MERGED:
        parts = dataset_parts(dataset)
        expected = " and ".join(f"{p}/{DOWNLOADS[p].main_file}" for p in parts)
        hint = "; ".join(DOWNLOADS[p].hint for p in parts)
    else:
        expected, hint = DOWNLOADS[dataset].main_file, DOWNLOADS[dataset].hint
    if not data_cfg.data_dir or not Path(data_cfg.data_dir).is_dir():
        where = f"data_dir {data_cfg.data_dir!r} does not exist" if data_cfg.data_dir else \
            "data_dir is empty"
        raise DataError(f"{where}: dataset {dataset} expects a folder holding {expected}; {hint}",
                        file=data_cfg.data_dir or None)
    for name in expected.split(" and "):
        if not (Path(data_cfg.data_dir) / name).is_file():
            raise DataError(f"{name} does not exist in data_dir: dataset {dataset} expects a "
                            f"folder holding {expected}; {hint}",
                            file=Path(data_cfg.data_dir) / name)


def parse_meta_columns(items: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``["age=age_years", "bmi"]`` -> ``{"age": "age_years", "bmi": "bmi"}``."""
    if isinstance(items, Mapping):
        return dict(items)
    out = {}
    for item in items:
        name, _, column = item.partition("=")
        out[name.strip()] = (column or name).strip()
    return out
