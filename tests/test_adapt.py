"""Test-time batch-norm adaptation (`melalib.adapt`, ``melalib evaluate --adapt-bn``): the
statistics it stores are the new images', nothing else of the model moves, the original is
untouched, the shift score still measures against the training images, and a colour-shifted
clinic's images are normalised back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import benchmark_script, ham_run_and_milk_table
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from melalib import cli
from melalib.adapt import adapt_batchnorm, image_batchnorms
from melalib.config import RunConfig
from melalib.data.load import load_table
from melalib.errors import ConfigError
from melalib.external import evaluate_external, oof_table
from melalib.inference import load_predictor
from melalib.models import FusionNet, MetaMLP
from melalib.runs import RunDir
from melalib.table import LesionTable

CPU = torch.device("cpu")


class _Batches(TensorDataset):
    """(image, meta) tensors served as melalib's batch dicts."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, meta = super().__getitem__(i)
        return {"image": image, "meta": meta, "index": torch.tensor(i)}


def _fusion() -> FusionNet:
    torch.manual_seed(0)
    return FusionNet("resnet10t", n_outputs=3, n_meta=4, meta_hidden=(8,)).eval()


def _loader(images: torch.Tensor, batch_size: int = 8) -> DataLoader:
    return DataLoader(_Batches(images, torch.randn(len(images), 4)), batch_size=batch_size)


def test_statistics_are_the_new_images_and_nothing_else_moves() -> None:
    model = _fusion()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(24, 3, 32, 32) * 0.5 + 2.0  # far from anything seen
    first = image_batchnorms(model)[0]
    assert first is model.backbone.conv1[1]  # resnet10t's stem: conv, batch norm, ...
    adapted = adapt_batchnorm(model, _loader(images), CPU)
    with torch.no_grad():  # the first batch norm's input: the stem's first convolution
        inputs = model.backbone.conv1[0](images)
    batch_means = torch.stack([inputs[i:i + 8].mean(dim=(0, 2, 3)) for i in range(0, 24, 8)])
    got = image_batchnorms(adapted)[0]
    assert torch.allclose(got.running_mean, batch_means.mean(0), atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    after = adapted.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(k.startswith("backbone.") and k.rsplit(".", 1)[1] in
                         ("running_mean", "running_var", "num_batches_tracked") for k in moved)
    assert not adapted.training and all(m.momentum == first.momentum
                                        for m in image_batchnorms(adapted))


def test_a_colour_shifted_clinic_is_normalised_back() -> None:
    """A per-channel gain and offset (another camera's colour) moves the first block's
    features; adapted on the shifted images, the model's first normalised features match
    the original model's on the original images far more closely than unadapted."""
    model = _fusion()
    images = torch.rand(64, 3, 32, 32)
    model = adapt_batchnorm(model, _loader(images, 64), CPU)  # statistics = these images
    shifted = images * torch.tensor([1.6, 0.9, 0.5]).view(1, 3, 1, 1) + torch.tensor(
        [0.3, -0.2, 0.4]).view(1, 3, 1, 1)
    adapted = adapt_batchnorm(model, _loader(shifted, 64), CPU)

    def stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return m.backbone.bn1(m.backbone.conv1(x))

    reference = stem(model, images)
    before = (stem(model, shifted) - reference).abs().mean()
    after = (stem(adapted, shifted) - reference).abs().mean()
    assert after < 0.5 * before


def test_refuses_a_model_without_image_batch_norm_and_an_empty_table() -> None:
    with pytest.raises(ConfigError, match="image backbone"):
        adapt_batchnorm(MetaMLP(4, 3), _loader(torch.rand(4, 3, 32, 32)), CPU)
    with pytest.raises(ConfigError, match="at least one image"):
        adapt_batchnorm(_fusion(), _loader(torch.rand(0, 3, 32, 32)), CPU)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunConfig]:
    return ham_run_and_milk_table(tmp_path_factory.mktemp("adapt"))


def test_adapted_predictor_changes_probabilities_not_the_shift_score(trained) -> None:
    run, ext = trained
    table = load_table(ext.data)
    df = table.df[table.df["label"] >= 0].reset_index(drop=True)
    rows = LesionTable(df, table.task, origin="ext")
    predictor = load_predictor(run)
    plain = predictor.predict(rows, progress=False)
    adapted = predictor.adapted(rows, progress=False)
    moved = adapted.predict(rows, progress=False)
    columns = predictor.task.prob_columns
    assert not np.allclose(plain[columns], moved[columns], atol=1e-4)
    assert np.allclose(plain["image_shift"], moved["image_shift"], rtol=1e-5)
    again = predictor.predict(rows, progress=False)  # the original members are untouched
    assert np.allclose(plain[columns], again[columns])
    assert all(m.shift_model is not None for m in adapted.members)


