"""Bad input meets a clear error: file, row, column and what was expected.

Cases already covered elsewhere (HAM10000 / ISIC adapters, table validation, folds, the
metadata encoder, unit-level image checks) are not repeated here; `docs/troubleshooting.md`
maps every case to the test that covers it. This file adds the end-to-end cases: damaged
and missing images through `melalib.train`, ``skip_bad_images``, images on disk that the
CSV does not list, custom-CSV cells through the config path, an empty training split,
config errors on the command line, and a swapped checkpoint on resume.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import melalib
from melalib import device, engine
from melalib.cli import main
from melalib.config import DataConfig
from melalib.data.dataset import find_unlisted_images
from melalib.data.load import load_table
from melalib.data.sources.custom import load_custom_csv
from melalib.errors import CheckpointError, DataError, ImageError
from melalib.features import MetaEncoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parents[1]
REASONS = {"truncated": "corrupt or truncated", "zero-bytes": "empty file (0 bytes)",
           "not-an-image": "not an image", "missing": "missing"}


# --------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def synthetic_source(synthetic_root: Path) -> Path:
    """The tiny config's synthetic dataset folder (generated once per session, never
    modified), wherever `load_table` puts it under ``data_dir``."""
    table = load_table(DataConfig(dataset="synthetic", data_dir=str(synthetic_root),
                                  synthetic_patients=16, synthetic_image_size=32))
    return Path(table.origin).parent


@pytest.fixture
def data_copy(tmp_path: Path, synthetic_source: Path, synthetic_root: Path) -> Path:
    """A private copy of the synthetic dataset, laid out as ``load_table`` expects under
    ``data_dir = tmp_path / "data"``; tests damage files here, never in the source."""
    dst = tmp_path / "data" / synthetic_source.relative_to(synthetic_root)
    shutil.copytree(synthetic_source, dst)
    return dst


def damage(path: Path, how: str) -> None:
    """Break one image file the way real downloads break."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero-bytes":
        path.write_bytes(b"")
    elif how == "not-an-image":
        path.write_text("<html>404 Not Found</html>\n")
    elif how == "missing":
        path.unlink()
    else:  # pragma: no cover - test bug
        raise AssertionError(how)


def synthetic_table(data: Path) -> pd.DataFrame:
    return pd.read_csv(data / "table.csv", dtype={"image_id": str, "group_id": str})


def benign_train_rows(df: pd.DataFrame, n: int, start: int = 3) -> list[int]:
    """0-based rows of ``n`` benign training images of patients with several images (so
    leaving them out keeps every patient and both classes)."""
    sizes = df.groupby("group_id")["image_id"].transform("size")
    ok = (df["split"] == "train") & (df["label"] == 0) & (sizes >= 3)
    rows = [int(i) for i in np.flatnonzero(ok.to_numpy()) if i >= start]
    picked: list[int] = []
    for i in rows:  # at most one image per patient
        if df["group_id"].iat[i] not in {df["group_id"].iat[j] for j in picked}:
            picked.append(i)
    assert len(picked) >= n, "the tiny synthetic table changed; pick other rows"
    return picked[:n]


def write_custom_csv(data: Path, path: Path, drop_rows: list[int] = ()) -> pd.DataFrame:
    """The synthetic training rows as a user's own CSV (image names relative to
    ``data/images``); returns the frame written, in file order."""
    df = synthetic_table(data)
    df = df[df["split"] == "train"].drop(index=list(drop_rows)).reset_index(drop=True)
    out = pd.DataFrame({"image": [Path(p).name for p in df["image_path"]],
                        "diagnosis": df["label_name"], "patient": df["group_id"],
                        "age": df["age"], "sex": df["sex"], "site": df["site"]})
    out.to_csv(path, index=False)
    return out


def custom_cfg(tiny_cfg, data: Path, csv: Path, **overrides: object):
    return tiny_cfg(dataset="custom", custom_csv=str(csv), image_dir=str(data / "images"),
                    custom_label_column="diagnosis", custom_group_column="patient",
                    custom_meta_columns=("age=age", "sex=sex", "site=site"),
                    custom_classes=("benign", "melanoma"), fold=0, **overrides)


def checkpoints(cfg) -> list[Path]:
    return sorted((cfg.run_dir / "checkpoints").glob("*.pt"))


