"""Project promises: one dependency list, README commands == CI, pinned torch pair."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_environment_yml_lists_the_same_dependencies() -> None:
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = set(project["dependencies"]) | set(extras["dev"]) | set(extras["weights"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {p for p in pip if not p.startswith("-")}
    assert listed == wanted


def test_constraints_pin_every_dependency_and_the_tested_torch_pair() -> None:
    pins = dict(line.split("==", 1) for line in
                (REPO / "requirements/constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    for req in project["dependencies"] + extras["dev"] + extras["weights"] + extras["mlflow"]:
        name = re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower()
        assert name in pins, f"{name} is not pinned in requirements/constraints.txt"
    # mlflow is an optional extra for users, and in dev so that CI runs tests/test_tracking.py
    # against a real store (never a core dependency)
    assert [r for r in extras["dev"] if r.startswith("mlflow")] == extras["mlflow"]
    assert not [r for r in project["dependencies"] if r.startswith("mlflow")]
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block, "README Quick start has no command block"
    return [ln.strip() for ln in block.group(1).splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def test_readme_quick_start_has_two_commands_and_ci_runs_them() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    ci = (REPO / ".ci/run").read_text()
    for command in commands:
        assert command in ci, f"CI does not run the README command: {command}"


def test_the_install_gives_jupyterlab_widgets_and_the_official_scorer() -> None:
    """The README install (dependencies + dev extra) has `jupyter lab`, the widgets tqdm.auto
    draws in Lab, and the ISIC scorer tests/test_isic_scorer.py compares against."""
    project = _pyproject()["project"]
    names = {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in project["dependencies"]}
    assert {"jupyterlab", "ipywidgets", "tqdm"} <= names
    dev = {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower()
           for r in project["optional-dependencies"]["dev"]}
    assert {"isic-challenge-scoring", "playwright", "nbstripout"} <= dev
    assert '-e ".[dev,weights]"' in _quick_start_commands()[0]  # weights: melalib weights


def test_progress_bars_go_through_one_factory() -> None:
    """Widgets in Lab, text in logs and papermill: every bar comes from
    `melalib.progress.bar`, the one module that imports tqdm."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "melalib").rglob("*.py")
                 if re.search(r"^\s*from tqdm|^\s*import tqdm\b", p.read_text(), re.M)]
    assert offenders == ["melalib/progress.py"]


def test_seaborn_is_neither_declared_nor_imported() -> None:
    """Dropped (docs/architecture.md says why): plots are plain matplotlib."""
    project = _pyproject()["project"]
    assert not any(r.startswith("seaborn") for r in project["dependencies"])
    assert not [p for p in (REPO / "melalib").rglob("*.py") if "import seaborn" in p.read_text()]


def test_pyproject_states_the_real_torch_minimum() -> None:
    """Issue 24: pyproject allowed torch>=2.1, but checkpoint and weight loading use
    torch.serialization.safe_globals / get_unsafe_globals_in_checkpoint (torch 2.5)."""
    used = {name for path in (REPO / "melalib").rglob("*.py")
            for name in re.findall(r"torch\.serialization\.(\w+)", path.read_text())}
    assert {"safe_globals", "get_unsafe_globals_in_checkpoint"} <= used
    project = _pyproject()["project"]
    torch_req = next(r for r in project["dependencies"] if re.match(r"torch[>=<~ ]", r))
    minimum = tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", torch_req).groups())
    assert minimum >= (2, 5), torch_req
    env = (REPO / "environment.yml").read_text()
    assert f"torch>={minimum[0]}.{minimum[1]}" in env
    assert f"torch>={minimum[0]}.{minimum[1]}" in (REPO / "README.md").read_text()


def test_the_licence_file_is_the_one_pyproject_declares() -> None:
    assert _pyproject()["project"]["license"] == {"text": "MIT"}
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_committed_docs_cite_no_file_outside_the_repository() -> None:
    """Links and paths in README.md and docs/*.md stay inside the checkout (``../shared``
    data paths in commands are the documented exception: they name the data, not a doc)."""
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "/work/" not in text, doc.name
        cited = re.findall(r"\.\./shared/[\w./-]+\.md", text)
        assert not cited, f"{doc.name} cites {cited}"
    for record in sorted((REPO / "docs").glob("*.json")):  # results the docs render from
        assert "/work/" not in record.read_text(), record.name
