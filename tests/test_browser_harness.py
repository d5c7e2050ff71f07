"""The headless-browser harness (tests/browser.py) can fail as well as pass: each check is shown on a page
made to trip it and on a clean page that trips none."""

import struct

import pytest
from selenium.webdriver.common.by import By

import browser
from browser import click_header, column_texts, console_errors, horizontal_overflow, network_requests, open_page


def page(tmp_path, body: str, head: str = "", name: str = "page.html"):
    path = tmp_path / name
    path.write_text(f"<!doctype html><html><head><meta charset=utf-8>{head}</head><body>{body}</body></html>")
    return path


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_a_clean_page_passes_every_check(tmp_path):
    clean = page(tmp_path, "<h1>Report</h1><p>Nothing wide, nothing thrown, nothing fetched.</p>"
                           "<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw=' alt=''>"
                           "<script>document.body.dataset.ready = '1'</script>")
    with open_page(clean) as driver:
        assert driver.find_element(By.TAG_NAME, "h1").text == "Report"
        assert horizontal_overflow(driver) == 0
        assert console_errors(driver) == []
        assert network_requests(driver) == []
        assert driver.execute_script("return [innerWidth, innerHeight]") == [1280, 900]


def test_a_wide_element_overflows(tmp_path):
    with open_page(page(tmp_path, "<div style='width:3000px;height:10px;background:red'></div>")) as driver:
        assert horizontal_overflow(driver) >= 3000 - 1280


def test_an_uncaught_error_is_a_console_error(tmp_path):
    with open_page(page(tmp_path, '<script>throw new Error("boom")</script>')) as driver:
        errors = console_errors(driver)
        assert any("boom" in e for e in errors), errors
        assert console_errors(driver) == errors  # ChromeDriver drains its log; the harness keeps it


def test_fetches_of_other_files_and_hosts_are_requests(tmp_path):
    (tmp_path / "other.css").write_text("body { color: black }")
    path = page(tmp_path, '<img src="http://127.0.0.1:9/x.png">', head='<link rel=stylesheet href="other.css">')
    with open_page(path) as driver:
        requests = network_requests(driver)
        assert set(requests) == {"http://127.0.0.1:9/x.png", (tmp_path / "other.css").as_uri()}, requests
        assert any("x.png" in e for e in console_errors(driver))  # the refused load is an error too


SORTABLE = """
<table id=t><thead><tr><th>name</th><th>score</th></tr></thead>
<tbody><tr><td>b</td><td>2</td></tr><tr><td>c</td><td>10</td></tr><tr><td>a</td><td>1</td></tr></tbody></table>
<script>
document.querySelectorAll('#t th').forEach((th, i) => th.addEventListener('click', () => {
  const body = document.querySelector('#t tbody');
  const key = r => { const t = r.cells[i].textContent; return isNaN(t) ? t : Number(t); };
  [...body.rows].sort((x, y) => key(x) < key(y) ? -1 : key(x) > key(y) ? 1 : 0).forEach(r => body.appendChild(r));
}));
</script>"""


def test_clicking_a_header_reorders_the_column(tmp_path):
    with open_page(page(tmp_path, SORTABLE)) as driver:
        table = driver.find_element(By.ID, "t")
        assert column_texts(driver, table, 0) == ["b", "c", "a"]
        click_header(driver, table, 0)
        assert column_texts(driver, table, 0) == ["a", "b", "c"]
        click_header(driver, table, 1)
        assert column_texts(driver, table, 1) == ["1", "2", "10"]  # numbers as numbers
        assert column_texts(driver, table, 0) == ["a", "b", "c"]


def test_a_screenshot_shows_the_whole_document(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETOX_TEST_ARTIFACTS", str(tmp_path / "artifacts"))
    tall = page(tmp_path, "<div style='height:3000px;background:linear-gradient(red, blue)'></div>")
    with open_page(tall) as driver:
        viewport = driver.execute_script("return [document.documentElement.clientWidth, innerHeight]")
        shot = browser.screenshot(driver, "tall page")
    assert shot == tmp_path / "artifacts" / "tall_page.png"
    width, height = png_size(shot)
    assert viewport[1] == 900 and width == viewport[0]  # the page's width less the vertical scrollbar
    assert height >= 3000 > 900


def test_screenshots_default_to_tests_artifacts(monkeypatch):
    monkeypatch.delenv("FINETOX_TEST_ARTIFACTS", raising=False)
    assert browser.artifacts_dir() == browser.REPO / "tests" / "artifacts"


def test_without_root_a_missing_browser_skips(monkeypatch):
    monkeypatch.setattr(browser, "CHROMIUM", browser.CHROMIUM.with_name("no-such-chromium"))
    monkeypatch.setattr(browser.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        browser.ensure_chromium()
