"""Headless Chromium driven over the Chrome DevTools Protocol (its websocket, ``websocket-client``): open a
page, collect its JavaScript errors, and photograph an element. Nothing is downloaded: the browser is the
system's (Debian's ``chromium``), found on the PATH.

WebGL runs on SwiftShader (Chromium's CPU renderer), so 3Dmol.js and NiiVue draw without a GPU.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless=new", "--no-sandbox", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--disable-background-networking", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
         # WebGL on the CPU: ANGLE over SwiftShader (no GPU on CI, and root needs --no-sandbox)
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
         "--window-size=1400,1000", "--remote-debugging-port=0"]


def find_chromium() -> str | None:
    """The path of a Chromium on the PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@dataclass
class PageVisit:
    """What one page load showed: its JavaScript errors (uncaught exceptions, console.error, failed loads)
    and the value of its readiness expression."""

    errors: list[str] = field(default_factory=list)
    ready: object = None


class Chromium:
    """One headless Chromium with one tab, driven over CDP. Use as a context manager."""

    def __init__(self, executable: str, timeout: float = 120.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="sci-diffusion-chromium-")
        self.process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{executable} did not start its DevTools endpoint")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        import websocket  # websocket-client, of the [dev] extra; the fixture skips the tests without it
        self.socket = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)

    def send(self, method: str, session: bool = False, **params) -> dict:
        """Send one CDP command and return its result (events that arrive meanwhile are kept)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def visit(self, path: str | os.PathLike, ready: str = "window.reportReady", wait: float = 30.0) -> PageVisit:
        """Open a local file, wait until ``ready`` is truthy (or ``wait`` seconds), and return what happened."""
        self.events.clear()
        self.send("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        visit, deadline = PageVisit(), time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                visit.ready = self.evaluate(ready)
            except RuntimeError:
                visit.ready = None
            if visit.ready:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # a frame or two more: errors thrown after the ready flag show up too
        self.evaluate("1")
        visit.errors = [text for event in self.events if (text := _error_text(event))]
        return visit

    def screenshot(self, selector: str, hide: str | None = None) -> np.ndarray:
        """The pixels ``(H, W, 3)`` uint8 of the first element matching ``selector``, as the screen shows them
        (scrolled into view first, since a WebGL canvas is drawn only on screen; the clip is in page coordinates;
        elements matching ``hide``, such as labels drawn over it, hidden meanwhile)."""
        hide_js = (f"document.querySelectorAll({json.dumps(hide)}).forEach(e => e.style.visibility = 'hidden');"
                   if hide else "")
        x, y, width, height = self.evaluate(
            f"(async () => {{ {hide_js} const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
            " await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));"
            " const r = e.getBoundingClientRect(); return [r.x + scrollX, r.y + scrollY, r.width, r.height]; })()")
        time.sleep(0.3)
        data = self.send("Page.captureScreenshot", session=True, format="png",
                         clip={"x": x, "y": y, "width": width, "height": height, "scale": 1})["data"]
        if hide:
            self.evaluate(f"document.querySelectorAll({json.dumps(hide)}).forEach(e => e.style.visibility = '')")
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def close(self) -> None:
        try:
            if getattr(self, "socket", None) is not None:
                self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _error_text(event: dict) -> str | None:
    """The message of a CDP event that reports a JavaScript error, else None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return details.get("exception", {}).get("description") or details.get("text")
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
    if method == "Log.entryAdded" and params["entry"].get("level") == "error":
        return params["entry"].get("text")
    return None


def distinct_colours(pixels: np.ndarray) -> int:
    """How many different RGB colours an image ``(H, W, 3)`` holds."""
    return len(np.unique(pixels.reshape(-1, 3), axis=0))
