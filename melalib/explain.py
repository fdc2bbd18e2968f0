"""Explanations: Grad-CAM maps for every model mode, overlays, and tables of the errors.

pytorch-grad-cam (package ``grad-cam``) calls a model with one tensor, so `ImageOnlyWrapper`
holds the metadata (and the other image of a dual-image model) fixed per sample and feeds
the explained image to the fusion model. The target layer is chosen by
`melalib.models.gradcam_target_layers`. With a shared backbone both images pass
through the same layer, so a map of either image is computed on a copy of the model whose
second branch has its own copy of the weights (same numbers, separate hooks).

Which images: `select_rows` (chosen ids, or `error_table`'s most confident errors / right
calls of a kind); which class: `explained_classes` (the run's own TTA-averaged call, the
true class, or a named class); `explain` draws the maps with a pytorch-grad-cam method
(`CAM_METHODS`) at a chosen layer, optionally averaged over TTA views, or with the same
architecture's random weights (the floor); `explain_pairs` draws both images of a
dual-image run's lesions (MILK10k: dermoscopic and clinical, `branch_views`), each by its
own branch. `melalib explain` (`melalib.cli.evaluate`) writes them to a folder it owns. How
the maps localise is measured in `melalib.localize`; how faithful
they are, and how much the border drives the prediction, in `melalib.faithful`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import default_collate

from .config import RunConfig
from .data.load import pair_views
from .errors import ConfigError, DataError, MelalibError
from .inference import load_predictor
from .io import atomic_path
from .localize import resize_map
from .models import build_model, gradcam_target_layers
from .runs import RunDir
from .runtime import make_dataset
from .targets import DIAGNOSIS_CLASSES, DX_PREFIX, diagnosis_cam_classes
from .tasks import Task, melanoma_class
from .transforms import denormalize, tta_views

log = logging.getLogger("melalib")

#: pytorch-grad-cam methods by name (`grad_cam`'s ``method``).
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "eigencam")
ERROR_KINDS = ("fn", "fp", "tp", "tn", "wrong")


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
    import pytorch_grad_cam as pgc

    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus,
               "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM, "xgradcam": pgc.XGradCAM,
               "eigencam": pgc.EigenCAM}
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
             target_class: int | Sequence[int] | None = None, branch: int = 1,
             layer: str | int | None = None, tta: int = 1) -> np.ndarray:
    """Class-activation maps (N, H, W) in [0, 1] for one image branch of ``model``.

    ``batch``: a dict like `LesionDataset` items collated (``image``, optional ``image2``
    and ``meta``) or an image tensor. ``branch`` 1 explains ``image``, 2 ``image2`` (dual
    models). ``target_class``: None explains the single-view predicted class (binary:
    melanoma); an int or one int per image picks the class (binary: 1 melanoma, 0 the
    benign direction). ``method``: `CAM_METHODS`; ``layer``: see
    `melalib.models.backbone_target_layer` (default: the deepest stage with >= 7 cells a
    side). ``tta``: the maps of the first ``tta`` views (`melalib.transforms.tta_views`,
    applied to both images as at prediction), each mapped back and averaged. A
    metadata-only model raises MelalibError.
    """
    if not _has_image_branch(model):
        raise MelalibError(f"{type(model).__name__} is a metadata-only model: there is no "
                           "image to explain")
    if branch not in (1, 2):
        raise ConfigError(f"branch must be 1 or 2, got {branch}")
    batch = {"image": batch} if isinstance(batch, torch.Tensor) else batch
    if batch.get("image") is None:
        raise MelalibError("the batch holds no image to explain (key 'image')")
    dual = bool(getattr(model, "dual_image", False))
    if branch == 2 and not dual:
        raise ConfigError("branch=2 explains the second image of a dual-image model; this model "
                          "takes one image")
    if dual and batch.get("image2") is None:
        raise DataError("a dual-image model needs the batch's second image (key 'image2')")
    device = next(model.parameters()).device
    work = model
    if dual and getattr(model, "backbone2", None) is None:
        work = copy.deepcopy(model)  # un-share: one hooked layer per branch
        work.backbone2 = copy.deepcopy(work.backbone)
    images = [batch["image"].to(device).float(),
              batch["image2"].to(device).float() if dual else None]
    meta = batch.get("meta")
    meta = meta.to(device).float() if meta is not None else None
    was_training = model.training
    try:
        views = tta_views(tta)
        maps = [view.inverse(torch.from_numpy(_cam_view(
            work, [None if im is None else view(im) for im in images], meta, branch, method,
            target_class, layer))).numpy() for view in views]
    finally:
        model.train(was_training)
    return np.mean(maps, axis=0).astype(np.float32)


def _cam_view(work: nn.Module, images: list[torch.Tensor | None], meta: torch.Tensor | None,
              branch: int, method: str, target_class: int | Sequence[int] | None,
              layer: str | int | None) -> np.ndarray:
    """`grad_cam` of one view: maps (N, H, W) in [0, 1], degenerate maps logged."""
    image, image2 = images
    if branch == 1:
        wrapper = ImageOnlyWrapper(work, meta=meta, image2=image2, explain="image")
        x = image
    else:
        wrapper = ImageOnlyWrapper(work, meta=meta, explain="image2", image=image)
        x = image2
    assert x is not None
    n_outputs = int(getattr(work, "n_outputs", 0) or _n_outputs(wrapper, x))
    layers = gradcam_target_layers(work, branch=branch, image_size=min(x.shape[-2:]),
                                   layer=layer)
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
    cam = resize_map(np.asarray(cam, dtype=np.float32), image.shape[:2])
    rgb = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 or image.max() > 1 else 1.0)
    return show_cam_on_image(np.clip(rgb, 0, 1), np.clip(cam, 0, 1), use_rgb=True,
                             image_weight=1.0 - alpha)


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
def _calls(oof: pd.DataFrame, task: Task, threshold: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, the run's call, its confidence) per OOF row: binary ``p >= threshold``,
    else the argmax of the (TTA-averaged) probabilities."""
    for column in ("image_id", "label", *task.prob_columns):
        if column not in oof.columns:
            raise DataError(f"the OOF predictions have no {column!r} column", column=column)
    y = oof["label"].to_numpy().astype(np.int64)
    probs = oof[task.prob_columns].to_numpy(dtype=np.float64)
    if task.kind == "binary":
        pred = (probs[:, 0] >= threshold).astype(np.int64)
        return y, pred, np.where(pred == 1, probs[:, 0], 1.0 - probs[:, 0])
    return y, probs.argmax(axis=1), probs.max(axis=1)


