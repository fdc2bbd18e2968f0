"""Named recipes: flat config overrides (the same keys as papermill parameters)."""

from __future__ import annotations

from typing import Any

#: What the HAM10000 EfficientNet-Lite0 presets share (128 px, 4 epochs, TTA 8).
_LITE0: dict[str, Any] = dict(dataset="ham10000", backbone="tf_efficientnet_lite0",
                              image_size=128, aspect="crop", epochs=4, lr=1e-3, batch_size=32,
                              loss="ce", class_weighting="balanced", meta_hidden=(64, 32),
                              n_folds=5, tta=8)
#: Those presets from ImageNet weights: one frozen-backbone epoch, then the backbone at 0.3x
#: the head's LR.
_LITE0_PRETRAINED: dict[str, Any] = dict(_LITE0, pretrained=True, freeze_epochs=1,
                                         backbone_lr_mult=0.3)
#: The same trained for 6 epochs (1 frozen + 5 fine-tuning).
_LITE0_6EP: dict[str, Any] = dict(_LITE0_PRETRAINED, epochs=6)

#: MILK10k on 2 CPU cores: the pretrained Lite0 recipe on both images of a lesion (separate
#: clinical and dermoscopic branches), metadata + MONET scores + skin tone (the default
#: feature set), lesions whose pair is absent left out (a partial download). Chosen on fold 0
#: (paired, 128 px; thresholded macro F1 with TTA 2): bce with sqrt pos_weight 0.404 at 4
#: epochs against 0.289 with balanced pos_weight; 8 epochs 0.448 (1 frozen + 7). NHWC memory
#: format: x1.62 training images/s for Lite0 128 px fp32 on 2 CPU cores, measured side by
#: side with `python benchmarks/train_bench.py --backbones tf_efficientnet_lite0 --sizes 128
#: --precisions fp32` (docs/benchmarks.md); in this preset's own loop (fold 0, 25 steps + the
#: validation pass, paired) x1.64 frozen and x1.40 fine-tuning epochs.
_MILK_LITE0: dict[str, Any] = dict(
    _LITE0_PRETRAINED, dataset="milk10k", dual_image=True, shared_backbone=False,
    missing_images="drop", loss="bce", class_weighting="sqrt", epochs=8, tta=2,
    channels_last=True)

