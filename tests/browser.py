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


# --- the report, as a reader opens it ------------------------------------------------------------
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# what JavaScript's String.prototype.trim() strips (Python's str.strip() also strips \x1c-\x1f)
JS_WHITESPACE = " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def sort_key(text: str) -> tuple:
    """How a column's values should order: numbers by value, then texts, then blanks; texts as JavaScript
    compares them (trimmed as trim() does, lower-cased, by UTF-16 code units)."""
    text = text.strip(JS_WHITESPACE)
    if NUMBER.match(text):
        return (0, float(text))
    return (2 if text in ("", "\u2013") else 1, text.lower().encode("utf-16-be", "surrogatepass"))


def _column_keys(driver, table: WebElement, index: int) -> list[tuple]:
    return [sort_key(v) for v in driver.execute_script("""
        return [...arguments[0].tBodies[0].rows].map(r => {
            const c = r.cells[arguments[1]];
            return c.dataset.sort !== undefined ? c.dataset.sort : c.textContent; });
    """, table, index)]


def check_report(path: str | os.PathLike, comparisons: set[str], name: str) -> None:
    """The report opened at a laptop's width (1280 px) in a real browser: the page never scrolls sideways
    (also with every section open and every text shown), findings come first and name every comparison, every
    table sorts by every column both ways, the table of continuations filters, toxic text is hidden until
    clicked, no script fails and nothing is fetched. Screenshots go to the artefacts folder."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with open_page(path, 1280, 900) as driver:
        driver.save_screenshot(str(artifacts_dir() / f"{name}-first-screen.png"))
        assert horizontal_overflow(driver) == 0
        sections = driver.execute_script("return [...document.querySelectorAll('main > section')].map(s => s.id)")
        assert sections[0] == "findings", sections
        named = driver.execute_script(
            "return [...document.querySelectorAll('#findings li.finding')].map(li => li.dataset.comparison)")
        assert sorted(named) == sorted(comparisons)

        # toxic text is blurred until clicked
        hidden = driver.find_elements(By.CSS_SELECTOR, "#instances .cw")
        driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
        if hidden:
            blurred = hidden[0]
            assert "blur" in blurred.value_of_css_property("filter")
            blurred.click()
            assert blurred.value_of_css_property("filter") == "none"
        driver.find_element(By.ID, "show-text").click()
        assert horizontal_overflow(driver) == 0, "a section, opened, is wider than the page"

        # every table sorts by every column, ascending then descending: the first table's headers clicked as a
        # user clicks them, the others' through the same DOM click events (thousands of WebDriver calls otherwise)
        tables = driver.find_elements(By.CSS_SELECTOR, "table.sortable")
        assert tables
        first = tables[0]
        for index, header in enumerate(first.find_elements(By.CSS_SELECTOR, "thead th")):
            for order in ("ascending", "descending"):
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", header)
                header.click()
                keys = _column_keys(driver, first, index)
                assert keys == sorted(keys, reverse=order == "descending"), f"{header.text}: not {order}"
                assert header.get_attribute("aria-sort") == order
        for table in tables[1:]:
            clicked = driver.execute_script("""
                const table = arguments[0], out = [];
                const value = (c) => c.dataset.sort !== undefined ? c.dataset.sort : c.textContent;
                [...table.tHead.rows[0].cells].forEach((th, i) => {
                    for (const order of ["ascending", "descending"]) {
                        th.click();
                        out.push([th.textContent, order, th.getAttribute("aria-sort"),
                                  [...table.tBodies[0].rows].map(r => value(r.cells[i]))]);
                    }
                });
                return out;""", table)
            assert clicked
            for title, order, aria, values in clicked:
                keys = [sort_key(v) for v in values]
                assert aria == order and keys == sorted(keys, reverse=order == "descending"), f"{title}: not {order}"

        # the table of every continuation filters: by text, variant, and toxic only
        for box in driver.find_elements(By.CSS_SELECTOR, ".continuations"):
            data = json.loads(driver.execute_script(
                "return document.getElementById(arguments[0].dataset.source).textContent", box))
            column = {key: i for i, key in enumerate(data["columns"])}

            def toxic(row):
                return any(row[column[s]] is not None and row[column[s]] >= data["threshold"]
                           for s in data["toxicity_scorers"])

            def shown():
                count = box.find_element(By.CSS_SELECTOR, ".count").text
                rows = driver.execute_script("""return [...arguments[0].querySelector('tbody').rows]
                    .map(r => [...r.cells].map(c => c.textContent))""", box)
                return int(re.search(r"([\d,]+) matching", count).group(1).replace(",", "")), rows

            needle = data["rows"][len(data["rows"]) // 2][column["prompt_id"]]
            box.find_element(By.CSS_SELECTOR, ".filter-text").send_keys(needle)
            matches, rows = shown()
            expected = [r for r in data["rows"] if needle.lower() in
                        f"{r[column['prompt']] or ''} {r[column['continuation']] or ''} {r[column['prompt_id']]}".lower()]
            assert matches == len(expected) and 0 < len(rows) <= matches
            assert all(needle.lower() in " ".join(r).lower() for r in rows)
            box.find_element(By.CSS_SELECTOR, ".filter-text").clear()
            box.find_element(By.CSS_SELECTOR, ".filter-text").send_keys(" ")  # an input event for the cleared box
            variant = data["rows"][-1][column["variant"]]
            Select(box.find_element(By.CSS_SELECTOR, ".filter-variant")).select_by_value(variant)
            matches, rows = shown()
            assert matches == sum(r[column["variant"]] == variant for r in data["rows"])
            assert {r[column["variant"]] for r in rows} == {variant}
            Select(box.find_element(By.CSS_SELECTOR, ".filter-variant")).select_by_value("")
            box.find_element(By.CSS_SELECTOR, ".filter-toxic").click()
            matches, rows = shown()
            assert matches == sum(map(toxic, data["rows"]))

        assert console_errors(driver) == []
        assert network_requests(driver) == []
        screenshot(driver, f"{name}-full")