def prediction_table(oof: pd.DataFrame, table_df: pd.DataFrame, task: Task,
                     threshold: float = 0.5) -> pd.DataFrame:
    """Every OOF row with the run's call, joined with the table's metadata: image_id, fold,
    label, label_name, pred, pred_name, confidence, the probability columns, then the
    table's other columns (age, sex, site, image_path...); `error_table` picks from it."""
    if "image_id" not in table_df.columns:
        raise DataError("the table has no 'image_id' column", column="image_id")
    y, pred, confidence = _calls(oof, task, threshold)
    names = np.array(task.classes, dtype=object)
    out = pd.DataFrame({
        "image_id": oof["image_id"].astype(str).to_numpy(),
        "fold": oof["fold"].to_numpy() if "fold" in oof.columns else -1,
        "label": y, "label_name": names[y], "pred": pred, "pred_name": names[pred],
        "confidence": confidence,
    })
    for column in task.prob_columns:
        out[column] = oof[column].to_numpy()
    meta = table_df.assign(image_id=table_df["image_id"].astype(str))
    meta = meta[[c for c in meta.columns if c == "image_id" or c not in out.columns]]
    missing = ~out["image_id"].isin(meta["image_id"])
    if missing.any():
        raise DataError(f"OOF image {out['image_id'][missing].iloc[0]!r} is not in the table",
                        column="image_id")
    return out.merge(meta, on="image_id", how="left", validate="one_to_one")


