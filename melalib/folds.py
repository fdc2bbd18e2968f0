"""Cross-validation folds that never split a group (patient / lesion), and the leakage audit.

- `assign_folds`: scikit-learn's `StratifiedGroupKFold` greedy on ``group_id`` over the
  training rows (test rows get fold -1), stratified by label, or by label x images-per-group bucket (``"label+size"``,
  the "triple stratified" folds of the SIIM-ISIC 2020 top solutions: patient-isolated,
  melanoma ratio balanced, patients with many / few images spread evenly).
  `stratified_group_folds` is that greedy re-written with the candidate folds scored in one
  vectorised step: the same folds as scikit-learn's, bit for bit, ~7x faster at 100k rows
  (tests compare the two; ``benchmarks/folds_bench.py`` times them).
- `audit_leakage` (defined in `melalib.leakage`, re-exported): raises `LeakageError` when a
  group spans folds or splits.
- `fold_summary`: inspect folds.
- `random_split` / `grouped_split`: the 70/10/20 train / val / test protocols of MedMNIST's
  DermaMNIST (image level, which LEAKS lesions) and its group-level counterpart.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .leakage import audit_leakage, numpy_columns
from .registry import Registry
from .table import LesionTable

#: the ``fold_stratify`` choices: name -> ``(labels, group codes, info) -> per-image strata``
STRATIFY: Registry[Callable[[np.ndarray, np.ndarray, dict[str, Any]], np.ndarray]] = Registry(
    "fold_stratify")
N_SIZE_BINS = 4  # quantile buckets of images-per-group for stratify="label+size"
SUBSETS = ("train", "val", "test")


# ---------------------------------------------------------------------------------- folds
@overload
def assign_folds(table: LesionTable, n_folds: int = ..., seed: int = ..., stratify: str = ...,
                 *, return_info: Literal[False] = ...) -> LesionTable: ...


@overload
def assign_folds(table: LesionTable, n_folds: int = ..., seed: int = ..., stratify: str = ...,
                 *, return_info: Literal[True]) -> tuple[LesionTable, dict[str, Any]]: ...


def assign_folds(table: LesionTable, n_folds: int = 5, seed: int = 42, stratify: str = "label",
                 *, return_info: bool = False) -> LesionTable | tuple[LesionTable, dict[str, Any]]:
    """A new table with an int column ``fold`` (0..n_folds-1 for training rows, -1 for test).

    Folds are those of scikit-learn's ``StratifiedGroupKFold(n_folds, shuffle=True,
    random_state=seed)`` on ``group_id`` (computed by `stratified_group_folds`). ``stratify``: ``"label"`` (class balance), ``"label+size"`` (the label
    combined with a quantile bucket of the group's image count, so every fold gets a similar
    mix of patients with few and many images) or ``"none"``. The training rows are sorted by
    (group_id, image_id) before splitting, so the folds depend only on the table's content
    and the seed, never on its row order.

    Raises DataError when there are fewer groups than folds, or when a binary task leaves a
    fold whose validation set holds a single class (its AUC would be undefined). Classes
    with fewer groups than folds only warn: ``warnings.warn`` and, with
    ``return_info=True``, the returned info dict (``sparse_classes``, ``warnings``).
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ConfigError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    strata_of = STRATIFY[stratify]
    df, task, file = numpy_columns(table.df), table.task, table.origin or None
    for column in ("image_id", "group_id", "label", "split"):
        if column not in df.columns:
            raise DataError(f"assign_folds needs column {column!r}", file=file, column=column)
    train_mask = (df["split"] == "train").to_numpy()
    if not train_mask.any():
        raise DataError("no training rows (split == 'train') to split into folds", file=file,
                        column="split")
    audit_leakage(df.drop(columns=["fold"], errors="ignore"))  # train / test overlap first
    train = pd.DataFrame({
        "pos": np.flatnonzero(train_mask),
        "image_id": df.loc[train_mask, "image_id"].astype(str).to_numpy(),
        "group_id": df.loc[train_mask, "group_id"].astype(str).to_numpy(),
        "label": pd.to_numeric(df.loc[train_mask, "label"], errors="coerce").to_numpy(),
    }).sort_values(["group_id", "image_id"], kind="mergesort").reset_index(drop=True)
    bad = ~np.isfinite(train["label"].to_numpy(dtype=float)) | (train["label"] < 0).to_numpy()
    if bad.any():
        pos = int(train.loc[bad, "pos"].min())
        raise DataError("training row without a label", file=file, row=pos + 1, column="label")
    labels = train["label"].to_numpy(dtype=np.int64)
    group_codes, group_names = pd.factorize(train["group_id"], sort=True)
    n_groups = len(group_names)
    if n_groups < n_folds:
        raise DataError(f"only {n_groups} group(s) in the training rows but n_folds={n_folds}: "
                        "every fold needs its own groups; lower n_folds", file=file,
                        column="group_id")

    info: dict[str, Any] = {"n_folds": int(n_folds), "seed": int(seed), "stratify": stratify,
                            "n_groups": int(n_groups), "n_images": len(train), "warnings": []}
    groups_per_class = pd.Series(group_codes).groupby(labels).nunique()
    sparse = {_class_name(task, int(c)): int(n) for c, n in groups_per_class.items() if n < n_folds}
    info["sparse_classes"] = sparse
    for name, n in sparse.items():
        msg = (f"class {name!r} has only {n} group(s), fewer than n_folds={n_folds}: "
               "some validation folds will not contain it")
        info["warnings"].append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)

    strata = strata_of(labels, group_codes, info)
    try:
        folds = stratified_group_folds(strata, group_codes, int(n_folds), seed)
    except ValueError as exc:
        raise DataError(f"cannot build {n_folds} stratified group folds: {exc}; lower n_folds "
                        "or use stratify='none'", file=file, column="label") from exc

    _check_fold_classes(task, labels, folds, n_folds, info, file)
    out = df.copy()
    fold_column = np.full(len(df), -1, dtype=np.int64)
    fold_column[train["pos"].to_numpy()] = folds
    out["fold"] = fold_column
    result = LesionTable(out, task, table.origin)
    info["audit"] = audit_leakage(result.df)
    return (result, info) if return_info else result


