"""/docs and /redoc load everything from the server itself: they work with no internet."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Route, sync_playwright

from tests.helpers import ServerProcess, running_server

MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
"""The one outside address a page asks for: ReDoc's sidebar logo, hidden when it fails to load."""


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    args = ["--model", str(tiny_model), "--workers", "0"]
    with running_server(tmp_path_factory.mktemp("data"), args, workers=False) as server:
        yield server


class _Links(HTMLParser):
    """Every address an HTML page names in `src` or `href`."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def _page_urls(html: str) -> list[str]:
    links = _Links()
    links.feed(html)
    return links.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_load_only_the_servers_own_assets(api_only: ServerProcess, page: str) -> None:
    r = httpx.get(api_only.url + page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text
    urls = _page_urls(r.text)
    assert {Path(url).suffix for url in urls} >= {".js", ".png"}
    for url in urls:
        assert not urlsplit(url).netloc, f"{page} loads {url} from outside the server"
        asset = httpx.get(api_only.url + url)
        assert asset.status_code == 200, f"{url}: {asset.status_code}"
        expected = MEDIA_TYPES[Path(url).suffix]
        assert asset.headers["content-type"].startswith(expected), url
        assert len(asset.content) > 100, url
    # Nothing is loaded through a script either (Google Fonts, unpkg, jsDelivr).
    for host in ("cdn.jsdelivr.net", "fonts.googleapis.com", "unpkg.com"):
        assert host not in r.text


def test_unknown_asset_is_a_404_and_licences_are_not_served(api_only: ServerProcess) -> None:
    for name in ("nothing.js", "LICENSE-redoc", "README.md", "..%2Fdocs.py"):
        r = httpx.get(f"{api_only.url}/docs/assets/{name}")
        assert r.status_code == 404, name


def test_document_lists_no_documentation_route(api_only: ServerProcess) -> None:
    paths = httpx.get(f"{api_only.url}/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))]


CHROMIUM = shutil.which("chromium")


RENDERED = {
    "/docs": "#operations-openai-create_image_v1_openai_images_generations_post",
    "/redoc": "[data-section-id$=create_image_v1_openai_images_generations_post]",
}
"""An element each page draws from the document: the generations call under /v1/openai."""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_pages_render_in_a_browser_with_no_internet(api_only: ServerProcess) -> None:
    """In headless Chromium, with every request off loopback refused, each page draws the calls."""
    outside: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            for page, rendered in RENDERED.items():
                tab = browser.new_page()
                tab.route("**/*", only_loopback)
                tab.goto(api_only.url + page)
                tab.locator(rendered).first.wait_for(state="attached", timeout=30_000)
        finally:
            browser.close()
    assert set(outside) <= {REDOCLY_LOGO}
