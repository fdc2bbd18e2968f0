"""Metadata encoding: the canonical table's metadata -> a float32 matrix for the meta MLP.

`MetaEncoder` is fitted on training rows only; every statistic it uses later (means, standard
deviations, imputation values, categories) is learnt in `fit` and stored by `to_dict`, so a
checkpoint predicts with its own training fold's statistics. Standardisation uses the mean and
the population standard deviation (ddof=0) of the finite training values; a missing or
non-finite value is imputed with the training mean (0 after standardisation). NaN never
reaches the output. Optional columns are used when present in the training frame with at
least one usable value; once used they are required at `transform`.

Feature sets (`FEATURE_SETS`; the `features` config field):

``default``
    ``sex_male``, ``sex_female`` (unknown = zeros); ``site_<s>`` for the six known sites of
    `melalib.table.SITES` (unknown = zeros) + ``site_missing``; ``age`` standardised +
    ``age_missing``; then, when present: ``n_images`` as log1p standardised, with
    ``file_size=True`` only: ``image_bytes`` (and ``image_bytes_2``) as log standardised (the
    JPEG file size is a shortcut that does not transfer across image sources, so it is
    opt-in), ``skin_tone_0`` .. ``skin_tone_5`` one-hot,
    every ``monet_*`` column raw (scores in [0, 1]; missing -> training mean), every
    ``meta_*`` column (custom datasets): numeric ones standardised, text ones one-hot over the
    categories seen in training (``meta_x=value``; an unseen value raises DataError).

``isic11``
    The 11 features of the SIIM-ISIC 2020 winner (haqishen, ``dataset.get_meta_data``),
    fixed transforms, nothing standardised:
    ``sex`` (male 1, female 0, unknown -1), ``age`` (age / 90, missing -> 0), ``n_images``
    (log1p of the patient's image count: the ``n_images`` column when present, else counted
    per ``patient_id`` / ``group_id`` within the frame passed to `transform`, as the winner
    counted train and test separately), ``image_size`` (log of the JPEG file size in bytes,
    column ``image_bytes``; a missing size takes the training mean of the log) and the
    one-hot site in pandas ``get_dummies`` order with missing last: ``site_head_neck``,
    ``site_lower_extremity``, ``site_oral_genital``, ``site_palms_soles``, ``site_torso``,
    ``site_upper_extremity``, ``site_unknown``. The winner's six ISIC 2020 site words map
    one-to-one onto melalib's sites; its NaN-site dummy is ``site_unknown``.

``context``
    ``default`` + "ugly duckling" context computed per patient (``patient_id``, else
    ``group_id``) from metadata alone, within the frame passed to `fit` / `transform` (a
    training fold's patients see their own images, test patients their own test images;
    folds never split a patient, so a fold's frame holds every image of its patients):
    ``ctx_n_images`` (log1p count), ``ctx_same_site`` (log1p of the patient's OTHER images at
    the same site), ``ctx_site_share`` (share of the patient's images at that site),
    ``ctx_age_offset`` (age minus the patient's mean age) and, with ``file_size=True``,
    ``ctx_bytes_z`` (log size z-score within the patient), ``ctx_bytes_mean``,
    ``ctx_bytes_std`` (patient mean / std of the log size); all standardised with training
    statistics. No label column is ever read.

``tbp``
    ``default`` + the ISIC 2024 (SLICE-3D) lesion measurements of the 3D total-body
    photograph: every numeric ``tbp_lv_*`` column (colour, shape, size, border, symmetry,
    position, the vendor's nevus confidence) and ``clin_size_long_diam_mm`` (`tbp_columns`),
    standardised with training statistics (missing -> the training mean).

``none``
    No features: ``dim == 0`` and `transform` returns an (N, 0) array; needs no `fit`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError, LeakageError
from .registry import Registry
from .table import SEXES, SITES, patient_key


@dataclass(frozen=True)
class FeatureSet:
    """What a ``features`` choice encodes: nothing (``encodes=False``), the fixed ISIC 2020
    11-feature layout (``isic11``), or sex / site / age plus the table's optional columns
    and the set's own inputs ``extra(df)`` (``@...`` marks a derived input)."""

    encodes: bool = True
    isic11: bool = False
    extra: Callable[[pd.DataFrame], list[str]] = lambda df: []


