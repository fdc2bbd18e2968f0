"""Issue 24: one write rule for every writing command. Each command runs with hostile output
arguments (a run's own files, a foreign folder, its inputs, a link out of the tree, another
command's folder) in a copy of one temp tree; the tree is snapshotted before and after and
nothing outside the paths the command may write changes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from melalib.cli import main
from melalib.runs import marker_kind

#: Output arguments, relative to the tree: fresh paths, a training run and its files, a
#: folder melalib did not write, a Kaggle-like folder, the inputs, a link out of the tree.
TARGETS = ["new_out", "new_out/x.csv", "runs/r", "runs/r/oof.csv", "runs/r/metrics.json",
           "runs/r/run.json", "runs", "foreign", "foreign/metrics.json", "bundle",
           "bundle/kernel-metadata.json", "in.csv", "link", "link/x.csv", "src_images",
           "src_images/a.png", "runs/s", "runs/r/checkpoints", "."]
INPUTS = {"predict": ("runs/r",), "predict-csv": ("runs/r", "in.csv", "src_images"),
          "prepare": ("src_images",)}  # what the commands read (others: the run)


def _snapshot(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under ``root`` (links not followed): kind and content."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p).encode())
            elif p.is_dir():
                out[rel] = ("dir", b"")
            else:
                out[rel] = ("file", p.read_bytes())
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """The tree every example copies: a trained run ``runs/r``, a run ``runs/s`` whose
    ``checkpoints/`` links out of it, a foreign folder, a Kaggle-like folder, images, a link."""
    from conftest import TINY

    import melalib
    from melalib.config import RunConfig

    root = tmp_path_factory.mktemp("write-rule") / "tree"
    cfg = RunConfig.from_dict({**TINY, "data_dir": str(synthetic_root),
                               "output_dir": str(root / "runs"), "name": "r", "fold": -1})
    melalib.train(cfg, progress=False)
    shutil.copytree(root / "runs" / "r", root / "runs" / "s", symlinks=True)
    (root / "runs" / "s" / ".melalib-run").write_text(json.dumps({"melalib_run": "s"}))
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "keep.txt").write_text("outside the run")
    shutil.rmtree(root / "runs" / "s" / "checkpoints")
    (root / "runs" / "s" / "checkpoints").symlink_to(root / "elsewhere")
    (root / "link").symlink_to(root / "elsewhere")
    (root / "foreign").mkdir()
    for name in ("notes.txt", "metrics.json", "oof.csv", "run.json"):
        (root / "foreign" / name).write_text(f"the user's {name}")
    (root / "bundle").mkdir()
    (root / "bundle" / "kernel-metadata.json").write_text('{"id": "me/mine"}')
    (root / "in.csv").write_text("image,age\na.png,50\n")
    (root / "src_images").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            root / "src_images" / name)
    return root


def _split(t: Path) -> list[str]:
    return ["--output-dir", str(t.parent), "--name", t.name]


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "train": lambda r, t: ["train", "--config", str(r / "runs" / "r" / "config.yaml"),
                           *_split(t), "--overwrite", "--fold", "0",
                           "--set", "max_steps_per_epoch=1"],
    "stack": lambda r, t: ["stack", str(r / "runs" / "r"), *_split(t), "--overwrite",
                           "--seeds", "1", "--n-boot", "10"],
    "ensemble": lambda r, t: ["ensemble", str(r / "runs" / "r"), "--out", str(t)],
    "predict": lambda r, t: ["predict", str(r / "runs" / "r"), "--out", str(t)],
    "predict-csv": lambda r, t: ["predict", str(r / "runs" / "r"), "--csv", str(r / "in.csv"),
                                 "--image-dir", str(r / "src_images"), "--out", str(t)],
    "reproduce": lambda r, t: ["reproduce", str(r / "runs" / "r"), "--output-dir", str(t)],
    "prepare": lambda r, t: ["prepare", str(r / "src_images"), str(t), "--size", "16",
                             "--workers", "1"],
    "kaggle-bundle": lambda r, t: ["kaggle-bundle", str(t), "--kernel-id", "me/melalib-run",
                                   "--wheel-dataset", "me/melalib-wheel", "--no-gpu"],
    "evaluate": lambda r, t: ["evaluate", str(r / "runs" / "r"), "--oof", "--out", str(t),
                              "--overwrite", "--n-boot", "10"],
    "explain": lambda r, t: ["explain", str(r / "runs" / "r"), "--ids", _first_id(r),
                             "--no-masks", "--out", str(t), "--overwrite"],
}
FOLDER_MARKERS = {"stack": ".melalib-stack", "kaggle-bundle": ".melalib-kaggle-bundle",
                  "prepare": "prepare.json", "explain": ".melalib-explain"}


def _first_id(root: Path) -> str:
    """An image id of the trained run's OOF rows (what ``explain --ids`` names)."""
    return (root / "runs" / "r" / "oof.csv").read_text().splitlines()[1].split(",")[0]


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _allowed(command: str, root: Path, target: Path) -> tuple[list[Path], list[Path]]:
    """(roots whose existing entries may change, roots under which new entries may appear),
    resolved; computed before the command runs."""
    real = target.resolve()
    inputs = [(root / p).resolve() for p in INPUTS.get(command, ("runs/r",))]
    if command in ("ensemble", "predict", "predict-csv"):  # file outputs, never an input
        sidecar = (real.with_suffix(".metrics.json") if command == "ensemble"
                   else real.with_name(f"{real.stem}_metadata_drift.csv"))
        files = [p for p in (real, sidecar) if not _under(p, inputs)
                 and not (p.exists() and p.is_dir())]
        return files, files
    if command == "reproduce":  # only a fresh folder under the output_dir
        return [], [] if _under(real, inputs) else [real]
    fresh = not target.exists() and not target.is_symlink()
    empty = target.is_dir() and not target.is_symlink() and not any(target.iterdir())
    if command == "train":
        marker = target / ".melalib-run"
        own = marker.is_file() and not target.is_symlink() and json.loads(
            marker.read_text()).get("melalib_run") == target.name
    elif command == "evaluate":  # a report folder: the run marker names its kind
        own = not target.is_symlink() and marker_kind(target) == "evaluate"
    else:
        own = not target.is_symlink() and (target / FOLDER_MARKERS[command]).is_file()
    ok = (fresh or empty or own) and not _under(real, inputs)
    return ([real], [real]) if ok else ([], [])


