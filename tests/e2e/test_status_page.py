"""The status page in a real headless browser: Debian's chromium through its chromedriver,
driven by Selenium (which must not fetch a browser or driver of its own: both paths are given
and SE_OFFLINE is set). The page loads, shows a backend that connects during the test, a
request made during the test in the inspector (with its masked headers on click, and the
filter), and the backend gone after it disconnects. A screenshot is saved under tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import ptth
from tests.support import make_hello_app, require_module, require_tool, start_router

INSTANCE = "browser-test-backend"
WAIT = 15.0


def start_browser(chromium: str, chromedriver: str, profile: Path) -> Any:
    webdriver = require_module("selenium.webdriver", "selenium drives the browser")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


async def in_thread(call: Callable[[], Any]) -> Any:
    """Selenium blocks: run it off the trio loop that serves the router."""
    return await trio.to_thread.run_sync(call)


async def wait_for(driver: Any, what: str, check: Callable[[Any], Any]) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return await in_thread(lambda: WebDriverWait(driver, WAIT, 0.05).until(check))
    except Exception as exc:
        raise AssertionError(f"the page never showed {what}: {exc}") from None


@pytest.mark.timeout(90)
async def test_status_page_in_headless_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver", "chromium-driver")
    require_module("selenium", "selenium drives the browser")
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        admin_url = router.addresses.admin_url
        driver = await in_thread(lambda: start_browser(chromium, chromedriver, tmp_path / "p"))
        try:
            await in_thread(lambda: driver.get(admin_url + "/"))
            await wait_for(
                driver,
                "the router as ready",
                lambda d: d.find_element(By.ID, "state").text == "ready",
            )
            await wait_for(
                driver,
                "the live event stream",
                lambda d: d.find_element(By.ID, "live").text == "live",
            )
            assert await in_thread(lambda: driver.find_element(By.ID, "no-tunnels").is_displayed())
            assert "ptth router" in await in_thread(lambda: driver.title)

            # A backend connects: its tunnel appears without a reload.
            backend = trio.CancelScope()

            async def serve() -> None:
                with backend:
                    await ptth.serve(
                        make_hello_app(INSTANCE),
                        router.tunnel,
                        options=ptth.BackendOptions(instance=INSTANCE),
                    )

            nursery.start_soon(serve)
            tunnel_row = f'tr.tunnel[data-instance="{INSTANCE}"]'
            row = await wait_for(
                driver,
                "the backend's tunnel",
                lambda d: d.find_element(By.CSS_SELECTOR, tunnel_row),
            )
            tunnel_id = router.router.registry.tunnels()[0].tunnel_id
            assert await in_thread(lambda: row.get_attribute("data-tunnel")) == tunnel_id
            assert not await in_thread(
                lambda: driver.find_element(By.ID, "no-tunnels").is_displayed()
            )

            # A request through the front end shows in the inspector, live.
            async with httpx.AsyncClient(base_url=router.url) as client:
                response = await client.get(
                    "/inspect-me?q=1", headers={"authorization": "Bearer page-secret"}
                )
            assert response.text == "bar"
            request_row = await wait_for(
                driver,
                "the request in the inspector",
                lambda d: next(
                    (
                        r
                        for r in d.find_elements(By.CSS_SELECTOR, "#requests tr.request")
                        if "/inspect-me?q=1" in r.text
                    ),
                    False,
                ),
            )
            text = await in_thread(lambda: request_row.text)
            for expected in ("GET", "/inspect-me?q=1", "200", tunnel_id, INSTANCE):
                assert expected in text, (expected, text)

            screenshot = tmp_path / "status-page.png"
            assert await in_thread(lambda: driver.save_screenshot(str(screenshot)))
            assert screenshot.stat().st_size > 1000
            print(f"status page screenshot: {screenshot}")

            # Its headers on click, the credential masked.
            await in_thread(request_row.click)
            details = await wait_for(
                driver,
                "the request's headers",
                lambda d: (
                    d.find_element(By.ID, "details").is_displayed()
                    and d.find_element(By.ID, "request-headers")
                ),
            )
            headers = await in_thread(lambda: details.text)
            assert "authorization" in headers and "(masked)" in headers
            assert "page-secret" not in await in_thread(lambda: driver.page_source)

            # The filter hides what does not match and shows what does.
            search = await in_thread(lambda: driver.find_element(By.ID, "filter"))
            await in_thread(lambda: search.send_keys("no-such-thing"))
            await wait_for(driver, "the row filtered out", lambda d: not request_row.is_displayed())
            await in_thread(search.clear)
            await in_thread(lambda: search.send_keys("inspect-me 2xx"))
            await wait_for(driver, "the row filtered in", lambda d: request_row.is_displayed())

            details_shot = str(tmp_path / "status-page-details.png")
            assert await in_thread(lambda: driver.save_screenshot(details_shot))

            # The backend disconnects: its tunnel leaves the page.
            backend.cancel()
            await wait_for(
                driver,
                "the backend gone",
                lambda d: (
                    not d.find_elements(By.CSS_SELECTOR, tunnel_row)
                    and d.find_element(By.ID, "no-tunnels").is_displayed()
                ),
            )
            await in_thread(lambda: driver.save_screenshot(str(tmp_path / "status-page-gone.png")))
        finally:
            with trio.CancelScope(shield=True):
                await in_thread(driver.quit)
        nursery.cancel_scope.cancel()
