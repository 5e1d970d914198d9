"""The Jupyter kernel endpoint, driven as Open WebUI's code interpreter drives it.

Open WebUI (``backend/open_webui/utils/code_interpreter.py``) logs in (password mode) or puts
``?token=`` on every call, creates a kernel with ``POST /api/kernels``, opens
``/api/kernels/{id}/channels``, sends one ``execute_request``, reads messages whose parent is
that request until ``status`` idle, and deletes the kernel. :func:`open_webui_run` does the
same steps with the same libraries (aiohttp for HTTP, websockets for the channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import pytest
import websockets

from tests.conftest import wait_for
from tests.integration.conftest import Service, ServiceFactory, container_exists
from ws_sandbox import frames as fr
from ws_sandbox.client import connect
from ws_sandbox.jupyter.routes import MAX_CONNECTIONS

pytestmark = pytest.mark.docker

TOKEN = "jupyter-test-token"
PASSWORD = "jupyter-test-password"
API_KEY = "jupyter-test-api-key"
PYTHON_ONLY = {"ENABLE_JAVASCRIPT": "false", "ENABLE_SHELL": "false", "ENABLE_RUST": "false"}

PLOT = """
import sys
import matplotlib
import matplotlib.pyplot as plt
print("hello from stdout")
print("a warning", file=sys.stderr)
plt.plot([1, 2, 3], [1, 4, 9])
plt.show()
6 * 7
"""


@dataclass
class Run:
    """What Open WebUI collects from one execution, plus every message for our checks."""

    stdout: str = ""
    stderr: str = ""
    result: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    kernel_id: str = ""


def execute_request(code: str, msg_id: str) -> dict[str, Any]:
    """An ``execute_request`` shaped exactly like Open WebUI's."""
    return {
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "user",
                   "session": uuid.uuid4().hex, "date": "", "version": "5.3"},
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        "channel": "shell",
    }


async def read_until_idle(ws: websockets.ClientConnection, msg_id: str, run: Run,
                          timeout: float = 60.0) -> None:
    """Open WebUI's read loop: messages of our request until ``status`` idle."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        run.messages.append(message)
        content = message["content"]
        match message.get("msg_type"):
            case "stream":
                if content["name"] == "stdout":
                    run.stdout += content["text"]
                else:
                    run.stderr += content["text"]
            case "execute_result" | "display_data":
                data = content["data"]
                if "image/png" in data:
                    run.result.append(f"data:image/png;base64,{data['image/png']}")
                elif "text/plain" in data:
                    run.result.append(data["text/plain"])
            case "error":
                run.stderr += "\n".join(content["traceback"])
            case "status":
                if content["execution_state"] == "idle":
                    return


async def open_webui_run(base: str, code: str, *, token: str = "", password: str = "",
                         delete: bool = True) -> Run:
    """Run ``code`` the way Open WebUI's ``execute_code_jupyter`` does."""
    run = Run()
    params: dict[str, str] = {}
    async with aiohttp.ClientSession(base_url=base + "/") as http:
        if password and not token:
            async with http.get("login") as response:
                response.raise_for_status()
                xsrf = response.cookies["_xsrf"].value
                http.cookie_jar.update_cookies(response.cookies)
                http.headers.update({"X-XSRFToken": xsrf})
            async with http.post("login", data={"_xsrf": xsrf, "password": password},
                                 allow_redirects=False) as response:
                response.raise_for_status()
                assert response.status == 302
                http.cookie_jar.update_cookies(response.cookies)
        if token:
            params["token"] = token
        async with http.post("api/kernels", params=params) as response:
            response.raise_for_status()
            assert response.status == 201
            run.kernel_id = (await response.json())["id"]
        query = "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""
        url = f"{base.replace('http', 'ws', 1)}/api/kernels/{run.kernel_id}/channels{query}"
        headers: dict[str, str] = {}
        if password and not token:
            headers = {"Cookie": "; ".join(f"{c.key}={c.value}" for c in http.cookie_jar),
                       **http.headers}
        try:
            async with websockets.connect(url, additional_headers=headers) as ws:
                msg_id = uuid.uuid4().hex
                await ws.send(json.dumps(execute_request(code, msg_id)))
                await read_until_idle(ws, msg_id, run)
        finally:
            if delete:
                async with http.delete(f"api/kernels/{run.kernel_id}",
                                       params=params) as response:
                    response.raise_for_status()
                    assert response.status == 204
    return run


def check_envelope(run: Run) -> None:
    """Every message is complete; busy comes first, idle last, one execute_reply on shell."""
    for message in run.messages:
        for key in ("header", "parent_header", "metadata", "content", "channel", "buffers",
                    "msg_id", "msg_type"):
            assert key in message, (key, message)
        assert message["msg_id"] == message["header"]["msg_id"]
        assert message["msg_type"] == message["header"]["msg_type"]
        assert message["header"]["date"]
    iopub = [m for m in run.messages if m["channel"] == "iopub"]
    assert iopub[0]["msg_type"] == "status"
    assert iopub[0]["content"]["execution_state"] == "busy"
    assert iopub[1]["msg_type"] == "execute_input"
    assert run.messages[-1]["msg_type"] == "status"
    replies = [m for m in run.messages if m["msg_type"] == "execute_reply"]
    assert len(replies) == 1 and replies[0]["channel"] == "shell"


