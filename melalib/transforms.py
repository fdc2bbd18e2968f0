"""Image augmentation (albumentations), test-time-augmentation views and de-normalisation.

This is the only module that imports albumentations (2.0.x, MIT, unmaintained since 2025):
replacing it means rewriting this file alone.

Randomness. albumentations 2.0 ignores the global ``random`` / ``numpy`` seeds: each
transform draws from its own ``numpy.random.Generator`` and ``random.Random``.
``A.Compose(seed=s)`` seeds *every* transform with the same ``s``, so two transforms with
the same probability make the same decision (HorizontalFlip and VerticalFlip always flip
together). `ImageTransform` avoids that: it hands one *shared* generator pair to all its
transforms (``Compose.set_random_state``), seeded either once (``build_transforms(seed=)``)
or per call (``transform(image, seed=s)``). `melalib.data.dataset.LesionDataset` passes a
seed derived from (run seed, epoch, row), so an augmented epoch is the same whatever the
number of DataLoader workers or the order in which they run.

Output of a transform: float32 numpy array (C, H, W), normalised with the ImageNet mean and
std; the dataset turns it into a torch tensor.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2

from .config import check_field
from .errors import ConfigError
from .registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Ops = list[A.BasicTransform]
#: How a non-square image becomes the square model input (config field ``aspect``):
#: name -> ``size -> ops`` (`square_ops`).
ASPECTS: Registry[Callable[[int], Ops]] = Registry("aspect")
#: Training augmentation levels (config field ``augment``): name -> ``(size, aspect) -> ops``.
STRENGTHS: Registry[Callable[[int, str], Ops]] = Registry("augment")
#: Training-only augmentation against the dermoscope-border shortcut (config ``border_aug``):
#: name -> ``() -> ops``; ``vignette`` darkens everything outside a random circle
#: (`DermoscopeVignette`).
BORDER_AUGS: Registry[Callable[[], Ops]] = Registry("border_aug")


class ImageTransform:
    """An albumentations pipeline: uint8 RGB (H, W, 3) -> float32 (3, H, W).

    ``transform(image)`` draws from the pipeline's own random state; ``transform(image,
    seed=s)`` reseeds it first, so the same ``(image, s)`` always gives the same output.
    """

    seedable = True

    def __init__(self, transforms: Sequence[A.BasicTransform], image_size: int, train: bool,
                 strength: str, seed: int | None = None, *, aspect: str = "squash",
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.compose = A.Compose(list(transforms))
        self.image_size = image_size
        self.train = train
        self.strength = strength
        self.seed = seed
        self.aspect = aspect
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """One shared (numpy, python) generator pair for every transform in the pipeline."""
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, image: np.ndarray, seed: int | None = None) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} "
                             f"{image.shape}")
        if seed is not None:
            self.reseed(seed)
        out = self.compose(image=image)["image"]
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)

    def with_mask(self, image: np.ndarray, mask: np.ndarray, seed: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``(image (3, S, S) float32, mask (S, S) bool)``: the (H, W) ``mask`` moved by the
        same framing and geometric augmentation as ``image`` (nearest neighbour; colour
        operations leave it alone), so a lesion mask stays on its lesion."""
        if mask.shape != image.shape[:2]:
            raise ValueError(f"a mask of shape {mask.shape} does not fit an image of shape "
                             f"{image.shape[:2]}")
        if seed is not None:
            self.reseed(seed)
        out = self.compose(image=image, mask=mask.astype(np.uint8))
        return (np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32),
                np.asarray(out["mask"]) > 0)

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.compose.transforms)
        return (f"ImageTransform(size={self.image_size}, train={self.train}, "
                f"strength={self.strength!r}, aspect={self.aspect!r}: {names})")


def square_ops(size: int, aspect: str) -> Ops:
    """A (H, W) image -> (size, size) as ``aspect`` (`ASPECTS`) says."""
    return ASPECTS[aspect](size)


@ASPECTS.register("squash")
def _squash(size: int) -> Ops:
    """Resize both sides (the aspect ratio changes)."""
    return [A.Resize(height=size, width=size)]


