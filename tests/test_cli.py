"""The command line a new user meets: --version, presets, help texts, what train and prepare
print (per-fold metrics, rank 0 only, a human summary)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

import melalib
from melalib import cli
from melalib.presets import DESCRIPTIONS, PRESETS


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"melalib {melalib.__version__}"


def test_every_option_of_every_command_has_help() -> None:
    parser = cli.build_parser()
    missing = []
    for name, sub in {"": parser, **_subparsers(parser)}.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_presets_lists_every_name_with_its_description(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert set(DESCRIPTIONS) == set(PRESETS), set(DESCRIPTIONS) ^ set(PRESETS)
    assert all(d and "\n" not in d for d in DESCRIPTIONS.values())
    assert cli.main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, description in DESCRIPTIONS.items():
        assert any(line.split()[0] == name and line.endswith(description) for line in lines
                   if line.strip()), name


def _summary(folds_done: list[int], n_folds: int = 3) -> dict:
    per_fold = {str(k): {"roc_auc": 0.5 + k / 10, "n": 10} for k in folds_done}
    summary = {"run_dir": "outputs/x", "folds_done": folds_done, "n_folds": n_folds,
               "task": {"primary_metric": "roc_auc"}, "per_fold": per_fold}
    if len(folds_done) == n_folds:
        summary.update(oof_primary=0.77, primary_metric="roc_auc")
    return summary


def test_train_report_shows_the_trained_folds_metrics() -> None:
    one = cli.train_report(_summary([0, 2]), fold=2)
    assert one["fold_metrics"] == {"2": {"roc_auc": 0.7, "n": 10}}
    assert "oof_primary" not in one and one["primary_metric"] == "roc_auc"
    every = cli.train_report(_summary([0, 1, 2]), fold=-1)
    assert set(every["fold_metrics"]) == {"0", "1", "2"} and every["oof_primary"] == 0.77


@pytest.mark.parametrize(("rank_summary", "prints"), [({}, False), (None, True)])
def test_train_prints_on_rank_zero_only(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        rank_summary: dict | None, prints: bool) -> None:
    """Under torchrun the engine returns an empty summary on ranks > 0: nothing printed."""
    import melalib.engine

    summary = _summary([1]) if rank_summary is None else rank_summary
    monkeypatch.setattr(melalib.engine, "train", lambda cfg: summary)
    assert cli.main(["train", "--preset", "tiny", "--fold", "1", "--json"]) == 0
    out = capsys.readouterr().out
    if prints:
        assert json.loads(out)["fold_metrics"] == {"1": {"roc_auc": 0.6, "n": 10}}
    else:
        assert out == ""


def test_train_fold_prints_real_fold_metrics(tiny_cfg, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_cfg()
    argv = ["train", "--preset", "tiny", "--set", f"data_dir={cfg.data.data_dir}",
            "--output-dir", cfg.output_dir, "--name", "cli", "--fold", "1"]
    assert cli.main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["folds_done"] == [1] and list(report["fold_metrics"]) == ["1"]
    assert 0.0 <= report["fold_metrics"]["1"][report["primary_metric"]] <= 1.0
    # without --json: lines a person reads, the fold's score with its CI, the JSON's file
    assert cli.main(argv) == 0  # finished: resumes, trains nothing
    lines = capsys.readouterr().out.strip().splitlines()
    score = f"{report['fold_metrics']['1'][report['primary_metric']]:.3f}"
    assert lines[1].startswith(f"fold 1: {report['primary_metric']} {score} [")
    assert "images" in lines[1] and "{" not in "".join(lines)
    assert lines[-1].startswith("[low, high]: 95 % CI") and lines[-1].find("metrics.json") > 0


def test_train_output_is_strict_json(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """An undefined metric (PPV with no positive call) prints as null, never as NaN, so
    `jq` and strict parsers read the summary."""
    import melalib.engine

    summary = _summary([1])
    summary["per_fold"]["1"]["ppv"] = float("nan")
    monkeypatch.setattr(melalib.engine, "train", lambda cfg: summary)
    assert cli.main(["train", "--preset", "tiny", "--fold", "1", "--json"]) == 0

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    report = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert report["fold_metrics"]["1"]["ppv"] is None


def test_prepare_prints_a_human_summary(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(src / f"im{i}.jpg")
    assert cli.main(["prepare", str(src), str(tmp_path / "dst"), "--size", "16",
                     "--workers", "1"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"3 images in {src}: 3 written, 0 already done, 0 failed")
    assert "PrepareReport(" not in out


def test_train_help_points_at_the_presets_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "melalib presets" in " ".join(capsys.readouterr().out.split())
