"""MetaEncoder: training-only statistics, presets, serialisation, label-free context."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melalib.errors import ConfigError, DataError, LeakageError, MelalibError
from melalib.features import FEATURE_SETS, MetaEncoder
from melalib.table import SITE_MAP


def five_rows() -> pd.DataFrame:
    """Rows 0-2 train, rows 3-4 validation."""
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e"],
        "group_id": ["p1", "p1", "p2", "p3", "p3"],
        "label": [0, 1, 0, 1, 0],
        "sex": ["male", "female", "unknown", "female", "male"],
        "site": ["torso", "head_neck", "unknown", "torso", "palms_soles"],
        "age": [30.0, 50.0, 70.0, 60.0, np.nan],
        "n_images": [2, 2, 1, 2, 2],
        "split": "train",
    })


def column(enc: MetaEncoder, x: np.ndarray, name: str) -> np.ndarray:
    return x[:, enc.feature_names.index(name)]


def test_default_preset_hand_computed_values() -> None:
    df = five_rows()
    enc = MetaEncoder("default").fit(df.iloc[:3])
    x = enc.transform(df)
    assert x.dtype == np.float32 and x.shape == (5, enc.dim) and enc.dim == 12
    mean, std = 50.0, math.sqrt((20**2 + 0 + 20**2) / 3)  # train ages 30, 50, 70 (ddof 0)
    np.testing.assert_allclose(column(enc, x, "age"),
                               [-20 / std, 0, 20 / std, 10 / std, 0.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(column(enc, x, "age_missing"), [0, 0, 0, 0, 1])
    logs = np.log1p([2.0, 2.0, 1.0])
    z = (np.log1p(2.0) - logs.mean()) / logs.std()
    np.testing.assert_allclose(column(enc, x, "n_images"), [z, z, (np.log1p(1) - logs.mean())
                                                             / logs.std(), z, z], rtol=1e-6)
    np.testing.assert_array_equal(column(enc, x, "sex_male"), [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(column(enc, x, "sex_female"), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(column(enc, x, "site_torso"), [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(column(enc, x, "site_palms_soles"), [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(column(enc, x, "site_missing"), [0, 0, 1, 0, 0])
    assert x[2, :9].sum() == 1  # unknown sex and site: zeros + site_missing
    described = enc.describe().set_index("name")
    assert described.loc["age", "mean"] == pytest.approx(mean)
    assert described.loc["age", "std"] == pytest.approx(std)


def test_validation_rows_never_change_the_statistics() -> None:
    df = five_rows()
    enc = MetaEncoder("default").fit(df.iloc[:3])
    before = enc.describe()
    x = enc.transform(df)
    changed = df.copy()
    changed.loc[3:, "age"] = [5.0, 95.0]
    y = enc.transform(changed)
    pd.testing.assert_frame_equal(enc.describe(), before)
    np.testing.assert_array_equal(x[:3], y[:3])
    std = math.sqrt(800 / 3)
    assert column(enc, y, "age")[3] == pytest.approx((5 - 50) / std, rel=1e-6)
    # fitting on every row would give other statistics: the fit really used train rows only
    assert MetaEncoder("default").fit(df).describe().set_index("name").loc["age", "mean"] \
        == pytest.approx(52.5)


def test_dims_and_names_per_preset() -> None:
    df = five_rows().assign(image_bytes=[1e5, 2e5, 3e5, 4e5, 5e5])
    dims = {p: MetaEncoder(p, file_size=True).fit(df).dim for p in FEATURE_SETS}
    assert dims == {"default": 13, "isic11": 11, "context": 20, "tbp": 13, "none": 0}
    dims = {p: MetaEncoder(p).fit(df).dim for p in FEATURE_SETS}  # the file size is opt-in
    assert dims == {"default": 12, "isic11": 11, "context": 16, "tbp": 12, "none": 0}
    isic = MetaEncoder("isic11").fit(df)
    assert isic.feature_names == [
        "sex", "age", "n_images", "image_size", "site_head_neck", "site_lower_extremity",
        "site_oral_genital", "site_palms_soles", "site_torso", "site_upper_extremity",
        "site_unknown"]
    none = MetaEncoder("none")
    assert none.transform(df).shape == (5, 0) and none.feature_names == []
    plain = MetaEncoder("default").fit(df.drop(columns=["n_images", "image_bytes"]))
    assert plain.feature_names[:2] == ["sex_male", "sex_female"]
    assert plain.dim == 11
    with pytest.raises(ConfigError):
        MetaEncoder("fancy")


def test_isic11_matches_the_winners_transforms() -> None:
    df = five_rows().assign(image_bytes=[1000.0, 2000.0, np.nan, 4000.0, 8000.0],
                            patient_id=["p1", "p1", "p2", "p3", "p3"])
    enc = MetaEncoder("isic11").fit(df.iloc[:3])
    x = enc.transform(df.drop(columns=["n_images"]).assign(n_images=[2, 2, 1, 2, 2]))
    np.testing.assert_array_equal(column(enc, x, "sex"), [1, 0, -1, 0, 1])
    np.testing.assert_allclose(column(enc, x, "age"), [30 / 90, 50 / 90, 70 / 90, 60 / 90, 0],
                               rtol=1e-6)
    np.testing.assert_allclose(column(enc, x, "n_images"), np.log1p([2, 2, 1, 2, 2]), rtol=1e-6)
    train_mean = (np.log(1000) + np.log(2000)) / 2  # the missing size takes the train mean
    np.testing.assert_allclose(column(enc, x, "image_size"),
                               [np.log(1000), np.log(2000), train_mean, np.log(4000),
                                np.log(8000)], rtol=1e-6)
    np.testing.assert_array_equal(column(enc, x, "site_unknown"), [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(x[:, 4:].sum(axis=1), np.ones(5))
    # without an n_images column the count is taken per patient within the frame
    counted = MetaEncoder("isic11").fit(df.drop(columns=["n_images"]).iloc[:3])
    y = counted.transform(df.drop(columns=["n_images"]))
    np.testing.assert_allclose(column(counted, y, "n_images"), np.log1p([2, 2, 1, 2, 2]))
    with pytest.raises(DataError, match="image_bytes"):
        MetaEncoder("isic11").fit(five_rows())


def test_roundtrip_through_json_gives_identical_output() -> None:
    df = five_rows().assign(image_bytes=[1e5, 2e5, np.nan, 4e5, 5e5], skin_tone=[0, 3, 5, 1, np.nan],
                            monet_hair=[0.1, np.nan, 0.3, 0.9, 0.5],
                            meta_depth=[1.0, 2.0, 4.0, 3.0, np.nan],
                            meta_scanner=["A", "B", "A", "B", np.nan])
    for preset in FEATURE_SETS:
        enc = MetaEncoder(preset, file_size=True).fit(df.iloc[:3])
        state = json.loads(json.dumps(enc.to_dict()))
        again = MetaEncoder.from_dict(state)
        assert again.feature_names == enc.feature_names
        np.testing.assert_array_equal(again.transform(df), enc.transform(df))
    enc = MetaEncoder("default").fit(df.iloc[:3])
    x = enc.transform(df)
    assert column(enc, x, "monet_hair")[1] == pytest.approx(0.2)  # NaN -> train mean of 0.1, 0.3
    np.testing.assert_array_equal(column(enc, x, "skin_tone_3"), [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(x[4, [enc.feature_names.index(f"skin_tone_{t}")
                                        for t in range(6)]], np.zeros(6))
    np.testing.assert_array_equal(column(enc, x, "meta_scanner=B"), [0, 1, 0, 1, 0])
    depth = np.array([1.0, 2.0, 4.0])
    assert column(enc, x, "meta_depth")[3] == pytest.approx((3 - depth.mean()) / depth.std())
    with pytest.raises(ConfigError):
        MetaEncoder.from_dict({"format": "something else"})


def test_context_patient_keys_fall_back_to_group_when_patient_id_missing() -> None:
    """A missing patient_id (None / NaN / blank) counts the image under its group_id; the
    same frame with the ids filled in agrees (found by the fuzz test under pandas 3)."""
    df = pd.DataFrame({"image_id": ["a", "b", "c"], "group_id": ["g1", "g1", "g2"],
                       "sex": "male", "site": "torso", "age": [40.0, 41.0, 50.0],
                       "patient_id": [None, None, ""]})
    x = MetaEncoder("context").fit(df).transform(df)
    filled = df.assign(patient_id=["g1", "g1", "g2"])
    np.testing.assert_array_equal(MetaEncoder("context").fit(filled).transform(filled), x)


def test_context_features_ignore_labels_and_count_patient_images() -> None:
    df = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(6)],
        "group_id": ["p1", "p1", "p1", "p2", "p2", "p3"],
        "label": [0, 0, 1, 0, 1, 0], "split": "train",
        "sex": "male", "site": ["torso", "torso", "head_neck", "torso", "unknown", "torso"],
        "age": [40.0, 42.0, 44.0, 60.0, np.nan, 30.0],
        "image_bytes": [100.0, 100.0, 400.0, 50.0, 60.0, 70.0],
    })
    enc = MetaEncoder("context", file_size=True).fit(df)
    x = enc.transform(df)
    shuffled = df.assign(label=df["label"].sample(frac=1.0, random_state=3).to_numpy())
    np.testing.assert_array_equal(
        MetaEncoder("context", file_size=True).fit(shuffled).transform(shuffled), x)
    np.testing.assert_array_equal(enc.transform(df.drop(columns=["label"])), x)
    stats = enc.describe().set_index("name")

    def raw(name: str) -> np.ndarray:  # undo the standardisation
        return column(enc, x, name) * stats.loc[name, "std"] + stats.loc[name, "mean"]

    np.testing.assert_allclose(raw("ctx_site_share"), [2 / 3, 2 / 3, 1 / 3, 1 / 2, 1 / 2, 1],
                               rtol=1e-5)
    np.testing.assert_allclose(raw("ctx_same_site"), np.log1p([1, 1, 0, 0, 0, 0]), atol=1e-6)
    np.testing.assert_allclose(raw("ctx_n_images"), np.log1p([3, 3, 3, 2, 2, 1]), rtol=1e-5)
    np.testing.assert_allclose(raw("ctx_age_offset"), [-2, 0, 2, 0, 0, 0], atol=1e-5)
    logs = np.log([100.0, 100.0, 400.0])
    np.testing.assert_allclose(raw("ctx_bytes_z")[:3], (logs - logs.mean()) / logs.std(),
                               rtol=1e-5)
    assert raw("ctx_bytes_z")[5] == pytest.approx(0.0, abs=1e-6)  # a lone image
    # test patients are described by their own images only
    test_part = enc.transform(df.iloc[3:5])
    np.testing.assert_array_equal(test_part, x[3:5])


def test_errors_name_the_row_and_column() -> None:
    df = five_rows()
    with pytest.raises(ConfigError, match="fit"):
        MetaEncoder("default").transform(df)
    assert issubclass(ConfigError, MelalibError)
    enc = MetaEncoder("default").fit(df.iloc[:3])
    bad = df.copy()
    bad.loc[3, "sex"] = "M?"
    with pytest.raises(DataError, match=r"row 4, column 'sex'.*'M\?'") as info:
        enc.transform(bad)
    assert info.value.row == 4 and info.value.column == "sex"
    bad = df.copy()
    bad.loc[1, "site"] = "elbow"
    with pytest.raises(DataError, match=r"row 2, column 'site'.*'elbow'"):
        enc.transform(bad)
    with pytest.raises(DataError, match=r"'n_images'.*absent"):
        enc.transform(df.drop(columns=["n_images"]))
    with pytest.raises(DataError, match=r"row 2, column 'skin_tone'"):
        MetaEncoder("default").fit(df.assign(skin_tone=[1, 9, 2, 0, 0]))
    scanners = df.assign(meta_scanner=["A", "A", "B", "C", "A"])
    fitted = MetaEncoder("default").fit(scanners.iloc[:3])
    with pytest.raises(DataError, match=r"row 4, column 'meta_scanner'.*'C'"):
        fitted.transform(scanners)
    with pytest.raises(LeakageError, match="1 test row"):
        MetaEncoder("default").fit(df.assign(split=["train"] * 4 + ["test"]))


def test_outputs_are_finite_with_missing_values() -> None:
    df = five_rows().assign(age=[np.nan, 40.0, np.nan, np.nan, np.nan],
                            image_bytes=[np.nan, 2e5, 0.0, np.inf, 5e5],
                            n_images=[2, np.nan, 1, 2, 2])
    for preset in FEATURE_SETS:
        x = MetaEncoder(preset).fit(df.iloc[:3]).transform(df)
        assert np.isfinite(x).all(), preset
    all_missing = five_rows().assign(age=np.nan)
    enc = MetaEncoder("default").fit(all_missing)
    x = enc.transform(all_missing)
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(column(enc, x, "age_missing"), np.ones(5))


@pytest.mark.realdata
def test_real_tables_encode_finite(shared_data: Path) -> None:
    raw = pd.read_csv(shared_data / "ham10000" / "HAM10000_metadata.csv", dtype=str)
    images = shared_data / "ham10000" / "images_200x150"
    df = pd.DataFrame({
        "image_id": raw["image_id"], "group_id": raw["lesion_id"], "split": "train",
        "age": pd.to_numeric(raw["age"]), "sex": raw["sex"].fillna("unknown"),
        "site": raw["localization"].str.lower().map(SITE_MAP),
        "image_bytes": [os.path.getsize(images / f"{i}.jpg") for i in raw["image_id"]],
    })
    train, val = df.iloc[:8000], df.iloc[8000:]
    for preset in ("default", "isic11", "context"):
        enc = MetaEncoder(preset).fit(train)
        x = enc.transform(val)
        assert x.shape == (len(val), enc.dim) and np.isfinite(x).all()
    enc = MetaEncoder("default").fit(train)
    age = column(enc, enc.transform(train), "age")
    assert abs(age.mean()) < 1e-3 and abs(age.std() - 1) < 1e-3  # standardised on train
    assert enc.describe().set_index("name").loc["age", "mean"] == pytest.approx(
        train["age"].mean())
    milk = pd.read_csv(shared_data / "milk10k" / "MILK10k_Training_Metadata.csv")
    frame = pd.DataFrame({"group_id": milk["lesion_id"], "age": milk["age_approx"],
                          "sex": milk["sex"].fillna("unknown"),
                          "site": milk["site"].map(SITE_MAP).fillna("unknown"),
                          "skin_tone": milk["skin_tone_class"],
                          **{c.lower(): milk[c] for c in milk.columns if c.startswith("MONET_")}})
    enc = MetaEncoder("context").fit(frame)
    x = enc.transform(frame)
    assert enc.dim == 11 + 6 + 7 + 4 and np.isfinite(x).all()
