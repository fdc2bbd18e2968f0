"""Atomic file writes (a reader never sees a half-written file), the one plain-value
converter of everything melalib writes as JSON or YAML (`plain`), and the write rule of a
command's output folder (`claim_folder`)."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd  # loaded with the package anyway (melalib.table): no cost here
import yaml

from .errors import WriteError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_error(path: str | Path, exc: BaseException) -> WriteError:
    """A one-line `WriteError` naming ``path``, the reason and the free space left."""
    path = Path(path)
    code = errno.errorcode.get(exc.errno, "") if isinstance(exc, OSError) and exc.errno else ""
    if isinstance(exc, OSError) and exc.strerror:
        reason = f"{exc.strerror}{f' ({code})' if code else ''}"
    else:  # torch's writer: "[enforce fail at inline_container.cc:672] . unexpected pos ..."
        reason = f"the write failed ({str(exc).split('] . ')[-1].strip()})"
    try:
        free_bytes: int | None = shutil.disk_usage(_existing(path)).free
    except OSError:
        free_bytes = None
    free = "" if free_bytes is None else f"; {free_bytes / 2**20:.0f} MiB free there"
    full = code in ("ENOSPC", "EDQUOT") or (free_bytes is not None and free_bytes < 2**24)
    hint = ("the disk is full: free space" if full
            else "fix the folder's permissions" if code in ("EACCES", "EPERM", "EROFS")
            else "check the disk")
    return WriteError(f"cannot write {path}: {reason}{free}; the previous version of "
                      f"{path.name}, if any, is intact; {hint} and rerun the same command")


def _existing(path: Path) -> Path:
    """The nearest existing folder at or above ``path``'s parent."""
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def json_text(obj: Any, sort_keys: bool = True) -> str:
    """Strict JSON text: NaN and infinities (undefined metrics) become null."""
    return json.dumps(plain(obj), indent=2, sort_keys=sort_keys, default=_not_serialisable,
                      allow_nan=False)


def write_json(path: str | Path, obj: Any) -> Path:
    """`json_text` of ``obj`` written atomically to ``path``."""
    return write_text(path, json_text(obj) + "\n")


def plain(obj: Any, *, strict: bool = True, text_keys: bool = False) -> Any:
    """The one plain-value converter of everything melalib writes as JSON or YAML: dicts and
    lists (tuples too) recursively, numpy scalars and arrays as Python numbers and lists,
    paths as text, a DataFrame as records (`_json_records`). NaN and infinities become None
    where ``strict`` (JSON: `json_text`, `write_json`); ``strict=False`` keeps them (the
    config dumps of `config.RunConfig.to_dict`: YAML writes ``.inf`` and reads it back).
    ``text_keys``: every dict key as text, and a Series as a dict keyed by its index as text
    (the notebooks' reports: `notebook.write_metrics`); otherwise a Series is its values.
    `checkpoints.plain_state` is the torch counterpart (tensors and tuples kept for
    ``weights_only`` loading)."""
    if isinstance(obj, float):
        return obj if not strict or math.isfinite(obj) else None
    if isinstance(obj, pd.DataFrame):  # records: their cells as plain values, keys as they are
        return [plain(row, strict=strict) for row in _json_records(obj)]
    if isinstance(obj, dict) or (text_keys and isinstance(obj, pd.Series)):
        return {str(k) if text_keys else k: plain(v, strict=strict, text_keys=text_keys)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, strict=strict, text_keys=text_keys) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays (a Series without text_keys)
        return plain(obj.tolist(), strict=strict, text_keys=text_keys)
    return obj


def _json_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """A DataFrame (index included when named or not a plain range) as rows: NaN as None,
    column names as text (a MultiIndex column's levels joined by spaces)."""
    frame = df if isinstance(df.index, pd.RangeIndex) else df.reset_index()
    frame = frame.astype(object).where(frame.notna(), None)
    frame.columns = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c)
                     for c in frame.columns]
    return frame.to_dict(orient="records")


