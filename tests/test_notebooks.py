"""The numbered notebooks: committed stripped and logic-free, executable headless with
papermill (01 -> 06 on the tiny synthetic config, from the repository root or from
``notebooks/``), and the helpers of `melalib.notebook` they call."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from melalib import notebook as nbh
from melalib.config import RunConfig, choices, field_index
from melalib.errors import ConfigError
from melalib.presets import PRESETS
from melalib.runs import RunDir
from melalib.table import LesionTable
from melalib.tasks import MELANOMA, Task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_eda import toy_table  # the toy table of the EDA tests

TRI3 = Task("tri", "multiclass", ("a", "b", "c"), "balanced_accuracy")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = nbh.NOTEBOOKS
FORBIDDEN = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.For,
             ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _read(name: str) -> nbformat.NotebookNode:
    """The notebook as git commits it: the working copy through the repository's clean
    filter, so outputs JupyterLab autosaved into ``notebooks/`` never fail a test."""
    return nbformat.reads(stripped_text(NOTEBOOK_DIR / name), as_version=4)


def stripped_text(path: Path) -> str:
    """What the repository's clean filter (nbstripout with ``.gitconfig``'s extra keys)
    makes of the notebook at ``path``, which is left as it is."""
    done = subprocess.run([sys.executable, "-m", "nbstripout", "--textconv", "--extra-keys",
                           nbstripout_extra_keys(), str(path)], capture_output=True, text=True,
                          check=True)
    return done.stdout


def scratch_copy(source: Path, dest: Path) -> Path:
    """``source`` written to ``dest`` as git commits it (`stripped_text`): the browser test's
    scratch project starts from the committed notebook, not from what Lab autosaved."""
    dest.write_text(stripped_text(source))
    return dest


def committed_text(name: str) -> str:
    """The notebook as git holds it (the index: what the next commit contains), else (no
    git checkout) the file."""
    if (REPO / ".git").exists():
        done = subprocess.run(["git", "show", f":notebooks/{name}"], cwd=REPO,
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout
    return (NOTEBOOK_DIR / name).read_text()


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def logic_in(source: str) -> list[str]:
    """Names of the forbidden constructs (definitions, lambdas, loops) in ``source``."""
    return sorted({type(node).__name__ for node in ast.walk(ast.parse(source))
                   if isinstance(node, FORBIDDEN)})


# ------------------------------------------------------------------ committed notebooks
def numbered_sources() -> list[Path]:
    """The numbered sources ``NN_*.ipynb``; executed copies (``out.ipynb``) are ignored."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_the_series_is_complete() -> None:
    assert [p.name for p in numbered_sources()] == sorted(NOTEBOOKS)
    assert nbh.notebooks_dir() == NOTEBOOK_DIR


