"""JupyterLab as a new user meets it: a real server on 127.0.0.1, headless Chromium (Debian's
``chromium`` package, driven by Playwright through ``executable_path``), 01_eda opened and
run with Run > Run All Cells. Nothing may print an error or a warning block (stderr), and
every code cell must have run.

Deselected by default (``-m browser``; `make test-browser`); skipped when Playwright or
Chromium is missing. The notebook is a copy in a scratch project, so the repository's
sources are never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_notebooks import scratch_copy  # the tests folder, inserted above

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MELALIB_CHROMIUM") or shutil.which("chromium") or \
    shutil.which("chromium-browser")
NOTEBOOK = "01_eda.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on 127.0.0.1 serving a scratch project (pyproject.toml +
    notebooks/01_eda.ipynb); yields (base URL with token, project folder)."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    scratch_copy(REPO / "notebooks" / NOTEBOOK, project / "notebooks" / NOTEBOOK)  # as committed
    port, token = _free_port(), secrets.token_hex(16)
    settings = tmp_path / "lab-settings"
    # Every cell in the DOM (Lab 4 renders only the visible ones by default), no news popup.
    for plugin, values in {"notebook-extension/tracker": {"windowingMode": "none"},
                           "apputils-extension/notification": {"fetchNews": "false"}}.items():
        target = settings / f"@jupyterlab/{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    env = {**{k: v for k, v in os.environ.items() if k != "MPLBACKEND"},  # Lab's inline
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={project}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("JupyterLab did not start:\n" +
                                (tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(1)
        yield f"{base}/lab/tree/notebooks/{NOTEBOOK}?token={token}", project
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_01_eda_runs_all_cells_in_jupyterlab(lab: tuple[str, Path]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM:
        pytest.skip("no chromium executable (apt-get install chromium)")
    url, project = lab
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, timeout=120_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        _wait_kernel_idle(page, 120)
        page.get_by_role("menuitem", name="Run", exact=True).click(timeout=30_000)
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click(timeout=30_000)
        saved = _wait_all_ran(page, project / "notebooks" / NOTEBOOK, 900)
        page.screenshot(path=str(project.parent / "done.png"), full_page=True)
        stderr = page.locator(".jp-OutputArea-output[data-mime-type="
                              "'application/vnd.jupyter.stderr']").all_inner_texts()
        browser.close()
    assert stderr == [], "\n---\n".join(stderr)[:3000]
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    streams = [o for c in code for o in c["outputs"] if o.get("name") == "stderr"]
    assert streams == [], streams
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert errors == []
    assert any(o.get("data", {}).get("image/png") for c in code for o in c["outputs"])
    assert (project / "outputs" / "notebooks" / "figures" / "01_class_balance.png").is_file()
    # what Lab saved (outputs, language_info, ...) strips back to the committed source
    from test_notebooks import committed_text, nbstripout_extra_keys

    done = subprocess.run([sys.executable, "-m", "nbstripout", "--extra-keys",
                           nbstripout_extra_keys(), str(project / "notebooks" / NOTEBOOK)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (project / "notebooks" / NOTEBOOK).read_text() == committed_text(NOTEBOOK)


def _kernel_idle(page) -> bool:
    return "| Idle" in (page.locator(".jp-StatusBar-Widget").all_inner_texts() and
                        " ".join(page.locator(".jp-StatusBar-Widget").all_inner_texts()))


def _wait_kernel_idle(page, seconds: float) -> None:
    """Until the status bar says the kernel is idle."""
    deadline = time.time() + seconds
    while not _kernel_idle(page):
        if time.time() > deadline:
            pytest.fail(f"the kernel was not idle within {seconds} s")
        page.wait_for_timeout(1000)


def _wait_all_ran(page, path: Path, seconds: float) -> dict:
    """Save (Ctrl+S) whenever the kernel is idle until the saved notebook has an execution
    count in every code cell; return it."""
    deadline = time.time() + seconds
    counts: list = []
    while time.time() < deadline:
        page.wait_for_timeout(3000)
        if not _kernel_idle(page):
            continue
        page.keyboard.press("Control+s")
        page.wait_for_timeout(1500)
        saved = json.loads(path.read_text())
        counts = [c["execution_count"] for c in saved["cells"] if c["cell_type"] == "code"]
        if counts and all(counts):
            return saved
    pytest.fail(f"not every cell ran within {seconds} s: execution counts {counts}")
