"""Explanations: Grad-CAM maps for every model mode, overlays, and tables of the errors.

pytorch-grad-cam (package ``grad-cam``) calls a model with one tensor, so `ImageOnlyWrapper`
holds the metadata (and the other image of a dual-image model) fixed per sample and feeds
the explained image to the fusion model. The target layer is the backbone's last feature
layer (`melalib.models.gradcam_target_layers`). With a shared backbone both images pass
through the same layer, so a map of either image is computed on a copy of the model whose
second branch has its own copy of the weights (same numbers, separate hooks).

`cam_mass_on_lesion` measures how much of a map falls on the lesion. `lesion_masks` takes
the true masks the synthetic data set stores; for images without one (real data)
`estimate_lesion_mask` stands in (Otsu threshold on the grey image: the darker region, restricted to the connected dark component at the centre or,
failing that, the largest dark component not touching the border, so the dark rim of the
dermoscope field is left out).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.utils.data import default_collate

from .data.synthetic import lesion_mask
from .errors import ConfigError, DataError, MelalibError
from .inference import load_predictor
from .io import atomic_path
from .models import gradcam_target_layers
from .runs import RunDir
from .runtime import make_dataset
from .targets import DIAGNOSIS_CLASSES, DX_PREFIX, diagnosis_cam_classes
from .tasks import Task
from .transforms import denormalize

log = logging.getLogger("melalib")

CAM_METHODS = ("gradcam", "gradcam++", "eigencam")
ERROR_KINDS = ("fn", "fp", "tp", "tn", "wrong")
MELANOMA_NAMES = ("melanoma", "mel")


# ----------------------------------------------------------------------------- wrapper
class ImageOnlyWrapper(nn.Module):
    """``forward(x)`` = the fusion model with ``x`` as one image and the rest held fixed.

    ``explain="image"``: ``x`` is the first image; ``meta`` and ``image2`` (dual models) are
    held fixed. ``explain="image2"``: ``x`` is the second image; ``meta`` and ``image`` are
    held fixed. The held tensors' rows match the rows of ``x``.
    """

    def __init__(self, model: nn.Module, meta: torch.Tensor | None = None,
                 image2: torch.Tensor | None = None, explain: str = "image",
                 image: torch.Tensor | None = None) -> None:
        super().__init__()
        if explain not in ("image", "image2"):
            raise ConfigError(f"explain must be 'image' or 'image2', got {explain!r}")
        fixed = image if explain == "image2" else image2
        if explain == "image2" and fixed is None:
            raise ConfigError("explain='image2' holds the first image fixed: pass image=")
        self.model = model
        self.explain = explain
        self.register_buffer("meta", None if meta is None else meta.detach(), persistent=False)
        self.register_buffer("fixed", None if fixed is None else fixed.detach(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("meta", "fixed"):
            held = getattr(self, name)
            if held is not None and len(held) != len(x):
                raise ValueError(f"the wrapper holds {len(held)} rows of {name} but got a batch "
                                 f"of {len(x)} images")
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)  # gradients reach a frozen backbone too
        meta = self.meta if self.meta is not None and self.meta.shape[-1] > 0 else None
        if self.explain == "image":
            return self.model(image=x, meta=meta, image2=self.fixed)
        return self.model(image=self.fixed, meta=meta, image2=x)


class _SignedOutput:
    """Target for a one-logit model: the positive logit (``sign`` 1) or its negative."""

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return (output * self.sign).sum()


# ---------------------------------------------------------------------------- grad-cam
def _has_image_branch(model: nn.Module) -> bool:
    return getattr(model, "backbone", None) is not None


def _cam_class(method: str) -> type:
    # pytorch_grad_cam (grad-cam) is imported where a map is drawn: it is heavy (it pulls in
    # scikit-learn, matplotlib and ttach) and nothing else in melalib needs it
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}
    if method not in classes:
        raise ConfigError(f"method must be one of {CAM_METHODS}, got {method!r}")
    return classes[method]


def _targets(n_outputs: int, n: int, target_class: int | Sequence[int] | None) -> list[Any]:
    from pytorch_grad_cam.utils.model_targets import (  # heavy: see _cam_class
        ClassifierOutputTarget,
    )

    if target_class is None or isinstance(target_class, (int, np.integer)):
        classes = [target_class] * n
    else:
        classes = [int(c) for c in target_class]
        if len(classes) != n:
            raise ConfigError(f"{len(classes)} target classes for {n} images")
    if n_outputs == 1:  # binary: 1 = explain melanoma (positive logit), 0 = the negative
        for c in classes:
            if c not in (None, 0, 1):
                raise ConfigError(f"binary target_class must be 0 or 1, got {c}")
        return [_SignedOutput(-1.0 if c == 0 else 1.0) for c in classes]
    for c in classes:
        if c is not None and not 0 <= c < n_outputs:
            raise ConfigError(f"target_class {c} is outside 0..{n_outputs - 1}")
    return [None if c is None else ClassifierOutputTarget(int(c)) for c in classes]


def grad_cam(model: nn.Module, batch: dict[str, Any] | torch.Tensor, method: str = "gradcam",
             target_class: int | Sequence[int] | None = None, branch: int = 1) -> np.ndarray:
    """Class-activation maps (N, H, W) in [0, 1] for one image branch of ``model``.

    ``batch``: a dict like `LesionDataset` items collated (``image``, optional ``image2``
    and ``meta``) or an image tensor. ``branch`` 1 explains ``image``, 2 ``image2`` (dual
    models). ``target_class``: None explains the predicted class (binary: melanoma);
    an int or one int per image picks the class (binary: 1 melanoma, 0 the benign
    direction). A metadata-only model raises MelalibError.
    """
    if not _has_image_branch(model):
        raise MelalibError(f"{type(model).__name__} is a metadata-only model: there is no "
                           "image to explain")
    if branch not in (1, 2):
        raise ConfigError(f"branch must be 1 or 2, got {branch}")
    if isinstance(batch, torch.Tensor):
        batch = {"image": batch}
    if batch.get("image") is None:
        raise MelalibError("the batch holds no image to explain (key 'image')")
    dual = bool(getattr(model, "dual_image", False))
    if branch == 2 and not dual:
        raise ConfigError("branch=2 explains the second image of a dual-image model; this model "
                          "takes one image")
    if dual and batch.get("image2") is None:
        raise DataError("a dual-image model needs the batch's second image (key 'image2')")
    device = next(model.parameters()).device
    was_training = model.training
    work = model
    if dual and getattr(model, "backbone2", None) is None:
        work = copy.deepcopy(model)  # un-share: one hooked layer per branch
        work.backbone2 = copy.deepcopy(work.backbone)
    image = batch["image"].to(device).float()
    image2 = batch["image2"].to(device).float() if dual else None
    meta = batch.get("meta")
    meta = meta.to(device).float() if meta is not None else None
    if branch == 1:
        wrapper = ImageOnlyWrapper(work, meta=meta, image2=image2, explain="image")
        x = image
    else:
        wrapper = ImageOnlyWrapper(work, meta=meta, explain="image2", image=image)
        x = image2
    assert x is not None
    n_outputs = int(getattr(model, "n_outputs", 0) or _n_outputs(wrapper, x))
    layers = gradcam_target_layers(work, branch=branch, image_size=min(x.shape[-2:]))
    targets = _targets(n_outputs, len(x), target_class)
    if any(t is None for t in targets):
        with torch.no_grad():
            wrapper.eval()
            predicted = wrapper(x).argmax(dim=1).tolist()
        targets = _targets(n_outputs, len(x), [int(p) if t is None else _class_of(t)
                                               for t, p in zip(targets, predicted, strict=True)])
    shapes: list[tuple[int, ...]] = []
    probe = layers[0].register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        with _cam_class(method)(model=wrapper, target_layers=layers) as cam:
            maps = cam(input_tensor=x, targets=targets)
    finally:
        probe.remove()
        model.train(was_training)
    maps = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0), 0.0, 1.0)
    _warn_degenerate(maps, shapes, tuple(x.shape[-2:]))
    return maps


def _warn_degenerate(maps: np.ndarray, shapes: list[tuple[int, ...]],
                     size: tuple[int, ...]) -> None:
    """Log why maps carry no information: a 1 x 1 feature map, or no positive evidence."""
    if shapes and len(shapes[0]) == 4 and shapes[0][-1] * shapes[0][-2] == 1:
        log.warning("Grad-CAM: the target layer's feature map is 1 x 1 at input size %s, so the "
                    "maps cannot localise anything (all constant); use a larger image_size",
                    "x".join(map(str, size)))
        return
    flat = maps.reshape(len(maps), -1)
    constant = int(np.sum(flat.max(axis=1) - flat.min(axis=1) <= 0))
    if constant:
        log.warning("Grad-CAM: %d of %d maps are constant (the image holds no positive evidence "
                    "for the explained class at the target layer)", constant, len(maps))


def _class_of(target: Any) -> int:
    return int(target.category)


def _n_outputs(wrapper: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(wrapper.eval()(x[:1]).shape[1])


# ---------------------------------------------------------------------------- overlays
def overlay(image_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The map as a jet heatmap over the image: uint8 (H, W, 3); ``alpha`` is the heatmap's
    weight. A map of another size is resized to the image."""
    from pytorch_grad_cam.utils.image import show_cam_on_image  # heavy: see _cam_class

    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"overlay needs an RGB image (H, W, 3), got shape {image.shape}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    cam = _resize(np.asarray(cam, dtype=np.float32), image.shape[:2])
    rgb = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 or image.max() > 1 else 1.0)
    return show_cam_on_image(np.clip(rgb, 0, 1), np.clip(cam, 0, 1), use_rgb=True,
                             image_weight=1.0 - alpha)


