"""Prediction with test-time augmentation for a checkpoint, a list of them, or a run folder.

`load_predictor(source)` rebuilds each model from its checkpoint (the stored ``config``,
``task`` and ``n_meta``; EMA weights when the checkpoint holds them) and the metadata encoder
fitted on that fold's training rows (``meta_encoder``), so new rows are encoded with the
training statistics. A run folder gives one model per finished fold
(``checkpoints/fold{k}_best.pt``); their probabilities are averaged (fold averaging).
A checkpoint that cannot be read, lacks a key or does not fit its own model raises
`CheckpointError`.

`Predictor.predict(df)` works on a canonical table; `Predictor.predict_folder(image_dir,
metadata_csv)` builds one from a folder of images and an optional metadata CSV.
``melalib predict`` is `melalib.cli.predict`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .adapt import adapt_batchnorm
from .checkpoints import Preprocessing, load_model
from .config import RunConfig
from .data.csvread import read_csv, require_ids
from .data.images import IMAGE_EXTENSIONS
from .device import resolve_device, resolve_precision
from .errors import CheckpointError, ConfigError, DataError, MelalibError
from .predictions import output_frame
from .runs import LAYOUT, RunDir
from .runtime import make_dataset, make_loader, predict_probs
from .shift import FLAG, FLAG_QUANTILE, SCORE, ShiftStats, image_features
from .shift import summary as shift_summary
from .table import SEX_MAP, SITE_MAP, LesionTable, normalize_ages, normalize_values
from .tasks import Task

log = logging.getLogger("melalib")

# Column names accepted for the canonical metadata in a user's CSV (first match wins).
ALIASES = {
    "age": ("age", "age_approx"),
    "sex": ("sex", "gender"),
    "site": ("site", "anatom_site_general_challenge", "anatom_site_general", "localization"),
}

Source = str | os.PathLike[str]


# ------------------------------------------------------------------------------ one member
@dataclass
class Member:
    """One model of a predictor: network, metadata encoder and where it came from."""

    model: nn.Module
    encoder: Any  # melalib.features.MetaEncoder
    cfg: RunConfig
    path: Path
    fold: int | None = None
    shift: ShiftStats | None = None  # the fold's image-feature statistics (`melalib.shift`)
    #: how the model's inputs are made, from its checkpoint (`checkpoints.Preprocessing`)
    preprocessing: Preprocessing | None = None
    #: the model ``shift`` was measured with, where ``model`` is an adapted copy of it
    #: (`melalib.adapt`); None: ``model`` itself
    shift_model: nn.Module | None = None

    @property
    def feature_model(self) -> nn.Module:
        """The model whose image features the shift statistics describe."""
        return self.model if self.shift_model is None else self.shift_model


def load_member(path: Source, device: torch.device, *, config: RunConfig | None = None
                ) -> tuple[Member, Task]:
    """Rebuild the model and encoder of one checkpoint (`checkpoints.load_model`);
    CheckpointError if it does not fit."""
    loaded = load_model(path, device, config=config)
    return (Member(loaded.model, loaded.encoder, loaded.cfg, Path(path), loaded.fold,
                   preprocessing=loaded.preprocessing), loaded.task)


# ------------------------------------------------------------------------------ predictor
@dataclass
class Predictor:
    """One or several models of the same task; predictions are their mean probabilities."""

    members: list[Member]
    task: Task
    device: torch.device
    run: RunDir | None = None
    sources: list[Path] = field(default_factory=list)
    #: per-feature drift of the last `predict` call's metadata (`MetaEncoder.drift`)
    last_drift: pd.DataFrame | None = None
    #: the last `predict` call's image-shift line (`shift.summary`); None without statistics
    last_shift: str | None = None

    @property
    def scores_shift(self) -> bool:
        """Every member has stored image-shift statistics (runs trained before: no score)."""
        return all(m.shift is not None for m in self.members)

    @property
    def cfg(self) -> RunConfig:
        return self.members[0].cfg

    @property
    def model(self) -> nn.Module:
        """The first (or only) model."""
        return self.members[0].model

    @property
    def encoder(self) -> Any:
        return self.members[0].encoder

    @property
    def tta(self) -> int:
        """TTA views used by default: the training config's ``tta``."""
        return self.cfg.train.tta

    def __len__(self) -> int:
        return len(self.members)

    # ------------------------------------------------------------------ prediction
    def required_columns(self) -> list[str]:
        model = self.cfg.model
        columns = ["image_id"]
        if model.use_image:
            columns.append("image_path")
            if model.dual_image:
                columns.append("image_path_2")
        return columns

    def predict(self, df_or_table: pd.DataFrame | LesionTable, tta: int | None = None,
                batch_size: int = 64, progress: bool = True, num_workers: int | None = None
                ) -> pd.DataFrame:
        """``image_id`` + ``task.prob_columns`` for every row, in the input order.

        Each member encodes the metadata with its own fold's encoder; the members'
        TTA-averaged probabilities are averaged.
        """
        df = (df_or_table.df if isinstance(df_or_table, LesionTable) else df_or_table)
        df = df.reset_index(drop=True)
        origin = df_or_table.origin if isinstance(df_or_table, LesionTable) else None
        for column in self.required_columns():
            if column not in df.columns:
                raise DataError(f"the frame to predict has no {column!r} column "
                                f"(needed by this {self._describe()} model)", file=origin,
                                column=column)
        if df["image_id"].duplicated().any():
            pos = int(np.flatnonzero(df["image_id"].duplicated().to_numpy())[0])
            raise DataError(f"duplicate image_id {df['image_id'].iloc[pos]!r}", file=origin,
                            row=pos + 1, column="image_id")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        tta = self.tta if tta is None else int(tta)
        table = LesionTable(df, self.task, origin=origin or "")
        self.last_drift = self.members[0].encoder.drift(df)
        for line in drift_warnings(self.last_drift):
            log.warning("%s", line)
        total = np.zeros((len(df), self.task.n_outputs), dtype=np.float64)
        shift = np.zeros(len(df), dtype=np.float64)
        for i, member in enumerate(self.members):
            if len(df) == 0:
                break
            loader = self._loader(member, table, df, batch_size, num_workers)
            probs, index, _ = predict_probs(
                member.model, loader, self.task, self.device,
                precision=resolve_precision(member.cfg, self.device), tta=tta,
                channels_last=member.cfg.train.channels_last, progress=progress,
                desc=f"predict model {i + 1}/{len(self.members)}")
            ordered = np.empty_like(probs)
            ordered[index] = probs
            total += ordered
            if self.scores_shift:
                shift += member.shift.score(image_features(
                    member.feature_model, loader, self.device, member.cfg.train.channels_last,
                    member.shift.layer))
        out = output_frame(df["image_id"].to_numpy(), self.task, total / len(self.members))
        self.last_shift = None
        if self.scores_shift and len(df):
            out[SCORE] = shift / len(self.members)
            out[FLAG] = out[SCORE] > 1.0
            self.last_shift = shift_summary(out[SCORE].to_numpy())
            alarming = out[FLAG].mean() > 2 * (1 - FLAG_QUANTILE)  # well above in-domain
            log.log(logging.WARNING if alarming else logging.INFO, "%s", self.last_shift)
        return out

    def adapted(self, df_or_table: pd.DataFrame | LesionTable, batch_size: int = 64,
                progress: bool = True, num_workers: int | None = None) -> Predictor:
        """This predictor with every member's image batch-norm statistics re-estimated on the
        images of ``df_or_table`` (`adapt.adapt_batchnorm`; no label is read); the members'
        image-shift statistics keep scoring against their original models."""
        df = (df_or_table.df if isinstance(df_or_table, LesionTable) else df_or_table)
        df = df.reset_index(drop=True)
        table = LesionTable(df, self.task, origin=getattr(df_or_table, "origin", "") or "")
        members = []
        for i, member in enumerate(self.members):
            loader = self._loader(member, table, df, batch_size, num_workers)
            model = adapt_batchnorm(member.model, loader, self.device,
                                    member.cfg.train.channels_last, progress,
                                    desc=f"adapt model {i + 1}/{len(self.members)}")
            members.append(replace(member, model=model, shift_model=member.feature_model))
        return replace(self, members=members, last_drift=None, last_shift=None)

    def _loader(self, member: Member, table: LesionTable, df: pd.DataFrame, batch_size: int,
                num_workers: int | None) -> Any:
        """The evaluation loader of ``df`` as ``member`` reads it (its encoder, transforms and
        preprocessing)."""
        meta = member.encoder.transform(df)
        dataset = make_dataset(member.cfg, table, df, meta, train=False, labelled=False,
                               preprocessing=member.preprocessing)
        workers = member.cfg.data.num_workers if num_workers is None else num_workers
        return make_loader(dataset, batch_size, shuffle=False, seed=0, num_workers=workers)

    def predict_folder(self, image_dir: Source | None, metadata_csv: Source | None = None,
                       image_column: str = "image", image2_column: str = "image2",
                       tta: int | None = None, batch_size: int = 64, progress: bool = True
                       ) -> pd.DataFrame:
        """Predict a folder of images, with metadata from ``metadata_csv`` when given.

        Without a CSV every image of ``image_dir`` (jpg / jpeg / png, not recursive) is
        predicted with unknown metadata. Metadata columns the encoders were fitted on but
        the CSV lacks are imputed with the training statistics; their names are logged and
        listed in ``result.attrs["imputed_columns"]``.
        """
        df = self.folder_frame(image_dir, metadata_csv, image_column, image2_column)
        imputed = df.attrs.get("imputed_columns", [])
        out = self.predict(LesionTable(df, self.task, origin=str(metadata_csv or image_dir)),
                           tta=tta, batch_size=batch_size, progress=progress)
        out.attrs["imputed_columns"] = list(imputed)
        return out

    def folder_frame(self, image_dir: Source | None, metadata_csv: Source | None = None,
                     image_column: str = "image", image2_column: str = "image2"
                     ) -> pd.DataFrame:
        """The canonical, unlabelled frame (split test, label -1) `predict_folder` predicts."""
        dual = self.cfg.model.use_image and self.cfg.model.dual_image
        if metadata_csv is None:
            if image_dir is None:
                raise ConfigError("give a folder of images, a metadata CSV, or both")
            if dual:
                raise ConfigError("this model takes two images per lesion: give a metadata CSV "
                                  "naming both (image column and image2_column)")
            df = _folder_images(Path(image_dir))
        else:
            df = _csv_frame(Path(metadata_csv), None if image_dir is None else Path(image_dir),
                            image_column, image2_column if dual else None)
        df["image_bytes"] = _file_sizes(df["image_path"])
        if "image_path_2" in df.columns:
            df["image_bytes_2"] = _file_sizes(df["image_path_2"])
        self.impute_absent(df, str(metadata_csv or image_dir))
        return df

    def impute_absent(self, df: pd.DataFrame, where: str) -> list[str]:
        """Add the metadata columns the encoders were fitted on but ``df`` lacks (NaN: imputed
        with the training statistics), log them once and list them in
        ``df.attrs["imputed_columns"]``."""
        imputed = sorted({c for m in self.members for c in m.encoder.columns
                          if not c.startswith("@") and c not in df.columns})
        for column in imputed:
            df[column] = np.nan
        if imputed:
            log.warning("%s: metadata column(s) %s used in training are absent; imputed with the "
                        "training statistics for all %d rows", where, imputed, len(df))
        df.attrs["imputed_columns"] = imputed
        return imputed

    def _describe(self) -> str:
        m = self.cfg.model
        if not m.use_image:
            return "metadata-only"
        kind = "dual-image" if m.dual_image else "image"
        return f"{kind}{' + metadata' if m.use_meta else ''}"


