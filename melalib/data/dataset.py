"""Torch dataset over a canonical lesion table, and a pre-flight check of its images.

An item is a dict of tensors (the default ``collate`` batches it):
``image`` float (3, H, W) [absent when ``use_image`` is False], ``image2`` [paired only],
``meta`` float (D,) (shape (0,) without metadata), ``target`` (binary: float scalar,
multiclass: long scalar, multilabel: float one-hot (K,); unlabelled rows: -1 / zeros) and
``index`` (the row's position in ``df``); with ``masks`` (training under ``cam_guidance``,
`melalib.guidance.RowMasks`) also ``mask`` float (1, H, W), the lesion mask moved by the
image's own framing and augmentation, and ``has_mask`` (0.0 where the row has none).

Augmentation is reproducible: with a ``seed`` (or a transform built with one) row ``i`` of
epoch ``e`` is transformed with a seed derived from ``(seed, e, i)``; call
`LesionDataset.set_epoch` before each epoch. The epoch lives in shared memory, so
persistent DataLoader workers see it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError, ImageError
from ..progress import bar
from ..tasks import Task
from .images import IMAGE_EXTENSIONS, ImageOptions, hdf5_member, image_exists, incomplete_data, read_image

IMAGE_COLUMNS = ("image_path", "image_path_2")


def load_image(path: str | Path, size: int | None = None,
               options: ImageOptions | None = None) -> np.ndarray:
    """Decode an image to uint8 RGB (H, W, 3) through `melalib.data.images.read_image`
    (EXIF orientation, 16-bit scaling, alpha, pixel ceiling); raises ImageError."""
    return read_image(path, size, options)


class LesionDataset(Dataset):
    """Rows of a canonical table as model inputs (see the module docstring for the item)."""

    def __init__(
        self,
        df: pd.DataFrame,
        task: Task,
        meta: np.ndarray | None,
        transform: Callable[..., np.ndarray] | None,
        use_image: bool = True,
        paired: bool = False,
        labelled: bool = True,
        image_cache: dict[str, np.ndarray] | None = None,
        *,
        seed: int | None = None,
        load_size: int | None = None,
        origin: str | None = None,
        image_options: ImageOptions | None = None,
        meta_variants: np.ndarray | None = None,
        meta_blanking: float = 0.0,
        masks: Callable[[int, tuple[int, int]], np.ndarray | None] | None = None,
    ) -> None:
        self.df = df.reset_index(drop=True)
        self.task = task
        self.use_image = use_image
        self.paired = paired
        self.labelled = labelled
        self.image_cache = image_cache
        self.transform = transform
        self.origin = origin
        self.image_options = image_options or ImageOptions()
        self.masks = masks
        n = len(self.df)
        if use_image:
            if transform is None:
                raise DataError("LesionDataset with use_image=True needs a transform "
                                "(melalib.transforms.build_transforms)")
            columns = IMAGE_COLUMNS if paired else IMAGE_COLUMNS[:1]
            for column in columns:
                if column not in self.df.columns:
                    raise DataError(f"the table has no {column!r} column"
                                    + (" (paired=True needs a second image)" if paired else ""),
                                    file=origin, column=column)
            self.paths = [self.df[c].to_numpy(dtype=object) for c in columns]
        if meta is None:
            self.meta = np.zeros((n, 0), dtype=np.float32)
        else:
            self.meta = np.asarray(meta, dtype=np.float32)
            if self.meta.ndim != 2 or len(self.meta) != n:
                raise DataError(f"metadata matrix has shape {self.meta.shape}; expected ({n}, D) "
                                "rows aligned with the table", file=origin)
            bad = ~np.isfinite(self.meta)
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise DataError(f"metadata feature {col} is {self.meta[row, col]} (not finite)",
                                file=origin, row=int(row) + 1, column=f"meta[{col}]")
        self.meta_t = torch.from_numpy(self.meta)
        self.meta_blanking = float(meta_blanking)
        self.variants_t = (None if meta_variants is None or not meta_blanking
                           else torch.from_numpy(np.asarray(meta_variants, dtype=np.float32)))
        if self.variants_t is not None and tuple(self.variants_t.shape[1:]) != self.meta.shape:
            raise DataError(f"meta_variants of shape {tuple(self.variants_t.shape)} do not fit "
                            f"the metadata {self.meta.shape}", file=origin)
        self.targets = self._targets()
        self.seed = seed if seed is not None else getattr(transform, "seed", None)
        self.load_size = load_size or getattr(transform, "image_size", None)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._worker_seeded: int | None = None

    # ---------------------------------------------------------------- targets
    def _targets(self) -> torch.Tensor:
        n, k = len(self.df), self.task.n_classes
        if not self.labelled or "label" not in self.df.columns:
            labels = np.full(n, -1, dtype=np.int64)
        else:
            labels = pd.to_numeric(self.df["label"], errors="coerce").fillna(-1).to_numpy()
            labels = labels.astype(np.int64)
            if (labels >= k).any():
                row = int(np.flatnonzero(labels >= k)[0])
                raise DataError(f"label {labels[row]} is outside 0..{k - 1}", file=self.origin,
                                row=row + 1, column="label")
        return torch.from_numpy(self.task.targets(labels))

    # ------------------------------------------------------------------ epoch
    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (shared with running workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def item_seed(self, index: int, branch: int = 0) -> int:
        """The augmentation seed of row ``index`` in the current epoch."""
        assert self.seed is not None
        words = [int(self.seed) & 0xFFFFFFFF, self.epoch, int(index), branch]
        return int(np.random.SeedSequence(words).generate_state(1)[0])

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.df)

    def _read(self, i: int, branch: int) -> np.ndarray:
        path = self.paths[branch][i]
        if self.image_cache is not None and path in self.image_cache:
            return self.image_cache[path]
        where = dict(file=self.origin, row=i + 1, column=IMAGE_COLUMNS[branch])
        who = f" (image_id {self.df['image_id'].iat[i]})" if "image_id" in self.df else ""
        if not isinstance(path, (str, Path)) or not str(path).strip():
            raise ImageError(f"no image path given{who}", **where)
        try:
            image = read_image(str(path), self.load_size, self.image_options)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc.detail}{who}", **where) from None
        if self.image_cache is not None:
            self.image_cache[path] = image
        return image

    def _apply(self, image: np.ndarray, i: int, branch: int) -> torch.Tensor:
        transform = self.transform
        assert transform is not None
        seed = self._augment_seed(i, branch)
        out = transform(image) if seed is None else transform(image, seed=seed)
        return torch.as_tensor(out, dtype=torch.float32)

    def _augment_seed(self, i: int, branch: int) -> int | None:
        """Row ``i``'s augmentation seed this epoch; None for an unseeded transform (then
        this DataLoader worker's own stream is seeded once)."""
        if self.seed is not None and getattr(self.transform, "seedable", False):
            return self.item_seed(i, branch)
        self._reseed_worker()
        return None

    def _with_mask(self, item: dict[str, Any], image: np.ndarray, i: int) -> None:
        """``image``, ``mask`` and ``has_mask`` of row ``i`` (the mask framed and augmented
        with the image; zeros where the row has no mask)."""
        assert self.masks is not None and self.transform is not None
        mask = self.masks(i, image.shape[:2])
        if mask is None:
            item["image"] = self._apply(image, i, 0)
            size = item["image"].shape[-2:]
            item["mask"], item["has_mask"] = torch.zeros((1, *size)), torch.tensor(0.0)
            return
        out, framed = self.transform.with_mask(  # type: ignore[attr-defined]
            image, mask, seed=self._augment_seed(i, 0))
        item["image"] = torch.as_tensor(out, dtype=torch.float32)
        item["mask"] = torch.as_tensor(framed, dtype=torch.float32)[None]
        item["has_mask"] = torch.tensor(1.0)

    def _reseed_worker(self) -> None:
        """Unseeded transforms: give each DataLoader worker its own random stream."""
        info = torch.utils.data.get_worker_info()
        if info is None or self._worker_seeded == info.seed:
            return
        reseed = getattr(self.transform, "reseed", None)
        if reseed is not None:
            reseed(info.seed % 2**63)
        self._worker_seeded = info.seed

    def _meta(self, i: int) -> torch.Tensor:
        """Row ``i``'s metadata; under ``meta_blanking`` age, sex and site are each blanked
        with that probability, drawn from (seed, epoch, row) like the augmentations."""
        if self.variants_t is None or self.seed is None:
            return self.meta_t[i]
        rng = np.random.default_rng(self.item_seed(i, branch=2))
        bits = rng.random(self.variants_t.shape[0].bit_length() - 1) < self.meta_blanking
        return self.variants_t[int(np.dot(bits, 2 ** np.arange(len(bits)))), i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} is outside 0..{len(self) - 1}")
        item: dict[str, Any] = {"meta": self._meta(i), "target": self.targets[i], "index": i}
        if self.use_image:
            if self.masks is None:
                item["image"] = self._apply(self._read(i, 0), i, 0)
            else:
                self._with_mask(item, self._read(i, 0), i)
            if self.paired:
                item["image2"] = self._apply(self._read(i, 1), i, 1)
        return item