def _resize(cam: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if cam.ndim != 2:
        raise DataError(f"a map must be 2-D (H, W), got shape {cam.shape}")
    if cam.shape == tuple(size):
        return cam
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    img = Image.fromarray(cam.astype(np.float32), mode="F").resize((size[1], size[0]), resample)
    return np.asarray(img, dtype=np.float32)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"


def save_overlays(items: Iterable[tuple[str, np.ndarray, np.ndarray]], out_dir: str | Path,
                  alpha: float = 0.4) -> list[Path]:
    """Write ``(name, image_uint8, cam)`` overlays as ``out_dir/<name>.png`` (atomic);
    characters other than letters, digits, ``._-`` become ``_``, a repeated name gets a
    ``_2``, ``_3``... suffix."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    used: dict[str, int] = {}
    for name, image, cam in items:
        stem = _safe_name(name)
        used[stem] = used.get(stem, 0) + 1
        if used[stem] > 1:
            stem = f"{stem}_{used[stem]}"
        path = out_dir / f"{stem}.png"
        picture = Image.fromarray(overlay(image, cam, alpha))
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        paths.append(path)
    return paths


# ------------------------------------------------------------------------ error tables
def _melanoma_index(task: Task) -> int | None:
    for i, name in enumerate(task.classes):
        if name.lower() in MELANOMA_NAMES:
            return i
    return None


def error_table(oof: pd.DataFrame, table_df: pd.DataFrame, task: Task, kind: str = "fn",
                threshold: float = 0.5, top: int = 16, positive: str | None = None
                ) -> pd.DataFrame:
    """The ``top`` most confident predictions of one kind, joined with the table's metadata.

    Binary: the call is ``P(positive) >= threshold``; ``fn`` = positives with the lowest
    P(positive), ``fp`` = negatives with the highest, ``tp`` / ``tn`` the most confident
    right calls, ``wrong`` = fn and fp together. Multiclass / multilabel: the call is the
    argmax; ``wrong`` = misclassified rows, and ``fn`` / ``fp`` / ``tp`` / ``tn`` are taken
    with respect to the class ``positive`` (default: the task's melanoma class). Rows are
    sorted by the confidence of the call (probability of the predicted class), highest
    first. Columns: image_id, fold, label, label_name, pred, pred_name, confidence, the
    probability columns, then the table's other columns (age, sex, site, image_path...).
    """
    if kind not in ERROR_KINDS:
        raise ConfigError(f"kind must be one of {ERROR_KINDS}, got {kind!r}")
    if top < 1:
        raise ConfigError(f"top must be >= 1, got {top}")
    for column in ("image_id", "label", *task.prob_columns):
        if column not in oof.columns:
            raise DataError(f"the OOF predictions have no {column!r} column", column=column)
    if "image_id" not in table_df.columns:
        raise DataError("the table has no 'image_id' column", column="image_id")
    y = oof["label"].to_numpy().astype(np.int64)
    probs = oof[task.prob_columns].to_numpy(dtype=np.float64)
    if task.kind == "binary":
        p = probs[:, 0]
        pred = (p >= threshold).astype(np.int64)
        confidence = np.where(pred == 1, p, 1.0 - p)
        pos = 1
    else:
        pred = probs.argmax(axis=1)
        confidence = probs.max(axis=1)
        pos = (task.index_of(positive) if positive is not None else _melanoma_index(task))
        if pos is None and kind != "wrong":
            raise ConfigError(f"kind={kind!r} on a {task.kind} task needs positive= (a class of "
                              f"{list(task.classes)}); or use kind='wrong'")
    right = pred == y
    masks = {"wrong": ~right, "fn": (y == pos) & (pred != pos), "fp": (y != pos) & (pred == pos),
             "tp": (y == pos) & (pred == pos), "tn": (y != pos) & (pred != pos)}
    names = np.array(task.classes, dtype=object)
    out = pd.DataFrame({
        "image_id": oof["image_id"].astype(str).to_numpy(),
        "fold": oof["fold"].to_numpy() if "fold" in oof.columns else -1,
        "label": y, "label_name": names[y], "pred": pred, "pred_name": names[pred],
        "confidence": confidence,
    })
    for column in task.prob_columns:
        out[column] = oof[column].to_numpy()
    out = out[masks[kind]]
    out = out.sort_values(["confidence", "image_id"], ascending=[False, True], kind="mergesort")
    out = out.head(top).reset_index(drop=True)
    meta = table_df.assign(image_id=table_df["image_id"].astype(str))
    meta = meta[[c for c in meta.columns if c == "image_id" or c not in out.columns]]
    missing = ~out["image_id"].isin(meta["image_id"])
    if missing.any():
        raise DataError(f"OOF image {out['image_id'][missing].iloc[0]!r} is not in the table",
                        column="image_id")
    return out.merge(meta, on="image_id", how="left", validate="one_to_one")


def explain_errors(run_dir: str | Path, kind: str = "fn", top: int = 8,
                   method: str = "gradcam", fold: int | None = None, threshold: float = 0.5,
                   target: str = "pred", branch: int = 1, device: str = "auto"
                   ) -> tuple[pd.DataFrame, list[np.ndarray], np.ndarray]:
    """Grad-CAM of a run's top errors (or right calls) of one kind.

    Each row is explained by its own fold's best checkpoint, with the input built as at
    validation (the fold's metadata encoder, the validation transform). ``target``:
    ``pred`` explains the class the model called, ``true`` the true class. Returns the
    `error_table`, the images as the model saw them (uint8 H x W x 3, de-normalised) and the
    maps (N, H, W), in table order.
    """
    if target not in ("pred", "true"):
        raise ConfigError(f"target must be 'pred' or 'true', got {target!r}")
    run = RunDir.read(run_dir)
    table = run.table()
    oof = run.oof()
    if fold is not None:
        oof = oof[oof["fold"] == fold]
        if oof.empty:
            raise ConfigError(f"fold {fold} has no OOF predictions in {run.path}")
    task = table.task
    errors = error_table(oof, table.df, task, kind=kind, threshold=threshold, top=top)
    images: list[np.ndarray] = [np.zeros(0, np.uint8)] * len(errors)
    cams = np.zeros((len(errors), 0, 0), dtype=np.float32)
    rows = table.df.assign(image_id=table.df["image_id"].astype(str)).set_index("image_id")
    for k in sorted(errors["fold"].unique().tolist()):
        at = np.flatnonzero(errors["fold"].to_numpy() == k)
        predictor = load_predictor(run.checkpoint(int(k), "best"), device=device)
        member = predictor.members[0]
        df = rows.loc[errors["image_id"].iloc[at]].reset_index()
        dataset = make_dataset(member.cfg, table, df, member.encoder.transform(df), train=False,
                               labelled=False)
        batch = default_collate([dataset[i] for i in range(len(dataset))])
        which = errors["pred" if target == "pred" else "label"].to_numpy()[at]
        if predictor.task != task:  # target=diagnosis: a 9-class model behind a binary run
            which = _diagnosis_targets(which, oof, errors["image_id"].iloc[at])
        maps = grad_cam(member.model, batch, method=method, target_class=which.tolist(),
                        branch=branch)
        if cams.shape[1:] != maps.shape[1:]:
            cams = np.zeros((len(errors), *maps.shape[1:]), dtype=np.float32)
        cams[at] = maps
        key = "image" if branch == 1 else "image2"
        for j, i in enumerate(at):
            images[i] = denormalize(batch[key][j], dataset.transform.mean,
                                    dataset.transform.std)
    return errors, images, cams


def _diagnosis_targets(which: np.ndarray, oof: pd.DataFrame, ids: pd.Series) -> np.ndarray:
    """Binary CAM targets of a diagnosis-trained run as its 9 classes (`melalib.targets`)."""
    dx = oof.assign(image_id=oof["image_id"].astype(str)).set_index("image_id")
    columns = [f"{DX_PREFIX}{c}" for c in DIAGNOSIS_CLASSES]
    return diagnosis_cam_classes(which, dx.loc[ids.astype(str), columns].to_numpy())


# -------------------------------------------------------------------------- lesion masks
def otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's threshold of a grey image (values 0..255): maximises between-class variance."""
    values = np.clip(np.asarray(gray, dtype=np.float64).ravel(), 0, 255)
    hist = np.bincount(np.round(values).astype(np.int64), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0 / w0 - (total - m0) / w1) ** 2 * w0 * w1
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return float(np.argmax(between))


def estimate_lesion_mask(image_uint8: np.ndarray) -> np.ndarray:
    """A stand-in lesion mask (H, W) bool: the dark region by Otsu's threshold, keeping
    the dark component under the image centre, else the largest one not touching the
    border (the dermoscope's dark rim touches it), else the largest."""
    image = np.asarray(image_uint8, dtype=np.float64)
    gray = image @ np.array([0.299, 0.587, 0.114]) if image.ndim == 3 else image
    dark = gray <= otsu_threshold(gray)
    labels, n = ndimage.label(dark)
    if n == 0:
        return dark
    h, w = dark.shape
    centre = labels[h // 2, w // 2]
    if centre:
        return labels == centre
    sizes = ndimage.sum_labels(dark, labels, index=np.arange(1, n + 1))
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0],
                                           labels[:, -1]])).tolist()) - {0}
    inner = [i for i in range(1, n + 1) if i not in border]
    pool = inner or list(range(1, n + 1))
    best = max(pool, key=lambda i: sizes[i - 1])
    return labels == best


