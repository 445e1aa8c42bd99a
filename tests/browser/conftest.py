"""Servers (Voila, JupyterLab) and Debian's chromium for the browser tests.

Every server runs in its own process group on a free port of 127.0.0.1, with HOME, Jupyter's
config, data and runtime folders and IPython's in the test's tmp dir (nothing in ~ is read or
written: jupyter-lsp, for one, runs npm, which logs to ~/.npm), and is killed with its kernels and
workers in teardown. Playwright drives /usr/bin/chromium, also with a HOME of its own (its crash
reporter writes to ~/.config); Playwright's own browser downloads are never used.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a server: HOME, Jupyter and IPython state under `tmp`, the results store
    too. WORKBENCH_HOME stays (tests/conftest.py): the backend environments live there."""
    dirs = {"HOME": "home", "JUPYTER_CONFIG_DIR": "jupyter-config", "JUPYTER_DATA_DIR": "jupyter-data",
            "JUPYTER_RUNTIME_DIR": "jupyter-runtime", "IPYTHONDIR": "ipython"}
    env = {**os.environ, **{k: str(tmp / v) for k, v in dirs.items()}}
    env["JUPYTER_PLATFORM_DIRS"] = "1"  # no deprecation warning on stderr for every jupyter command
    env["WORKBENCH_STORE"] = str(tmp / "results" / "workbench.sqlite")
    env.pop("JUPYTER_PATH", None)
    env.update(extra)
    for v in dirs.values():
        (tmp / v).mkdir(parents=True, exist_ok=True)
    return env


@contextlib.contextmanager
def serve(cmd: list[str], env: dict[str, str], ready_url: str, log: Path, timeout: float = 90) -> Iterator[None]:
    """Run `cmd` (a server) until the block ends; ready once `ready_url` answers 200.

    `ready_url` must be a static file: for Voila `/` would run the notebook.
    """
    with open(log, "wb") as out:
        # its own process group: teardown signals the server and what it started, never pytest
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd[:3])} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ready_url} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's group (Jupyter then shuts its kernels down), SIGKILL after 10 s; then
    SIGKILL to whatever it had started that is still there: kernels and the workers they start run
    in process groups of their own, out of reach of the server's."""
    started = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for pid in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (children first found, grandchildren after)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (Debian's; Playwright's downloads are not used)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the `test` extra)")
    with sync_api.sync_playwright() as p:
        home = tmp_path_factory.mktemp("chromium-home")
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
               "XDG_CACHE_HOME": str(home / ".cache")}
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env=env)
        yield b
        b.close()


class PageWatch:
    """What a page did that a test fails on: uncaught errors, console errors, requests off the machine.

    `expected_outside`: URL prefixes a page may ask for off the machine (still aborted, not reported,
    nor the console error their abort causes); a test that passes one says why.
    """

    def __init__(self, page, base_url: str, expected_outside: tuple[str, ...] = ()):
        self.page = page
        self.errors: list[str] = []
        self.console: list[str] = []
        self.outside: list[str] = []
        self.port = urlsplit(base_url).port  # the server under test; any other is off limits too
        # A page opened from a file (a downloaded report) may read files; a served page may not.
        self.files = urlsplit(base_url).scheme == "file"
        self.expected_outside = expected_outside
        page.on("pageerror", lambda e: self.errors.append(f"{e}\n{getattr(e, 'stack', '')}"))
        page.on("console", self._console)
        page.on("websocket", lambda ws: self._check(ws.url))
        # Aborted before they leave: a request off the machine is recorded, never waited for.
        page.route("**/*", self._route)

    def _console(self, msg) -> None:
        url = msg.location.get("url", "")
        if msg.type != "error" or url.startswith(self.expected_outside):
            return
        self.console.append(f"{msg.text} ({url})")

    def _check(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about") or (parts.scheme == "file" and self.files):
            return True
        if parts.hostname == "127.0.0.1" and parts.port == self.port:
            return True
        if not url.startswith(self.expected_outside):
            self.outside.append(url)
        return False

    def _route(self, route) -> None:
        if self._check(route.request.url):
            route.continue_()
        else:
            route.abort()

    def assert_clean(self) -> None:
        assert not self.errors, "uncaught errors in the page:\n" + "\n".join(self.errors)
        assert not self.console, "console errors:\n" + "\n".join(self.console)
        assert not self.outside, "requests that left 127.0.0.1:\n" + "\n".join(self.outside)


@pytest.fixture
def new_page(browser):
    """new_page(base_url) -> (page, watch): a fresh browser context, closed after the test."""
    contexts = []

    def make(base_url: str, width: int = 1400, height: int = 1000, expected_outside: tuple[str, ...] = ()):
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        return page, PageWatch(page, base_url, expected_outside)

    yield make
    for context in contexts:
        context.close()


def jupyter(module: str) -> list[str]:
    """The command of a Jupyter application in the interpreter running the tests (the kernel env)."""
    return [sys.executable, "-m", module]
