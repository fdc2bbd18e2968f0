"""FusionNet / MetaMLP forward+backward in every mode, pretrained files, Grad-CAM layers,
parameter groups."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from torch import nn

from melalib.config import ModelConfig
from melalib.errors import ConfigError
from melalib.losses import SigmoidLoss, SoftmaxLoss
from melalib.models import (
    FusionNet,
    MetaMLP,
    build_model,
    create_backbone,
    gradcam_target_layers,
    param_groups,
    pooled_layer,
    set_backbone_trainable,
)
from melalib.tasks import Task

TINY = "test_resnet" if "test_resnet" in timm.list_models("test_*") else "resnet10t"
N_META = 5
BINARY = Task("b", "binary", ("neg", "pos"), "roc_auc")
MULTI = Task("m", "multiclass", ("a", "b", "c"), "balanced_accuracy")
LABEL = Task("l", "multilabel", ("a", "b", "c", "d"), "thresholded_macro_f1")

MODES = {
    "image": dict(n_meta=0),
    "fusion": dict(n_meta=N_META),
    "fusion_msd4": dict(n_meta=N_META, n_msd=4),
    "dual_shared": dict(n_meta=N_META, dual_image=True, shared_backbone=True),
    "dual_separate": dict(n_meta=N_META, dual_image=True, shared_backbone=False),
    "meta_only": None,
}



def _targets(task: Task, n: int) -> torch.Tensor:
    labels = torch.arange(n) % task.n_classes
    if task.kind == "binary":
        return labels.float()
    if task.kind == "multiclass":
        return labels
    return torch.nn.functional.one_hot(labels, task.n_classes).float()


def _build(mode: str, task: Task) -> nn.Module:
    kwargs = MODES[mode]
    if kwargs is None:
        return MetaMLP(N_META, task.n_outputs)
    return FusionNet(TINY, task.n_outputs, meta_hidden=(16, 8), **kwargs)


@pytest.mark.parametrize("task", [BINARY, MULTI, LABEL], ids=lambda t: t.kind)
@pytest.mark.parametrize("mode", list(MODES))
def test_forward_backward_every_mode(mode: str, task: Task) -> None:
    torch.manual_seed(0)
    model = _build(mode, task).train()
    image, image2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    meta = torch.randn(4, N_META)
    logits = model(image=image, meta=meta, image2=image2)
    assert logits.shape == (4, task.n_outputs)
    loss_fn = SoftmaxLoss() if task.kind == "multiclass" else SigmoidLoss()
    loss = loss_fn(logits, _targets(task, 4))
    loss.backward()

    def reached(module: nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert reached(model.head)
    if mode != "image":
        assert reached(model.meta_mlp)
    if mode != "meta_only":
        assert reached(model.backbone)
    if mode == "dual_separate":
        assert model.backbone2 is not None and reached(model.backbone2)
        assert all(a is not b for a, b in zip(model.backbone.parameters(),
                                              model.backbone2.parameters(), strict=True))
    if mode == "dual_shared":
        assert model.backbone2 is None


def test_positional_image_and_feature_width() -> None:
    model = FusionNet(TINY, 3, n_meta=N_META, meta_hidden=(16, 8)).eval()
    x, m = torch.randn(2, 3, 32, 32), torch.randn(2, N_META)
    assert torch.equal(model(x, m), model(image=x, meta=m))
    assert model.n_features == model.backbone.num_features + 8
    dual = FusionNet(TINY, 1, dual_image=True)
    assert dual.n_features == 2 * dual.backbone.num_features


def test_multi_sample_dropout_averages_masks_and_is_plain_in_eval() -> None:
    torch.manual_seed(0)
    model = FusionNet(TINY, 3, n_meta=N_META, n_msd=4, head_dropout=0.5)
    head = model.head
    feats = torch.randn(6, model.n_features)
    head.train()
    torch.manual_seed(11)
    got = head(feats)
    torch.manual_seed(11)
    expected = torch.stack([head.fc(nn.functional.dropout(feats, 0.5)) for _ in range(4)]).mean(0)
    assert torch.allclose(got, expected, atol=1e-6)
    one_mask = head.fc(nn.functional.dropout(feats, 0.5))
    assert not torch.allclose(got, one_mask)
    model.eval()
    x, m = torch.randn(3, 3, 32, 32), torch.randn(3, N_META)
    out1, out2 = model(x, m), model(x, m)
    assert torch.equal(out1, out2)
    assert torch.allclose(head(feats), head.fc(feats))


def test_missing_inputs_raise() -> None:
    model = FusionNet(TINY, 1, n_meta=N_META, dual_image=True)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="image2"):
        model(x, torch.randn(2, N_META))
    with pytest.raises(ValueError, match="meta of width 5"):
        model(x, None, x)
    with pytest.raises(ValueError, match="meta of width 5"):
        model(x, torch.randn(2, 3), x)
    with pytest.raises(ConfigError, match="metadata"):
        MetaMLP(0, 1)


def test_build_model_follows_config() -> None:
    cfg = ModelConfig(backbone=TINY, meta_hidden=(8,), n_msd=2)
    fusion = build_model(cfg, MULTI, n_meta=N_META)
    assert isinstance(fusion, FusionNet) and fusion.meta_mlp is not None
    assert fusion.head.fc.out_features == 3 and fusion.head.n == 2
    no_meta = build_model(ModelConfig(backbone=TINY, use_meta=False), BINARY, n_meta=N_META)
    assert no_meta.meta_mlp is None and no_meta.head.fc.out_features == 1
    dual = build_model(ModelConfig(backbone=TINY, dual_image=True, shared_backbone=False), LABEL,
                       n_meta=N_META)
    assert dual.backbone2 is not None and dual.head.fc.out_features == 4
    mlp = build_model(ModelConfig(use_image=False, meta_hidden=(7,)), MULTI, n_meta=N_META)
    assert isinstance(mlp, MetaMLP) and mlp.meta_mlp[0].out_features == 7
    with pytest.raises(ConfigError, match="unknown timm backbone 'resnet10tt'"):
        build_model(ModelConfig(backbone="resnet10tt"), BINARY, n_meta=0)


# ------------------------------------------------------------------ pretrained files
def test_pretrained_path_round_trip(tmp_path) -> None:
    torch.manual_seed(3)
    source = timm.create_model("resnet10t", pretrained=False)  # 1000-class classifier 'fc'
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    model = build_model(ModelConfig(backbone="resnet10t", pretrained_path=str(path)), BINARY,
                        n_meta=0)
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    fresh = create_backbone("resnet10t")  # a random init differs
    assert not torch.equal(fresh.state_dict()["conv1.0.weight"], expected["conv1.0.weight"])


def test_pretrained_path_errors(tmp_path) -> None:
    missing = tmp_path / "nope" / "weights.pth"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        build_model(ModelConfig(backbone=TINY, pretrained_path=str(missing)), BINARY, n_meta=0)
    source = timm.create_model("resnet10t", pretrained=False)
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(ConfigError, match="does not fit"):
        create_backbone("resnet10t", pretrained_path=str(path))
    with pytest.raises(ConfigError, match="does not fit backbone"):
        create_backbone(TINY, pretrained_path=str(path))  # other architecture


# ------------------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("backbone", [TINY, "efficientnet_b0", "mobilenetv3_small_050",
                                      "convnext_atto"])
def test_gradcam_layer_outputs_a_feature_map(backbone: str) -> None:
    model = FusionNet(backbone, 2, n_meta=N_META).eval()
    (layer,) = gradcam_target_layers(model)
    assert any(layer is m for m in model.backbone.modules())
    seen = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64), torch.randn(1, N_META))
    handle.remove()
    assert len(seen) == 1 and seen[0].ndim == 4 and seen[0].shape[-1] >= 1


def test_gradcam_branches() -> None:
    separate = FusionNet(TINY, 1, dual_image=True, shared_backbone=False)
    (l1,), (l2,) = gradcam_target_layers(separate, 1), gradcam_target_layers(separate, branch=2)
    assert any(l1 is m for m in separate.backbone.modules())
    assert any(l2 is m for m in separate.backbone2.modules())
    shared = FusionNet(TINY, 1, dual_image=True)
    assert gradcam_target_layers(shared, 2)[0] is gradcam_target_layers(shared, 1)[0]
    with pytest.raises(ConfigError, match="dual-image"):
        gradcam_target_layers(FusionNet(TINY, 1), branch=2)
    with pytest.raises(ConfigError, match="no image backbone"):
        gradcam_target_layers(MetaMLP(3, 1))


def _cells(model: FusionNet, layer: torch.nn.Module, size: int) -> int:
    seen = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    handle.remove()
    return seen[0]


def test_gradcam_layer_choices() -> None:
    """auto: the deepest stage with >= 7 cells a side; finer: the stage before it (twice the
    cells); last; a stage number; a module name; anything else a ConfigError naming stages."""
    model = FusionNet("tf_efficientnet_lite0", 7).eval()  # 128 px: stages of 64..4 cells
    (auto,) = gradcam_target_layers(model, image_size=128)
    (finer,) = gradcam_target_layers(model, image_size=128, layer="finer")
    (last,) = gradcam_target_layers(model, image_size=128, layer="last")
    assert [_cells(model, m, 128) for m in (auto, finer, last)] == [8, 16, 4]
    stages = list(model.backbone.feature_info)
    assert gradcam_target_layers(model, layer=-2)[0] is model.backbone.get_submodule(
        stages[-2]["module"])
    assert gradcam_target_layers(model, layer="2")[0] is model.backbone.get_submodule(
        stages[2]["module"])
    assert gradcam_target_layers(model, layer="conv_stem")[0] is model.backbone.conv_stem
    with pytest.raises(ConfigError, match="stages: "):
        gradcam_target_layers(model, layer="no.such.layer")
    with pytest.raises(ConfigError, match="not a feature stage"):
        gradcam_target_layers(model, layer=9)


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet10t", TINY])
def test_pooled_layer_is_the_map_the_head_pools(backbone: str) -> None:
    """layer=pooled: the module whose output global_pool averages (cam_guidance's map), the
    backbone's forward_features; a backbone without a top-level global_pool is an error."""
    model = FusionNet(backbone, 3).eval()
    (layer,) = gradcam_target_layers(model, image_size=64, layer="pooled")
    seen = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
        features = model.backbone.forward_features(x)
    handle.remove()
    torch.testing.assert_close(seen[0], features)
    with pytest.raises(ConfigError, match="global_pool"):
        pooled_layer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


# ------------------------------------------------------------------- optimisation
def test_param_groups_cover_every_parameter_once() -> None:
    model = FusionNet(TINY, 3, n_meta=N_META, dual_image=True, shared_backbone=False)
    groups = param_groups(model, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    backbone_ids = {id(p) for b in (model.backbone, model.backbone2) for p in b.parameters()}
    for g in groups:
        in_backbone = {id(p) in backbone_ids for p in g["params"]}
        assert in_backbone == {g["name"].startswith("backbone")}
        assert g["lr"] == pytest.approx(1e-4 if g["name"].startswith("backbone") else 1e-3)
        no_decay = g["name"].endswith("no_decay")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05)
        assert all((p.ndim <= 1) == no_decay for p in g["params"])
    names = {g["name"] for g in groups}
    assert names == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    torch.optim.AdamW(groups)  # accepted as is


def test_frozen_backbone_gets_no_gradient() -> None:
    model = FusionNet(TINY, 1, n_meta=N_META)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    assert set_backbone_trainable(model, False) == n_backbone
    model(torch.randn(2, 3, 32, 32), torch.randn(2, N_META)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())
    assert set_backbone_trainable(MetaMLP(3, 1), False) == 0
