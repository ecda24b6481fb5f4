"""A minimal headless-Chromium driver for the HTML report tests (DevTools protocol over a pipe).

No WebDriver, no Playwright, no websocket: Chromium is started with
``--remote-debugging-pipe`` and reads JSON commands, each ending in a NUL byte,
from file descriptor 3 and writes answers and events to descriptor 4. This
module speaks just enough of the protocol to open a page, collect console
messages, uncaught exceptions, log entries and network requests, evaluate
JavaScript and take a full-page screenshot.

The browser gets no network: every host name resolves to nothing and every
connection goes to a proxy on 127.0.0.1:9 (the discard port; nothing listens),
and the background services (updates, sync, metrics) are off. A fresh
``--user-data-dir`` is used each time.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--remote-debugging-pipe",
]


def chromium_path() -> str | None:
    """Debian's Chromium, or whatever ``chromium`` is on PATH; None when there is none."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


class BrowserError(RuntimeError):
    pass


class Chromium:
    """``with Chromium() as b: page = b.open(path)``; see :class:`Page`."""

    def __init__(self, executable: str | None = None, timeout: float = 30.0):
        self.executable = executable or chromium_path()
        if self.executable is None:
            raise BrowserError("chromium not found (apt-get install chromium)")
        self.timeout = timeout
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    # -- process ------------------------------------------------------
    def __enter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="qaudit-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands, chromium reads fd 3
        self._res_r, res_w = os.pipe()  # chromium writes fd 4, we read

        def child_fds():
            os.dup2(cmd_r, 3)
            os.dup2(res_w, 4)

        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=child_fds,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        os.close(cmd_r)
        os.close(res_w)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close", timeout=5)
                except (BrowserError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._cmd_w, self._res_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    # -- protocol -----------------------------------------------------
    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for chromium")
            ready, _, _ = select.select([self._res_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._res_r, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed the pipe (exit {self.proc.poll()}):\n{self.stderr()[-2000:]}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float | None = None):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            m = self._recv(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for i, m in enumerate(self.events):
            if m.get("method") == method and m.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            m = self._recv(deadline)
            if m.get("method") == method and m.get("sessionId") == session:
                return m
            self.events.append(m)

    def open(self, path: Path, width: int = 1280, height: int = 900) -> Page:
        """Open a local file in a new tab at ``width`` CSS px and wait for its load event."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        self.wait_event("Page.loadEventFired", session)
        return page


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.b = browser
        self.session = session

    def evaluate(self, expression: str):
        r = self.b.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=self.session)
        if "exceptionDetails" in r:
            raise BrowserError(f"evaluate failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def _events(self, *methods: str) -> list[dict]:
        self.evaluate("0")  # drain what arrived before now
        return [m for m in self.b.events if m.get("sessionId") == self.session and m.get("method") in methods]

    def problems(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions and error/warning log entries (CSP violations among them)."""
        out = []
        for m in self._events("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded"):
            p = m["params"]
            if m["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}")
            elif m["method"] == "Runtime.exceptionThrown":
                out.append(
                    f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}"
                )
            elif m["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry']['text']}")
        return out

    def requests(self) -> list[str]:
        """Every URL the page asked for (the page itself included)."""
        return [m["params"]["request"]["url"] for m in self._events("Network.requestWillBeSent")]

    def screenshot(self, path: Path) -> tuple[int, int]:
        """A PNG of the whole page at the current width; returns (width, height) in CSS px."""
        w, h = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        r = self.b.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1},
            },
            session=self.session,
            timeout=60,
        )
        Path(path).write_bytes(base64.b64decode(r["data"]))
        return w, h