#: the ``features`` choices: name -> its `FeatureSet` (``context``: label-free patient
#: context; ``tbp``: default + the ISIC 2024 ``tbp_lv_*`` measurements)
FEATURE_SETS: Registry[FeatureSet] = Registry("features", {
    "default": FeatureSet(),
    "isic11": FeatureSet(isic11=True),
    "context": FeatureSet(extra=lambda df: ["@patient_context"]),
    "tbp": FeatureSet(extra=lambda df: tbp_columns(df)),
    "none": FeatureSet(encodes=False),
})
#: ISIC 2024 lesion measurements (the ``tbp`` set; `tbp_columns`)
TBP_PREFIX, TBP_EXTRA = "tbp_lv_", ("clin_size_long_diam_mm",)
FORMAT = "melalib.MetaEncoder"
VERSION = 1
KNOWN_SITES = tuple(s for s in SITES if s != "unknown")
ISIC11_SITES = (*sorted(KNOWN_SITES), "unknown")
SKIN_TONES = tuple(range(6))
BYTES_COLUMNS = ("image_bytes", "image_bytes_2")
#: `MetaEncoder.drift` flags a feature whose mean moved more than this many training SDs...
DRIFT_SHIFT_SD = 2.0
#: ... or with more than this share of rows outside the training [0.5 %, 99.5 %] range.
DRIFT_OUTSIDE_SHARE = 0.10


@dataclass
class Feature:
    """One output column: ``(raw value, missing -> fill) - center) / scale``."""

    name: str
    kind: str  # onehot | indicator | standardized | raw | fixed
    column: str  # the table column it comes from
    center: float = 0.0
    scale: float = 1.0
    fill: float = 0.0


def is_tbp(column: str) -> bool:
    """Whether ``column`` is an ISIC 2024 lesion measurement (``tbp_lv_*``, clin_size)."""
    return column.startswith(TBP_PREFIX) or column in TBP_EXTRA


def tbp_columns(df: pd.DataFrame) -> list[str]:
    """The numeric ISIC 2024 measurement columns of ``df`` with a usable value (text ones
    such as ``tbp_lv_location`` are left out)."""
    return [c for c in df.columns if is_tbp(c) and pd.api.types.is_numeric_dtype(df[c])
            and _usable(_numeric(df, c))]


#: The metadata `blanked_variants` blanks, and the value that means "not recorded".
BLANKABLE = (("age", np.nan), ("sex", "unknown"), ("site", "unknown"))


def blanked_variants(encoder: MetaEncoder, df: pd.DataFrame) -> np.ndarray:
    """(2**3, N, D) encodings of ``df`` with every subset of age / sex / site blanked
    (variant ``k``: bit ``j`` of ``k`` blanks `BLANKABLE[j]`; variant 0 is ``df`` as it is):
    what a row looks like to the model when that metadata is missing (``meta_blanking``)."""
    out = []
    for k in range(2 ** len(BLANKABLE)):
        blank = df.copy()
        for j, (column, missing) in enumerate(BLANKABLE):
            if k >> j & 1 and column in blank.columns:
                blank[column] = missing
        out.append(encoder.transform(blank))
    return np.stack(out).astype(np.float32)


