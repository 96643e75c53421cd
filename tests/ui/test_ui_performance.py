"""The object page with 300 related objects and 5,000 marks, rendered in a real Chromium: the time is measured in
the browser (performance.now) and reported, not asserted (no timed assertions in this suite)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from tests.e2e.conftest import AppFactory
from tests.frontend.rawdata import SECOND, T0, RawWriter, deployment, pod, replicaset
from tests.ui.conftest import Console

REPLICASETS = 11
PODS_PER_REPLICASET = 26  # 1 + 11 + 286 = 298 objects ...
EXTRA_PODS = 2  # ... and two more Pods under the first ReplicaSet: 300
MARKS = 5000


def big_tree() -> tuple[RawWriter, int]:
    """A Deployment, 11 ReplicaSets and 288 Pods over 20 minutes of one window, 5,000 marks in all."""
    raw = RawWriter()
    web = deployment("big")
    objects = [web]
    pods = []
    for r in range(REPLICASETS):
        rs = replicaset(f"big-{r}")
        raw.link(web, rs, T0 + (r + 1) * SECOND)
        objects.append(rs)
        for p in range(PODS_PER_REPLICASET + (EXTRA_PODS if r == 0 else 0)):
            pd = pod(f"big-{r}-{p}")
            raw.link(rs, pd, T0 + (100 + r * 30 + p) * SECOND)
            objects.append(pd)
            pods.append(pd)
    marks = 0
    for index in range(MARKS):
        holder = objects[index % len(objects)]
        at = T0 + 60 * SECOND + (index * 7919 % 1_200_000) * 10**6  # spread over 20 minutes
        kind = index % 4
        if kind == 0:
            code = 409 if index % 37 == 0 else 200
            raw.audit(holder, at, "admin", "patch", code, diff=[f"spec.replicas {index} -> 1"])
        elif kind == 1:
            warning = index % 29 == 0
            raw.event(holder, at, "BackOff" if warning else "Pulled", "message", "Warning" if warning else "Normal")
        elif kind == 2:
            raw.field_diff(holder, at, "kubelet", ['status.phase "Pending" -> "Running"'])
        else:
            raw.audit(holder, at, "system:node:node-1", "patch", subresource="status")
        marks += 1
    assert len(objects) == 300
    return raw, marks


async def test_three_hundred_objects_and_five_thousand_marks_render(
    make_app: AppFactory, page: Page, console: Console, screenshot: Callable[[str], Any], tmp_path: Path
) -> None:
    app = await make_app()
    raw, marks = big_tree()
    assert app.components is not None and app.components.store is not None
    await app.components.store.write(raw.spans)
    await app.components.store.flush()
    start, end = T0 // 10**6, (T0 + 1500 * SECOND) // 10**6
    await page.goto(f"{app.base_url}/objects/fixture/deployments/shop/big?from={start}&to={end}")
    timeline = page.locator("#timeline")
    await expect(timeline).to_have_attribute("data-ready", "true", timeout=30_000)
    assert await timeline.get_attribute("data-marks") == str(marks)
    total_rows = await page.evaluate("document.querySelector('.tl-inner').offsetHeight / 26")
    assert total_rows == 300
    # Only the rows in view are in the DOM; the last one is reachable by keyboard.
    assert 0 < await page.locator(".tl-row").count() < 300
    await page.locator(".tl-scroll").focus()
    await page.locator(".tl-scroll").press("End")
    await expect(page.locator(".tl-row.active")).to_have_attribute("data-index", "299")
    draw_ms = int(await timeline.get_attribute("data-draw-ms") or "-1")
    load_ms = int(await timeline.get_attribute("data-load-ms") or "-1")
    assert draw_ms >= 0 and load_ms >= draw_ms
    figures = {"objects": 300, "marks": marks, "render_ms": draw_ms, "fetch_and_render_ms": load_ms}
    (tmp_path / "ui-performance.json").write_text(json.dumps(figures))
    print(f"\nUI render of 300 objects / {marks} marks: {draw_ms} ms in the browser ({load_ms} ms with the fetch)")
    await screenshot("three-hundred-objects")
    assert console.errors == []