async def hostname(base: str, token: str) -> tuple[str, Run]:
    run = await open_webui_run(base, "import socket; print(socket.gethostname())",
                               delete=False, token=token)
    return run.stdout.strip(), run


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service with a Jupyter token, a Jupyter password and an API key."""
    from tests.integration.conftest import running_service

    with running_service(tmp_path_factory.mktemp("jupyter"), JUPYTER_TOKEN=TOKEN,
                         JUPYTER_PASSWORD=PASSWORD, API_KEYS=API_KEY,
                         **PYTHON_ONLY) as svc:
        svc.wait_pool_full()
        yield svc


@pytest.mark.parametrize("mode", ["token", "password"])
async def test_open_webui_flow(secured: Service, mode: str) -> None:
    token, password = (TOKEN, "") if mode == "token" else ("", PASSWORD)
    run = await open_webui_run(secured.http, PLOT, token=token, password=password)
    assert run.stdout.strip() == "hello from stdout"
    assert run.stderr.strip() == "a warning"
    assert run.result[0].startswith("data:image/png;base64,iVBORw0KGgo")
    assert run.result[1] == "42"
    check_envelope(run)
    kinds = [m["msg_type"] for m in run.messages]
    assert kinds.index("display_data") < kinds.index("execute_result")
    reply = next(m for m in run.messages if m["msg_type"] == "execute_reply")
    assert reply["content"]["status"] == "ok"

    failed = await open_webui_run(secured.http, "x = 1\n1 / (x - 1)", token=token,
                                  password=password)
    assert "ZeroDivisionError: division by zero" in failed.stderr
    assert "Traceback (most recent call last)" in failed.stderr
    assert "\x1b" not in failed.stderr
    assert failed.stderr.count("ZeroDivisionError") == 1  # not also on the stderr stream
    error = next(m for m in failed.messages if m["msg_type"] == "error")
    assert error["content"]["ename"] == "ZeroDivisionError"
    assert error["content"]["evalue"] == "division by zero"
    reply = next(m for m in failed.messages if m["msg_type"] == "execute_reply")
    assert reply["content"]["status"] == "error"
    check_envelope(failed)


async def test_credentials_are_checked(secured: Service) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(secured.http + "/api/kernels") as response:
            assert response.status == 401
        async with http.post(secured.http + "/api/kernels",
                             params={"token": "wrong"}) as response:
            assert response.status == 403
        async with http.get(secured.http + "/api/kernels",
                            headers={"Authorization": f"token {TOKEN}"}) as response:
            assert response.status == 200
        async with http.get(secured.http + "/api/kernelspecs",
                            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
        async with http.get(secured.http + "/api") as response:
            assert response.status == 200
            assert "version" in await response.json()
    # Password mode: a wrong password, and a POST without the X-XSRFToken header.
    forbidden = secured.get("/api/v1/stats")[1]["auth_refused"]["forbidden"]  # type: ignore[index]
    async with aiohttp.ClientSession(base_url=secured.http + "/") as http:
        async with http.get("login") as response:
            xsrf = response.cookies["_xsrf"].value
            http.cookie_jar.update_cookies(response.cookies)
        async with http.post("login", data={"_xsrf": xsrf, "password": "nope"},
                             allow_redirects=False) as response:
            assert response.status == 403
        async with http.post("login", data={"_xsrf": "forged", "password": PASSWORD},
                             allow_redirects=False) as response:
            assert response.status == 403
        # The form takes the token and API keys as a password: its failures are counted
        # (and summed up in the log) as a wrong key's are. They were not (a review).
        after = secured.get("/api/v1/stats")[1]["auth_refused"]["forbidden"]  # type: ignore[index]
        assert after == forbidden + 2, (forbidden, after)
        async with http.post("login", data={"_xsrf": xsrf, "password": PASSWORD},
                             allow_redirects=False) as response:
            assert response.status == 302
            http.cookie_jar.update_cookies(response.cookies)
        async with http.get("api/kernels") as response:
            assert response.status == 200
        async with http.post("api/kernels") as response:
            assert response.status == 403  # no X-XSRFToken
        # Logging out ends the login (there was no /logout: a login lasted its 12 hours).
        async with http.get("logout", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/login"
            assert response.cookies["ws_sandbox_jupyter_login"]["max-age"] == "0"
            http.cookie_jar.update_cookies(response.cookies)
        async with http.get("api/kernels") as response:
            assert response.status in (401, 403), await response.text()
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(secured.url + "/api/kernels/x/channels?token=wrong"):
            pass
    assert info.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as info:  # a 403 before, as any refusal
        async with websockets.connect(secured.url + f"/api/kernels/x/channels?token={TOKEN}"):
            pass
    assert info.value.response.status_code == 404
    assert json.loads(info.value.response.body)["message"] == "kernel 'x' does not exist"


async def test_the_login_page_writes_only_an_xsrf_value_of_its_own(secured: Service) -> None:
    """``GET /login`` wrote the ``_xsrf`` cookie's value into the page as it came, and set
    it again: a cookie another site of the domain tossed (``"><script>...``) ran as the
    service's origin, which holds the login (a review). Only a value of the service's own
    form is kept now, the page is escaped, and its policy allows no script at all."""
    hostile = '"><script>alert(1)</script>'
    with socket.create_connection(("127.0.0.1", int(secured.http.rsplit(":", 1)[1]))) as raw:
        raw.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                    b"Cookie: _xsrf=" + hostile.encode() + b"\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, page = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 "), head
    assert "<script" not in page and "alert" not in page, page
    fields = [line.split(": ", 1) for line in head.split("\r\n")[1:]]
    cookie = next(v for k, v in fields if k.lower() == "set-cookie")
    value = cookie.split(";")[0].removeprefix("_xsrf=")
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", value), cookie
    assert f'name="_xsrf" value="{value}"' in page
    policy = next(v for k, v in fields if k.lower() == "content-security-policy")
    assert policy.startswith("default-src 'none'") and "form-action 'self'" in policy
    # A value of its own is kept: a second form load does not break the first's post.
    async with aiohttp.ClientSession(base_url=secured.http + "/") as http:
        http.cookie_jar.update_cookies({"_xsrf": value})
        async with http.get("login") as response:
            assert f'value="{value}"' in await response.text()


async def test_api_key_and_header_token(secured: Service) -> None:
    """An API key is a Jupyter token; older clients put the token in a WebSocket header."""
    run = await open_webui_run(secured.http, "print('keyed')", token=API_KEY)
    assert run.stdout == "keyed\n"
    headers = {"Authorization": f"token {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(secured.http + "/api/kernels", json={"name": "python3"}
                             ) as response:
            assert response.status == 201
            kernel_id = (await response.json())["id"]
        async with websockets.connect(f"{secured.url}/api/kernels/{kernel_id}/channels",
                                      additional_headers=headers) as ws:
            msg_id = uuid.uuid4().hex
            await ws.send(json.dumps(execute_request("print(6 * 7)", msg_id)))
            got = Run()
            await read_until_idle(ws, msg_id, got)
            assert got.stdout == "42\n"
        async with http.delete(f"{secured.http}/api/kernels/{kernel_id}") as response:
            assert response.status == 204


async def test_a_kernel_started_with_an_api_key_is_that_keys_alone(secured: Service) -> None:
    """Another identity (here the shared Jupyter token) neither lists it nor reaches it: each
    call naming it, its channels included, is a 404 as for a kernel that does not exist."""
    async with aiohttp.ClientSession() as http:
        owner = {"Authorization": f"token {API_KEY}"}
        other = {"Authorization": f"token {TOKEN}"}
        async with http.post(secured.http + "/api/kernels", json={}, headers=owner) as response:
            assert response.status == 201
            kernel_id = (await response.json())["id"]
        url = f"{secured.http}/api/kernels/{kernel_id}"
        try:
            async with http.get(secured.http + "/api/kernels", headers=other) as response:
                assert kernel_id not in [k["id"] for k in await response.json()]
            async with http.get(secured.http + "/api/kernels", headers=owner) as response:
                assert kernel_id in [k["id"] for k in await response.json()]
            for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/interrupt"),
                                 ("POST", "/restart")):
                async with http.request(method, url + path, headers=other) as response:
                    assert response.status == 404, (method, path, response.status)
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(f"{secured.url}/api/kernels/{kernel_id}/channels",
                                              additional_headers=other):
                    pass
            assert refused.value.response.status_code == 404
        finally:
            async with http.delete(url, headers=owner) as response:
                assert response.status == 204


async def test_a_kernel_takes_eight_websockets_at_most(service: Service) -> None:
    """Each output message goes to every connection of a kernel: their number is bounded,
    and a ninth is refused at the upgrade (503, at capacity) while eight are open."""
    async with aiohttp.ClientSession() as http:
        kernel_id = await start_kernel(service, http)
        url = f"{service.url}/api/kernels/{kernel_id}/channels"
        try:
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(MAX_CONNECTIONS):
                    await stack.enter_async_context(websockets.connect(url))
                with pytest.raises(websockets.InvalidStatus) as refused:
                    async with websockets.connect(url):
                        pass
                assert refused.value.response.status_code == 503
            async with websockets.connect(url) as ws:  # room again once they closed
                msg_id = uuid.uuid4().hex
                await ws.send(json.dumps(execute_request("print('again')", msg_id)))
                got = Run()
                await read_until_idle(ws, msg_id, got)
                assert got.stdout == "again\n"
        finally:
            async with http.delete(f"{service.http}/api/kernels/{kernel_id}") as response:
                assert response.status == 204


async def test_delete_removes_the_container(secured: Service) -> None:
    host, run = await hostname(secured.http, token=TOKEN)
    assert host and container_exists(host)
    async with aiohttp.ClientSession() as http:
        url = f"{secured.http}/api/kernels/{run.kernel_id}"
        async with http.get(url, params={"token": TOKEN}) as response:
            model = await response.json()
            assert model["id"] == run.kernel_id and model["name"] == "python3"
            assert model["execution_state"] == "idle"
        async with http.delete(url, params={"token": TOKEN}) as response:
            assert response.status == 204
        async with http.get(url, params={"token": TOKEN}) as response:
            assert response.status == 404
        # DELETE answers once the kernel has ended; the container goes right after.
        await wait_for(lambda: not container_exists(host), 30)


async def test_a_kernel_whose_creator_hung_up_is_deleted(make_service: ServiceFactory) -> None:
    """A client that gave up on ``POST /api/kernels`` (its timeout, under load) left a
    kernel that nobody knew of, holding a slot until its idle timeout (a review). Without a
    warm pool the start takes a container's start, long after the client has gone."""
    with make_service(POOL_SIZE="0", **PYTHON_ONLY) as svc:
        host, port = svc.http.removeprefix("http://").rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()  # before the answer
        await wait_for(lambda: "its creator disconnected" in svc.log_path.read_text(), 30)
        async with aiohttp.ClientSession() as http, http.get(
                svc.http + "/api/kernels") as response:
            assert await response.json() == []
        stats = svc.get("/api/v1/stats")[1]
        assert stats["active_sessions"] == 0, stats


async def test_kernelspecs(service: Service) -> None:
    status, body = service.get("/api/kernelspecs")
    assert status == 200
    assert body["default"] == "python3"
    specs = body["kernelspecs"]
    assert isinstance(specs, dict)
    assert sorted(specs) == ["bash", "javascript", "python3", "rust"]
    assert specs["python3"]["spec"]["language"] == "python"
    status, version = service.get("/api")
    assert status == 200 and "version" in version
    # One kernelspec by name, as Jupyter Server serves it (a review found it missing).
    status, spec = service.get("/api/kernelspecs/bash")
    assert status == 200 and spec == specs["bash"]
    status, missing = service.get("/api/kernelspecs/cobol")
    assert status == 404
    assert missing == {"message": "no such kernel 'cobol'; available: python3, javascript,"
                                  " bash, rust", "reason": "not_found"}
    # Only under its own name: an alias starts a kernel, but Jupyter Server has no
    # kernelspec "python" (a spec served under it would name another).
    status, _ = service.get("/api/kernelspecs/python")
    assert status == 404


async def test_an_unknown_jupyter_path_is_a_jupyter_shaped_404(service: Service) -> None:
    """Under /api (not ours, /api/v1), 404 and 405 bodies are Jupyter Server's shape,
    ``{"message", "reason"}``, which Jupyter clients read."""
    status, body = service.get("/api/sessions")
    assert status == 404
    assert body == {"message": "no endpoint at '/api/sessions'; the Jupyter endpoint serves"
                               " /api, /api/status, /api/kernelspecs and /api/kernels",
                    "reason": "not_found"}
    status, body = service.get("/api/kernels/x/restart")
    assert status == 405
    assert body == {"message": "GET is not allowed on '/api/kernels/x/restart'; it takes POST",
                    "reason": "method_not_allowed"}


async def test_status_counts_the_callers_kernels_and_channels(service: Service) -> None:
    status, body = service.get("/api/status")
    assert status == 200
    before = cast(dict[str, Any], body)
    assert set(before) == {"started", "last_activity", "kernels", "connections"}
    started = datetime.fromisoformat(before["started"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - started).total_seconds()) < 3600
    async with aiohttp.ClientSession() as http:
        kernel_id = await start_kernel(service, http)
        async with websockets.connect(f"{service.url}/api/kernels/{kernel_id}/channels"):
            status, body = service.get("/api/status")
            assert status == 200
            now = cast(dict[str, Any], body)
            assert now["kernels"] == before["kernels"] + 1
            assert now["connections"] == before["connections"] + 1
            assert now["started"] == before["started"]
            assert now["last_activity"] >= before["last_activity"]
        async with http.delete(f"{service.http}/api/kernels/{kernel_id}") as response:
            assert response.status == 204


async def test_kernelspecs_follow_enabled_languages(secured: Service) -> None:
    async with aiohttp.ClientSession() as http, http.get(secured.http + "/api/kernelspecs",
                        params={"token": TOKEN}) as response:
        body = await response.json()
    assert list(body["kernelspecs"]) == ["python3"]


class Kernel:
    """A kernel on the shared (open, loopback) service, with its channel."""

    def __init__(self, service: Service, http: aiohttp.ClientSession, kernel_id: str,
                 ws: websockets.ClientConnection) -> None:
        self.service = service
        self.http = http
        self.id = kernel_id
        self.ws = ws

    async def execute(self, code: str) -> Run:
        msg_id = uuid.uuid4().hex
        await self.ws.send(json.dumps(execute_request(code, msg_id)))
        run = Run(kernel_id=self.id)
        await read_until_idle(self.ws, msg_id, run)
        return run

    async def post(self, action: str) -> int:
        async with self.http.post(f"{self.service.http}/api/kernels/{self.id}/{action}"
                                  ) as response:
            return response.status


async def start_kernel(service: Service, http: aiohttp.ClientSession,
                       name: str | None = None) -> str:
    body = {"name": name} if name else None
    async with http.post(service.http + "/api/kernels", json=body) as response:
        assert response.status == 201, await response.text()
        model = await response.json()
    for key in ("id", "name", "last_activity", "execution_state", "connections"):
        assert key in model
    return str(model["id"])


@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", "request body is not JSON"),
    (b'{"name": ' + b"[" * 2000 + b"]" * 2000 + b"}", "request body is not JSON"),  # too deep
    (b"[1]", "must be a JSON object"),
])
async def test_a_bad_kernel_request_body_is_a_400(service: Service, body: bytes,
                                                  words: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            service.http + "/api/kernels", data=body,
            headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400, await response.text()
        assert words in await response.text()


@pytest.mark.parametrize("path", ["/login", "/api/kernels"])
async def test_a_body_over_64_kib_is_refused_as_it_streams(service: Service, path: str) -> None:
    """Chunked, so no length is announced: refused with 413 once 64 KiB have come, not
    read whole first (a 400 after buffering all of it, before)."""
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 4096

    async with aiohttp.ClientSession() as http, http.post(
            service.http + path, data=chunks(),
            headers={"Content-Type": "application/json"}) as response:
        assert response.status == 413, await response.text()


async def test_an_open_endpoint_refuses_a_foreign_site_s_kernel(service: Service) -> None:
    """A cross-site form (text/plain: no preflight) cannot start kernels on an open service."""
    async with aiohttp.ClientSession() as http, http.post(
            service.http + "/api/kernels", data=b"{}",
            headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}) as response:
        assert response.status == 403, await response.text()
        assert "origin" in await response.text()


