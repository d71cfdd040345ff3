"""The dashboard in a real browser: JupyterLab on 127.0.0.1, headless Debian Chromium, Playwright.

Opens a copy of the quickstart notebook, runs all cells, checks that the live
dashboard shows every rank, clicks rank 1's "kill" like a user and waits for the
tile to show the restart. Then a notebook whose rank 0 stops at breakpoint():
rank 0's "debug" on its tile, a pdb command typed into the dashboard's console,
pdb's answer read back. Screenshots are saved under test-artifacts/.

Chromium comes from Debian (``scripts/install-browser``); Playwright's own
browser download is never used. A missing browser fails the test, so CI
cannot pass without running it; set ELASTIC_NB_SKIP_BROWSER=1 to skip it
locally.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from kernel_util import ROOT
from util import wait_until

CHROMIUM = os.environ.get("ELASTIC_NB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def chromium() -> str:
    if os.environ.get("ELASTIC_NB_SKIP_BROWSER") == "1":
        pytest.skip("ELASTIC_NB_SKIP_BROWSER=1")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/install-browser "
                    "(or set ELASTIC_NB_SKIP_BROWSER=1 to skip this test locally)")
    return CHROMIUM


def write_settings(directory: Path) -> None:
    """Start the notebook's kernel without asking, and no news pop-up over the page."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    }
    for name, values in settings.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free loopback port with a token, serving a copy of the course."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / "01_quickstart.ipynb", root)
    port, token = free_port(), secrets.token_hex(16)
    settings = tmp_path / "settings"
    write_settings(settings)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTERLAB_SETTINGS_DIR=str(settings),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log = open(tmp_path / "jupyterlab.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", "--ServerApp.open_browser=False",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2):
                return True
        except OSError:
            assert server.poll() is None, (tmp_path / "jupyterlab.log").read_text()
            return False

    try:
        wait_until(ready, timeout=120, what="JupyterLab to serve", interval=0.5)
        yield f"http://127.0.0.1:{port}", token, root
    finally:
        server.send_signal(signal.SIGINT)  # a clean shutdown also shuts down the kernels
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_quickstart_dashboard_in_jupyterlab(chromium, jupyterlab):
    from playwright.sync_api import sync_playwright

    url, token, _ = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-quickstart.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                drive_quickstart(page, url, token, shot)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"))
                print(f"screenshot of the failure: {ARTIFACTS / 'browser-failure.png'}")
                raise
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def drive_quickstart(page, url: str, token: str, shot: Path) -> None:
    """Run the quickstart in JupyterLab, kill rank 1 from the dashboard, stop the job."""
    from playwright.sync_api import expect

    with page.expect_websocket(lambda ws: "/api/kernels/" in ws.url, timeout=120_000):
        page.goto(f"{url}/lab/tree/01_quickstart.ipynb?token={token}")
    expect(page.locator(".jp-Notebook")).to_be_visible(timeout=120_000)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
        1, timeout=120_000)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()

    dashboards = page.locator(".enb-dashboard")
    expect(dashboards).to_have_count(2, timeout=180_000)  # the first job's and the playground's
    playground = dashboards.last
    for rank in (0, 1):
        expect(playground.locator(f".enb-tile[data-rank='{rank}']")).to_be_visible(timeout=120_000)
    expect(dashboards.first.locator(".enb-tile.enb-done")).to_have_count(2, timeout=120_000)
    expect(playground.locator(".enb-tile.enb-running")).to_have_count(2, timeout=120_000)

    logs = playground.locator(".enb-logs")
    expect(logs).to_contain_text("[default1]:step 3 ", timeout=120_000)
    kill = playground.get_by_title("kill rank 1", exact=False)
    expect(kill).to_be_enabled(timeout=30_000)
    kill.click()
    restarted = playground.locator(
        ".enb-tile[data-rank='1'].enb-restarting, .enb-tile[data-rank='1'].enb-restarted")
    expect(restarted).to_have_count(1, timeout=120_000)
    expect(playground.locator(".enb-tile.enb-restarted")).to_have_count(2, timeout=120_000)
    expect(playground.locator(".enb-header")).to_contain_text("restarts 1/3")
    expect(logs).to_contain_text("attempt 1 (restart count 1)", timeout=120_000)
    expect(logs).to_contain_text("attempt 0 (restart count 0)")
    playground.scroll_into_view_if_needed()
    page.screenshot(path=str(shot), full_page=False)
    print(f"screenshot: {shot}")

    playground.get_by_role("button", name="stop").click()
    expect(playground.locator(".enb-state")).to_have_text("stopped", timeout=60_000)


