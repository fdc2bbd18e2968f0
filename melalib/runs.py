"""Run directories: create, resume or refuse; provenance; the run's table and folds.

The layout of ``outputs/<run>/`` is `LAYOUT`: one `Entry` per file or folder (name, what
it holds, who writes it), from which every path below comes; `layout_text` prints it
(docs/architecture.md shows it). The provenance record (`provenance`, written by
`write_provenance`) also counts ``n_skipped_images``, ``n_unlisted_images``,
``n_missing_image_rows`` (training rows left out) and ``n_missing_image_test_rows``. The
notebooks add ``NOTEBOOK_OUTPUTS`` (figures, their JSON reports, the submission); a folder
holding only those becomes the run when training starts in it.

`RunDir` is the one reader and writer of this layout: `RunDir.start` / `RunDir.open` for
training, `RunDir.read` for a read-only view of a finished (or partly finished) run, and of
the run-like folders ``melalib stack`` writes (``table/``, ``oof*.csv``, ``test_fold*.csv``,
no ``config.yaml``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import yaml

from .config import RunConfig, load_yaml
from .errors import ConfigError, DataError, RunExistsError, RunLockedError
from .io import write_csv, write_error, write_json, write_yaml
from .predictions import fold_average, read_predictions
from .table import TABLE_FILE, TASK_FILE, LesionTable
from .tasks import Task

if TYPE_CHECKING:  # data.build imports pseudo, which reads runs
    from .data.build import Preflight

PACKAGES = ("melalib", "torch", "torchvision", "timm", "albumentations", "numpy", "pandas",
            "scikit-learn", "grad-cam")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the melalib checkout (None outside a git checkout)."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(**items: Any) -> dict[str, Any]:
    """``items`` and how the output was made: when, by which command, package versions, git
    commit, platform. The one provenance record of a run, a stack and an evaluation."""
    return {**items, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv), "versions": package_versions(),
            "git_commit": git_commit(), "platform": platform.platform()}


def write_provenance(folder: str | os.PathLike[str], **items: Any) -> Path:
    """Write `provenance` (``items`` first) as ``folder``'s ``run.json``."""
    return write_json(LAYOUT["provenance"].path(Path(folder)), provenance(**items))


MARKER = ".melalib-run"  # melalib's own mark on a run folder it created (JSON: name)


@dataclass(frozen=True)
class Entry:
    """One file or folder of a run: its ``name`` (``{k}`` stands for a fold number), what it
    holds, and who writes it (``train``: `engine` and `data.build`; ``notebook``: the
    notebooks, kept when training adopts the folder; ``report``: a run-like report folder
    such as ``melalib evaluate``'s; ``stack``: ``melalib stack``)."""

    name: str
    about: str
    writer: str = "train"
    folder: bool = False

    def path(self, root: Path, fold: int | None = None) -> Path:
        if "{k}" in self.name:
            if fold is None:
                raise ValueError(f"{self.name} needs a fold number")
            return root / self.name.replace("{k}", str(int(fold)))
        return root / self.name

    @property
    def glob(self) -> str:
        """The name with ``*`` for the fold (``oof_fold*.csv``), for globs and messages."""
        return self.name.replace("{k}", "*")

    @property
    def regex(self) -> str:
        """The concrete names of this entry (``{k}``: any fold number), for ``fullmatch``."""
        return r"\d+".join(re.escape(part) for part in self.name.split("{k}"))

    @property
    def spellings(self) -> str:
        """How code or prose may spell this entry's name: with a number, ``{k}``, ``*`` or
        any ``{...}`` for the fold (a file name; folders are common words and not searched)."""
        fold = r"(?:\d+|\*|\{[^}]*\})"
        core = fold.join(re.escape(part) for part in self.name.split("{k}"))
        return rf"(?<![\w.]){core}(?![\w])"


