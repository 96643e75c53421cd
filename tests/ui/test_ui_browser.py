"""The built-in UI in a real Chromium against a real App that received the recorded deployment lifecycle."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.async_api import Page, expect

from tests.ui.conftest import FROM, TO, Console, Replayer

OBJECT_URL = f"/objects/fixture/deployments/shop/web?from={FROM}&to={TO}"


async def open_object(page: Page, base_url: str, path: str = OBJECT_URL) -> None:
    await page.goto(base_url + path)
    await expect(page.locator("#timeline")).to_have_attribute("data-ready", "true")


async def test_search_finds_the_deployment_by_kubectl_words(
    lifecycle: Replayer, page: Page, console: Console, screenshot: Callable[[str], Any]
) -> None:
    await lifecycle.send()
    await page.goto(lifecycle.app.base_url + "/")
    await page.fill("#q", "deploy/web -n shop")
    await page.select_option("#range", "custom")
    await page.fill("#from", FROM[:-1])
    await page.fill("#to", TO[:-1])
    await page.press("#q", "Enter")
    results = page.locator("a.result")
    await expect(results).to_have_count(1)
    await expect(results.first).to_contain_text("web")
    await expect(results.first).to_contain_text("shop/")
    await expect(results.first.locator(".badge")).to_have_text("deploy")
    await expect(results.first.locator(".count.error")).to_have_text(re.compile(r"[1-9]\d* err"))
    await expect(results.first.locator("svg.spark rect").first).to_be_attached()
    await screenshot("search")
    # The search is remembered in this browser.
    await page.goto(lifecycle.app.base_url + "/")
    await expect(page.locator("#recent a.chip").first).to_have_text("deploy/web -n shop")
    await page.locator("#recent a.chip").first.click()
    await expect(page.locator("a.result")).to_have_count(1)
    await page.locator("a.result").first.click()
    await expect(page).to_have_url(re.compile(r"/objects/fixture/deployments/shop/web\?from="))
    await expect(page.locator("#timeline")).to_have_attribute("data-ready", "true")
    assert console.errors == []
