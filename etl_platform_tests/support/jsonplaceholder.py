"""A json-server look-alike (JSONPlaceholder's server) over LocalServer: `?_page=&_limit=`
pages with `X-Total-Count` and a `Link` header; without them a whole collection at once."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from etl_platform_tests.support.http_servers import LocalServer, Request, Response


def collection_handler(items: list[dict[str, Any]], base_url: str, path: str):
    def handle(req: Request) -> Response:
        page = req.arg("_page")
        if page is None:
            return Response(200, items, {"X-Total-Count": str(len(items))})
        limit = int(req.arg("_limit") or 10)
        page_no = int(page)
        last = max(1, math.ceil(len(items) / limit))
        chunk = items[(page_no - 1) * limit : page_no * limit]

        def link(n: int) -> str:
            return f"<{base_url}{path}?_page={n}&_limit={limit}>"

        rels = [f'{link(1)}; rel="first"']
        if page_no > 1:
            rels.append(f'{link(page_no - 1)}; rel="prev"')
        if page_no < last:
            rels.append(f'{link(page_no + 1)}; rel="next"')
        rels.append(f'{link(last)}; rel="last"')
        return Response(
            200,
            chunk,
            {
                "X-Total-Count": str(len(items)),
                "Link": ", ".join(rels),
                "Access-Control-Expose-Headers": "X-Total-Count, Link",
            },
        )

    return handle


def serve_jsonplaceholder(
    server: LocalServer, data_dir: Path, resources=("users", "posts", "comments", "todos")
) -> None:
    """Route /<resource> to the fixture's data, json-server style."""
    for name in resources:
        items = json.loads((data_dir / f"{name}.json").read_text())
        server.route(f"/{name}", collection_handler(items, server.url, f"/{name}"))