#: Every file and folder a run holds (and the run-like folders `melalib stack` and
#: `melalib evaluate` write): the one description `RunDir`'s paths, `RunDir.owns`,
#: `NOTEBOOK_OUTPUTS`, `REPORT_FILES`, `layout_text` and tests/test_architecture.py's check
#: that no other module spells these names come from.
LAYOUT: dict[str, Entry] = {
    "marker": Entry(MARKER, "melalib's mark on a run it created (JSON: name)"),
    "config": Entry("config.yaml", "resolved config (nested), the one `melalib reproduce` "
                    "reruns"),
    "provenance": Entry("run.json", "fingerprint, seed, preset and sources, versions, git "
                        "commit, table hash"),
    "table": Entry("table", "the stored LesionTable (table.csv with folds + task.json), as "
                   "trained on", folder=True),
    "checkpoints": Entry("checkpoints", "fold{k}_last.pt (resume), fold{k}_best.pt "
                         "(predictions)", folder=True),
    "history": Entry("history_fold{k}.csv", "per-epoch losses, metrics and learning rate"),
    "features": Entry("features_fold{k}.csv", "the metadata features the fold's model used"),
    "shift": Entry("shift_fold{k}.npz", "the fold's image-feature statistics and OOF "
                   "threshold (image shift)"),
    "fold_oof": Entry("oof_fold{k}.csv", "image_id, group_id, fold, label, prob_<class>..."),
    "fold_record": Entry("done_fold{k}.json", "the fold's completion record: OOF rows, hash "
                         "of its ids and of the file"),
    "fold_metrics": Entry("metrics_fold{k}.json", "the fold's OOF metrics and best epoch"),
    "fold_test": Entry("test_fold{k}.csv", "test-split predictions of the fold's model (if a "
                       "test split)"),
    "oof": Entry("oof.csv", "every fold's OOF predictions, once every fold is done"),
    "metrics": Entry("metrics.json", "pooled and per-fold OOF metrics, once every fold is "
                     "done"),
    "bad_images": Entry("bad_images.csv", "unreadable / missing images found by the "
                        "pre-flight check"),
    "skipped_images": Entry("skipped_images.csv", "images left out under "
                            "skip_bad_images=true (else an error)"),
    "missing_images": Entry("missing_images.csv", "rows left out for absent image files "
                            "(missing_images=drop; test rows always)"),
    "unlisted_images": Entry("unlisted_images.csv", "image files beside the listed ones that "
                             "the table does not name"),
    "log": Entry("train.log", "per-epoch log lines (resumes, warnings)"),
    "figures": Entry("figures", "figures of the notebooks and `melalib evaluate`",
                     writer="notebook", folder=True),
    "features_report": Entry("features.json", "notebook 02's feature report",
                             writer="notebook"),
    "ensemble_report": Entry("ensemble.json", "notebook 04's blend report", writer="notebook"),
    "errors_report": Entry("errors.json", "notebook 05's error rates", writer="notebook"),
    "submission": Entry("submission.csv", "notebook 04's submission", writer="notebook"),
    "feature_importance": Entry("feature_importance.csv", "the stacker's permutation "
                                "importance", writer="stack"),
    "ci": Entry("metrics_ci.csv", "metrics with patient-grouped bootstrap CIs",
                writer="report"),
    "confusion": Entry("confusion.csv", "confusion matrix", writer="report"),
    "per_class": Entry("per_class.csv", "per-class metrics", writer="report"),
    "subgroups": Entry("subgroups.csv", "metrics per subgroup", writer="report"),
    "class_mapping": Entry("class_mapping.json", "classes scored, dropped and why",
                           writer="report"),
    "image_shift": Entry("image_shift.json", "error rates of shift-flagged rows",
                         writer="report"),
}
#: What the notebooks write into a run folder next to the engine's files (01 and 02 write
#: theirs before any training: a folder holding only these becomes the run).
NOTEBOOK_OUTPUTS = tuple(e.name for e in LAYOUT.values() if e.writer == "notebook")
#: The report tables of a run-like folder (``melalib evaluate``), by `RunDir.report_path`.
REPORT_FILES = {("shift" if key == "image_shift" else key): e.name
                for key, e in LAYOUT.items() if e.writer == "report"}
#: Names of the files and folders a run (or a run-like folder) holds: what `RunDir.owns`.
RUN_ENTRIES = re.compile("|".join(
    [e.regex for e in LAYOUT.values() if e.writer != "notebook"] + [r"\.melalib-\w+"]))


def layout_text() -> str:
    """The layout as docs/architecture.md shows it: one line per entry."""
    width = max(len(e.name) + e.folder for e in LAYOUT.values())
    return "\n".join(f"{e.name + '/' * e.folder:<{width}}  {e.about}" for e in LAYOUT.values())


T = TypeVar("T")


def run_path(cfg: RunConfig) -> Path:
    """``<output_dir>/<name>``, checked: inside ``output_dir`` and not a symbolic link."""
    out = Path(cfg.output_dir)
    path = out / cfg.name  # the name is one path component (RunConfig.validate)
    if path.is_symlink():
        raise RunExistsError(
            f"run folder {path} is a symbolic link (to {os.readlink(path)}); melalib does not "
            "write through links: set output_dir to the folder that really holds the runs")
    if out.exists() and path.resolve().parent != out.resolve():
        raise RunExistsError(f"run folder {path} resolves outside output_dir {out}; pick "
                             "another run name")
    return path


