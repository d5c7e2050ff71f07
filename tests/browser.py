"""A real headless browser for the report's tests: Debian's Chromium driven through its ChromeDriver.

Recipe: ../shared/ENVIRONMENT.md. The browser and its driver are Debian's (`chromium`, `chromium-driver`),
installed here when missing (as root), never downloaded by Selenium Manager. Every check reads what the
browser itself did: the page's width against the viewport, its console, the URLs it requested.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webelement import WebElement

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PACKAGES = ("chromium", "chromium-driver")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this closed
# network refuses; --no-sandbox because the tests run as root.
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)
# schemes that fetch nothing
LOCAL_SCHEMES = ("data:", "blob:", "about:")
# the browser's own pages (the new-tab page it opens before the test's page, with ~80 chrome:// requests)
BROWSER_SCHEMES = ("chrome:", "chrome-untrusted:", "chrome-extension:", "chrome-search:", "devtools:")


def ensure_chromium() -> None:
    """Debian's chromium and chromium-driver, installed when missing (root and apt-get), else the test skips."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is missing and installing Debian's {' '.join(PACKAGES)} needs root")
    if not shutil.which("apt-get"):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is missing and there is no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command, timeout in ((["apt-get", "update", "-qq"], 300),
                             (["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], 900)):
        try:
            run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"{' '.join(command)} took over {timeout} s:\n{_tail(e.stdout, e.stderr)}") from e
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({run.returncode}):\n{_tail(run.stdout, run.stderr)}")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise RuntimeError(f"installed {' '.join(PACKAGES)} but {missing} are still missing")


def _tail(*outputs, limit: int = 3000) -> str:
    text = "\n".join(o.decode() if isinstance(o, bytes) else o for o in outputs if o)
    return text[-limit:]


@contextlib.contextmanager
def open_page(path: str | os.PathLike, width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium showing file://<path> in a width x height window; the browser quits at exit."""
    ensure_chromium()
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="finetox-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        # an explicit driver path: Selenium Manager (which would go to the network) is never asked
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver._finetox_url = url
            driver._finetox_logs = {"browser": [], "performance": []}
            # headless Chromium's --window-size is the outer window (900 high gives a 757 px viewport):
            # grow the window by the difference so that the viewport itself is width x height
            dw, dh = driver.execute_script("return [outerWidth - innerWidth, outerHeight - innerHeight]")
            if dw or dh:
                driver.set_window_size(width + dw, height + dh)
            driver.get(url)
            yield driver
        finally:
            driver.quit()


def _log(driver, kind: str) -> list[dict]:
    """Every entry of a browser log so far. ChromeDriver hands each entry out once; they are kept here."""
    kept = driver._finetox_logs[kind]
    kept.extend(driver.get_log(kind))
    return kept


def horizontal_overflow(driver) -> int:
    """Pixels by which the document is wider than the viewport (0 when it fits)."""
    return int(driver.execute_script("""
        const de = document.documentElement, body = document.body;
        const wide = Math.max(de.scrollWidth, body ? body.scrollWidth : 0);
        return Math.max(0, wide - de.clientWidth);
    """))


def console_errors(driver) -> list[str]:
    """SEVERE entries of the browser's console: uncaught script errors, resources that failed to load."""
    return [entry["message"] for entry in _log(driver, "browser") if entry["level"] == "SEVERE"]


def network_requests(driver) -> list[str]:
    """Every URL the page requested, other than itself and data:/blob:/about: URLs, in request order.

    Read from the DevTools performance log (which also sees requests that failed or were blocked) and the
    page's resource timing; the browser's own chrome:// pages and their requests are left out."""
    urls = []
    for entry in _log(driver, "performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            if not params.get("documentURL", "").startswith(BROWSER_SCHEMES):
                urls.append(params["request"]["url"])
    urls += driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    page = driver._finetox_url
    out = []
    for url in urls:
        if url.startswith(LOCAL_SCHEMES + BROWSER_SCHEMES) or url.split("#")[0] == page or url in out:
            continue
        out.append(url)
    return out


def artifacts_dir() -> Path:
    """Where screenshots go: $FINETOX_TEST_ARTIFACTS, else tests/artifacts (ignored by git)."""
    folder = Path(os.environ.get("FINETOX_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver, name: str) -> Path:
    """A PNG of the whole document (not only the viewport) saved as <artifacts>/<name>.png."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True, "clip": clip})
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).removesuffix(".png")
    path = artifacts_dir() / f"{stem}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def column_texts(driver, table: WebElement, index: int) -> list[str]:
    """The texts of column `index` (from 0) in the table's body rows, top to bottom as shown now."""
    return driver.execute_script("""
        const table = arguments[0], index = arguments[1];
        const rows = table.tBodies.length ? [...table.tBodies].flatMap(b => [...b.rows])
                                          : [...table.rows].slice(1);
        return rows.filter(r => r.cells.length > index).map(r => r.cells[index].textContent.trim());
    """, table, index)


def click_header(driver, table: WebElement, index: int) -> None:
    """Click the header cell of column `index` (from 0), as a user would."""
    cell = driver.execute_script("""
        const table = arguments[0];
        const row = table.tHead && table.tHead.rows.length ? table.tHead.rows[table.tHead.rows.length - 1]
                                                           : table.rows[0];
        return row.cells[arguments[1]];
    """, table, index)
    cell.click()
