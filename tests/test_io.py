"""One plain-value converter for every JSON file (`melalib.io.plain`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from melalib import notebook
from melalib.io import json_text, plain


def test_plain_values_of_numpy_tuples_and_undefined_numbers() -> None:
    values = {"a": np.float32(0.25), "b": [np.int64(3), float("nan"), np.inf],
              "c": (1, np.bool_(True)), "d": np.arange(2)}
    assert plain(values) == {"a": 0.25, "b": [3, None, None], "c": [1, True], "d": [0, 1]}
    assert json.loads(json_text(values)) == plain(values)


def test_notebook_metrics_are_written_with_the_same_converter(tmp_path: Path) -> None:
    """`notebook.write_metrics` only turns tables into records and keys into text; numbers,
    NaN and paths come out as in every other JSON file."""
    table = pd.DataFrame({"x": [1.5, np.nan], "y": ["p", "q"]})
    nested = {3: {"auc": np.float64(0.75), "ci": np.array([0.5, np.nan])}}
    path = notebook.write_metrics(tmp_path / "m.json", table=table, where=tmp_path / "f",
                                  counts=pd.Series({1: np.int64(2), 2: np.int64(5)}),
                                  nested=nested)
    assert json.loads(path.read_text()) == {
        "table": [{"x": 1.5, "y": "p"}, {"x": None, "y": "q"}], "where": str(tmp_path / "f"),
        "counts": {"1": 2, "2": 5}, "nested": {"3": {"auc": 0.75, "ci": [0.5, None]}}}


def test_config_dumps_keep_non_finite_values_and_tables_become_records() -> None:
    """The config's dumps go through the same converter without ``strict``: YAML writes
    ``.inf`` and reads it back, so an infinite field survives (strict JSON would write null);
    a DataFrame becomes records anywhere, and a Series stays its values without text keys."""
    from melalib.config import RunConfig

    cfg = RunConfig.from_dict({"clip_grad": float("inf"), "meta_hidden": (16, 8)})
    assert cfg.to_dict()["train"]["clip_grad"] == float("inf")
    assert cfg.to_flat()["meta_hidden"] == [16, 8]
    assert RunConfig.from_dict(cfg.to_dict()).train.clip_grad == float("inf")
    assert plain({"x": np.inf}, strict=False) == {"x": np.inf} != plain({"x": np.inf})
    frame = pd.DataFrame({"x": [1.5, np.nan]}, index=pd.Index([7, 8], name="fold"))
    assert plain([frame]) == [[{"fold": 7, "x": 1.5}, {"fold": 8, "x": None}]]
    assert plain(pd.Series([1.0, 2.0], index=[3, 4])) == [1.0, 2.0]
    assert plain(pd.Series([1.0, 2.0], index=[3, 4]), text_keys=True) == {"3": 1.0, "4": 2.0}
