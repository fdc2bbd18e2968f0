"""Typed run configuration.

Four dataclasses (`DataConfig`, `ModelConfig`, `TrainConfig` and the `RunConfig` that
holds them). Every field name is unique across the sections, so the same names serve as
papermill parameters, ``--set key=value`` CLI overrides and YAML keys (flat or nested).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .data.adapters import DATASETS, MILK_VIEWS
from .data.images import ALPHA_CHOICES
from .data.missing import MISSING_IMAGES
from .data.synthetic import TASKS as SYNTHETIC_TASKS
from .device import AMP_DTYPES
from .errors import ConfigError
from .features import FEATURE_SETS
from .folds import STRATIFY
from .losses import LOSSES
from .losses import MODES as CLASS_WEIGHTING
from .presets import PRESETS
from .samplers import MODES as SAMPLERS
from .schedules import SCHEDULERS
from .targets import TARGETS
from .transforms import ASPECTS, BORDER_AUGS, STRENGTHS, TTA_COUNTS


@dataclass
class DataConfig:
    """Where the data comes from and how it is split and encoded."""

    dataset: str = "synthetic"  # synthetic | isic2020 | isic2019 | isic2020+2019 | ham10000 | milk10k | ham10000+milk10k | isic2024 | custom | image_folder
    data_dir: str = ""  # raw files of the dataset; synthetic: where generated data is cached; image_folder: <data_dir>/<class>/*.jpg
    image_dir: str = ""  # overrides the image folder (e.g. a resized cache from `melalib prepare`)
    synthetic_task: str = "binary"  # binary | multiclass | paired
    synthetic_patients: int = 60  # patients of the synthetic dataset (several lesions each)
    synthetic_seed: int = 0  # seed of the synthetic generator
    synthetic_image_size: int = 64  # pixels of the generated images
    image_size: int = 64  # model input size (square)
    aspect: str = "squash"  # non-square image -> square input: squash | crop (centre) | pad (black)
    augment: str = "medium"  # training augmentation: none | light (flips, rot90) | medium (+ crop, affine, colour) | heavy (wider + dropout)
    color_constancy: bool = False  # Shades of Gray colour correction (p=6) of every image: training, TTA, predict, Grad-CAM
    n_folds: int = 5  # grouped CV folds
    fold_seed: int = 42  # seed of the fold assignment (StratifiedGroupKFold)
    fold_stratify: str = "label"  # label | label+size (also balance images per patient) | none
    features: str = "default"  # default | isic11 | context | tbp (default + the ISIC 2024 tbp_lv_* measurements) | none
    target: str = "label"  # label | diagnosis (binary melanoma: train on 9 diagnosis classes, report P(MEL))
    pseudo_run: str = ""  # second round: run folder whose test predictions give pseudo-labels
    pseudo_threshold: float = 0.95  # pseudo_run: test rows with P(class) >= this join training
    pseudo_weight: float = 0.5  # pseudo_run: loss weight of a pseudo-labelled row (real rows 1)
    file_size_feature: bool = False  # default/context features: add the image file size (a shortcut across sources; isic11 always has it)
    num_workers: int = 0  # DataLoader worker processes
    skip_bad_images: bool = False  # true: leave out unreadable images, listed in the run dir
    missing_images: str = "error"  # listed training rows whose image files are absent (a partial download): error (before anything is written) | drop (train on the rows whose images are all present; the run lists the rest)
    milk_view: str = "dermoscopic"  # dataset=milk10k: the image a single-image model sees: dermoscopic | clinical (dual_image: both)
    custom_csv: str = ""  # dataset=custom: CSV naming images, labels and metadata
    custom_image_column: str = "image"  # dataset=custom: column of image file names
    custom_label_column: str = "label"  # dataset=custom: column of class names
    custom_group_column: str = ""  # dataset=custom: patient column (default: image)
    custom_split_column: str = ""  # dataset=custom: column of train / test (default: all train)
    custom_meta_columns: tuple[str, ...] = ()  # dataset=custom: age=col, sex=col, site=col, extra
    custom_classes: tuple[str, ...] = ()  # dataset=custom / image_folder: class order (default: sorted)
    custom_fold_column: str = ""  # dataset=custom: column of predefined folds 0..n_folds-1 (audited for leakage)
    custom_label_map: tuple[str, ...] = ()  # dataset=custom: label=class pairs (Mel=mel) mapping label variants onto a class
    positive_label: str = ""  # dataset=custom, binary: the positive class (default: the label naming melanoma / malignant / 1; required when none or both do)
    image_alpha: str = "white"  # transparent pixels: composited on white | black, or error (refused)
    max_image_pixels: int = 64_000_000  # larger images are refused (ImageError) before decoding; 0 = no limit
    # issue 25 (explanations): training against the dermoscope-border shortcut
    border_aug: str = "none"  # training only: none | vignette (random dark circular dermoscope field, p=0.5)


@dataclass
class ModelConfig:
    """The network: a timm backbone, optional metadata MLP, head."""

    backbone: str = "resnet18"  # any timm model name
    pretrained: bool = False  # ImageNet weights: pretrained_path, else a weight package (melalib weights), else timm's hub
    pretrained_path: str = ""  # local timm-format weights file (Kaggle, offline); implies pretrained
    use_image: bool = True  # False: metadata-only MetaMLP baseline
    use_meta: bool = True  # fuse the metadata MLP (False: image only)
    meta_hidden: tuple[int, ...] = (128, 64)  # metadata MLP widths
    meta_dropout: float = 0.3  # dropout in the metadata MLP
    head_dropout: float = 0.3  # dropout before the head
    n_msd: int = 1  # multi-sample dropout passes, averaged
    dual_image: bool = False  # two image branches (clinical + dermoscopic)
    shared_backbone: bool = True  # dual_image: one backbone for both images
    drop_path_rate: float = 0.0  # stochastic depth of the backbone

    @property
    def starts_pretrained(self) -> bool:
        """Whether the backbone starts from pretrained weights (a ``pretrained_path`` implies it)."""
        return self.pretrained or bool(self.pretrained_path)


@dataclass
class TrainConfig:
    """Optimisation, precision, schedule, checkpoints."""

    epochs: int = 5  # epochs per fold
    batch_size: int = 32  # global batch (split across DDP ranks)
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 1e-2  # decoupled weight decay (not on norms and biases)
    scheduler: str = "cosine"  # cosine | plateau | none
    warmup_epochs: float = 1.0  # linear warm-up of the cosine schedule
    amp: bool = True  # used on CUDA only; CPU runs fp32
    amp_dtype: str = "auto"  # auto | bf16 | fp16
    grad_accum: int = 1  # batches per optimizer step
    clip_grad: float = 0.0  # max grad norm, 0 = off
    channels_last: bool = False  # NHWC memory format
    compile: bool = False  # torch.compile the model
    ema: bool = False  # exponential moving average of weights (used for predictions)
    ema_decay: float = 0.999  # EMA decay per optimizer step
    loss: str = "auto"  # auto | bce | focal | ce
    focal_gamma: float = 2.0  # loss=focal: focusing parameter
    label_smoothing: float = 0.0  # target smoothing epsilon
    meta_blanking: float = 0.0  # training only: probability of blanking a row's age, sex and site (each independently, per epoch)
    class_weighting: str = "none"  # none | balanced | sqrt (from training folds only)
    sampler: str = "none"  # none | balanced | sqrt
    freeze_epochs: int = 0  # epochs with a frozen backbone, then discriminative LRs (>= epochs: head only)
    backbone_lr_mult: float = 0.1  # backbone LR factor after the frozen warm-up
    patience: int = 0  # early-stopping epochs without improvement, 0 = off
    seed: int = 42  # training seed (weights, shuffles, augmentation)
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    tta: int = 1  # views averaged at prediction: 1 none, 2 +hflip, 4 +vflip, 8 +rot90
    max_steps_per_epoch: int = 0  # 0 = the whole epoch (a cap for smoke tests)
    deterministic: bool = True  # deterministic cuDNN (slower on GPU)
    mlflow: bool = False  # log to MLflow (melalib[mlflow]): $MLFLOW_TRACKING_URI, else SQLite <output_dir>/mlflow.db; a parent run per run, a nested run per fold


@dataclass
class RunConfig:
    """One named run: the data, the model, the training and where it writes."""

    name: str = "run"  # run name: the run folder is <output_dir>/<name>
    output_dir: str = "outputs"  # parent folder of run folders
    fold: int = -1  # -1 = every fold
    overwrite: bool = False  # replace an existing run with another config (else refused)
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
        return _plain(dataclasses.asdict(self))

    def to_flat(self) -> dict[str, Any]:
        """One flat dict of every field: the papermill parameter set."""
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                flat.update({k: v for k, v in _plain(dataclasses.asdict(value)).items()})
            else:
                flat[f.name] = _plain(value)
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
            parsed: dict[str, Any] = {}
            for item in items:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} is not of the form key=value")
                key, value = item.split("=", 1)
                parsed[key.strip()] = value.strip()
            items = parsed
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
        """Check values that types alone cannot (choices and ranges)."""
        d, m, t = self.data, self.model, self.train
        _choice("dataset", d.dataset, DATASETS)
        _choice("synthetic_task", d.synthetic_task, tuple(SYNTHETIC_TASKS))
        _choice("fold_stratify", d.fold_stratify, STRATIFY)
        _choice("aspect", d.aspect, ASPECTS)
        _choice("augment", d.augment, STRENGTHS)
        _choice("border_aug", d.border_aug, BORDER_AUGS)
        _choice("features", d.features, FEATURE_SETS)
        _choice("image_alpha", d.image_alpha, ALPHA_CHOICES)
        _choice("missing_images", d.missing_images, MISSING_IMAGES)
        _choice("milk_view", d.milk_view, MILK_VIEWS)
        _check_name(self.name)
        _choice("target", d.target, TARGETS)
        if d.pseudo_run:
            if not 0.5 < d.pseudo_threshold <= 1:
                raise ConfigError(f"pseudo_threshold must be in (0.5, 1], got {d.pseudo_threshold}")
            if not 0 < d.pseudo_weight <= 1:
                raise ConfigError(f"pseudo_weight must be in (0, 1], got {d.pseudo_weight}")
            if d.target != "label":
                raise ConfigError("pseudo_run needs target=label (pseudo-labels are of the "
                                  "reported classes, not of the diagnosis classes)")
        _choice("scheduler", t.scheduler, SCHEDULERS)
        _choice("amp_dtype", t.amp_dtype, AMP_DTYPES)
        _choice("loss", t.loss, LOSSES)
        _choice("class_weighting", t.class_weighting, CLASS_WEIGHTING)
        _choice("sampler", t.sampler, SAMPLERS)
        _choice("tta", t.tta, TTA_COUNTS)
        for name, value, low in (
            ("image_size", d.image_size, 8),
            ("n_folds", d.n_folds, 2),
            ("synthetic_patients", d.synthetic_patients, 4),
            ("synthetic_image_size", d.synthetic_image_size, 16),
            ("epochs", t.epochs, 1),
            ("batch_size", t.batch_size, 1),
            ("grad_accum", t.grad_accum, 1),
            ("n_msd", m.n_msd, 1),
            ("num_workers", d.num_workers, 0),
            ("patience", t.patience, 0),
            ("freeze_epochs", t.freeze_epochs, 0),
            ("max_steps_per_epoch", t.max_steps_per_epoch, 0),
            ("max_image_pixels", d.max_image_pixels, 0),
        ):
            if value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}")
        for name, value in (("lr", t.lr), ("ema_decay", t.ema_decay)):
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        for name, value in (
            ("meta_dropout", m.meta_dropout),
            ("head_dropout", m.head_dropout),
            ("label_smoothing", t.label_smoothing),
            ("drop_path_rate", m.drop_path_rate),
        ):
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if not 0 <= t.meta_blanking <= 1:
            raise ConfigError(f"meta_blanking must be in [0, 1], got {t.meta_blanking}")
        if self.fold < -1 or self.fold >= d.n_folds:
            raise ConfigError(f"fold must be -1 (all) or in [0, {d.n_folds - 1}], got {self.fold}")
        if not m.use_image and not m.use_meta:
            raise ConfigError("use_image and use_meta are both false: the model has no input")
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


def _choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), list(map(str, choices)), n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got "
                          f"{value!r}{hint}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


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


def get_preset(name: str) -> dict[str, Any]:
    """Flat overrides of a named recipe (see `melalib.presets`)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; known: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


def reference_markdown() -> str:
    """The config reference (docs/config.md): every field, its section, type, default and
    the comment beside it in this module."""
    lines = ["# Config reference", "",
             "Every field is a papermill parameter (`-p name value`), a CLI override "
             "(`--set name=value`) and a YAML key (flat, or under `data:` / `model:` / `train:`).",
             "Generated from `melalib/config.py` by `melalib.config.reference_markdown()`.", ""]
    for section, cls in (("run", RunConfig), *_SECTIONS.items()):
        lines += [f"## {section}" + ("" if section == "run" else f" (`{cls.__name__}`)"), "",
                  "| field | type | default | meaning |", "|---|---|---|---|"]
        source = inspect.getsource(cls)
        hints = _hints(cls)
        for f in fields(cls):
            if f.name in _SECTIONS:
                continue
            match = re.search(rf"^\s+{f.name}: .*?#\s*(.*)$", source, re.M)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind = getattr(hints[f.name], "__name__", str(hints[f.name]))
            meaning = match.group(1).strip().replace("|", "/") if match else ""
            lines.append(f"| `{f.name}` | {kind} | `{_plain(default)!r}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)
