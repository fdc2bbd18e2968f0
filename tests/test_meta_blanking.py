"""Metadata blanking (``meta_blanking``): during training only, a row's age, sex and site are
each replaced by "not recorded" with the given probability, drawn per (seed, epoch, row), so
a model meets missing metadata at prediction gracefully."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from melalib.config import RunConfig
from melalib.data.load import load_table
from melalib.errors import ConfigError
from melalib.features import BLANKABLE, blanked_variants
from melalib.runtime import fold_data, make_dataset
from melalib.table import LesionTable


def _setup(tmp_path: Path, blanking: float) -> tuple[RunConfig, LesionTable, object]:
    cfg = RunConfig.from_dict({"dataset": "synthetic", "synthetic_patients": 12,
                               "synthetic_image_size": 16, "image_size": 16, "n_folds": 2,
                               "data_dir": str(tmp_path), "meta_blanking": blanking})
    from melalib.data.build import configured_folds

    table = configured_folds(load_table(cfg.data), cfg.data)
    return cfg, table, fold_data(cfg, table, 0)


def _metas(dataset) -> np.ndarray:
    return np.stack([dataset[i]["meta"].numpy() for i in range(len(dataset))])


def test_variant_k_blanks_the_bits_of_k(tmp_path: Path) -> None:
    _, _, fd = _setup(tmp_path, 0.0)
    df = fd.train_df
    variants = blanked_variants(fd.encoder, df)
    assert variants.shape == (8, len(df), fd.encoder.dim)
    assert np.allclose(variants[0], fd.meta_train)
    everything = df.assign(**{c: v for c, v in BLANKABLE})
    assert np.allclose(variants[7], fd.encoder.transform(everything))
    assert not np.allclose(variants[1], variants[0])  # age blanked changes the encoding


def test_training_rows_are_blanked_at_the_rate_and_validation_never(tmp_path: Path) -> None:
    cfg, table, fd = _setup(tmp_path, 1.0)
    train = make_dataset(cfg, table, fd.train_df, fd.meta_train, train=True, seed=3,
                         encoder=fd.encoder)
    assert np.allclose(_metas(train), blanked_variants(fd.encoder, fd.train_df)[7])
    val = make_dataset(cfg, table, fd.val_df, fd.meta_val, train=False, encoder=fd.encoder)
    assert np.allclose(_metas(val), fd.meta_val)
    cfg0, _, _ = _setup(tmp_path, 0.0)
    off = make_dataset(cfg0, table, fd.train_df, fd.meta_train, train=True, seed=3,
                       encoder=fd.encoder)
    assert np.allclose(_metas(off), fd.meta_train)


def test_half_blanking_is_reproducible_per_epoch_and_changes_between_epochs(tmp_path: Path
                                                                           ) -> None:
    cfg, table, fd = _setup(tmp_path, 0.5)
    make = lambda: make_dataset(cfg, table, fd.train_df, fd.meta_train, train=True,  # noqa: E731
                                seed=3, encoder=fd.encoder)
    a, b = make(), make()
    assert np.array_equal(_metas(a), _metas(b))
    changed = np.any(_metas(a) != fd.meta_train, axis=1)
    assert 0 < changed.mean() < 1
    a.set_epoch(1)
    assert not np.array_equal(_metas(a), _metas(b))


def test_the_rate_must_be_a_probability() -> None:
    with pytest.raises(ConfigError, match="meta_blanking"):
        RunConfig.from_dict({"meta_blanking": 1.5})
