"""The built-in UI in a real Chromium against a real App that received the recorded deployment lifecycle."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from playwright.async_api import Browser, Page, expect

from kelemetry_py.auth import SCOPE_KEY
from kelemetry_py.ui.http import is_static_ui_path
from tests.ui.conftest import FROM, LIFECYCLE, TO, Console, Replayer
from tests.ui.test_ui_api import NamespaceScope, tenant_server

OBJECT_URL = f"/objects/fixture/deployments/shop/web?from={FROM}&to={TO}"


# Chromium reports layout shifts to a PerformanceObserver; the page's own total is read back after loading.
TRACK_LAYOUT_SHIFT = """
window.__layoutShift = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    if (entry.hadRecentInput) continue;
    window.__layoutShift += entry.value;
  }
}).observe({ type: "layout-shift", buffered: true });
"""


async def open_object(page: Page, base_url: str, path: str = OBJECT_URL) -> None:
    await page.goto(base_url + path)
    await expect(page.locator("#timeline")).to_have_attribute("data-ready", "true")


async def step_to(page: Page, title: str) -> None:
    """Press → on the timeline until the selected mark is ``title`` (the row has fewer than 100 marks)."""
    heading = page.locator("#detail h2")
    for _ in range(100):
        await expect(page.locator("#detail")).not_to_have_class(re.compile("loading"))
        if await heading.count() and await heading.text_content() == title:
            return
        await page.locator(".tl-scroll").press("ArrowRight")
    raise AssertionError(f"no mark {title!r} on the row")


async def layout_shift(page: Page) -> float:
    return float(await page.evaluate("window.__layoutShift"))


async def test_search_finds_the_deployment_by_kubectl_words(
    lifecycle: Replayer, page: Page, console: Console, screenshot: Callable[[str], Any]
) -> None:
    await lifecycle.send()
    await page.add_init_script(TRACK_LAYOUT_SHIFT)
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
    assert await layout_shift(page) < 0.01
    # The pickers offer what the chosen range holds.
    await expect(page.locator("#namespace option", has_text="shop")).to_have_count(1)
    await expect(page.locator("#kind option", has_text="ReplicaSet")).to_have_count(1)
    await screenshot("search")
    # The search is remembered in this browser.
    await page.goto(lifecycle.app.base_url + "/")
    await expect(page.locator("#recent a.chip").first).to_have_text("deploy/web -n shop")
    await page.locator("#recent a.chip").first.click()
    await expect(page.locator("a.result")).to_have_count(1)
    # Keyboard: from the box down to the result, Enter opens it.
    await page.focus("#q")
    await page.keyboard.press("ArrowDown")
    await expect(page.locator("a.result").first).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/objects/fixture/deployments/shop/web\?from="))
    await expect(page.locator("#timeline")).to_have_attribute("data-ready", "true")
    assert console.errors == []


async def test_object_page_tells_the_rollout_story(
    lifecycle: Replayer, page: Page, console: Console, screenshot: Callable[[str], Any]
) -> None:
    await lifecycle.send()
    await page.add_init_script(TRACK_LAYOUT_SHIFT)
    await open_object(page, lifecycle.app.base_url)
    # Loading fills reserved space: nothing on the page moves (0.1 is where Chromium's metric calls it poor).
    assert await layout_shift(page) < 0.01
    rows = page.locator(".tl-row")
    names = await rows.locator(".tl-name").all_text_contents()
    assert names[0] == "web"
    replicasets = [name for name in names if re.fullmatch(r"web-[0-9a-f]{8,10}", name)]
    pods = [name for name in names if re.fullmatch(r"web-[0-9a-f]{8,10}-[0-9a-z]{5}", name)]
    assert len(replicasets) == 2 and len(pods) == 8, names
    await expect(rows.filter(has_text="web-").locator(".badge").first).to_have_text("rs")
    # The 409 conflicts are errors on the objects that got them, and in the analysis.
    await expect(rows.first.locator(".count.error")).to_have_text(re.compile(r"[1-9]"))
    conflicts = page.locator(".analysis .failures li", has_text="409")
    assert await conflicts.count() >= 3
    # The analysis names the slowest step; clicking it selects its mark.
    slowest = page.locator(".analysis .slowest")
    await expect(slowest).to_contain_text("Slowest step: pod ready")
    await slowest.locator("button.evidence").click()
    await expect(page.locator("#detail .facts")).to_contain_text("system:node:node-1")

    # Keyboard: the Deployment's row, then its marks one by one: the create (the object as YAML), the scale-up.
    await page.locator(".tl-row").first.click()
    scroll = page.locator(".tl-scroll")
    await scroll.focus()
    detail = page.locator("#detail")
    await step_to(page, "admin create")
    await expect(detail.locator(".snapshot pre")).to_contain_text("kind: Deployment")
    await expect(detail.locator(".snapshot pre")).to_contain_text("replicas: 2")
    await step_to(page, "admin patch scale")
    await expect(detail.locator("h2")).to_have_text("admin patch scale")
    await expect(detail.locator(".facts")).to_contain_text("admin")
    await expect(detail.locator(".facts")).to_contain_text("kubectl/v1.24.0")
    await expect(detail.locator(".facts")).to_contain_text("127.0.0.1")
    await expect(detail.locator(".facts")).to_contain_text("200")
    change = detail.locator(".changes-table tr", has_text="spec.replicas")
    await expect(change.locator("td.old")).to_have_text("2")
    await expect(change.locator("td.new")).to_have_text("4")
    await expect(detail.locator("pre.code").first).to_contain_text("replicas: 4")
    await screenshot("object-page")

    # The deep link (selection and zoom in the URL) reloads to the same view.
    await scroll.press("+")
    await expect(page).to_have_url(re.compile(r"view=\d+(%2C|,)\d+"))
    await page.locator("#copy-link").click()
    await expect(page.locator("#toast")).to_have_text("Link copied")
    link = await page.locator("#copy-link").get_attribute("data-copied")
    assert link is not None and "sel=" in link
    view_before = re.search(r"view=([^&]+)", link)
    assert view_before is not None
    await page.goto("about:blank")
    await page.goto(link)
    await expect(page.locator("#timeline")).to_have_attribute("data-ready", "true")
    await expect(page.locator("#detail h2")).to_have_text("admin patch scale")
    assert f"view={view_before.group(1)}" in page.url
    await expect(page.locator(".tl-row.active .tl-name")).to_have_text("web")
    await screenshot("deep-link")

    # A Pod's own page from its row, then its ancestors with the "2" key.
    pod_row = page.locator(".tl-row", has=page.locator(".badge", has_text="pod")).first
    pod_name = await pod_row.locator(".tl-name").text_content()
    await pod_row.click()
    await page.locator("#detail a.object-link").click()
    await expect(page).to_have_url(re.compile(rf"/objects/fixture/pods/shop/{pod_name}\?from="))
    await expect(page.locator("#timeline")).to_have_attribute("data-ready", "true")
    await page.keyboard.press("2")
    await expect(page).to_have_url(re.compile(r"mode=ancestors"))
    await expect(page.locator(".tl-row .badge")).to_have_text(["deploy", "rs", "pod"])
    await expect(page.locator(".modes a.current")).to_have_text("Ancestors")
    assert console.errors == []


async def test_new_activity_appears_live_while_the_range_ends_now(
    fixtures_dir: Path, lifecycle: Replayer, page: Page, console: Console, screenshot: Callable[[str], Any]
) -> None:
    # The scenario up to the image change: the Deployment is created and scaled up, one ReplicaSet so far.
    steps = [json.loads(line) for line in (fixtures_dir / LIFECYCLE / "timeline.jsonl").open()]
    image_change = next(step["start"] for step in steps if step["name"].startswith("set image"))
    await lifecycle.send(sum(1 for received, _ in lifecycle.batches if received < image_change))
    await open_object(page, lifecycle.app.base_url, f"/objects/fixture/deployments/shop/web?from={FROM}")
    await expect(page.locator("#live")).to_be_visible()
    marks_before = int(await page.locator("#timeline").get_attribute("data-marks") or "0")
    rows_before = await page.locator(".tl-row").count()
    assert marks_before > 0
    await expect(page.locator(".tl-row .tl-name", has_text="web-7d8d478f45")).to_have_count(0)
    posted = time.monotonic()
    await lifecycle.send(1)  # the batch with the image change and the new ReplicaSet
    # The page polls on its own; the new ReplicaSet and its pods appear without a reload (the 2 s bound is the
    # page's poll interval plus one request; expect's deadline only stops a broken page from hanging the test).
    await expect(page.locator(".tl-row .tl-name", has_text="web-7d8d478f45")).not_to_have_count(0, timeout=10_000)
    print(f"\nlive: the new ReplicaSet was on the page {time.monotonic() - posted:.2f} s after its batch was posted")
    marks_after = int(await page.locator("#timeline").get_attribute("data-marks") or "0")
    assert marks_after > marks_before
    assert await page.locator(".tl-row").count() > rows_before
    await screenshot("live")
    assert console.errors == []


async def test_dark_theme_on_a_4k_screen(
    lifecycle: Replayer, browser: Browser, console: Console, tmp_path: Path
) -> None:
    await lifecycle.send()
    context = await browser.new_context(viewport={"width": 1920, "height": 1080}, device_scale_factor=2)
    page = await context.new_page()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    try:
        await open_object(page, lifecycle.app.base_url)
        await page.click("#theme-toggle")
        await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        # Canvases draw at the screen's pixel density, so marks stay sharp on a 4K screen.
        sizes = await page.evaluate(
            "[...document.querySelectorAll('canvas')].map(c => [c.width, c.clientWidth, c.height, c.clientHeight])"
        )
        assert sizes and all(
            width == 2 * css_width and height == 2 * css_height for width, css_width, height, css_height in sizes
        ), sizes
        await page.locator(".analysis .slowest button.evidence").click()
        await expect(page.locator("#detail .facts")).to_contain_text("system:node:node-1")
        (tmp_path / "screenshots").mkdir(exist_ok=True)
        await page.screenshot(path=str(tmp_path / "screenshots" / "object-page-dark-4k.png"))
        # The choice is remembered.
        await page.reload()
        await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        await expect(page.locator("#timeline")).to_have_attribute("data-ready", "true")
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)"
    finally:
        await context.close()
    assert console.errors == []


async def test_the_page_asks_for_a_token_when_the_server_answers_401(
    lifecycle: Replayer, page: Page, console: Console, screenshot: Callable[[str], Any]
) -> None:
    """A server that wants a bearer token for data (not for the UI's own files): the page asks, keeps the token
    and sends it; a tenant scope on the same requests narrows what it shows."""
    await lifecycle.send()
    seen: list[str] = []

    @web.middleware
    async def bearer_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_static_ui_path(request.path):
            seen.append(request.headers.get("Authorization", ""))
            if request.headers.get("Authorization") != "Bearer s3cret":
                return web.json_response({"error": {"code": 401, "message": "token needed"}}, status=401)
            request[SCOPE_KEY] = NamespaceScope({"shop"})
        return await handler(request)

    async with tenant_server(lifecycle.app, middleware=bearer_only) as url:
        await page.goto(f"{url}/?q=error%3Dtrue&from={FROM}&to={TO}")
        await expect(page.locator("#token-dialog")).to_be_visible()
        await page.fill("#token-input", "wrong")
        await page.click("#token-save")
        await expect(page.locator("#token-reason")).to_contain_text("not accepted")
        await page.fill("#token-input", "s3cret")
        await screenshot("token-prompt")
        await page.press("#token-input", "Enter")
        await expect(page.locator("a.result").first).to_be_visible()
        assert await page.evaluate("localStorage.getItem('kelemetry.token')") == "s3cret"
        assert seen[0] == "" and "Bearer wrong" in seen and seen[-1] == "Bearer s3cret"
        # Later pages send the kept token at once.
        asked = len(seen)
        await page.locator("a.result").first.click()
        await expect(page.locator("#timeline")).to_have_attribute("data-ready", "true")
        assert all(header == "Bearer s3cret" for header in seen[asked:])
    # The expected 401s are the only failed loads.
    assert [error for error in console.errors if "status of 401" not in error] == []