def test_evaluate_adapt_bn_from_the_cli_and_out_of_fold(trained, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    run, ext = trained
    table = load_table(ext.data)
    df = table.df[table.df["label"] >= 0]
    csv = tmp_path / "ext.csv"
    pd.DataFrame({"image": df["image_path"], "label": np.asarray(table.task.classes)[df["label"]]
                  }).to_csv(csv, index=False)
    assert cli.main(["evaluate", str(run), "--csv", str(csv), "--adapt-bn", "--n-boot",
                     "10"]) == 0
    out = run.parent / "ham_on_ext_adapt_bn"
    assert "batch norm adapted" in capsys.readouterr().out
    stored = json.loads(RunDir.read(out).metrics_path().read_text())
    assert stored["adapt_bn"] is True and "batch norm adapted" in stored["summary"]
    plain = evaluate_external(run, oof_table(run), oof=True, n_boot=10, progress=False)
    own = evaluate_external(run, oof_table(run), oof=True, adapt_bn=True, n_boot=10,
                            progress=False)
    assert len(own.frame) == len(plain.frame) and own.adapt_bn and not plain.adapt_bn
    columns = list(own.mapping.task.prob_columns)
    assert not np.allclose(own.frame[columns], plain.frame[columns], atol=1e-4)
    assert own.frame["image_id"].tolist() == plain.frame["image_id"].tolist()


def test_benchmark_adapt_bn_figures_table_and_goal_line(trained, tmp_path: Path) -> None:
    bench = benchmark_script("external_results")
    run, ext = trained
    table = load_table(ext.data)
    args = bench.parse([str(run), "--fold", "0", "--n-boot", "20", "--adapt-bn"])
    res = bench.measure_run(str(run), table, "milk10k", args)
    ev = evaluate_external(run, table, n_boot=20, progress=False, adapt_bn=True,
                           skip_missing_images=True)
    ada = res["external_adapt_bn"]
    assert ada["balanced_accuracy"]["estimate"] == pytest.approx(ev.metrics["balanced_accuracy"])
    assert ada["n"] == res["external"]["n"] == len(ev.frame)
    home = res["in_domain_adapt_bn"]
    assert home["n"] == res["in_domain"]["all"]["n"]  # fold 0's rows, re-predicted adapted
    assert {"external_adapt_bn", "in_domain_adapt_bn"} <= set(res["seconds"])
    recorded = tmp_path / "external.json"
    recorded.write_text(json.dumps({"command": "python benchmarks/external_results.py x",
                                    "git_commit": "0" * 40, "results": [res]}))
    section = bench.render_section(recorded)
    start = section.index("### Test-time batch-norm adaptation")
    row = next(line for line in section[start:] if line.startswith(f"| {run.name} | "))
    plain, adapted = (f"{r['balanced_accuracy']['estimate']:.3f} [" for r in (res["external"],
                                                                              ada))
    assert f"{plain}" in row.split(" -> ")[0] and adapted in row.split(" -> ")[1]
    assert f"{home['balanced_accuracy']['estimate']:.3f} [" in row
    goal = next(line for line in section if line.startswith("Goals"))
    assert (f"{run.name}, batch norm adapted: external balanced accuracy "
            f"{ada['balanced_accuracy']['estimate']:.3f}") in goal
    assert any(line.startswith(f"| {run.name}, batch norm adapted | ") for line in section)
    change = (ada["balanced_accuracy"]["estimate"]
              - res["external"]["balanced_accuracy"]["estimate"])
    line = next(x for x in section if x.startswith("Adapting changed"))
    assert f"{run.name}: external balanced accuracy {change:+.3f}" in line
    without = bench.measure_run(str(run), table, "milk10k", bench.parse(
        [str(run), "--fold", "0", "--n-boot", "20"]))
    assert "external_adapt_bn" not in without


def test_benchmark_names_rows_that_share_every_option() -> None:
    bench = benchmark_script("external_results")

    def row(name: str, own: float, ext: float, options: dict) -> dict:
        cell = lambda v: {"estimate": v, "low": v, "high": v}  # noqa: E731
        return {"run": f"outputs/ext/{name}", "options": options,
                "in_domain": {"all": {"n": 9, "balanced_accuracy": cell(own)}},
                "external": {"balanced_accuracy": cell(ext), "melanoma_auc": cell(0.8)}}

    same = {"dataset": "ham10000", "color_constancy": True}
    line = bench._replicates_line([row("a", 0.70, 0.57, same), row("b", 0.72, 0.59, same),
                                   row("c", 0.69, 0.55, {**same, "color_constancy": False})])
    assert line.startswith("a and b share every option")
    assert "external balanced accuracy 0.570 / 0.590" in line and " c " not in line
    assert bench._replicates_line([row("a", 0.7, 0.5, same)]) == ""