# ---------------------------------------------------------------- pre-flight check
def image_problem(path: Any, options: ImageOptions | None = None) -> str | None:
    """Why the image at ``path`` cannot be used, or None when it decodes fully.

    The file is verified (PNG checksums), then decoded by `read_image` as training will
    decode it (JPEGs at a reduced scale, which still reads every byte)."""
    if path is None or (isinstance(path, float) and np.isnan(path)) or not str(path).strip():
        return "no path given"
    p = Path(str(path))
    if hdf5_member(p) is not None:  # an archive member: decoded in full below
        return _decode_problem(p, options) if image_exists(p) else "missing"
    if not p.is_file():
        return "missing" if not p.exists() else "not a file"
    if p.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(p) as img:
            img.verify()
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError:
        pass  # read_image states the size and the ceiling
    except (OSError, ValueError, SyntaxError) as exc:
        return f"corrupt or truncated: {exc}"
    return _decode_problem(p, options)


def _decode_problem(path: Path, options: ImageOptions | None) -> str | None:
    """Why `read_image` refuses ``path`` (None: it decodes)."""
    try:
        read_image(path, 64, options)
        # data that Pillow decodes although it ends early (archive members are decoded whole)
        return None if hdf5_member(path) is not None else incomplete_data(path)
    except ImageError as exc:
        return exc.detail
    except OSError as exc:
        return f"unreadable: {exc}"


