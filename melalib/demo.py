"""`melalib demo`: the numbered notebooks 01 -> 06 executed headless on synthetic data.

`run_demo(output_dir)` runs each notebook with papermill (the ``python3`` ipykernel of this
interpreter) with one shared set of parameters, so they all use one run
``<output_dir>/synthetic/`` (its figures in ``figures/``) and the metadata baseline
``<output_dir>/synthetic_meta_only/``. The executed notebooks are written to
``<output_dir>/01_eda.ipynb`` ...; ``<output_dir>``'s metrics file (named as a run's) gathers the headline numbers
and ``<output_dir>/demo.json`` the progress. Re-running continues: finished notebooks are
skipped and an interrupted training resumes from its checkpoints. ``quick`` uses the
``tiny`` preset (seconds per notebook); the default uses ``synthetic_demo`` (minutes on 2
CPU cores).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import progress as live
from .bootstrap import bootstrap_ci
from .config import get_preset
from .errors import ConfigError, MelalibError, RunExistsError
from .io import write_json
from .notebook import NOTEBOOKS, notebooks_dir, parameter_names, project_root, resolve_path
from .predictions import probabilities
from .runs import RunDir

log = logging.getLogger("melalib")

RUN_NAME = "synthetic"
STATE_FILE = "demo.json"
KERNEL = "python3"
#: The kernels' own log: errors only (not ipykernel's notice about unencrypted local TCP).
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]

#: Notebook-only parameters (see `melalib.notebook.EXTRA_PARAMETERS`) per mode.
EXTRAS = {
    True: dict(baseline_epochs=3, n_boot=50, n_examples=2, n_show=2, ensemble_method="best"),
    False: dict(baseline_epochs=30, n_boot=500, n_examples=8, n_show=4,
                ensemble_method="best"),
}


#: The preset each mode trains (`--quick`: smoke values, not a result).
PRESET = {True: "tiny", False: "synthetic_demo"}


def default_output_dir(quick: bool = False) -> str:
    """Where a demo goes unless told: ``outputs/demo``, ``outputs/demo-quick`` for
    ``--quick``, so the two never share (or are advised to overwrite) one folder."""
    return "outputs/demo-quick" if quick else "outputs/demo"


#: The demo's one line: notebooks done and time so far, then the notebook and the training's
#: fold, epoch and ETA (`melalib.progress.describe`, the only ETA); at most 80 columns.
BAR: dict[str, Any] = dict(desc="melalib demo", unit="notebook", ncols=80,
                           bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}]{postfix}")


def short(notebook: str) -> str:
    """``03_train.ipynb`` -> ``03_train`` (the demo line's notebook)."""
    return notebook.removesuffix(".ipynb")


def demo_parameters(output_dir: str | os.PathLike[str] | None = None, quick: bool = False,
                    data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The papermill parameters every demo notebook receives (plain JSON values): the
    mode's ``preset`` (resolved in the notebook as any other preset) and where to write."""
    root = project_root()
    get_preset(PRESET[bool(quick)])  # a renamed preset fails here, not in a kernel
    params: dict[str, Any] = dict(
        preset=PRESET[bool(quick)],
        output_dir=resolve_path(output_dir or default_output_dir(quick), root), name=RUN_NAME,
        data_dir=resolve_path(data_dir, root) if data_dir else str(root / "data"),
        runs=f"{RUN_NAME},{RUN_NAME}_meta_only", **EXTRAS[bool(quick)])
    return params


def run_demo(output_dir: str | os.PathLike[str] | None = None, quick: bool = False,
             overwrite: bool = False, progress: bool = True, *,
             data_dir: str | os.PathLike[str] | None = None,
             parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Execute notebooks 01 -> 06 headless into ``output_dir`` and return a summary.

    ``output_dir``: default `default_output_dir` (one per mode);
    ``data_dir``: where the synthetic data are generated (default ``<project>/data``);
    ``parameters``: extra papermill parameters on top of the preset (config fields or
    notebook extras). A folder holding a demo made with other parameters raises
    RunExistsError unless ``overwrite``, which deletes it first (only a demo folder, or an
    empty one, is ever deleted). Returns ``output_dir``, ``run_dir``, the executed
    ``notebooks``, the ``figures``, the ``metrics`` (also in the demo folder's metrics file) and the
    seconds per notebook.
    """
    import papermill  # the Jupyter stack: imported when the demo runs, not with melalib

    params = demo_parameters(output_dir, quick, data_dir)
    params.update(dict(parameters or {}))
    _check_parameters(params)
    out = Path(params["output_dir"])
    state = _prepare(out, params, overwrite)
    source = notebooks_dir()
    _check_kernel()
    seconds: dict[str, float] = dict(state.get("seconds", {}))
    live_file = out / ".progress.json"
    with _quiet_papermill(), _env(MELALIB_PROGRESS=os.environ.get("MELALIB_PROGRESS", "0"),
                                  **{live.ENV: str(live_file)}):
        bar = live.bar(NOTEBOOKS, disable=not progress, **BAR)
        for name in bar:
            bar.set_postfix_str(short(name))
            target = out / name
            if name in state["done"] and target.is_file():
                continue
            started = time.perf_counter()
            try:
                with _live_postfix(bar, short(name), live_file, enabled=progress,
                                   interval=refresh_interval()):
                    papermill.execute_notebook(
                        str(source / name), str(target), parameters=params,
                        kernel_name=KERNEL, progress_bar=False, cwd=str(out),
                        log_output=False, extra_arguments=KERNEL_ARGS)
            except papermill.PapermillExecutionError as exc:
                raise MelalibError(
                    f"demo notebook {name} failed at cell {exc.exec_count}: {exc.ename}: "
                    f"{exc.evalue}. The executed notebook is {target}; fix the cause and rerun "
                    "to continue from there") from None
            seconds[name] = round(time.perf_counter() - started, 1)
            state["done"].append(name)
            state["seconds"] = seconds
            write_json(out / STATE_FILE, state)
        bar.close()
    return _summary(out, seconds)


def _check_parameters(params: Mapping[str, Any]) -> None:
    unknown = sorted(set(params) - parameter_names())
    if unknown:
        raise ConfigError(f"unknown demo parameter(s) {unknown}; use config fields or "
                          "melalib.notebook.EXTRA_PARAMETERS")


def _prepare(out: Path, params: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """Create, resume or (with ``overwrite``) replace the demo folder; its state."""
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and state is None:
        raise RunExistsError(f"{out} exists and is not a melalib demo folder (no {STATE_FILE}); "
                             "choose another output_dir: melalib never deletes folders it did "
                             "not write")
    if state is not None and overwrite:
        shutil.rmtree(out)
        state = None
    if state is not None and state.get("parameters") != params:
        old = state.get("parameters") or {}
        diff = {k: (old.get(k), params.get(k)) for k in sorted(set(old) | set(params))
                if old.get(k) != params.get(k)}
        raise RunExistsError(f"{out} holds a demo made with other parameters {diff}; choose "
                             "another output_dir (--output-dir) to keep it, or pass "
                             "overwrite=True (--overwrite) to delete and replace it")
    if state is None:
        out.mkdir(parents=True, exist_ok=True)
        state = {"parameters": params, "done": [], "seconds": {}}
        write_json(state_path, state)
    return state


def _summary(out: Path, seconds: dict[str, float]) -> dict[str, Any]:
    run_dir = out / RUN_NAME
    run = RunDir(run_dir, None)  # its reports, written or not yet (an interrupted demo)
    training, ensemble = run.metrics(), run.report("ensemble_report")
    features = run.report("features_report")
    metrics = {
        "primary_metric": training.get("primary_metric"),
        "oof_primary": training.get("oof_primary"),
        "training_oof": training.get("oof"),
        "baseline_oof": features.get("baseline"),
        "cv_check": features.get("cv_check"),
        "oof_ci": oof_ci(run_dir, training.get("primary_metric")),
        "baseline_ci": oof_ci(out / f"{RUN_NAME}_meta_only", training.get("primary_metric")),
        "ensemble_weights": ensemble.get("weights"),
        "ensemble_oof": ensemble.get("oof"),
        "ensemble_ci": ensemble.get("ci"),
        "test": ensemble.get("test"),
    }
    write_json(RunDir(out, None).metrics_path(), metrics)
    return {"output_dir": out, "run_dir": run_dir,
            "notebooks": [out / name for name in NOTEBOOKS],
            "figures": sorted(run.figures_dir().glob("*.png")),
            "submission": run.output_path("submission"), "metrics": metrics, "seconds": seconds}


def oof_ci(run_dir: Path, metric: str | None, n_boot: int = 1000) -> dict[str, float] | None:
    """The run's pooled out-of-fold ``metric`` with a 95 % bootstrap CI resampling its
    groups (patients), or None when the run has no complete OOF."""
    try:
        run = RunDir.read(run_dir)
    except ConfigError:
        return None
    if not metric or not run.complete:
        return None
    oof = run.oof()
    groups = oof["group_id"]  # the engine's prediction frame carries each row's group
    try:
        return bootstrap_ci(metric, oof["label"].to_numpy(), probabilities(run.task, oof),
                            groups=groups.to_numpy(), n_boot=n_boot)
    except MelalibError as exc:
        log.warning("no CI for %s: %s", run_dir.name, exc)
        return None


def _check_kernel() -> None:
    """Warn when the ``python3`` kernel would not run this interpreter."""
    from jupyter_client.kernelspec import (  # the Jupyter stack, as papermill above
        KernelSpecManager,
        NoSuchKernel,
    )

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel as exc:
        raise ConfigError("no 'python3' Jupyter kernel: pip install ipykernel (it registers "
                          "one for this interpreter)") from exc
    exe = spec.argv[0] if spec.argv else ""
    if exe not in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}") \
            and Path(exe).resolve() != Path(sys.executable).resolve():
        log.warning("the 'python3' kernel runs %s, not this interpreter %s; the notebooks may "
                    "not see this melalib (reinstall ipykernel in this environment)", exe,
                    sys.executable)


class _UnknownParameterFilter(logging.Filter):
    """Papermill warns about every parameter a notebook does not declare; the demo passes
    the full config to every notebook on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Passed unknown parameter")


@contextlib.contextmanager
def _quiet_papermill() -> Iterator[None]:
    logger = logging.getLogger("papermill")
    flt = _UnknownParameterFilter()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def refresh_interval() -> float:
    """Seconds between live-progress refreshes: 1 in a terminal, 30 otherwise (CI and
    papermill logs keep every refresh as a line)."""
    return 1.0 if sys.stderr.isatty() else 30.0


@contextlib.contextmanager
def _live_postfix(bar: Any, notebook: str, path: Path, enabled: bool = True,
                  interval: float = 1.0) -> Iterator[None]:
    """While the block runs, refresh ``bar``'s postfix every ``interval`` seconds with the
    notebook and the training's fold, epoch and ETA (`melalib.progress`), so a long notebook
    never looks frozen."""
    if not enabled:
        yield
        return
    stop = threading.Event()
    started = time.time()

    def poll() -> None:
        while not stop.wait(interval):
            detail = live.describe(live.read(path), since=started)
            bar.set_postfix_str(f"{notebook} | {detail}" if detail else notebook)

    thread = threading.Thread(target=poll, name="melalib-demo-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.set_postfix_str(notebook)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables (inherited by the kernels) for the block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

