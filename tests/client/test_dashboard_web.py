"""`swiftdeploy dashboard` in a real headless Chromium (Debian's chromium + chromium-driver, driven
by selenium; nothing downloaded) during a real rollout on the process runtime: real nginx and
workloads, the real orchestrator, gatekeeper and collector, error chaos on the canary.

SWIFTDEPLOY_UPDATE_SCREENSHOT=1 also copies the screenshot to docs/images/dashboard.png (README)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.orchestration import PYTHON, LoadLoop, env_for, write_manifest
from tests.servers import REPO_ROOT, free_port, require_binary

COLLECTOR = {"interval": 0.5, "window": 4}
AUDITOR = True  # the page shows the history chain's verification
MANIFEST = {"canary": {"version": "2.0.0", "steps": [20, 60], "interval": 1.5, "failure_limit": 2}}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--window-size=1400,1500",
)  # fmt: skip
MIN_POINTS = 10
README_SCREENSHOT = REPO_ROOT / "docs" / "images" / "dashboard.png"


@contextlib.asynccontextmanager
async def dashboard(redis_url: str, manifest: Path, *args: str) -> AsyncIterator[str]:
    """A real `swiftdeploy dashboard` process; yields the URL it prints."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "swiftdeploy_core", "dashboard", "--manifest", str(manifest), "--port", str(free_port()), *args,
        cwd=REPO_ROOT, env=env_for(redis_url), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("dashboard on http://"), line + (await proc.stderr.read()).decode()
        yield line.split()[2]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) is not None


@pytest.fixture
def browser(tmp_path: Path):
    require_binary(CHROMIUM)
    require_binary(CHROMEDRIVER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


async def until(driver, check: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return await asyncio.to_thread(WebDriverWait(driver, timeout, poll_frequency=0.2).until, lambda _d: check())
    except Exception as exc:  # TimeoutException: say what the page showed
        text = await asyncio.to_thread(lambda: driver.find_element("tag name", "body").text)
        raise AssertionError(f"the page never showed {what}; it showed:\n{text[:3000]}") from exc


def text_of(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


async def test_the_browser_sees_a_canary_progress_then_roll_back_after_error_chaos(stack, browser, tmp_path):
    assert (await stack.sd("deploy")).code == 0
    load = LoadLoop(await stack.url(), rate=60)
    runner = asyncio.create_task(load.run())
    try:
        async with dashboard(stack.redis_url, stack.root / "manifest.yaml") as url:
            await asyncio.to_thread(browser.get, url)
            await until(browser, lambda: text_of(browser, "live") == "live", "the live SSE connection")
            await until(browser, lambda: text_of(browser, "phase") == "stable", "phase stable")
            assert (await stack.sd("promote", "canary")).code == 0
            await until(browser, lambda: text_of(browser, "phase") == "progressing", "phase progressing")
            await until(browser, lambda: text_of(browser, "weight") in ("20%", "60%"), "the canary's weight")
            weight_while_progressing = text_of(browser, "weight")
            assert "current" in text_of(browser, "steps")

            assert (await stack.sd("chaos", "error", "--rate", "0.5")).code == 0
            await until(browser, lambda: text_of(browser, "phase") == "stable (rolled back)", "rolled back", 40)
            assert text_of(browser, "weight") == "0%" != weight_while_progressing
            await until(browser, lambda: "error rate" in text_of(browser, "decisions"), "a denial's reason")
            denial = text_of(browser, "decisions")
            assert "DENY" in denial and "is above the maximum" in denial and "[" in denial  # reason and engine
            points = lambda: int(browser.find_element("id", "chart-rate").get_attribute("data-points") or 0)  # noqa: E731
            await until(browser, lambda: points() >= MIN_POINTS, f"a chart with {MIN_POINTS} points")
            assert "rollback.completed" in text_of(browser, "events")
            await until(browser, lambda: text_of(browser, "audit").startswith("chain verified"), "the audit state")
            assert "1.0.0" in text_of(browser, "track-list") and "healthy" in text_of(browser, "track-list")
            shot = tmp_path / "dashboard.png"
            assert await asyncio.to_thread(browser.save_screenshot, str(shot)) and shot.stat().st_size > 10_000
            if os.environ.get("SWIFTDEPLOY_UPDATE_SCREENSHOT"):
                README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, README_SCREENSHOT)
    finally:
        load.stop()
        await runner


async def test_with_allow_actions_the_rollback_button_sends_the_command_like_the_cli(stack, browser):
    assert (await stack.sd("deploy")).code == 0
    assert (await stack.sd("promote", "canary")).code == 0  # no traffic: analysis holds at 20%
    async with dashboard(stack.redis_url, stack.root / "manifest.yaml", "--allow-actions") as url:
        await asyncio.to_thread(browser.get, url)
        await until(browser, lambda: text_of(browser, "phase") == "progressing", "phase progressing")
        await asyncio.to_thread(lambda: browser.find_element("css selector", "button[data-action=rollback]").click())
        await until(browser, lambda: text_of(browser, "action-result").startswith("✓ back on 1.0.0"), "the outcome")
        await until(browser, lambda: text_of(browser, "phase") == "stable (rolled back)", "rolled back")
        assert "requested from the dashboard" in text_of(browser, "events")
    current = await stack.record()
    assert current.canary is None and current.phase.value == "stable"


async def test_off_loopback_every_request_needs_the_token_and_actions_need_the_flag(redis_server, tmp_path):
    manifest = write_manifest(tmp_path, "sdw-token")
    async with dashboard(redis_server.url, manifest, "--host", "0.0.0.0") as url:
        base, token = url.split("?token=")
        local = base.replace("0.0.0.0", "127.0.0.1")
        async with aiohttp.ClientSession() as session:
            async with session.get(local) as response:
                assert response.status == 403
            async with session.get(f"{local}?token=wrong") as response:
                assert response.status == 403
            async with session.get(f"{local}?token={token}") as response:
                assert response.status == 200 and "SwiftDeploy" in await response.text()
            async with session.get(f"{local}api/state?token={token}") as response:
                assert (await response.json())["actions"] is False
            headers = {"X-SwiftDeploy-Action": "1"}
            async with session.post(f"{local}api/actions/rollback?token={token}", headers=headers) as response:
                assert response.status == 403 and "--allow-actions" in (await response.json())["error"]
    async with dashboard(redis_server.url, manifest) as url:
        assert "token" not in url  # loopback: no token
