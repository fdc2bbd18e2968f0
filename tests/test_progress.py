"""Live progress: the engine's per-epoch record and what `melalib demo` shows from it."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import nbformat
import pytest
from tqdm import tqdm as console_tqdm

from melalib import demo as demo_mod
from melalib import progress as live
from melalib.engine import train


def test_report_writes_fold_epoch_and_an_eta(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.json"
    live.report("r", 1, [0, 1, 2], 2, 4, [10.0, 20.0])
    assert not path.exists()  # no variable: nothing written
    monkeypatch.setenv(live.ENV, str(path))
    live.report("r", 1, [0, 1, 2], 2, 4, [10.0, 20.0])
    record = live.read(path)
    # fold 2 of 3: 2 epochs left here + 4 in the last fold, 15 s each
    assert record["fold_position"] == 2 and record["n_folds"] == 3
    assert record["eta_seconds"] == pytest.approx(6 * 15.0)
    text = live.describe(record)
    assert text.startswith("r fold 2/3 epoch 2/4 | ETA 1:")
    assert live.describe(record, since=time.time() + 5) == ""  # an older run's record
    assert live.format_seconds(3700) == "1:01:40" and live.format_seconds(75) == "1:15"
    assert live.read(tmp_path / "absent.json") is None
    # the next fold starts: no epoch of it yet, the run's pace so far gives the ETA
    live.report("r", 2, [0, 1, 2], 0, 4, [])
    assert live.read(path)["eta_seconds"] == pytest.approx(4 * 15.0)
    assert live.describe(live.read(path)).startswith("r fold 3/3 epoch 0/4 | ETA 1:0")


def test_training_reports_each_epoch(tiny_cfg, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "live.json"
    monkeypatch.setenv(live.ENV, str(path))
    train(tiny_cfg(epochs=2), fold=1, progress=False)
    record = live.read(path)
    assert (record["run"], record["fold"], record["epoch"], record["epochs"]) == ("tiny", 1, 2, 2)
    assert record["n_folds"] == 1 and record["eta_seconds"] == 0.0


class _Recorder:
    def __init__(self) -> None:
        self.postfixes: list[str] = []

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfixes.append(text)


def test_live_postfix_shows_the_kernels_progress(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "live.json"
    bar = _Recorder()
    monkeypatch.setenv(live.ENV, str(path))
    with demo_mod._live_postfix(bar, "03_train.ipynb", path, interval=0.02):
        live.report("synthetic", 0, [0, 1], 1, 3, [4.0])
        time.sleep(0.3)
    assert any(p.startswith("03_train.ipynb | synthetic fold 1/2 epoch 1/3 | ETA 0:")
               for p in bar.postfixes), bar.postfixes
    assert bar.postfixes[-1] == "03_train.ipynb"


def test_bars_are_text_unless_a_frontend_draws_widgets(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """papermill / nbclient kernels get text bars: a widget's saved text form is its first
    frame, a bar frozen at 0 %. A Jupyter server's kernel (JPY_SESSION_NAME) gets widgets."""
    from tqdm.notebook import tqdm as widget_tqdm

    class Shell:
        config: ClassVar[dict] = {"IPKernelApp": {}}

    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    for name in (*live.WIDGET_FRONTENDS, "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    assert not live.widget_frontend()  # a kernel papermill started
    bar = live.bar(range(3), disable=True)
    assert not isinstance(bar, widget_tqdm)
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/03_train.ipynb")
    assert live.widget_frontend()
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)  # plain Python: never widgets
    assert not live.widget_frontend()


def test_demo_passes_the_progress_file_to_the_kernels(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels inherit $MELALIB_PROGRESS_FILE; what they report shows in the demo bar."""
    import papermill

    seen: list[str | None] = []

    def fake(source: str, target: str, **kwargs: Any) -> None:
        seen.append(os.environ.get(live.ENV))
        if Path(source).name == "03_train.ipynb":
            live.report("synthetic", 2, [0, 1, 2], 3, 6, [1.0])
            time.sleep(1.5)
        nbformat.write(nbformat.v4.new_notebook(), target)

    monkeypatch.setattr(papermill, "execute_notebook", fake)
    monkeypatch.setattr(demo_mod, "_check_kernel", lambda: None)
    monkeypatch.setattr(demo_mod, "refresh_interval", lambda: 0.2)
    stream = io.StringIO()
    monkeypatch.setattr(live, "bar",  # the demo's bar, as a terminal would show it
                        lambda *a, **k: console_tqdm(*a, **{**k, "file": stream}))
    demo_mod.run_demo(tmp_path / "demo", quick=True, data_dir=tmp_path / "data")
    assert seen and all(s == str(tmp_path / "demo" / ".progress.json") for s in seen)
    shown = stream.getvalue()
    assert "03_train | synthetic fold 3/3 epoch 3/6 | ETA" in shown
    # one ETA (the training's; tqdm's own "<remaining" is not shown), within 80 columns
    lines = [line.strip() for line in shown.replace("\r", "\n").split("\n") if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert all(line.count("ETA") <= 1 and "<" not in line for line in lines), lines


def test_live_progress_refreshes_slowly_outside_a_terminal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr("sys.stderr", Stream(True))
    assert demo_mod.refresh_interval() == 1.0
    monkeypatch.setattr("sys.stderr", Stream(False))
    assert demo_mod.refresh_interval() == 30.0
