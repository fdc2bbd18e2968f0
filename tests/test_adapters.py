"""Adapters: the real public tables (../shared/data) and small hand-written bad inputs."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melalib.config import DataConfig
from melalib.data.load import load_table
from melalib.data.sources.custom import load_custom_csv
from melalib.data.sources.ham10000 import load_ham10000
from melalib.data.sources.image_folder import load_image_folder
from melalib.data.sources.isic2019 import load_isic2019
from melalib.data.sources.isic2020 import load_isic2020
from melalib.data.sources.merge import merge_isic2019_2020
from melalib.data.sources.milk10k import load_milk10k
from melalib.errors import DataError
from melalib.table import SITE_MAP, SITES
from melalib.tasks import HAM7, ISIC2019_8, MELANOMA, MILK11


# --------------------------------------------------------------------------------- helpers
def rows_of(path: Path) -> list[dict[str, str]]:
    """Raw rows via the csv module: an independent reading of the real files."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def image(path: Path, size: tuple[int, int] = (8, 6)) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 120, 90)).save(path)
    return path.stat().st_size


def raises(fn, *args, file: Path, row: int | None, column: str | None, **kwargs) -> DataError:
    """Call ``fn``; assert a DataError naming file, row and column (message included)."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.file == str(file) and str(file) in str(err)
    assert err.row == row
    if row is not None:
        assert f"row {row}" in str(err)
    assert err.column == column
    if column is not None:
        assert repr(column) in str(err)
    return err


# --------------------------------------------------------------------- real tables, once
@pytest.fixture(scope="module")
def isic2020(shared_data):
    return load_isic2020(shared_data / "isic2020")


@pytest.fixture(scope="module")
def isic2019(shared_data):
    return load_isic2019(shared_data / "isic2019", include_test=True)


@pytest.fixture(scope="module")
def ham(shared_data):
    return load_ham10000(shared_data / "ham10000")


@pytest.fixture(scope="module")
def milk(shared_data):
    return load_milk10k(shared_data / "milk10k")


@pytest.mark.realdata
def test_isic2020_real(isic2020, shared_data):
    df, raw = isic2020.df, rows_of(shared_data / "isic2020" / "train.csv")
    assert isic2020.task == MELANOMA and isic2020.origin.endswith("train.csv")
    assert (len(isic2020.train), len(isic2020.test)) == (33126, 10982)
    assert isic2020.train["group_id"].nunique() == 2056
    assert isic2020.test["group_id"].nunique() == 690
    assert int(isic2020.train["label"].sum()) == 584 == sum(r["target"] == "1" for r in raw)
    assert set(isic2020.test["label"]) == {-1} and set(isic2020.test["label_name"]) == {""}
    assert (df["group_id"] == df["patient_id"]).all()
    per_patient = Counter(r["patient_id"] for r in raw)
    train = isic2020.train
    assert (train["n_images"].to_numpy() == [per_patient[p] for p in train["patient_id"]]).all()
    assert train["lesion_id"].notna().all() and train["lesion_id"].nunique() == 32701
    assert df["image_path"].iloc[0].endswith(os.path.join("jpeg", "train", "ISIC_2637011.jpg"))
    assert isic2020.test["image_path"].str.contains(os.path.join("jpeg", "test")).all()
    assert df["image_bytes"].isna().all()  # no 2020 images in shared data
    assert int((train["sex"] == "unknown").sum()) == sum(r["sex"] == "" for r in raw)


@pytest.mark.realdata
def test_isic2019_real(isic2019, shared_data):
    raw_gt = rows_of(shared_data / "isic2019" / "ISIC_2019_Training_GroundTruth.csv")
    raw_meta = rows_of(shared_data / "isic2019" / "ISIC_2019_Training_Metadata.csv")
    train = isic2019.train
    assert isic2019.task == ISIC2019_8 and len(train) == 25331 and len(isic2019.test) == 8238
    assert all(float(r["UNK"]) == 0 for r in raw_gt)  # UNK never set in training
    expected = {"NV": 12875, "MEL": 4522, "BCC": 3323, "BKL": 2624, "AK": 867, "SCC": 628,
                "VASC": 253, "DF": 239}
    assert isic2019.class_counts().to_dict() == expected
    assert Counter(c for r in raw_gt for c in expected if float(r[c]) == 1) == expected
    no_lesion = sum(r["lesion_id"] == "" for r in raw_meta)
    assert no_lesion == 2084 and isic2019.df.attrs["group_from_image"] == 2084 + 8238
    fallback = train["lesion_id"].isna()
    assert (train.loc[fallback, "group_id"] == train.loc[fallback, "image_id"]).all()
    assert (train.loc[~fallback, "group_id"] == train.loc[~fallback, "lesion_id"]).all()
    down = train["image_id"].str.endswith("_downsampled")
    assert down.sum() == 2074
    assert (train.loc[down, "isic_id"] + "_downsampled" == train.loc[down, "image_id"]).all()
    assert (train.loc[~down, "isic_id"] == train.loc[~down, "image_id"]).all()
    torso = train["site_detail"].isin(["anterior torso", "posterior torso", "lateral torso"])
    assert torso.sum() == 6915 + 2787 + 54 and (train.loc[torso, "site"] == "torso").all()


@pytest.mark.realdata
def test_ham10000_real(ham, shared_data):
    raw = rows_of(shared_data / "ham10000" / "HAM10000_metadata.csv")
    assert ham.task == HAM7 and len(ham) == 10015 and ham.df["group_id"].nunique() == 7470
    assert ham.class_counts().to_dict() == {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514,
                                            "akiec": 327, "vasc": 142, "df": 115}
    assert (ham.df["group_id"] == ham.df["lesion_id"]).all()
    assert int((ham.df["age"] == 0).sum()) == sum(r["age"] == "0" for r in raw) > 0
    assert int(ham.df["age"].isna().sum()) == sum(r["age"] == "" for r in raw)
    assert int((ham.df["sex"] == "unknown").sum()) == sum(r["sex"] == "unknown" for r in raw)
    assert int((ham.df["site"] == "unknown").sum()) == sum(
        r["localization"] == "unknown" for r in raw)
    assert set(ham.df["dataset"]) == {"vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias"}
    assert ham.df["image_path"].str.contains("images_200x150").all()
    ham.check_images()  # all 10,015 images exist
    sizes = [os.path.getsize(p) for p in ham.df["image_path"].iloc[::500]]
    assert ham.df["image_bytes"].iloc[::500].tolist() == sizes


@pytest.mark.realdata
def test_ham10000_kaggle_variant_matches(ham, shared_data):
    kaggle = load_ham10000(shared_data / "ham10000",
                           metadata_csv=shared_data / "ham10000" / "HAM10000_metadata_kaggle.csv")
    assert "dataset" not in kaggle.df
    pd.testing.assert_frame_equal(kaggle.df, ham.df.drop(columns="dataset"))


@pytest.mark.realdata
def test_milk10k_real(milk, shared_data):
    raw = rows_of(shared_data / "milk10k" / "MILK10k_Training_Metadata.csv")
    assert milk.task == MILK11 and milk.paired
    assert (len(milk.train), len(milk.test)) == (5240, 479)
    assert milk.class_counts().to_dict() == {
        "BCC": 2522, "NV": 746, "BKL": 544, "SCCKA": 473, "MEL": 450, "AKIEC": 303, "DF": 52,
        "INF": 50, "VASC": 47, "BEN_OTH": 44, "MAL_OTH": 9}
    assert (milk.df["image_id"] == milk.df["group_id"]).all()
    derm = {r["lesion_id"]: r for r in raw if r["image_type"] == "dermoscopic"}
    clin = {r["lesion_id"]: r for r in raw if r["image_type"].startswith("clinical")}
    for _, row in milk.train.iloc[::250].iterrows():
        d, c = derm[row["image_id"]], clin[row["image_id"]]
        assert Path(row["image_path"]).name == d["isic_id"] + ".jpg"
        assert Path(row["image_path_2"]).name == c["isic_id"] + ".jpg"
        assert row["skin_tone"] == float(d["skin_tone_class"])
        assert row["monet_hair_derm"] == float(d["MONET_hair"])
        assert row["monet_hair_clin"] == float(c["MONET_hair"])
    monet = [c for c in milk.df if c.startswith("monet_")]
    assert len(monet) == 14 and milk.df[monet].notna().all().all()
    assert set(milk.train["skin_tone"]) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}


@pytest.mark.realdata
def test_real_site_vocabulary_fully_mapped(isic2020, isic2019, ham, milk, shared_data):
    files = {"isic2020/train.csv": "anatom_site_general_challenge",
             "isic2020/test.csv": "anatom_site_general_challenge",
             "isic2019/ISIC_2019_Training_Metadata.csv": "anatom_site_general",
             "isic2019/ISIC_2019_Test_Metadata.csv": "anatom_site_general",
             "ham10000/HAM10000_metadata.csv": "localization",
             "milk10k/MILK10k_Training_Metadata.csv": "site",
             "milk10k/MILK10k_Test_Metadata.csv": "site"}
    for name, column in files.items():
        words = {r[column].strip().lower() for r in rows_of(shared_data / name)} - {""}
        assert words and words <= set(SITE_MAP), (name, words - set(SITE_MAP))
    for table in (isic2020, isic2019, ham, milk):
        assert set(table.df["site"]) <= set(SITES)
        known = table.df["site_detail"].str.lower().isin(["", "unknown"])
        assert ((table.df["site"] == "unknown") == known).all()


@pytest.mark.realdata
def test_real_merge_counts(isic2020, isic2019, shared_data):
    merged = merge_isic2019_2020(isic2020, isic2019)
    ids_2020 = {r["image_name"] for r in rows_of(shared_data / "isic2020" / "train.csv")}
    ids_2020 |= {r["image_name"] for r in rows_of(shared_data / "isic2020" / "test.csv")}
    isic_2019 = [r["image"].removesuffix("_downsampled")
                 for r in rows_of(shared_data / "isic2019" / "ISIC_2019_Training_GroundTruth.csv")]
    of_2020 = sum(i in ids_2020 for i in isic_2019)
    kept = [i for i in isic_2019 if i not in ids_2020]
    within = len(kept) - len(set(kept))
    attrs = merged.df.attrs
    assert (attrs["dropped_duplicates_of_2020"], attrs["dropped_duplicates_within_2019"]) == (
        of_2020, within)
    assert attrs["dropped_duplicates"] == of_2020 + within
    assert attrs["excluded_2019_test"] == 8238
    assert len(merged) == len(isic2020) + len(isic2019.train) - attrs["dropped_duplicates"]
    assert len(merged.test) == len(isic2020.test)
    from_2019 = merged.df[merged.df["source"] == "isic2019"]
    assert int(merged.train["label"].sum()) == 584 + int((from_2019["diagnosis"] == "MEL").sum())
    assert from_2019["group_id"].str.startswith("isic2019:").all()
    assert not set(from_2019["group_id"]) & set(merged.df.loc[merged.df["source"] == "isic2020",
                                                              "group_id"])


@pytest.mark.realdata
def test_load_table_real_dispatch(ham, shared_data):
    table = load_table(DataConfig(dataset="ham10000", data_dir=str(shared_data / "ham10000")))
    assert table.content_hash() == ham.content_hash()


# ------------------------------------------------------------------------ small HAM CSVs
HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset"
HAM_ROWS = ("HAM_1,ISIC_1,bkl,histo,80,male,scalp,rosendahl",
            "HAM_1,ISIC_2,bkl,histo,80,male,scalp,rosendahl",
            "HAM_2,ISIC_3,nv,follow_up,0,unknown,unknown,vidir_modern")


def ham_dir(tmp_path: Path, *rows: str, header: str = HAM_HEADER) -> Path:
    write(tmp_path / "HAM10000_metadata.csv", header, *rows)
    return tmp_path


def test_ham_small_ok_and_image_folder_parts(tmp_path):
    folder = ham_dir(tmp_path, *HAM_ROWS)
    s1 = image(folder / "HAM10000_images_part_1" / "ISIC_1.jpg")
    s3 = image(folder / "HAM10000_images_part_2" / "ISIC_3.jpg", (10, 10))
    table = load_ham10000(folder)
    df = table.df
    assert df["label_name"].tolist() == ["bkl", "bkl", "nv"]
    assert df["age"].tolist() == [80.0, 80.0, 0.0]
    assert df.loc[2, ["sex", "site"]].tolist() == ["unknown", "unknown"]
    assert Path(df.loc[2, "image_path"]).parent.name == "HAM10000_images_part_2"
    assert Path(df.loc[1, "image_path"]).parent.name == "HAM10000_images_part_1"
    assert df.loc[0, "image_bytes"] == s1 and df.loc[2, "image_bytes"] == s3
    assert np.isnan(df.loc[1, "image_bytes"])
    with pytest.raises(DataError, match="missing on disk"):
        table.check_images()


def test_missing_columns(tmp_path):
    folder = ham_dir(tmp_path, "HAM_1,ISIC_1,bkl,histo,80,scalp",
                     header="lesion_id,image_id,dx,dx_type,age,localization")
    err = raises(load_ham10000, folder, file=folder / "HAM10000_metadata.csv", row=None,
                 column="sex")
    assert "missing columns ['sex']" in str(err)


@pytest.mark.parametrize(("bad_row", "column", "words"), [
    ("HAM_3,ISIC_4,nv,histo,40,male,elbow,rosendahl", "localization", "unknown site 'elbow'"),
    ("HAM_3,ISIC_4,nv,histo,40,x,back,rosendahl", "sex", "unknown sex 'x'"),
    ("HAM_3,ISIC_4,nv,histo,forty,male,back,rosendahl", "age", "'forty' is not a number"),
    ("HAM_3,ISIC_4,nv,histo,-5,male,back,rosendahl", "age", "outside"),
    ("HAM_3,ISIC_4,nv,histo,300,male,back,rosendahl", "age", "outside"),
    ("HAM_3,ISIC_4,xyz,histo,40,male,back,rosendahl", "dx", "'xyz' is not one of the classes"),
    ("HAM_3,ISIC_2,nv,histo,40,male,back,rosendahl", "image_id", "duplicate image_id 'ISIC_2'"),
    ("HAM_3,,nv,histo,40,male,back,rosendahl", "image_id", "empty image_id"),
])
def test_ham_bad_values(tmp_path, bad_row, column, words):
    folder = ham_dir(tmp_path, *HAM_ROWS, bad_row)
    err = raises(load_ham10000, folder, file=folder / "HAM10000_metadata.csv", row=4,
                 column=column)
    assert words in str(err)


def test_unparsable_csv_names_file(tmp_path):
    folder = ham_dir(tmp_path, '"HAM_1,ISIC_1,bkl,histo,80,male,scalp,rosendahl')
    err = raises(load_ham10000, folder, file=folder / "HAM10000_metadata.csv", row=None,
                 column=None)
    assert "cannot parse CSV" in str(err)


# -------------------------------------------------------------------------- ISIC 2020 / 19
ISIC20_TRAIN = ("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
                "benign_malignant,target",
                "ISIC_0000001,IP_1,male,45.0,head/neck,unknown,benign,0",
                "ISIC_0000002,IP_1,female,,torso,melanoma,malignant,1",
                "ISIC_0000003,IP_2,,50.0,,nevus,benign,0")
ISIC20_TEST = ("image_name,patient_id,sex,age_approx,anatom_site_general_challenge",
               "ISIC_0000004,IP_3,male,70.0,palms/soles")


def isic2020_dir(tmp_path: Path, *train: str) -> Path:
    write(tmp_path / "train.csv", *(train or ISIC20_TRAIN))
    write(tmp_path / "test.csv", *ISIC20_TEST)
    return tmp_path


def test_isic2020_small_images_lesions_and_counts(tmp_path):
    folder = isic2020_dir(tmp_path)
    write(folder / "ISIC_2020_Training_GroundTruth_v2.csv", "image_name,lesion_id,target",
          "ISIC_0000001,IL_1,0", "ISIC_0000002,IL_2,1", "ISIC_0000003,IL_2,0")
    size = image(folder / "jpeg" / "train" / "ISIC_0000002.jpg")
    test_size = image(folder / "jpeg" / "test" / "ISIC_0000004.jpg", (12, 9))
    df = load_isic2020(folder).df
    assert df["split"].tolist() == ["train"] * 3 + ["test"]
    assert df["label"].tolist() == [0, 1, 0, -1]
    assert df["n_images"].tolist() == [2, 2, 1, 1]
    assert df["lesion_id"].iloc[:3].tolist() == ["IL_1", "IL_2", "IL_2"]
    assert df["image_bytes"].iloc[[1, 3]].tolist() == [size, test_size]
    assert df["image_bytes"].iloc[[0, 2]].isna().all()
    assert df["site"].tolist() == ["head_neck", "torso", "unknown", "palms_soles"]
    assert df["sex"].tolist() == ["male", "female", "unknown", "male"]
    only_train = load_isic2020(folder, include_test=False, image_dir=tmp_path / "cache")
    assert len(only_train) == 3 and only_train.df["image_path"].str.contains("cache").all()


def test_isic2020_bad_target_and_ground_truth_mismatch(tmp_path):
    folder = isic2020_dir(tmp_path, *ISIC20_TRAIN[:3], "ISIC_0000003,IP_2,,50.0,,nevus,benign,2")
    raises(load_isic2020, folder, file=folder / "train.csv", row=3, column="target")
    folder = isic2020_dir(tmp_path)
    write(folder / "ISIC_2020_Training_GroundTruth_v2.csv", "image_name,lesion_id,target",
          "ISIC_0000001,IL_1,0", "ISIC_0000002,IL_2,0")
    raises(load_isic2020, folder, file=folder / "ISIC_2020_Training_GroundTruth_v2.csv", row=2,
           column="target")


GT_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
META_HEADER = "image,age_approx,anatom_site_general,lesion_id,sex"


def onehot(name: str, *extra: str) -> str:
    on = {name, *extra}
    return ",".join("1.0" if c in on else "0.0" for c in GT_HEADER.split(",")[1:])


def isic2019_dir(tmp_path: Path, gt: list[str], meta: list[str]) -> Path:
    write(tmp_path / "ISIC_2019_Training_GroundTruth.csv", GT_HEADER, *gt)
    write(tmp_path / "ISIC_2019_Training_Metadata.csv", META_HEADER, *meta)
    return tmp_path


def test_isic2019_onehot_errors(tmp_path):
    meta = ["ISIC_0000001,55,anterior torso,,female", "ISIC_0000002,30,,BCN_1,male"]
    gt_file = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    folder = isic2019_dir(tmp_path, [f"ISIC_0000001,{onehot('NV')}",
                                     f"ISIC_0000002,{onehot('MEL', 'NV')}"], meta)
    err = raises(load_isic2019, folder, file=gt_file, row=2, column="MEL, NV")
    assert "exactly one" in str(err)
    isic2019_dir(tmp_path, [f"ISIC_0000001,{onehot('UNK')}", f"ISIC_0000002,{onehot('NV')}"], meta)
    raises(load_isic2019, folder, file=gt_file, row=1, column="UNK")
    isic2019_dir(tmp_path, [f"ISIC_0000001,{onehot('NV')}", f"ISIC_0000002,{onehot('BCC', 'UNK')}"],
                 meta)
    raises(load_isic2019, folder, file=gt_file, row=2, column="BCC, UNK")
    isic2019_dir(tmp_path, [f"ISIC_0000001,{onehot('NV')}", "ISIC_0000002," + "x,0,0,0,0,0,0,0,0"],
                 meta)
    raises(load_isic2019, folder, file=gt_file, row=2, column="MEL")
    isic2019_dir(tmp_path, [f"ISIC_0000001,{onehot('NV')}", f"ISIC_0000003,{onehot('NV')}"], meta)
    raises(load_isic2019, folder, file=gt_file, row=2, column="image")


def small_tables(tmp_path: Path):
    """A 2020 table and a 2019 table with one duplicate of 2020 and one within 2019."""
    t2020 = load_isic2020(isic2020_dir(tmp_path / "isic2020"))
    t2019 = load_isic2019(isic2019_dir(tmp_path / "isic2019", [
        f"ISIC_0000001_downsampled,{onehot('NV')}",  # = 2020 ISIC_0000001
        f"ISIC_0000009,{onehot('MEL')}",
        f"ISIC_0000009_downsampled,{onehot('MEL')}",  # = 2019 ISIC_0000009
        f"ISIC_0000010,{onehot('BCC')}",
    ], ["ISIC_0000001_downsampled,55,anterior torso,MSK_1,female",
        "ISIC_0000009,30,,IP_1,male",  # a lesion id equal to a 2020 patient id
        "ISIC_0000009_downsampled,30,,IP_1,male",
        "ISIC_0000010,70,head/neck,,male"]))
    return t2020, t2019


def test_merge_small_duplicates_and_groups(tmp_path):
    t2020, t2019 = small_tables(tmp_path)
    merged = merge_isic2019_2020(t2020, t2019)
    df = merged.df
    assert merged.task == MELANOMA
    assert df.attrs["dropped_duplicates_of_2020"] == 1
    assert df.attrs["dropped_duplicates_within_2019"] == 1
    assert df.attrs["dropped_duplicates"] == 2
    assert len(merged) == len(t2020) + len(t2019.train) - 2 == 6
    new = df[df["source"] == "isic2019"]
    assert new["image_id"].tolist() == ["ISIC_0000009", "ISIC_0000010"]
    assert new["label_name"].tolist() == ["melanoma", "benign"]
    assert new["diagnosis"].tolist() == ["MEL", "BCC"]
    assert new["group_id"].tolist() == ["isic2019:IP_1", "isic2019:ISIC_0000010"]
    with pytest.raises(DataError, match="must be a melanoma table"):
        merge_isic2019_2020(t2019, t2019)


# ----------------------------------------------------------------------------- MILK10k
MILK_HEADER = ("lesion_id,image_type,isic_id,age_approx,sex,skin_tone_class,site,MONET_hair,"
               "MONET_erythema")
MILK_ROWS = ("IL_1,clinical: close-up,ISIC_11,70,male,3,head_neck_face,0.1,0.2",
             "IL_1,dermoscopic,ISIC_12,70,male,3,head_neck_face,0.3,0.4",
             "IL_2,dermoscopic,ISIC_21,,female,2,,0.5,0.6",
             "IL_2,clinical: close-up,ISIC_22,,female,2,,0.7,0.8")
MILK_CLASSES = "lesion_id," + ",".join(MILK11.classes)


def milk_label(name: str) -> str:
    return ",".join("1.0" if c == name else "0.0" for c in MILK11.classes)


def milk_dir(tmp_path: Path, *rows: str) -> Path:
    write(tmp_path / "MILK10k_Training_Metadata.csv", MILK_HEADER, *(rows or MILK_ROWS))
    write(tmp_path / "MILK10k_Training_GroundTruth.csv", MILK_CLASSES,
          f"IL_1,{milk_label('BCC')}", f"IL_2,{milk_label('NV')}")
    return tmp_path


def test_milk_small_pairs_nested_images(tmp_path):
    folder = milk_dir(tmp_path)
    derm = image(folder / "MILK10k_Training_Input" / "IL_1" / "ISIC_12.jpg")
    clin = image(folder / "MILK10k_Training_Input" / "IL_1" / "ISIC_11.jpg", (9, 9))
    table = load_milk10k(folder, include_test=False)
    df = table.df
    assert df["image_id"].tolist() == ["IL_1", "IL_2"] and table.paired
    assert df["label_name"].tolist() == ["BCC", "NV"]
    assert df["image_path"].iloc[0].endswith(os.path.join("IL_1", "ISIC_12.jpg"))
    assert df["image_path_2"].iloc[1].endswith(os.path.join("MILK10k_Training_Input",
                                                            "ISIC_22.jpg"))
    assert df[["image_bytes", "image_bytes_2"]].iloc[0].tolist() == [derm, clin]
    assert df[["monet_hair_derm", "monet_hair_clin"]].to_numpy().tolist() == [[0.3, 0.1],
                                                                             [0.5, 0.7]]
    assert df["skin_tone"].tolist() == [3.0, 2.0] and df["site"].tolist() == ["head_neck",
                                                                              "unknown"]


def test_milk_lesion_missing_clinical_image(tmp_path):
    folder = milk_dir(tmp_path, *MILK_ROWS[:2], MILK_ROWS[2])
    err = raises(load_milk10k, folder, include_test=False,
                 file=folder / "MILK10k_Training_Metadata.csv", row=3, column="image_type")
    assert "IL_2 has no clinical close-up image row" in str(err)


def test_milk_rows_disagree(tmp_path):
    folder = milk_dir(tmp_path, *MILK_ROWS[:3], "IL_2,clinical: close-up,ISIC_22,45,female,2,,0,0")
    err = raises(load_milk10k, folder, include_test=False,
                 file=folder / "MILK10k_Training_Metadata.csv", row=4, column="age_approx")
    assert "dermoscopic row 3" in str(err)


# ------------------------------------------------------------------------ custom + folder
def test_custom_csv_binary_meta_and_split(tmp_path):
    csv_file = write(tmp_path / "mine.csv", "file,dx,who,years,gender,where,bmi,part",
                     "a,nevus,P1,40,F,back,22.5,train", "b,melanoma,P1,,m,,30,train",
                     "c,,P2,61,,upper extremity,,test")
    size = image(tmp_path / "imgs" / "a.png")
    table = load_custom_csv(csv_file, image_column="file", label_column="dx", group_column="who",
                            meta_columns={"age": "years", "sex": "gender", "site": "where",
                                          "bmi": "bmi"},
                            classes=["nevus", "melanoma"], image_dir=tmp_path / "imgs",
                            image_ext=".png", split_column="part")
    df = table.df
    assert table.task.kind == "binary" and table.task.classes == ("nevus", "melanoma")
    assert table.task.primary_metric == "roc_auc"
    assert df["label"].tolist() == [0, 1, -1] and df["split"].tolist() == ["train", "train", "test"]
    assert df["group_id"].tolist() == ["P1", "P1", "P2"]
    assert df["sex"].tolist() == ["female", "male", "unknown"]
    assert df["site"].tolist() == ["torso", "unknown", "upper_extremity"]
    assert df["meta_bmi"].iloc[:2].tolist() == [22.5, 30.0] and np.isnan(df["meta_bmi"].iloc[2])
    assert df["image_path"].iloc[0] == str(tmp_path / "imgs" / "a.png")
    assert df["image_bytes"].iloc[0] == size


def test_custom_csv_multiclass_defaults(tmp_path):
    csv_file = write(tmp_path / "m.csv", "image,label", "x.jpg,b", "y.jpg,c", "z.jpg,a")
    table = load_custom_csv(csv_file)
    assert table.task.kind == "multiclass" and table.task.classes == ("a", "b", "c")
    assert table.task.primary_metric == "balanced_accuracy"
    assert table.df["group_id"].tolist() == table.df["image_id"].tolist()
    assert table.df["image_path"].iloc[0] == str(tmp_path / "x.jpg")


@pytest.mark.parametrize(("lines", "kwargs", "row", "column", "words"), [
    (("image,label", "x.jpg,a", ",b"), {}, 2, "image", "empty image"),
    (("image,label", "x.jpg,a", "y.jpg,q"), {"classes": ["a", "b"]}, 2, "label",
     "'q' is not one of the classes"),
    (("image,label", "x.jpg,a", "y.jpg,b"), {"label_column": "dx", "image_column": "file"},
     None, "file, dx", "missing columns"),
    (("image,label,bmi", "x.jpg,a,1", "y.jpg,b,tall"), {"meta_columns": {"bmi": "bmi"}}, 2, "bmi",
     "'tall' is not a number"),
    (("image,label,loc", "x.jpg,a,moon", "y.jpg,b,"), {"meta_columns": {"site": "loc"}}, 1, "loc",
     "unknown site 'moon'"),
    (("image,label", "x.jpg,a", "y.jpg,", "z.jpg,b"), {}, 2, "label", "empty label"),
])
def test_custom_csv_bad(tmp_path, lines, kwargs, row, column, words):
    csv_file = write(tmp_path / "bad.csv", *lines)
    err = raises(load_custom_csv, csv_file, file=csv_file, row=row, column=column, **kwargs)
    assert words in str(err)


def test_image_folder(tmp_path):
    for name in ("b1.jpg", "b2.PNG", "notes.txt"):
        image(tmp_path / "benign" / name) if name != "notes.txt" else write(
            tmp_path / "benign" / name, "x")
    image(tmp_path / "malignant" / "m1.jpeg")
    write(tmp_path / "README.md", "x")
    table = load_image_folder(tmp_path)
    df = table.df
    assert table.task.classes == ("benign", "malignant") and table.task.kind == "binary"
    assert df["image_id"].tolist() == ["benign/b1.jpg", "benign/b2.PNG", "malignant/m1.jpeg"]
    assert df["label"].tolist() == [0, 0, 1] and df.attrs["ignored_files"] == 2
    assert df["age"].isna().all() and set(df["sex"]) == set(df["site"]) == {"unknown"}
    (tmp_path / "empty").mkdir()
    err = raises(load_image_folder, tmp_path, file=tmp_path / "empty", row=None, column=None)
    assert "holds no images" in str(err)
    assert len(load_image_folder(tmp_path, classes=["benign", "malignant"]).df) == 3
    with pytest.raises(DataError, match="puts 'malignant' first"):  # negative first
        load_image_folder(tmp_path, classes=["malignant", "benign"])


# ------------------------------------------------------------------------------ dispatch
def test_load_table_missing_paths(tmp_path):
    missing = tmp_path / "nowhere"
    err = raises(load_table, DataConfig(dataset="ham10000", data_dir=str(missing)), file=missing,
                 row=None, column=None)
    assert "HAM10000_metadata.csv" in str(err) and "Dataverse" in str(err)
    err = raises(load_table, DataConfig(dataset="isic2020", data_dir=str(tmp_path)),
                 file=tmp_path / "train.csv", row=None, column=None)
    assert "siim-isic-melanoma-classification" in str(err)
    err = raises(load_table, DataConfig(dataset="isic2020+2019", data_dir=str(tmp_path)),
                 file=tmp_path / "isic2020" / "train.csv", row=None, column=None)
    assert "does not exist" in str(err)
    with pytest.raises(DataError, match=r"data_dir is empty.*challenge"):
        load_table(DataConfig(dataset="milk10k"))


def test_load_table_custom_and_merged(tmp_path):
    csv_file = write(tmp_path / "c.csv", "image,label,age_years", "x,0,40", "y,1,")
    cfg = DataConfig(dataset="custom", custom_csv=str(csv_file),
                     custom_meta_columns=("age=age_years",), image_dir=str(tmp_path / "cache"))
    table = load_table(cfg)
    assert table.df["age"].iloc[0] == 40.0 and table.task.classes == ("0", "1")
    assert table.df["image_path"].iloc[0] == str(tmp_path / "cache" / "x")
    small_tables(tmp_path)
    merged = load_table(DataConfig(dataset="isic2020+2019", data_dir=str(tmp_path)))
    assert len(merged) == 6 and merged.df.attrs["dropped_duplicates"] == 2


def test_load_table_synthetic_generates_under_data_dir(tmp_path):
    from melalib.data.synthetic import VERSION

    cfg = DataConfig(dataset="synthetic", data_dir=str(tmp_path), synthetic_task="paired",
                     synthetic_patients=8, synthetic_image_size=32, synthetic_seed=3)
    table = load_table(cfg)
    folder = tmp_path / "synthetic" / f"paired_8p_32px_s3_v{VERSION}"
    assert (folder / "meta.json").is_file() and table.paired
    assert all(Path(p).parent == folder / "images" for p in table.df["image_path"])
    assert load_table(cfg).content_hash() == table.content_hash()  # cached, identical


def test_image_folder_is_a_dataset(tmp_path):
    """``dataset=image_folder`` with data_dir = root/<class>/*.jpg reaches load_image_folder;
    custom_classes sets the class order."""
    for cls, names in (("benign", ("b1.jpg", "b2.jpg")), ("melanoma", ("m1.jpg",))):
        for name in names:
            image(tmp_path / cls / name)
    table = load_table(DataConfig(dataset="image_folder", data_dir=str(tmp_path)))
    assert table.task.classes == ("benign", "melanoma")
    assert table.df["image_id"].tolist() == ["benign/b1.jpg", "benign/b2.jpg", "melanoma/m1.jpg"]
    assert table.df["label"].tolist() == [0, 0, 1]
    with pytest.raises(DataError, match="puts 'melanoma' first"):  # melanoma as negative?
        load_table(DataConfig(dataset="image_folder", data_dir=str(tmp_path),
                              custom_classes=("melanoma", "benign")))
    swapped = load_table(DataConfig(dataset="image_folder", data_dir=str(tmp_path),
                                    custom_classes=("melanoma", "benign"),
                                    positive_label="benign"))
    assert swapped.task.classes == ("melanoma", "benign")
    assert swapped.df["label"].tolist() == [0, 1, 1]
    with pytest.raises(DataError, match="needs data_dir"):
        load_table(DataConfig(dataset="image_folder"))
