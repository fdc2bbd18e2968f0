"""Test-time adaptation to another clinic: batch-norm statistics re-estimated on its images.

A network's batch-norm layers normalise each channel with the mean and variance of the
training images. Another clinic's images (another dermoscope, light, colour pipeline, JPEG
quality) shift those statistics, and every layer after the first meets inputs it was not
trained on. AdaBN (Li et al. 2016, "Revisiting batch normalization for practical domain
adaptation") replaces them with the statistics of the new clinic's own images: one forward
pass over them, no labels, no gradient, no weight changed. `adapt_batchnorm` does that on a
copy of the model, for the batch-norm layers of its image backbones only (the metadata MLP
keeps its statistics: a clinic's metadata is not a style). `melalib evaluate --adapt-bn`
(`external.evaluate_external(adapt_bn=True)`) scores a run adapted on the unlabelled images
it scores, the way a clinic would adapt on its own images before use.

The image-shift score (`melalib.shift`) is measured against the training images' features,
so an adapted member keeps its original model for it (`inference.Member.shift_model`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader

from .errors import ConfigError
from .models import image_backbones
from .progress import bar
from .runtime import forward, to_device


def image_batchnorms(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers (1-d and 2-d, timm's `BatchNormAct2d` included) of the model's
    image backbones, in module order."""
    return [m for backbone in image_backbones(model) for m in backbone.modules()
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device,
                    channels_last: bool = False, progress: bool = False,
                    desc: str = "adapt batch norm") -> nn.Module:
    """A copy of ``model`` whose image backbones' batch-norm statistics are the mean and
    variance of ``loader``'s images (the cumulative average of the batches' statistics,
    each batch weighted alike); ``model`` itself is untouched. ConfigError for a model without image
    batch-norm layers (a metadata-only model, or a backbone using other normalisation) or an
    empty loader."""
    adapted = copy.deepcopy(model).eval()
    layers = image_batchnorms(adapted)
    if not layers:
        raise ConfigError("batch-norm adaptation needs an image backbone with batch-norm "
                          f"layers; {type(model).__name__} has none")
    saved = [(bn.momentum, bn.track_running_stats) for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.track_running_stats = True
        bn.train()
    n = 0
    with bar(loader, desc=desc, leave=False, disable=not progress) as batches:
        for batch in batches:
            forward(adapted, to_device(batch, device, channels_last))
            n += len(batch["index"])
    for bn, (momentum, track) in zip(layers, saved, strict=True):
        bn.momentum, bn.track_running_stats = momentum, track
    if n == 0:
        raise ConfigError("batch-norm adaptation needs at least one image; the table is empty")
    return adapted.eval()