async def test_restart_loses_state(service: Service) -> None:
    async with aiohttp.ClientSession() as http:
        kernel_id = await start_kernel(service, http)
        async with websockets.connect(f"{service.url}/api/kernels/{kernel_id}/channels") as ws:
            k = Kernel(service, http, kernel_id, ws)
            assert (await k.execute("kept = 'yes'\nprint(kept)")).stdout == "yes\n"
            assert await k.post("restart") == 200
            # "starting", not "restarting": JupyterLab reads that as a restart nobody asked
            # for and tells its user the kernel died.
            statuses: list[str] = []
            while statuses[-1:] != ["idle"]:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["msg_type"] == "status" and not message["parent_header"]:
                    statuses.append(message["content"]["execution_state"])
            assert statuses == ["starting", "idle"]
            after = await k.execute("print(kept)")
            error = next(m for m in after.messages if m["msg_type"] == "error")
            assert error["content"]["ename"] == "NameError"
            # Counted from 1 again, as the worker names the cell: a fresh interpreter.
            reply = next(m for m in after.messages if m["msg_type"] == "execute_reply")
            assert reply["content"]["execution_count"] == 1
            assert '  File "<cell-1>", line 1, in <module>' in error["content"]["traceback"]
            again = await k.execute("print('fresh')")
            assert again.stdout == "fresh\n"
        async with http.delete(f"{service.http}/api/kernels/{kernel_id}") as response:
            assert response.status == 204