# ------------------------------------------------------------- images at training time
@pytest.mark.parametrize("how", ["truncated", "zero-bytes", "not-an-image"])
def test_corrupt_image_stops_training_naming_file_row_and_column(tiny_cfg, data_copy, tmp_path,
                                                                how):
    df = synthetic_table(data_copy)
    (row,) = benign_train_rows(df, 1)
    image = data_copy / df["image_path"].iat[row]
    damage(image, how)
    cfg = tiny_cfg(data_dir=str(tmp_path / "data"), fold=0)
    with pytest.raises(ImageError) as info:
        melalib.train(cfg)
    err = info.value
    assert err.file == str(data_copy / "table.csv") and err.file in str(err)
    assert err.row == row + 1 and f"row {row + 1}" in str(err)
    assert err.column == "image_path" and "'image_path'" in str(err)
    assert str(image) in str(err) and REASONS[how] in str(err)
    assert "skip_bad_images=true" in str(err)  # what to do about it
    bad = pd.read_csv(cfg.run_dir / "bad_images.csv")
    assert bad["path"].tolist() == [str(image)] and bad["row"].tolist() == [row + 1]
    assert checkpoints(cfg) == []  # nothing was trained


def test_image_listed_in_the_csv_but_missing_stops_training(tiny_cfg, data_copy, tmp_path):
    csv = tmp_path / "lesions.csv"
    listed = write_custom_csv(data_copy, csv)
    row = 5  # 0-based row of the CSV
    image = data_copy / "images" / listed["image"].iat[row]
    damage(image, "missing")
    cfg = custom_cfg(tiny_cfg, data_copy, csv)
    with pytest.raises(ImageError) as info:
        melalib.train(cfg)
    err = info.value
    assert err.file == str(csv) and err.row == row + 1 and err.column == "image_path"
    assert f"file {csv}, row {row + 1}, column 'image_path'" in str(err)
    assert f"missing: {image}" in str(err)
    assert checkpoints(cfg) == []


def test_skip_bad_images_trains_without_them_and_lists_exactly_them(tiny_cfg, data_copy,
                                                                    tmp_path):
    csv = tmp_path / "lesions.csv"
    listed = write_custom_csv(data_copy, csv)
    table_rows = benign_train_rows(synthetic_table(data_copy), 4)
    # the CSV holds the training rows only: map table rows to CSV rows through the names
    names = [Path(p).name for p in synthetic_table(data_copy)["image_path"].iloc[table_rows]]
    damaged = {}
    for name, how in zip(names, REASONS, strict=True):
        damage(data_copy / "images" / name, how)
        damaged[Path(name).stem] = how
    cfg = custom_cfg(tiny_cfg, data_copy, csv, skip_bad_images=True)
    melalib.train(cfg)
    skipped = pd.read_csv(cfg.run_dir / "skipped_images.csv", dtype={"image_id": str})
    expected_ids = sorted(listed["image"][listed["image"].isin(names)])
    assert sorted(skipped["image_id"]) == expected_ids
    for image_id, reason in zip(skipped["image_id"], skipped["reason"], strict=True):
        assert reason.startswith(REASONS[damaged[Path(image_id).stem]])
    info = json.loads((cfg.run_dir / "run.json").read_text())
    assert info["n_skipped_images"] == 4
    assert info["n_rows"] == len(listed) - 4  # never silently fewer: the count is recorded
    trained_on = pd.read_csv(cfg.run_dir / "table" / "table.csv", dtype={"image_id": str})
    assert set(trained_on["image_id"]) == set(listed["image"]) - set(expected_ids)
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv", dtype={"image_id": str})
    assert not set(oof["image_id"]) & set(expected_ids)


def test_images_on_disk_not_in_the_csv_are_reported_not_fatal(tiny_cfg, data_copy, tmp_path):
    table_rows = benign_train_rows(synthetic_table(data_copy), 2)
    names = [Path(p).name for p in synthetic_table(data_copy)["image_path"].iloc[table_rows]]
    train_rows = synthetic_table(data_copy).query("split == 'train'").index
    csv = tmp_path / "lesions.csv"
    write_custom_csv(data_copy, csv, drop_rows=[i for i in table_rows if i in train_rows])
    stray = data_copy / "images" / "copy of SYN000001.JPG"
    shutil.copy(data_copy / "images" / "SYN000001.jpg", stray)
    (data_copy / "images" / "notes.txt").write_text("not an image: not counted")
    (data_copy / "images" / ".DS_Store").write_bytes(b"hidden: not counted")
    test_split = synthetic_table(data_copy).query("split == 'test'")["image_path"]
    expected = sorted([str(data_copy / "images" / n) for n in names] + [str(stray)]
                      + [str(data_copy / p) for p in test_split])  # the CSV lists train only
    cfg = custom_cfg(tiny_cfg, data_copy, csv)
    melalib.train(cfg)  # trains: unlisted images are a report, not an error
    info = json.loads((cfg.run_dir / "run.json").read_text())
    assert info["n_unlisted_images"] == len(expected)
    assert pd.read_csv(cfg.run_dir / "unlisted_images.csv")["path"].tolist() == expected
    table = load_custom_csv(csv, label_column="diagnosis", image_dir=data_copy / "images")
    assert find_unlisted_images(table.df) == expected
    assert find_unlisted_images(table.df, image_dir=tmp_path) == []  # no images there
    assert (cfg.run_dir / "oof_fold0.csv").is_file()


