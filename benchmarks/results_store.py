"""The results store: the JSON files under ``docs/`` that ``docs/results.md`` is rendered from.

``docs/results.json`` holds one key per real-data experiment (`real_experiments`); `record`
merges one experiment into it under a file lock, so parallel invocations can share it, and
rewrites the markdown with the renderer it is given. The other benchmark scripts write their
own JSON beside it (paths below); the renderer reads them with `read_optional`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from melalib.io import write_json, write_text

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RESULTS_JSON = DOCS / "results.json"
RESULTS_MD = DOCS / "results.md"
#: Written by the sibling scripts, read when results.md is rendered.
SYNTHETIC_JSON = DOCS / "results_synthetic.json"  # benchmarks/synthetic_results.py
STACK_JSON = DOCS / "results_stack.json"  # benchmarks/stack_results.py
EXTERNAL_JSON = DOCS / "results_external.json"  # benchmarks/external_results.py
EXTERNAL_REVERSE_JSON = DOCS / "results_external_reverse.json"  # the same, MILK10k -> HAM
MILK_JSON = DOCS / "results_milk10k.json"  # benchmarks/milk10k_results.py
EXPLAIN_JSONS = (DOCS / "results_explain.json",  # benchmarks/explain_results.py
                 DOCS / "results_explain_finer.json",  # the same runs, --layer finer
                 DOCS / "results_explain_field.json",  # the recipe vs field_mask=ellipse
                 DOCS / "results_explain_guided.json",  # cam_guidance=1, the auto layer
                 DOCS / "results_explain_guided_bn2.json",  # the same, the guided layer
                 DOCS / "results_explain_pooled.json",  # recipe vs guided, fold 0, pooled
                 DOCS / "results_explain_guided_fold1.json")  # guided, fold 1, pooled

Render = Callable[[dict[str, Any]], str]


def quick_paths(out: Path) -> tuple[Path, Path]:
    """Where a ``--quick`` smoke run records instead of ``docs/``: JSON and markdown."""
    return out / "results_quick.json", out / "results_quick.md"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for parallel invocations (the lock file lives in the
    temp folder, not next to the results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"melalib-real-results-{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_results(path: Path = RESULTS_JSON) -> dict[str, Any]:
    """The recorded experiments (``{"experiments": {name: result}}``; empty when absent)."""
    if not path.is_file():
        return {"experiments": {}}
    return json.loads(path.read_text())


def read_optional(path: Path) -> dict[str, Any] | None:
    """A sibling script's JSON, or None when it has not been recorded."""
    return json.loads(path.read_text()) if path.is_file() else None


def record(result: dict[str, Any], json_path: Path, md_path: Path, render: Render) -> None:
    """Merge one experiment into the JSON and regenerate the markdown (file-locked)."""
    with locked(json_path):
        results = load_results(json_path)
        results.setdefault("experiments", {})[result["name"]] = result
        write_json(json_path, results)
        write_text(md_path, render(results))


def rerender(json_path: Path, md_path: Path, render: Render) -> None:
    """Regenerate the markdown from the JSON alone (file-locked)."""
    with locked(json_path):
        write_text(md_path, render(load_results(json_path)))