def write_yaml(path: str | Path, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path: str | Path, df: Any, **kwargs: Any) -> Path:
    kwargs.setdefault("index", False)
    return atomic_write(path, lambda p: df.to_csv(p, **kwargs))


def _not_serialisable(obj: Any) -> Any:
    """`json_text`'s ``default``: what `plain` leaves is no JSON value."""
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def one_line(message: str, limit: int = 2000) -> str:
    """``message`` on one line (line breaks become spaces), at most ``limit`` characters: an
    error that echoes a huge value (a pasted table, an expanded YAML) stays readable."""
    flat = " ".join(message.splitlines())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}... ({len(flat) - limit} more characters cut)"


# --------------------------------------------------------------------- the write rule
#: The marker file a writing command leaves in a folder it created: ``.melalib-<kind>``
#: (training runs: `melalib.runs.MARKER`, kept by `melalib.runs`).
MARKER_PREFIX = ".melalib-"


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies under it (both resolved)."""
    return path == folder or folder in path.parents


def check_not_input(path: str | Path, inputs: Sequence[str | Path], what: str) -> Path:
    """``path`` (an output file or folder) checked against a command's ``inputs`` (files and
    folders): it may not be one of them, lie inside an input folder or contain an input.
    WriteError naming both otherwise; a symbolic link as the output is refused too."""
    path = Path(path)
    if path.is_symlink():
        raise WriteError(f"{what} {path} is a symbolic link (to {os.readlink(path)}); melalib "
                         "does not write through links: name the real file or folder")
    real = path.resolve()
    for given in inputs:
        src = Path(given).resolve()
        if _inside(real, src) or (path.is_dir() and _inside(src, real)) or (
                not path.exists() and _inside(src, real)):
            raise WriteError(f"{what} {path} would overwrite or hold this command's input "
                             f"{given}; write somewhere else")
    return path


def claim_folder(path: str | Path, kind: str, *, overwrite: bool = False,
                 inputs: Sequence[str | Path] = (), subfolders: Sequence[str] = (),
                 create: bool = True, clear: bool = False) -> Path:
    """The one write rule of a command's output folder: ``path`` is created with the marker
    ``.melalib-<kind>``, or must already carry that marker (another kind, or none, is
    refused even with ``overwrite``; an empty folder is taken). An existing marked folder
    needs ``overwrite``; with ``clear`` its old entries are then deleted (links as links,
    never followed) before the new files are written. Never one of the command's
    ``inputs``, never a link, and none of ``subfolders`` (written into) a link.
    ``create=False`` only checks (call it before the work, and again with ``create=True``
    to write)."""
    path = check_not_input(path, inputs, f"output folder ({kind})")
    marker = path / f"{MARKER_PREFIX}{kind}"
    if path.exists() and not path.is_dir():
        raise WriteError(f"output folder {path} exists and is a file; pick another name")
    if path.is_dir() and any(path.iterdir()):
        if not marker.is_file():
            others = sorted(p.name for p in path.glob(f"{MARKER_PREFIX}*"))
            owner = f"it is another kind of melalib folder ({', '.join(others)})" if others \
                else "melalib did not create it"
            raise WriteError(f"output folder {path} holds files and {owner}, so melalib "
                             f"will not write a {kind} into it (not even with overwrite); "
                             "pick a new folder")
        if not overwrite:
            raise WriteError(f"output folder {path} holds an earlier {kind}; pass "
                             "--overwrite to replace it, or pick another name")
    for sub in subfolders:
        if (path / sub).is_symlink():
            raise WriteError(f"{path / sub} is a symbolic link (to {os.readlink(path / sub)}); "
                             "melalib does not write through links")
    if not create:
        return path
    try:
        if clear and marker.is_file():  # ours, and overwrite was given: the old entries go
            for entry in path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry != marker:
                    entry.unlink()
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from exc
    write_json(marker, {"melalib": kind})
    return path