def check_predefined_folds(table: LesionTable, n_folds: int) -> LesionTable:
    """A table whose ``fold`` column came with the data: every training fold in
    0..n_folds-1, none empty, and no group in two folds or in both train and test
    (`audit_leakage`, which raises LeakageError)."""
    df, file = table.df, table.origin or None
    train = (df["split"] == "train").to_numpy()
    folds = pd.to_numeric(df["fold"], errors="coerce").fillna(-1).to_numpy(dtype=np.int64)
    outside = train & ((folds < 0) | (folds >= n_folds))
    if outside.any():
        pos = int(np.flatnonzero(outside)[0])
        raise DataError(f"fold {folds[pos]} is outside 0..{n_folds - 1} (n_folds={n_folds}); "
                        "set n_folds to the number of folds in the file", file=file,
                        row=pos + 1, column="fold")
    empty = sorted(set(range(n_folds)) - set(folds[train].tolist()))
    if empty:
        raise DataError(f"fold(s) {empty} have no training rows; set n_folds to the number of "
                        "folds in the file", file=file, column="fold")
    out = df.copy()
    out["fold"] = np.where(train, folds, -1)
    audit_leakage(out)
    return LesionTable(out, table.task, table.origin)


def stratified_group_folds(strata: np.ndarray, groups: np.ndarray, n_folds: int,
                           seed: int | None) -> np.ndarray:
    """Fold (0..n_folds-1) per row: scikit-learn's ``StratifiedGroupKFold(n_folds,
    shuffle=True, random_state=seed)`` test folds, bit for bit, computed faster.

    The same greedy: groups shuffled by ``RandomState(seed)``, taken in order of decreasing
    spread of their class counts, each put in the fold that minimises the mean over classes
    of the std across folds of the class fractions (ties within ``np.isclose``: the fold
    with fewer rows). scikit-learn scores the candidate folds one by one in Python with a
    full `np.std` each; here all candidates of a group are scored in one (folds, folds,
    classes) array with the same floating-point operations in the same order, so the scores,
    and hence the folds, are identical. Raises ValueError where scikit-learn does (every
    class smaller than ``n_folds``, fewer groups than folds).
    """
    _, y_inv, y_cnt = np.unique(strata, return_inverse=True, return_counts=True)
    if np.all(n_folds > y_cnt):
        raise ValueError(f"n_splits={n_folds} cannot be greater than the number of members "
                         "in each class")
    _, g_inv, g_cnt = np.unique(groups, return_inverse=True, return_counts=True)
    if n_folds > len(g_cnt):
        raise ValueError(f"cannot have n_splits={n_folds} greater than the number of groups: "
                         f"{len(g_cnt)}")
    counts = np.zeros((len(g_cnt), len(y_cnt)))
    np.add.at(counts, (g_inv.ravel(), y_inv.ravel()), 1)
    perm = np.arange(len(g_cnt))
    np.random.RandomState(seed).shuffle(perm)
    counts = counts[perm]
    order = np.argsort(-np.std(counts, axis=1), kind="stable")
    fold_of = np.empty(len(g_cnt), dtype=np.int64)
    _greedy_assign(counts, order, y_cnt, n_folds, fold_of)
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(perm.size)
    return fold_of[inv_perm[g_inv.ravel()]]


