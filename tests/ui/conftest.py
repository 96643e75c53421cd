"""Browser tests of the built-in UI: Playwright driving Debian's Chromium (never a downloaded browser) against a
real App on loopback that received the recorded fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import ClientSession
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from kelemetry_py.app import App
from tests.e2e.conftest import AppFactory
from tests.e2e.conftest import make_app as make_app  # the App fixture, shared with the e2e tests
from tests.e2e.test_watchers_lifecycle import audit_batches
from tests.kube.helpers import DOUBLE_TOKEN, all_watching, caught_up, watcher_settings
from tests.support.kube_double import KubeApiDouble

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIFECYCLE = "deployment-lifecycle"
# The recorded scenario ran 05:35:33 to 05:36:05 UTC; this range holds all of it.
FROM, TO = "2026-11-21T05:30:00Z", "2026-11-21T05:45:00Z"


@dataclass
class Console:
    """Everything the page reported as an error: console.error, failed loads, uncaught exceptions."""

    errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url', '')})")

    def on_page_error(self, error: Exception) -> None:
        self.errors.append(f"uncaught: {error}")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
async def page(browser: Browser, console: Console) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    yield page
    await context.close()


@pytest.fixture
def screenshot(page: Page, tmp_path: Path) -> Callable[[str], object]:
    """Save a full-page screenshot under the test's own output directory; returns its path."""

    async def take(name: str) -> Path:
        path = tmp_path / "screenshots" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(path))
        return path

    return take


@pytest.fixture
async def lifecycle_double(fixtures_dir: Path) -> AsyncIterator[KubeApiDouble]:
    async with KubeApiDouble(fixtures_dir / LIFECYCLE, tokens=[DOUBLE_TOKEN]) as double:
        yield double


class Replayer:
    """Feeds the recorded scenario to the App in recorded order: before each audit batch, the watch lines the
    recorder had received by then, so diffs land on the audit spans that caused them."""

    def __init__(self, app: App, double: KubeApiDouble, scenario_dir: Path) -> None:
        self.app = app
        self.double = double
        self.batches = list(audit_batches(scenario_dir))
        self.sent = 0

    async def send(self, count: int | None = None) -> None:
        end = len(self.batches) if count is None else self.sent + count
        async with ClientSession() as session:
            for received, body in self.batches[self.sent : end]:
                self.double.release_until(received)
                await caught_up(self.app, self.double)
                async with session.post(
                    f"{self.app.base_url}/audit/fixture", data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    assert response.status == 200, await response.text()
        self.sent = max(self.sent, end)
        if self.sent == len(self.batches):
            self.double.release()
            await caught_up(self.app, self.double)
        assert self.app.components is not None
        await self.app.settle()


@pytest.fixture
async def lifecycle(
    fixtures_dir: Path, lifecycle_double: KubeApiDouble, make_app: AppFactory, tmp_path: Path
) -> AsyncIterator[Replayer]:
    """An App watching the apiserver double and receiving the lifecycle scenario's audit; nothing sent yet."""
    app = await make_app(**watcher_settings(tmp_path, lifecycle_double.url, **{"kube.diff_wait_seconds": 5.0}))
    await all_watching(app)
    yield Replayer(app, lifecycle_double, fixtures_dir / LIFECYCLE)


def iter_marks(objects: list[dict[str, object]]) -> Iterator[object]:
    for obj in objects:
        marks = obj["marks"]
        assert isinstance(marks, list)
        yield from marks
