"""/docs (Swagger UI) renders in a real browser with no network: its script and styles come
from the installed package, not from a CDN.

Headless Chromium (Playwright) against a real uvicorn server; every request that leaves the
loopback server is aborted and recorded, and there must be none.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from agelens.server.api_docs import ASSETS_URL
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings
from tests.server.test_web import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, serve

pytestmark = pytest.mark.browser

from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def base_url(model_pool: ModelPool) -> Iterator[str]:
    with serve(Settings(), model_pool) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


class OfflinePage:
    """A page whose requests may reach only the loopback server; others are aborted."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.host = urlsplit(base_url).netloc
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context()
        self.context.route("**/*", self._route)
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _route(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == self.host or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("internetdisconnected")


@pytest.fixture
def offline(browser: Browser, base_url: str) -> Iterator[OfflinePage]:
    page = OfflinePage(browser, base_url)
    yield page
    page.context.close()


def test_swagger_ui_renders_the_api_with_no_network(offline: OfflinePage, base_url: str) -> None:
    page = offline.page
    page.goto(base_url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("agelens")
    paths = page.locator(".opblock-summary-path")
    expect(paths.filter(has_text="/v1/analyze").first).to_be_visible()
    assert paths.count() >= 5
    # an operation opens and shows its parameters, as Swagger UI's own scripts do it
    paths.filter(has_text="/v1/jobs/{job_id}").first.click()
    expect(page.locator(".opblock.is-open .parameters").first).to_be_visible()
    assert offline.blocked == []
    assert offline.errors == []


def test_the_assets_are_served_from_the_package_and_redoc_is_gone(base_url: str) -> None:
    import httpx

    assert httpx.get(f"{base_url}/redoc").status_code == 404
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        response = httpx.get(f"{base_url}{ASSETS_URL}/{name}")
        assert response.status_code == 200, name
        assert len(response.content) > 10_000, name