@contextlib.contextmanager
def notebook_page(chromium: str, jupyterlab, name: str, notebook: dict, failure_shot: str):
    """JupyterLab in headless Chromium (1400 x 1000) with ``notebook``, written as ``name``, run
    all through: its page; a screenshot ``failure_shot`` in test-artifacts if the block fails."""
    from playwright.sync_api import sync_playwright

    url, token, root = jupyterlab
    (root / name).write_text(json.dumps(notebook))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                run_all_cells(page, url, token, name)
                yield page
            except Exception:
                page.screenshot(path=str(ARTIFACTS / failure_shot))
                raise
        finally:
            browser.close()


def one_cell_notebook(source: str) -> dict:
    """A notebook of one code cell, as JupyterLab saves it."""
    return {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                       "source": source}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def run_all_cells(page, url: str, token: str, name: str) -> None:
    """Open notebook ``name`` in JupyterLab, wait for its kernel, and run all its cells."""
    from playwright.sync_api import expect

    with page.expect_websocket(lambda ws: "/api/kernels/" in ws.url, timeout=120_000):
        page.goto(f"{url}/lab/tree/{name}?token={token}")
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
        1, timeout=120_000)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()


DEBUG_NOTEBOOK = one_cell_notebook(
    "import elastic_nb as enb\n\n"
    "def paused_rank():\n"
    "    import os\n"
    "    secret = 6 * 7 * 100 + int(os.environ['RANK'])\n"
    "    if os.environ['RANK'] == '0':\n"
    "        breakpoint()\n"
    "    return secret\n\n"
    "job = enb.launch(paused_rank, nproc=2)\n"
    "job")


def test_a_pdb_command_typed_into_the_dashboard_console_is_answered(chromium, jupyterlab):
    from playwright.sync_api import expect

    with notebook_page(chromium, jupyterlab, "debug_a_rank.ipynb", DEBUG_NOTEBOOK,
                       "browser-debug-failure.png") as page:
        board = page.locator(".enb-dashboard")
        expect(board.locator(".enb-tile.enb-paused")).to_have_count(1, timeout=180_000)
        expect(board.locator(".enb-paused-at")).to_contain_text("paused at cell 1, line 8")
        debug = board.get_by_title("debug rank 0", exact=False)
        expect(debug).to_be_enabled(timeout=30_000)
        debug.click()
        console = board.locator(".enb-debug")
        expect(console).to_contain_text("-> return secret", timeout=60_000)
        board.get_by_placeholder("a pdb command").fill("p secret + 1")
        board.get_by_role("button", name="send").click()
        expect(console).to_contain_text("(Pdb) p secret + 1", timeout=60_000)
        expect(console).to_contain_text("4201")
        board.get_by_placeholder("a pdb command").fill("l")
        board.get_by_role("button", name="send").click()
        expect(console).to_contain_text("breakpoint()", timeout=60_000)  # the cell's source
        page.screenshot(path=str(ARTIFACTS / "browser-debug.png"))
        board.get_by_placeholder("a pdb command").fill("c")
        board.get_by_role("button", name="send").click()
        expect(console).to_contain_text("rank 0 continues", timeout=60_000)
        expect(board.locator(".enb-state")).to_have_text("succeeded", timeout=60_000)


GRID_NOTEBOOK = one_cell_notebook(
    "import time, elastic_nb as enb\n\n"
    "def chatty(seconds):\n"
    "    import os\n"
    "    end = time.time() + seconds\n"
    "    while time.time() < end:\n"
    "        print('rank', os.environ['RANK'], 'working', flush=True)\n"
    "        time.sleep(0.5)\n\n"
    "job = enb.launch(chatty, 60, nproc=64)\n"
    "job")