class MetaEncoder:
    """Encode sex, site, age and the optional extras; fit on training rows only."""

    def __init__(self, preset: str = "default", *, file_size: bool = False) -> None:
        self.feature_set = FEATURE_SETS[preset]
        self.preset = preset
        self.file_size = file_size  # default / context: use image_bytes (isic11 always does)
        self.columns: list[str] = []  # optional / derived columns chosen at fit
        self.categories: dict[str, list[str]] = {}  # text meta_* columns -> categories
        self.features: list[Feature] = []
        self.train_stats: dict[str, tuple[float, float, float, float]] = {}
        self.fitted = not self.feature_set.encodes

    # ------------------------------------------------------------------ public API
    @property
    def feature_names(self) -> list[str]:
        self._require_fitted("feature_names")
        return [f.name for f in self.features]

    @property
    def dim(self) -> int:
        self._require_fitted("dim")
        return len(self.features)

    def fit(self, train_df: pd.DataFrame) -> MetaEncoder:
        """Learn the statistics from ``train_df`` (training rows only; labels are not read)."""
        if not self.feature_set.encodes:
            self.fitted = True
            return self
        if len(train_df) == 0:
            raise DataError("cannot fit the metadata encoder on an empty frame")
        if "split" in train_df.columns and (train_df["split"] == "test").any():
            n = int((train_df["split"] == "test").sum())
            raise LeakageError(f"MetaEncoder.fit received {n} test row(s); fit on training "
                               "rows only")
        self.columns = self._choose_columns(train_df)
        self.categories = {c: _categories(train_df, c) for c in self.columns
                           if c.startswith("meta_") and not _is_numeric(train_df[c])}
        raw = self._raw(train_df)
        self.features = [self._fit_feature(name, kind, column, raw[name].to_numpy())
                         for name, (kind, column) in self._kinds.items()]
        self.fitted = True
        self.train_stats = _column_stats(self.transform(train_df), self.feature_names)
        return self

    def drift(self, df: pd.DataFrame, *, shift_sd: float = DRIFT_SHIFT_SD,
              outside_share: float = DRIFT_OUTSIDE_SHARE) -> pd.DataFrame:
        """How far ``df``'s encoded metadata lies from the training rows, per feature.

        Columns: ``feature``, ``train_mean``, ``train_std``, ``new_mean``, ``shift_sd``
        (mean shift in training standard deviations), ``share_outside`` (share of rows
        outside the training rows' [0.5 %, 99.5 %] range) and ``flagged`` (``|shift_sd| >
        shift_sd`` or ``share_outside > outside_share``). Empty without training statistics
        (an encoder saved before melalib recorded them) or without features."""
        self._require_fitted("drift")
        columns = ["feature", "train_mean", "train_std", "new_mean", "shift_sd",
                   "share_outside", "flagged"]
        if not self.train_stats or not self.features or len(df) == 0:
            return pd.DataFrame(columns=columns)
        encoded = self.transform(df)
        rows = []
        for j, name in enumerate(self.feature_names):
            mean, std, low, high = self.train_stats[name]
            values = encoded[:, j]
            shift = (float(values.mean()) - mean) / std if std > 1e-12 else (
                0.0 if abs(float(values.mean()) - mean) < 1e-12 else math.inf)
            outside = float(((values < low - 1e-9) | (values > high + 1e-9)).mean())
            rows.append([name, mean, std, float(values.mean()), shift, outside,
                         abs(shift) > shift_sd or outside > outside_share])
        return pd.DataFrame(rows, columns=columns)

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encode ``df`` with the fitted statistics -> float32 (N, dim), all finite."""
        self._require_fitted("transform")
        if not self.feature_set.encodes:
            return np.zeros((len(df), 0), dtype=np.float32)
        for column in self._required_columns():
            if column not in df.columns:
                raise DataError(f"column {column!r} was used to fit the metadata encoder but "
                                "is absent from the frame to encode", column=column)
        raw = self._raw(df)
        out = np.empty((len(df), len(self.features)), dtype=np.float64)
        for j, f in enumerate(self.features):
            values = raw[f.name].to_numpy(dtype=np.float64)
            values = np.where(np.isfinite(values), values, f.fill)
            out[:, j] = (values - f.center) / f.scale
        if not np.isfinite(out).all():  # cannot happen with finite fitted statistics
            j = int(np.flatnonzero(~np.isfinite(out).all(axis=0))[0])
            raise DataError(f"non-finite value in encoded feature {self.features[j].name!r}")
        return out.astype(np.float32)

    def describe(self) -> pd.DataFrame:
        """One row per feature: name, kind, source column, fitted mean / std / fill."""
        self._require_fitted("describe")
        rows = [{"name": f.name, "kind": f.kind, "column": f.column, "mean": f.center,
                 "std": f.scale, "fill": f.fill} for f in self.features]
        return pd.DataFrame(rows, columns=["name", "kind", "column", "mean", "std", "fill"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (stored in checkpoints)."""
        self._require_fitted("to_dict")
        return {"format": FORMAT, "version": VERSION, "preset": self.preset,
                "file_size": self.file_size, "columns": list(self.columns),
                "categories": {k: list(v) for k, v in self.categories.items()},
                "features": [asdict(f) for f in self.features],
                "train_stats": {k: list(v) for k, v in self.train_stats.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaEncoder:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError("not a MetaEncoder state (missing format 'melalib.MetaEncoder')")
        if d.get("version") != VERSION:
            raise ConfigError(f"MetaEncoder state version {d.get('version')!r}; this melalib "
                              f"reads version {VERSION}")
        enc = cls(d["preset"], file_size=bool(d.get("file_size", True)))
        enc.columns = list(d["columns"])
        enc.categories = {k: list(v) for k, v in d["categories"].items()}
        enc.features = [Feature(**f) for f in d["features"]]
        enc.train_stats = {k: tuple(float(x) for x in v)  # type: ignore[misc]
                           for k, v in (d.get("train_stats") or {}).items()}
        names = list(enc._kinds)
        if [f.name for f in enc.features] != names:
            raise ConfigError(f"MetaEncoder state lists features {[f.name for f in enc.features]}"
                              f" but its preset and columns give {names}")
        enc.fitted = True
        return enc

    def __repr__(self) -> str:
        dim = len(self.features) if self.fitted else "?"
        return f"MetaEncoder(preset={self.preset!r}, dim={dim}, fitted={self.fitted})"

    # ---------------------------------------------------------------- internals
    def _require_fitted(self, what: str) -> None:
        if not self.fitted:
            raise ConfigError(f"MetaEncoder.{what} needs a fitted encoder: call fit(train_df) "
                              "first (or load one with from_dict)")

    def _required_columns(self) -> list[str]:
        return ["sex", "site", "age"] + [c for c in self.columns if not c.startswith("@")]

    def _choose_columns(self, df: pd.DataFrame) -> list[str]:
        """Optional columns used by this preset (``@...`` marks a derived input)."""
        if self.feature_set.isic11:
            if "image_bytes" not in df.columns or not _usable(_log_positive(df, "image_bytes")):
                raise DataError("preset 'isic11' needs image file sizes (column image_bytes) "
                                "and none of the training rows has one; make the images "
                                "available or use preset 'default'", column="image_bytes")
            count = "n_images" if _usable_numeric(df, "n_images") else "@patient_count"
            return [count, "image_bytes"]
        chosen = []
        if _usable_numeric(df, "n_images"):
            chosen.append("n_images")
        if self.file_size:
            chosen += [c for c in BYTES_COLUMNS
                       if c in df.columns and _usable(_log_positive(df, c))]
        if "skin_tone" in df.columns and df["skin_tone"].notna().any():
            chosen.append("skin_tone")
        chosen += [c for c in df.columns if c.lower().startswith("monet_")
                   and _usable(_numeric(df, c))]
        chosen += [c for c in df.columns if c.startswith("meta_") and df[c].notna().any()]
        return chosen + self.feature_set.extra(df)

    @property
    def _kinds(self) -> dict[str, tuple[str, str]]:
        """Output name -> (kind, source column), in output order."""
        if not self.feature_set.encodes:
            return {}
        if self.feature_set.isic11:
            count = self.columns[0]
            kinds = {"sex": ("fixed", "sex"), "age": ("fixed", "age"),
                     "n_images": ("fixed", "n_images" if count == "n_images" else "group_id"),
                     "image_size": ("fixed", "image_bytes")}
            kinds.update({f"site_{s}": ("onehot", "site") for s in ISIC11_SITES})
            return kinds
        kinds = {"sex_male": ("onehot", "sex"), "sex_female": ("onehot", "sex")}
        kinds.update({f"site_{s}": ("onehot", "site") for s in KNOWN_SITES})
        kinds.update({"site_missing": ("indicator", "site"), "age": ("standardized", "age"),
                      "age_missing": ("indicator", "age")})
        for c in self.columns:
            if c == "n_images" or c in BYTES_COLUMNS:
                kinds[c] = ("standardized", c)
            elif c == "skin_tone":
                kinds.update({f"skin_tone_{t}": ("onehot", c) for t in SKIN_TONES})
            elif c.lower().startswith("monet_"):
                kinds[c] = ("raw", c)
            elif c in self.categories:
                kinds.update({f"{c}={v}": ("onehot", c) for v in self.categories[c]})
            elif c.startswith("meta_") or is_tbp(c):
                kinds[c] = ("standardized", c)
            elif c == "@patient_context":
                kinds.update({name: ("standardized", "context") for name in
                              _context_names("image_bytes" in self.columns)})
        return kinds

    def _raw(self, df: pd.DataFrame) -> pd.DataFrame:
        """Un-fitted values per output column (NaN where missing)."""
        sex = _vocabulary(df, "sex", SEXES)
        site = _vocabulary(df, "site", SITES)
        age = _numeric(df, "age")
        cols: dict[str, np.ndarray] = {}
        if self.feature_set.isic11:
            cols["sex"] = np.select([sex == "male", sex == "female"], [1.0, 0.0], -1.0)
            cols["age"] = np.nan_to_num(age / 90.0, nan=0.0)
            cols["n_images"] = np.log1p(self._counts(df))
            cols["image_size"] = _log_positive(df, "image_bytes")
            cols.update({f"site_{s}": (site == s).astype(float) for s in ISIC11_SITES})
            return pd.DataFrame(cols, index=df.index)
        cols["sex_male"] = (sex == "male").astype(float)
        cols["sex_female"] = (sex == "female").astype(float)
        cols.update({f"site_{s}": (site == s).astype(float) for s in KNOWN_SITES})
        cols["site_missing"] = (site == "unknown").astype(float)
        cols["age"] = age
        cols["age_missing"] = (~np.isfinite(age)).astype(float)
        for c in self.columns:
            if c == "n_images":
                cols[c] = np.log1p(_counts_column(df, c))
            elif c in BYTES_COLUMNS:
                cols[c] = _log_positive(df, c)
            elif c == "skin_tone":
                cols.update(_skin_tone(df))
            elif c.lower().startswith("monet_"):
                cols[c] = _numeric(df, c)
            elif c in self.categories:
                cols.update(_one_hot_text(df, c, self.categories[c]))
            elif c.startswith("meta_") or is_tbp(c):
                cols[c] = _numeric(df, c)
            elif c == "@patient_context":
                cols.update(_patient_context(df, site, age, "image_bytes" in self.columns))
        return pd.DataFrame(cols, index=df.index)

    def _counts(self, df: pd.DataFrame) -> np.ndarray:
        if self.columns[0] == "n_images":
            return _counts_column(df, "n_images")
        return _patient_sizes(df)

    def _fit_feature(self, name: str, kind: str, column: str, values: np.ndarray) -> Feature:
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if finite.size else 0.0
        if kind == "standardized":
            std = float(finite.std()) if finite.size else 1.0
            scale = std if std > 1e-12 and math.isfinite(std) else 1.0
            return Feature(name, kind, column, center=mean, scale=scale, fill=mean)
        if kind in ("raw", "fixed"):
            return Feature(name, kind, column, fill=mean)
        return Feature(name, kind, column)


# ------------------------------------------------------------------------- column helpers
def _first_row(mask: np.ndarray) -> int:
    """1-based data row of the first True."""
    return int(np.flatnonzero(mask)[0]) + 1


def _vocabulary(df: pd.DataFrame, column: str, allowed: tuple[str, ...]) -> np.ndarray:
    """Column values as strings; empty -> 'unknown'; a word outside ``allowed`` raises."""
    if column not in df.columns:
        raise DataError(f"the metadata encoder needs column {column!r}", column=column)
    series = df[column]
    missing = series.isna().to_numpy()
    values = np.where(missing, "unknown", series.astype(str).to_numpy(dtype=object))
    bad = ~np.isin(values, np.array(allowed, dtype=object))
    if bad.any():
        row = _first_row(bad)
        raise DataError(f"{column} value {values[row - 1]!r} is outside the vocabulary "
                        f"{list(allowed)}", row=row, column=column)
    return values


def _numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    """Column as float; text raises DataError (row, column); +-inf -> NaN."""
    if column not in df.columns:
        raise DataError(f"the metadata encoder needs column {column!r}", column=column)
    series = df[column]
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    text = np.isnan(values) & series.notna().to_numpy()
    if text.any():
        stripped = series.astype(str).str.strip().to_numpy()
        text &= ~np.isin(stripped, np.array(["", "nan", "NaN", "inf", "-inf"], dtype=object))
    if text.any():
        row = _first_row(text)
        raise DataError(f"{series.iloc[row - 1]!r} is not a number", row=row, column=column)
    values[~np.isfinite(values)] = np.nan
    return values


def _is_numeric(series: pd.Series) -> bool:
    present = series.dropna()
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def _usable(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


def _usable_numeric(df: pd.DataFrame, column: str) -> bool:
    return column in df.columns and _usable(_numeric(df, column))


def _log_positive(df: pd.DataFrame, column: str) -> np.ndarray:
    """log of a byte count; missing, zero or negative -> NaN (imputed later)."""
    values = _numeric(df, column)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), np.nan)


def _counts_column(df: pd.DataFrame, column: str) -> np.ndarray:
    values = _numeric(df, column)
    bad = np.isfinite(values) & (values < 0)
    if bad.any():
        row = _first_row(bad)
        raise DataError(f"count {values[row - 1]:g} is negative", row=row, column=column)
    return values


def _skin_tone(df: pd.DataFrame) -> dict[str, np.ndarray]:
    values = _numeric(df, "skin_tone")
    known = np.isfinite(values)
    bad = known & ~np.isin(values, np.array(SKIN_TONES, dtype=float))
    if bad.any():
        row = _first_row(bad)
        raise DataError(f"skin_tone {values[row - 1]:g} is not one of {list(SKIN_TONES)}",
                        row=row, column="skin_tone")
    return {f"skin_tone_{t}": (values == t).astype(float) for t in SKIN_TONES}


def _categories(df: pd.DataFrame, column: str) -> list[str]:
    return sorted(df[column].dropna().astype(str).unique().tolist())


def _one_hot_text(df: pd.DataFrame, column: str, categories: list[str]) -> dict[str, np.ndarray]:
    series = df[column]
    present = series.notna().to_numpy()
    values = series.astype(str).to_numpy(dtype=object)
    bad = present & ~np.isin(values, np.array(categories, dtype=object))
    if bad.any():
        row = _first_row(bad)
        raise DataError(f"{column} value {values[row - 1]!r} was not seen in training "
                        f"(categories {categories})", row=row, column=column)
    return {f"{column}={v}": (present & (values == v)).astype(float) for v in categories}


def _patient_keys(df: pd.DataFrame) -> np.ndarray:
    """`table.patient_key`, as an array."""
    return patient_key(df).to_numpy(dtype=object)


def _patient_sizes(df: pd.DataFrame) -> np.ndarray:
    keys = pd.Series(_patient_keys(df))
    return keys.map(keys.value_counts()).to_numpy(dtype=np.float64)


def _context_names(with_bytes: bool) -> list[str]:
    names = ["ctx_n_images", "ctx_same_site", "ctx_site_share", "ctx_age_offset"]
    return names + (["ctx_bytes_z", "ctx_bytes_mean", "ctx_bytes_std"] if with_bytes else [])


def _patient_context(df: pd.DataFrame, site: np.ndarray, age: np.ndarray,
                     with_bytes: bool) -> dict[str, np.ndarray]:
    """Per-image context within its patient's images in ``df`` (metadata only)."""
    frame = pd.DataFrame({"patient": _patient_keys(df), "site": site, "age": age})
    by_patient = frame.groupby("patient", sort=False)
    n = by_patient["site"].transform("size").to_numpy(dtype=np.float64)
    same_site = frame.groupby(["patient", "site"], sort=False)["age"].transform("size")
    same_site = same_site.to_numpy(dtype=np.float64)
    mean_age = by_patient["age"].transform("mean").to_numpy(dtype=np.float64)
    out = {"ctx_n_images": np.log1p(n), "ctx_same_site": np.log1p(same_site - 1.0),
           "ctx_site_share": same_site / n,
           "ctx_age_offset": np.nan_to_num(age - mean_age, nan=0.0)}
    if with_bytes:
        frame["bytes"] = _log_positive(df, "image_bytes")
        grouped = frame.groupby("patient", sort=False)["bytes"]
        mean = grouped.transform("mean").to_numpy(dtype=np.float64)
        std = grouped.transform("std", ddof=0).to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(std > 1e-12, (frame["bytes"].to_numpy() - mean) / std, 0.0)
        out.update({"ctx_bytes_z": np.nan_to_num(z, nan=0.0), "ctx_bytes_mean": mean,
                    "ctx_bytes_std": np.nan_to_num(std, nan=0.0)})
    return out


def _column_stats(encoded: np.ndarray, names: list[str]
                  ) -> dict[str, tuple[float, float, float, float]]:
    """Per encoded column: mean, population std, 0.5 % and 99.5 % quantiles."""
    if encoded.size == 0:
        return {}
    low, high = np.quantile(encoded, [0.005, 0.995], axis=0)
    return {name: (float(encoded[:, j].mean()), float(encoded[:, j].std()), float(low[j]),
                   float(high[j])) for j, name in enumerate(names)}
