"""Typed run configuration.

Four dataclasses (`DataConfig`, `ModelConfig`, `TrainConfig` and the `RunConfig` that
holds them). Every field name is unique across the sections, so the same names serve as
papermill parameters, ``--set key=value`` CLI overrides and YAML keys (flat or nested).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .errors import ConfigError
from .io import plain
from .presets import NEEDS, PRESETS
from .registry import choice_error


# --------------------------------------------------------------- field declarations
@dataclass(frozen=True)
class Lazy:
    """A choice list owned by another module (``module.name``: a `Registry` or a tuple),
    imported only when read (`resolve`), so importing config imports no torch."""

    module: str
    name: str

    def resolve(self) -> tuple[Any, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.name))


@dataclass(frozen=True)
class Spec:
    """One field's declaration beside its type and default: help, choices, bounds."""

    help: str
    choices: Lazy | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def bounds(self) -> str:
        """The range in words (``>= 8``, ``in (0.5, 1]``), or ""."""
        low, high = (self.ge, self.gt), (self.le, self.lt)
        if all(v is None for v in (*low, *high)):
            return ""
        if all(v is None for v in high):
            return f">= {self.ge}" if self.ge is not None else f"> {self.gt}"
        if all(v is None for v in low):
            return f"<= {self.le}" if self.le is not None else f"< {self.lt}"
        left = f"[{self.ge}" if self.ge is not None else f"({self.gt}"
        right = f"{self.le}]" if self.le is not None else f"{self.lt})"
        return f"in {left}, {right}"

    def within(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def check(self, name: str, value: Any) -> None:
        """ConfigError unless ``value`` is one of the choices and within the bounds."""
        if self.choices is not None and value not in (choices := self.choices.resolve()):
            raise choice_error(name, value, choices)
        if not self.within(value):
            raise ConfigError(f"{name} must be {self.bounds()}, got {value}")


def opt(default: Any, help: str, *, choices: Lazy | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A config field: its default and its `Spec` (the one declaration of the field)."""
    return field(default=default, metadata={"spec": Spec(help, choices, ge, gt, le, lt)})


@dataclass
class DataConfig:
    """Where the data comes from and how it is split and encoded."""

    dataset: str = opt("synthetic", "the source of the table (a downloaded dataset, custom, "
                       "image_folder or the synthetic generator)",
                       choices=Lazy("melalib.data.load", "DATASETS"))
    data_dir: str = opt("", "raw files of the dataset; synthetic: where generated data is "
                        "cached; image_folder: <data_dir>/<class>/*.jpg")
    image_dir: str = opt("", "overrides the image folder (e.g. a resized cache from `melalib "
                         "prepare`)")
    synthetic_task: str = opt("binary", "task of the synthetic dataset (multiclass: "
                              "HAM10000-like, paired: MILK10k-like)",
                              choices=Lazy("melalib.data.synthetic", "TASKS"))
    synthetic_patients: int = opt(60, "patients of the synthetic dataset (several lesions "
                                  "each)", ge=4)
    synthetic_seed: int = opt(0, "seed of the synthetic generator")
    synthetic_image_size: int = opt(64, "pixels of the generated images", ge=16)
    image_size: int = opt(64, "model input size (square)", ge=8)
    aspect: str = opt("squash", "non-square image -> square input: squash both sides, crop "
                      "the centre, pad with black", choices=Lazy("melalib.transforms", "ASPECTS"))
    augment: str = opt("medium", "training augmentation: none, light (flips, rot90), medium "
                       "(+ crop, affine, colour), heavy (wider + dropout)",
                       choices=Lazy("melalib.transforms", "STRENGTHS"))
    color_constancy: bool = opt(False, "Shades of Gray colour correction (p=6) of every image: "
                                "training, TTA, predict, Grad-CAM")
    field_mask: str = opt("none", "black outside the ellipse inscribed in every image (a "
                          "dermoscope's round field, corners and vignette removed): training, "
                          "TTA, predict, Grad-CAM", choices=Lazy("melalib.data.images",
                                                                  "FIELD_MASKS"))
    n_folds: int = opt(5, "grouped CV folds", ge=2)
    fold_seed: int = opt(42, "seed of the fold assignment (StratifiedGroupKFold)")
    fold_stratify: str = opt("label", "fold stratification (label+size: also balance images "
                             "per patient)", choices=Lazy("melalib.folds", "STRATIFY"))
    features: str = opt("default", "metadata encoding (tbp: default + the ISIC 2024 tbp_lv_* "
                        "measurements)", choices=Lazy("melalib.features", "FEATURE_SETS"))
    target: str = opt("label", "training target (diagnosis: binary melanoma trained on 9 "
                      "diagnosis classes, reported as P(MEL))",
                      choices=Lazy("melalib.targets", "TARGETS"))
    pseudo_run: str = opt("", "second round: run folder whose test predictions give "
                          "pseudo-labels")
    pseudo_threshold: float = opt(0.95, "pseudo_run: test rows with P(class) >= this join "
                                  "training", gt=0.5, le=1)
    pseudo_weight: float = opt(0.5, "pseudo_run: loss weight of a pseudo-labelled row (real "
                               "rows 1)", gt=0, le=1)
    file_size_feature: bool = opt(False, "default/context features: add the image file size "
                                  "(a shortcut across sources; isic11 always has it)")
    num_workers: int = opt(0, "DataLoader worker processes", ge=0)
    skip_bad_images: bool = opt(False, "true: leave out unreadable images, listed in the run "
                                "dir")
    missing_images: str = opt("error", "listed training rows whose image files are absent (a "
                              "partial download): error (before anything is written) or drop "
                              "(train on the rows whose images are all present; "
                              "the run lists the rest)",
                              choices=Lazy("melalib.data.missing", "MISSING_IMAGES"))
    milk_view: str = opt("dermoscopic", "dataset=milk10k: the image a single-image model sees "
                         "(dual_image: both)",
                         choices=Lazy("melalib.data.sources.milk10k", "MILK_VIEWS"))
    custom_csv: str = opt("", "dataset=custom: CSV naming images, labels and metadata")
    custom_image_column: str = opt("image", "dataset=custom: column of image file names")
    custom_label_column: str = opt("label", "dataset=custom: column of class names")
    custom_group_column: str = opt("", "dataset=custom: patient column (default: image)")
    custom_split_column: str = opt("", "dataset=custom: column of train / test (default: all "
                                   "train)")
    custom_meta_columns: tuple[str, ...] = opt((), "dataset=custom: age=col, sex=col, site=col, "
                                               "extra")
    custom_classes: tuple[str, ...] = opt((), "dataset=custom / image_folder: class order "
                                          "(default: sorted)")
    custom_fold_column: str = opt("", "dataset=custom: column of predefined folds "
                                  "0..n_folds-1 (audited for leakage)")
    custom_label_map: tuple[str, ...] = opt((), "dataset=custom: label=class pairs (Mel=mel) "
                                            "mapping label variants onto a class")
    positive_label: str = opt("", "dataset=custom, binary: the positive class (default: the "
                              "label naming melanoma / malignant / 1; required when none or "
                              "both do)")
    image_alpha: str = opt("white", "transparent pixels: composited on white or black, or "
                           "error (refused)", choices=Lazy("melalib.data.images", "ALPHA_CHOICES"))
    max_image_pixels: int = opt(64_000_000, "larger images are refused (ImageError) before "
                                "decoding; 0 = no limit", ge=0)
    border_aug: str = opt("none", "training only, against the dermoscope-border shortcut "
                          "(issue 25): vignette = a random dark circular dermoscope field, "
                          "p=0.5", choices=Lazy("melalib.transforms", "BORDER_AUGS"))
    guide_masks: str = opt("", "cam_guidance: folder of true lesion masks of the training "
                           "images (HAM10000: masks_200x150); rows without one train unguided")
    guide_mask_pattern: str = opt("{image_id}_segmentation.png", "cam_guidance: a row's mask "
                                  "file in guide_masks ({image_id}, {stem}: the image name "
                                  "without extension)")


@dataclass
class ModelConfig:
    """The network: a timm backbone, optional metadata MLP, head."""

    backbone: str = opt("resnet18", "any timm model name")
    pretrained: bool = opt(False, "ImageNet weights: pretrained_path, else a weight package "
                           "(melalib weights), else timm's hub")
    pretrained_path: str = opt("", "local timm-format weights file (Kaggle, offline); implies "
                               "pretrained")
    use_image: bool = opt(True, "False: metadata-only MetaMLP baseline")
    use_meta: bool = opt(True, "fuse the metadata MLP (False: image only)")
    meta_hidden: tuple[int, ...] = opt((128, 64), "metadata MLP widths")
    meta_dropout: float = opt(0.3, "dropout in the metadata MLP", ge=0, lt=1)
    head_dropout: float = opt(0.3, "dropout before the head", ge=0, lt=1)
    n_msd: int = opt(1, "multi-sample dropout passes, averaged", ge=1)
    dual_image: bool = opt(False, "two image branches (clinical + dermoscopic)")
    shared_backbone: bool = opt(True, "dual_image: one backbone for both images")
    drop_path_rate: float = opt(0.0, "stochastic depth of the backbone", ge=0, lt=1)

    @property
    def starts_pretrained(self) -> bool:
        """Whether the backbone starts from pretrained weights (a ``pretrained_path`` implies it)."""
        return self.pretrained or bool(self.pretrained_path)


@dataclass
class TrainConfig:
    """Optimisation, precision, schedule, checkpoints."""

    epochs: int = opt(5, "epochs per fold", ge=1)
    batch_size: int = opt(32, "global batch (split across DDP ranks)", ge=1)
    lr: float = opt(1e-3, "peak AdamW learning rate", gt=0)
    weight_decay: float = opt(1e-2, "decoupled weight decay (not on norms and biases)")
    scheduler: str = opt("cosine", "learning-rate schedule: cosine (linear warm-up, then "
                         "cosine decay), plateau (halve when the score stalls), none",
                         choices=Lazy("melalib.schedules", "SCHEDULES"))
    warmup_epochs: float = opt(1.0, "linear warm-up of the cosine schedule")
    amp: bool = opt(True, "used on CUDA only; CPU runs fp32")
    amp_dtype: str = opt("auto", "autocast dtype on CUDA (auto: bf16 where the GPU has it)",
                         choices=Lazy("melalib.device", "AMP_DTYPES"))
    grad_accum: int = opt(1, "batches per optimizer step", ge=1)
    clip_grad: float = opt(0.0, "max grad norm, 0 = off")
    channels_last: bool = opt(False, "NHWC memory format")
    compile: bool = opt(False, "torch.compile the model")
    ema: bool = opt(False, "exponential moving average of weights (used for predictions)")
    ema_decay: float = opt(0.999, "EMA decay per optimizer step", gt=0)
    loss: str = opt("auto", "loss (auto: bce for binary / multilabel, ce for multiclass)",
                    choices=Lazy("melalib.losses", "LOSSES"))
    focal_gamma: float = opt(2.0, "loss=focal: focusing parameter", ge=0)
    label_smoothing: float = opt(0.0, "target smoothing epsilon", ge=0, lt=1)
    meta_blanking: float = opt(0.0, "training only: probability of blanking a row's age, sex "
                               "and site (each independently, per epoch)", ge=0, le=1)
    cam_guidance: float = opt(0.0, "training only (issue 25): loss weight of the class-"
                              "activation map's share outside the lesion mask (guide_masks)",
                              ge=0)
    class_weighting: str = opt("none", "loss class weights (from training folds only)",
                               choices=Lazy("melalib.losses", "CLASS_WEIGHTING"))
    sampler: str = opt("none", "class-rebalancing sampler (from training folds only)",
                       choices=Lazy("melalib.samplers", "SAMPLERS"))
    freeze_epochs: int = opt(0, "epochs with a frozen backbone, then discriminative LRs (>= "
                             "epochs: head only)", ge=0)
    backbone_lr_mult: float = opt(0.1, "backbone LR factor after the frozen warm-up")
    patience: int = opt(0, "early-stopping epochs without improvement, 0 = off", ge=0)
    seed: int = opt(42, "training seed (weights, shuffles, augmentation)")
    device: str = opt("auto", "auto, cpu, cuda or cuda:1")
    tta: int = opt(1, "views averaged at prediction: 1 none, 2 +hflip, 4 +vflip, 8 +rot90",
                   choices=Lazy("melalib.transforms", "TTA_COUNTS"))
    max_steps_per_epoch: int = opt(0, "0 = the whole epoch (a cap for smoke tests)", ge=0)
    deterministic: bool = opt(True, "deterministic cuDNN (slower on GPU)")
    mlflow: bool = opt(False, "log to MLflow (melalib[mlflow]): $MLFLOW_TRACKING_URI, else "
                       "SQLite <output_dir>/mlflow.db; a parent run per run, a nested run per "
                       "fold")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``key=value`` strings (CLI ``--set``) as a dict, keys and values stripped."""
    parsed: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        parsed[key.strip()] = value.strip()
    return parsed


@dataclass
class RunConfig:
    """One named run: the data, the model, the training and where it writes."""

    name: str = opt("run", "run name: the run folder is <output_dir>/<name>")
    output_dir: str = opt("outputs", "parent folder of run folders")
    fold: int = opt(-1, "-1 = every fold", ge=-1)
    overwrite: bool = opt(False, "replace an existing run with another config (else refused)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: The preset the config was resolved from ("" = none) and where each field that is not
    #: at its default came from (flat name -> "preset NAME", "config FILE", "--set", ...);
    #: set by `resolve`, kept by `with_overrides`, written to the run's provenance. Not config fields.
    preset: ClassVar[str] = ""
    sources: ClassVar[Mapping[str, str]] = {}

    # ------------------------------------------------------------------ views
    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples as lists), as a run stores its config."""
        return plain(dataclasses.asdict(self), strict=False)

    def to_flat(self) -> dict[str, Any]:
        """One flat dict of every field: the papermill parameter set."""
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                flat.update(plain(dataclasses.asdict(value), strict=False))
            else:
                flat[f.name] = plain(value, strict=False)
        return flat

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not name, paths, fold or workers)."""
        d = {k: v for k, v in self.to_flat().items() if k not in RESULT_NEUTRAL}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def result_diff(self, other: RunConfig) -> dict[str, tuple[Any, Any]]:
        """Fields that change results and differ: ``{field: (self's, other's)}``.

        Compares values, not fingerprints, so a config saved by an older melalib (without
        a field added since, which then takes its default) still matches."""
        a, b = self.to_flat(), other.to_flat()
        return {k: (a[k], b[k]) for k in a if k not in RESULT_NEUTRAL and a[k] != b[k]}

    # ------------------------------------------------------------- builders
    @classmethod
    def from_dict(cls, d: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
        """Build from a nested or flat dict (or both); unknown keys and bad types raise."""
        cfg = cls()
        merged = dict(d or {})
        merged.update(overrides)
        for key, value in merged.items():
            if key in _SECTIONS and isinstance(value, dict):
                for sub_key, sub_value in value.items():
                    _set(cfg, sub_key, sub_value, section=key)
            else:
                _set(cfg, key, value)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> RunConfig:
        try:
            preset, values = read_yaml_layers(path)
            return resolve([(f"config {path}", values), ("argument", overrides)], preset)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    @classmethod
    def from_preset(cls, preset: str, /, **overrides: Any) -> RunConfig:
        """The named preset (melalib.presets) with ``overrides`` (any field, ``name`` too)."""
        return resolve([("argument", overrides)], preset=preset)

    def with_overrides(self, items: list[str] | dict[str, Any], source: str = "override"
                       ) -> RunConfig:
        """A copy with ``key=value`` strings (CLI ``--set``) or a dict applied; ``source``
        names where they came from in the copy's `sources`."""
        if not isinstance(items, dict):
            items = parse_overrides(items)
        flat = self.to_flat()
        for key, value in items.items():
            key = key.split(".")[-1]
            if key not in flat:
                _unknown(key)
            flat[key] = value
        new = RunConfig.from_dict(flat)
        new.preset = self.preset
        new.sources = {**self.sources, **{k.split(".")[-1]: source for k in items}}
        return new

    def validate(self) -> None:
        """Check every field against its declaration (`Spec`: choices and bounds), then the
        rules that tie fields together."""
        for name, (section, f) in field_index().items():
            owner = self if section is None else getattr(self, section)
            f.metadata["spec"].check(name, getattr(owner, name))
        _check_name(self.name)
        d, m = self.data, self.model
        if d.pseudo_run and d.target != "label":
            raise ConfigError("pseudo_run needs target=label (pseudo-labels are of the "
                              "reported classes, not of the diagnosis classes)")
        if self.fold >= d.n_folds:
            raise ConfigError(f"fold must be -1 (all) or in [0, {d.n_folds - 1}], got {self.fold}")
        if not m.use_image and not m.use_meta:
            raise ConfigError("use_image and use_meta are both false: the model has no input")
        if self.train.cam_guidance > 0 and not (d.guide_masks and m.use_image):
            raise ConfigError("cam_guidance > 0 needs guide_masks (a folder of lesion masks) "
                              "and use_image=true")
        if d.dataset == "custom" and not d.custom_csv:
            raise ConfigError("dataset=custom needs custom_csv (a CSV naming images and labels)")
        if d.dataset == "image_folder" and not d.data_dir:
            raise ConfigError("dataset=image_folder needs data_dir (<data_dir>/<class>/*.jpg)")


#: Fields that never change a run's numbers (where it writes, which fold, how many workers).
RESULT_NEUTRAL = frozenset({"name", "output_dir", "fold", "overwrite", "num_workers", "device",
                            "mlflow", "max_image_pixels"})
_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def field_index() -> dict[str, tuple[str | None, dataclasses.Field[Any]]]:
    """Map every flat field name to (section or None, dataclass field)."""
    index: dict[str, tuple[str | None, dataclasses.Field[Any]]] = {}
    for f in fields(RunConfig):
        if f.name in _SECTIONS:
            for sub in fields(_SECTIONS[f.name]):
                if sub.name in index:  # pragma: no cover - guarded by a test
                    raise AssertionError(f"duplicate config field {sub.name}")
                index[sub.name] = (f.name, sub)
        else:
            index[f.name] = (None, f)
    return index


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str) -> typing.NoReturn:
    close = difflib.get_close_matches(key, list(field_index()), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown config key {key!r}{hint}")


def _set(cfg: RunConfig, key: str, value: Any, section: str | None = None) -> None:
    index = field_index()
    if key not in index or (index[key][0] is None and key in _SECTIONS):
        _unknown(key)
    owner_name = index[key][0]
    if section is not None and owner_name != section:
        raise ConfigError(f"config key {key!r} belongs to section {owner_name!r}, not {section!r}")
    owner = cfg if owner_name is None else getattr(cfg, owner_name)
    hint = _hints(type(owner))[key]
    setattr(owner, key, coerce(value, hint, key))


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` (maybe a CLI string) to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(hint):
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} fits none of {hint}")
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(hint)
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            value = [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(coerce(v, item_type, key) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (str, Path)):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover


#: Longest run name (UTF-8 bytes): ``.<name>.new-<pid>``, ``.<name>.lock`` and
#: ``<name>-reproduce-XXXX`` must still fit the usual 255-byte limit of a file name.
MAX_NAME_BYTES = 100


def _check_name(name: str) -> None:
    """A run name is one printable path component: the run folder is <output_dir>/<name>."""
    n_bytes = len(name.encode("utf-8", "surrogateescape"))
    if n_bytes > MAX_NAME_BYTES:
        raise ConfigError(f"run name {name[:40]!r}... is {n_bytes} bytes long; a run name may "
                          f"have at most {MAX_NAME_BYTES} (the run folder, its lock and its "
                          "swap folder are named after it)")
    problem = (
        "is empty" if not name.strip() else
        "contains a NUL byte" if "\0" in name else
        "contains non-printable characters" if not name.isprintable() else
        "contains a path separator" if "/" in name or "\\" in name else
        "is '.' or '..'" if name in (".", "..") else
        "starts or ends with a space" if name != name.strip() else None)
    if problem:
        raise ConfigError(f"run name {name!r} {problem}; a run name is one folder name such as "
                          "'effb3_384' (letters, digits, '-', '_', '.'); the run folder is "
                          "<output_dir>/<name>")


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key in _SECTIONS and isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: a config never needs ``*name`` references, and
    nested ones expand exponentially (a few hundred bytes -> gigabytes: an alias bomb)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML alias *{str(event.anchor)[:40]} refused: melalib configs "
                "take no aliases or anchors (write the value out)", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """YAML text as Python values: safe types only, aliases refused (`_NoAliasLoader`)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: safe types


def resolve(layers: Sequence[tuple[str, Mapping[str, Any]]] = (), preset: str = ""
            ) -> RunConfig:
    """The one resolution of a preset and explicit values, shared by the CLI, the notebooks
    and Kaggle bundles: the preset first, then each ``(source, flat values)`` layer in order,
    a later one winning, so an explicit value beats the preset and a default never does.
    The config's `sources` names the layer that set each field (``"preset NAME"`` for the
    preset's own)."""
    flat: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, values in ((f"preset {preset}", get_preset(preset) if preset else {}),
                           *layers):
        flat.update(values)
        sources.update(dict.fromkeys(values, source))
    check_needs(preset, flat)
    cfg = RunConfig.from_dict(flat)
    cfg.preset, cfg.sources = preset, sources
    return cfg


def read_yaml_layers(path: str | Path) -> tuple[str, dict[str, Any]]:
    """A YAML config file as (its ``preset:`` or "", its other keys as flat overrides)."""
    path = Path(path)
    try:
        d = load_yaml(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{path}: cannot read config: {reason}") from exc
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(d).__name__}")
    preset = d.pop("preset", None) or ""
    return str(preset), _flatten(d)


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """A YAML config as flat overrides; a ``preset:`` key is expanded under the file's keys."""
    preset, values = read_yaml_layers(path)
    return {**(get_preset(preset) if preset else {}), **values}


def check_needs(preset: str, flat: Mapping[str, Any]) -> None:
    """ConfigError naming each key ``preset`` needs from its user (`presets.NEEDS`) that
    ``flat`` leaves empty."""
    for key, meaning in NEEDS.get(preset, {}).items():
        if not flat.get(key):
            raise ConfigError(f"preset {preset} needs {key}, {meaning}: --set {key}=... on "
                              f"the command line, -p {key} ... with papermill")


def get_preset(name: str) -> dict[str, Any]:
    """Flat overrides of a named recipe (see `melalib.presets`)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; known: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


def spec(name: str) -> Spec:
    """The declaration of the flat field ``name``."""
    if name not in (index := field_index()):
        _unknown(name)
    return index[name][1].metadata["spec"]


def check_field(name: str, value: Any) -> None:
    """Check ``value`` against field ``name``'s declaration: the guard a library function
    taking that value directly (not through a config) shares with `RunConfig.validate`."""
    spec(name).check(name, value)


def choices(name: str) -> tuple[Any, ...]:
    """The choices of field ``name`` from its owner's registry (() when it has none)."""
    lazy = spec(name).choices
    return lazy.resolve() if lazy is not None else ()


def _default(f: dataclasses.Field[Any]) -> Any:
    return plain(f.default if f.default is not dataclasses.MISSING else f.default_factory(),
                 strict=False)


def _kind(name: str) -> str:
    section, _f = field_index()[name]
    hint = _hints(RunConfig if section is None else _SECTIONS[section])[name]
    return getattr(hint, "__name__", str(hint))


def describe(name: str) -> str:
    """One field's help with its choices and range, as docs and ``--help`` show it."""
    s = spec(name)
    extra = [f"choices: {', '.join(map(str, choices(name)))}" if s.choices else "",
             f"range: {s.bounds()}" if s.bounds() else ""]
    return "; ".join([s.help, *filter(None, extra)])


def fields_help() -> str:
    """Every field as ``--help`` lists it: name, type, default, help, choices, range."""
    lines = ["config fields (--set key=value; docs/config.md):"]
    for name, (_section, f) in field_index().items():
        lines.append(textwrap.fill(f"{name} ({_kind(name)}, default {_default(f)!r}): "
                                   f"{describe(name)}", width=98, initial_indent="  ",
                                   subsequent_indent="      ", break_on_hyphens=False))
    return "\n".join(lines)


def reference_markdown() -> str:
    """The config reference (docs/config.md): every field's section, type, default and
    declaration (help, choices from the owner's registry, range)."""
    lines = ["# Config reference", "",
             "Every field is a papermill parameter (`-p name value`), a CLI override "
             "(`--set name=value`) and a YAML key (flat, or under `data:` / `model:` / `train:`).",
             "Generated from the field declarations in `melalib/config.py` by "
             "`melalib.config.reference_markdown()`.", ""]
    index = field_index()
    for section, cls in (("run", RunConfig), *_SECTIONS.items()):
        lines += [f"## {section}" + ("" if section == "run" else f" (`{cls.__name__}`)"), "",
                  "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, (owner, f) in index.items():
            if (owner or "run") == section:
                meaning = describe(name).replace("|", "/")
                lines.append(f"| `{name}` | {_kind(name)} | `{_default(f)!r}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)
