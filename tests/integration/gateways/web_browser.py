"""Headless Chromium driven over the Chrome DevTools Protocol, with aiohttp's WebSocket client
(no new dependency). A helper for the web page's end-to-end test (no tests here).

`chromium()` starts Debian's /usr/bin/chromium with a fresh profile and an OS-chosen debugging
port (read from the profile's DevToolsActivePort file), opens one page and yields a `Page` that
types, clicks (real mouse and keyboard input events), evaluates, waits and takes screenshots.
The browser and its profile are removed on exit, whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import pathlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

CHROMIUM = pathlib.Path("/usr/bin/chromium")
# Headless as root in a container, and nothing that reaches outside the machine.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
)
START_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 15.0
WINDOW = (1440, 1000)


class BrowserError(Exception):
    """Chromium did not start, or a DevTools command failed."""


class Cdp:
    """One DevTools WebSocket: commands answered by id, events kept per session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[tuple[str | None, str, dict[str, Any]]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(BrowserError(f"{data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
            elif "method" in data:
                self.events.append((data.get("sessionId"), data["method"], data.get("params", {})))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session_id: str | None = None) -> dict[str, Any]:
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        await self._ws.send_str(json.dumps(message))
        try:
            return await asyncio.wait_for(future, COMMAND_TIMEOUT_S)
        finally:
            self._pending.pop(command_id, None)

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Page:
    """One tab, attached in flat mode."""

    def __init__(self, cdp: Cdp, session_id: str) -> None:
        self._cdp = cdp
        self._session = session_id

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._cdp.send(method, params, self._session)

    async def goto(self, url: str) -> None:
        answer = await self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise BrowserError(f"cannot open {url}: {answer['errorText']}")
        await self.wait_for("document.readyState === 'complete'", what=f"{url} to load")

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]!r} threw: {text}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, *, timeout_s: float = 10.0,
                       what: str | None = None) -> Any:
        """The first truthy value of `expression`, polled; AssertionError with the page's
        notices when it does not come."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                notices = await self.evaluate(
                    "[...document.querySelectorAll('.notice')].map(n => n.innerText)")
                raise AssertionError(f"timed out waiting for {what or expression}; "
                                     f"notices on the page: {notices}; "
                                     f"page errors: {self.errors()}")
            await asyncio.sleep(0.1)

    async def text(self, selector: str) -> str:
        return str(await self.evaluate(
            f"document.querySelector({json.dumps(selector)})?.textContent ?? ''")).strip()

    async def click(self, selector: str) -> None:
        """A real left click in the middle of the element, as a person's mouse would."""
        box = await self.evaluate(f"""(() => {{
            const node = document.querySelector({json.dumps(selector)});
            if (!node) return null;
            node.scrollIntoView({{block: 'center'}});
            const r = node.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2, w: r.width}};
        }})()""")
        if not box or not box["w"]:
            raise BrowserError(f"nothing visible to click at {selector}")
        point = {"x": box["x"], "y": box["y"]}
        await self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", **point})
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent",
                            {"type": kind, "button": "left", "clickCount": 1, **point})

    async def type(self, selector: str, text: str) -> None:
        """Focus the field, select what is in it, and type over it (real input events)."""
        focused = await self.evaluate(f"""(() => {{
            const node = document.querySelector({json.dumps(selector)});
            if (!node) return false;
            node.focus(); node.select?.();
            return document.activeElement === node;
        }})()""")
        if not focused:
            raise BrowserError(f"cannot focus {selector}")
        await self.send("Input.insertText", {"text": text})

    async def choose(self, selector: str, value: str) -> None:
        """Pick an option of a <select> (what a person does with the dropdown)."""
        chosen = await self.evaluate(f"""(() => {{
            const node = document.querySelector({json.dumps(selector)});
            const wanted = {json.dumps(value)};
            if (!node || ![...node.options].some(o => o.value === wanted)) return false;
            node.value = wanted;
            node.dispatchEvent(new Event('input', {{bubbles: true}}));
            node.dispatchEvent(new Event('change', {{bubbles: true}}));
            return true;
        }})()""")
        if not chosen:
            raise BrowserError(f"{selector} has no option {value!r}")

    async def screenshot(self, path: pathlib.Path) -> pathlib.Path:
        answer = await self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(answer["data"]))
        return path

    def errors(self) -> list[str]:
        """Uncaught exceptions and console.error calls of this page so far."""
        found = []
        for session, method, params in self._cdp.events:
            if session != self._session:
                continue
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description")
                             or details.get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(arg.get("value", arg.get("description", "")))
                                      for arg in params.get("args", [])))
        return found


async def _debugging_address(profile: pathlib.Path, process: asyncio.subprocess.Process,
                             log: pathlib.Path) -> str:
    """ws://... of the browser, from the DevToolsActivePort file Chromium writes on start."""
    marker = profile / "DevToolsActivePort"
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        if process.returncode is not None:
            raise BrowserError(f"chromium exited with {process.returncode}: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        lines = marker.read_text().split() if marker.exists() else []
        if len(lines) >= 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        await asyncio.sleep(0.05)
    raise BrowserError(f"chromium did not open its debugging port in {START_TIMEOUT_S} s: "
                       f"{log.read_text(errors='replace')[-2000:]}")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def chromium(window: tuple[int, int] = WINDOW) -> AsyncIterator[Page]:
    """A page in a fresh headless Chromium; the browser and its profile are gone afterwards."""
    if not CHROMIUM.exists():
        raise BrowserError(f"{CHROMIUM} is not installed")
    profile = pathlib.Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    log = profile.parent / f"{profile.name}.log"
    process: asyncio.subprocess.Process | None = None
    try:
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}", "about:blank",
                stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink)
        address = await _debugging_address(profile, process, log)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(address, max_msg_size=0)
            cdp = Cdp(ws)
            try:
                target = await cdp.send("Target.createTarget", {"url": "about:blank"})
                attached = await cdp.send("Target.attachToTarget",
                                          {"targetId": target["targetId"], "flatten": True})
                page = Page(cdp, attached["sessionId"])
                for domain in ("Page.enable", "Runtime.enable"):
                    await page.send(domain)
                await page.send("Emulation.setDeviceMetricsOverride", {
                    "width": window[0], "height": window[1], "deviceScaleFactor": 1,
                    "mobile": False})
                yield page
            finally:
                with contextlib.suppress(BrowserError, TimeoutError, ConnectionError):
                    await cdp.send("Browser.close")
                await cdp.close()
    finally:
        if process is not None:
            await _stop(process)
        shutil.rmtree(profile, ignore_errors=True)
        log.unlink(missing_ok=True)
