"""A real browser (Debian's chromium, headless, via Playwright) uses the app: type, generate, upload, screenshot.

Screenshots go to test-artifacts/app/ for a person to look at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (scripts/setup-debian.sh)")

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]  # fmt: skip


@pytest.fixture(scope="module")
def page(app_server):
    playwright = pytest.importorskip("playwright.sync_api")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
        # nothing but the app itself may be fetched: fail any request that would leave localhost
        context.route(re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"), lambda route: route.abort())
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(app_server.url)
        page.locator("#image-prompt textarea").wait_for()
        yield page
        browser.close()


def test_generate_an_image_in_the_browser(page, artifacts):
    text = "A red apple on a white kitchen table, seen from above, soft morning light."
    page.locator("#image-prompt textarea").fill(text)
    page.locator("#image-count").get_by_text(re.compile(rf"^{len(text)} / [\d,]+ prompt tokens")).wait_for()
    page.locator("#image-generate").click()
    page.locator("#image-status").get_by_text("Done").wait_for(timeout=90_000)
    imgs = page.locator("#image-output img")
    assert imgs.count() >= 1
    assert imgs.first.evaluate("img => img.complete && img.naturalWidth") == 8
    page.locator("#image-files").get_by_text("perceiverar-image-seed").first.wait_for()  # the PNG download
    page.screenshot(path=str(artifacts / "browser-image.png"), full_page=True)


def _upload(page, path):
    with page.expect_file_chooser() as chooser:
        page.locator("#image-upload").click()
    chooser.value.set_files(str(path))


def test_bad_upload_shows_an_error_then_a_good_one_fills_the_prompt(page, artifacts, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
    _upload(page, bad)
    page.get_by_text("looks like a binary file").first.wait_for()
    page.screenshot(path=str(artifacts / "browser-bad-upload.png"), full_page=False)
    page.locator(".toast-close").first.click()  # dismiss it so later screenshots are clean
    good = tmp_path / "prompt.md"
    good.write_text("# Lighthouse\n\nA white lighthouse at dusk, orange sky.", encoding="utf-8")
    _upload(page, good)
    page.wait_for_function(
        "() => document.querySelector('#image-prompt textarea').value.startsWith('# Lighthouse')"
    )


def test_text_tab_streams_and_finishes(page, artifacts):
    page.get_by_role("tab", name="Text").click()
    page.locator("#text-prompt textarea").fill("Once upon a time, ")
    page.locator("#text-generate").click()
    page.locator("#text-status").get_by_text("Done").wait_for(timeout=90_000)
    assert page.locator("#text-output textarea").input_value() != ""
    page.screenshot(path=str(artifacts / "browser-text.png"), full_page=True)


def _pick_checkpoint(page, name):
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.locator("#checkpoint-info").get_by_text("Context").wait_for()


def test_stop_keeps_the_partial_result(page, artifacts):
    _pick_checkpoint(page, "slow")  # 50 bytes/s: Stop always lands mid-run
    try:
        page.get_by_role("tab", name="Text").click()
        page.locator("#text-prompt textarea").fill("A long story: ")
        page.locator("#text-generate").click()
        page.wait_for_function("() => document.querySelector('#text-output textarea').value.startsWith('abcdefgh')")
        page.locator("#text-stop").click()
        page.locator("#text-status").get_by_text(re.compile("Stopped|Done|Error")).wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "browser-stopped.png"), full_page=True)
        assert "Stopped" in page.locator("#text-status").inner_text()
        assert page.locator("#text-output textarea").input_value().startswith("abcdefgh")
        page.locator("#text-files").get_by_text("perceiverar-text-seed").first.wait_for(timeout=10_000)
    finally:
        _pick_checkpoint(page, "tiny")


def test_music_tab(page, artifacts):
    page.get_by_role("tab", name="Music").click()
    page.locator("#music-prompt textarea").fill("A slow chorale in G major")
    page.locator("#music-generate").click()
    page.locator("#music-status").get_by_text("Done").wait_for(timeout=90_000)
    page.screenshot(path=str(artifacts / "browser-music.png"), full_page=True)
