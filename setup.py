"""Build hook only (metadata lives in pyproject.toml): wheels ship the numbered notebooks
as package data in ``melalib/notebooks/``, so `melalib demo` and `melalib kaggle-bundle`
work from an installed wheel too. An editable install reads them from ``notebooks/``."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithNotebooks(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "notebooks"
        target = Path(self.build_lib) / "melalib" / "notebooks"
        target.mkdir(parents=True, exist_ok=True)
        for notebook in sorted(source.glob("*.ipynb")):
            shutil.copy2(notebook, target / notebook.name)


setup(cmdclass={"build_py": BuildPyWithNotebooks})
