"""The package's import graph: no cycles and no imports of another module's private names.

Both checks read melalib's sources with `ast` (nothing is imported), counting module-level
AND function-level imports, so a lazy import inside a function cannot hide a cycle. Imports
under ``if TYPE_CHECKING:`` are left out: they never run, so they are no runtime dependency
(e.g. `losses` names `config.TrainConfig` in a type hint while `config` reads
`losses.LOSSES`); every other import counts.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "melalib"


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _target(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from X import ...`` statement reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + (node.module.split(".") if node.module else []))


def _type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks (their
    ``else`` branches are kept)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        children = node.orelse if _type_checking(node) else ast.iter_child_nodes(node)
        todo.extend(children)
    return out


def _imports(modules: dict[str, Path]) -> list[tuple[str, str, str, int]]:
    """(importer, imported module, imported name or "", line) for every melalib import."""
    found = []
    for module, path in modules.items():
        for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = _target(module, path, node)
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if full in modules:  # ``from . import plots``: a module, not a name
                        found.append((module, full, "", node.lineno))
                    elif target in modules:
                        found.append((module, target, alias.name, node.lineno))
            elif isinstance(node, ast.Import):
                found += [(module, a.name, "", node.lineno) for a in node.names
                          if a.name in modules]
    return found


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for importer, imported, _, _ in _imports(modules):
        if imported != importer:
            edges[importer].add(imported)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_melalib_has_no_import_cycle() -> None:
    cycles = _cycles(_graph(_modules()))
    assert cycles == [], f"import cycles among melalib modules: {cycles}"


def test_no_module_imports_another_modules_private_names() -> None:
    private = [f"{importer}:{line} imports {imported}.{name}"
               for importer, imported, name, line in _imports(_modules())
               if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
               and imported != importer]
    assert private == [], "\n".join(private)


@pytest.mark.parametrize(("sources", "cycle"), [
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import g\n"},
     [["pkg.a", "pkg.b"]]),
    ({"a.py": "from .b import x\n", "b.py": "import os\n"}, []),
    ({"a.py": "from .b import x\n",
      "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import T\n"},
     []),
    ({"a.py": "from .b import x\n",
      "b.py": "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    from .a import T\n"},
     [["pkg.a", "pkg.b"]]),
    ({"a.py": "import pkg.b\n", "b.py": "from .sub.c import y\n",
      "sub/__init__.py": "", "sub/c.py": "from ..a import z\n"},
     [["pkg.a", "pkg.b", "pkg.sub.c"]]),
])
def test_the_checks_see_lazy_and_relative_imports(tmp_path: Path, sources: dict[str, str],
                                                  cycle: list[list[str]]) -> None:
    """The graph builder on a toy package: a function-level import closes a cycle, ``..``
    relative imports from a sub-package resolve, a type-checking-only import does not count
    (its ``else`` branch does)."""
    package = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **sources}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    assert _cycles(_graph(_modules(package))) == cycle


def test_private_import_check_finds_one(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .b import __version__\n")
    (package / "a.py").write_text("def f():\n    from .b import _helper, public\n")
    (package / "b.py").write_text("__version__ = '1'\n")
    found = [(m, t, n) for m, t, n, _ in _imports(_modules(package)) if n.startswith("_")]
    assert ("pkg.a", "pkg.b", "_helper") in found


MAX_FUNCTION_LINES = 80


def _long_functions(package: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``module:line name (n lines)`` for every function or method longer than ``limit``
    lines (decorators excluded, docstring and blank lines included)."""
    found = []
    for module, path in _modules(package).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{module}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_is_longer_than_the_limit() -> None:
    """Small functions: none in melalib over `MAX_FUNCTION_LINES` lines; split a longer one
    into named steps."""
    assert _long_functions() == []


def test_the_length_check_counts_methods_and_nested_functions(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(5))
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(f"def short():\n{body}\n\nclass C:\n    def long(self):\n"
                                  + body.replace("    ", "        ") * 2
                                  + "        def inner():\n" + body.replace("    ", "            "))
    assert _long_functions(package, limit=6) == ["pkg.a:10 long (17 lines)"]