async def test_a_sandbox_lost_while_nobody_is_connected_is_told_to_the_next_client(
        service: Service) -> None:
    """Open WebUI connects per run: a sandbox killed between two connections is replaced,
    and the next client learns that the state is gone."""
    async with aiohttp.ClientSession() as http:
        kernel_id = await start_kernel(service, http)
        url = f"{service.url}/api/kernels/{kernel_id}/channels"
        try:
            async with websockets.connect(url) as ws:
                k = Kernel(service, http, kernel_id, ws)
                run = await k.execute("import socket\nkept = 1\nprint(socket.gethostname())")
                host = run.stdout.strip()
            subprocess.run(["docker", "kill", host], check=True, capture_output=True,
                           timeout=30)
            await wait_for(lambda: not container_exists(host), 30)
            await asyncio.sleep(2)  # the service replaces the sandbox
            async with websockets.connect(url) as ws:
                # A Jupyter client sees the restart it missed (status has no parent) ...
                statuses: list[str] = []
                while statuses[-2:] != ["restarting", "idle"]:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if message["msg_type"] == "status" and not message["parent_header"]:
                        statuses.append(message["content"]["execution_state"])
                # ... and one that reads only its own request's messages, as Open WebUI
                # does, is told on stderr.
                after = await Kernel(service, http, kernel_id, ws).execute(
                    "print('kept' in globals())")
                assert after.stdout == "False\n"
                assert "the sandbox was replaced; state is lost" in after.stderr
                check_envelope(after)
                again = await Kernel(service, http, kernel_id, ws).execute("print(1)")
                assert (again.stdout, again.stderr) == ("1\n", "")
        finally:
            async with http.delete(f"{service.http}/api/kernels/{kernel_id}") as response:
                assert response.status == 204