PRESETS: dict[str, dict[str, Any]] = {
    # The synthetic default the demo and notebooks use: about 2 minutes on 2 idle CPU cores
    # (5 folds x 6 epochs; 03_train took 80 s of the demo's 125 s).
    "synthetic_demo": dict(dataset="synthetic", synthetic_task="binary", synthetic_patients=120,
                           image_size=64, backbone="resnet18", epochs=6, batch_size=32,
                           lr=1e-3, n_folds=5),
    # Smallest end-to-end configuration: seconds, for tests.
    "tiny": dict(dataset="synthetic", synthetic_patients=16, synthetic_image_size=32,
                 image_size=32, backbone="resnet10t", epochs=1, batch_size=16, n_folds=2,
                 meta_hidden=(16, 8), max_steps_per_epoch=2),
    # SIIM-ISIC 2020 winners' recipe: EfficientNet + metadata fusion, multi-sample dropout.
    "isic2020_effnet_meta": dict(dataset="isic2020", backbone="tf_efficientnet_b3.ns_jft_in1k",
                                 pretrained=True, image_size=384, features="isic11", fold_stratify="label+size",
                                 meta_hidden=(512, 128), n_msd=5, epochs=15, batch_size=32,
                                 lr=3e-4, warmup_epochs=1.0, loss="bce", amp=True),
    # HAM10000 seeds: DenseNet-121 with focal loss and a class-balanced sampler.
    "ham10000_densenet_focal": dict(dataset="ham10000", backbone="densenet121", pretrained=True,
                                    image_size=224, loss="focal", focal_gamma=2.0,
                                    sampler="sqrt", epochs=20, batch_size=32, lr=3e-4),
    "ham10000_resnet50_focal": dict(dataset="ham10000", backbone="resnet50", pretrained=True,
                                    image_size=224, loss="focal", sampler="sqrt", epochs=20,
                                    batch_size=32, lr=3e-4),
    # MILK10k: dual EfficientNetV2-S, clinical + dermoscopic, metadata + MONET scores.
    "milk10k_dual_effv2s": dict(dataset="milk10k", backbone="tf_efficientnetv2_s.in21k_ft_in1k",
                                pretrained=True, dual_image=True, shared_backbone=False,
                                image_size=384, loss="bce", class_weighting="sqrt", epochs=20,
                                batch_size=16, lr=2e-4),
    # Metadata-only baseline (MetaMLP 64 -> 32).
    "meta_only": dict(use_image=False, meta_hidden=(64, 32), epochs=30, lr=3e-3,
                      batch_size=256),
    # Real-data results (docs/results.md via benchmarks/real_results.py) on 2 CPU cores.
    # HAM10000: timm ResNet-18 from scratch (no pretrained weights), images + metadata.
    "ham10000_scratch_cpu": dict(dataset="ham10000", backbone="resnet18", pretrained=False,
                                 image_size=28, epochs=4, batch_size=64, lr=1e-3,
                                 weight_decay=1e-2, scheduler="cosine", warmup_epochs=1.0,
                                 loss="ce", meta_hidden=(64, 32), n_folds=5, tta=1),
    # Metadata-only MetaMLP baselines on the real tables (no images needed).
    "ham10000_meta": dict(dataset="ham10000", use_image=False, meta_hidden=(64, 32), epochs=30,
                          lr=3e-3, batch_size=256, loss="ce"),
    "isic2020_meta_context": dict(dataset="isic2020", use_image=False, features="context",
                                  fold_stratify="label+size", meta_hidden=(64, 32), epochs=30,
                                  lr=3e-3, batch_size=256, loss="bce"),
    "isic2019_meta": dict(dataset="isic2019", use_image=False, class_weighting="balanced",
                          loss="ce", meta_hidden=(64, 32), epochs=30, lr=3e-3, batch_size=256),
    "milk10k_meta": dict(dataset="milk10k", use_image=False, loss="bce", class_weighting="sqrt",
                         meta_hidden=(64, 32), epochs=30, lr=3e-3, batch_size=256),
    # HAM10000 with offline ImageNet weights (`melalib weights`), 2 CPU cores: EfficientNet-Lite0
    # at 128 px, centre-square crops, one frozen-backbone epoch then 3 fine-tuning epochs at
    # 0.3x the head's LR, class-balanced CE, metadata (age, sex, site) fused, TTA 8.
    "ham10000_lite0_pretrained": dict(_LITE0_PRETRAINED),
    # The same recipe trained longer: 1 frozen epoch then 5 fine-tuning epochs (the 8-epoch
    # fold-0 curve in docs/results.md peaked at epoch 5).
    "ham10000_lite0_pretrained_6ep": dict(_LITE0_6EP),
    # The 6-epoch recipe trained to keep its class-activation map on the true lesion
    # (`melalib.guidance`, weight 1): needs guide_masks (NEEDS). HAM10000 fold 0, paired
    # with the recipe, at the pooled layer: concentration 1.847 against 1.507, pointing
    # 0.865 against 0.772, border peak 0.026 against 0.078, balanced accuracy 0.704 against
    # 0.698; fold 1: 1.794, 0.842, 0.068, 0.732 (docs/results.md, section 7).
    "ham10000_lite0_guided": dict(_LITE0_6EP, cam_guidance=1.0),
    # The 6-epoch recipe with the three options that help a model meet another clinic:
    # Shades of Gray colour constancy, the vignette border augmentation and metadata blanking
    # (p 0.3). Chosen on HAM10000 fold 0 (paired with the recipe) by the in-domain figures:
    # balanced accuracy 0.708 against 0.696 (colour constancy alone: 0.708 too), with age,
    # sex and site blanked 0.684 against 0.637 (the best single-source row). On the MILK10k
    # dermoscopic images (shared classes, not used to choose): 0.572 against 0.552, melanoma
    # AUC 0.874 against 0.858 (docs/results.md, section 6; issue 21's goals 0.65 / 0.90 are
    # not met). "Help" is the in-domain evidence; on MILK10k no option differs beyond its CI.
    "ham10000_lite0_robust": dict(_LITE0_6EP, color_constancy=True, border_aug="vignette",
                                  meta_blanking=0.3),
    # The ablation: the same backbone and recipe from random weights (nothing to freeze).
    "ham10000_lite0_scratch": dict(_LITE0, pretrained=False),
    # MILK10k dual images on 2 CPU cores (see _MILK_LITE0). The single-image rows of the
    # comparison: --set dual_image=false milk_view=dermoscopic (or clinical); images only:
    # --set use_meta=false.
    "milk10k_dual_lite0_pretrained": dict(_MILK_LITE0),
}