class RunLock:
    """An advisory lock (``fcntl.flock``) on run ``<output_dir>/<name>``, held while one
    process trains it; a second process gets `RunLockedError` naming the holder's PID.

    The lock file is ``<output_dir>/.<name>.lock`` (beside the run folder, so it outlives
    a replacement of the folder); the kernel releases the lock when the holder exits, even
    on SIGKILL. The holder deletes the file when it leaves (a refused or failed command
    leaves no lock file behind), and ``output_dir`` too when the lock created it and it is
    still empty; a process that locked a file deleted meanwhile takes the lock again on the
    new file. Where ``fcntl`` does not exist (Windows) no lock is taken.
    """

    def __init__(self, cfg: RunConfig) -> None:
        path = run_path(cfg)
        self.run = path
        self.path = path.with_name(f".{cfg.name}.lock")
        self._fh: Any = None
        self._made_parent = False

    def __enter__(self) -> RunLock:
        try:
            import fcntl  # POSIX only: imported where the lock is taken
        except ImportError:  # pragma: no cover - Windows
            return self
        self._made_parent = not self.path.parent.exists()
        for _ in range(100):  # another holder may delete the file between open and flock
            fh = self._open()
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                self._tidy_parent()
                raise RunLockedError(
                    f"run {self.run} is being trained by another process (PID {holder}, lock "
                    f"{self.path}); wait for it to finish or stop it, then rerun") from None
            if self._is_current(fh):
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def _open(self) -> Any:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.path, "a+")  # held until __exit__
        except OSError as exc:
            raise write_error(self.path, exc) from exc

    def _is_current(self, fh: Any) -> bool:
        """True when the locked file is still the one at ``self.path`` (not deleted)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
        except OSError:
            return False

    def _tidy_parent(self) -> None:
        if self._made_parent:
            with contextlib.suppress(OSError):  # only when still empty
                self.path.parent.rmdir()

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self.path.unlink(missing_ok=True)  # while held: no one else holds this file
            self._fh.close()  # closing releases the lock
            self._fh = None
            self._tidy_parent()


def _write_marker(path: Path, name: str) -> None:
    write_json(path / MARKER, {"melalib_run": name})


def _marker_name(path: Path) -> str | None:
    """The run name in ``path``'s marker; None for a link, no folder or no readable marker."""
    marker = path / MARKER
    if path.is_symlink() or not path.is_dir() or not marker.is_file():
        return None
    try:
        name = json.loads(marker.read_text()).get("melalib_run")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _owned(path: Path, name: str) -> bool:
    """True when ``path`` is a real folder holding melalib's marker for run ``name``."""
    return _marker_name(path) == name


def _not_owned(path: Path, name: str) -> RunExistsError:
    """Why ``path`` will not be replaced: no marker, or a marker naming another run."""
    other = _marker_name(path)
    if other is not None:
        return RunExistsError(
            f"{path} carries the marker of another run ({MARKER} names {other[:80]!r}, not "
            f"{name[:80]!r}: copied or renamed by hand), so melalib will not replace it; "
            "delete it yourself or pick another run name")
    return RunExistsError(
        f"{path} has no melalib marker ({MARKER}; the run predates it or was copied), so "
        "melalib will not replace it; delete it yourself or pick another run name")


def _check_links(path: Path) -> None:
    """Refuse a run folder whose sub-folders are symbolic links: writes would leave it."""
    for sub in (LAYOUT["checkpoints"].name, LAYOUT["table"].name):
        if (path / sub).is_symlink():
            raise RunExistsError(
                f"{path / sub} is a symbolic link (to {os.readlink(path / sub)}); melalib "
                "does not write through links out of a run folder: replace it by a folder")