def test_the_64_rank_dashboard_fits_one_screen_above_its_logs(chromium, jupyterlab):
    from playwright.sync_api import expect

    with notebook_page(chromium, jupyterlab, "sixty_four.ipynb", GRID_NOTEBOOK,
                       "browser-64-failure.png") as page:
        board = page.locator(".enb-dashboard")
        expect(board.locator(".enb-cell")).to_have_count(64, timeout=240_000)
        expect(board.locator(".enb-tile.enb-running")).to_have_count(1, timeout=120_000)
        board.locator(".enb-cell", has_text="37").first.click()
        expect(board.locator(".enb-tile[data-rank='37']")).to_be_visible(timeout=30_000)
        top = board.bounding_box()["y"]
        logs = board.locator(".enb-logs").bounding_box()["y"]
        page.screenshot(path=str(ARTIFACTS / "browser-64-ranks.png"))
        assert logs - top < 1000, f"the logs begin {logs - top:.0f} px below the top"
        board.get_by_role("button", name="stop").click()
        expect(board.locator(".enb-state")).to_have_text("stopped", timeout=60_000)


EIGHT_NOTEBOOK = one_cell_notebook(
    "import elastic_nb as enb\n\n"
    "def wait(seconds):\n"
    "    import time\n"
    "    time.sleep(seconds)\n\n"
    "job = enb.launch(wait, 120, nproc=8)\n"
    "job")


def test_eight_tiles_show_whole_button_labels_in_jupyterlab(chromium, jupyterlab):
    """At 8 ranks in JupyterLab's default width every tile's buttons read whole ("kill",
    "freeze", "slow", "debug"), none cut to "kill ra…"; each says what it does on hover."""
    from playwright.sync_api import expect

    with notebook_page(chromium, jupyterlab, "eight.ipynb", EIGHT_NOTEBOOK,
                       "browser-8-failure.png") as page:
        board = page.locator(".enb-dashboard")
        expect(board.locator(".enb-tile.enb-running")).to_have_count(8, timeout=240_000)
        buttons = board.locator(".enb-tile-button")
        expect(buttons).to_have_count(32)
        page.screenshot(path=str(ARTIFACTS / "browser-8-tiles.png"))
        cut = buttons.evaluate_all(
            "els => els.filter(e => e.scrollWidth > e.clientWidth + 1)"
            ".map(e => e.title + ': ' + e.textContent)")
        assert cut == [], f"labels cut: {cut}"
        board.get_by_role("button", name="stop").click()
        expect(board.locator(".enb-state")).to_have_text("stopped", timeout=60_000)


METRICS_NOTEBOOK = {
    "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
               "source": "import time, elastic_nb as enb\n\n"
                         "def train(steps):\n"
                         "    import os\n"
                         "    rank = int(os.environ['RANK'])\n"
                         "    for step in range(steps):\n"
                         "        time.sleep(0.05)\n"
                         "        enb.report(step, loss=1 / (step + 1) + rank / 50)\n\n"
                         "job = enb.launch(train, 200, nproc=2, max_restarts=1)\n"
                         "job"},
              {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
               "source": "job.wait_until(lambda: len(job.metrics_book) > 40, what='20 steps')\n"
                         "job.kill(1)\n"
                         "job.wait()"}],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def test_the_metrics_tab_draws_the_loss_of_each_rank_with_the_restart_marked(chromium,
                                                                              jupyterlab):
    from playwright.sync_api import expect

    with notebook_page(chromium, jupyterlab, "metrics.ipynb", METRICS_NOTEBOOK,
                       "browser-metrics-failure.png") as page:
        board = page.locator(".enb-dashboard")
        expect(board.locator(".enb-state")).to_have_text("succeeded", timeout=240_000)
        board.locator(".lm-TabBar-tab", has_text="metrics").first.click()
        figure = board.locator(".enb-metrics-figure")
        expect(figure).to_be_visible(timeout=30_000)
        expect(figure.locator(".dot").first).to_be_visible(timeout=30_000)  # an event's mark
        assert figure.locator(".dot").count() >= 2  # the kill and the restart (and the failure)
        assert figure.locator("path.line").count() >= 2 + 2  # a line a rank, and the marks
        expect(figure).to_contain_text("rank 1")  # the legend
        expect(board.locator(".enb-goodput")).to_contain_text("goodput")
        page.screenshot(path=str(ARTIFACTS / "browser-metrics.png"))
