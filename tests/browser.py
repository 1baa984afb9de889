"""A headless Chromium driven over the DevTools protocol on a pipe: load a page, read what its console and
network did, evaluate JavaScript in it, take screenshots. Used to check the HTML report in a real browser
(tests) and to take the README's screenshots.

Standard library only: Chromium's ``--remote-debugging-pipe`` speaks the protocol as NUL-terminated JSON on
file descriptors 3 (to the browser) and 4 (from it), so neither a WebSocket client nor a browser-automation
package (and its browser downloads) is needed; the system's Chromium (Debian's ``chromium``) is used as it is.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(RuntimeError):
    """The browser could not be started, or did not answer in time."""


def find_chromium() -> str | None:
    """The Chromium executable: ``$CHROMIUM`` when set, else the first of CANDIDATES on PATH; None if none."""
    given = os.environ.get("CHROMIUM")
    if given:
        return shutil.which(given) or (given if Path(given).is_file() else None)
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


@dataclass
class PageLog:
    """What a page did while it loaded: console errors and warnings, uncaught exceptions, browser log errors
    (a resource that failed to load, a blocked request) and every URL it requested."""

    console_errors: list[str] = field(default_factory=list)
    console_warnings: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        """Every error of any kind: what a test fails on."""
        return self.console_errors + self.exceptions + self.log_errors


class Browser:
    """One headless Chromium with one page (``width`` x ``height`` CSS pixels). A context manager: the browser
    process is ended when the block ends, whatever happens in it.

    Raises BrowserError when no Chromium is found or it does not start."""

    def __init__(self, width: int = 1366, height: int = 900, timeout_s: float = 30.0):
        executable = find_chromium()
        if executable is None:
            raise BrowserError(f"no Chromium found (tried $CHROMIUM and {', '.join(CANDIDATES)})")
        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="aimatrix-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            executable,
            "--headless",
            "--remote-debugging-pipe",
            # Root (CI containers) cannot use Chromium's sandbox; a test loads only files the suite wrote.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={self._profile.name}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        r, w = to_browser_r, from_browser_w

        def onto_3_and_4() -> None:
            # Chromium must find the pipe ends at descriptors 3 and 4. Moved above 9 first, so that neither
            # dup2 overwrites the other end; Popen's close_fds is off because it would close 3 and 4 after
            # this runs (Python's own descriptors are not inheritable, so nothing else leaks).
            high_r, high_w = fcntl.fcntl(r, fcntl.F_DUPFD, 10), fcntl.fcntl(w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)
            os.close(high_r)
            os.close(high_w)

        try:
            self._process = subprocess.Popen(
                args,
                preexec_fn=onto_3_and_4,  # noqa: PLW1509 - only descriptor moves between fork and exec
                close_fds=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise BrowserError(f"could not start {executable}: {exc}") from None
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.width, self.height = width, height
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                self.call(f"{domain}.enable", session=True)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=True,
            )
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------- protocol

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer within {self.timeout_s:g} s")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited (status {self._process.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        """Send one protocol command (to the page's session when ``session``) and return its result; events
        that arrive meanwhile are kept for ``load``. Raises BrowserError on a protocol error or a timeout."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    # ----------------------------------------------------------------------------------------------- page

    def load(self, path: Path, settle_s: float = 0.3) -> PageLog:
        """Open ``path`` (a local file), wait for its load event and ``settle_s`` more (scripts that run after
        load), and return what the page logged meanwhile."""
        self._events.clear()
        url = Path(path).resolve().as_uri()
        result = self.call("Page.navigate", {"url": url}, session=True)
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")
        deadline = time.monotonic() + self.timeout_s
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            self._events.append(self._read(deadline))
        end = time.monotonic() + settle_s
        while time.monotonic() < end:
            # A cheap round trip, so events sent meanwhile are read.
            self.call("Runtime.evaluate", {"expression": "1"}, session=True)
            time.sleep(0.05)
        return self._page_log()

    def _page_log(self) -> PageLog:
        log = PageLog()
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                if params.get("type") in ("error", "assert"):
                    log.console_errors.append(text)
                elif params.get("type") == "warning":
                    log.console_warnings.append(text)
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                log.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                log.log_errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Network.requestWillBeSent":
                log.requests.append(params.get("request", {}).get("url", ""))
        return log

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def screenshot(self, out: Path, selector: str | None = None, height: int | None = None) -> Path:
        """A PNG of the viewport (``selector`` None) or of the first element matching ``selector`` (scrolled
        into view, at most ``height`` pixels of it), written to ``out``; returns ``out``."""
        params: dict[str, Any] = {"format": "png"}
        if selector is not None:
            box = self.evaluate(
                f"(function(){{var e=document.querySelector({json.dumps(selector)});if(!e)return null;"
                "e.scrollIntoView();var r=e.getBoundingClientRect();"
                "return {x:r.left+window.scrollX,y:r.top+window.scrollY,width:r.width,height:r.height};})()"
            )
            if box is None:
                raise BrowserError(f"nothing on the page matches {selector}")
            clip_height = min(box["height"], height) if height else box["height"]
            params["clip"] = {"x": box["x"], "y": box["y"], "width": box["width"], "height": clip_height, "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", params, session=True)["data"]
        out = Path(out)
        out.write_bytes(base64.b64decode(data))
        return out

    def close(self) -> None:
        """End the browser (politely, then by force) and remove its profile directory; idempotent."""
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            try:
                os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        for fd in ("_to_browser", "_from_browser"):
            if getattr(self, fd, None) is not None:
                try:
                    os.close(getattr(self, fd))
                except OSError:
                    pass
                setattr(self, fd, None)
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
