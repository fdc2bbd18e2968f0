"""Class-per-subfolder images (``root/<class>/*.jpg``) -> the canonical `LesionTable` of
task ``custom`` (metadata unknown, each image its own group)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from ...table import LesionTable
from ..csvread import PathLike
from ..images import IMAGE_EXTENSIONS
from .canonical import canonical_frame, canonical_meta, lesion_table
from .custom import binary_order, custom_task


def load_image_folder(root: PathLike, classes: Sequence[str] | None = None,
                      positive_label: str = "") -> LesionTable:
    """Class-per-subfolder images (``root/<class>/*.jpg|jpeg|png``), metadata unknown, each
    image its own group (image_id ``<class>/<file name>``). Other entries are ignored and
    counted in ``df.attrs["ignored_files"]`` (folders outside ``classes`` in
    ``ignored_folders``); an empty class folder raises DataError. Two classes: the positive
    one as in `load_custom_csv` (`binary_order`), never the sort order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("image folder does not exist", file=root)
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    folders = [p.name for p in entries if p.is_dir()]
    ignored = sum(1 for p in root.iterdir() if not p.is_dir())
    explicit = classes is not None
    classes = tuple(folders if classes is None else (str(c) for c in classes))
    missing = [c for c in classes if c not in folders]
    if missing:
        raise DataError(f"no class folder(s) {missing}; found {folders}", file=root)
    if len(classes) < 2:
        raise DataError(f"needs at least 2 class folders, found {list(classes)}", file=root)
    classes = binary_order(classes, positive_label, root, "class folder", explicit)
    ids: list[str] = []
    paths: list[str] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = sorted((root / name).iterdir())
        images = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise DataError(f"class folder {name!r} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})", file=root / name)
        ignored += len(found) - len(images)
        ids += [f"{name}/{p.name}" for p in images]
        paths += [str(p) for p in images]
        labels += [k] * len(images)
    task = custom_task(classes)
    meta = canonical_meta(pd.DataFrame(index=range(len(ids))), root, None, None, None)
    out = canonical_frame(ids=ids, paths=paths, groups=ids, labels=np.array(labels), task=task,
                          source="custom", split="train", meta=meta)
    attrs = {"ignored_files": ignored, "ignored_folders": len(folders) - len(classes)}
    return lesion_table([out], task, root, attrs)