def error_table(oof: pd.DataFrame, table_df: pd.DataFrame, task: Task, kind: str = "fn",
                threshold: float = 0.5, top: int = 16, positive: str | None = None
                ) -> pd.DataFrame:
    """The ``top`` most confident predictions of one kind (`prediction_table`'s rows).

    Binary: the call is ``P(positive) >= threshold``; ``fn`` = positives with the lowest
    P(positive), ``fp`` = negatives with the highest, ``tp`` / ``tn`` the most confident
    right calls, ``wrong`` = fn and fp together. Multiclass / multilabel: the call is the
    argmax; ``wrong`` = misclassified rows, and ``fn`` / ``fp`` / ``tp`` / ``tn`` are taken
    with respect to the class ``positive`` (default: the task's melanoma class). Rows are
    sorted by the confidence of the call (probability of the predicted class), highest
    first.
    """
    if kind not in ERROR_KINDS:
        raise ConfigError(f"kind must be one of {ERROR_KINDS}, got {kind!r}")
    if top < 1:
        raise ConfigError(f"top must be >= 1, got {top}")
    rows = prediction_table(oof, table_df, task, threshold)
    pos = 1 if task.kind == "binary" else (
        task.index_of(positive) if positive is not None else melanoma_class(task))
    if pos is None and kind != "wrong":
        raise ConfigError(f"kind={kind!r} on a {task.kind} task needs positive= (a class of "
                          f"{list(task.classes)}); or use kind='wrong'")
    y, pred = rows["label"].to_numpy(), rows["pred"].to_numpy()
    masks = {"wrong": pred != y, "fn": (y == pos) & (pred != pos), "fp": (y != pos) & (pred == pos),
             "tp": (y == pos) & (pred == pos), "tn": (y != pos) & (pred != pos)}
    out = rows[masks[kind]]
    out = out.sort_values(["confidence", "image_id"], ascending=[False, True], kind="mergesort")
    return out.head(top).reset_index(drop=True)


def select_rows(run: RunDir, ids: Sequence[str] | None = None, kind: str | None = None,
                top: int = 8, fold: int | None = None, threshold: float = 0.5
                ) -> pd.DataFrame:
    """The rows to explain: the OOF rows of ``ids`` (in that order; an id without an OOF
    prediction raises DataError) or `error_table`'s ``top`` rows of ``kind``."""
    oof = run.oof()
    if fold is not None:
        oof = oof[oof["fold"] == fold]
        if oof.empty:
            raise ConfigError(f"fold {fold} has no OOF predictions in {run.path}")
    table = run.table()
    if (ids is None) == (kind is None):
        raise ConfigError("name the images to explain: ids or kind (fn / fp / tp ...), not both")
    if kind is not None:
        return error_table(oof, table.df, table.task, kind=kind, threshold=threshold, top=top)
    wanted = [str(i) for i in ids or []]
    rows = prediction_table(oof, table.df, table.task, threshold).set_index("image_id")
    absent = [i for i in wanted if i not in rows.index]
    if absent:
        raise DataError(f"{len(absent)} image id(s) have no OOF prediction in {run.path}, e.g. "
                        f"{absent[0]!r}", column="image_id")
    return rows.loc[wanted].reset_index()


def explained_classes(rows: pd.DataFrame, task: Task, target: str = "run") -> np.ndarray:
    """The class index each row's map explains: ``run`` (or ``pred``) the run's own
    (TTA-averaged) call, ``true`` the true class, or a class name of the task."""
    if target in ("run", "pred"):
        return rows["pred"].to_numpy().astype(np.int64)
    if target == "true":
        return rows["label"].to_numpy().astype(np.int64)
    if target not in task.classes:
        raise ConfigError(f"target must be run, true or a class of {list(task.classes)}; "
                          f"got {target!r}")
    index = task.index_of(target)
    if task.kind == "binary":  # one logit: the positive class is 1, the other 0
        index = 1 if index == len(task.classes) - 1 else 0
    return np.full(len(rows), index, dtype=np.int64)


def explain_errors(run_dir: str | Path, kind: str = "fn", top: int = 8,
                   method: str = "gradcam", fold: int | None = None, threshold: float = 0.5,
                   target: str = "pred", branch: int = 1, device: str = "auto",
                   layer: str | int | None = None
                   ) -> tuple[pd.DataFrame, list[np.ndarray], np.ndarray]:
    """Grad-CAM of a run's top errors (or right calls) of one kind (`explain`'s table,
    images and maps for `select_rows(kind=...)`, at ``layer``). ``target``: ``pred``
    explains the class the run called, ``true`` the true class."""
    if target not in ("pred", "true"):
        raise ConfigError(f"target must be 'pred' or 'true', got {target!r}")
    run = RunDir.read(run_dir)
    rows = select_rows(run, kind=kind, top=top, fold=fold, threshold=threshold)
    out = explain(run, rows, target=target, method=method, layer=layer, branch=branch,
                  device=device)
    return out.rows, out.images, out.cams


