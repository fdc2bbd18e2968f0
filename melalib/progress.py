"""Progress: every bar melalib draws (`bar`), and live training progress across processes
(which run, fold and epoch, and an ETA).

`bar` is tqdm.auto's widget where a live frontend renders widgets (a Jupyter server's
kernel: JupyterLab, Notebook; VS Code; Colab; an interactive Kaggle session) and a text bar
everywhere else: a terminal, a log, and papermill / nbclient, whose saved notebooks would
keep only a widget's first frame (a bar frozen at 0 %). ``MELALIB_PROGRESS=0`` hides training's
bars (`melalib.engine`).


The engine calls `report` after every epoch; when ``$MELALIB_PROGRESS_FILE`` names a file,
it writes one small JSON record there (atomically). `melalib demo` sets the variable for
the notebook kernels it starts and polls the file (`read`, `describe`) to show
``03_train.ipynb | synthetic fold 2/5 epoch 3/6 | ETA 1:20`` while a notebook runs, since
the kernel's own bars are not visible from the command line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as text_tqdm

ENV = "MELALIB_PROGRESS_FILE"
#: Environment variables that mark a kernel whose frontend renders widgets.
WIDGET_FRONTENDS = ("JPY_SESSION_NAME", "VSCODE_PID", "COLAB_RELEASE_TAG")


def widget_frontend() -> bool:
    """Whether this process is a Jupyter kernel whose frontend draws widgets (see above)."""
    try:
        from IPython import get_ipython  # only inside a kernel: IPython is already loaded
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
        return False
    return any(os.environ.get(v) for v in WIDGET_FRONTENDS) or \
        os.environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Interactive"


def bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm progress bar (arguments as tqdm's): a widget or text, see the module note."""
    cls = auto_tqdm if widget_frontend() else text_tqdm
    return cls(iterable, **kwargs)


def report(run: str, fold: int, folds: Sequence[int], epoch: int, epochs: int,
           epoch_seconds: Sequence[float]) -> None:
    """Record that ``run`` finished ``epoch`` (1-based; 0 = the fold starts) of ``epochs``
    in ``fold``, one of ``folds`` (those this call trains); ``epoch_seconds``: this fold's
    epoch durations (none yet: the pace of the run's previous record)."""
    target = os.environ.get(ENV)
    if not target:
        return
    order = list(folds)
    position = order.index(fold) if fold in order else 0
    mean = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None
    if mean is None:  # a fold's start: the run's pace so far, from the last record
        last = read(target) or {}
        mean = last.get("seconds_per_epoch") if last.get("run") == run else None
    left = (len(order) - position - 1) * epochs + (epochs - epoch)
    record = {"run": run, "fold": fold, "fold_position": position + 1, "n_folds": len(order),
              "epoch": epoch, "epochs": epochs, "seconds_per_epoch": mean,
              "eta_seconds": None if mean is None else round(left * mean, 1),
              "time": time.time()}
    path = Path(target)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError:  # progress is best effort: never stop a training for it
        tmp.unlink(missing_ok=True)


def read(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last record in ``path`` (None when absent or half-written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def describe(record: dict[str, Any] | None, since: float = 0.0) -> str:
    """``run fold 2/5 epoch 3/6 | ETA 1:20`` for a record written after ``since`` (epoch
    seconds), else ``""``; the ETA counts down from the record's time."""
    if not record or record.get("time", 0.0) < since:
        return ""
    text = (f"{record['run']} fold {record['fold_position']}/{record['n_folds']} "
            f"epoch {record['epoch']}/{record['epochs']}")
    eta = record.get("eta_seconds")
    if eta is not None:
        left = max(0.0, eta - (time.time() - record["time"]))
        text += f" | ETA {format_seconds(left)}"
    return text


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3700`` -> ``1:01:40``."""
    s = round(seconds)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
