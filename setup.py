"""Build hook only (metadata lives in pyproject.toml): wheels ship the numbered notebooks
(``NN_*.ipynb``; executed copies such as ``out.ipynb`` stay out) as package data in
``melalib/notebooks/``, stripped of outputs, execution counts and the metadata JupyterLab
writes, so `melalib demo` and `melalib kaggle-bundle` work from an installed wheel too and a
notebook left open in Lab ships clean. An editable install reads them from ``notebooks/``."""

import json
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithNotebooks(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "notebooks"
        target = Path(self.build_lib) / "melalib" / "notebooks"
        target.mkdir(parents=True, exist_ok=True)
        for notebook in sorted(source.glob("[0-9][0-9]_*.ipynb")):
            nb = json.loads(notebook.read_text(encoding="utf-8"))
            (target / notebook.name).write_text(json.dumps(strip(nb), indent=1,
                                                           ensure_ascii=False) + "\n",
                                                encoding="utf-8")


def strip(nb: dict) -> dict:
    """Outputs, execution counts and Lab's notebook metadata removed (like nbstripout with
    the repository's .gitconfig keys); tags and the kernelspec kept."""
    for key in ("language_info", "widgets", "papermill", "vscode"):
        nb.get("metadata", {}).pop(key, None)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        for key in ("execution", "ExecuteTime", "collapsed", "scrolled", "papermill"):
            cell.get("metadata", {}).pop(key, None)
    return nb


setup(cmdclass={"build_py": BuildPyWithNotebooks})