def load_predictor(source: Source | Sequence[Source], device: str = "auto") -> Predictor:
    """A predictor from a checkpoint file, a list of checkpoints, or a run folder.

    A run folder contributes the best checkpoint of every finished fold (fold averaging);
    each must come from the run's config (compared field by field). Several checkpoints must share a task.
    """
    dev = resolve_device(device)
    run: RunDir | None = None
    run_cfg: RunConfig | None = None
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        run = _trained_run(Path(source))
        folds = run.done_folds()
        if not folds:
            raise CheckpointError(f"run {run.path} has no finished fold (no "
                                  f"{LAYOUT['fold_oof'].glob}); "
                                  "train it first or pass a checkpoint file")
        paths = [run.checkpoint(k, "best") for k in folds]
        run_cfg = run.cfg
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        paths = [path]
        run = _run_of_checkpoint(path)
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise CheckpointError("no checkpoint given")
    members: list[Member] = []
    task: Task | None = None
    for path in paths:
        member, member_task = load_member(path, dev, config=run_cfg)
        if task is not None and member_task != task:
            raise CheckpointError(f"checkpoint {path} predicts task {member_task.name!r} "
                                  f"{list(member_task.classes)}, but {paths[0]} predicts "
                                  f"{task.name!r} {list(task.classes)}: they cannot be averaged")
        task = member_task
        if members and _input_kind(member.cfg) != _input_kind(members[0].cfg):
            raise CheckpointError(f"checkpoint {path} takes other inputs "
                                  f"({_input_kind(member.cfg)}) than {paths[0]} "
                                  f"({_input_kind(members[0].cfg)})")
        members.append(member)
    assert task is not None
    _load_shift(members, run)
    return Predictor(members, task, dev, run=run, sources=paths)