def _greedy_assign(counts: np.ndarray, order: np.ndarray, y_cnt: np.ndarray, n_folds: int,
                   fold_of: np.ndarray) -> None:
    """Place the groups (rows of ``counts``) in ``order``; writes ``fold_of[group]``.

    Scores match ``np.mean(np.std(fold_counts_with_candidate / y_cnt, axis=0))`` exactly:
    `np.std`'s own steps (sum, divide, subtract, square, sum, divide, sqrt) on the stacked
    candidates, reduced along the same axis."""
    fold_counts = np.zeros((n_folds, counts.shape[1]))
    eye = np.eye(n_folds)[:, :, None]
    divisor = y_cnt.reshape(1, 1, -1)
    sizes = [0.0] * n_folds
    add, inf = np.add.reduce, float("inf")
    for g in order.tolist():
        row = counts[g]
        frac = (fold_counts[None, :, :] + eye * row) / divisor
        dev = frac - add(frac, axis=1, keepdims=True) / n_folds
        evals = np.mean(np.sqrt(add(dev * dev, axis=1) / n_folds), axis=1).tolist()
        best, min_eval, min_n = 0, inf, inf
        for i, e in enumerate(evals):  # np.isclose(e, min_eval): |e - m| <= 1e-8 + 1e-5 |m|
            if e < min_eval or (min_eval != inf and abs(e - min_eval) <= 1e-8 + 1e-5 * abs(min_eval)
                                and sizes[i] < min_n):
                best, min_eval, min_n = i, e, sizes[i]
        fold_counts[best] += row
        sizes[best] += float(row.sum())
        fold_of[g] = best


def _class_name(task: Any, label: int) -> str:
    classes = getattr(task, "classes", ())
    return str(classes[label]) if 0 <= label < len(classes) else str(label)


