"""Where explanation maps point: lesion masks in the model's framing, localisation and
border-shortcut measures per image and pooled with lesion-level bootstrap CIs, baselines.

Masks. `MaskSource` names a folder and a file pattern (HAM10000:
``../shared/data/ham10000/masks_200x150`` with ``{image_id}_segmentation.png``); without
one, the synthetic data set's own masks (``masks/<stem>.png`` beside ``images/``). A true
mask is sized to its image and framed exactly as the model input
(`melalib.transforms.frame_mask`: squash / crop / pad). An image without a mask is an error
naming where it was looked for, or skipped when asked; `estimate_lesion_mask` (Otsu) stands
in only when asked, and such rows are labelled ``mask = estimate``.

Measures (`localization`), for maps (N, H, W) >= 0 and masks (N, H, W): ``mass_on_lesion``
(share of the map's mass on the lesion), ``lesion_area`` (share of the frame), their ratio
``concentration`` (1 = no better than a uniform map), ``pointing`` (the map's peak on the
lesion), ``border_mass`` and ``border_peak`` (mass and peak in the outer band of
``border`` x the side, where the dermoscope's dark rim and the frame corners lie). A map
that is constant (all zero included) carries no location: it counts as a uniform map
(mass = area, border mass = band area) whose peak is nowhere (pointing and border peak 0),
flagged ``flat``. `pooled` averages them with CIs; `centre_prior` is the fixed Gaussian
baseline every map must beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from .bootstrap import bootstrap_many
from .data.synthetic import lesion_mask
from .errors import ConfigError, DataError
from .transforms import frame_mask

#: Width of the border band as a share of the side: the outermost cell of an 8 x 8 grid.
BORDER = 0.125
#: What to do with an image that has no mask (`framed_masks`).
MISSING = ("error", "skip", "estimate")
#: Localisation measures per image (`localization`), pooled by `pooled`.
MEASURES = ("mass_on_lesion", "lesion_area", "concentration", "pointing", "border_mass",
            "border_peak")
_LESION = ("mass_on_lesion", "lesion_area", "concentration", "pointing")


# --------------------------------------------------------------------------------- masks
@dataclass(frozen=True)
class MaskSource:
    """Where true lesion masks lie: ``folder / pattern`` with ``{image_id}`` and ``{stem}``
    (the image file's name without its extension) filled in."""

    folder: str | Path
    pattern: str = "{image_id}_segmentation.png"

    def path(self, image_id: str, image_path: str | Path) -> Path:
        try:
            name = self.pattern.format(image_id=image_id, stem=Path(image_path).stem)
        except (KeyError, IndexError) as exc:
            raise ConfigError(f"mask pattern {self.pattern!r} may use {{image_id}} and "
                              f"{{stem}} only; got {exc}") from None
        return Path(self.folder) / name


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as (H, W) bool: lesion = any non-zero value of a 0/1 mask, else > 127."""
    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"))
    return grey > (127 if grey.max() > 1 else 0)


def _true_mask(image_id: str, image_path: str, source: MaskSource | None
               ) -> tuple[np.ndarray | None, Path | None]:
    if source is None:
        return lesion_mask(image_path), None
    path = source.path(image_id, image_path)
    return (read_mask(path) if path.is_file() else None), path


def framed_masks(rows: pd.DataFrame, size: int, aspect: str, source: MaskSource | None = None,
                 missing: str = "error", images: Sequence[np.ndarray] | None = None
                 ) -> tuple[np.ndarray, list[str]]:
    """Masks (N, size, size) bool of ``rows`` (``image_id``, ``image_path``) as the model
    sees them, and per row where it came from: ``true_mask``, ``estimate`` or ``missing``.

    A true mask is resized to its image (nearest) and framed like the model input.
    ``missing``: ``error`` (DataError naming the first missing file), ``skip`` (an empty
    mask labelled ``missing``) or ``estimate`` (`estimate_lesion_mask` of the image as the
    model saw it, ``images``, labelled ``estimate``).
    """
    if missing not in MISSING:
        raise ConfigError(f"missing must be one of {MISSING}, got {missing!r}")
    out, kinds, absent = [], [], []
    for i, (image_id, image_path) in enumerate(zip(rows["image_id"].astype(str),
                                                   rows["image_path"].astype(str), strict=True)):
        mask, where = _true_mask(image_id, image_path, source)
        if mask is not None:
            out.append(frame_mask(_to_image_size(mask, image_path), size, aspect))
            kinds.append("true_mask")
            continue
        absent.append(where or Path(image_path).parent.parent / "masks" /
                      f"{Path(image_path).stem}.png")
        if missing == "estimate" and images is not None:
            out.append(resize_map(estimate_lesion_mask(images[i]).astype(np.float32),
                                  (size, size), nearest=True) > 0.5)
            kinds.append("estimate")
        else:
            out.append(np.zeros((size, size), bool))
            kinds.append("missing")
    if absent and (missing == "error" or (missing == "estimate" and images is None)):
        hint = ("pass images= to estimate masks" if missing == "estimate" else
                "name the mask folder and file pattern (--masks, --mask-pattern), skip "
                "images without one (--missing-masks skip) or ask for a labelled estimate "
                "(--missing-masks estimate)")
        raise DataError(f"no lesion mask for {len(absent)} of {len(rows)} images, e.g. "
                        f"{absent[0]} is missing; {hint}")
    return np.stack(out) if out else np.zeros((0, size, size), bool), kinds


def _to_image_size(mask: np.ndarray, image_path: str) -> np.ndarray:
    """The mask at its image's pixel size (masks may be stored at another resolution)."""
    try:
        with Image.open(image_path) as im:
            width, height = im.size
    except OSError:
        return mask
    if mask.shape == (height, width):
        return mask
    return resize_map(mask.astype(np.float32), (height, width), nearest=True) > 0.5


def resize_map(cam: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """A 2-D map resized to ``size`` (H, W): bilinear, or nearest for masks."""
    if cam.ndim != 2:
        raise DataError(f"a map must be 2-D (H, W), got shape {cam.shape}")
    if cam.shape == tuple(size):
        return cam
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    img = Image.fromarray(cam.astype(np.float32), mode="F").resize((size[1], size[0]), resample)
    return np.asarray(img, dtype=np.float32)


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
    """An estimated lesion mask (H, W) bool, for when no true mask exists: the dark region
    by Otsu's threshold, keeping the dark component under the image centre, else the
    largest one not touching the border (the dermoscope's dark rim touches it), else the
    largest. On HAM10000 its Dice against the true masks is about 0.65: an estimate."""
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


# ------------------------------------------------------------------------------ measures
def border_band(shape: tuple[int, int], border: float = BORDER) -> np.ndarray:
    """The outer band (H, W) bool: ``ceil(border x side)`` pixels along every edge."""
    if not 0 < border < 0.5:
        raise ConfigError(f"border must be in (0, 0.5), got {border}")
    h, w = shape
    bh, bw = int(np.ceil(border * h)), int(np.ceil(border * w))
    band = np.ones((h, w), bool)
    band[bh:h - bh, bw:w - bw] = False
    return band


def _checked(cams: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks)
    if cams.ndim == 2:
        cams, masks = cams[None], masks[None] if masks.ndim == 2 else masks
    if cams.ndim != 3 or masks.ndim != 3 or len(cams) != len(masks):
        raise DataError(f"cams {cams.shape} and masks {masks.shape} must be (N, H, W) alike")
    if (cams < 0).any() or not np.isfinite(cams).all():
        raise DataError("CAM values must be finite and non-negative")
    if masks.shape[1:] != cams.shape[1:]:
        masks = np.stack([resize_map(m.astype(np.float32), cams.shape[1:], nearest=True) > 0.5
                          for m in masks])
    return cams, masks.astype(bool)


def localization(cams: np.ndarray, masks: np.ndarray, border: float = BORDER) -> pd.DataFrame:
    """Per-image measures (`MEASURES`, plus ``flat``) of maps against masks (masks of
    another size are resized, nearest). ``concentration`` is NaN where the framed mask is
    empty (the framing cut the lesion off, or it was skipped)."""
    cams, masks = _checked(cams, masks)
    band = border_band(cams.shape[1:], border)
    flat = np.ptp(cams.reshape(len(cams), -1), axis=1) <= 0 if len(cams) else np.zeros(0, bool)
    weights = np.where(flat[:, None, None], 1.0, cams)
    total = weights.sum(axis=(1, 2))
    area = masks.mean(axis=(1, 2))
    mass = (weights * masks).sum(axis=(1, 2)) / total
    peaks = cams.reshape(len(cams), -1).argmax(axis=1)
    on_lesion = masks.reshape(len(masks), -1)[np.arange(len(masks)), peaks]
    in_band = band.reshape(-1)[peaks]
    with np.errstate(invalid="ignore", divide="ignore"):
        concentration = np.where(area > 0, mass / np.where(area > 0, area, 1.0), np.nan)
    return pd.DataFrame({
        "mass_on_lesion": mass, "lesion_area": area, "concentration": concentration,
        "pointing": np.where(flat, 0.0, on_lesion.astype(float)),
        "border_mass": (weights * band).sum(axis=(1, 2)) / total,
        "border_peak": np.where(flat, 0.0, in_band.astype(float)), "flat": flat})


def dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dice overlap per image of two mask stacks (N, H, W); 1.0 where both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise DataError(f"masks {a.shape} and {b.shape} differ in shape")
    inter = (a & b).sum(axis=(-2, -1)).astype(np.float64)
    total = (a.sum(axis=(-2, -1)) + b.sum(axis=(-2, -1))).astype(np.float64)
    return np.where(total > 0, 2 * inter / np.where(total > 0, total, 1.0), 1.0)


def cam_mass_on_lesion(cams: np.ndarray, masks: np.ndarray) -> float:
    """Share of the total CAM mass that lies inside the lesion masks (pooled over images;
    masks of another size are resized, nearest neighbour); a constant map (all zero
    included) counts as uniform."""
    cams, masks = _checked(cams, masks)
    flat = np.ptp(cams.reshape(len(cams), -1), axis=1) <= 0 if len(cams) else np.zeros(0, bool)
    weights = np.where(flat[:, None, None], 1.0, cams)
    return float((weights * masks).sum() / weights.sum()) if weights.size else float("nan")


def centre_prior(shape: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """The fixed baseline map: a Gaussian at the frame's centre, ``sigma`` x the side."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    d2 = ((yy - (h - 1) / 2) / (sigma * h)) ** 2 + ((xx - (w - 1) / 2) / (sigma * w)) ** 2
    return np.exp(-0.5 * d2).astype(np.float32)


# -------------------------------------------------------------------------------- pooled
def _pooled_fns() -> dict[str, object]:
    """Bootstrap statistics over a (rows, MEASURES) matrix: lesion measures over the rows
    whose framed lesion is visible, concentration as mean mass / mean area."""
    col = {name: i for i, name in enumerate(MEASURES)}

    def mean_of(name: str, lesion: bool) -> object:
        def fn(_y: np.ndarray, v: np.ndarray) -> float:
            keep = v[:, col["lesion_area"]] > 0 if lesion else np.ones(len(v), bool)
            return float(v[keep, col[name]].mean()) if keep.any() else float("nan")
        return fn

    def concentration(_y: np.ndarray, v: np.ndarray) -> float:
        keep = v[:, col["lesion_area"]] > 0
        if not keep.any():
            return float("nan")
        return float(v[keep, col["mass_on_lesion"]].mean() / v[keep, col["lesion_area"]].mean())

    fns: dict[str, object] = {name: mean_of(name, name in _LESION) for name in MEASURES}
    fns["concentration"] = concentration
    return fns


def pooled(per_image: pd.DataFrame, groups: Sequence[str] | None = None, n_boot: int = 1000,
           seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """`MEASURES` pooled over images with percentile CIs resampling ``groups`` (lesions;
    rows when None), via `melalib.bootstrap.bootstrap_many`: DataFrame(measure, estimate,
    low, high, n). Lesion measures use the rows with a visible lesion (area > 0);
    concentration is the mean mass on the lesion over the mean lesion area."""
    missing = [m for m in MEASURES if m not in per_image.columns]
    if missing:
        raise DataError(f"per-image table lacks {missing}", column=missing[0])
    values = per_image[list(MEASURES)].to_numpy(dtype=np.float64, copy=True)
    values[:, MEASURES.index("concentration")] = 0.0  # recomputed from mass and area
    visible = int((values[:, MEASURES.index("lesion_area")] > 0).sum())
    if not len(values):
        raise DataError("no images to pool")
    res = bootstrap_many(_pooled_fns(), np.zeros(len(values)), values, groups=groups,
                         n_boot=n_boot, alpha=alpha, seed=seed, stratify=False)
    return pd.DataFrame([{"measure": m, "estimate": res[m]["estimate"], "low": res[m]["low"],
                          "high": res[m]["high"],
                          "n": visible if m in _LESION else len(values)} for m in MEASURES])