#: One line per preset, shown by `melalib presets` (a test keeps the keys equal to PRESETS).
DESCRIPTIONS: dict[str, str] = {
    "synthetic_demo": "synthetic binary data, ResNet-18 64 px + metadata: `melalib demo`",
    "tiny": "smallest end-to-end synthetic run (seconds): tests and `melalib demo --quick`",
    "isic2020_effnet_meta": "SIIM-ISIC 2020 winners' recipe: EfficientNet-B3 384 px + "
                            "metadata MLP, multi-sample dropout (GPU)",
    "ham10000_densenet_focal": "HAM10000 7-class: DenseNet-121 224 px, focal loss, "
                               "sqrt class-balanced sampler (GPU)",
    "ham10000_resnet50_focal": "HAM10000 7-class: ResNet-50 224 px, focal loss, sqrt sampler "
                               "(GPU)",
    "milk10k_dual_effv2s": "MILK10k 11-class: dual EfficientNetV2-S on clinical + dermoscopic "
                           "images, metadata + MONET scores (GPU)",
    "meta_only": "metadata-only MetaMLP baseline (no images) on top of any dataset",
    "ham10000_scratch_cpu": "HAM10000 on 2 CPU cores: ResNet-18 28 px from scratch + metadata "
                            "(docs/results.md)",
    "ham10000_meta": "HAM10000 metadata-only MetaMLP baseline (docs/results.md)",
    "isic2020_meta_context": "ISIC 2020 metadata + label-free patient context, MetaMLP "
                             "(docs/results.md)",
    "isic2019_meta": "ISIC 2019 metadata-only MetaMLP, balanced class weights "
                     "(docs/results.md)",
    "milk10k_meta": "MILK10k metadata + MONET scores, MetaMLP (docs/results.md)",
    "ham10000_lite0_pretrained": "HAM10000 on 2 CPU cores: EfficientNet-Lite0 128 px from "
                                 "offline ImageNet weights (`melalib weights`) + metadata, TTA 8",
    "ham10000_lite0_pretrained_6ep": "the pretrained EfficientNet-Lite0 recipe trained for 6 "
                                     "epochs (1 frozen + 5 fine-tuning) instead of 4",
    "ham10000_lite0_guided": "the 6-epoch pretrained Lite0 recipe with cam_guidance=1: its "
                             "Grad-CAM at the pooled layer kept on the true lesion (needs "
                             "--set guide_masks=DIR of HAM10000's lesion masks)",
    "ham10000_lite0_robust": "the 6-epoch pretrained Lite0 recipe for use beyond its clinic: "
                             "colour constancy, vignette border augmentation, metadata "
                             "blanking 0.3 (docs/results.md, section 6)",
    "ham10000_lite0_scratch": "the same EfficientNet-Lite0 recipe from random weights (what "
                              "the ImageNet weights buy)",
    "milk10k_dual_lite0_pretrained": "MILK10k 11-class on 2 CPU cores: EfficientNet-Lite0 128 "
                                     "px from offline ImageNet weights, clinical + dermoscopic "
                                     "branches, metadata + MONET + skin tone, absent pairs left "
                                     "out (missing_images=drop)",
}


#: Keys a preset cannot know and its user must set (the value's meaning): building the
#: preset without them is a ConfigError that names them.
NEEDS: dict[str, dict[str, str]] = {
    "ham10000_lite0_guided": {"guide_masks": "the folder of HAM10000's lesion masks "
                                             "(<image_id>_segmentation.png)"},
}


def describe(name: str) -> str:
    """The preset's one-line description ("" when it has none)."""
    return DESCRIPTIONS.get(name, "")
