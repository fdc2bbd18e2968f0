"""The exploratory tables of notebooks 01 and 02 (`melalib.eda`), counted by hand on a toy
table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melalib import eda
from melalib.table import LesionTable
from melalib.tasks import MELANOMA


def toy_table(tmp_path: Path, with_images: bool) -> LesionTable:
    """Five training images of three patients (labels 0 0 0 1 1) and one test image."""
    paths = [tmp_path / f"img{i}.png" for i in range(6)]
    if with_images:
        for i, path in enumerate(paths):
            Image.new("RGB", (20 + i, 10), (i * 30, 0, 0)).save(path)
    labels = [0, 0, 0, 1, 1, -1]
    df = pd.DataFrame({
        "image_id": [f"I{i}" for i in range(6)], "image_path": [str(p) for p in paths],
        "group_id": ["P0", "P0", "P1", "P1", "P2", "P3"], "label": labels,
        "label_name": ["benign", "benign", "benign", "melanoma", "melanoma", ""],
        "age": [40.0, np.nan, 50.0, 60.0, np.nan, 70.0],
        "sex": ["male", "female", "unknown", "male", "female", "male"],
        "site": ["torso", "unknown", "torso", "head_neck", "torso", "torso"],
        "source": "toy", "split": ["train"] * 5 + ["test"]})
    return LesionTable(df, MELANOMA, "toy.csv").validate()


def test_missing_values_counts_nan_empty_and_unknown_per_split(tmp_path: Path) -> None:
    table = toy_table(tmp_path, with_images=False)
    out = eda.missing_values(table.df)
    # train rows 0-4: age NaN in rows 1, 4; sex unknown in row 2; site unknown in row 1
    assert out.loc["age", ("train", "missing")] == 2
    assert out.loc["age", ("train", "share")] == pytest.approx(2 / 5)
    assert out.loc["sex", ("train", "missing")] == 1
    assert out.loc["site", ("train", "missing")] == 1
    assert out.loc["age", ("test", "missing")] == 0
    assert "label_name" not in out.index  # the unlabelled test row is by design
    assert "image_id" not in out.index


def test_overview_and_class_table_count_by_hand(tmp_path: Path) -> None:
    table = toy_table(tmp_path, with_images=False)
    ov = eda.overview(table)["value"]
    assert ov["images"] == 6 and ov["train images"] == 5 and ov["test images"] == 1
    assert ov["groups (split unit)"] == 4 and ov["train groups"] == 3
    assert ov["positive rate"] == "40.00%"
    ct = eda.class_table(table)
    assert ct.loc["melanoma", "images"] == 2 and ct.loc["benign", "groups"] == 2
    sizes = eda.group_sizes(table.df)
    assert sizes.loc["max", "images per group"] == 2


def test_image_tables_need_the_images_on_disk(tmp_path: Path) -> None:
    absent = toy_table(tmp_path, with_images=False)
    assert eda.images_available(absent.df) == 0.0
    assert eda.image_size_stats(absent) is None
    present = toy_table(tmp_path, with_images=True)
    stats = eda.image_size_stats(present)
    assert stats.loc["width", "max"] == 25 and stats.loc["height", "mean"] == 10
