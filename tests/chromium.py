"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages ended by
NUL on file descriptors 3 and 4), so the browser test needs no package beyond the standard library.

`python tests/chromium.py RUN_OR_HTML OUT.png [--width W] [--height H]` writes a screenshot (scripts use it)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser: $FEWLABELS_CHROMIUM, else the first of NAMES on PATH."""
    given = os.environ.get("FEWLABELS_CHROMIUM")
    if given:
        return given if Path(given).is_file() else shutil.which(given)
    return next((p for p in map(shutil.which, NAMES) if p), None)


class Chromium:
    """One headless browser; `open(url)` loads a page and records its console errors, exceptions and requests."""

    def __init__(self, exe: str, timeout: float = 60.0):
        self.timeout, self.next_id, self.events = timeout, 0, []
        self.profile = tempfile.mkdtemp(prefix="fl-chromium-")
        to_child, self._w = os.pipe()  # we write, Chromium reads on fd 3
        self._r, from_child = os.pipe()  # Chromium writes on fd 4, we read

        def fds() -> None:  # in the child, before exec: the pipes on 3 and 4, open across exec
            a, b = os.dup(to_child), os.dup(from_child)  # out of the way of 3 and 4 first
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
             "--hide-scrollbars", "--mute-audio", f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, preexec_fn=fds, close_fds=False)
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    # the wire
    def _send(self, msg: dict) -> None:
        os.write(self._w, json.dumps(msg).encode() + b"\0")

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time: " + self.stderr()[-2000:])
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe: " + self.stderr()[-2000:])
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params: Any) -> dict:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self._send(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._recv(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for e in self.events:
            if e["method"] == method:
                return e
        while True:
            m = self._recv(deadline)
            if "method" in m:
                self.events.append(m)
                if m["method"] == method:
                    return m

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    # pages
    def open(self, url: str, width: int = 1000, height: int = 900) -> None:
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=width < 600)
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries since the page was opened."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, width: int = 1000, max_height: int | None = None) -> None:
        """The whole page (or its top max_height pixels) at `width` CSS pixels, as PNG."""
        import base64

        h = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        h = min(h, max_height) if max_height else h
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=h, deviceScaleFactor=1,
                  mobile=width < 600)
        shot = self.call("Page.captureScreenshot", session=True, format="png",
                         clip={"x": 0, "y": 0, "width": width, "height": h, "scale": 1})
        Path(path).write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="screenshot of an HTML file (a run folder: its report.html)")
    ap.add_argument("page")
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--height", type=int, default=None, help="keep the top this many pixels")
    a = ap.parse_args(argv)
    page = Path(a.page)
    page = page / "report.html" if page.is_dir() else page
    exe = find_chromium()
    if exe is None:
        print("no Chromium found (apt-get install chromium, or set FEWLABELS_CHROMIUM)", file=sys.stderr)
        return 1
    b = Chromium(exe)
    try:
        b.open(page.absolute().as_uri(), width=a.width)
        b.screenshot(Path(a.out), a.width, a.height)
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
