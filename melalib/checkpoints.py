"""Checkpoints: atomic saves, and loads that refuse a checkpoint from another config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .io import atomic_path

FORMAT = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` through a temp file: a crash never leaves half a file."""
    state = {"format": FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
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
        from .config import RunConfig
        from .errors import ConfigError

        try:
            saved = RunConfig.from_dict(state.get("config") or {})
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {path} holds a config this melalib cannot read "
                                  f"({exc})") from exc
        changed = saved.result_diff(config)
        if changed:
            raise CheckpointError(
                f"checkpoint {path} comes from another config (checkpoint vs now: {changed}); "
                "use the config it was trained with or start a new run")
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} comes from another config (fingerprint "
            f"{state.get('fingerprint')} != {fingerprint}); use the config it was trained with "
            "or start a new run")


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path,
                       key: str = "model") -> None:
    try:
        model.load_state_dict(state[key])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from exc
