"""Drives Debian's Firefox ESR, headless, over WebDriver BiDi: the protocol Firefox speaks
itself (`--remote-debugging-port`), so neither geckodriver nor a downloaded browser is needed.
Only what the tests ask of a page: load it, run a script in it, wait for a condition."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.helpers import free_port

FIREFOX = Path("/usr/bin/firefox-esr")

needs_firefox = pytest.mark.skipif(
    not FIREFOX.exists(),
    reason=f"no Firefox at {FIREFOX} (.ci/run installs Debian's `firefox-esr` package)",
)

_PREFERENCES = """
user_pref("app.update.enabled", false);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.enabled", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("browser.safebrowsing.malware.enabled", false);
user_pref("browser.safebrowsing.phishing.enabled", false);
"""
"""Nothing of the browser's own reaches out (updates, telemetry, captive-portal checks)."""


class BrowserError(Exception):
    """Firefox refused a command, or a script threw."""


class Firefox:
    """One headless Firefox with one tab, started in a profile of its own."""

    def __init__(self, timeout_s: float = 60) -> None:
        self._profile = Path(tempfile.mkdtemp(prefix="sdserve-firefox-"))
        (self._profile / "user.js").write_text(_PREFERENCES)
        port = free_port()
        self._process = subprocess.Popen(
            [str(FIREFOX), "--headless", "--no-remote", "--profile", str(self._profile),
             "--remote-debugging-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._socket = self._connect(port, timeout_s)
        self._next_id = 0
        self.call("session.new", {"capabilities": {}})
        tree = self.call("browsingContext.getTree", {})
        self._context = tree["contexts"][0]["context"]

    def _connect(self, port: int, timeout_s: float) -> ClientConnection:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return connect(f"ws://127.0.0.1:{port}/session", max_size=None)
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.close()
                    raise
                time.sleep(0.2)

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One BiDi command's result (events, not asked for, never come)."""
        self._next_id += 1
        self._socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=120))
            if message.get("id") == self._next_id:
                break
        if message.get("type") == "error":
            raise BrowserError(f"{method}: {message.get('message')}")
        result: dict[str, Any] = message["result"]
        return result

    def goto(self, url: str) -> None:
        params = {"context": self._context, "url": url, "wait": "complete"}
        self.call("browsingContext.navigate", params)

    def evaluate(self, expression: str) -> Any:
        """The value of a script whose result is JSON text (`JSON.stringify(...)`), decoded;
        a promise is awaited."""
        answer = self.call(
            "script.evaluate",
            {"expression": expression, "target": {"context": self._context}, "awaitPromise": True},
        )
        if answer["type"] == "exception":
            raise BrowserError(answer["exceptionDetails"]["text"])
        value = answer["result"]
        if value["type"] != "string":
            raise BrowserError(f"{expression[:60]}... gave a {value['type']}, not JSON text")
        return json.loads(value["value"])

    def wait_for(self, expression: str, timeout_s: float = 240) -> None:
        """Until `expression` (JavaScript) is true."""
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(f"JSON.stringify(Boolean({expression}))"):
            if time.monotonic() > deadline:
                raise AssertionError(f"never true in Firefox: {expression}")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            if hasattr(self, "_socket"):
                self.call("session.end", {})
                self._socket.close()
        except Exception:  # it is going anyway
            pass
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)