async def test_interrupt_ends_a_running_cell(service: Service) -> None:
    async with aiohttp.ClientSession() as http:
        kernel_id = await start_kernel(service, http)
        async with websockets.connect(f"{service.url}/api/kernels/{kernel_id}/channels") as ws:
            k = Kernel(service, http, kernel_id, ws)
            await k.execute("counter = 0")
            msg_id = uuid.uuid4().hex
            await ws.send(json.dumps(execute_request(
                "import time\nwhile True:\n    counter += 1\n"
                "    if counter == 1:\n        print('started', flush=True)\n"
                "    time.sleep(0.01)", msg_id)))
            run = Run()
            while "started" not in run.stdout:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["msg_type"] == "stream":
                    run.stdout += message["content"]["text"]
            assert await k.post("interrupt") == 204
            await read_until_idle(ws, msg_id, run, timeout=30)
            error = next(m for m in run.messages if m["msg_type"] == "error")
            assert error["content"]["ename"] == "KeyboardInterrupt"
            reply = next(m for m in run.messages if m["msg_type"] == "execute_reply")
            assert reply["content"]["status"] == "error"
            after = await k.execute("print(counter > 0)")
            assert after.stdout == "True\n"  # state survived the interrupt
        async with http.delete(f"{service.http}/api/kernels/{kernel_id}") as response:
            assert response.status == 204