def _check(command: str, template: Path, target_rel: str, monkeypatch) -> int:
    import melalib.kaggle as kaggle

    monkeypatch.setattr(kaggle, "build_wheel", lambda dest: Path(dest))
    with tempfile.TemporaryDirectory(prefix="melalib-write-rule-") as tmp:
        root = Path(tmp) / "tree"
        shutil.copytree(template, root, symlinks=True)
        (root / "link").unlink()
        (root / "link").symlink_to(root / "elsewhere")
        (root / "runs" / "s" / "checkpoints").unlink()
        (root / "runs" / "s" / "checkpoints").symlink_to(root / "elsewhere")
        target = root / target_rel
        may_change, may_add = _allowed(command, root, target)
        before = _snapshot(root)
        rc = main(COMMANDS[command](root, target))
        assert rc in (0, 1, 2)
        after = _snapshot(root)
        for rel, entry in before.items():
            path = (root / rel).resolve() if entry[0] != "link" else root / rel
            if not _under(path, may_change):
                assert after.get(rel) == entry, f"{command} -> {target_rel}: {rel} changed"
        for rel in set(after) - set(before):
            path = (root / rel).resolve()
            made_on_the_way = after[rel][0] == "dir" and any(path in r.parents for r in may_add)
            assert _under(path, may_add) or made_on_the_way, \
                f"{command} -> {target_rel}: {rel} written"
        return rc


@pytest.mark.parametrize("command", list(COMMANDS))
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(TARGETS))
def test_writing_commands_touch_only_their_own_outputs(command: str, target: str, template,
                                                       monkeypatch, capsys) -> None:
    _check(command, template, target, monkeypatch)
    capsys.readouterr()


@pytest.mark.parametrize("command, target", [
    ("stack", "runs/r"), ("stack", "foreign"), ("predict-csv", "in.csv"),
    ("kaggle-bundle", "bundle"), ("reproduce", "runs"), ("train", "runs/s"),
    ("train", "foreign/metrics.json"), ("ensemble", "runs/r/oof.csv"),
    ("prepare", "foreign"), ("stack", "link"), ("train", "runs/r"), ("evaluate", "runs/r"),
    ("explain", "runs/r"), ("evaluate", "foreign"), ("explain", "link")])
def test_the_reported_write_probes(command: str, target: str, template, monkeypatch,
                                   capsys) -> None:
    """The probes of issue 24, every one, whatever hypothesis draws above."""
    _check(command, template, target, monkeypatch)
    capsys.readouterr()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_writes_a_fresh_target(command: str, template, monkeypatch,
                                            capsys) -> None:
    """The rule refuses hostile targets, not the ordinary one: a new path works (rc 0)."""
    target = "new_out/x.csv" if command in ("ensemble", "predict") else "new_out"
    rc = _check(command, template, target, monkeypatch)
    assert rc == 0, capsys.readouterr().err