REPO = PACKAGE.parent
#: Where the run-folder layout must not be spelled: the package, the notebooks (code and
#: narrative), the benchmarks. tests/ and docs/ may name the files.
SEARCHED = ("melalib/**/*.py", "notebooks/*.ipynb", "benchmarks/*.py")
#: Files that own a name of their own folder that a run also uses: a stored table's files
#: (`LesionTable.save`, also the synthetic cache), and `melalib prepare`'s list of skipped
#: images in its output folder (not a run; `prepare` imports no config).
OWNERS = {"melalib/runs.py": "*", "melalib/table.py": "table-files",
          "melalib/data/prepare.py": "skipped_images"}
#: LAYOUT names that are also the competitions' own file names, used outside runs (the
#: ``--out`` of `melalib ensemble`, Kaggle bundles): not searched.
COMMON = {"submission"}


def _layout_patterns() -> dict[str, re.Pattern[str]]:
    """LAYOUT key -> how code or prose spells that file's name (folders are common words:
    their paths go through `RunDir` and are covered by its methods), plus the stored table's
    two files; derived from `melalib.runs.LAYOUT`, never a hand list."""
    from melalib.runs import LAYOUT
    from melalib.table import TABLE_FILE, TASK_FILE

    found = {key: re.compile(e.spellings) for key, e in LAYOUT.items()
             if not e.folder and key not in COMMON}
    found["table-files"] = re.compile("|".join(rf"(?<![\w.]){re.escape(n)}(?!\w)"
                                               for n in (TABLE_FILE, TASK_FILE)))
    return found


def _layout_hits(root: Path = REPO, searched: tuple[str, ...] = SEARCHED) -> list[str]:
    """``path:line name`` for every line outside the owners that spells a run file."""
    patterns = _layout_patterns()
    hits = []
    for glob in searched:
        for path in sorted(root.glob(glob)):
            rel = path.relative_to(root).as_posix()
            allowed = OWNERS.get(rel, "")
            if allowed == "*":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                hits += [f"{rel}:{n} {key}: {line.strip()[:90]}"
                         for key, rx in patterns.items() if key != allowed and rx.search(line)]
    return hits


def test_only_runs_spells_the_run_folder_layout() -> None:
    """The `git grep` of issue 22: no run-folder file name outside melalib/runs.py."""
    hits = _layout_hits()
    assert hits == [], "\n".join(hits)


def test_layout_check_finds_every_spelling(tmp_path: Path) -> None:
    pkg = tmp_path / "melalib"
    pkg.mkdir()
    (pkg / "runs.py").write_text('OOF = "oof.csv"\n')  # the owner may spell it
    (pkg / "m.py").write_text('"""Reads oof.csv."""\n'
                              'def f(run, k):\n    """oof_fold{k}.csv"""\n'
                              '    a = run / "run.json"\n    b = run / f"test_fold{k}.csv"\n'
                              '    c = run.done_folds()  # a method, not a file\n'
                              '    d = "sub.metrics.json"  # not the run\'s metrics\n'
                              '    raise ValueError("no shift_fold*.npz, no done_fold3.json")\n')
    nb = tmp_path / "notebooks"
    nb.mkdir()
    (nb / "01.ipynb").write_text('{"source": ["see `task.json`"]}')
    hits = _layout_hits(tmp_path, ("melalib/**/*.py", "notebooks/*.ipynb"))
    assert [h.split(" ")[0] for h in hits] == [
        "melalib/m.py:1", "melalib/m.py:3", "melalib/m.py:4", "melalib/m.py:5",
        "melalib/m.py:8", "melalib/m.py:8", "notebooks/01.ipynb:1"]


def test_importing_melalib_does_not_import_timm() -> None:
    """The CLI's cheap subcommands and the notebooks' config cells stay fast."""
    code = "import sys, melalib, melalib.config, melalib.cli; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert out.stdout.strip() == "False"


def _argparse_importers(package: Path = PACKAGE) -> list[str]:
    """Modules outside ``melalib.cli`` that import argparse (module- or function-level)."""
    found = []
    for module, path in _modules(package).items():
        if module.split(".")[:2] == [package.name, "cli"]:
            continue
        for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "argparse" for n in names):
                found.append(f"{module}:{node.lineno}")
    return found


def test_only_the_cli_parses_arguments() -> None:
    """Command-line handlers live in `melalib.cli`; library functions take typed arguments
    (no argparse Namespace in the library)."""
    assert _argparse_importers() == []


def test_the_argparse_check_finds_a_library_handler(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "cli").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli" / "__init__.py").write_text("import argparse\n")
    (package / "lib.py").write_text("def f():\n    from argparse import Namespace\n")
    assert _argparse_importers(package) == ["pkg.lib:2"]