def test_a_complete_dataset_reports_no_unlisted_images(tiny_cfg) -> None:
    cfg = tiny_cfg(fold=0)
    melalib.train(cfg)
    info = json.loads((cfg.run_dir / "run.json").read_text())
    assert info["n_unlisted_images"] == 0 and info["n_skipped_images"] == 0
    assert not (cfg.run_dir / "unlisted_images.csv").exists()


def test_a_run_refuses_data_that_changed_since_it_started(tiny_cfg, data_copy, tmp_path):
    csv = tmp_path / "lesions.csv"
    listed = write_custom_csv(data_copy, csv)
    cfg = custom_cfg(tiny_cfg, data_copy, csv)
    melalib.train(cfg)
    oof = (cfg.run_dir / "oof_fold0.csv").read_bytes()
    listed.loc[2, "age"] = 77.0  # one edited cell
    listed.to_csv(csv, index=False)
    with pytest.raises(DataError) as info:
        melalib.train(cfg)
    err = info.value
    assert err.file == str(cfg.run_dir / "table" / "table.csv")
    assert f"the data changed since run {cfg.run_dir} started (table hash" in str(err)
    assert "--overwrite" in str(err)
    assert (cfg.run_dir / "oof_fold0.csv").read_bytes() == oof


# ------------------------------------------------------- a user's CSV through the config
CUSTOM_OK = ("file,dx,who,years,gender,where", "a.jpg,nevus,P1,40,F,back",
             "b.jpg,melanoma,P1,,m,face", "c.jpg,nevus,P2,61,,",
             "d.jpg,nevus,P3,35,female,hand")


@pytest.mark.parametrize(("column", "value", "words"), [
    ("years", "forty", "'forty' is not a number"),
    ("years", "-4", "age -4.0 is outside [0, 120]"),
    ("years", "250", "age 250.0 is outside [0, 120]"),
    ("years", "inf", "age inf is outside [0, 120]"),
    ("gender", "yes", "unknown sex 'yes'; expected one of"),
    ("file", "a.jpg", "duplicate file 'a.jpg'"),
], ids=["age-text", "age-negative", "age-absurd", "age-inf", "sex-unknown", "duplicate-id"])
def test_custom_csv_cells_through_the_config(tmp_path, column, value, words) -> None:
    header, *rows = CUSTOM_OK
    columns = header.split(",")
    cells = rows[2].split(",")  # data row 3 is the bad one
    cells[columns.index(column)] = value
    csv = tmp_path / "mine.csv"
    csv.write_text("\n".join([header, rows[0], rows[1], ",".join(cells), rows[3]]) + "\n")
    cfg = DataConfig(dataset="custom", custom_csv=str(csv), custom_image_column="file",
                     custom_label_column="dx", custom_group_column="who",
                     custom_meta_columns=("age=years", "sex=gender", "site=where"))
    with pytest.raises(DataError) as info:
        load_table(cfg)
    err = info.value
    assert err.file == str(csv) and err.row == 3 and err.column == column
    assert f"file {csv}, row 3, column {column!r}" in str(err) and words in str(err)


def test_missing_age_is_allowed_and_imputed_with_an_indicator(tmp_path) -> None:
    csv = tmp_path / "mine.csv"
    csv.write_text("\n".join(CUSTOM_OK) + "\n")
    table = load_table(DataConfig(dataset="custom", custom_csv=str(csv),
                                  custom_image_column="file", custom_label_column="dx",
                                  custom_meta_columns=("age=years", "sex=gender")))
    ages = table.df["age"].to_numpy()
    assert np.isnan(ages[1]) and ages[[0, 2, 3]].tolist() == [40.0, 61.0, 35.0]
    enc = MetaEncoder("default").fit(table.df)
    x = enc.transform(table.df)
    age, missing = (x[:, enc.feature_names.index(n)] for n in ("age", "age_missing"))
    known = np.array([40.0, 61.0, 35.0])
    expected = (known - known.mean()) / known.std()
    np.testing.assert_allclose(age, [expected[0], 0.0, expected[1], expected[2]], rtol=1e-6)
    assert missing.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_a_split_column_without_training_rows_is_refused(tmp_path) -> None:
    csv = tmp_path / "all_test.csv"
    csv.write_text("image,label,part\na.jpg,x,test\nb.jpg,y,TEST\nc.jpg,,test\n")
    with pytest.raises(DataError) as info:
        load_custom_csv(csv, split_column="part")
    err = info.value
    assert err.file == str(csv) and err.column == "part" and err.row is None
    assert "no training rows: none of the 3 row(s) has split 'train' in column 'part'" in str(err)
    header_only = tmp_path / "header.csv"
    header_only.write_text("image,label\n")
    with pytest.raises(DataError, match="header but no data rows") as info:
        load_custom_csv(header_only)
    assert info.value.file == str(header_only)


