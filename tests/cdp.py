"""Headless Chromium driven through the Chrome DevTools Protocol, for tests that look at a
page the way a person's browser renders it (tests/e2e/test_operator_journey.py).

Chromium is Debian's ``chromium`` package (``scripts/ensure_services.sh`` installs it).
It starts with ``--remote-debugging-port=0``; the browser's WebSocket URL is the
"DevTools listening on ws://..." line it prints on stderr. One page is attached to that
socket (``Target.attachToTarget`` with ``flatten``), and every command carries its
session id::

    with Browser() as browser:
        browser.set_cookie("_token", jwt, "http://127.0.0.1:8080")
        browser.goto("http://127.0.0.1:8080/framesift/s3/...")
        n = browser.evaluate("document.images.length")
        browser.screenshot(Path("var/screenshots/report.png"))
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

TIMEOUT_S = 60
WS_LINE = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium process with one page."""

    def __init__(self, width: int = 1280, height: int = 900):
        self.width, self.height = width, height
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def __enter__(self) -> Browser:
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("no chromium on PATH: scripts/ensure_services.sh installs Debian's package")
        # Chromium's helper processes may still write to the profile while it exits
        self._dir = tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)
        profile = Path(self._dir.name)
        self._stderr = open(profile / "stderr.log", "w+")  # a file: a pipe nobody reads fills and blocks
        args = [
            binary,
            "--headless",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile / 'profile'}",
            f"--window-size={self.width},{self.height}",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.proc = subprocess.Popen(
            [*args, "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,  # its own process group: the helpers are stopped with it
        )
        try:
            self.ws = connect(self._ws_url(), max_size=None, open_timeout=TIMEOUT_S)
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Page.enable")
            self.call("Network.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=self.width,
                height=self.height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._stderr.close()
        self._dir.cleanup()

    def _ws_url(self) -> str:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            self._stderr.seek(0)
            if found := WS_LINE.search(self._stderr.read()):
                return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self._stderr.seek(0)
        raise RuntimeError(f"chromium printed no DevTools URL:\n{self._stderr.read()[-3000:]}")

    # --- the protocol --------------------------------------------------------------------

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result; events that
        arrive meanwhile are kept in ``events``."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._recv(deadline, method)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def _recv(self, deadline: float, what: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer to {what} in {TIMEOUT_S} s")
        return json.loads(self.ws.recv(timeout=left))

    def wait_event(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == name:
                    return self.events.pop(i)
            reply = self._recv(deadline, name)
            if "method" in reply:
                self.events.append(reply)

    # --- what a test does ----------------------------------------------------------------

    def set_cookie(self, name: str, value: str, url: str) -> None:
        """A cookie for ``url``'s host, as a logged-in browser holds it."""
        if not self.call("Network.setCookie", name=name, value=value, url=url).get("success", True):
            raise RuntimeError(f"cookie {name} refused for {url}")

    def goto(self, url: str) -> int | None:
        """Open ``url`` and wait for its load event (every image loaded or failed); return
        the HTTP status of the page's document (``None`` when none was seen)."""
        self.events.clear()
        nav = self.call("Page.navigate", url=url)
        if nav.get("errorText"):
            raise RuntimeError(f"{url}: {nav['errorText']}")
        self.wait_event("Page.loadEventFired")
        status = None
        for event in self.events:
            if event["method"] == "Network.responseReceived" and event["params"].get("type") == "Document":
                status = event["params"]["response"]["status"]
        return status

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = TIMEOUT_S) -> bool:
        """Whether ``expression`` became true within ``timeout_s`` (a page that renders
        itself with JavaScript after its load event)."""
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def url(self) -> str:
        return self.evaluate("location.href")

    def screenshot(self, path: Path, max_height: int = 12000) -> Path:
        """A PNG of the whole page (up to ``max_height`` CSS pixels tall) at ``path``."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {
            "x": 0,
            "y": 0,
            "width": max(self.width, int(size["width"])),
            "height": min(max_height, int(size["height"])),
            "scale": 1,
        }
        shot = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