async def test_kernel_info_and_tolerant_parsing(service: Service) -> None:
    async with aiohttp.ClientSession() as http:
        kernel_id = await start_kernel(service, http, "bash")
        # A client that offers the v1 subprotocol gets none: we speak the JSON protocol.
        async with websockets.connect(
                f"{service.url}/api/kernels/{kernel_id}/channels",
                subprotocols=[websockets.Subprotocol("v1.kernel.websocket.jupyter.org")],
        ) as ws:
            assert ws.subprotocol is None
            # No channel, no buffers, empty date, no metadata: all tolerated.
            await ws.send(json.dumps({"header": {"msg_id": "info-1", "msg_type":
                                                 "kernel_info_request", "date": ""},
                                      "parent_header": {}, "content": {}}))
            run = Run()
            await read_until_idle(ws, "info-1", run, timeout=10)
            reply = next(m for m in run.messages if m["msg_type"] == "kernel_info_reply")
            assert reply["channel"] == "shell"
            assert reply["parent_header"]["msg_id"] == "info-1"
            assert reply["content"]["language_info"]["name"] == "bash"
            assert reply["content"]["protocol_version"] == "5.3"
            k = Kernel(service, http, kernel_id, ws)
            shell = await k.execute("echo from-bash; echo oops >&2; false")
            assert shell.stdout == "from-bash\n"
            assert "oops" in shell.stderr
            # A request we do not serve is answered, not left waiting.
            await ws.send(json.dumps({"header": {"msg_id": "dbg", "msg_type": "debug_request"},
                                      "channel": "control"}))
            run = Run()
            await read_until_idle(ws, "dbg", run, timeout=10)
            reply = next(m for m in run.messages if m["msg_type"] == "debug_reply")
            assert reply["content"]["status"] == "error"
            assert "debug_request" in reply["content"]["evalue"]
            # A message we cannot read closes the channel with the reason; the kernel lives.
            await ws.send("not json")
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1008
            assert (ws.close_reason or "").startswith("invalid Jupyter message: JSON is malformed")
        async with websockets.connect(f"{service.url}/api/kernels/{kernel_id}/channels") as ws:
            # Jupyter Server's binary form of a message (count, offsets, JSON, buffers).
            body = json.dumps(execute_request("echo again; x=kept", "bin-1")).encode()
            await ws.send(b"".join([(2).to_bytes(4, "big"), (12).to_bytes(4, "big"),
                                    (12 + len(body)).to_bytes(4, "big"), body, b"buffer"]))
            run = Run()
            await read_until_idle(ws, "bin-1", run, timeout=30)
            assert run.stdout == "again\n"
            k = Kernel(service, http, kernel_id, ws)
            assert (await k.execute("echo $x")).stdout == "kept\n"  # the same kernel
            await ws.send(b"\x00\x00\x00\x09garbage")
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1008
            assert ws.close_reason == "invalid binary Jupyter message: 9 parts in 11 bytes"
        async with http.delete(f"{service.http}/api/kernels/{kernel_id}") as response:
            assert response.status == 204
        async with http.get(f"{service.http}/api/kernels/{kernel_id}") as response:
            assert response.status == 404


LONG_OUTPUT = """
import sys
print("x" * 3_000_000)
sys.stderr.write("Traceback (most recent call last):\\n" + ("y" * 99 + "\\n") * 20_001)
raise ValueError("the end")
"""


async def test_long_output_comes_whole_in_messages_under_one_mebibyte(
        make_service: ServiceFactory) -> None:
    """docs/jupyter.md: no message exceeds 1 MiB, however long the output (the client's
    ``max_size`` of 1 MiB closes the channel at the first larger one). With MAX_OUTPUT_BYTES
    of 8 MiB, a cell prints 3 MB on one line of stdout, then 2 MB of stderr in short lines
    that begin like a Python traceback, and fails: the stdout arrives whole, the held-back
    traceback is let go as a stream past its bound (TRACEBACK_HOLD_CHARS) and arrives whole,
    and the error carries the real traceback alone. It fails if the hold had no bound (the
    error message is 2 MB). The stdout passes even with ``split_text`` off: the agent sends
    text in pieces of at most 64 KiB, so no stream message reaches 1 MiB today."""
    with make_service(MAX_OUTPUT_BYTES=str(8 << 20), **PYTHON_ONLY) as svc:
        async with aiohttp.ClientSession() as http:
            kernel_id = await start_kernel(svc, http)
            async with websockets.connect(f"{svc.url}/api/kernels/{kernel_id}/channels",
                                          max_size=1024 * 1024) as ws:
                run = await Kernel(svc, http, kernel_id, ws).execute(LONG_OUTPUT)
            async with http.delete(f"{svc.http}/api/kernels/{kernel_id}") as response:
                assert response.status == 204
    assert run.stdout == "x" * 3_000_000 + "\n"
    streams = [m for m in run.messages if m["msg_type"] == "stream"]
    fake = "Traceback (most recent call last):\n" + ("y" * 99 + "\n") * 20_001
    stderr = "".join(m["content"]["text"] for m in streams if m["content"]["name"] == "stderr")
    assert stderr == fake, (len(stderr), stderr[:100], stderr[-100:])
    error = next(m for m in run.messages if m["msg_type"] == "error")
    assert (error["content"]["ename"], error["content"]["evalue"]) == ("ValueError", "the end")
    assert len(error["content"]["traceback"]) < 20, error["content"]["traceback"][:5]


async def test_syntax_error_is_an_error_message(service: Service) -> None:
    run = await open_webui_run(service.http, "def broken(:\n    pass")
    error = next(m for m in run.messages if m["msg_type"] == "error")
    assert error["content"]["ename"] == "SyntaxError"
    assert run.stderr.count("SyntaxError") == 1
    assert not [m for m in run.messages if m["msg_type"] == "stream"]


async def test_executions_are_counted_as_jupyter(service: Service) -> None:
    def by_origin() -> dict[str, int]:
        status, stats = service.get("/api/v1/stats")
        assert status == 200
        counts = stats["by_origin"]
        assert isinstance(counts, dict)
        return counts

    before = by_origin()
    code = f"print('origin-{uuid.uuid4().hex}')"
    run = await open_webui_run(service.http, code)
    assert run.stdout.startswith("origin-")
    after = by_origin()
    assert after.get("jupyter", 0) == before.get("jupyter", 0) + 1
    assert after.get("session", 0) == before.get("session", 0)
    digest = hashlib.sha256(code.encode()).hexdigest()

    def history_row() -> dict[str, Any] | None:
        status, page = service.get("/api/v1/executions?limit=20")
        assert status == 200
        items = page["items"]
        assert isinstance(items, list)
        return next((x for x in items if x["code_sha256"] == digest), None)

    await wait_for(lambda: history_row() is not None)
    row = history_row()
    assert row is not None and row["origin"] == "jupyter"
    # A token or a login names every caller alike: the address tells them apart.
    assert row["address"] == "127.0.0.1"