def lesion_masks(image_paths: Sequence[str | Path], images: Sequence[np.ndarray]) -> np.ndarray:
    """Lesion masks (N, H, W) bool for explained images: the true mask where the data has
    one (synthetic data keeps them), else `estimate_lesion_mask`."""
    out = []
    for path, image in zip(image_paths, images, strict=True):
        mask = lesion_mask(path)
        mask = estimate_lesion_mask(image) if mask is None else mask
        out.append(_resize(mask.astype(np.float32), np.asarray(image).shape[:2],
                           nearest=True) > 0.5)
    return np.stack(out) if out else np.zeros((0, 1, 1), dtype=bool)


def cam_mass_on_lesion(cams: np.ndarray, masks: np.ndarray) -> float:
    """Share of the total CAM mass that lies inside the lesion masks (pooled over images;
    masks of another size are resized, nearest neighbour). NaN when the maps are all 0."""
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks)
    if cams.ndim == 2:
        cams, masks = cams[None], masks[None] if masks.ndim == 2 else masks
    if cams.ndim != 3 or masks.ndim != 3 or len(cams) != len(masks):
        raise DataError(f"cams {cams.shape} and masks {masks.shape} must be (N, H, W) alike")
    if (cams < 0).any() or not np.isfinite(cams).all():
        raise DataError("CAM values must be finite and non-negative")
    inside = 0.0
    for cam, mask in zip(cams, masks, strict=True):
        m = _resize(mask.astype(np.float32), cam.shape, nearest=True) > 0.5
        inside += float(cam[m].sum())
    total = float(cams.sum())
    return inside / total if total > 0 else float("nan")
