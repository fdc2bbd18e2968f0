"""Typed config: flat and nested keys, CLI strings, unknown keys, wrong types, presets."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from melalib.config import RunConfig, Spec, choices, coerce, field_index, read_yaml_config, spec
from melalib.errors import ConfigError
from melalib.presets import NEEDS as PRESET_NEEDS
from melalib.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]


def test_field_names_are_unique_and_flat_roundtrip() -> None:
    index = field_index()
    cfg = RunConfig()
    flat = cfg.to_flat()
    assert set(flat) == set(index)
    assert RunConfig.from_dict(flat) == cfg


def test_nested_and_flat_keys_agree() -> None:
    a = RunConfig.from_dict({"train": {"epochs": 3}, "model": {"backbone": "resnet34"}})
    b = RunConfig.from_dict({"epochs": 3, "backbone": "resnet34"})
    assert a == b and a.train.epochs == 3 and a.model.backbone == "resnet34"


def test_cli_strings_are_coerced() -> None:
    cfg = RunConfig().with_overrides(["epochs=7", "train.lr=0.01", "amp=false",
                                      "meta_hidden=(32, 16)", "custom_classes=a,b"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.01 and cfg.train.amp is False
    assert cfg.model.meta_hidden == (32, 16)
    assert cfg.data.custom_classes == ("a", "b")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("epochs", "three", "epochs must be an integer"),
    ("lr", "fast", "lr must be a number"),
    ("amp", "maybe", "amp must be true or false"),
    ("epochs", True, "epochs must be an integer"),
    ("epochs", 0, "epochs must be >= 1"),
    ("dataset", "isic2030", "dataset must be one of"),
    ("fold", 9, "fold must be -1"),
    ("label_smoothing", 1.5, "label_smoothing must be in [0, 1)"),
])
def test_bad_values_raise_config_error(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig.from_dict({key: value})


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch'.*did you mean epochs"):
        RunConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="belongs to section 'train'"):
        RunConfig.from_dict({"model": {"epochs": 3}})


def test_no_input_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="no input"):
        RunConfig.from_dict({"use_image": False, "use_meta": False})


def test_fingerprint_ignores_names_and_paths_but_not_training() -> None:
    base = RunConfig()
    same = RunConfig.from_dict({"name": "x", "output_dir": "/tmp/y", "fold": 1, "num_workers": 4})
    other = RunConfig.from_dict({"lr": 0.5})
    assert base.fingerprint() == same.fingerprint()
    assert base.fingerprint() != other.fingerprint()


def test_every_preset_is_a_valid_config() -> None:
    for name in PRESETS:
        needs = {key: "x" for key in PRESET_NEEDS.get(name, {})}
        cfg = RunConfig.from_preset(name, **needs)
        for key, value in PRESETS[name].items():
            got = cfg.to_flat()[key]
            assert got == (list(value) if isinstance(value, tuple) else value), (name, key)
    with pytest.raises(ConfigError, match="unknown preset"):
        RunConfig.from_preset("isic2020_effnet")


def test_the_robust_preset_is_the_measured_combination() -> None:
    """ham10000_lite0_robust is the config docs/results.md section 6 measured as ham_combo:
    the 6-epoch recipe with three options set on the command line."""
    preset = RunConfig.from_preset("ham10000_lite0_robust", data_dir="d")
    measured = RunConfig.from_preset("ham10000_lite0_pretrained_6ep", data_dir="d",
                                     color_constancy=True, border_aug="vignette",
                                     meta_blanking=0.3)
    assert preset.to_flat() == measured.to_flat()
    assert preset.to_flat() != RunConfig.from_preset("ham10000_lite0_pretrained_6ep",
                                                     data_dir="d").to_flat()


def test_a_preset_names_the_keys_its_user_must_set() -> None:
    assert set(PRESET_NEEDS) <= set(PRESETS)
    for name, needs in PRESET_NEEDS.items():
        for key in needs:
            with pytest.raises(ConfigError, match=f"preset {name} needs {key}, .*--set {key}="):
                RunConfig.from_preset(name)
    cfg = RunConfig.from_preset("ham10000_lite0_guided", guide_masks="masks")
    assert cfg.train.cam_guidance == 1.0 and cfg.data.guide_masks == "masks"


def test_yaml_with_preset_and_sections(tmp_path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("preset: tiny\ntrain:\n  epochs: 2\nbackbone: resnet18\n")
    flat = read_yaml_config(path)
    cfg = RunConfig.from_yaml(path)
    assert flat["epochs"] == 2 and cfg.train.epochs == 2
    assert cfg.model.backbone == "resnet18" and cfg.data.n_folds == 2  # from the preset
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epohcs: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'epohcs'"):
        RunConfig.from_yaml(bad)


def test_coerce_rejects_nonsense_lists() -> None:
    with pytest.raises(ConfigError):
        coerce(5, tuple[int, ...], "meta_hidden")
    assert coerce("64,32", tuple[int, ...], "meta_hidden") == (64, 32)


def test_config_reference_doc_is_current() -> None:
    from pathlib import Path

    from melalib.config import reference_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text().strip() == reference_markdown().strip(), (
        "docs/config.md is stale: python -c 'from melalib.config import reference_markdown; "
        "print(reference_markdown())' > docs/config.md")
    for name in field_index():
        assert f"`{name}`" in doc.read_text()


NEEDS = {"custom": {"custom_csv": "x.csv"}, "image_folder": {"data_dir": "imgs"}}
CHOICE_FIELDS = [name for name in field_index() if spec(name).choices is not None]
BOUNDED_FIELDS = [name for name in field_index() if spec(name).bounds()]


def test_every_field_has_one_declaration() -> None:
    """Each field carries its `Spec` (help, choices, bounds): nothing else declares it."""
    for name, (_section, f) in field_index().items():
        assert isinstance(f.metadata.get("spec"), Spec), name
        assert spec(name).help.strip(), f"{name} has no help"
    # the choice fields are the options an owner implements
    assert {"dataset", "aspect", "augment", "scheduler", "loss", "sampler", "tta",
            "class_weighting", "amp_dtype", "fold_stratify", "target"} <= set(CHOICE_FIELDS)


@pytest.mark.parametrize("key", CHOICE_FIELDS)
def test_choices_are_the_owners_registries(key: str) -> None:
    """validate accepts every choice its owner registers (and only those): a name added to
    an owner's registry is a valid config value without editing config.py."""
    lazy = spec(key).choices
    owner = getattr(importlib.import_module(lazy.module), lazy.name)
    assert choices(key) == tuple(owner)
    for value in owner:
        RunConfig.from_dict({key: value, **NEEDS.get(str(value), {})})
    wrong = "no-such-choice" if isinstance(choices(key)[0], str) else 3
    with pytest.raises(ConfigError, match=rf"^{key} must be one of "
                                          rf"{re.escape(', '.join(map(str, owner)))}; got"):
        RunConfig.from_dict({key: wrong})


