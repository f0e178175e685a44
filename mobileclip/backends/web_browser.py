"""Serving a web bundle on loopback, and driving a real Chromium over it (torch-free).

* :class:`BundleServer` - a static server for one bundle folder on ``127.0.0.1``, with the headers multithreaded
  WASM needs (``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp``, so the
  page is cross-origin isolated and gets ``SharedArrayBuffer``), the right MIME types for ``.mjs`` and ``.wasm``,
  no directory listings and no caching. It records every request, so a test can show that the page fetched
  nothing but its own folder. ``mobileclip serve`` runs it.
* :class:`Browser` - headless Chromium (Debian's ``chromium`` + ``chromium-driver``) through selenium's WebDriver,
  with a fresh profile and no background networking; it drives the page as a person would (choosing files in its
  file input) and calls the page's ``window.mobileclip`` API.
"""
from __future__ import annotations

import base64
import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from mobileclip.errors import ConfigError

from .base import BackendUnavailable
from .bundle import BundleError, load_manifest

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-extensions", "--window-size=1200,1000")
PAGE_TIMEOUT_S = 300


def web_info(manifest: dict) -> Optional[dict]:
    """The ``web`` entry of a bundle's manifest, or None (not a web bundle)."""
    return manifest.get("artifacts", {}).get("image", {}).get("web")


# ------------------------------------------------------------------ the server

class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = dict(http.server.SimpleHTTPRequestHandler.extensions_map,
                          **{".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
                             ".onnx": "application/octet-stream", ".json": "application/json",
                             ".html": "text/html; charset=utf-8"})

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def list_directory(self, path):   # a bundle is served file by file, never listed
        self.send_error(404, "no directory listings")
        return None

    def log_message(self, format: str, *args) -> None:
        self.server.requests.append((self.command, self.path, args[1] if len(args) > 1 else ""))
        if self.server.verbose:
            super().log_message(format, *args)


class BundleServer:
    """``with BundleServer(bundle) as s: s.url`` - the bundle served on ``127.0.0.1`` (``port=0``: any free port).

    ``verify`` (default) loads the manifest and checks every file's sha256 first, refusing a damaged bundle; the page
    checks the files it loads itself, so tests serve a damaged bundle with ``verify=False`` as any static host would.
    ``bundle=False`` serves any folder the same way, with no manifest (benchmarks' own pages).
    """

    def __init__(self, directory: Union[str, Path], port: int = 0, verify: bool = True, verbose: bool = False,
                 bundle: bool = True) -> None:
        self.directory = Path(directory)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"--port {port!r} is not a TCP port: give 1-65535, or 0 for any free port")
        if not bundle:
            if not self.directory.is_dir():
                raise ConfigError(f"{str(self.directory)!r} is not a folder to serve")
        elif web_info(load_manifest(self.directory, verify=verify)) is None:
            raise BundleError(f"{str(self.directory)!r} is not a web bundle (its manifest has no web app); export "
                              "one with `mobileclip export MODEL --format web`")
        handler = lambda *a, **k: _Handler(*a, directory=str(self.directory), **k)   # noqa: E731
        try:
            self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as e:
            raise ConfigError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); choose another --port") from None
        self.httpd.requests, self.httpd.verbose = [], verbose
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread: Optional[threading.Thread] = None

    @property
    def requests(self) -> list:
        """``(method, path, status)`` of every request served so far."""
        return list(self.httpd.requests)

    def start(self) -> "BundleServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    def __enter__(self) -> "BundleServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ the browser

def chromium_paths() -> tuple:
    """``(chromium, chromedriver)``: ``$MOBILECLIP_CHROMIUM`` / ``$MOBILECLIP_CHROMEDRIVER``, else on PATH."""
    find = lambda env, *names: os.environ.get(env) or next(filter(None, map(shutil.which, names)), None)  # noqa: E731
    return (find("MOBILECLIP_CHROMIUM", "chromium", "chromium-browser", "google-chrome"),
            find("MOBILECLIP_CHROMEDRIVER", "chromedriver"))


def browser_unavailable() -> Optional[str]:
    """Why this machine cannot run the browser check, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install 'mobileclip-toolkit[web]'"
    chromium, driver = chromium_paths()
    if chromium is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver)) if p is None)
        return (f"{missing} not found (Debian/Ubuntu: apt-get install chromium chromium-driver; or set "
                "MOBILECLIP_CHROMIUM and MOBILECLIP_CHROMEDRIVER)")
    return None


class PageError(BundleError):
    """The page's own script failed where it should have answered (its message is the page's)."""


class Browser:
    """Headless Chromium driven by WebDriver: ``with Browser() as b: b.open(url); b.call("mobileclip.ready")``."""

    def __init__(self, extra_flags: Sequence[str] = ()) -> None:
        why = browser_unavailable()
        if why:
            raise BackendUnavailable(f"cannot run the browser check: {why}")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        chromium, driver = chromium_paths()
        self._profile = tempfile.mkdtemp(prefix="mobileclip-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in CHROMIUM_FLAGS + tuple(extra_flags) + (f"--user-data-dir={self._profile}",):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(service=Service(driver), options=opts)
        except Exception:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        self.driver.set_script_timeout(PAGE_TIMEOUT_S)
        self.version = self.driver.capabilities.get("browserVersion", "?")

    def open(self, url: str) -> bool:
        """Load ``url`` and wait for the app: True when it loaded the bundle, False when it refused (see messages)."""
        self.driver.get(url)
        return bool(self.call("mobileclip.ready"))

    def call(self, expression: str, *args):
        """Await a JS expression in the page (``args`` are ``arguments[0..]``); a rejected promise is a PageError."""
        script = ("const done = arguments[arguments.length - 1];"
                  "const args = Array.prototype.slice.call(arguments, 0, -1);"
                  f"(async (args) => ({expression}))(args)"
                  ".then((v) => done({ok: v === undefined ? null : v}),"
                  " (e) => done({error: String((e && e.message) || e)}));")
        out = self.driver.execute_async_script(script, *args)
        if out is None or "error" in out:
            raise PageError(f"the page failed: {out and out['error']}")
        return out["ok"]

    def choose_files(self, paths: Sequence[Union[str, Path]]) -> None:
        """Choose ``paths`` in the page's file input, as a person would, and wait until the page has read them."""
        from selenium.webdriver.common.by import By

        done = self.call("mobileclip.reads()")
        self.driver.find_element(By.ID, "files").send_keys("\n".join(str(Path(p).resolve()) for p in paths))
        self.call("new Promise((ok) => { const t = setInterval(() => { if (mobileclip.reads() > args[0]) "
                  "{ clearInterval(t); ok(true); } }, 20); })", done)

    def screenshot(self, path: Union[str, Path]) -> Path:
        self.driver.save_screenshot(str(path))
        return Path(path)

    def text(self, element_id: str) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id).text

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def floats(b64: str, dim: int) -> np.ndarray:
    """A base64 float32 buffer from the page as ``[N, dim]``."""
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(-1, dim).copy()
