"""/docs and /redoc are served by the API itself: every script, stylesheet and icon they load
comes from the API's own origin, so the docs work with no network (no CDN)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.read_api import client


class _Assets(HTMLParser):
    """Every URL a page loads: <script src>, <link href>, <img src>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


def _loaded_urls(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_files_of_the_api_itself(duckdb_url: str, page: str) -> None:
    api = client(Warehouse(duckdb_url))
    response = api.get(page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    urls = _loaded_urls(response.text)
    assert any(u.endswith(".js") for u in urls), urls  # the page does load its UI code
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from another origin"
        asset = api.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    # nor does the page's own script reach out (Google fonts, CDNs, the Swagger validator badge)
    assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", response.text.replace("http://www.w3.org", ""))


def test_swagger_ui_bundle_is_a_current_swagger_ui(duckdb_url: str) -> None:
    """FastAPI emits OpenAPI 3.1, which Swagger UI reads from version 5 on."""
    api = client(Warehouse(duckdb_url))
    script = next(u for u in _loaded_urls(api.get("/docs").text) if u.endswith("swagger-ui-bundle.js"))
    assert api.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert re.search(rb'"5\.\d+\.\d+"', api.get(script).content)