# ------------------------------------------------------------- config on the command line
def test_cli_set_with_a_wrong_type_exits_2_with_a_message_and_no_traceback(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "melalib", "train", "--preset", "tiny", "--set", "epochs=abc",
         "--output-dir", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**_env(), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "melalib train: error: epochs must be an integer, got 'abc'"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()  # nothing was written


@pytest.mark.parametrize(("yaml_text", "extra", "words"), [
    ("epochs: abc\n", [], "cfg.yaml: epochs must be an integer, got 'abc'"),
    ("train:\n  epohcs: 2\n", [], "cfg.yaml: unknown config key 'epohcs'; did you mean epochs?"),
    ("lr: [1, 2]\n", [], "cfg.yaml: lr must be a number, got [1, 2]"),
    ("- just\n- a list\n", [], "cfg.yaml: a config file must hold a mapping, got list"),
    ("epochs: [\n", [], "cfg.yaml: cannot read config"),
    ("epochs: 2\n", ["--set", "epoch=3"], "unknown config key 'epoch'; did you mean epochs?"),
    ("epochs: 2\n", ["--set", "epochs"], "override 'epochs' is not of the form key=value"),
    ("epochs: 2\n", ["--set", "batch_size=0"], "batch_size must be >= 1, got 0"),
], ids=["yaml-type", "yaml-unknown-key", "yaml-list-for-number", "yaml-not-mapping",
        "yaml-syntax", "set-unknown-key", "set-no-equals", "set-out-of-range"])
def test_cli_config_errors_exit_2_naming_the_key(tmp_path, capsys, yaml_text, extra,
                                                 words) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text)
    code = main(["train", "--config", str(cfg), "--output-dir", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("melalib train: error: ") and words in err
    assert not (tmp_path / "out").exists()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# ------------------------------------------------------------------ swapped checkpoints
def _crash_in_second_epoch(monkeypatch) -> None:
    real = engine.Trainer.epoch
    calls = {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.Trainer, "epoch", crash)


@pytest.mark.parametrize(("other", "words"), [
    (dict(backbone="resnet14t"), "backbone: checkpoint 'resnet14t', config 'resnet10t'"),
    (dict(synthetic_task="multiclass"), "n_outputs: checkpoint 7, config 1"),
], ids=["another-backbone", "another-class-count"])
def test_resume_with_a_swapped_checkpoint_is_refused(tiny_cfg, monkeypatch, other, words):
    cfg = tiny_cfg(name="mine", fold=0, epochs=2)
    with monkeypatch.context() as patch:
        _crash_in_second_epoch(patch)
        with pytest.raises(KeyboardInterrupt):
            melalib.train(cfg)
    foreign = tiny_cfg(name="foreign", fold=0, **other)
    melalib.train(foreign)
    mine = cfg.run_dir / "checkpoints" / "fold0_last.pt"
    shutil.copy(foreign.run_dir / "checkpoints" / "fold0_last.pt", mine)
    before = mine.read_bytes()
    with pytest.raises(CheckpointError) as info:
        melalib.train(cfg)
    assert str(mine) in str(info.value) and words in str(info.value)
    assert "was made for another model" in str(info.value)
    assert mine.read_bytes() == before  # refused, not overwritten
    assert not (cfg.run_dir / "oof_fold0.csv").exists()


# ------------------------------------------------------------------------- environment
@pytest.mark.parametrize(("native", "emulated", "dtype"), [
    (False, True, "float16"),  # T4 (sm 7.5): bf16 tensors exist, but only emulated
    (True, True, "bfloat16"),  # A100 / H100
])
def test_auto_precision_uses_bf16_only_where_it_is_native(tiny_cfg, monkeypatch, native,
                                                          emulated, dtype) -> None:
    import torch

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or (including_emulation and emulated)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    precision = device.resolve_precision(tiny_cfg(amp=True, amp_dtype="auto"),
                                         torch.device("cuda"))
    assert precision.enabled and precision.dtype == getattr(torch, dtype)
    assert precision.scaler == (dtype == "float16")  # fp16 needs a gradient scaler