def _load_shift(members: list[Member], run: RunDir | None) -> None:
    """Each member's stored image-shift statistics; said once when some are absent."""
    if not members[0].cfg.model.use_image:
        return
    for member in members:
        path = run.shift_path(member.fold) if run is not None and member.fold is not None \
            else None
        member.shift = ShiftStats.load(path) if path is not None and path.is_file() else None
    if any(m.shift is None for m in members):
        log.warning("no image-shift statistics stored with %s (trained before melalib stored "
                    "them, or a checkpoint outside its run): predictions get no %s score",
                    run.path if run is not None else members[0].path, SCORE)


def _input_kind(cfg: RunConfig) -> tuple[bool, bool, int]:
    return cfg.model.use_image, cfg.model.dual_image, cfg.data.image_size


def _trained_run(path: Path) -> RunDir:
    """`RunDir.read` of a folder that holds trained models (CheckpointError otherwise)."""
    try:
        run = RunDir.read(path)
    except ConfigError as exc:
        raise CheckpointError(f"{exc}; pass a run folder or a checkpoint file") from exc
    if run.cfg is None:
        raise CheckpointError(f"{path} holds predictions but no models (no "
                              f"{run.file('config').name}: a "
                              "melalib stack folder?); pass a training run or a checkpoint")
    return run


