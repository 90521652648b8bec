"""End to end in a real browser: the demo app in its own process, headless Debian chromium driven by
Playwright (never a downloaded browser). It checks a bad upload, loads the example with one click,
compares probe and LoRA on the quick preset, checks the page answers while training, reads the
numbers from the results table, tries a sentence, saves a screenshot, and checks that the app's
temporary files are gone after it stops.

Set ``HF_LOWDATA_DEMO_SCREENSHOT=/some/file.png`` to keep the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.demo.app_module import APP_FILE
from tests.helpers import REPO_ROOT

CHROMIUM = Path(os.environ.get("HF_LOWDATA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LABELS = {"billing", "delivery", "technical"}
#: The cells of a Gradio Dataframe, row by row, as the grid shows them (ARIA roles).
TABLE_ROWS = """sel => Array.from(document.querySelectorAll(sel + ' [role=row]'))
    .map(row => Array.from(row.querySelectorAll('[role=gridcell]')).map(cell => cell.innerText.trim()))
    .filter(cells => cells.length)"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(log_path: Path, sigint_ignored: bool = False) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    log = log_path.open("w")
    # (a process a non-interactive shell starts in the background inherits SIGINT ignored: ``sigint_ignored``)
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    proc = subprocess.Popen([sys.executable, str(APP_FILE), "--port", str(port)], cwd=REPO_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=ignore)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the demo exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the demo did not answer on {url} within 240 s:\n{log_path.read_text()[-4000:]}")
        time.sleep(1)


def _stop_app(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # like Ctrl-C: atexit handlers run and remove the temporary files
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _text(page, selector: str) -> str:
    return page.inner_text(selector)


def _wait_for_text(page, selector: str, needle: str, timeout_s: float) -> None:
    page.wait_for_function(
        "([sel, needle]) => { const el = document.querySelector(sel); return el && el.innerText.includes(needle); }",
        arg=[selector, needle], timeout=timeout_s * 1000,
    )


def test_demo_compares_probe_and_lora_in_a_browser(tmp_path):
    if not CHROMIUM.is_file():
        pytest.fail(f"Debian's chromium is needed at {CHROMIUM} for this test: apt-get install chromium "
                    "(scripts/system_packages.sh installs it).")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("The Python package playwright is needed for this test: pip install -e '.[dev]' (never run "
                    "`playwright install`; the test uses Debian's chromium).")
    log_path = tmp_path / "app.log"
    proc, url = _start_app(log_path)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(url)

            # A bad upload is a message in the page.
            empty = tmp_path / "empty.csv"
            empty.write_text("")
            page.set_input_files("#labelled-file input[type=file]", str(empty))
            _wait_for_text(page, "#upload-summary", "empty.csv is empty", 60)

            # The example loads with one click; probe and LoRA on the quick preset are the defaults.
            page.click("#load-example")
            _wait_for_text(page, "#upload-summary", "Training on 27 labelled examples", 60)
            methods = page.locator("#methods")
            assert methods.get_by_label("probe", exact=True).is_checked()
            assert methods.get_by_label("lora", exact=True).is_checked()
            assert page.locator("#preset").get_by_label("quick", exact=True).is_checked()

            page.click("#run")
            _wait_for_text(page, "#status", "Training...", 120)
            # The page answers while training: Classify is handled before the comparison ends.
            page.fill("#sentence textarea", "I was charged twice this month")
            clicked = time.monotonic()
            page.click("#classify")
            _wait_for_text(page, "#try-message", "Train at least one method first", 120)
            answered = time.monotonic() - clicked
            assert "Training..." in _text(page, "#status"), "the comparison ended before the page answered"
            print(f"\nClassify answered in {answered:.2f} s while training was running")

            started = time.monotonic()
            _wait_for_text(page, "#status", "Finished", 1500)
            print(f"comparison finished {time.monotonic() - started:.0f} s after the Classify answer")
            assert _text(page, "#status").strip() == "Finished: lora done, probe done."
            rows = page.evaluate(TABLE_ROWS, "#results")
            assert [r[0] for r in rows] == ["lora", "probe"], rows
            for method, acc, acc_ci, f1, f1_ci, seconds, params, size in rows:
                assert 0 <= float(acc) <= 1 and 0 <= float(f1) <= 1, (method, acc, f1)
                assert re.fullmatch(r"\d\.\d{3}-\d\.\d{3}", acc_ci) and re.fullmatch(r"\d\.\d{3}-\d\.\d{3}", f1_ci)
                assert float(seconds) > 0 and int(params) > 0 and float(size) > 0
            assert page.locator("#score-chart img, #score-chart svg, #score-chart canvas").count() > 0
            assert page.locator("#confusion-chart img, #confusion-chart svg, #confusion-chart canvas").count() > 0

            # Try a sentence on the chosen adapter (the last finished method is preselected).
            page.click("#classify")
            page.wait_for_function(
                "labels => { const el = document.querySelector('#prediction');"
                " return el && labels.some(l => el.innerText.includes(l)); }",
                arg=sorted(LABELS), timeout=120_000,
            )
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("HF_LOWDATA_DEMO_SCREENSHOT"):
                shutil.copy(shot, os.environ["HF_LOWDATA_DEMO_SCREENSHOT"])
            browser.close()
    finally:
        _stop_app(proc)
    log = log_path.read_text()
    assert "Traceback" not in log, log[-4000:]
    match = re.search(r"temporary files in (\S+)", log)
    assert match, log[-2000:]
    assert not Path(match.group(1)).exists(), "the demo's temporary folder survived its exit"


@pytest.mark.parametrize(("signum", "sigint_ignored"), [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_the_demo_removes_its_temporary_files_when_stopped(tmp_path, signum, sigint_ignored):
    """SIGTERM (kill, a container stop) ended Python without its atexit clean-up, and a demo started in the background
    by a shell script ignored Ctrl-C's SIGINT until it was killed: either way the temporary folder stayed."""
    log_path = tmp_path / "app.log"
    proc, _ = _start_app(log_path, sigint_ignored=sigint_ignored)
    try:
        proc.send_signal(signum)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    match = re.search(r"temporary files in (\S+)", log_path.read_text())
    assert match, log_path.read_text()[-2000:]
    assert not Path(match.group(1)).exists(), "the demo's temporary folder survived its exit"