def marker_kind(path: Path) -> str | None:
    """What wrote the folder: ``train`` for a training run's marker, the ``kind`` a report
    folder's marker names (``evaluate``), None when there is no readable marker."""
    marker = path / MARKER
    if path.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return str(data.get("kind", "train")) if isinstance(data, dict) else None


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_report_folder(path: str | os.PathLike[str], kind: str, *, overwrite: bool = False,
                        inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Refuse ``path`` as the output of a ``kind`` report (``melalib evaluate``) unless it is
    free: missing or empty, or (with ``overwrite``) a folder melalib's marker names as such
    a report. Never a training run, a folder melalib did not write, a symbolic link, or a
    folder holding (or inside) one of the ``inputs``."""
    path = Path(path)
    for item in inputs:
        if item and _overlaps(path, Path(item)):
            raise RunExistsError(f"{path} overlaps the input {item}; write the {kind} report "
                                 "to another folder (melalib never writes over its inputs)")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise RunExistsError(f"{path} is a symbolic link or a file; pick another folder")
    if path.is_dir() and any(path.iterdir()):
        found = marker_kind(path)
        if found != kind:
            what = "a training run" if found == "train" else "not a melalib report folder"
            raise RunExistsError(f"{path} exists and is {what}; pick another folder (melalib "
                                 "never replaces folders it did not write for this)")
        if not overwrite:
            raise RunExistsError(f"{path} holds an earlier {kind} report; pass --overwrite "
                                 "to replace it, or pick another folder")
    return path


def write_report_folder(path: str | os.PathLike[str], kind: str,
                        write: Callable[[RunDir], None], *, overwrite: bool = False,
                        inputs: Sequence[str | os.PathLike[str]] = ()) -> RunDir:
    """Write a run-like report folder (`check_report_folder` first): ``write`` fills a
    staging folder beside ``path``, which then replaces ``path`` (the old report is deleted
    only after the swap, and only when its marker names it)."""
    path = check_report_folder(path, kind, overwrite=overwrite, inputs=inputs)
    staging = path.with_name(f".{path.name}.new-{os.getpid()}")
    if marker_kind(staging) == kind:  # left by an interrupted earlier write
        shutil.rmtree(staging)
    if staging.exists():
        raise RunExistsError(f"{staging} exists and melalib did not write it; remove it or "
                             "pick another folder")
    staging.mkdir(parents=True)
    write_json(staging / MARKER, {"melalib_run": path.name, "kind": kind})
    try:
        write(RunDir(staging, None))
    except BaseException:
        shutil.rmtree(staging)
        raise
    aside = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.is_dir():
        os.rename(path, aside)
    os.rename(staging, path)
    if marker_kind(aside) == kind:
        shutil.rmtree(aside)
    elif aside.is_dir() and not any(aside.iterdir()):
        aside.rmdir()
    return RunDir(path, None)


def _remove_owned(path: Path, name: str) -> None:
    """Delete ``path`` if melalib's marker for run ``name`` identifies it; else leave it."""
    if _owned(path, name):
        shutil.rmtree(path)


def _recover_swap(path: Path) -> None:
    """Tidy what an interrupted replacement left beside ``path``: the old run is put back if
    the process died between the two renames, leftovers of run ``name`` are deleted."""
    name = path.name
    if not path.parent.is_dir():
        return
    olds = sorted(path.parent.glob(f".{glob.escape(name)}.old-*"))
    if not path.exists() and olds and _owned(olds[-1], name):
        os.rename(olds.pop(), path)
    for leftover in [*olds, *path.parent.glob(f".{glob.escape(name)}.new-*")]:
        _remove_owned(leftover, name)


def _adoptable(path: Path) -> bool:
    """True for a missing or empty folder, or one holding only `NOTEBOOK_OUTPUTS`."""
    if not path.is_dir():
        return not path.exists()
    return all(entry.name in NOTEBOOK_OUTPUTS for entry in path.iterdir())


def _fold_numbers(path: Path, key: str) -> list[int]:
    """The folds ``k`` of the files of `LAYOUT` entry ``key`` in ``path``, ascending."""
    name = LAYOUT[key].name
    pattern = re.compile(r"(\d+)".join(re.escape(part) for part in name.split("{k}")))
    found = (pattern.fullmatch(p.name) for p in path.glob(glob.escape(name).replace(
        "{k}", "*")))
    return sorted(int(m.group(1)) for m in found if m)


@dataclass
class RunDir:
    """One run's folder; `start` decides between a fresh start, a resume and a refusal,
    `read` opens an existing one read-only. ``cfg`` is None for a run-like folder without
    a training config (``melalib stack``'s output)."""

    path: Path
    cfg: RunConfig | None
    _info: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    _task: Task | None = field(default=None, repr=False, compare=False)

    # ---------------------------------------------------------------- reading
    @classmethod
    def read(cls, path: str | os.PathLike[str], config: RunConfig | None = None) -> RunDir:
        """A read-only view of an existing run folder, with the config it stores (``config``:
        the caller's, already parsed, used as it is when the folder stores exactly it).

        What counts as a melalib run is decided here: a folder with ``config.yaml`` (a
        training run), or a run-like folder with ``table/task.json`` and ``oof.csv`` (what
        ``melalib stack`` writes). Anything else raises ConfigError naming what is missing.
        """
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path} is not a melalib run: no such folder")
        view = cls(path, None)
        if view.file("config").is_file():
            view.cfg = view.load_config(known=config)
        elif not (view.table_dir().joinpath(TASK_FILE).is_file() and view.oof_path().is_file()):
            raise ConfigError(
                f"{path} is not a melalib run: no config.yaml (a training run) and no "
                "table/task.json + oof.csv (a run-like folder such as melalib stack writes)")
        return view

    @property
    def task(self) -> Task:
        """The task of the stored table (``table/task.json``), read once per view."""
        if self._task is None:
            self._task = Task.from_dict(
                json.loads((self._stored_table() / TASK_FILE).read_text()))
        return self._task

    def _stored_table(self) -> Path:
        folder = self.table_dir()
        if not (folder / TASK_FILE).is_file():
            raise ConfigError(f"{self.path} has no stored table (no table/task.json): the "
                              "run never finished starting; train it first")
        return folder

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, cfg: RunConfig, *, write: bool = True) -> RunDir:
        """Create ``cfg.run_dir``, or resume it when it holds the same config (see `start`)."""
        if not write:
            return cls(run_path(cfg), cfg)
        return cls.start(cfg, lambda run: None)[0]

    @classmethod
    def start(cls, cfg: RunConfig, build: Callable[[RunDir], T]) -> tuple[RunDir, T]:
        """Open the run folder for writing and call ``build(run)`` (load and check the data).

        - no folder, or one holding only `NOTEBOOK_OUTPUTS` (what notebooks 01 and 02 write
          before any training; they are kept): created (with melalib's marker
          ``.melalib-run``), then ``build``; a ``build`` that fails deletes the folder it
          created (kept only for a ``bad_images.csv`` report, which the next command may
          replace): the corrected command starts as if nothing had run;
        - the same config: resumed; a folder whose start failed (``failed_start`` in
          run.json, no table stored: e.g. a pseudo_run that is not there; training loads
          the table before it calls this) with another config: replaced
          as below, so it never blocks the corrected command;
        - another config: refused (RunExistsError naming what changed) unless
          ``cfg.overwrite``; then the new run is built in ``.<name>.new-<pid>`` first, so a
          bad config or data fails with the old run untouched; on success the old folder is
          renamed aside and the new one into place (atomic renames), and only then is the
          old one deleted, and only if melalib's marker identifies it;
        - a folder that is not a melalib run, or a symbolic link: refused, never deleted.
        """
        path = run_path(cfg)
        run = cls(path, cfg)
        if path.exists() and not path.is_dir():
            raise RunExistsError(f"{path} exists and is a file, not a run folder; pick another "
                                 "run name or output_dir")
        _recover_swap(path)
        _check_links(path)
        info = run.info() if path.is_dir() else None
        if info is None and not _adoptable(path):
            raise RunExistsError(
                f"{path} exists and is not a melalib run (no run.json, and it holds more than "
                f"the notebooks' outputs {NOTEBOOK_OUTPUTS}); choose another run name or "
                "output_dir: melalib never deletes folders it did not write")
        if info is not None and (cfg.overwrite or not run._same_config(info)):
            if not _owned(path, cfg.name):
                raise _not_owned(path, cfg.name)
            return cls._replace(cfg, build)
        created = not path.exists()
        if info is None:
            run._create()
        else:
            if info.get("fingerprint") != cfg.fingerprint():
                run.update_info(fingerprint=cfg.fingerprint())  # fields added since
            if not (path / MARKER).is_file():
                _write_marker(path, cfg.name)  # a legacy run resumed with its own config
            write_yaml(run.file("config"), cfg.to_dict())
        return run, run._build(build, created)

    def _build(self, build: Callable[[RunDir], T], created: bool = False) -> T:
        """``build(self)``. When it fails, a folder this call ``created`` is deleted again
        (a refused command leaves nothing behind) unless it holds the pre-flight's report
        ``bad_images.csv``; a failure before the table is stored is recorded in run.json
        (``failed_start``), so the corrected command may replace the folder."""
        try:
            result = build(self)
        except BaseException as exc:
            if created and not self.file("bad_images").exists():
                _remove_owned(self.path, self.cfg.name)
            elif "table_hash" not in (self.info() or {}):
                self.update_info(failed_start=f"{type(exc).__name__}: {exc}"[:500])
            raise
        info = self.info() or {}
        if "failed_start" in info:
            info.pop("failed_start")
            self._write_info(info)
        return result

    def _same_config(self, info: dict[str, Any]) -> bool:
        """True when the folder's config matches; another config is refused here unless
        ``overwrite`` or the folder's start failed (then it is replaced)."""
        old = self.load_config(known=self.cfg)
        diff = (old.result_diff(self.cfg) if old is not None
                else {} if info.get("fingerprint") == self.cfg.fingerprint()
                else {"config.yaml": ("missing", "")})
        replaceable = "table_hash" not in info and info.get("failed_start")
        if diff and not replaceable and not self.cfg.overwrite:
            changed = {k: v[::-1] for k, v in diff.items()}  # (now, before)
            raise RunExistsError(
                f"{self.path} holds a run with another config (changed, now vs before: "
                f"{changed}); resume it with the same config, pick a new run name, or "
                "pass overwrite=True / --overwrite to replace it")
        return not diff

    @classmethod
    def _replace(cls, cfg: RunConfig, build: Callable[[RunDir], T]) -> tuple[RunDir, T]:
        """Build the new run beside the old one, then swap them (see `start`)."""
        path = run_path(cfg)
        staging = cls(path.with_name(f".{cfg.name}.new-{os.getpid()}"), cfg)
        _remove_owned(staging.path, cfg.name)
        staging._create()
        try:
            result = build(staging)  # a failure leaves the old run as it was
        except BaseException:
            if not staging.file("bad_images").exists():  # else kept for its report
                _remove_owned(staging.path, cfg.name)
            raise
        aside = path.with_name(f".{cfg.name}.old-{os.getpid()}")
        _remove_owned(aside, cfg.name)
        os.rename(path, aside)
        try:
            os.rename(staging.path, path)
        except OSError as exc:
            os.rename(aside, path)  # the old run back in place
            raise write_error(path, exc) from exc
        staging.path = path
        _remove_owned(aside, cfg.name)
        return staging, result

    def _create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.file("checkpoints").mkdir(exist_ok=True)
        _write_marker(self.path, self.cfg.name)
        if self.info() is None:
            self._write_provenance()
        write_yaml(self.file("config"), self.cfg.to_dict())

    def _write_provenance(self) -> None:
        self._info = None
        write_provenance(self.path, fingerprint=self.cfg.fingerprint(), seed=self.cfg.train.seed,
                         fold_seed=self.cfg.data.fold_seed, preset=self.cfg.preset,
                         sources=dict(self.cfg.sources))

    def info(self) -> dict[str, Any] | None:
        """The run's provenance (``run.json``; None when there is none), read once per view:
        later calls return a copy of what this view read or wrote."""
        if self._info is None:
            p = self.file("provenance")
            if not p.is_file():
                return None
            self._info = json.loads(p.read_text())
        return dict(self._info)

    def update_info(self, **items: Any) -> None:
        info = self.info() or {}
        info.update(items)
        self._write_info(info)

    def _write_info(self, info: dict[str, Any]) -> None:
        write_json(self.file("provenance"), info)
        self._info = dict(info)

    def load_config(self, known: RunConfig | None = None) -> RunConfig | None:
        """The config stored in ``config.yaml`` (None when there is none); ``known`` itself
        when the file stores exactly it (a resumed run's config is not parsed twice)."""
        p = self.file("config")
        if not p.is_file():
            return None
        try:
            stored = load_yaml(p.read_text())
            if known is not None and stored == known.to_dict():
                return known
            return RunConfig.from_dict(stored)
        except (OSError, yaml.YAMLError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise ConfigError(f"{p}: cannot read the run's config: {reason}") from exc

    # ------------------------------------------------------------------ paths
    def owns(self, path: str | os.PathLike[str]) -> bool:
        """True when ``path`` is (or lies in) one of this run's own files or folders, or a
        notebook output (`NOTEBOOK_OUTPUTS`): what a command reading the run must never
        write over. Other new files inside the run folder are not its own."""
        try:
            rel = Path(path).resolve().relative_to(self.path.resolve())
        except ValueError:
            return False
        top = rel.parts[0] if rel.parts else ""
        return not top or top in NOTEBOOK_OUTPUTS or RUN_ENTRIES.fullmatch(top) is not None

    def file(self, key: str, fold: int | None = None) -> Path:
        """The path of `LAYOUT` entry ``key`` in this run (``fold`` for a per-fold file)."""
        return LAYOUT[key].path(self.path, fold)

    def checkpoint(self, fold: int, kind: str = "last") -> Path:
        return self.file("checkpoints") / f"fold{fold}_{kind}.pt"

    def figures_dir(self) -> Path:
        """Where figures of the run (notebooks, ``melalib evaluate``) go."""
        return self.file("figures")

    def report_path(self, name: str) -> Path:
        """A report table of a run-like folder (`REPORT_FILES`: ``ci``, ``confusion``,
        ``per_class``, ``subgroups``, ``class_mapping``, ``shift``)."""
        if name not in REPORT_FILES:
            raise ConfigError(f"unknown report {name!r}; known: {sorted(REPORT_FILES)}")
        return self.path / REPORT_FILES[name]

    def shift_path(self, fold: int) -> Path:
        """Fold ``fold``'s image-shift statistics (`melalib.shift`), written at training."""
        return self.file("shift", fold)

    def history_path(self, fold: int) -> Path:
        return self.file("history", fold)

    def features_path(self, fold: int) -> Path:
        """The metadata features fold ``fold``'s model used (`MetaEncoder.describe`)."""
        return self.file("features", fold)

    def oof_path(self, fold: int | None = None) -> Path:
        """``oof_fold{k}.csv``, or with no fold the pooled ``oof.csv``."""
        return self.file("oof") if fold is None else self.file("fold_oof", fold)

    def test_path(self, fold: int) -> Path:
        return self.file("fold_test", fold)

    def metrics_path(self, fold: int | None = None) -> Path:
        """``metrics_fold{k}.json`` (a fold's scores, best epoch), or with no fold the run's
        ``metrics.json``."""
        return self.file("metrics") if fold is None else self.file("fold_metrics", fold)

    def fold_record_path(self, fold: int) -> Path:
        """``done_fold{k}.json``: the fold's completion record (`record_fold`)."""
        return self.file("fold_record", fold)

    def record_fold(self, fold: int) -> None:
        """Write fold ``fold``'s completion record: its OOF file's row count, the hash of
        its image ids and of the file itself (written after the OOF file)."""
        write_json(self.fold_record_path(fold), _oof_stamp(self.oof_path(fold)))

    def fold_record(self, fold: int) -> dict[str, Any] | None:
        """The fold's completion record; None when absent or unreadable (a run written
        before records existed, or a crash between the OOF file and its record)."""
        try:
            return json.loads(self.fold_record_path(fold).read_text())
        except (OSError, ValueError):
            return None

    def fold_done(self, fold: int) -> bool:
        """The fold's OOF file exists and matches its completion record (a file truncated
        or edited since is not done); without a record, the file alone counts (older runs;
        training checks those against the table: `check_fold`)."""
        if not self.oof_path(fold).is_file():
            return False
        record = self.fold_record(fold)
        return record is None or record.get("sha256") == _file_hash(self.oof_path(fold))

    def check_fold(self, fold: int, ids: Sequence[str], record: bool = True) -> bool:
        """True when fold ``fold`` is done (`fold_done`) and its OOF file holds exactly the
        validation image ``ids`` of the fold (as many rows, the same ids); a fold done
        without a record then gets one (when ``record``: the writing process)."""
        if not self.fold_done(fold):
            return False
        try:
            stamp = _oof_stamp(self.oof_path(fold))
        except (OSError, ValueError, KeyError, pd.errors.ParserError):
            return False
        if stamp["n_rows"] != len(ids) or stamp["ids_sha256"] != _ids_hash(ids):
            return False
        if record and self.fold_record(fold) is None:
            write_json(self.fold_record_path(fold), stamp)
        return True

    @property
    def complete(self) -> bool:
        """Every fold is done: the pooled ``oof.csv`` is written."""
        return self.oof_path().is_file()

    def done_folds(self) -> list[int]:
        """Folds whose OOF predictions are written (of ``n_folds``; for a folder without a
        config, every ``oof_fold{k}.csv`` found)."""
        if self.cfg is None:
            return _fold_numbers(self.path, "fold_oof")
        return [k for k in range(self.cfg.data.n_folds) if self.fold_done(k)]

    # ------------------------------------------------------------------ table
    def table_dir(self) -> Path:
        return self.file("table")

    def save_table(self, table: LesionTable) -> str:
        """Store the table trained on; a resumed run must see the same content."""
        digest = table.content_hash()
        old = (self.info() or {}).get("table_hash")
        if old is not None and old != digest:
            raise DataError(
                f"the data changed since run {self.path} started (table hash {old[:12]} -> "
                f"{digest[:12]}); start a new run (another name) or pass --overwrite",
                file=self.table_dir() / TABLE_FILE)
        if old is None:
            table.save(self.table_dir())
            self.update_info(table_hash=digest, table_root=os.getcwd(), n_rows=len(table),
                             n_train=int((table.df["split"] == "train").sum()))
        return digest

    def write_preflight(self, report: Preflight) -> None:
        """Store what building the table found (`melalib.data.build.Preflight`): the rows
        left out for absent images, unlisted image files, unreadable and skipped images, and
        their counts in ``run.json``."""
        counts: dict[str, int] = {}
        if report.missing is not None:
            counts.update(n_missing_image_rows=report.n_missing_train,
                          n_missing_image_test_rows=len(report.missing) - report.n_missing_train)
            if len(report.missing):
                write_csv(self.file("missing_images"), report.missing)
        if report.unlisted is not None:
            counts["n_unlisted_images"] = len(report.unlisted)
            if report.unlisted:
                write_csv(self.file("unlisted_images"), pd.DataFrame({"path": report.unlisted}))
        if report.bad is not None and len(report.bad):
            write_csv(self.file("bad_images"), report.bad)
        if report.skipped is not None:
            write_csv(self.file("skipped_images"), report.skipped)
            counts["n_skipped_images"] = len(report.skipped)
        elif report.bad is not None and not len(report.bad):
            counts["n_skipped_images"] = 0
        if counts:
            self.update_info(**counts)

    def table(self) -> LesionTable:
        """The table the run trained on (folds, metadata, hidden test labels), its relative
        image paths resolved against the folder they were relative to (`table_root`), so
        the table works from any working directory. Its task is the view's (`task`: the
        stored ``task.json`` is read once per view)."""
        table = LesionTable.load(self._stored_table(), task=self.task)
        root = self.table_root(table.df)
        if root is not None:
            for column in ("image_path", "image_path_2"):
                if column in table.df.columns:
                    table.df[column] = [p if os.path.isabs(p) else
                                        os.path.normpath(os.path.join(root, p))
                                        for p in table.df[column].astype(str)]
        return table

    def table_root(self, df: pd.DataFrame | None = None) -> str | None:
        """The working directory the stored table's relative image paths start from:
        recorded in ``run.json`` since issue 25; for an older run, the folder that holds
        ``output_dir`` (a relative ``output_dir`` without ``..``) where the table's first
        relative image is found there, else None (paths stay relative to the caller's)."""
        recorded = (self.info() or {}).get("table_root")
        if recorded:
            return str(recorded)
        out = Path(self.cfg.output_dir) if self.cfg is not None else None
        if out is None or out.is_absolute() or ".." in out.parts or df is None:
            return None
        root = self.path.resolve().parents[len(out.parts)]
        relative = [p for p in df.get("image_path", pd.Series(dtype=str)).astype(str)
                    if not os.path.isabs(p)]
        return str(root) if relative and (root / relative[0]).is_file() else None

    # ------------------------------------------------------------ predictions
    def oof(self, fold: int | None = None) -> pd.DataFrame:
        """Out-of-fold predictions: fold ``fold``'s, or pooled: ``oof.csv`` once every fold
        is done (rows sorted by image_id), else the finished folds' files (`oof_by_fold`)."""
        if fold is not None:
            if not self.fold_done(fold):
                raise ConfigError(f"{self.path}: fold {fold} has not finished (no "
                                  f"oof_fold{fold}.csv)")
            return read_predictions(self.oof_path(fold))
        if self.oof_path().is_file():
            return read_predictions(self.oof_path())
        return self.oof_by_fold()

    def oof_by_fold(self) -> pd.DataFrame:
        """The finished folds' ``oof_fold{k}.csv`` concatenated in fold order, as training
        wrote them (what `oof.csv` pools)."""
        frames = [read_predictions(self.oof_path(k)) for k in self.done_folds()]
        if not frames:
            raise ConfigError(f"{self.path}: no fold has finished (no oof_fold*.csv); train "
                              "at least one fold first")
        return pd.concat(frames, ignore_index=True)

    def test_mean(self) -> pd.DataFrame | None:
        """The finished folds' test predictions averaged per image (`fold_average`; a
        folder without a config: every ``test_fold{k}.csv``); None when the run has none
        (its dataset has no test split)."""
        folds = self.done_folds() if self.cfg is not None else _fold_numbers(self.path, "fold_test")
        paths = [self.test_path(k) for k in folds]
        frames = [read_predictions(p) for p in paths if p.is_file()]
        return fold_average(frames, self.task) if frames else None

    def history(self) -> pd.DataFrame:
        """Every fold's per-epoch history (``history_fold{k}.csv``), in fold order."""
        folds = _fold_numbers(self.path, "history")
        if not folds:
            raise ConfigError(f"{self.path}: no history_fold*.csv; train a fold first")
        return pd.concat([pd.read_csv(self.history_path(k)) for k in folds],
                         ignore_index=True)

    def metrics(self, fold: int | None = None) -> dict[str, Any]:
        """The run's ``metrics.json`` or fold ``fold``'s ``metrics_fold{k}.json``; {} when
        not written yet."""
        return self.report("metrics") if fold is None else self.report("fold_metrics", fold)

    def report(self, key: str, fold: int | None = None) -> dict[str, Any]:
        """A JSON file of the run by its `LAYOUT` key (``metrics``, ``fold_metrics`` or a
        notebook's ``features_report`` / ``ensemble_report`` / ``errors_report``); {} when
        absent."""
        path = self.file(key, fold)
        return json.loads(path.read_text()) if path.is_file() else {}

    def output_path(self, key: str) -> Path:
        """Where a notebook output of `LAYOUT` goes (``figures``, ``features_report``,
        ``ensemble_report``, ``errors_report``, ``submission``)."""
        if LAYOUT[key].writer != "notebook":
            raise ConfigError(f"{key!r} is not a notebook output; known: "
                              f"{[k for k, e in LAYOUT.items() if e.writer == 'notebook']}")
        return self.file(key)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def _oof_stamp(path: Path) -> dict[str, Any]:
    """Row count, id hash and file hash of an OOF file (a fold's completion record)."""
    ids = read_predictions(path)["image_id"].tolist()
    return {"n_rows": len(ids), "ids_sha256": _ids_hash(ids), "sha256": _file_hash(path)}


def shared_task(runs: Sequence[RunDir]) -> Task:
    """The task every run predicts; ConfigError naming the first run that differs."""
    if not runs:
        raise ConfigError("no run folders given")
    task = runs[0].task
    for run in runs[1:]:
        other = run.task
        if other != task:
            raise ConfigError(f"run {run.path} predicts task {other.name!r} "
                              f"{list(other.classes)} but {runs[0].path} predicts "
                              f"{task.name!r} {list(task.classes)}")
    return task
