"""`melalib reproduce outputs/<run>`: re-run a run from its recorded config and compare."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .io import write_error
from .predictions import read_predictions
from .runs import RunDir


def reproduce(run_dir: str | Path, atol: float = 1e-5, output_dir: str | Path | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Train the recorded config again (same seed, data, folds) and compare OOF predictions.

    The re-run always goes to a fresh folder: a new ``<output_dir>/<name>-reproduce-XXXX/``
    (kept, named in the result as ``rerun_dir``), or a temporary folder deleted afterwards;
    never the original run, which is only read (an ``output_dir`` inside it is refused).
    ``match`` is true when the table hash is identical and every OOF probability agrees
    within ``atol``.
    """
    from .engine import train  # timm: `melalib reproduce --help` stays cheap

    run_dir = Path(run_dir)
    original = RunDir.read(run_dir)
    cfg, info = original.cfg, original.info()
    if cfg is None or info is None:
        raise ConfigError(f"{run_dir} is not a melalib training run ({original.file('config').name} "
                          f"and {original.file('provenance').name} expected)")
    # folds with an OOF file; one edited since training (its completion record differs:
    # `RunDir.fold_done`) is still compared, and reported in ``changed_since_training``
    done = [k for k in range(cfg.data.n_folds) if original.oof_path(k).is_file()]
    changed = [k for k in done if not original.fold_done(k)]
    if not done:
        raise ConfigError(f"{run_dir} has no finished fold to reproduce")
    inside = output_dir and Path(output_dir).resolve().is_relative_to(run_dir.resolve())
    if inside:
        raise ConfigError(f"reproduce output_dir {output_dir} lies inside the run {run_dir}, "
                          "which reproduce only reads; pick a folder outside it")
    with tempfile.TemporaryDirectory(prefix="melalib-reproduce-") as tmp:
        target = _fresh_folder(output_dir, cfg.name) if output_dir else Path(tmp)
        again = cfg.with_overrides({"output_dir": str(target), "name": cfg.name,
                                    "overwrite": False})
        for fold in done:
            train(again, fold=fold, progress=progress)
        rerun = RunDir.read(again.run_dir)
        if rerun.path.resolve() == original.path.resolve():  # pragma: no cover - by design
            raise ConfigError(f"the re-run of {run_dir} landed in the run itself")
        new_info = rerun.info() or {}
        diffs = {}
        for fold in done:
            a, b = read_predictions(original.oof_path(fold)), rerun.oof(fold)
            merged = a.merge(b, on="image_id", suffixes=("_a", "_b"), validate="one_to_one")
            if len(merged) != len(a) or len(merged) != len(b):
                diffs[fold] = float("inf")
                continue
            cols = list(original.task.prob_columns)  # the run's reported probabilities
            delta = np.abs(merged[[f"{c}_a" for c in cols]].to_numpy()
                           - merged[[f"{c}_b" for c in cols]].to_numpy())
            diffs[fold] = float(delta.max()) if delta.size else 0.0
    same_table = new_info.get("table_hash") == info.get("table_hash")
    worst = max(diffs.values())
    return {
        "run_dir": str(run_dir), "folds": done, "table_hash_match": same_table,
        "max_abs_diff": worst, "per_fold_max_abs_diff": {str(k): v for k, v in diffs.items()},
        "changed_since_training": changed,
        "atol": atol, "match": bool(same_table and worst <= atol and not changed),
        "rerun_dir": str(again.run_dir) if output_dir else None,
        "original_versions": info.get("versions"), "reproduced_versions": new_info.get("versions"),
    }


def _fresh_folder(output_dir: str | Path, name: str) -> Path:
    """A new, empty ``<output_dir>/<name>-reproduce-XXXX/`` (never an existing folder)."""
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{name}-reproduce-", dir=output_dir))
    except OSError as exc:  # a file named like the folder, no permission, disk full
        raise write_error(output_dir, exc) from exc