def check_images_readable(df: pd.DataFrame, columns: Sequence[str] = IMAGE_COLUMNS,
                          workers: int | None = None,
                          options: ImageOptions | None = None, progress: bool = False
                          ) -> pd.DataFrame:
    """Every unreadable image the table names: DataFrame (row, column, path, reason); a
    progress bar with ``progress`` (a large table's pre-flight takes a minute).

    ``row`` is the 1-based position in ``df``; absent columns are skipped. Each file is
    opened, verified and decoded to its end (JPEGs in draft mode, ~5x faster; threads, as
    PIL releases the GIL while decoding).
    """
    jobs = [(pos + 1, column, path) for column in columns if column in df.columns
            for pos, path in enumerate(df[column].tolist())]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(bar(pool.map(lambda job: image_problem(job[2], options), jobs),
                           total=len(jobs), desc="image pre-flight", unit="img", leave=False,
                           disable=not progress))
    rows = [(row, column, str(path), reason)
            for (row, column, path), reason in zip(jobs, reasons, strict=True)
            if reason is not None]
    return pd.DataFrame(rows, columns=["row", "column", "path", "reason"])



def find_unlisted_images(df: pd.DataFrame, image_dir: str | Path | None = None,
                         columns: Sequence[str] = IMAGE_COLUMNS,
                         extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Image files on disk that the table does not name: sorted paths (not an error).

    Scans ``image_dir`` or, without it, every folder holding a listed image (not
    recursively; hidden files skipped) for files with one of ``extensions``. A non-empty
    result usually means a CSV that lost rows, or a folder shared with other data.
    """
    def key(path: str) -> str:
        return os.path.normcase(os.path.normpath(os.path.abspath(path)))

    listed: set[str] = set()
    for column in columns:
        if column in df.columns:
            listed.update(key(str(p)) for p in df[column].dropna().tolist() if str(p).strip())
    folders = ({os.path.dirname(p) for p in listed} if image_dir is None
               else {key(str(image_dir))})
    suffixes = tuple(e.lower() for e in extensions)
    unlisted = []
    for folder in sorted(folders):
        try:
            entries = list(os.scandir(folder))
        except OSError:  # a folder that vanished or is unreadable holds nothing to report
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.lower().endswith(suffixes):
                continue
            path = key(entry.path)
            if path not in listed and entry.is_file():
                unlisted.append(path)
    return sorted(unlisted)