@dataclass
class Explanation:
    """Maps of a run's images: ``rows`` (`prediction_table` columns plus ``explained`` /
    ``explained_name`` / ``explained_prob``), the images as the model saw them (uint8
    H x W x 3) and the maps (N, H, W) in [0, 1], in row order; ``aspect``: how the
    checkpoints framed a non-square image (their stored `Preprocessing`), which a mask must
    follow to line up with the maps."""

    rows: pd.DataFrame
    images: list[np.ndarray]
    cams: np.ndarray
    method: str = "gradcam"
    layer: str = "auto"
    aspect: str = "squash"


def explain(run: RunDir | str | Path, rows: pd.DataFrame, target: str = "run",
            method: str = "gradcam", layer: str | int | None = None, tta: int = 1,
            branch: int = 1, device: str = "auto", random_weights: bool = False
            ) -> Explanation:
    """Maps of ``rows`` (`select_rows`), each by its own fold's best checkpoint, with the
    input built as at validation (the fold's metadata encoder and validation transform).

    ``target``: `explained_classes`; ``tta``: maps averaged over that many views (see
    `grad_cam`); ``random_weights``: the same architecture re-initialised (seeded), the
    floor a trained model's localisation must beat.
    """
    return _explain_branches(run, rows, target, method, layer, tta, (branch,), device,
                             random_weights)[0]


def _explain_branches(run: RunDir | str | Path, rows: pd.DataFrame, target: str, method: str,
                      layer: str | int | None, tta: int, branches: Sequence[int], device: str,
                      random_weights: bool = False) -> list[Explanation]:
    """`explain` of each of ``branches``, every fold's model loaded once."""
    run = run if isinstance(run, RunDir) else RunDir.read(run)
    task = run.task
    which_all = explained_classes(rows, task, "pred" if target == "pred" else target)
    images = [[np.zeros(0, np.uint8)] * len(rows) for _ in branches]
    cams = [np.zeros((len(rows), 0, 0), dtype=np.float32) for _ in branches]
    aspect = run.cfg.data.aspect if run.cfg is not None else "squash"
    for inputs in fold_inputs(run, rows, device):
        at = inputs.at
        aspect = inputs.aspect
        model = _random_twin(inputs.member, inputs.task) if random_weights else inputs.model
        which = which_all[at]
        if inputs.task != task:  # target=diagnosis: a 9-class model behind a binary run
            which = _diagnosis_targets(which, run.oof(), rows["image_id"].iloc[at])
        for b, branch in enumerate(branches):
            maps = grad_cam(model, inputs.batch, method=method, target_class=which.tolist(),
                            branch=branch, layer=layer, tta=tta)
            if cams[b].shape[1:] != maps.shape[1:]:
                cams[b] = np.zeros((len(rows), *maps.shape[1:]), dtype=np.float32)
            cams[b][at] = maps
            for j, i in enumerate(at):
                images[b][i] = inputs.image(j, branch)
    explained = _with_explained(rows, task, which_all)
    return [Explanation(explained, images[b], cams[b], method, str(layer or "auto"), aspect)
            for b in range(len(branches))]


@dataclass
class PairExplanation:
    """Maps of both images of a dual-image run's rows: ``rows`` as `Explanation.rows` (the
    class each map explains and the run's probability of it), ``views`` the images' names
    in branch order (`branch_views`), ``images[b]`` / ``cams[b]`` branch ``b + 1``'s images
    (uint8 H x W x 3) and maps (N, H, W), in row order."""

    rows: pd.DataFrame
    views: tuple[str, str]
    images: tuple[list[np.ndarray], list[np.ndarray]]
    cams: tuple[np.ndarray, np.ndarray]


def branch_views(cfg: RunConfig | None) -> tuple[str, ...]:
    """The names of the images a run's model takes, in branch order: ``("image",)`` for a
    single-image run, else the dataset's two (`melalib.data.load.pair_views`: MILK10k's
    ``milk_view`` image then the other, the synthetic pairs' dermoscopic then clinical,
    ``image 1`` / ``image 2`` elsewhere)."""
    if cfg is None or not cfg.model.dual_image:
        return ("image",)
    return pair_views(cfg.data)


