"""Fuzzing: random CSVs, metadata frames, fold tables and overrides never crash melalib
with anything but its own errors (`MelalibError` subclasses).

Each property runs 60 examples; a crash found here is fixed in the library and its example
kept below as an explicit regression test.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melalib.config import RunConfig, field_index
from melalib.data.sources.custom import load_custom_csv
from melalib.data.sources.ham10000 import load_ham10000
from melalib.errors import DataError, LeakageError, MelalibError
from melalib.features import FEATURE_SETS, MetaEncoder
from melalib.folds import STRATIFY, assign_folds, audit_leakage
from melalib.table import LesionTable
from melalib.tasks import HAM7, MELANOMA

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# ---------------------------------------------------------------------------- strategies
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)  # unicode, no surrogates
WORDS = st.sampled_from([
    "", " ", "nan", "NaN", "None", "inf", "-inf", "1e308", "-0", "0", "1", "2", "1.0", "40",
    "-5", "250", "male", "female", "F", "m", "unknown", "torso", "head/neck", "back", "scalp",
    "acral", "train", "test", "TRAIN", "a", "b", "nv", "mel", "bkl", "histo", "HAM_1", "é",
    "\u00a0", '"', ",", ";", "\t", "x\ny",
])
NUMBERS = st.one_of(st.integers(-10**6, 10**6).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr))
CELL = st.one_of(st.none(), WORDS, TEXT, NUMBERS)


def write_csv(path: Path, header: list[str], rows: list[list[str | None]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([["" if c is None else c for c in row] for row in rows])
    return path


@st.composite
def csv_tables(draw: st.DrawFn, columns: tuple[str, ...], always: tuple[str, ...] = ()
               ) -> tuple[list[str], list[list[str | None]]]:
    """A random subset of ``columns`` (``always`` kept most of the time), 0-8 rows of cells."""
    keep = [c for c in columns if (c in always and draw(st.integers(0, 9)) > 0)
            or draw(st.booleans())]
    header = draw(st.permutations(keep)) if keep else []
    n = draw(st.integers(0, 8))
    rows = []
    for _ in range(n):  # now and then a ragged row (one cell too many or too few)
        width = len(header) + draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, -1]))
        rows.append([draw(CELL) for _ in range(max(width, 0))])
    return list(header), rows


def assert_table_keeps_every_row(table: LesionTable, n_rows: int) -> None:
    """A loaded table never silently drops rows and is valid."""
    assert len(table) == n_rows
    table.validate()


# ----------------------------------------------------------------------- custom CSV files
CUSTOM_COLUMNS = ("image", "label", "group", "age", "sex", "site", "bmi", "part")


@FUZZ
@given(table=csv_tables(CUSTOM_COLUMNS, always=("image", "label")),
       use_group=st.booleans(), use_split=st.booleans(),
       meta=st.dictionaries(st.sampled_from(["age", "sex", "site", "bmi"]),
                            st.sampled_from(["age", "sex", "site", "bmi", "nowhere"]),
                            max_size=4),
       classes=st.one_of(st.none(), st.lists(WORDS, min_size=0, max_size=3)),
       ext=st.sampled_from(["", ".jpg"]))
def test_custom_csv_never_crashes(tmp_path_factory, table, use_group, use_split, meta,
                                  classes, ext) -> None:
    header, rows = table
    path = write_csv(tmp_path_factory.mktemp("custom") / "mine.csv", header, rows)
    try:
        out = load_custom_csv(path, group_column="group" if use_group else None,
                              meta_columns=meta, classes=classes, image_ext=ext,
                              split_column="part" if use_split else None)
    except MelalibError:
        return
    assert_table_keeps_every_row(out, len(rows))


@FUZZ
@given(content=st.one_of(st.binary(max_size=200),
                         st.text(max_size=200).map(lambda t: t.encode("utf-8", "replace"))))
def test_custom_csv_from_arbitrary_bytes_never_crashes(tmp_path_factory, content) -> None:
    path = tmp_path_factory.mktemp("raw") / "mine.csv"
    path.write_bytes(b"image,label\n" + content)
    try:
        out = load_custom_csv(path)
    except MelalibError:
        return
    assert len(out) >= 1


HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization",
               "dataset")


@FUZZ
@given(table=csv_tables(HAM_COLUMNS, always=HAM_COLUMNS))
def test_ham10000_csv_never_crashes(tmp_path_factory, table) -> None:
    header, rows = table
    folder = tmp_path_factory.mktemp("ham")
    write_csv(folder / "HAM10000_metadata.csv", header, rows)
    try:
        out = load_ham10000(folder)
    except MelalibError:
        return
    assert_table_keeps_every_row(out, len(rows))


# ------------------------------------------------------------------ metadata encoder
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                      st.floats(allow_nan=True, allow_infinity=True), WORDS, TEXT)
META_COLUMNS = {
    "sex": st.one_of(st.sampled_from(["male", "female", "unknown", None]), ANY_VALUE),
    "site": st.one_of(st.sampled_from(["torso", "head_neck", "unknown", "palms_soles", None]),
                      ANY_VALUE),
    "age": st.one_of(st.floats(0, 100), st.just(math.nan), ANY_VALUE),
    "image_bytes": st.one_of(st.floats(1, 1e7), ANY_VALUE),
    "n_images": st.one_of(st.integers(1, 50), ANY_VALUE),
    "skin_tone": st.one_of(st.integers(0, 5), ANY_VALUE),
    "monet_hair": st.one_of(st.floats(0, 1), ANY_VALUE),
    "meta_bmi": st.one_of(st.floats(10, 40), ANY_VALUE),
    "meta_scanner": st.one_of(st.sampled_from(["A", "B"]), ANY_VALUE),
    "group_id": st.one_of(st.sampled_from(["p1", "p2", "p3"]), ANY_VALUE),
    "patient_id": st.one_of(st.sampled_from(["P1", "P2"]), ANY_VALUE),
    "split": st.sampled_from(["train", "train", "train", "test", None]),
}


@st.composite
def meta_frames(draw: st.DrawFn) -> pd.DataFrame:
    """A frame with a random subset of metadata columns and mixed-type cells."""
    n = draw(st.integers(0, 8))
    columns = [c for c in META_COLUMNS if (c in ("sex", "site", "age") and
               draw(st.integers(0, 9)) > 0) or draw(st.booleans())]
    data = {c: [draw(META_COLUMNS[c]) for _ in range(n)] for c in columns}
    return retype(draw, pd.DataFrame(data, index=pd.RangeIndex(n), columns=columns))


DTYPES = ("object", "numeric", "str", "string", "category", "Float64")


def retype(draw: st.DrawFn, df: pd.DataFrame) -> pd.DataFrame:
    """Give some columns another dtype (numeric, str, nullable string / Float64, category)."""
    for c in df.columns:
        kind = draw(st.sampled_from(DTYPES))
        if kind == "numeric":
            df[c] = pd.to_numeric(df[c], errors="coerce")
        elif kind == "Float64":
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Float64")
        elif kind in ("str", "string", "category"):
            df[c] = df[c].astype(str if kind == "str" else kind)
    return df


@FUZZ
@given(preset=st.sampled_from(list(FEATURE_SETS)), train=meta_frames(), other=meta_frames())
def test_meta_encoder_never_crashes(preset, train, other) -> None:
    enc = MetaEncoder(preset)
    try:
        enc.fit(train)
        x = enc.transform(other)
    except MelalibError:
        return
    assert x.dtype == np.float32 and x.shape == (len(other), enc.dim)
    assert np.isfinite(x).all()


# --------------------------------------------------------------------- folds and audit
GROUPS = st.one_of(st.sampled_from(["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]), ANY_VALUE)
LABELS = st.one_of(st.sampled_from([0, 1, 0, 1, 2, -1]), ANY_VALUE)
SPLITS = st.one_of(st.sampled_from(["train", "train", "train", "test"]), ANY_VALUE)
FOLDS = st.one_of(st.integers(-2, 6), ANY_VALUE)


@st.composite
def fold_frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 30))
    columns = {"image_id": st.one_of(st.integers(0, 40), ANY_VALUE), "group_id": GROUPS,
               "label": LABELS, "split": SPLITS, "fold": FOLDS, "patient_id": GROUPS}
    keep = [c for c in columns if (c != "fold" and draw(st.integers(0, 9)) > 0)
            or (c == "fold" and draw(st.booleans()))]
    return retype(draw, pd.DataFrame({c: [draw(columns[c]) for _ in range(n)] for c in keep},
                                     index=pd.RangeIndex(n), columns=keep))


@FUZZ
@given(df=fold_frames(), task=st.sampled_from([MELANOMA, HAM7]),
       n_folds=st.one_of(st.integers(-1, 6), st.sampled_from([True, 2.0, "3", None])),
       seed=st.integers(0, 2**31 - 1), stratify=st.one_of(st.sampled_from(list(STRATIFY)), TEXT))
def test_assign_folds_never_crashes(df, task, n_folds, seed, stratify) -> None:
    try:
        table = assign_folds(LesionTable(df.drop(columns="fold", errors="ignore"), task),
                             n_folds=n_folds, seed=seed, stratify=stratify)
    except MelalibError:
        return
    folds = table.df["fold"].to_numpy()
    train = (table.df["split"] == "train").to_numpy()
    assert len(table) == len(df) and set(folds[~train]) <= {-1}
    assert set(folds[train]) == set(range(n_folds))
    audit_leakage(table.df)  # its own folds never leak


@FUZZ
@given(df=fold_frames(), group_column=st.sampled_from(["group_id", "patient_id", "nowhere"]))
def test_audit_leakage_never_crashes(df, group_column) -> None:
    try:
        summary = audit_leakage(df, group_column=group_column)
    except MelalibError:
        return
    assert summary["n_images"] == len(df)


# --------------------------------------------------------------------------- overrides
KEYS = st.one_of(st.sampled_from(sorted(field_index())), TEXT,
                 st.sampled_from(sorted(field_index())).map(lambda k: f"train.{k}"))
VALUES = st.one_of(WORDS, TEXT, NUMBERS, st.sampled_from(["(1, 2)", "[]", "a,b", "()", "true"]))


@FUZZ
@given(items=st.lists(st.one_of(st.tuples(KEYS, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
                                TEXT), max_size=4))
def test_cli_overrides_never_crash(items) -> None:
    try:
        cfg = RunConfig().with_overrides(items)
    except MelalibError:
        return
    assert RunConfig.from_dict(cfg.to_flat()) == cfg  # what was accepted is a valid config


YAML_VALUES = st.recursive(ANY_VALUE, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)


@FUZZ
@given(d=st.dictionaries(st.one_of(st.sampled_from(["data", "model", "train"]),
                                   st.sampled_from(sorted(field_index())), TEXT),
                         YAML_VALUES, max_size=4))
def test_config_dicts_never_crash(d: dict[str, Any]) -> None:
    try:
        cfg = RunConfig.from_dict(d)
    except MelalibError:
        return
    assert RunConfig.from_dict(cfg.to_flat()) == cfg


# ------------------------------------------------------------- regressions found here
def test_regression_missing_group_ids_on_both_sides_of_the_split() -> None:
    """audit_leakage sorted shared groups holding NaN and text: TypeError (pandas 3 keeps
    missing values as NaN through ``astype(str)``)."""
    df = pd.DataFrame({"group_id": [None, "p1", None, "p1"],
                       "split": ["train", "train", "test", "test"]})
    with pytest.raises(LeakageError, match="'p1' appears in both the train split"):
        audit_leakage(df)


def test_regression_text_label_in_the_fold_summary() -> None:
    """audit_leakage counted classes with int(NaN) for a non-numeric label: ValueError."""
    df = pd.DataFrame({"group_id": ["p1", "p2", "p3"], "label": [0, "x", 1],
                       "split": "train", "fold": [0, 1, 1]})
    summary = audit_leakage(df)
    assert summary["class_counts_per_fold"] == {0: {0: 1}, 1: {1: 1}}


@pytest.mark.parametrize("dtype", ["string", "Float64"])
def test_regression_nullable_dtypes_in_folds(dtype: str) -> None:
    """Nullable columns made masks hold pd.NA: 'boolean value of NA is ambiguous'."""
    n = 12
    df = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(n)], "group_id": [f"p{k // 2}" for k in range(n)],
        "label": [k // 2 % 2 for k in range(n)], "split": ["train"] * (n - 2) + [None, "test"]})
    typed = df.copy()
    if dtype == "string":
        typed[["image_id", "group_id", "split"]] = typed[["image_id", "group_id", "split"]]\
            .astype("string")
    else:
        typed["label"] = typed["label"].astype("Float64")
    plain = assign_folds(LesionTable(df, MELANOMA), n_folds=2, seed=1)
    folds = assign_folds(LesionTable(typed, MELANOMA), n_folds=2, seed=1)
    assert folds.df["fold"].tolist() == plain.df["fold"].tolist()
    assert audit_leakage(folds.df)["images_per_fold"] == audit_leakage(plain.df)["images_per_fold"]


def test_regression_absurd_fold_numbers_are_refused() -> None:
    """A fold of 1e20 passed the integer check and overflowed the int64 cast."""
    df = pd.DataFrame({"group_id": ["p1", "p2"], "split": "train", "fold": [0, 1e20]})
    with pytest.raises(DataError, match=r"row 2, column 'fold'.*expected an integer >= 0"):
        audit_leakage(df)


def test_regression_trailing_commas_do_not_shift_columns(tmp_path) -> None:
    """pandas made the first column the index when every row was one field longer than the
    header (a trailing comma), shifting image names into the label column."""
    path = tmp_path / "trailing.csv"
    path.write_text("image,label\na.jpg,nevus,\nb.jpg,melanoma,\n")
    table = load_custom_csv(path)
    assert table.df["image_id"].tolist() == ["a.jpg", "b.jpg"]
    assert table.df["label_name"].tolist() == ["nevus", "melanoma"]
    path.write_text("image,label\na.jpg,nevus,extra\nb.jpg,melanoma\n")
    with pytest.raises(DataError, match="row 1: the row has 3 fields but the header names 2"):
        load_custom_csv(path)
    path.write_text("image,label\na.jpg,nevus\nb.jpg,melanoma,extra\n")
    with pytest.raises(DataError, match=r"cannot parse CSV.*Expected 2 fields in line 3, saw 3"):
        load_custom_csv(path)


def test_regression_empty_prediction_csv_is_a_data_error(tmp_path) -> None:
    """`melalib predict --csv` on an empty file raised pandas' EmptyDataError."""
    from melalib.inference import _csv_frame

    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="cannot parse CSV") as info:  # the shared reader's words
        _csv_frame(path, None, "image", None)
    assert info.value.file == str(path)
