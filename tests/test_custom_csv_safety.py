"""Custom CSVs: labels that silently change the task, a `fold` column, NA-like ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import melalib
from melalib.data.sources.custom import load_custom_csv
from melalib.errors import DataError, LeakageError


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_numeric_labels_are_normalised(tmp_path: Path) -> None:
    """`0` beside `0.0` made a third class of a binary task."""
    csv = _csv(tmp_path / "t.csv", "image,label", ["a,0", "b,1", "c,0.0", "d,1.0", "e,+1"])
    table = load_custom_csv(csv)
    assert table.task.kind == "binary" and table.task.classes == ("0", "1")
    assert table.df["label"].tolist() == [0, 1, 0, 1, 1]
    given = load_custom_csv(csv, classes=["0.0", "1"])  # custom_classes normalised too
    assert given.task.classes == ("0", "1")


@pytest.mark.parametrize("typo, other", [("melanoma", "mel"), ("Nev", "nev"), ("mle", "mel")])
def test_rare_class_named_like_another_is_refused(tmp_path: Path, typo: str, other: str) -> None:
    rows = [f"m{i},mel" for i in range(12)] + [f"n{i},nev" for i in range(12)] + [f"x,{typo}"]
    csv = _csv(tmp_path / "t.csv", "image,label", rows)
    with pytest.raises(DataError, match=rf"'{typo}'.* (typo of|looks like) class "
                                        rf"'{other}'.*custom_classes") as info:
        load_custom_csv(csv)
    assert info.value.row == 25 and info.value.column == "label"
    table = load_custom_csv(csv, classes=sorted({"mel", "nev", typo}))  # stated: accepted
    assert len(table.task.classes) == 3


@pytest.mark.parametrize("common, rare", [(("mel", "nev"), "bcc"), (("10", "2"), "1"),
                                          (("ab", "cd"), "a")])
def test_rare_but_distinct_class_is_accepted(tmp_path: Path, common: tuple[str, str],
                                             rare: str) -> None:
    rows = [f"{c}{i},{c}" for c in common for i in range(12)] + [f"x,{rare}"]
    assert load_custom_csv(_csv(tmp_path / "t.csv", "image,label", rows)).task.n_classes == 3


def test_fold_column_is_refused_unless_named(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "t.csv", "image,label,fold", ["a,x,0", "b,y,1"])
    with pytest.raises(DataError, match=r"'fold' column.*custom_fold_column=fold"):
        load_custom_csv(csv)
    table = load_custom_csv(csv, fold_column="fold", positive_label="y")
    assert table.df["fold"].tolist() == [0, 1]


@pytest.fixture
def image_csv(tmp_path: Path):
    """A CSV of 16 images of 8 patients (two per patient), binary labels, given folds."""
    def make(folds: list[int], name: str = "t.csv") -> Path:
        rows = []
        for i in range(16):
            path = tmp_path / f"img{i}.png"
            if not path.exists():
                Image.fromarray(np.full((32, 32, 3), 40 + 10 * i, dtype=np.uint8)).save(path)
            rows.append(f"img{i}.png,{'yes' if (i // 2) % 2 else 'no'},P{i // 2},{folds[i]}")
        return _csv(tmp_path / name, "image,label,patient,fold", rows)
    return make


def _cfg(tiny_cfg, csv: Path, **kw: object) -> melalib.RunConfig:
    return tiny_cfg(dataset="custom", custom_csv=str(csv), custom_group_column="patient",
                    custom_fold_column="fold", fold=0, **kw)


def test_predefined_folds_are_used_and_audited(tiny_cfg, image_csv) -> None:
    from melalib.data.build import build_table

    folds = [(i // 4) % 2 for i in range(16)]  # patients whole, two folds
    table, _ = build_table(_cfg(tiny_cfg, image_csv(folds)))
    assert table.df["fold"].tolist() == folds
    leaky = folds.copy()
    leaky[1] = 1 - leaky[1]  # patient P0's second image in the other fold
    with pytest.raises(LeakageError, match="P0"):
        build_table(_cfg(tiny_cfg, image_csv(leaky, "leaky.csv")))
    with pytest.raises(DataError, match=r"fold 2 is outside 0\.\.1"):
        build_table(_cfg(tiny_cfg, image_csv([i % 4 // 2 * 2 for i in range(16)], "f.csv")))


@pytest.mark.parametrize("text", ["NA", "None", "null"])
def test_na_like_patient_id_is_named_not_called_empty(tmp_path: Path, text: str) -> None:
    csv = _csv(tmp_path / "t.csv", "image,label,patient", ["a,x,P1", f"b,y,{text}"])
    with pytest.raises(DataError, match=rf"'{text}', which CSV readers treat as a missing") as info:
        load_custom_csv(csv, group_column="patient")
    assert info.value.row == 2 and info.value.column == "patient"
    empty = _csv(tmp_path / "e.csv", "image,label,patient", ["a,x,P1", "b,y,"])
    with pytest.raises(DataError, match="empty patient"):
        load_custom_csv(empty, group_column="patient")


@pytest.mark.parametrize("variant, n", [("Mel", 2), ("melanoma", 3), (" MEL", 12), ("mel_", 1)])
def test_label_variants_of_a_class_are_refused_at_any_count(tmp_path: Path, variant: str,
                                                            n: int) -> None:
    """Issue 24: two `Mel` (or three `melanoma`) beside `mel` silently made a 3-class task."""
    rows = ([f"m{i},mel" for i in range(14)] + [f"n{i},nev" for i in range(14)]
            + [f"v{i},{variant}" for i in range(n)])
    csv = _csv(tmp_path / "t.csv", "image,label", rows)
    with pytest.raises(DataError, match=r"looks like class 'mel'.*custom_label_map") as info:
        load_custom_csv(csv)
    assert info.value.row == 29 and info.value.column == "label"
    table = load_custom_csv(csv, label_map={variant.strip(): "mel"})  # mapped explicitly
    assert table.task.classes == ("nev", "mel") and (table.df["label"] == 1).sum() == 14 + n


def test_binary_positive_class_is_named_by_the_labels_not_the_sort_order(tmp_path: Path
                                                                          ) -> None:
    """Issue 24: a custom `mel` / `nv` table took `nv` (sorted last) as the positive class."""
    rows = [f"m{i},mel" for i in range(4)] + [f"n{i},nv" for i in range(8)]
    table = load_custom_csv(_csv(tmp_path / "t.csv", "image,label", rows))
    assert table.task.classes == ("nv", "mel")  # (negative, positive)
    assert table.df.loc[table.df["image_id"].str.startswith("m"), "label"].eq(1).all()
    benign = load_custom_csv(_csv(tmp_path / "b.csv", "image,label",
                                  ["a,malignant", "b,benign", "c,benign"]))
    assert benign.task.classes == ("benign", "malignant")
    ambiguous = _csv(tmp_path / "a.csv", "image,label", ["a,bcc", "b,nv", "c,nv"])
    with pytest.raises(DataError, match="positive_label"):
        load_custom_csv(ambiguous)
    chosen = load_custom_csv(ambiguous, positive_label="bcc")
    assert chosen.task.classes == ("nv", "bcc") and chosen.df["label"].tolist() == [1, 0, 0]
    with pytest.raises(DataError, match="puts 'mel' first"):
        load_custom_csv(tmp_path / "t.csv", classes=["mel", "nv"])
    with pytest.raises(DataError, match="not one of the classes"):
        load_custom_csv(ambiguous, positive_label="mel")