def _run_of_checkpoint(path: Path) -> RunDir | None:
    """The training run holding ``<run>/checkpoints/<file>.pt``, if it is one."""
    parent = path.resolve().parent
    if parent.name != "checkpoints":
        return None
    try:
        return _trained_run(parent.parent)
    except MelalibError:
        return None


# ------------------------------------------------------------------------ folder reading
def _folder_images(folder: Path) -> pd.DataFrame:
    if not folder.is_dir():
        raise DataError("image folder does not exist", file=folder)
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder", file=folder)
    stems = pd.Series([p.stem for p in files])
    dup = stems.duplicated(keep=False)
    if dup.any():
        names = [p.name for p, d in zip(files, dup, strict=True) if d]
        raise DataError(f"several images share a name: {names[:4]}; image ids must be unique",
                        file=folder)
    n = len(files)
    return _unlabelled(ids=stems.tolist(), paths=[str(p) for p in files],
                       age=np.full(n, np.nan), sex=np.full(n, "unknown", dtype=object),
                       site=np.full(n, "unknown", dtype=object),
                       extra=pd.DataFrame(index=range(n)))


def _csv_frame(csv: Path, image_dir: Path | None, image_column: str,
               image2_column: str | None) -> pd.DataFrame:
    """The unlabelled frame of a metadata CSV, read as the training tables are
    (`melalib.data.csvread.read_csv`: its NA rule, and errors naming file, row and column);
    image names resolved against ``image_dir`` (default: the CSV's folder)."""
    wanted = [image_column] + ([image2_column] if image2_column else [])
    try:
        raw = read_csv(csv, wanted)
    except OSError as exc:  # e.g. no permission to read it
        raise DataError(f"cannot read the CSV: {exc}", file=csv) from exc
    if raw.empty:
        raise DataError("the CSV has no rows", file=csv)
    folder = image_dir or csv.parent
    names = require_ids(raw, image_column, csv)
    paths = [_resolve_image(folder, name) for name in names]
    meta: dict[str, Any] = {}
    used = set(wanted)
    for canonical, aliases in ALIASES.items():
        column = next((c for c in aliases if c in raw.columns), None)
        if column is not None:
            used.add(column)
        if canonical == "age":
            meta["age"] = (normalize_ages(raw[column], file=csv, column=column).to_numpy()
                           if column else np.full(len(raw), np.nan))
        else:
            mapping = SEX_MAP if canonical == "sex" else SITE_MAP
            meta[canonical] = (
                normalize_values(raw[column], mapping, file=csv, column=column,
                                 what=canonical).to_numpy(dtype=object)
                if column else np.full(len(raw), "unknown", dtype=object))
    reserved = {"image_id", "image_path", "image_path_2", "label", "label_name", "split",
                "source", "group_id", "age", "sex", "site"}
    extra = raw[[c for c in raw.columns if c not in used and c not in reserved]].copy()
    for column in extra.columns:  # numeric extras (monet_*, meta_*, n_images...) as numbers
        numbers = pd.to_numeric(extra[column], errors="coerce")
        if numbers.notna().sum() == extra[column].notna().sum():
            extra[column] = numbers
    df = _unlabelled(ids=names.tolist(), paths=paths, extra=extra, **meta)
    if image2_column:
        second = require_ids(raw, image2_column, csv, unique=False)
        df["image_path_2"] = [_resolve_image(folder, name) for name in second]
    if "patient_id" in df.columns:
        known = df["patient_id"].notna()
        df.loc[known, "group_id"] = df.loc[known, "patient_id"].astype(str)
    return df


