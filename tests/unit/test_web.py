"""The web demo's static route: files, security headers, and what happens without them."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ws_sandbox import openapi, web
from ws_sandbox.jupyter import routes as jupyter_routes
from ws_sandbox.settings import Settings


async def api(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("api")


def client(directory: Path | None = None) -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/api/v1/config", api), *web.routes(directory)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_serves_the_demo_with_security_headers() -> None:
    async with client() as c:
        page = await c.get("/")
        assert page.status_code == 200
        assert '<script src="app.js"' in page.text
        for path in ("/", "/app.js", "/style.css"):
            headers = (await c.get(path)).headers
            assert headers["content-security-policy"] == web.content_security_policy("test")
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"
            assert headers["x-frame-options"] == "DENY"
        assert (await c.get("/app.js")).headers["content-type"].startswith("text/javascript")
        # Routes listed before the mount still answer; unknown paths are a plain 404.
        assert (await c.get("/api/v1/config")).text == "api"
        assert (await c.get("/nope.txt")).status_code == 404


def connect_src(policy: str) -> str:
    [directive] = [d for d in policy.split("; ") if d.startswith("connect-src ")]
    return directive


async def test_websockets_may_reach_the_pages_own_host_only() -> None:
    async with client() as c:
        for host in ("sandbox.example.com:8090", "127.0.0.1:8090", "localhost"):
            policy = (await c.get("/", headers={"Host": host})).headers[
                "content-security-policy"]
            assert connect_src(policy) == f"connect-src 'self' ws://{host} wss://{host}"
    # Never the schemes alone, which allow any host.
    for policy in (web.CONTENT_SECURITY_POLICY, web.content_security_policy("example.com")):
        assert not {"ws:", "wss:"} & set(connect_src(policy).split())


async def test_a_host_header_cannot_write_the_policy() -> None:
    hostile = ["evil.example; script-src *", "a b", "x.example:8090/path", "*.example",
               "[::1]:8090", "example.com:123456", "-bad.example", "", "evil.example,ws:"]
    async with client() as c:
        for host in hostile:
            policy = (await c.get("/", headers={"Host": host})).headers[
                "content-security-policy"]
            assert policy == web.CONTENT_SECURITY_POLICY, host
            assert connect_src(policy) == "connect-src 'self'"
            assert policy.count("script-src") == 1


def test_page_has_no_inline_script_or_remote_asset() -> None:
    for name in ("index.html", "app.js", "style.css"):
        text = (web.DEMO_DIR / name).read_text()
        assert "http://" not in text and "https://" not in text, name
    html = (web.DEMO_DIR / "index.html").read_text()
    assert "<script>" not in html and "style=" not in html and "onclick" not in html


async def test_websocket_to_an_unknown_path_is_closed() -> None:
    app = Starlette(routes=web.routes())
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/nowhere", "root_path": "", "headers": [],
             "query_string": b"", "scheme": "ws", "server": ("test", 80)}
    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.close"]


async def test_missing_directory_explains_itself(tmp_path: Path) -> None:
    async with client(tmp_path / "web-demo") as c:
        response = await c.get("/")
        assert response.status_code == 404
        assert "web demo is not available" in response.text
        assert "web-demo" in response.text
        assert (await c.get("/api/v1/config")).text == "api"


async def test_pages_the_service_renders_may_not_be_framed() -> None:
    # /docs and the Jupyter login form (a password form in another site's frame is
    # clickjacking) carry the page headers; they had none.
    app = Starlette(routes=[Route("/docs", openapi.docs), Route("/login", jupyter_routes.login)])
    app.state.manager = SimpleNamespace(settings=Settings())
    transport = httpx.ASGITransport(app=app)
    # localhost: an open service's login answers only to its own names (DNS rebinding).
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        for path in ("/docs", "/login"):
            response = await c.get(path)
            assert response.status_code == 200, path
            for name, value in web.PAGE_HEADERS.items():
                if name == "Content-Security-Policy":  # the login's allows less still
                    assert "frame-ancestors 'none'" in response.headers[name], path
                else:
                    assert response.headers[name] == value, (path, name)
        assert web.PAGE_HEADERS["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in web.PAGE_HEADERS["Content-Security-Policy"]


async def test_every_response_says_nosniff_once() -> None:
    """The API's answers, and a 404 under / (answered outside the demo's wrapper), had no
    X-Content-Type-Options (a review)."""
    async def sniffed(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", headers={"X-Content-Type-Options": "nosniff"})

    app = Starlette(routes=[Route("/api/v1/config", api), Route("/own", sniffed),
                            *web.routes()], middleware=[Middleware(web.NoSniff)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        for path in ("/api/v1/config", "/nope.txt", "/", "/own", "/api/nothing"):
            response = await c.get(path)
            assert response.headers.get_list("x-content-type-options") == ["nosniff"], path