def explain_pairs(run: RunDir | str | Path, rows: pd.DataFrame, target: str = "run",
                  method: str = "gradcam", layer: str | int | None = None, tta: int = 1,
                  device: str = "auto") -> PairExplanation:
    """`explain` of both images of each row of a dual-image run: branch 1's map with the
    second image and the metadata held fixed, branch 2's with the first image and the
    metadata held fixed, both for the same class (``target``). A single-image run raises
    ConfigError."""
    run = run if isinstance(run, RunDir) else RunDir.read(run)
    views = branch_views(run.load_config())
    if len(views) != 2:
        raise ConfigError(f"{run.path} is a single-image run (dual_image is false): there is "
                          "no pair to explain; use explain()")
    first, second = _explain_branches(run, rows, target, method, layer, tta, (1, 2), device)
    return PairExplanation(first.rows, (views[0], views[1]), (first.images, second.images),
                           (first.cams, second.cams))


@dataclass
class FoldInputs:
    """One fold's rows of a selection, as its best checkpoint's model sees them."""

    at: np.ndarray  # positions in the selection
    member: Any  # melalib.inference.Member
    task: Task  # the model's task (a diagnosis-trained run: its 9 classes)
    batch: dict[str, Any]  # collated validation-transform items
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def model(self) -> nn.Module:
        return self.member.model

    @property
    def aspect(self) -> str:
        """The checkpoint's framing of a non-square image (its stored preprocessing)."""
        stored = self.member.preprocessing
        return stored.aspect if stored is not None else self.member.cfg.data.aspect

    def image(self, j: int, branch: int = 1) -> np.ndarray:
        """Item ``j``'s image (``branch`` 2: the second image) as uint8 (H, W, 3)."""
        return denormalize(self.batch["image" if branch == 1 else "image2"][j], self.mean,
                           self.std)


def fold_inputs(run: RunDir, rows: pd.DataFrame, device: str = "auto"
                ) -> Iterator[FoldInputs]:
    """Per fold of ``rows`` (``image_id``, ``fold``): its best checkpoint's model and the
    rows' inputs built as at validation (the fold's metadata encoder, validation transform)."""
    table = run.table()
    by_id = table.df.assign(image_id=table.df["image_id"].astype(str)).set_index("image_id")
    for k in sorted(rows["fold"].unique().tolist()):
        at = np.flatnonzero(rows["fold"].to_numpy() == k)
        predictor = load_predictor(run.checkpoint(int(k), "best"), device=device)
        member = predictor.members[0]
        df = by_id.loc[rows["image_id"].astype(str).iloc[at]].reset_index()
        dataset = make_dataset(member.cfg, table, df, member.encoder.transform(df), train=False,
                               labelled=False, preprocessing=member.preprocessing)
        batch = default_collate([dataset[i] for i in range(len(dataset))])
        yield FoldInputs(at, member, predictor.task, batch, dataset.transform.mean,
                         dataset.transform.std)


def _with_explained(rows: pd.DataFrame, task: Task, which: np.ndarray) -> pd.DataFrame:
    """``rows`` plus the explained class, its name and the run's probability of it."""
    probs = rows[task.prob_columns].to_numpy(dtype=np.float64)
    if task.kind == "binary":
        names = [task.classes[-1] if w == 1 else task.classes[0] for w in which]
        prob = np.where(which == 1, probs[:, 0], 1.0 - probs[:, 0])
    else:
        names = [task.classes[w] for w in which]
        prob = probs[np.arange(len(which)), which]
    return rows.assign(explained=which, explained_name=names, explained_prob=prob)


def _random_twin(member: Any, task: Task) -> nn.Module:
    """``member``'s architecture with fresh random weights (seed 0; the global torch random
    state is left as it was), on its device, eval."""
    model_cfg = dataclasses.replace(member.cfg.model, pretrained=False, pretrained_path="")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        twin = build_model(model_cfg, task, member.encoder.dim)
    return twin.to(next(member.model.parameters()).device).eval()


def _diagnosis_targets(which: np.ndarray, oof: pd.DataFrame, ids: pd.Series) -> np.ndarray:
    """Binary CAM targets of a diagnosis-trained run as its 9 classes (`melalib.targets`)."""
    dx = oof.assign(image_id=oof["image_id"].astype(str)).set_index("image_id")
    columns = [f"{DX_PREFIX}{c}" for c in DIAGNOSIS_CLASSES]
    return diagnosis_cam_classes(which, dx.loc[ids.astype(str), columns].to_numpy())