@pytest.mark.parametrize("key", BOUNDED_FIELDS)
def test_declared_bounds_are_enforced(key: str) -> None:
    """A value just outside a field's declared range is refused, naming the field and the
    range; the bound itself is accepted where the range includes it."""
    s = spec(key)
    kind = field_index()[key][1].type
    step = 1 if kind == "int" else 1e-9
    low = s.ge - step if s.ge is not None else s.gt if s.gt is not None else None
    high = s.le + step if s.le is not None else s.lt if s.lt is not None else None
    for bad in (v for v in (low, high) if v is not None):
        with pytest.raises(ConfigError, match=rf"^{key} must be {re.escape(s.bounds())}"):
            RunConfig.from_dict({key: bad})
    for edge in (v for v in (s.ge, s.le) if v is not None):
        if key != "fold" or edge < RunConfig().data.n_folds:
            RunConfig.from_dict({key: edge})


def test_import_config_loads_no_heavy_library() -> None:
    """`import melalib.config` imports no torch, timm, albumentations or scikit-learn: the
    owners' registries are read only when a value is validated."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import melalib.config"],
                          capture_output=True, text=True, check=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "melalib" in imported  # the timing lines were read
    assert not imported & {"torch", "timm", "albumentations", "sklearn", "cv2"}, imported


def test_help_lists_every_field_with_its_choices(capsys: pytest.CaptureFixture[str]) -> None:
    """`melalib train --help` lists each config field from its declaration."""
    from melalib.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in field_index():
        assert f" {name} (" in out, name
    assert f"choices: {', '.join(choices('dataset'))}" in out
    assert "image_folder" in out


def test_augment_and_image_folder_fields() -> None:
    assert RunConfig().data.augment == "medium"  # today's training pipeline
    assert RunConfig.from_dict({"augment": "heavy"}).data.augment == "heavy"
    with pytest.raises(ConfigError, match="dataset=image_folder needs data_dir"):
        RunConfig.from_dict({"dataset": "image_folder"})


def test_a_mistyped_choice_gets_a_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="did you mean ham10000"):
        RunConfig.from_dict({"dataset": "ham1000"})
    with pytest.raises(ConfigError, match=r"got 'zzz'$"):  # nothing close: no guess
        RunConfig.from_dict({"dataset": "zzz"})


def test_explicit_beats_the_preset_and_the_sources_say_who_set_what(tmp_path: Path) -> None:
    """A YAML file's preset under its keys, --preset under the file, --set above both."""
    from melalib import cli

    config = tmp_path / "c.yaml"
    config.write_text("preset: tiny\nepochs: 3\n")
    args = cli.build_parser().parse_args(["train", "--config", str(config), "--set",
                                          "lr=0.01", "--name", "x"])
    cfg = cli.load_config(args)
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.backbone) == (3, 0.01, "resnet10t")
    assert cfg.preset == "tiny"
    assert cfg.sources["backbone"] == "preset tiny"
    assert cfg.sources["epochs"] == f"config {config}"
    assert cfg.sources["lr"] == cfg.sources["name"] == "command line"
    assert "seed" not in cfg.sources  # a default: nobody set it
    with pytest.raises(ConfigError, match="unknown preset 'tinny'"):
        cli.load_config(cli.build_parser().parse_args(["train", "--preset", "tinny",
                                                       "--config", str(config)]))
