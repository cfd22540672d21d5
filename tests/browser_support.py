"""Real headless Chromium for the demo's browser tests, and a throwaway redis-server.

Load with ``pytest_plugins = ["browser_support"]`` in a test module. Chromium is Debian's
``chromium`` package (``/usr/bin/chromium``, or ``RELAY_CHROMIUM``), driven by the ``playwright``
package's sync API; playwright's own browser download is never used.

Fixtures:

``browser``     one Chromium for the session.
``open_page``   ``open_page(url, viewport=None)`` opens the URL in a fresh context (its own
                cookies and cache, like a second browser) and returns the page; ``page.errors``
                collects uncaught page errors and failed console messages. ``viewport`` is
                ``{"width", "height"}`` (a laptop's 1000 x 760 by default). When the test fails,
                every page it opened is saved to ``test-artifacts/<test>/page<N>.png`` with its
                console log. ``save_screenshot(page, name)`` saves one on purpose, pass or fail.
``demo_redis``  a redis-server on a free port for this test: ``.url``, ``.client``.
``tcp_proxy``   ``tcp_proxy(port)`` forwards a free port to ``port``; ``.cut()`` drops every
                connection and refuses new ones until ``.restore()``: a network outage between
                the browser and a relay that keeps running.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from redis_support import RedisServer
from relay.testing import TcpProxy

CHROMIUM = os.environ.get("RELAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
_NETWORK_ERROR = re.compile(r"^Failed to load resource: net::ERR_")  # not an HTTP error status
TIMEOUT_MS = 10_000  # the longest any single DOM wait may take


_failed_key = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember a failed setup or call, so ``open_page`` saves screenshots at teardown."""
    outcome = yield
    if outcome.get_result().failed:
        item.stash[_failed_key] = True


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), "
                    "or point RELAY_CHROMIUM at a Chromium binary", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, request):
    opened = []

    def open_page(url: str, viewport: dict | None = None):
        context = browser.new_context(viewport=viewport or {"width": 1000, "height": 760})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.errors = []
        page.console_lines = []
        page.on("pageerror", lambda exc: page.errors.append(f"uncaught: {exc}"))
        page.on("console", lambda msg: _on_console(page, msg))
        opened.append((context, page))
        page.goto(url)
        return page

    yield open_page
    failed = request.node.stash.get(_failed_key, False)
    if failed:
        _save_artifacts(request.node.nodeid, [page for _, page in opened])
    for context, _ in opened:
        context.close()


def _on_console(page, msg) -> None:
    line = f"[{msg.type}] {msg.text}"
    page.console_lines.append(line)
    # A stream cut or a relay that is down logs a network error per EventSource attempt: expected.
    if msg.type == "error" and not _NETWORK_ERROR.search(msg.text):
        page.errors.append(line)


def save_screenshot(page, name: str) -> Path:
    """Save what ``page`` shows now as ``test-artifacts/screenshots/<name>.png``, to look at later."""
    path = ARTIFACTS / "screenshots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path


def _save_artifacts(nodeid: str, pages) -> None:
    directory = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    directory.mkdir(parents=True, exist_ok=True)
    for number, page in enumerate(pages, 1):
        try:
            page.screenshot(path=str(directory / f"page{number}.png"), full_page=True)
            (directory / f"page{number}.html").write_text(page.content())
        except Exception as exc:  # noqa: BLE001 - a closed page must not hide the test's own failure
            (directory / f"page{number}.screenshot-failed.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        (directory / f"page{number}.console.log").write_text("\n".join(page.console_lines) + "\n")
    print(f"\nbrowser artifacts saved in {directory}")


@pytest.fixture
def demo_redis(tmp_path):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is missing: apt-get install redis-server", pytrace=False)
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def wait_connected(page, state: str = "connected", timeout_ms: int = TIMEOUT_MS) -> None:
    """Wait until the page's connection badge says ``state``."""
    page.wait_for_selector(f'[data-testid="connection"][data-state="{state}"]', timeout=timeout_ms)


def text_of(page, testid: str) -> str:
    return page.get_by_test_id(testid).inner_text()


@pytest.fixture
def tcp_proxy():
    proxies: list[TcpProxy] = []

    def start(target_port: int) -> TcpProxy:
        proxies.append(TcpProxy(target_port).restore())
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.cut()
