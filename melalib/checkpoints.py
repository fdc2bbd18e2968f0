"""Checkpoints: atomic saves, and loads that refuse a checkpoint from another config.

A checkpoint holds only tensors and plain values (dicts, lists, strings, numbers, None), and
is read with ``torch.load(weights_only=True)``: a file that asks the unpickler for anything
else (a class, a function such as ``os.system``) is refused before any of it runs.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .data.images import ImageOptions
from .errors import CheckpointError, ConfigError, WriteError
from .features import MetaEncoder
from .io import atomic_path, write_error
from .models import build_model, input_normalization
from .tasks import Task
from .weights import refusal_reason

FORMAT = 1
#: what a checkpoint of melalib's training loop holds besides the optimizer state
MODEL_KEYS = ("model", "config", "task", "n_meta", "meta_encoder", "backbone", "n_outputs")


def _numpy_scalar_globals() -> list[Any]:
    """Numpy scalars and dtypes (rebuilt from a dtype and raw bytes, no code): older
    checkpoints may hold a numpy float in their history."""
    # imported here: the module moved in numpy 2 (numpy.core -> numpy._core)
    try:  # numpy >= 2
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x (e.g. an older Kaggle image)
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]

    kinds = (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
             np.uint8, np.bool_)
    return [scalar, np.dtype, *(type(np.dtype(k)) for k in kinds)]


def plain_state(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays made Python numbers and lists (tensors kept),
    so that ``weights_only=True`` reads it back."""
    if isinstance(obj, dict):
        return {k: plain_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_state(v) for v in obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` through a temp file: a crash never leaves half a file,
    and a failed write (disk full, no permission) raises `WriteError` naming ``path`` with
    the previous checkpoint intact."""
    state = plain_state({"format": FORMAT, **state})
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except WriteError:
        raise
    except (OSError, RuntimeError) as exc:  # torch's stream writer raises RuntimeError
        raise write_error(path, exc) from exc
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A melalib checkpoint read with ``weights_only=True`` (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        allowed = [f"{g.__module__}.{g.__name__}" for g in _numpy_scalar_globals()]
        raise CheckpointError(
            f"checkpoint {path} was refused ({refusal_reason(path, exc, allowed)}): it is "
            "corrupt or holds Python objects other than tensors and plain values, and melalib "
            "never runs code from a checkpoint (torch.load weights_only=True); only use "
            "checkpoints melalib wrote") from exc
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); it may be truncated "
                              "or not a melalib checkpoint") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a melalib checkpoint (format {FORMAT})")
    return state


def check_compatible(state: dict[str, Any], *, path: str | Path, config: Any = None,
                     fingerprint: str | None = None, backbone: str | None = None,
                     n_outputs: int | None = None, n_meta: int | None = None) -> None:
    """Raise CheckpointError naming what differs between a checkpoint and the current run:
    the model (backbone, outputs, metadata width), then the config (``config``: a
    `RunConfig` compared field by field; ``fingerprint``: an exact hash)."""
    found = {"backbone": state.get("backbone"), "n_outputs": state.get("n_outputs"),
             "n_meta": state.get("n_meta")}
    wanted = {"backbone": backbone, "n_outputs": n_outputs, "n_meta": n_meta}
    diffs = [f"{k}: checkpoint {found[k]!r}, config {wanted[k]!r}" for k in found
             if wanted[k] is not None and found[k] != wanted[k]]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was made for another model ({'; '.join(diffs)})")
    if config is not None:
        _refuse_changed(_stored_config(state, path), config, path)
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} comes from another config (fingerprint "
            f"{state.get('fingerprint')} != {fingerprint}); use the config it was trained with "
            "or start a new run")


@dataclass(frozen=True)
class Preprocessing:
    """How a model's inputs were made, stored in its checkpoint at training (``preprocessing``)
    and read back by everything that feeds the model new images (``melalib predict``,
    Grad-CAM, ``melalib evaluate``): input size and aspect, the normalisation mean / std of
    its weights, the image decoder's options (colour constancy, alpha, pixel ceiling), and
    the task it answers (name and class order)."""

    image_size: int
    aspect: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_options: ImageOptions
    task: str
    classes: tuple[str, ...]

    @classmethod
    def of(cls, cfg: RunConfig, task: Task) -> Preprocessing:
        """What training ``cfg`` feeds its model (mean / std: `models.input_normalization`)."""
        mean, std = input_normalization(cfg.model)
        return cls(cfg.data.image_size, cfg.data.aspect, tuple(map(float, mean)),
                   tuple(map(float, std)), ImageOptions.from_config(cfg.data), task.name,
                   tuple(task.classes))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std),
                "classes": list(self.classes),
                "image_options": dataclasses.asdict(self.image_options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(int(d["image_size"]), str(d["aspect"]), tuple(map(float, d["mean"])),
                   tuple(map(float, d["std"])), ImageOptions(**d["image_options"]),
                   str(d["task"]), tuple(map(str, d["classes"])))


def stored_preprocessing(state: dict[str, Any], cfg: RunConfig, task: Task,
                         path: str | Path) -> Preprocessing:
    """The checkpoint's own `Preprocessing`; a checkpoint written before melalib stored it
    gets what its config implies (mean / std re-derived from timm, as training then did)."""
    stored = state.get("preprocessing")
    if stored is None:
        return Preprocessing.of(cfg, task)
    try:
        return Preprocessing.from_dict(stored)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} holds an unreadable preprocessing record: "
                              f"{exc}") from exc


def _stored_config(state: dict[str, Any], path: str | Path) -> RunConfig:
    try:
        return RunConfig.from_dict(state.get("config") or {})
    except (ConfigError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path} holds a config this melalib cannot read "
                              f"({exc})") from exc


def _refuse_changed(saved: RunConfig, config: RunConfig, path: str | Path) -> None:
    changed = saved.result_diff(config)
    if changed:
        raise CheckpointError(
            f"checkpoint {path} comes from another config (checkpoint vs now: {changed}); "
            "use the config it was trained with or start a new run")


def checkpoint_config(state: dict[str, Any], path: str | Path,
                      config: RunConfig | None = None) -> RunConfig:
    """The checkpoint's config. ``config`` (the run's, already parsed) is returned as it is
    when the checkpoint stores exactly it, so a run's folds never parse it again; otherwise
    the stored one is parsed and, with ``config``, compared field by field (CheckpointError
    naming what differs, as `check_compatible`)."""
    if config is not None and state.get("config") == config.to_dict():
        return config
    saved = _stored_config(state, path)
    if config is not None:
        _refuse_changed(saved, config, path)
    return saved


def ema_weights(ema_state: dict[str, Any]) -> dict[str, Any]:
    """The model state dict inside a saved `AveragedModel` state (its ``module.`` prefix off)."""
    return {k.removeprefix("module."): v for k, v in ema_state.items()}


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path,
                       key: str = "model") -> None:
    try:
        model.load_state_dict(state[key])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from exc


@dataclass
class CheckpointModel:
    """A model rebuilt from a checkpoint, with what it was trained with."""

    model: nn.Module
    encoder: MetaEncoder
    cfg: RunConfig
    task: Task
    fold: int | None
    best_epoch: int | None
    preprocessing: Preprocessing


def load_model(path: str | Path, device: torch.device, *, config: RunConfig | None = None
               ) -> CheckpointModel:
    """The model of checkpoint ``path`` on ``device`` in eval mode (its EMA weights when it
    holds them), rebuilt from its own config, task and metadata encoder; ``config``: the run's
    config, which the checkpoint's must match. CheckpointError when it does not fit."""
    path = Path(path)
    state = load_checkpoint(path)
    missing = [k for k in MODEL_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was not written by "
                              "melalib's training loop")
    cfg = checkpoint_config(state, path, config)
    try:
        task = Task.from_dict(state["task"])
        encoder = MetaEncoder.from_dict(state["meta_encoder"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} holds an unreadable task or metadata "
                              f"encoder: {exc}") from exc
    check_compatible(state, path=path, backbone=cfg.model.backbone,
                     n_outputs=task.n_outputs, n_meta=encoder.dim)
    # the checkpoint's weights replace any pretrained ones: never download or read them
    model_cfg = dataclasses.replace(cfg.model, pretrained=False, pretrained_path="")
    try:
        model = build_model(model_cfg, task, encoder.dim)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its model: {exc}") from exc
    ema = state.get("ema")
    weights = ema_weights(ema) if ema is not None else state["model"]
    load_model_weights(model, {"model": weights}, path)
    model.to(device).eval()
    fold, best_epoch = state.get("fold"), state.get("best_epoch")
    return CheckpointModel(model, encoder, cfg, task, None if fold is None else int(fold),
                           None if best_epoch is None else int(best_epoch),
                           stored_preprocessing(state, cfg, task, path))
