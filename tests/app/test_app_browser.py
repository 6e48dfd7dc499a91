"""A real browser (Debian's chromium, headless, via Playwright) uses the app on the bundled checkpoints.

It opens each tab, generates once in each with small sizes, switches checkpoints back and forth, and checks
that the result renders and that no error toast appears; then it starts the app with only an image, only a text,
only an audio checkpoint, and with none. Screenshots go to test-artifacts/app/ for a person to look at.
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
DONE = 240_000  # ms: a 32x32 image on a busy 2-core CPU


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def _open(browser, url):
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
    # nothing but the app itself may be fetched: fail any request that would leave localhost
    context.route(re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.locator("#image-prompt textarea").wait_for()
    return page


@pytest.fixture(scope="module")
def page(browser, app_server):
    """One page for the tests below (opening one costs seconds): each test picks its tab and settings."""
    page = _open(browser, app_server.url)
    yield page
    page.context.close()


def _no_error_toast(page):
    errors = page.locator(".toast-body.error")
    assert errors.count() == 0, errors.all_inner_texts()


def _tab(page, title):
    page.get_by_role("tab", name=title).click()


def _pick(page, slug, name):
    page.locator(f"#{slug}-checkpoint input").click()
    page.get_by_role("option", name=name, exact=True).click()


def _set(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _generate(page, slug, prompt, *, done=DONE):
    page.locator(f"#{slug}-prompt textarea").fill(prompt)
    page.locator(f"#{slug}-generate").click()
    page.locator(f"#{slug}-status").get_by_text(re.compile("Done|Stopped")).wait_for(timeout=done)
    _no_error_toast(page)


def test_every_tab_generates_with_the_bundled_checkpoints(page, artifacts):
    _tab(page, "Text")
    _set(page, "text-length", 24)
    _generate(page, "text", "ROMEO.\nBut soft, what light through yonder window breaks?\n")
    assert page.locator("#text-output textarea").input_value() != ""
    page.locator("#text-files").get_by_text("perceiverar-text-seed").first.wait_for()
    page.screenshot(path=str(artifacts / "browser-text.png"), full_page=True)

    _tab(page, "Music")
    assert "1,024" in page.locator("#music-info").inner_text()  # bach's latents, not the image model's
    _set(page, "music-seconds", 0.5)
    _generate(page, "music", "bach chorale in G major, 4/4 time")
    page.locator("#music-files").get_by_text("perceiverar-music-seed").first.wait_for()
    assert "0.5 s" in page.locator("#music-status").inner_text()
    assert "key lock: G major" in page.locator("#music-status").inner_text()  # bach's default, the prompt's key
    page.locator("#music-sampling").click()
    assert page.locator("#music-key-lock input[type=checkbox]").is_checked()
    page.screenshot(path=str(artifacts / "browser-music.png"), full_page=True)

    _tab(page, "Image")
    page.locator("#image-sampling").click()
    _set(page, "image-latents", 32)  # fewer latents: faster on a CPU
    size = page.locator("#image-size input").input_value()
    page.locator("#image-prompt textarea").fill("red apple; food & drink; food fruit; google style")
    page.locator("#image-generate").click()
    h, w = map(int, size.split("x"))
    if h * w > 256:  # a whole 32x32 takes minutes on a busy 2-core CPU: stop after the first rows (the API test
        page.locator("#image-output img").first.wait_for(timeout=DONE)  # makes a whole one)
        page.locator("#image-stop").click()
    page.locator("#image-status").get_by_text(re.compile("Done|Stopped")).wait_for(timeout=DONE)
    page.locator("#image-files").get_by_text("perceiverar-image-seed").first.wait_for()
    _no_error_toast(page)
    img = page.locator("#image-output img").first
    natural = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    shown = img.bounding_box()
    assert f"{natural[1]}x{natural[0]}" == size
    assert shown["width"] >= 4 * natural[0], "a small image is shown enlarged"
    assert img.evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
    mat = page.locator("#image-output .thumbnail-item").first.evaluate("b => getComputedStyle(b).backgroundColor")
    assert mat not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)"), "a white image needs a contrasting mat"
    page.screenshot(path=str(artifacts / "browser-image.png"), full_page=True)


def test_switching_checkpoints_back_and_forth(page, artifacts):
    _tab(page, "Text")
    info = page.locator("#text-info")
    _pick(page, "text", "oom")  # the small demo model: context 1,024
    info.get_by_text(re.compile(r"Context 1,024 tokens")).wait_for()
    _pick(page, "text", "broken")
    page.locator("#text-notice").get_by_text("could not be loaded").wait_for()
    assert page.locator("#text-generate").is_disabled()
    _pick(page, "text", "shakespeare")
    info.get_by_text(re.compile(r"Context 65,536 tokens")).wait_for()
    assert page.locator("#text-generate").is_enabled() and not page.locator("#text-notice").is_visible()
    _set(page, "text-length", 8)
    _generate(page, "text", "HAMLET.\n")

    _tab(page, "Image")
    _pick(page, "image", "oom")
    page.locator("#image-info").get_by_text(re.compile(r"Context 1,024 tokens")).wait_for()
    _pick(page, "image", "emoji")
    page.locator("#image-info").get_by_text("Trained on captions written as").wait_for()
    _no_error_toast(page)
    page.screenshot(path=str(artifacts / "browser-switched.png"), full_page=True)


def test_a_bad_request_is_marked_and_a_run_failure_is_reported(page, artifacts):
    _tab(page, "Text")
    page.locator("#text-prompt textarea").fill("")
    page.locator("#text-generate").click()  # empty prompt: refused before queueing, the field says why
    page.locator("#text-prompt").get_by_text("The prompt is empty").wait_for()
    _no_error_toast(page)
    page.screenshot(path=str(artifacts / "browser-refused.png"), full_page=True)
    _pick(page, "text", "oom")
    page.locator("#text-info").get_by_text(re.compile(r"Context 1,024 tokens")).wait_for()
    page.locator("#text-prompt textarea").fill("hi")
    page.locator("#text-generate").click()
    page.locator("#text-status").get_by_text("Out of memory").wait_for()
    page.locator(".toast-body.error").get_by_text("Out of memory").first.wait_for()
    page.locator(".toast-close").first.click()
    _pick(page, "text", "shakespeare")  # the next run starts afresh: new status, new output
    page.locator("#text-info").get_by_text(re.compile(r"Context 65,536 tokens")).wait_for()
    _set(page, "text-length", 8)
    _generate(page, "text", "KING.\n")
    assert "Out of memory" not in page.locator("#text-status").inner_text()


def _upload(page, path):
    with page.expect_file_chooser() as chooser:
        page.locator("#image-upload").click()
    chooser.value.set_files(str(path))


def test_bad_upload_shows_an_error_then_a_good_one_fills_the_prompt(page, artifacts, tmp_path):
    _tab(page, "Image")
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
    _upload(page, bad)
    page.get_by_text("looks like a binary file").first.wait_for()
    page.locator(".toast-close").first.click()
    good = tmp_path / "prompt.md"
    good.write_text("# Lighthouse\n\nA white lighthouse at dusk, orange sky.", encoding="utf-8")
    _upload(page, good)
    page.wait_for_function("() => document.querySelector('#image-prompt textarea').value.startsWith('# Lighthouse')")


def test_stop_keeps_the_partial_result(page, artifacts):
    _tab(page, "Text")
    _set(page, "text-length", 3000)
    page.locator("#text-prompt textarea").fill("KING.\n")
    page.locator("#text-generate").click()
    page.wait_for_function("() => document.querySelector('#text-output textarea').value.length > 0", timeout=60_000)
    page.locator("#text-stop").click()
    # a 2-core box under load can take a while to stop
    page.locator("#text-status").get_by_text(re.compile("Stopped|Done")).wait_for(timeout=90_000)
    assert "Stopped" in page.locator("#text-status").inner_text()
    assert page.locator("#text-output textarea").input_value() != ""
    page.locator("#text-files").get_by_text("perceiverar-text-seed").first.wait_for(timeout=10_000)
    _no_error_toast(page)


@pytest.mark.parametrize(
    "only, title, slug, prompt",
    [("shakespeare", "Text", "text", "ROMEO.\n"), ("bach", "Music", "music", "bach chorale in D minor, 3/4 time"),
     ("emoji", "Image", "image", "red heart; smileys & emotion; heart; google style")],
)  # fmt: skip
def test_an_app_with_one_checkpoint_serves_its_tab(browser, bundled, start_app, artifacts, only, title, slug, prompt):
    server = start_app([bundled / only])
    page = _open(browser, server.url)
    try:
        _tab(page, title)
        assert page.locator(f"#{slug}-checkpoint input").input_value() == only
        assert not page.locator(f"#{slug}-notice").is_visible()
        if slug == "image":  # stop after the first rows: the partial image still renders
            page.locator("#image-prompt textarea").fill(prompt)
            page.locator("#image-generate").click()
            page.locator("#image-output img").first.wait_for(timeout=DONE)
            page.locator("#image-stop").click()
            page.locator("#image-status").get_by_text(re.compile("Stopped|Done")).wait_for(timeout=60_000)
        else:
            _set(page, "text-length" if slug == "text" else "music-seconds", 8 if slug == "text" else 0.5)
            _generate(page, slug, prompt)
        for other, other_slug in (("Image", "image"), ("Music", "music"), ("Text", "text")):
            if other_slug != slug:  # the other tabs run the demo model and say what to add
                _tab(page, other)
                page.locator(f"#{other_slug}-notice").get_by_text("No trained checkpoint here makes").wait_for()
        _no_error_toast(page)
        page.screenshot(path=str(artifacts / f"browser-only-{only}.png"), full_page=True)
    finally:
        page.context.close()


def test_an_app_with_no_checkpoint_runs_the_demo_everywhere(browser, start_app, tmp_path):
    server = start_app([tmp_path])
    page = _open(browser, server.url)
    try:
        for title, slug in (("Image", "image"), ("Music", "music"), ("Text", "text")):
            _tab(page, title)
            page.locator(f"#{slug}-notice").get_by_text("No trained checkpoint here makes").wait_for()
        _set(page, "text-length", 8)
        _generate(page, "text", "hello")
    finally:
        page.context.close()
