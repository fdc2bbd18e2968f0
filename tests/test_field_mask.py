"""The dermoscope field mask (`field_mask=ellipse`): black outside the ellipse inscribed in
every image, applied by the one image reader, so training, validation and everything that
reads the checkpoint's preprocessing (predict, TTA, Grad-CAM) see the same field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from melalib.checkpoints import load_model
from melalib.config import RunConfig
from melalib.data.images import ImageOptions, inscribed_ellipse, read_image
from melalib.data.load import load_table
from melalib.engine import train
from melalib.errors import ConfigError
from melalib.models import input_normalization
from melalib.runs import RunDir
from melalib.runtime import make_dataset


def test_the_ellipse_touches_every_side_and_leaves_the_corners_out() -> None:
    field = inscribed_ellipse(150, 200)
    assert field[75, 0] and field[75, 199] and field[0, 100] and field[149, 100]
    assert not field[0, 0] and not field[149, 199] and not field[10, 10]
    assert field.mean() == pytest.approx(np.pi / 4, abs=0.01)  # an ellipse's share of its box


def test_the_reader_masks_only_when_asked_and_the_config_checks_the_name(tmp_path: Path) -> None:
    path = tmp_path / "bright.png"
    Image.fromarray(np.full((30, 40, 3), 240, np.uint8)).save(path)
    plain = read_image(path)
    masked = read_image(path, options=ImageOptions(field_mask="ellipse"))
    assert (plain == 240).all()
    assert (masked[inscribed_ellipse(30, 40)] == 240).all()
    assert (masked[~inscribed_ellipse(30, 40)] == 0).all()
    assert ImageOptions.from_config(RunConfig.from_dict({"field_mask": "ellipse"}).data
                                    ).field_mask == "ellipse"
    with pytest.raises(ConfigError, match="field_mask"):
        RunConfig.from_dict({"field_mask": "circle-ish"})


def test_training_validation_and_the_checkpoint_carry_the_mask(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({**TINY, "data_dir": str(tmp_path / "data"), "device": "cpu",
                               "output_dir": str(tmp_path / "out"), "name": "fm",
                               "field_mask": "ellipse", "augment": "none"})
    table = load_table(cfg.data)
    df = table.df.head(2).reset_index(drop=True)
    for phase in (True, False):
        image = np.asarray(make_dataset(cfg, table, df, None, train=phase)[0]["image"])
        mean, std = input_normalization(cfg.model)
        black = (0.0 - np.asarray(mean)) / np.asarray(std)
        assert np.allclose(image[:, 0, 0], black, atol=1e-4), phase  # a corner: masked
        assert not np.allclose(image[:, 16, 16], black, atol=1e-2), phase  # the centre: not
    train(cfg, table=table, progress=False)
    run = RunDir.read(tmp_path / "out" / "fm")
    stored = load_model(run.checkpoint(0, "best"), torch.device("cpu")).preprocessing
    assert stored.image_options.field_mask == "ellipse"