@ASPECTS.register("crop")
def _crop(size: int) -> Ops:
    """Scale the shorter side to ``size`` and keep the centre square."""
    return [A.SmallestMaxSize(max_size=size), A.CenterCrop(height=size, width=size)]


@ASPECTS.register("pad")
def _pad(size: int) -> Ops:
    """Scale the longer side to ``size`` and pad the rest with black, centred."""
    return [A.LongestMaxSize(max_size=size),
            A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT,
                          fill=0)]


def frame_mask(mask: np.ndarray, size: int, aspect: str) -> np.ndarray:
    """A (H, W) mask of the raw image framed exactly as the model input (`square_ops`,
    nearest neighbour): (size, size) bool. A lesion the crop cuts off is cut off here too."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ConfigError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    dummy = np.zeros((*mask.shape, 3), np.uint8)
    out = A.Compose(square_ops(size, aspect))(image=dummy, mask=mask.astype(np.uint8))["mask"]
    return np.asarray(out) > 0


class DermoscopeVignette(A.ImageOnlyTransform):
    """Darken everything outside a random circle, like a dermoscope's field of view.

    The circle's radius is ``radius`` (a range) times half the image side (1 touches the
    edges, 1.41 the corners), its centre shifted by up to ``shift`` of the side; the outside
    becomes a random dark grey (0..``darkness``) with a soft edge. Training only: it
    teaches the model that the dark band carries no label.
    """

    def __init__(self, radius: tuple[float, float] = (0.8, 1.3), shift: float = 0.08,
                 darkness: int = 40, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.radius, self.shift, self.darkness = radius, shift, darkness

    def get_params(self) -> dict[str, float]:
        rng = self.random_generator
        return {"r": float(rng.uniform(*self.radius)),
                "dy": float(rng.uniform(-self.shift, self.shift)),
                "dx": float(rng.uniform(-self.shift, self.shift)),
                "level": float(rng.uniform(0, self.darkness))}

    def apply(self, img: np.ndarray, r: float = 1.0, dy: float = 0.0, dx: float = 0.0,
              level: float = 0.0, **params: object) -> np.ndarray:
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        half = min(h, w) / 2.0
        dist = np.hypot(yy - (h - 1) / 2 - dy * h, xx - (w - 1) / 2 - dx * w) / (r * half)
        keep = np.clip((1.0 - dist) * 20.0 + 1.0, 0.0, 1.0)[..., None]  # ~5 % soft edge
        out = img.astype(np.float32) * keep + level * (1.0 - keep)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def border_ops(mode: str) -> Ops:
    """The ``border_aug`` augmentation (`BORDER_AUGS`), applied after the square framing."""
    return BORDER_AUGS[mode]()


BORDER_AUGS.register("none")(list)
BORDER_AUGS.register("vignette")(lambda: [DermoscopeVignette()])


def _train_ops(size: int, strength: str, aspect: str = "squash") -> Ops:
    """Augmentations before normalisation for one strength level (`STRENGTHS`)."""
    return STRENGTHS[strength](size, aspect)


@STRENGTHS.register("none")
def _no_augment(size: int, aspect: str) -> Ops:
    """The square of `square_ops` only."""
    return square_ops(size, aspect)


def _flips() -> Ops:
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]


@STRENGTHS.register("light")
def _light(size: int, aspect: str) -> Ops:
    """The square, flips and rot90."""
    return [*square_ops(size, aspect), *_flips()]


@STRENGTHS.register("medium")
def _medium(size: int, aspect: str, heavy: bool = False) -> Ops:
    """Random resized crop 70-100 %, flips, rot90, affine, colour jitter. ``squash`` crops
    from the raw image (melalib's original pipeline); ``crop`` and ``pad`` first make the
    square of `square_ops`, so training sees the same framing as validation."""
    ops = [] if aspect == "squash" else square_ops(size, aspect)
    ops += [
        A.RandomResizedCrop(size=(size, size), scale=(0.5 if heavy else 0.7, 1.0),
                            ratio=(0.85, 1.15) if heavy else (0.9, 1.1)),
        *_flips(),
        A.Affine(scale=(0.85, 1.15) if heavy else (0.9, 1.1),
                 translate_percent=(-0.1, 0.1) if heavy else (-0.05, 0.05),
                 rotate=(-45, 45) if heavy else (-20, 20),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.7 if heavy else 0.5),
        A.ColorJitter(brightness=0.3 if heavy else 0.2, contrast=0.3 if heavy else 0.2,
                      saturation=0.3 if heavy else 0.2, hue=0.05 if heavy else 0.02,
                      p=0.8 if heavy else 0.5),
    ]
    return ops


@STRENGTHS.register("heavy")
def _heavy(size: int, aspect: str) -> Ops:
    """``medium`` with wider ranges, plus coarse dropout."""
    return [*_medium(size, aspect, heavy=True),
            A.CoarseDropout(num_holes_range=(1, 6), hole_height_range=(0.05, 0.15),
                            hole_width_range=(0.05, 0.15), fill=0, p=0.5)]


def build_transforms(image_size: int, train: bool, strength: str = "medium",
                     seed: int | None = None, *, aspect: str = "squash",
                     mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD,
                     border_aug: str = "none") -> ImageTransform:
    """The train (augmenting) or validation/test pipeline, normalised with ``mean``/``std``
    (ImageNet's by default; the backbone's own via `melalib.models.input_normalization`).

    ``strength``: ``none`` (square only), ``light`` (square, flips, rot90), ``medium``
    (random resized crop 70-100 %, flips, rot90, affine, colour jitter) or ``heavy``
    (wider ranges plus coarse dropout). Validation ignores ``strength``. ``aspect``: how a
    non-square image becomes square (`square_ops`), the same at training and validation.
    ``border_aug`` (`BORDER_AUGS`, `border_ops`): training only, ignored at validation.
    """
    check_field("image_size", image_size)
    ops = _train_ops(image_size, strength, aspect) if train else square_ops(image_size, aspect)
    border = border_ops(border_aug)  # checked at validation too
    ops += border if train else []
    ops.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return ImageTransform(ops, image_size, train, strength if train else "none", seed,
                          aspect=aspect, mean=mean, std=std)


# ------------------------------------------------------------------ test-time augmentation
class TTAView:
    """One of the 8 symmetries of the square on batched tensors (N, C, H, W), pure torch."""

    def __init__(self, name: str, transpose: bool, flip_dims: tuple[int, ...]) -> None:
        self.name = name
        self.transpose = transpose
        self.flip_dims = flip_dims

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transpose:
            x = x.transpose(-2, -1)
        return torch.flip(x, self.flip_dims) if self.flip_dims else x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the view (for dense outputs such as Grad-CAM maps)."""
        if self.flip_dims:
            x = torch.flip(x, self.flip_dims)
        return x.transpose(-2, -1) if self.transpose else x

    def __repr__(self) -> str:
        return f"TTAView({self.name})"


_VIEWS = (
    TTAView("identity", False, ()),
    TTAView("hflip", False, (-1,)),
    TTAView("vflip", False, (-2,)),
    TTAView("hvflip", False, (-2, -1)),
    TTAView("transpose", True, ()),
    TTAView("rot90", True, (-1,)),
    TTAView("rot270", True, (-2,)),
    TTAView("antitranspose", True, (-2, -1)),
)
#: The ``tta`` choices: views averaged at prediction -> the views (1 identity, 2 +hflip,
#: 4 +vflip and both, 8 +the transposed four).
TTA_COUNTS: Registry[tuple[TTAView, ...]] = Registry("tta", {n: _VIEWS[:n] for n in (1, 2, 4, 8)})


def tta_views(n: int) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The ``n`` views of `TTA_COUNTS`."""
    return list(TTA_COUNTS[n])


def denormalize(image: torch.Tensor | np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """A normalised (C, H, W) or (1, C, H, W) image back to uint8 (H, W, 3) for plots."""
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else image
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != len(mean):
        raise ValueError(f"expected a ({len(mean)}, H, W) image, got shape {arr.shape}")
    std_ = np.asarray(std, np.float32)[:, None, None]
    arr = arr * std_ + np.asarray(mean, np.float32)[:, None, None]
    return np.clip(np.rint(arr.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
