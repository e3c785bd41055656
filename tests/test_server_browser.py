"""The gallery clicked through in headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from _server_fixtures import server_starter  # noqa: F401

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)"),
]


def test_generate_view_use_as_input_search_and_delete(openai_env: Any, start_server: Any) -> None:
    server = start_server()
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/")
        page.wait_for_selector("#model option[value='openai:gpt-image-2']", state="attached")
        page.select_option("#model", "openai:gpt-image-2")
        page.fill("#prompt", "a green teapot")
        page.fill("#size", "256x256")
        page.click("#gen-button")
        page.wait_for_selector(".card img")
        assert "succeeded" in page.inner_text("#gen-status")

        page.click(".card")
        page.wait_for_selector("#viewer[open]")
        params = page.inner_text("#viewer-params")
        assert "a green teapot" in params and "openai:gpt-image-2" in params and "256x256" in params
        assert page.get_attribute("#download", "href")
        page.click("#use-input")
        page.wait_for_selector("#input-image:not([hidden])")
        page.fill("#prompt", "the teapot in snow")
        page.click("#gen-button")
        playwright_api.expect(page.locator(".card")).to_have_count(2, timeout=20_000)

        page.fill("#q", "snow")
        page.click("#search button")
        playwright_api.expect(page.locator(".card")).to_have_count(1, timeout=20_000)
        page.click(".card")
        page.wait_for_selector("#viewer[open]")
        assert "edit" in page.inner_text("#viewer-params")
        page.click("#delete")
        playwright_api.expect(page.locator(".card")).to_have_count(0, timeout=20_000)
        page.fill("#q", "")
        page.click("#search button")
        playwright_api.expect(page.locator(".card")).to_have_count(1, timeout=20_000)
        browser.close()
    assert errors == []