def test_git_ignores_executed_copies_but_not_the_sources() -> None:
    """``cd notebooks && papermill 03_train.ipynb out.ipynb`` leaves nothing for git."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    probe = ["notebooks/out.ipynb", "notebooks/Untitled1.ipynb", "notebooks/outputs/x.png",
             *(f"notebooks/{n}" for n in NOTEBOOKS)]
    done = subprocess.run(["git", "check-ignore", "--no-index", *probe], cwd=REPO,
                          capture_output=True, text=True, check=False)
    ignored = set(done.stdout.split())
    assert ignored == set(probe[:3]), done.stdout + done.stderr


def nbstripout_extra_keys() -> str:
    """The keys the repository's nbstripout filter strips on top of its defaults
    (``.gitconfig``, included by ``make git-setup``)."""
    done = subprocess.run(["git", "config", "-f", str(REPO / ".gitconfig"),
                           "filter.nbstripout.extrakeys"], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_stripped_with_kernelspec(name: str) -> None:
    nb = nbformat.reads(committed_text(name), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["kernelspec"]["language"] == "python"
    assert "papermill" not in nb.metadata
    for cell in nb.cells:
        assert "injected-parameters" not in _tags(cell)
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"


def test_nbstripout_finds_nothing_to_strip(tmp_path: Path) -> None:
    """In what git commits (not the working copy JupyterLab autosaves into)."""
    for source in numbered_sources():
        (tmp_path / source.name).write_text(committed_text(source.name))
    done = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", "--extra-keys",
                           nbstripout_extra_keys(), *map(str, sorted(tmp_path.iterdir()))],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _autosave(text: str) -> str:
    """``text`` as JupyterLab's autosave leaves it after a run: outputs, counts,
    language_info and widget state."""
    nb = json.loads(text)
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.2"}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    code[-1]["execution_count"] = 7
    code[-1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["x\n"]}]
    return json.dumps(nb, indent=1)


def test_autosaved_working_copies_pass_the_notebook_tests(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """JupyterLab (as the README suggests) autosaves outputs into notebooks/0*.ipynb: the
    tests read what git commits, so they still pass."""
    for source in numbered_sources():
        (tmp_path / source.name).write_text(_autosave(source.read_text()))
    monkeypatch.setattr(sys.modules[__name__], "NOTEBOOK_DIR", tmp_path)
    for name in NOTEBOOKS:
        test_committed_notebook_is_stripped_with_kernelspec(name)
        test_code_cells_hold_no_logic(name)
        test_narrative_leads_each_notebook(name)
        assert all(c.outputs == [] for c in _read(name).cells if c.cell_type == "code")
    (tmp_path / "verify").mkdir()
    test_nbstripout_finds_nothing_to_strip(tmp_path / "verify")
    copy = scratch_copy(tmp_path / NOTEBOOKS[0], tmp_path / "scratch.ipynb")  # -m browser's
    assert all(c.outputs == [] and c.execution_count is None
               for c in nbformat.read(copy, as_version=4).cells if c.cell_type == "code")


def test_nbstripout_undoes_what_jupyterlab_writes_on_save(tmp_path: Path) -> None:
    """JupyterLab's autosave adds language_info, widget state, outputs and cell flags; the
    repository's filter gives back the committed file byte for byte."""
    committed = committed_text(NOTEBOOKS[0])  # not the working copy Lab may have saved
    nb = json.loads(committed)
    assert "language_info" not in nb["metadata"]
    nb["metadata"]["language_info"] = {
        "codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
        "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3", "version": "3.11.2"}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["execution_count"] = 3
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    nb["cells"][0]["metadata"]["jp-MarkdownHeadingCollapsed"] = True
    edited = tmp_path / NOTEBOOKS[0]
    edited.write_text(json.dumps(nb, indent=1))
    done = subprocess.run([sys.executable, "-m", "nbstripout", "--extra-keys",
                           nbstripout_extra_keys(), str(edited)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert edited.read_text() == committed


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_parameters_cell_of_config_fields(name: str) -> None:
    import papermill

    nb = _read(name)
    cells = [c for c in nb.cells if "parameters" in _tags(c)]
    assert len(cells) == 1, f"{name}: {len(cells)} cells tagged 'parameters'"
    tree = ast.parse(cells[0].source)
    names, unset = [], set()
    fields = field_index()
    for stmt in tree.body:  # `name: type = value`: papermill --help-notebook shows the type
        assert isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name), \
            ast.dump(stmt)
        value = ast.literal_eval(stmt.value)  # plain values only
        if value is None:  # "not set": the preset's value (the type is the field's)
            kind = fields[stmt.target.id][1].type
            assert ast.unparse(stmt.annotation) == getattr(kind, "__name__", kind), stmt
            unset.add(stmt.target.id)
        else:
            assert ast.unparse(stmt.annotation) == type(value).__name__, ast.unparse(stmt)
        names.append(stmt.target.id)
    assert len(names) == len(set(names))
    assert set(names) <= nbh.parameter_names(), set(names) - nbh.parameter_names()
    assert {"dataset", "data_dir", "name", "output_dir"} <= set(names)
    # papermill must parse every line (a second '=' in a comment breaks its parser)
    inspected = papermill.inspect_notebook(str(NOTEBOOK_DIR / name))
    assert set(inspected) == set(names)
    assert all(p["inferred_type_name"] in ("str", "int", "float", "bool")
               for p in inspected.values()), inspected
    # a default never beats the preset: every field a preset may set is left None
    assert set(names) & set().union(*PRESETS.values()) <= unset
    # the defaults train what `melalib demo` trains (its preset; only paths and name differ)
    ns: dict[str, Any] = {}
    exec(compile(tree, name, "exec"), ns)
    assert ns["preset"] == "synthetic_demo"
    cfg = nbh.config_from_namespace(ns, root=REPO)
    diff = cfg.result_diff(RunConfig.from_preset("synthetic_demo"))
    assert set(diff) <= {"data_dir"}, diff  # <root>/data: where the synthetic data are cached


#: "a | b (note) | c" in a parameter comment: a list of choices (``...`` last: a partial one)
CHOICE_LIST = re.compile(r"[\w+.:-]+(?: \([^)]*\))?(?: \| (?:[\w+.:-]+(?: \([^)]*\))?|\.\.\.))+")


def comment_choices(comment: str) -> list[list[str]]:
    """Each ``a | b | c`` list in a comment, as its item names (notes in brackets dropped)."""
    return [[item.split(" (")[0] for item in match.split(" | ")]
            for match in CHOICE_LIST.findall(comment)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameter_comments_list_the_declared_choices(name: str) -> None:
    """A parameter comment that lists a field's choices lists exactly the choices declared
    in melalib.config (the owner's registry), or a partial list ending in ``...``: a stale
    copy (a dataset or feature set added since) fails here."""
    cell = next(c for c in _read(name).cells if "parameters" in _tags(c))
    for line in cell.source.splitlines():
        key, _, comment = line.partition("#")
        field = key.split(":")[0].strip()
        if field not in field_index() or not choices(field):
            continue
        declared = [str(c) for c in choices(field)]
        for listed in comment_choices(comment):
            if listed[-1] == "...":
                assert set(listed[:-1]) <= set(declared), (name, field, listed)
            else:
                assert listed == declared, f"{name}: {field} lists {listed}, not {declared}"


def test_comment_choices_reads_lists_and_notes() -> None:
    assert comment_choices("None: the preset's; a | b+c (note) | d") == [["a", "b+c", "d"]]
    assert comment_choices("x: binary | ...") == [["binary", "..."]]
    assert comment_choices("a run name: <output_dir>/<name>/") == []


def test_a_passed_parameter_beats_the_preset_and_run_json_names_the_sources(
        tmp_path: Path) -> None:
    """``-p preset=ham10000_lite0_pretrained -p epochs 2`` in 03: the preset's backbone,
    size and weights, the passed epochs; resolved as the CLI and a Kaggle bundle do."""
    from melalib import cli
    from melalib.kaggle import baked_parameters, bundle_config

    ns: dict[str, Any] = {}
    exec(_read("03_train.ipynb").cells[1].source, ns)
    data = str(tmp_path / "d")
    ns.update(preset="ham10000_lite0_pretrained", epochs=2, data_dir=data)
    cfg = nbh.config_from_namespace(ns, root=tmp_path)
    preset = PRESETS["ham10000_lite0_pretrained"]
    assert (cfg.model.backbone, cfg.data.image_size, cfg.model.pretrained) == \
        (preset["backbone"], preset["image_size"], True)
    assert cfg.train.epochs == 2 and cfg.train.tta == preset["tta"]
    assert cfg.sources["backbone"] == "preset ham10000_lite0_pretrained"
    assert cfg.sources["epochs"] == "notebook parameter" and "lr" in cfg.sources
    args = cli.build_parser().parse_args(["train", "--preset", "ham10000_lite0_pretrained",
                                          "--set", "epochs=2", "--set", f"data_dir={data}"])
    from_cli = cli.load_config(args)
    baked = baked_parameters("siim-isic-melanoma-classification", None, False, "k-one",
                             parameters={"preset": "ham10000_lite0_pretrained", "epochs": "2",
                                         "dataset": "ham10000", "data_dir": data})
    from_kaggle = bundle_config(baked)
    for other in (from_cli, from_kaggle):
        diff = cfg.result_diff(other)
        assert diff == {}, diff
        assert other.sources["backbone"] == "preset ham10000_lite0_pretrained"
    assert from_cli.sources["epochs"] == "command line"
    # run.json records the preset and every field's source
    run = RunDir.open(cfg.with_overrides({"output_dir": str(tmp_path / "o")}))
    info = json.loads((run.path / "run.json").read_text())
    assert info["preset"] == "ham10000_lite0_pretrained"
    assert info["sources"]["image_size"] == "preset ham10000_lite0_pretrained"
    assert info["sources"]["epochs"] == "notebook parameter"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_code_cells_hold_no_logic(name: str) -> None:
    nb = _read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        assert not logic_in(cell.source), f"{name} code cell {i}: {logic_in(cell.source)}"
    joined = "\n".join(c.source for c in code)
    assert "config_from_namespace(globals())" in joined
    assert joined.count("config_from_namespace(") == 1  # the config is built once


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_narrative_leads_each_notebook(name: str) -> None:
    nb = _read(name)
    assert nb.cells[0].cell_type == "markdown"
    assert nb.cells[0].source.startswith(f"# {name[:2]} ")
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    assert len(markdown) >= 3


def test_logic_checker_flags_what_it_should() -> None:
    assert logic_in("for x in y:\n    pass") == ["For"]
    assert logic_in("def f():\n    return 1") == ["FunctionDef"]
    assert logic_in("g = lambda: 1\nwhile False:\n    pass") == ["Lambda", "While"]
    assert logic_in("z = [i for i in range(3)]") == ["ListComp"]
    assert logic_in("class A:\n    pass") == ["ClassDef"]
    assert logic_in("x = nb.overview(table)\nif x is None:\n    y = 1") == []


# ------------------------------------------------------------------- config and paths
def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return root


def test_project_root_walks_up_to_pyproject(tmp_path: Path) -> None:
    root = _project(tmp_path)
    assert nbh.project_root(root / "notebooks") == root.resolve()
    assert nbh.project_root(REPO / "notebooks") == REPO
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    assert nbh.project_root(lonely) == lonely.resolve()


def test_config_from_namespace_picks_fields_and_resolves_paths(tmp_path: Path) -> None:
    root = _project(tmp_path)
    ns = {"dataset": "ham10000", "data_dir": "../shared/data/ham10000", "name": "x",
          "output_dir": "outputs", "epochs": 3, "meta_hidden": (8, 4), "lr": None,
          "runs": "a,b", "pd": pd, "In": [], "_": 1}
    cfg = nbh.config_from_namespace(ns, root=root)
    assert cfg.data.dataset == "ham10000"
    assert cfg.data.data_dir == str((root / "../shared/data/ham10000").resolve())
    assert cfg.output_dir == str(root / "outputs")
    assert cfg.run_dir == root / "outputs" / "x"
    assert cfg.train.epochs == 3 and cfg.model.meta_hidden == (8, 4)
    assert cfg.train.lr == RunConfig().train.lr  # None = not set
    # absolute paths are kept; the synthetic default data_dir is <root>/data
    cfg = nbh.config_from_namespace({"output_dir": str(tmp_path / "o")}, root=root)
    assert cfg.output_dir == str(tmp_path / "o")
    assert cfg.data.data_dir == str(root / "data")


def test_config_from_namespace_applies_a_preset_under_the_variables(tmp_path: Path) -> None:
    cfg = nbh.config_from_namespace({"preset": "tiny", "epochs": 2}, root=tmp_path)
    assert cfg.train.epochs == 2  # the variable wins
    assert cfg.model.backbone == "resnet10t" and cfg.data.n_folds == 2  # from the preset
    with pytest.raises(ConfigError, match="unknown preset"):
        nbh.config_from_namespace({"preset": "tinny"}, root=tmp_path)
    with pytest.raises(ConfigError, match="epochs"):
        nbh.config_from_namespace({"epochs": "many"}, root=tmp_path)


def test_read_runs_resolves_names_and_refuses_unfinished_runs(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({"output_dir": str(tmp_path), "name": "a"})
    with pytest.raises(ConfigError, match="not a melalib run"):
        nbh.read_runs(cfg)
    for name in ("a", "b"):
        RunDir.open(RunConfig.from_dict({"output_dir": str(tmp_path), "name": name}))
    with pytest.raises(ConfigError, match="no fold has finished"):
        nbh.read_runs(cfg, " a , ")
    (tmp_path / "a" / "oof_fold0.csv").write_text("image_id\n")
    (tmp_path / "b" / "oof_fold1.csv").write_text("image_id\n")
    assert [r.path for r in nbh.read_runs(cfg)] == [tmp_path / "a"]
    assert [r.path for r in nbh.read_runs(cfg, "a,b")] == [tmp_path / "a", tmp_path / "b"]
    assert [r.path for r in nbh.read_runs(cfg, str(tmp_path / "b"))] == [tmp_path / "b"]


# --------------------------------------------------------------------- data helpers
def test_image_views_degrade_to_a_note_without_images(tmp_path: Path) -> None:
    absent = toy_table(tmp_path, with_images=False)
    assert nbh.show_image_sizes(absent) is None
    assert nbh.show_image_grid(absent, save=tmp_path / "grid.png") is None
    assert not (tmp_path / "grid.png").exists()
    present = toy_table(tmp_path, with_images=True)
    stats = nbh.show_image_sizes(present)
    assert stats.loc["width", "max"] == 25 and stats.loc["height", "mean"] == 10
    fig = nbh.show_image_grid(present, n_per_class=2, save=tmp_path / "grid.png")
    assert fig is not None and (tmp_path / "grid.png").stat().st_size > 0
    assert len([a for a in fig.axes if a.images]) == 4  # 2 benign + 2 melanoma


def test_operating_threshold_reaches_the_sensitivity(tmp_path: Path) -> None:
    oof = pd.DataFrame({"label": [0, 0, 1, 1, 0], "prob_melanoma": [0.1, 0.4, 0.35, 0.8, 0.9]})
    # catching both melanomas needs p >= 0.35; one of two (50 %) only p >= 0.8
    assert nbh.operating_threshold(MELANOMA, oof, 0.9) == pytest.approx(0.35)
    assert nbh.operating_threshold(MELANOMA, oof, 0.5) == pytest.approx(0.8)
    assert nbh.operating_threshold(MELANOMA, oof.assign(label=0)) == 0.5  # undefined: 0.5


def test_operating_point_states_its_rule() -> None:
    oof = pd.DataFrame({"label": [0, 0, 1, 1, 0], "prob_melanoma": [0.1, 0.4, 0.35, 0.8, 0.9]})
    point = nbh.operating_point(MELANOMA, oof)
    assert point.threshold == pytest.approx(0.35) and nbh.OPERATING_SENSITIVITY == 0.9
    assert "0.35" in point.rule and "90 % sensitivity" in point.rule
    assert point.labels(MELANOMA, oof["prob_melanoma"]).tolist() == [0, 1, 1, 1, 1]
    tri = nbh.operating_point(TRI3, oof)
    assert tri.argmax and "argmax" in tri.rule


def test_multilabel_operating_point_says_the_argmax_it_uses() -> None:
    """Issue 20: for MILK10k (one diagnosis per lesion, 11 sigmoid outputs) 04's confusion
    matrix and 05's cases are called by the argmax (`predictions.predicted_labels`), but the
    rule printed and put in their titles said "each class called at P >= 0.5"."""
    from melalib.predictions import predicted_labels
    from melalib.tasks import MILK11

    probs = np.full((2, 11), 0.1)
    probs[0, 7], probs[1, [1, 8]] = 0.4, (0.9, 0.6)  # row 0: no class reaches 0.5
    oof = pd.DataFrame(probs, columns=MILK11.prob_columns).assign(label=[7, 8])
    point = nbh.operating_point(MILK11, oof)
    assert point.labels(MILK11, probs).tolist() == [7, 1] == predicted_labels(
        MILK11, probs).tolist()
    assert point.argmax and point.rule.startswith("argmax")
    assert nbh.case_heading(MILK11, "fn", point).startswith("False negatives of MEL (argmax")
    assert nbh.case_heading(MELANOMA, "fn", nbh.operating_point(MELANOMA, oof.assign(
        prob_melanoma=[0.2, 0.7], label=[0, 1]))).startswith("False negatives (called positive")


def _calls(name: str) -> str:
    return "\n".join(c.source for c in _read(name).cells if c.cell_type == "code"
                     and "parameters" not in _tags(c))


def test_04_and_05_use_one_stated_operating_point() -> None:
    """Issue 23: 04's confusion matrix used 0.5 without saying so (4 of 29 melanomas found)
    while 05 silently switched to the 90 %-sensitivity threshold. Both now take
    `operating_point` (one documented rule), 04 states it in the confusion matrix's title,
    scores its metrics at it and names the evaluated candidate in its figures."""
    for name in ("04_ensemble.ipynb", "05_gradcam.ipynb"):
        code = _calls(name)
        assert "nb.operating_point(task, oof)" in code, name
        assert "OPERATING_SENSITIVITY" in _read(name).cells[0].source, name
    code = _calls("04_ensemble.ipynb")
    assert "threshold=point.rule" in code and "point.labels(task, p)" in code
    assert "metrics.evaluate(task, y, p, threshold=point.threshold)" in code
    assert "name=blended.label" in code and "evaluated=blended.label" in code
    assert code.count("threshold=point") >= 4
    assert _calls("05_gradcam.ipynb").count("threshold=point") == 6  # fn, fp, tp, pairs, masks, errors


def test_cam_captions_show_one_quantity() -> None:
    """Issue 23: the bracketed number was the confidence of the call, so it meant
    P(melanoma) on a true positive and 1 - P(melanoma) on a false negative."""
    errors = pd.DataFrame({"label_name": ["melanoma", "melanoma"], "pred_name": ["benign",
                           "melanoma"], "confidence": [0.9, 0.8],
                           "prob_melanoma": [0.1, 0.8]})
    captions, heading = nbh.cam_captions(errors, MELANOMA)
    assert captions == ["melanoma called benign, P(melanoma) = 0.10",
                        "melanoma called melanoma, P(melanoma) = 0.80"]
    assert "called class" in heading and "P(melanoma)" in heading


# ------------------------------------------------------------ partial downloads, pairs
def _partial_pairs(tmp_path: Path) -> tuple[RunConfig, LesionTable, list[str]]:
    """A tiny dual-image config on synthetic pairs and its table with three images absent:
    the clinical image of one training lesion, the dermoscopic image of another, one test
    image (a partial download)."""
    from conftest import TINY

    from melalib.data.load import load_table

    cfg = RunConfig.from_dict({**TINY, "data_dir": str(tmp_path / "data"),
                               "output_dir": str(tmp_path / "out"), "name": "partial",
                               "synthetic_task": "paired", "dual_image": True,
                               "missing_images": "drop"})
    table = load_table(cfg.data)
    df = table.df.copy()
    train, test = np.flatnonzero(df["split"] == "train"), np.flatnonzero(df["split"] == "test")
    gone = [(train[1], "image_path_2"), (train[4], "image_path"), (test[0], "image_path")]
    for i, column in gone:
        df.loc[df.index[i], column] = str(tmp_path / f"absent_{i}.jpg")
    return cfg, LesionTable(df, table.task, table.origin), [df["image_id"].iat[i] for i, _ in gone]


def test_eda_and_folds_leave_out_what_training_leaves_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: under missing_images=drop, 01's table and 02's folds (and so its leakage
    audit, encoder and baseline) held the lesions whose images are absent and folds
    assigned over them, while 03 trains on the other lesions with other folds."""
    from melalib.data.build import build_table

    cfg, partial, gone = _partial_pairs(tmp_path)
    monkeypatch.setattr(nbh, "load_dataset", lambda data_cfg: partial)
    table = nbh.load_table(cfg)
    assert not set(gone) & set(table.df["image_id"])
    assert len(table.df) == len(partial.df) - 3
    folded = nbh.table_with_folds(cfg)
    trained, _ = build_table(cfg, table=partial)  # the table (and folds) melalib.train uses
    pd.testing.assert_frame_equal(
        folded.df[["image_id", "fold"]].reset_index(drop=True),
        trained.df[["image_id", "fold"]].reset_index(drop=True))
    # missing_images=error: the EDA still shows every listed row (a table without its images)
    listed = nbh.load_table(cfg.with_overrides({"missing_images": "error"}))
    assert listed.df["image_id"].tolist() == partial.df["image_id"].tolist()


def test_show_pair_cams_draws_both_images_of_each_lesion(dual_run: RunDir,
                                                         tmp_path: Path) -> None:
    """Issue 20: 05 shows, for a dual-image run, each lesion's two images with their maps,
    each captioned with its view and the explained class with its probability."""
    oof = dual_run.oof()
    point = nbh.operating_point(dual_run.task, oof)
    cases, fig = nbh.show_pair_cams(dual_run.path, "wrong", top=2, threshold=point,
                                    device="cpu", save=tmp_path / "pairs.png")
    assert fig is not None and (tmp_path / "pairs.png").stat().st_size > 1000
    assert len(cases) == 2 and {"explained_name", "explained_prob"} <= set(cases.columns)
    assert len([a for a in fig.axes if a.images]) == 8  # 2 lesions x 2 images x (image, map)
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    probs = oof.set_index(oof["image_id"].astype(str))
    for case in cases.itertuples():
        p = probs.loc[str(case.image_id), f"prob_{case.explained_name}"]
        for view in ("dermoscopic", "clinical"):
            caption = [t for t in texts if t.startswith(f"{view} · {case.image_id}")]
            assert len(caption) == 1, (view, case.image_id, texts)
            assert f"map of {case.explained_name}, P({case.explained_name}) = {p:.2f}" in \
                caption[0]
    assert point.rule in fig._suptitle.get_text().replace("\n", " ")


def test_show_pair_cams_notes_a_single_image_run(tmp_path: Path) -> None:
    run = RunDir.open(RunConfig.from_dict({"output_dir": str(tmp_path), "name": "single"}))
    cases, fig = nbh.show_pair_cams(run.path, "tp", device="cpu")
    assert fig is None and cases.empty


def test_show_masked_cams_measures_maps_against_the_true_masks(dual_run: RunDir,
                                                               tmp_path: Path) -> None:
    """Issue 25: 05 measures its maps against true lesion masks, from a folder and file
    pattern (HAM10000's ``<image_id>_segmentation.png``) or a synthetic run's own, beside
    the centre prior, and outlines each lesion on image and map."""
    pooled, cases, fig = nbh.show_masked_cams(dual_run.path, "", kind="wrong", top=2,
                                              device="cpu", n_boot=20,
                                              save=tmp_path / "masked.png")
    assert fig is not None and (tmp_path / "masked.png").stat().st_size > 1000
    assert set(pooled["maps"]) == {"model", "centre_prior"}
    assert {"concentration", "pointing", "border_peak"} <= set(pooled["measure"])
    assert len(cases) == 2 and set(cases["mask"]) == {"true_mask"}
    assert len([a for a in fig.axes if a.images and a.collections]) == 4  # outlined twice each
    texts = " ".join(t.get_text() for a in fig.axes for t in a.texts)
    for case in cases.itertuples():
        assert f"concentration {case.concentration:.2f}" in texts
    # the same masks in another folder under HAM10000's file names give the same measures
    folder = tmp_path / "masks"
    folder.mkdir()
    table = dual_run.table().df.set_index("image_id")
    for image_id in cases["image_id"].astype(str):
        stem = Path(table.loc[image_id, "image_path"]).stem
        source = Path(table.loc[image_id, "image_path"]).parent.parent / "masks" / f"{stem}.png"
        (folder / f"{image_id}_segmentation.png").write_bytes(source.read_bytes())
    again, named, _ = nbh.show_masked_cams(dual_run.path, str(folder), kind="wrong", top=2,
                                           device="cpu", n_boot=20)
    pd.testing.assert_frame_equal(named, cases)
    assert np.allclose(again["estimate"], pooled["estimate"])
    nothing = nbh.show_masked_cams(dual_run.path, str(tmp_path / "absent"), device="cpu")
    assert nothing[2] is None and nothing[0].empty


def test_show_masked_cams_draws_the_layer_it_is_given(dual_run: RunDir) -> None:
    """Notebook 05's ``cam_layer``: the maps measured are those of the named layer (the same
    as `explain_run.measure` at it), and the figure's heading names it."""
    from melalib import explain, explain_run

    _, cases, fig = nbh.show_masked_cams(dual_run.path, "", kind="wrong", top=2,
                                         device="cpu", n_boot=5, layer="pooled")
    assert "at layer pooled" in fig._suptitle.get_text().replace("\n", " ")
    rows = explain.select_rows(dual_run, kind="wrong", top=2)
    direct = explain_run.measure(dual_run, rows, layer="pooled", masks=None, missing="skip",
                                 n_boot=5, device="cpu").table
    np.testing.assert_allclose(cases["concentration"], direct["concentration"])
    assert nbh.layer_note("auto") == "" and nbh.layer_note("bn2") == " at layer bn2"


# ------------------------------------------------------------------ executed series
_EXECUTED: dict[str, Any] = {}


def executed_series(base: Path) -> dict[str, Any]:
    """The quick demo (papermill, 01 -> 06, tiny config) run once per session; the demo
    tests reuse it."""
    if "summary" not in _EXECUTED:
        from melalib.demo import run_demo

        _EXECUTED["summary"] = run_demo(base / "series" / "demo", quick=True, progress=False,
                                        data_dir=base / "series" / "data")
        _EXECUTED["data_dir"] = base / "series" / "data"
    return _EXECUTED


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return executed_series(tmp_path_factory.getbasetemp())


def test_series_executes_headless_with_the_tiny_parameters(executed: dict[str, Any]) -> None:
    summary = executed["summary"]
    for path in summary["notebooks"]:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["papermill"]["exception"] is not True, path
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                  if o.output_type == "error"]
        assert not errors, f"{path.name}: {errors[:1]}"
        injected = [c for c in nb.cells if "injected-parameters" in _tags(c)]
        assert len(injected) == 1 and 'preset = "tiny"' in injected[0].source
        assert any(o.output_type in ("display_data", "execute_result")
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    run = RunDir.read(summary["run_dir"])
    assert run.cfg.model.backbone == "resnet10t" and run.cfg.data.synthetic_patients == 16
    info = json.loads((summary["run_dir"] / "run.json").read_text())
    assert info["preset"] == "tiny" and info["sources"]["backbone"] == "preset tiny"


def test_series_saves_its_figures(executed: dict[str, Any]) -> None:
    run_dir = executed["summary"]["run_dir"]
    names = {p.name for p in (run_dir / "figures").glob("*.png")}
    expected = {"01_class_balance.png", "01_age_by_label.png", "01_site_by_label.png",
                "01_sample_images.png", "03_learning_curves.png", "04_roc.png", "04_pr.png",
                "04_confusion.png", "04_reliability.png", "04_subgroups.png",
                "06_roc.png", "06_confusion.png", "06_image_shift.png",
                "05_cam_lesion_masks.png"}
    assert expected <= names, expected - names
    assert {p.name for p in executed["summary"]["figures"]} == names
    assert any(n.startswith("05_cam_") for n in names)
    for name in names:
        assert (run_dir / "figures" / name).stat().st_size > 1000


def _roc(df: pd.DataFrame) -> float:
    return float(roc_auc_score(df["label"], df["prob_melanoma"]))


def test_03_learning_curve_has_a_chance_line_and_the_fold_table_cis(
        executed: dict[str, Any]) -> None:
    run = RunDir.read(executed["summary"]["run_dir"])
    fig = nbh.learning_curves(run, run.task)
    chance = [line for line in fig.axes[-1].get_lines()
              if str(line.get_label()).startswith("chance")]
    assert len(chance) == 1 and set(chance[0].get_ydata()) == {0.5}
    summary = run.metrics()
    table = nbh.fold_metrics(summary, run=run, n_boot=200)
    column = table["roc_auc 95% CI"]
    assert list(table.index) == [*(f"fold {k}" for k in run.done_folds()), "pooled OOF"]
    for row, text in column.items():
        if text != "n/a":
            low, high = (float(v) for v in text.strip("[]").split(","))
            assert low <= table.loc[row, "roc_auc"] <= high, (row, text)


def test_training_and_baseline_metrics_match_their_predictions(executed: dict[str, Any]) -> None:
    run_dir = executed["summary"]["run_dir"]
    oof = pd.read_csv(run_dir / "oof.csv")
    table = pd.read_csv(run_dir / "table" / "table.csv")
    assert len(oof) == int((table["split"] == "train").sum())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["oof"]["roc_auc"] == pytest.approx(_roc(oof))
    baseline = pd.read_csv(run_dir.parent / "synthetic_meta_only" / "oof.csv")
    features = json.loads((run_dir / "features.json").read_text())
    assert features["baseline"]["roc_auc"] == pytest.approx(_roc(baseline))
    assert "age" in features["feature_names"]
    assert [r["scheme"] for r in features["cv_check"]] == ["grouped (group_id)",
                                                            "image-level (leaky)"]
    assert features["cv_check"][0]["val images whose group is in training"] == 0.0
    demo_metrics = json.loads((run_dir.parent / "metrics.json").read_text())
    assert demo_metrics["oof_primary"] == pytest.approx(_roc(oof))


def test_ensemble_evaluates_and_submits_the_best_candidate(executed: dict[str, Any]) -> None:
    """The demo runs 04 with ``ensemble_method=best``: the report, the figures' candidate
    and the submission are those of the candidate with the best OOF ROC-AUC (issue 23: the
    equal mean blend was evaluated whatever the table said)."""
    from melalib.ensemble import blend, compare_blends
    from melalib.metrics import threshold_for_sensitivity

    run_dir = executed["summary"]["run_dir"]
    runs = [run_dir, run_dir.parent / "synthetic_meta_only"]
    table = compare_blends(blend(runs))
    best = table.drop(index="rank blend")["roc_auc"].idxmax()
    report = json.loads((run_dir / "ensemble.json").read_text())
    assert report["method"] == "best" and report["evaluated"] == best
    assert report["oof"]["roc_auc"] == pytest.approx(table.loc[best, "roc_auc"])
    chosen = blend(runs, "best")
    assert report["weights"] == pytest.approx(chosen.weights.tolist())
    y = chosen.oof["label"].to_numpy().astype(int)
    threshold = threshold_for_sensitivity(y, chosen.oof["prob_melanoma"], 0.9)[0]
    assert report["threshold"] == pytest.approx(threshold) == report["oof"]["threshold"]
    assert "90 % sensitivity" in report["operating_point"]
    assert {r["metric"] for r in report["ci"]} >= {"roc_auc", "pr_auc"}
    # submission: ISIC 2020 format, one row per test image, the chosen candidate's test
    sub = pd.read_csv(run_dir / "submission.csv")
    assert list(sub.columns) == ["image_name", "target"]
    table_csv = pd.read_csv(run_dir / "table" / "table.csv")
    assert sorted(sub["image_name"]) == sorted(
        table_csv.loc[table_csv["split"] == "test", "image_id"])
    expected = chosen.test.set_index(chosen.test["image_id"].astype(str))["prob_melanoma"]
    got = sub.set_index(sub["image_name"].astype(str))["target"]
    np.testing.assert_allclose(got.loc[expected.index], expected, rtol=1e-6)


def test_ensemble_notebook_stacks_both_runs(executed: dict[str, Any]) -> None:
    run_dir = executed["summary"]["run_dir"]
    stack_dir = run_dir / "stack"
    metrics = json.loads((stack_dir / "metrics.json").read_text())
    assert {run_dir.name, "synthetic_meta_only", "mean_blend"} <= set(metrics["baselines"]), \
        metrics["baselines"].keys()
    assert {"roc_auc", "pauc_80"} <= set(metrics["oof_ci"])
    stacked = RunDir.read(stack_dir)
    image = pd.read_csv(run_dir / "oof.csv")
    assert sorted(stacked.oof()["image_id"]) == sorted(image["image_id"])
    assert (stack_dir / "feature_importance.csv").is_file()
    assert stacked.test_mean() is not None


def test_gradcam_notebook_reports_errors(executed: dict[str, Any]) -> None:
    report = json.loads((executed["summary"]["run_dir"] / "errors.json").read_text())
    rates = pd.DataFrame(report["error_rates"])
    assert set(rates["subgroup_column"]) >= {"age_band", "sex", "site", "confidence_bin"}
    for column, part in rates.groupby("subgroup_column"):  # every row in one value
        assert part["n"].sum() == rates.loc[rates["subgroup_column"] == "sex", "n"].sum(), column


def test_03_runs_from_the_notebooks_folder_with_relative_paths(
        executed: dict[str, Any], tmp_path: Path) -> None:
    """``papermill 03_train.ipynb out.ipynb -p fold 1`` with cwd = <project>/notebooks:
    relative output_dir / data_dir are taken from the project root, not the cwd."""
    root = _project(tmp_path)
    shutil.copy2(NOTEBOOK_DIR / "03_train.ipynb", root / "notebooks" / "03_train.ipynb")
    (root / "data").symlink_to(executed["data_dir"], target_is_directory=True)
    params = ["-p", "fold", "1", "-p", "output_dir", "outputs", "-p", "data_dir", "data",
              "-p", "name", "cwd", "-p", "synthetic_patients", "16", "-p",
              "synthetic_image_size", "32", "-p", "image_size", "32", "-p", "backbone",
              "resnet10t", "-p", "epochs", "1", "-p", "n_folds", "2", "-p", "batch_size", "16",
              "-p", "max_steps_per_epoch", "1"]
    env = {k: v for k, v in os.environ.items() if k != "MELALIB_PROGRESS"}  # bars on
    done = subprocess.run([sys.executable, "-m", "papermill", "03_train.ipynb", "out.ipynb",
                           "-k", "python3", "--no-progress-bar", *params],
                          cwd=root / "notebooks", env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    # tqdm.auto draws widgets (ipywidgets installed): no "IProgress not found" warning block
    executed = (root / "notebooks" / "out.ipynb").read_text()
    assert "TqdmWarning" not in executed and "IProgress" not in executed
    assert "fold 1 epoch 1/1" in executed  # the training bar's text form
    # text bars, not widgets: a saved widget's text form is its first frame (0 %, frozen)
    assert "application/vnd.jupyter.widget-view+json" not in executed
    assert "roc_auc 95% CI" in executed  # the fold table's CI column
    run = root / "outputs" / "cwd"
    assert (run / "oof_fold1.csv").is_file() and not (run / "oof_fold0.csv").exists()
    assert (run / "figures" / "03_learning_curves.png").is_file()
    assert not (root / "notebooks" / "outputs").exists()
    assert not (root / "notebooks" / "data").exists()


# ------------------------------------------------------------------------ real tables
def _run_real(tmp_path: Path, name: str, dataset: str, extra: list[str], timeout: int = 900
              ) -> nbformat.NotebookNode:
    out = tmp_path / name
    params = ["-p", "dataset", dataset, "-p", "data_dir", f"../shared/data/{dataset}",
              "-p", "output_dir", str(tmp_path / "outputs"), "-p", "name", dataset, *extra]
    done = subprocess.run([sys.executable, "-m", "papermill", name, str(out), "-k", "python3",
                           "--no-progress-bar", *params], cwd=NOTEBOOK_DIR,
                          env={**os.environ, "MELALIB_PROGRESS": "0"}, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return nbformat.read(out, as_version=4)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("dataset", ["ham10000", "isic2020"])
def test_eda_and_features_run_on_the_real_tables(dataset: str, shared_data: Path,
                                                 tmp_path: Path) -> None:
    nb = _run_real(tmp_path, "01_eda.ipynb", dataset, [])
    text = json.dumps(nb.cells)
    figures = tmp_path / "outputs" / dataset / "figures"
    assert (figures / "01_class_balance.png").is_file()
    if dataset == "isic2020":  # no JPEGs here: a note instead of the grid
        assert "images of this table are not on disk" in text
        assert not (figures / "01_sample_images.png").exists()
    else:
        assert (figures / "01_sample_images.png").is_file()
    _run_real(tmp_path, "02_features.ipynb", dataset,
              ["-p", "n_folds", "3", "-p", "baseline_epochs", "1", "-p",
               "max_steps_per_epoch", "2"])
    features = json.loads((tmp_path / "outputs" / dataset / "features.json").read_text())
    assert len(features["folds"]) == 3
    assert features["cv_check"][0]["val images whose group is in training"] == 0.0


#: The tiny MILK10k configuration of the real-pairs series (README, "The notebooks on the
#: real MILK10k pairs"): the CPU preset, fold 0 of 5, one frozen-backbone epoch of 2 steps.
MILK_TINY = ["-p", "preset", "milk10k_dual_lite0_pretrained", "-p", "fold", "0", "-p",
             "epochs", "1", "-p", "max_steps_per_epoch", "2", "-p", "tta", "1"]


@pytest.mark.slow
@pytest.mark.realdata
def test_notebooks_01_to_05_run_on_the_real_milk10k_pairs(shared_data: Path,
                                                          tmp_path: Path) -> None:
    """Issue 20: 01 -> 05 headless on the real MILK10k pairs with parameters only: the
    lesions whose images are withheld left out everywhere (the preset's
    missing_images=drop), 05's Grad-CAM on both images of a pair."""
    if not (shared_data / "milk10k" / "images_256x192").is_dir():
        pytest.skip("the MILK10k images are absent")
    run_dir = tmp_path / "outputs" / "milk10k"
    eda = json.dumps(_run_real(tmp_path, "01_eda.ipynb", "milk10k", MILK_TINY).cells)
    assert "have absent image files and are left out" in eda
    # 02's random forests on 4,192 lesions and 03's passes over every image take minutes
    _run_real(tmp_path, "02_features.ipynb", "milk10k", [*MILK_TINY, "-p", "baseline_epochs", "1"],
              timeout=3600)
    _run_real(tmp_path, "03_train.ipynb", "milk10k", MILK_TINY, timeout=3600)
    run = RunDir.read(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["n_missing_image_rows"] > 0 and run.cfg.model.dual_image
    baseline = RunDir.read(tmp_path / "outputs" / "milk10k_meta_only").table().df
    trained = run.table().df
    assert sorted(baseline["image_id"]) == sorted(trained["image_id"])  # the same lesions
    assert (baseline.set_index("image_id")["fold"].sort_index()
            == trained.set_index("image_id")["fold"].sort_index()).all()  # and folds
    _run_real(tmp_path, "04_ensemble.ipynb", "milk10k", [*MILK_TINY, "-p", "n_boot", "50"])
    gradcam = _run_real(tmp_path, "05_gradcam.ipynb", "milk10k",
                        [*MILK_TINY, "-p", "n_examples", "2", "-p", "pair_kind", "wrong"])
    pairs = next(c for c in gradcam.cells if "nb.show_pair_cams" in c.source)
    # the pair figure: a PNG under the inline backend, its repr where the tests'
    # MPLBACKEND=Agg reaches the kernel; the file it saved is checked below
    shown = [o.get("data", {}) for o in pairs.outputs]
    assert any("image/png" in d or "<Figure" in str(d.get("text/plain")) for d in shown)
    assert "explained_prob" in json.dumps(gradcam.cells)  # the pairs' table
    figures = {p.name for p in (run_dir / "figures").glob("*.png")}
    assert {"01_sample_images.png", "03_learning_curves.png", "04_confusion.png",
            "05_cam_pairs.png"} <= figures, figures