@STRATIFY.register("label")
def _by_label(labels: np.ndarray, group_codes: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Stratify by label."""
    return labels


@STRATIFY.register("label+size")
def _by_label_and_size(labels: np.ndarray, group_codes: np.ndarray, info: dict[str, Any]
                       ) -> np.ndarray:
    """Stratify by label x group-size bucket (balances images per patient)."""
    sizes = np.bincount(group_codes)
    buckets = pd.qcut(pd.Series(sizes), q=N_SIZE_BINS, labels=False, duplicates="drop")
    buckets = buckets.fillna(0).to_numpy(dtype=np.int64)
    n_buckets = int(buckets.max()) + 1
    edges = [int(sizes[buckets == b].max()) for b in range(n_buckets)]
    info["size_buckets_max_images"] = edges
    return labels * n_buckets + buckets[group_codes]


@STRATIFY.register("none")
def _unstratified(labels: np.ndarray, group_codes: np.ndarray, info: dict[str, Any]
                  ) -> np.ndarray:
    """No stratification (one constant stratum)."""
    return np.zeros(len(labels), dtype=np.int64)


def _check_fold_classes(task: Any, labels: np.ndarray, folds: np.ndarray, n_folds: int,
                        info: dict[str, Any], file: str | None) -> None:
    """Binary: every validation fold needs both classes. Others: record missing classes."""
    missing: dict[int, list[str]] = {}
    n_classes = len(getattr(task, "classes", ())) or int(labels.max()) + 1
    for k in range(n_folds):
        present = set(np.unique(labels[folds == k]).tolist())
        absent = [_class_name(task, c) for c in range(n_classes) if c not in present]
        if getattr(task, "kind", "") == "binary" and len(present) < 2:
            only = _class_name(task, next(iter(present))) if present else "none"
            raise DataError(
                f"fold {k} has only class {only!r} in its validation set "
                f"({int((folds == k).sum())} images), so its {task.primary_metric} is undefined; "
                f"reduce n_folds (now {n_folds}) or add groups of the missing class",
                file=file, column="label")
        if absent:
            missing[k] = absent
    info["missing_classes"] = missing


# ------------------------------------------------------------------------------ summary
def fold_summary(table: LesionTable) -> pd.DataFrame:
    """Per training fold: images, groups, mean images per group, images per class and, for a
    binary task, the positive rate. Indexed by fold."""
    df = table.df
    if "fold" not in df.columns:
        raise DataError("the table has no 'fold' column; call assign_folds first",
                        file=table.origin or None, column="fold")
    train = df[(df["split"] == "train") & (pd.to_numeric(df["fold"]) >= 0)]
    rows = []
    for k, part in train.groupby(pd.to_numeric(train["fold"]).astype(int), sort=True):
        n_groups = part["group_id"].astype(str).nunique()
        row: dict[str, Any] = {"fold": int(k), "images": len(part), "groups": n_groups,
                               "mean_images_per_group": len(part) / n_groups}
        labels = pd.to_numeric(part["label"]).to_numpy(dtype=np.int64)
        for c, name in enumerate(table.task.classes):
            row[f"n_{name}"] = int((labels == c).sum())
        if table.task.kind == "binary":
            row["positive_rate"] = float((labels == 1).mean())
        rows.append(row)
    return pd.DataFrame(rows).set_index("fold")


# ------------------------------------------------------------- train / val / test splits
def random_split(table: LesionTable, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                 seed: int = 0, stratify: bool = True) -> pd.Series:
    """"train" / "val" / "test" per training row, drawn per IMAGE, ignoring groups.

    This reproduces MedMNIST's DermaMNIST protocol (7:1:2 of HAM10000's images) and
    therefore LEAKS: images of one lesion / patient land on both sides of the split, so
    scores on its "test" part are optimistic. It exists to measure that leak (protocol A);
    use `grouped_split` or `assign_folds` for honest estimates. Stratified by label when
    ``stratify``. Index: the table's training rows.
    """
    train = table.train
    return _split(train, train["image_id"].astype(str), fractions, seed, stratify)


def grouped_split(table: LesionTable, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                  seed: int = 0, stratify: bool = True) -> pd.Series:
    """Like `random_split`, but whole groups (``group_id``) go to one subset, so nothing
    leaks. Fractions are met in images, approximately; stratification uses each group's
    rarest class (a patient with one melanoma counts as a melanoma patient)."""
    train = table.train
    return _split(train, train["group_id"].astype(str), fractions, seed, stratify)


def _split(train: pd.DataFrame, units: pd.Series, fractions: tuple[float, ...], seed: int,
           stratify: bool) -> pd.Series:
    """Assign each unit (image or group) to train / val / test.

    Units are sorted by id, shuffled within each stratum and laid end to end by image
    count; a unit goes to the subset where the midpoint of its image range falls.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    if len(train) == 0:
        raise DataError("no training rows to split", column="split")
    labels = pd.to_numeric(train["label"]).to_numpy(dtype=np.int64)
    unit_frame = pd.DataFrame({"unit": units.to_numpy(), "label": labels})
    sizes = unit_frame.groupby("unit").size()
    if stratify:
        freq = pd.Series(labels).value_counts()
        rarity = unit_frame["label"].map(freq)  # smaller = rarer
        rarest = unit_frame.assign(rarity=rarity).sort_values(["unit", "rarity", "label"])
        stratum = rarest.groupby("unit")["label"].first()
    else:
        stratum = pd.Series(0, index=sizes.index)
    rng = np.random.default_rng(seed)
    bounds = np.cumsum(fractions)[:2]
    assignment: dict[str, str] = {}
    for s in sorted(stratum.unique()):
        names = np.array(sorted(stratum.index[stratum == s]), dtype=object)
        names = names[rng.permutation(len(names))]
        n = sizes.reindex(names).to_numpy(dtype=float)
        mid = (np.cumsum(n) - n / 2) / n.sum()
        subset = np.searchsorted(bounds, mid, side="right")
        assignment.update(zip(names.tolist(), (SUBSETS[i] for i in subset), strict=True))
    return pd.Series(units.map(assignment).to_numpy(dtype=object), index=train.index,
                     name="subset")