async def test_matplotlib_reaches_our_own_protocol(service: Service) -> None:
    async with await connect(service.url) as s:
        r = await s.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
        assert r.status == "success", r
        assert len(r.displays) == 1
        display = r.displays[0]
        assert isinstance(display, fr.Display)
        assert display.kind == "display_data"
        assert display.data["image/png"].startswith("iVBORw0KGgo")


async def test_limits_and_reaping(make_service: ServiceFactory) -> None:
    """A cell is ended by its time limit though the client waits; an abandoned kernel goes."""
    with make_service(IDLE_TIMEOUT="2", MAX_EXECUTION_TIME="2", DEFAULT_EXECUTION_TIME="1",
                      INTERRUPT_GRACE="0.5", **PYTHON_ONLY) as svc:
        svc.wait_pool_full()
        async with aiohttp.ClientSession() as http:
            kernel_id = await start_kernel(svc, http)
            async with websockets.connect(f"{svc.url}/api/kernels/{kernel_id}/channels") as ws:
                k = Kernel(svc, http, kernel_id, ws)
                started = time.monotonic()
                run = await k.execute("import time\ntime.sleep(600)")
                assert time.monotonic() - started < 20
                error = next(m for m in run.messages if m["msg_type"] == "error")
                assert error["content"]["ename"] == "TimeoutError"
                assert "time limit of 2 s" in error["content"]["evalue"]
                # Where it stopped, then why: Open WebUI shows the traceback alone, and it
                # ended in KeyboardInterrupt (a review).
                traceback = error["content"]["traceback"]
                assert traceback[0] == "Traceback (most recent call last):", traceback
                assert traceback[-2:] == [
                    "KeyboardInterrupt", f"TimeoutError: {error['content']['evalue']}"]
                host = (await k.execute("import socket; print(socket.gethostname())")
                        ).stdout.strip()
            assert container_exists(host)
            # Abandoned: never deleted. The idle timeout closes its session.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                async with http.get(f"{svc.http}/api/kernels/{kernel_id}") as response:
                    if response.status == 404:
                        break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("the abandoned kernel was never reaped")
            while container_exists(host) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert not container_exists(host)
            async with http.get(f"{svc.http}/api/kernels") as response:
                assert await response.json() == []


async def test_kernels_and_their_cells_take_rate_limit_tokens(
        make_service: ServiceFactory) -> None:
    """As a WebSocket session does: a kernel takes a token, each cell and each restart one.
    Kernels ignored the rate limit before (a helper's probe ran 5 cells and 2 kernels on a
    burst of 2)."""
    with make_service(RATE_LIMIT_PER_MINUTE="1", RATE_LIMIT_BURST="3", **PYTHON_ONLY) as svc:
        svc.wait_pool_full()
        async with aiohttp.ClientSession() as http:
            kernel_id = await start_kernel(svc, http)  # token 1
            async with websockets.connect(f"{svc.url}/api/kernels/{kernel_id}/channels") as ws:
                k = Kernel(svc, http, kernel_id, ws)
                assert (await k.execute("print(1)")).stdout == "1\n"  # token 2
                assert (await k.execute("print(2)")).stdout == "2\n"  # token 3
                refused = await k.execute("print(3)")
                assert refused.stdout == ""
                reply = next(m for m in refused.messages if m["msg_type"] == "execute_reply")
                assert reply["content"]["status"] == "error"
                assert "rate limit of 1 calls per minute" in reply["content"]["evalue"]
                # Named as an exception, and it took no execution count (a review).
                assert reply["content"]["ename"] == "RateLimited"
                assert reply["content"]["execution_count"] == 2
                assert not [m for m in refused.messages if m["msg_type"] == "execute_input"]
            async with http.post(svc.http + "/api/kernels") as response:
                assert response.status == 429, await response.text()
                assert (await response.json())["reason"] == "rate_limited"
                assert int(response.headers["Retry-After"]) >= 1
            # A restart starts an interpreter: it takes a token too (it took none, and a
            # client restarted 47 interpreters a second past its limit: a review).
            async with http.post(f"{svc.http}/api/kernels/{kernel_id}/restart") as response:
                assert response.status == 429, await response.text()
                assert (await response.json())["reason"] == "rate_limited"
                assert int(response.headers["Retry-After"]) >= 1
            async with http.delete(f"{svc.http}/api/kernels/{kernel_id}") as response:
                assert response.status == 204


