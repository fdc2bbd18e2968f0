"""ISIC 2024 (SLICE-3D): the official table layout, images from ``train-image.hdf5``, patient
folds, the ``tbp_lv_*`` features (metadata encoder and `melalib stack`), the ``iddx_*``
diagnosis target.

Built from ``../shared/data/isic2024_sample`` (50 real rows with all 55 columns and their tile
crops; skipped when absent): its table as ``train-metadata.csv`` and an HDF5 archive of its
crops as the official ``train-image.hdf5`` (isic_id -> JPEG bytes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import melalib
from melalib.config import DataConfig
from melalib.data.build import configured_folds
from melalib.data.images import image_exists, image_nbytes, member_bytes, read_image
from melalib.data.load import load_table
from melalib.data.missing import find_missing
from melalib.data.sources.isic2024 import load_isic2024
from melalib.features import MetaEncoder, tbp_columns
from melalib.targets import DIAG9_MALIGNANT, DIAGNOSIS_CLASSES, report_probs, training_table
from melalib.tasks import ISIC2024

h5py = pytest.importorskip("h5py")
pytestmark = [pytest.mark.realdata, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def sample(shared_data: Path) -> Path:
    return shared_data / "isic2024_sample"


@pytest.fixture(scope="module")
def official(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample in the official Kaggle layout: train-metadata.csv + train-image.hdf5."""
    out = tmp_path_factory.mktemp("isic2024")
    shutil.copy(sample / "sample_metadata.csv", out / "train-metadata.csv")
    with h5py.File(out / "train-image.hdf5", "w") as archive:
        for path in sorted((sample / "images").glob("*.jpg")):
            archive.create_dataset(path.stem, data=np.array(path.read_bytes()))
    return out


def test_reads_the_official_table_and_the_hdf5_images(official: Path, sample: Path) -> None:
    table = load_isic2024(official)
    raw = pd.read_csv(sample / "sample_metadata.csv")
    df = table.df
    assert table.task == ISIC2024 and len(df) == 50 and (df["split"] == "train").all()
    assert df["label"].tolist() == raw["target"].tolist()
    assert (df["group_id"] == raw["patient_id"]).all()  # patients: the folds' groups
    numeric = [c for c in raw.columns if (c.startswith("tbp_lv_") or c ==
                                          "clin_size_long_diam_mm")
               and pd.api.types.is_numeric_dtype(raw[c])]
    assert tbp_columns(df) == numeric and len(numeric) >= 30
    assert np.allclose(df[numeric].to_numpy(float), raw[numeric].to_numpy(float), equal_nan=True)
    assert df["tbp_lv_location"].tolist() == raw["tbp_lv_location"].tolist()  # text kept
    for i in (0, 17, 49):  # pixels from the archive = pixels of the crop file
        member, isic = df["image_path"].iat[i], df["image_id"].iat[i]
        assert member == str(official / "train-image.hdf5" / isic)
        original = sample / "images" / f"{isic}.jpg"
        assert np.array_equal(read_image(member), read_image(original))
        assert image_nbytes(member) == original.stat().st_size == df["image_bytes"].iat[i]
    assert not image_exists(official / "train-image.hdf5" / "ISIC_0000000")
    assert find_missing(table).rows.empty
    folder = load_isic2024(official, image_dir=sample / "images")  # or a folder of JPEGs
    assert Path(folder.df["image_path"].iat[0]).parent == sample / "images"


def test_an_absent_archive_member_is_a_missing_image(official: Path, tmp_path: Path) -> None:
    shutil.copy(official / "train-metadata.csv", tmp_path / "train-metadata.csv")
    table = load_isic2024(official)
    kept = table.df["image_id"].iloc[1:]
    with h5py.File(tmp_path / "train-image.hdf5", "w") as archive:
        for isic, path in zip(kept, table.df["image_path"].iloc[1:], strict=True):
            archive.create_dataset(isic, data=np.array(member_bytes(path)))
    missing = find_missing(load_isic2024(tmp_path))
    assert missing.rows["image_id"].tolist() == [table.df["image_id"].iat[0]]


def test_folds_group_patients(official: Path) -> None:
    cfg = DataConfig(dataset="isic2024", data_dir=str(official), n_folds=3)
    table = configured_folds(load_table(cfg), cfg)
    assert table.df.groupby("patient_id")["fold"].nunique().max() == 1
    twice = table.df["patient_id"].value_counts()
    assert (twice > 1).any()  # the sample has a patient with two lesions: one fold


def test_tbp_feature_set_feeds_the_measurements_to_the_metadata_encoder(official: Path) -> None:
    df = load_isic2024(official).df
    tbp = MetaEncoder("tbp").fit(df)
    plain = MetaEncoder("default").fit(df)
    assert set(tbp.feature_names) - set(plain.feature_names) == set(tbp_columns(df))
    x = tbp.transform(df)
    j = tbp.feature_names.index("tbp_lv_areaMM2")
    area = df["tbp_lv_areaMM2"].to_numpy(float)
    assert np.allclose(x[:, j], (area - area.mean()) / area.std())  # training statistics


def test_stack_runs_on_the_sample_with_tbp_and_patient_features(official: Path,
                                                                 tmp_path: Path) -> None:
    from melalib.cli import main

    assert main(["stack", "--set", "dataset=isic2024", "--set", f"data_dir={official}",
                 "--set", "n_folds=3", "--name", "stack24", "--output-dir", str(tmp_path),
                 "--seeds", "1", "--n-boot", "20", "--model", "logistic"]) == 0
    metrics = json.loads((tmp_path / "stack24" / "metrics.json").read_text())
    assert "tbp_lv_areaMM2" in metrics["features"]
    assert "tbp_lv_areaMM2__prank" in metrics["features"]  # within the patient
    assert "ctx_n_images" in metrics["features"]
    oof = pd.read_csv(tmp_path / "stack24" / "oof.csv")
    assert len(oof) == 50 and oof["prob_malignant"].between(0, 1).all()
    assert 0.0 <= metrics["oof"]["pauc_80"] <= 0.2


def test_iddx_gives_a_diagnosis_target_reported_as_malignancy(official: Path, tiny_cfg) -> None:
    table = load_isic2024(official)
    raw_iddx3 = table.df["iddx_3"].fillna("")
    assert (table.df.loc[raw_iddx3 == "Basal cell carcinoma", "diagnosis"] == "BCC").all()
    assert (table.df.loc[raw_iddx3.str.startswith("Melanoma"), "diagnosis"] == "MEL").all()
    dx = training_table(table, "diagnosis")
    assert dx.task == DIAG9_MALIGNANT
    malignant = np.isin(dx.df["label"], [DIAGNOSIS_CLASSES.index(c) for c in ("MEL", "BCC",
                                                                               "SCC")])
    assert (malignant == (table.df["label"] == 1)).all()
    probs = np.random.default_rng(0).dirichlet(np.ones(9), 4)
    expected = probs[:, [0, 2, 5]].sum(axis=1)  # MEL + BCC + SCC
    assert np.allclose(report_probs(probs, DIAG9_MALIGNANT)[:, 0], expected)
    cfg = tiny_cfg(dataset="isic2024", data_dir=str(official), target="diagnosis",
                   features="tbp", fold=0)
    melalib.train(cfg)  # images read from the archive through the data loader
    oof = pd.read_csv(cfg.run_dir / "oof_fold0.csv")
    assert {"prob_malignant", "dx_MEL", "dx_BCC", "dx_SCC"} <= set(oof.columns)
    assert np.allclose(oof["prob_malignant"], oof[["dx_MEL", "dx_BCC", "dx_SCC"]].sum(axis=1))
