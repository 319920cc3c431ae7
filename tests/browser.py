"""``unpack app`` on a fresh port and Debian's Chromium (/usr/bin/chromium) driven
by Playwright: the pieces the browser tests share.

Playwright must drive the system Chromium; it never downloads a browser (no
``playwright install``). Missing Chromium or Playwright fails the test with the
setup command."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.helpers import query_db

REPO = Path(__file__).resolve().parents[1]
# the models of the store `unpack demo` makes: SmolLM2 and the toy ladder
SMOL = "smollm2-135m"
LADDER = ["ladder-d64", "ladder-d96", "ladder-d128"]
LAST_D64 = "step972"  # ladder-d64's last shipped step
CHROMIUM = os.environ.get("UNPACK_CHROMIUM", "/usr/bin/chromium")
SETUP = (
    "bash .ci/setup --test (it runs apt-get install -y chromium; Playwright comes with "
    "the project's test extra) -- Playwright drives /usr/bin/chromium; never run "
    "`playwright install`"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / "artifacts" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
LOAD_TIMEOUT_MS = 120_000


def require_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}; set it up with: {SETUP}", pytrace=False
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(f"Playwright is not installed; set it up with: {SETUP}", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unpack_command() -> list[str]:
    exe = Path(sys.executable).parent / "unpack"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "unpack.cli"]


@contextlib.contextmanager
def running_app(db, port: int | None = None, log: Path | None = None):
    """``unpack app --db DB --port P`` in its own process group; yields the URL."""
    port = port or free_port()
    log = log or Path(db).with_suffix(".app.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            unpack_command() + ["app", "--db", str(db), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"`unpack app` exited with {proc.returncode}:\n{log.read_text()}"
                )
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"`unpack app` did not answer in 90 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the app and its streamlit child
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def chromium_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Playwright gives every launch a fresh temporary profile (--user-data-dir)
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(LOAD_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def settle(page, quiet_s: float = 1.0) -> float:
    """Wait until Streamlit has finished: no running indicator and the page's text
    unchanged for ``quiet_s``. Returns the time (perf_counter) of the last change."""
    page.wait_for_selector('[data-testid="stApp"]')
    state = (
        "() => [document.body.innerText.length, document.querySelectorAll('*').length,"
        " !!document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !!document.querySelector('[data-testid=\"stSpinner\"]')]"
    )
    last, changed = None, time.perf_counter()
    deadline = changed + LOAD_TIMEOUT_MS / 1000
    while True:
        now = page.evaluate(state)
        t = time.perf_counter()
        if now != last or now[2]:
            last, changed = now, t
        elif t - changed >= quiet_s:
            return changed
        if t > deadline:
            raise TimeoutError(f"the page did not settle in {LOAD_TIMEOUT_MS / 1000:.0f} s")
        page.wait_for_timeout(100)


def open_page(page, url: str, ready: str) -> float:
    """Go to ``url``, wait for the ``ready`` selector and a settled page; seconds from
    navigation to the last change on the page."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(ready, state="visible")
    return settle(page) - t0


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    p = SHOTS / f"{name}.png"
    page.screenshot(path=str(p))
    return p


def no_exception(page) -> None:
    """No traceback on the page, and no error the app's page-level guard caught."""
    errs = page.locator('[data-testid="stException"]')
    assert errs.count() == 0, errs.first.inner_text()
    guarded = page.locator('[data-testid="stAlert"]').filter(has_text="could not be drawn")
    assert guarded.count() == 0, guarded.first.inner_text()


def link(url: str, page: str, params: dict) -> str:
    """The address of ``page`` with ``params`` as its query (a link copied from the app)."""
    return f"{url}/{page}?{urlencode(params, doseq=True)}"


def sql(db, q, params=None):
    """A read-only query from the test process (the app's process holds its own)."""
    return query_db(db, q, params, df=True)
