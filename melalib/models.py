"""Networks: a timm image backbone (one or two branches) fused with a metadata MLP.

Every backbone comes from `timm.create_model` with ``num_classes=0`` (globally pooled
features), so any timm name works. `FusionNet` concatenates image features (both branches
for dual-image tasks) with the metadata MLP's output and applies a linear head with
multi-sample dropout. `MetaMLP` is the metadata-only baseline. Both take
``forward(image=None, meta=None, image2=None)`` and return logits (N, n_outputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import timm
import torch
from torch import nn

from .config import ModelConfig, check_field
from .errors import ConfigError
from .tasks import Task
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .weights import (
    hub_cache_only,
    hub_probe,
    load_backbone_weights,
    no_weights_message,
    resolve_weights,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- backbones
def create_backbone(name: str, pretrained: bool = False, pretrained_path: str = "",
                    drop_path_rate: float = 0.0, in_chans: int = 3,
                    **kwargs: Any) -> nn.Module:
    """A timm model without classifier (``num_classes=0``): (N, C, H, W) -> (N, features).

    With ``pretrained`` (or a ``pretrained_path``), the weights come from
    `melalib.weights.resolve_weights`: the local file, else an installed weight package
    (converted to timm's key names), else timm's hub. A file is read as tensors only and
    must fit the backbone; every failure is a one-line ConfigError. The source used is kept
    as ``model.weights_source`` ("" when randomly initialised).
    """
    if not (timm.is_model(name) or name.startswith(("hf-hub:", "hf_hub:", "local-dir:"))):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown timm backbone {name!r}{hint}")
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    source = resolve_weights(name, pretrained_path) if pretrained or pretrained_path else None
    if source is not None and source.kind == "hub":
        unreachable = hub_probe()  # one probe; unreachable: timm's cache only, no retries
        try:
            with hub_cache_only() if unreachable else contextlib.nullcontext():
                model = timm.create_model(name, pretrained=True, num_classes=0,
                                          in_chans=in_chans, **kwargs)
        except Exception as exc:
            raise ConfigError(no_weights_message(name, unreachable or exc)) from exc
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans,
                                  **kwargs)
        if source is not None and source.path is not None:
            if in_chans != 3:
                raise ConfigError(f"weights from a file need in_chans=3, got {in_chans}")
            load_backbone_weights(model, source.path, name)
    model.weights_source = source.describe() if source is not None else ""
    return model


def input_normalization(model_cfg: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the model's inputs are normalised with: what the backbone's pretrained
    weights expect (0.5 for the TF EfficientNet-Lite family, ImageNet's for most others)
    when it starts from pretrained weights; ImageNet's for a random initialisation."""
    if not model_cfg.starts_pretrained:
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        cfg = timm.get_pretrained_cfg(model_cfg.backbone.split(":")[-1])
    except Exception:  # hub or unknown names: fall back to ImageNet statistics
        cfg = None
    mean = tuple(getattr(cfg, "mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(cfg, "std", None) or IMAGENET_STD)
    return mean, std


def feature_dim(backbone: nn.Module) -> int:
    """Width of the pooled features (timm's ``head_hidden_size`` when a pre-logits conv exists)."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def _mlp(n_in: int, hidden: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.SiLU(), nn.Dropout(dropout)]
        n_in = width
    return nn.Sequential(*layers), n_in


class _MSDHead(nn.Module):
    """Linear head with multi-sample dropout: in training, the logits of ``n`` independent
    dropout masks (same weights) are averaged; in eval mode it is one plain pass."""

    def __init__(self, n_in: int, n_outputs: int, dropout: float, n: int) -> None:
        super().__init__()
        check_field("n_msd", n)
        self.n = n
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(n_in, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.n == 1:
            return self.fc(self.dropout(x))
        return torch.stack([self.fc(self.dropout(x)) for _ in range(self.n)]).mean(0)


class FusionNet(nn.Module):
    """timm backbone(s) + metadata MLP + multi-sample-dropout head.

    ``n_meta == 0``: image only. ``dual_image``: a second image goes through the same
    backbone (``shared_backbone``) or through ``backbone2``; features are concatenated.
    """

    def __init__(
        self,
        backbone: str,
        n_outputs: int,
        n_meta: int = 0,
        meta_hidden: Sequence[int] = (128, 64),
        meta_dropout: float = 0.3,
        head_dropout: float = 0.3,
        n_msd: int = 1,
        dual_image: bool = False,
        shared_backbone: bool = True,
        pretrained: bool = False,
        pretrained_path: str = "",
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if n_outputs < 1:
            raise ConfigError(f"n_outputs must be >= 1, got {n_outputs}")
        self.backbone_name = backbone
        self.n_outputs = n_outputs
        self.n_meta = n_meta
        self.dual_image = dual_image
        self.shared_backbone = shared_backbone
        make = dict(pretrained=pretrained, pretrained_path=pretrained_path,
                    drop_path_rate=drop_path_rate, in_chans=in_chans, **(backbone_kwargs or {}))
        self.backbone = create_backbone(backbone, **make)
        self.backbone2 = (create_backbone(backbone, **make)
                          if dual_image and not shared_backbone else None)
        n_image = feature_dim(self.backbone)
        n_features = n_image * (2 if dual_image else 1)
        self.meta_mlp: nn.Module | None = None
        if n_meta > 0:
            self.meta_mlp, n_meta_out = _mlp(n_meta, meta_hidden, meta_dropout)
            n_features += n_meta_out
        self.n_features = n_features
        self.head = _MSDHead(n_features, n_outputs, head_dropout, n_msd)

    def forward(self, image: torch.Tensor | None = None, meta: torch.Tensor | None = None,
                image2: torch.Tensor | None = None) -> torch.Tensor:
        if image is None:
            raise ValueError("FusionNet needs an image batch (N, C, H, W)")
        parts = [self.backbone(image)]
        if self.dual_image:
            if image2 is None:
                raise ValueError("dual-image FusionNet needs image2 (the second modality)")
            parts.append((self.backbone2 or self.backbone)(image2))
        if self.meta_mlp is not None:
            if meta is None or meta.shape[-1] != self.n_meta:
                got = None if meta is None else tuple(meta.shape)
                raise ValueError(f"FusionNet expects meta of width {self.n_meta}, got {got}")
            parts.append(self.meta_mlp(meta))
        return self.head(torch.cat(parts, dim=1))


class MetaMLP(nn.Module):
    """Metadata-only baseline: MLP (Linear, BatchNorm, SiLU, Dropout per width) + linear head."""

    def __init__(self, n_meta: int, n_outputs: int, hidden: Sequence[int] = (64, 32),
                 dropout: float = 0.3) -> None:
        super().__init__()
        if n_meta < 1:
            raise ConfigError("a metadata-only model needs metadata features "
                              "(features=none leaves none)")
        self.n_meta = n_meta
        self.n_outputs = n_outputs
        self.meta_mlp, n_out = _mlp(n_meta, hidden, dropout)
        self.head = nn.Linear(n_out, n_outputs)

    def forward(self, image: torch.Tensor | None = None, meta: torch.Tensor | None = None,
                image2: torch.Tensor | None = None) -> torch.Tensor:
        if meta is None:
            raise ValueError("MetaMLP needs meta (N, n_meta)")
        return self.head(self.meta_mlp(meta))


def check_pretrained(model_cfg: ModelConfig) -> None:
    """Fail now, with `create_backbone`'s one-line ConfigError, when the configured
    pretrained weights cannot be found, read or fitted: before anything is written."""
    if model_cfg.use_image and model_cfg.starts_pretrained:
        create_backbone(model_cfg.backbone, pretrained=True,
                        pretrained_path=model_cfg.pretrained_path)


def build_model(model_cfg: ModelConfig, task: Task, n_meta: int) -> nn.Module:
    """`MetaMLP` when ``use_image`` is False, else `FusionNet` (meta ignored if not use_meta)."""
    if not model_cfg.use_image:
        return MetaMLP(n_meta, task.n_outputs, hidden=model_cfg.meta_hidden,
                       dropout=model_cfg.meta_dropout)
    return FusionNet(
        model_cfg.backbone,
        task.n_outputs,
        n_meta=n_meta if model_cfg.use_meta else 0,
        meta_hidden=model_cfg.meta_hidden,
        meta_dropout=model_cfg.meta_dropout,
        head_dropout=model_cfg.head_dropout,
        n_msd=model_cfg.n_msd,
        dual_image=model_cfg.dual_image,
        shared_backbone=model_cfg.shared_backbone,
        pretrained=model_cfg.starts_pretrained,
        pretrained_path=model_cfg.pretrained_path,
        drop_path_rate=model_cfg.drop_path_rate,
    )



def check_model(model_cfg: ModelConfig, task: Task, n_meta: int, image_size: int) -> None:
    """Build the model on PyTorch's meta device (no memory, no weights) and pass it a batch of
    ``image_size`` inputs: a mistyped backbone, an input size the backbone cannot take (a ViT
    at 32 px) or an impossible head fail here as one ConfigError, before a run is written.
    The weights themselves are `check_pretrained`'s; an operator without a meta kernel is
    not held against the model."""
    cfg = dataclasses.replace(model_cfg, pretrained=False, pretrained_path="")
    with torch.device("meta"):
        model = build_model(cfg, task, n_meta).eval()
        image = torch.empty(2, 3, image_size, image_size) if cfg.use_image else None
        inputs = dict(image=image, meta=torch.empty(2, n_meta) if n_meta else None,
                      image2=image if cfg.use_image and cfg.dual_image else None)
        try:
            model(**inputs)
        except NotImplementedError:  # no meta kernel for an operator: cannot tell here
            log.debug("check_model: %s has an operator without a meta kernel", cfg.backbone)
        except Exception as exc:  # timm asserts (ViT input size), shape errors
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(f"backbone {cfg.backbone!r} cannot take image_size="
                              f"{image_size} inputs ({reason}); pick another image_size or "
                              "backbone") from None

# ----------------------------------------------------------------------- Grad-CAM
def image_backbones(model: nn.Module) -> list[nn.Module]:
    """The model's image backbones (one, or two for a dual-image model with its own second
    backbone); none for a metadata-only model."""
    return [m for m in (getattr(model, "backbone", None), getattr(model, "backbone2", None))
            if m is not None]


#: Named choices of a Grad-CAM layer (`backbone_target_layer`); an integer picks a
#: ``feature_info`` stage (negative from the end), any other text a module name.
CAM_LAYERS = ("auto", "last", "finer", "pooled")


def pooled_layer(backbone: nn.Module) -> nn.Module:
    """The module whose output the backbone's ``global_pool`` averages into the head: the
    map `melalib.guidance` (``cam_guidance``) trains (EfficientNet: ``bn2``, ResNet:
    ``layer4``)."""
    previous = None
    for name, child in backbone.named_children():
        if name == "global_pool" and previous is not None:
            return previous
        previous = child
    raise ConfigError(f"layer 'pooled' needs a backbone whose global_pool follows its last "
                      f"feature layer; {type(backbone).__name__} has none: name a module")


def _feature_stages(backbone: nn.Module) -> list[dict[str, Any]]:
    info = getattr(backbone, "feature_info", None)
    if not info:
        return []
    try:
        return list(info) if isinstance(info, (list, tuple)) else list(info.get_dicts())
    except (AttributeError, TypeError):
        return []


def backbone_target_layer(backbone: nn.Module, image_size: int | None = None,
                          min_cells: int = 7, layer: str | int | None = None) -> nn.Module:
    """The Grad-CAM layer of a backbone.

    ``layer`` None / ``auto``: timm's last ``feature_info`` stage, or, given the input
    ``image_size``, the deepest stage whose map still has ``min_cells`` a side (a 64 px
    input leaves ResNet's last stage 2x2, too coarse to locate a lesion); ``last``: the last
    stage; ``finer``: the stage before ``auto``'s (twice the cells a side); ``pooled``: the
    map the head pools (`pooled_layer`); an integer (or its text): that stage (negative
    from the end); other text: a module name of the backbone. Without ``feature_info``:
    the last Conv2d.
    """
    stages = _feature_stages(backbone)
    spec = "auto" if layer is None else str(layer)
    if spec == "pooled":
        return pooled_layer(backbone)
    if spec.lstrip("-").isdigit():
        if not stages or not -len(stages) <= int(spec) < len(stages):
            raise ConfigError(f"layer {spec} is not a feature stage of {type(backbone).__name__} "
                              f"(it has {len(stages)})")
        return backbone.get_submodule(stages[int(spec)]["module"])
    if spec not in CAM_LAYERS:
        try:
            return backbone.get_submodule(spec)
        except AttributeError:
            names = ", ".join(s["module"] for s in stages)
            raise ConfigError(f"layer {spec!r} is neither one of {CAM_LAYERS}, a stage number "
                              f"nor a module of {type(backbone).__name__} (stages: {names})"
                              ) from None
    if stages:
        index = len(stages) - 1
        if image_size and spec != "last":
            fine = [i for i, s in enumerate(stages) if image_size / s["reduction"] >= min_cells]
            index = fine[-1] if fine else 0
        index = max(index - 1, 0) if spec == "finer" else index
        return backbone.get_submodule(stages[index]["module"])
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"no convolutional layer found in {type(backbone).__name__} "
                          "for Grad-CAM")
    return convs[-2 if spec == "finer" and len(convs) > 1 else -1]


def gradcam_target_layers(model: nn.Module, branch: int = 1, image_size: int | None = None,
                          layer: str | int | None = None) -> list[nn.Module]:
    """Grad-CAM target layer of image branch ``branch`` (2: the second image; with a shared
    backbone both branches use the same layer); ``image_size`` and ``layer`` see
    `backbone_target_layer`."""
    if branch not in (1, 2):
        raise ConfigError(f"branch must be 1 or 2, got {branch}")
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ConfigError(f"{type(model).__name__} has no image backbone: no Grad-CAM")
    if branch == 2:
        if not getattr(model, "dual_image", False):
            raise ConfigError("branch=2 needs a dual-image model")
        backbone = getattr(model, "backbone2", None) or backbone
    return [backbone_target_layer(backbone, image_size, layer=layer)]


# ------------------------------------------------------------- optimisation helpers
def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def _split(named: Iterator[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter],
                                                                list[nn.Parameter]]:
    decay, no_decay = [], []
    for name, param in named:
        (no_decay if _no_decay(name, param) else decay).append(param)
    return decay, no_decay


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 0.1,
                 weight_decay: float = 1e-2) -> list[dict[str, Any]]:
    """Optimizer groups: backbone(s) at ``lr * backbone_lr_mult``, head and meta MLP at
    ``lr``; no weight decay on biases and norm weights (parameters with ndim <= 1).

    Frozen parameters are included, so unfreezing after a warm-up needs no new optimizer.
    Each group has a ``name`` and its ``base_lr`` (kept for schedulers).
    """
    backbone_ids = {id(p) for b in image_backbones(model) for p in b.parameters()}
    named = list(model.named_parameters())
    bb = [(n, p) for n, p in named if id(p) in backbone_ids]
    rest = [(n, p) for n, p in named if id(p) not in backbone_ids]
    groups = []
    for label, members, group_lr in (("backbone", bb, lr * backbone_lr_mult), ("head", rest, lr)):
        decay, no_decay = _split(iter(members))
        for suffix, params, wd in (("", decay, weight_decay), ("_no_decay", no_decay, 0.0)):
            if params:
                groups.append({"name": label + suffix, "params": params, "lr": group_lr,
                               "base_lr": group_lr, "weight_decay": wd})
    return groups


def set_backbone_trainable(model: nn.Module, flag: bool) -> int:
    """Freeze (False) or unfreeze (True) the image backbone(s); returns the parameter count
    changed (0 for a metadata-only model)."""
    count = 0
    for backbone in image_backbones(model):
        for param in backbone.parameters():
            param.requires_grad_(flag)
            count += param.numel()
    return count