async def test_kernels_count_against_max_concurrent_executions(
        make_service: ServiceFactory) -> None:
    """docs/jupyter.md: kernels count against MAX_CONCURRENT_EXECUTIONS. With a limit of one,
    a held WebSocket session refuses a kernel (503 at_capacity with Retry-After, promptly),
    a held kernel refuses a session and a second kernel, and each freed slot can be used."""
    from ws_sandbox.client import SessionRefused

    async def refused_kernel(http: aiohttp.ClientSession) -> None:
        started = time.monotonic()
        async with http.post(svc.http + "/api/kernels", json={"name": "python3"}) as response:
            body = await response.json()
            assert response.status == 503, (response.status, body)
            assert body == {"message": "at capacity: 1 sessions are open, the limit is 1",
                            "reason": "at_capacity"}
            assert int(response.headers["Retry-After"]) >= 1
        assert time.monotonic() - started < 10  # a refusal, not a wait for a free slot

    async def sessions_drained() -> None:
        deadline = time.monotonic() + 30
        while svc.get("/api/v1/health")[1]["sessions"] != 0:
            assert time.monotonic() < deadline, svc.get("/api/v1/health")
            await asyncio.sleep(0.1)

    with make_service(MAX_CONCURRENT_EXECUTIONS="1", **PYTHON_ONLY) as svc:
        svc.wait_pool_full()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            # A WebSocket session holds the only slot: no kernel.
            session = await connect(svc.url)
            try:
                assert (await session.execute("print('held')")).stdout == "held\n"
                await refused_kernel(http)
                async with http.get(svc.http + "/api/kernels") as response:
                    assert await response.json() == []  # no half-made kernel is listed
            finally:
                await session.close()
            await sessions_drained()
            # The slot is free again: a kernel starts, and it holds the slot in turn.
            kernel_id = await start_kernel(svc, http)
            async with websockets.connect(f"{svc.url}/api/kernels/{kernel_id}/channels") as ws:
                k = Kernel(svc, http, kernel_id, ws)
                assert (await k.execute("print('kernel')")).stdout == "kernel\n"
                with pytest.raises(SessionRefused) as info:
                    await asyncio.wait_for(connect(svc.url), 30)
                assert info.value.error.code == "at_capacity"
                assert info.value.close_code == 1013
                await refused_kernel(http)
                # The held kernel is unharmed by the refusals.
                assert (await k.execute("print('still')")).stdout == "still\n"
            async with http.delete(f"{svc.http}/api/kernels/{kernel_id}") as response:
                assert response.status == 204
            # DELETE answers once the kernel has ended: the slot is free at once.
            second = await start_kernel(svc, http)
            async with http.delete(f"{svc.http}/api/kernels/{second}") as response:
                assert response.status == 204
            await sessions_drained()
            # And a WebSocket session may open again.
            async with await connect(svc.url) as s:
                assert (await s.execute("print('free')")).stdout == "free\n"
        await sessions_drained()
        log = svc.log_path.read_text(errors="replace")
        assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


async def test_execute_requests_beyond_max_queued_cells_are_refused(
        make_service: ServiceFactory) -> None:
    """A kernel's queue holds MAX_QUEUED_CELLS requests behind the running one; the next is
    answered at once with QueueFull, and the queued ones still run."""
    with make_service(MAX_QUEUED_CELLS="2", **PYTHON_ONLY) as svc:
        async with aiohttp.ClientSession() as http:
            kernel_id = await start_kernel(svc, http)
            async with websockets.connect(
                    f"{svc.url}/api/kernels/{kernel_id}/channels") as ws:
                await ws.send(json.dumps(execute_request("import time; time.sleep(2)", "q0")))
                for n in (1, 2, 3):
                    await ws.send(json.dumps(execute_request(f"print({n})", f"q{n}")))
                replies: list[dict[str, Any]] = []
                stdout: dict[str, str] = {}
                async with asyncio.timeout(60):
                    while len(replies) < 4:
                        message = json.loads(await ws.recv())
                        parent = message["parent_header"].get("msg_id", "")
                        if message["msg_type"] == "execute_reply":
                            replies.append(message)
                        elif message["msg_type"] == "stream":
                            stdout[parent] = stdout.get(parent, "") + message["content"]["text"]
            order = [r["parent_header"]["msg_id"] for r in replies]
            assert order == ["q3", "q0", "q1", "q2"]  # the refusal did not wait for q0
            refused = replies[0]["content"]
            assert refused["status"] == "error"
            assert refused["ename"] == "QueueFull"
            assert refused["evalue"] == "2 cells are already waiting; the limit is 2"
            assert [r["content"]["status"] for r in replies[1:]] == ["ok"] * 3
            assert stdout == {"q1": "1\n", "q2": "2\n"}
            async with http.delete(f"{svc.http}/api/kernels/{kernel_id}") as response:
                assert response.status == 204


async def test_a_kernel_keeps_the_output_memory_and_lifetime_limits(
        make_service: ServiceFactory) -> None:
    """docs/jupyter.md: each kernel is a session with all its limits. Output past
    MAX_OUTPUT_BYTES is cut with the marker, a memory bomb is killed at MAX_MEMORY_MB and the
    kernel goes on, and MAX_LIFETIME ends a kernel kept busy (its channel closes, it is
    gone, and so is its container)."""
    with make_service(MAX_OUTPUT_BYTES="4096", MAX_MEMORY_MB="128", MAX_LIFETIME="10",
                      IDLE_TIMEOUT="60", **PYTHON_ONLY) as svc:
        async with aiohttp.ClientSession() as http:
            opened = time.monotonic()
            kernel_id = await start_kernel(svc, http)
            async with websockets.connect(f"{svc.url}/api/kernels/{kernel_id}/channels") as ws:
                k = Kernel(svc, http, kernel_id, ws)
                flood = await k.execute("print('x' * 100_000)")
                assert "[output truncated: more than 4096 bytes]" in flood.stdout
                assert len(flood.stdout.encode()) < 4096 + 200
                bomb = await k.execute(
                    "b = []\nwhile True:\n    b.append(bytearray(b'x' * 10_000_000))")
                error = next(m for m in bomb.messages if m["msg_type"] == "error")
                assert error["content"]["ename"] == "KernelKilled"
                assert "memory limit of 128 MB exceeded" in error["content"]["evalue"]
                host = (await k.execute("import socket; print(socket.gethostname())")
                        ).stdout.strip()
                assert container_exists(host)

                async def keep_busy() -> None:  # so that the idle timeout cannot end it
                    for _ in range(30):
                        await k.execute("import time; time.sleep(1)")

                with pytest.raises(websockets.ConnectionClosed):
                    await keep_busy()
            assert 8 < time.monotonic() - opened < 30
            async with http.get(f"{svc.http}/api/kernels/{kernel_id}") as response:
                assert response.status == 404
            deadline = time.monotonic() + 20
            while container_exists(host) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert not container_exists(host)
