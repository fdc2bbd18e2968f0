"""Border occlusion and deletion / insertion on hand-made models whose evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from melalib.errors import ConfigError, DataError
from melalib.faithful import border_occlusion, class_probability, deletion_insertion
from melalib.localize import border_band
from melalib.tasks import HAM7, MELANOMA

SIZE = 16


class RegionModel(nn.Module):
    """One logit: the mean of the first channel over ``region`` (a bool map), times 4."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("region", torch.from_numpy(region).float())
        self.anchor = nn.Parameter(torch.zeros(1))  # a device for the wrapper

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None,
                image2: torch.Tensor | None = None) -> torch.Tensor:
        x = (image[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        return (4 * x + self.anchor)[:, None]


def _centre() -> np.ndarray:
    region = np.zeros((SIZE, SIZE), bool)
    region[6:10, 6:10] = True
    return region


def test_border_occlusion_moves_a_border_model_only() -> None:
    images = {"image": torch.ones(2, 3, SIZE, SIZE)}
    band = border_band((SIZE, SIZE))
    on_border = border_occlusion(RegionModel(band), images, [1, 0], MELANOMA)
    p = 1 / (1 + np.exp(-4.0))
    assert on_border["prob"].tolist() == pytest.approx([p, 1 - p], abs=1e-6)
    assert on_border["prob_border_occluded"].tolist() == pytest.approx([0.5, 0.5])
    assert on_border["border_change"].tolist() == pytest.approx([0.5 - p, p - 0.5], abs=1e-6)
    central = border_occlusion(RegionModel(_centre()), images, [1, 1], MELANOMA)
    assert central["border_change"].abs().max() < 1e-6


def test_deletion_falls_faster_and_insertion_rises_faster_along_a_true_map() -> None:
    model = RegionModel(_centre())
    images = {"image": torch.ones(1, 3, SIZE, SIZE)}
    true_map = _centre()[None].astype(np.float32)
    wrong_map = 1.0 - true_map
    right = deletion_insertion(model, images, true_map, [1], MELANOMA, steps=16)
    wrong = deletion_insertion(model, images, wrong_map, [1], MELANOMA, steps=16)
    rand = deletion_insertion(model, images, true_map, [1], MELANOMA, steps=16, order="random")
    assert right["deletion"][0] < rand["deletion"][0] < wrong["deletion"][0]
    assert right["insertion"][0] > rand["insertion"][0] > wrong["insertion"][0]
    # the true map's deletion curve: P drops to 0.5 after the first 1/16 of the pixels
    p = 1 / (1 + np.exp(-4.0))
    assert right["deletion"][0] == pytest.approx((p / 2 + 0.5 / 2 + 15 * 0.5) / 16)


def test_flat_maps_and_bad_inputs() -> None:
    model = RegionModel(_centre())
    images = {"image": torch.ones(1, 3, SIZE, SIZE)}
    flat = deletion_insertion(model, images, np.zeros((1, SIZE, SIZE)), [1], MELANOMA)
    assert np.isfinite(flat.to_numpy()).all()
    with pytest.raises(DataError, match="do not match"):
        deletion_insertion(model, images, np.zeros((1, 8, 8)), [1], MELANOMA)
    with pytest.raises(ConfigError, match="order"):
        deletion_insertion(model, images, np.zeros((1, SIZE, SIZE)), [1], MELANOMA,
                           order="best")


def test_class_probability_of_a_multiclass_model() -> None:
    class Seven(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.arange(7.0))

        def forward(self, image, meta=None, image2=None):
            return image.mean(dim=(1, 2, 3))[:, None] * self.w

    x = torch.ones(2, 3, 4, 4)
    probs = torch.softmax(torch.arange(7.0), 0).numpy()
    assert class_probability(Seven(), {"image": x}, x, [6, 0], HAM7).tolist() == \
        pytest.approx([probs[6], probs[0]])