def _unlabelled(*, ids: list[str], paths: list[str], age: np.ndarray, sex: np.ndarray,
                site: np.ndarray, extra: pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame({
        "image_id": ids, "image_path": paths, "group_id": ids, "label": -1, "label_name": "",
        "age": age.astype(float), "sex": sex, "site": site, "source": "custom", "split": "test",
    })
    for column in extra.columns:
        df[column] = extra[column].to_numpy()
    return df


def _resolve_image(folder: Path, name: str) -> str:
    """``folder / name``; a name without an extension finds ``name.jpg|jpeg|png``."""
    path = Path(name) if os.path.isabs(name) else folder / name
    if path.is_file() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return str(path)
    for ext in IMAGE_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return str(candidate)
    return str(path)


def _file_sizes(paths: pd.Series) -> np.ndarray:
    return np.array([os.path.getsize(p) if os.path.isfile(p) else np.nan for p in paths],
                    dtype=float)


def drift_file(predictions: Path) -> Path:
    """Where the metadata drift table of a predictions file goes (next to it)."""
    return predictions.with_name(f"{predictions.stem}_metadata_drift.csv")


def drift_warnings(drift: pd.DataFrame) -> list[str]:
    """One line per flagged feature of a `MetaEncoder.drift` table."""
    return [f"metadata feature {r.feature!r} lies outside the training distribution "
            f"(mean shift {r.shift_sd:+.1f} SD, {r.share_outside:.0%} of rows outside the "
            "training range); predictions for these rows may be unreliable"
            for r in drift.itertuples() if r.flagged]
