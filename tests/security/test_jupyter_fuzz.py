"""Fuzzing the Jupyter endpoint of a live service: REST bodies, kernel ids, the login form
and the kernel channel (text, binary and JSON of every shape).

No 5xx, no hang, no traceback in the service's log; every refusal is a Jupyter error body
(``{"message", "reason"}``) or, on the channel, a close with code 1008 and a reason, after
which the kernel lives on and a new connection is served (docs/jupyter.md).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import Service, warm_service
from tests.integration.test_jupyter import PYTHON_ONLY, execute_request

pytestmark = pytest.mark.docker

TOKEN = "jfuzz-token-5b1c"
PASSWORD = "jfuzz-password-5b1c"
AUTH = {"Authorization": f"token {TOKEN}"}
# Modest counts: the whole file runs in about a minute on two cores.
JFUZZ_SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
CHANNEL_SETTINGS = settings(JFUZZ_SETTINGS, max_examples=300)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], times: int = 3
           ) -> st.SearchStrategy[Any]:
    """``good`` ``times`` times as often as ``bad``, so that most examples get past the first
    check and reach the code behind it (``one_of`` would pick each distinct branch equally)."""
    return st.sampled_from([*[good] * times, bad]).flatmap(lambda chosen: chosen)


@pytest.fixture(scope="module")
def jservice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with warm_service(tmp_path_factory.mktemp("jfuzz"), POOL_SIZE="2",
                         JUPYTER_TOKEN=TOKEN, JUPYTER_PASSWORD=PASSWORD,
                         MAX_EXECUTION_TIME="5", DEFAULT_EXECUTION_TIME="2",
                         RATE_LIMIT_PER_MINUTE="0", MAX_CONCURRENT_EXECUTIONS="20",
                         **PYTHON_ONLY) as svc:
        yield svc


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(svc: Service, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Answer:
    """One request, redirects not followed (a 302 of the login form is what we check)."""
    parts = urllib.parse.urlsplit(svc.http)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def check_clear(answer: Answer, request: object) -> None:
    """Never a 5xx (503 only as at_capacity); a refusal is a Jupyter error body."""
    assert answer.status < 500 or answer.status == 503, (answer, request)
    if answer.status >= 400:
        assert answer.headers.get_content_type() == "application/json", (answer, request)
        error = answer.json()
        assert isinstance(error["message"], str) and error["message"], (answer, request)
        assert isinstance(error["reason"], str) and error["reason"], (answer, request)
        if answer.status == 503:
            assert error["reason"] == "at_capacity", (answer, request)
            assert int(answer.headers["Retry-After"]) >= 1


@pytest.fixture(scope="module")
def kernel_id(jservice: Service) -> Iterator[str]:
    """One kernel for the whole module; deleted at the end (its container must go)."""
    answer = call(jservice, "POST", "/api/kernels", b'{"name": "python3"}', AUTH)
    assert answer.status == 201, answer
    kid = str(answer.json()["id"])
    yield kid
    gone = call(jservice, "DELETE", f"/api/kernels/{kid}", None, AUTH)
    assert gone.status == 204, gone


# --- REST ----------------------------------------------------------------------------------

names = st.one_of(st.sampled_from(["python3", "python", "bash", "rust", "javascript",
                                   "cobol", "", "PYTHON3", "../python3", "python3\x00"]),
                  st.text(max_size=20), json_values)
kernel_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"name": names}, optional={
        "path": json_values, "env": json_values, "kernel": json_values,
    }).map(lambda v: json.dumps(v).encode()),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8",
                                 "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", ""])
queries = st.dictionaries(st.sampled_from(["name", "kernel_name", "token", "x", "next",
                                           "api_key", ""]) | st.text(max_size=6),
                          st.text(max_size=20), max_size=3)


def with_query(path: str, query: dict[str, str]) -> str:
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


@JFUZZ_SETTINGS
@given(body=kernel_bodies, content_type=content_types, query=queries)
def test_kernel_start_bodies_get_clear_answers(jservice: Service, body: bytes,
                                               content_type: str,
                                               query: dict[str, str]) -> None:
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    if "token" in query or "api_key" in query:
        query = {**query, "token": TOKEN, "api_key": TOKEN}  # a wrong one is a 403; tested
    answer = call(jservice, "POST", with_query("/api/kernels", query), body, headers)
    check_clear(answer, (body, content_type, query))
    event(f"status={answer.status}")
    if answer.status == 201:
        # Only an empty body or an object naming python (or nothing) starts a kernel here:
        # the service runs Python alone.
        asked = json.loads(body) if body.strip() else {}
        assert isinstance(asked, dict) and asked.get("name") in (None, "", "python3",
                                                                 "python"), (body, answer)
        kid = answer.json()["id"]
        assert answer.json()["name"] == "python3", answer
        assert answer.headers["Location"] == f"/api/kernels/{kid}"
        gone = call(jservice, "DELETE", f"/api/kernels/{kid}", None, AUTH)
        assert gone.status == 204, gone
    else:
        assert answer.status in (400, 404, 413, 415, 503), answer


ids = st.one_of(st.text(min_size=1, max_size=40), st.sampled_from([
    "0", "-1", "..", ".", "%00", "null", "a" * 300, "python3", "'; DROP TABLE kernels;--"]))
actions = st.sampled_from([("GET", ""), ("DELETE", ""), ("POST", "/interrupt"),
                           ("POST", "/restart"), ("PATCH", ""), ("GET", "/interrupt"),
                           ("POST", ""), ("GET", "/channels")])


@JFUZZ_SETTINGS
@given(kid=ids, action=actions, body=kernel_bodies, query=queries,
       real=st.sampled_from([False, False, False, False, True]))
def test_kernel_ids_and_actions_get_clear_answers(jservice: Service, kernel_id: str,
                                                  kid: str, action: tuple[str, str],
                                                  body: bytes, query: dict[str, str],
                                                  real: bool) -> None:
    method, suffix = action
    if real and method != "DELETE":  # the module's kernel: interrupted or restarted
        kid = kernel_id
    query = {k: v for k, v in query.items() if k not in ("token", "api_key")}
    quoted = urllib.parse.quote(kid, safe="")
    path = with_query(f"/api/kernels/{quoted}{suffix}", query)
    answer = call(jservice, method, path, body if method != "GET" else None, AUTH)
    request = (method, path, body)
    assert answer.status < 500, (answer, request)
    event(f"{method} {suffix} status={answer.status}")
    routed = "/" not in kid and kid not in (".", "..")  # else another path, or none
    if routed and (method, suffix) in (("GET", ""), ("DELETE", ""), ("POST", "/interrupt"),
                                       ("POST", "/restart")):
        check_clear(answer, request)
        if kid == kernel_id:
            assert answer.status == (204 if suffix == "/interrupt" else 200), (answer, request)
        else:
            assert answer.status == 404, (answer, request)
            assert answer.json()["reason"] == "not_found", answer
    else:  # no such route or method: refused, never served
        assert answer.status in (400, 404, 405), (answer, request)


form_values = st.one_of(st.just(PASSWORD), st.just(PASSWORD), st.text(max_size=30),
                        st.sampled_from([TOKEN, "", PASSWORD + " ", PASSWORD.upper()]))
nexts = st.one_of(st.sampled_from(["/api", "/tree", "//evil.example", "/\\evil.example",
                                   "https://evil.example/", "/\t/evil.example",
                                   "/%2F/evil.example", "javascript:alert(1)", "",
                                   "/\r\nSet-Cookie: x=1", " //evil.example"]),
                  st.text(max_size=30))


@JFUZZ_SETTINGS
@given(xsrf_cookie=st.sampled_from(["fresh", "fresh", "fresh", "none", "other"]),
       form=mostly(st.fixed_dictionaries({"_xsrf": st.just("match"),
                                          "password": st.just(PASSWORD)}),
                   st.fixed_dictionaries({}, optional={
                       "_xsrf": st.sampled_from(["match", "wrong"]), "password": form_values,
                       "next": st.text(max_size=10)}), 1),
       raw=mostly(st.none(), st.binary(max_size=200)), content_type=content_types,
       next_=st.none() | nexts, header_xsrf=st.booleans())
def test_login_form_gets_clear_answers(jservice: Service, xsrf_cookie: str,
                                       form: dict[str, str], raw: bytes | None,
                                       content_type: str, next_: str | None,
                                       header_xsrf: bool) -> None:
    page = call(jservice, "GET", "/login")
    assert page.status == 200, page
    xsrf = page.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    cookie = {"fresh": f"_xsrf={xsrf}", "none": "", "other": "_xsrf=someone-else"}[xsrf_cookie]
    fields = {k: (xsrf if v == "match" else "wrong") if k == "_xsrf" else v
              for k, v in form.items()}
    body = raw if raw is not None else urllib.parse.urlencode(fields).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    if cookie:
        headers["Cookie"] = cookie
    if header_xsrf:
        headers["X-XSRFToken"] = xsrf
    path = "/login" + ("?" + urllib.parse.urlencode({"next": next_}) if next_ is not None
                       else "")
    answer = call(jservice, "POST", path, body, headers)
    request = (path, body, headers)
    if answer.status == 302:
        location = answer.headers["Location"]
        split = urllib.parse.urlsplit(location)
        assert not split.scheme and not split.netloc, (location, request)
        # Browsers drop tabs and newlines and read a backslash as a slash.
        squeezed = location.replace("\t", "").replace("\r", "").replace("\n", "")
        assert squeezed.startswith("/") and not squeezed.replace("\\", "/").startswith("//"), (
            location, request)
        assert "ws_sandbox_jupyter_login=" in answer.headers["Set-Cookie"], answer
    else:
        check_clear(answer, request)
        assert answer.status in (400, 403, 413, 415), (answer, request)
    # Logged in exactly with the password and the _xsrf of the cookie (form or header).
    sent = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    given = (sent.get("_xsrf") or [""])[0] or (xsrf if header_xsrf else "")
    entitled = (xsrf_cookie == "fresh" and given == xsrf
                and (sent.get("password") or [""])[0] == PASSWORD)
    assert (answer.status == 302) is entitled, (answer, request)
    event(f"status={answer.status}")


# --- the channel ---------------------------------------------------------------------------

SERVED = ("execute_request", "kernel_info_request", "interrupt_request", "comm_info_request",
          "is_complete_request", "complete_request", "inspect_request", "history_request")
msg_types = st.one_of(
    st.sampled_from([*SERVED, "debug_request", "usage_request", "_request", "x_request",
                     "comm_open", "comm_msg", "comm_close", "input_reply", "execute_reply",
                     "status", ""]),
    st.text(max_size=16).filter(lambda t: "shutdown" not in t))  # shutdown ends the kernel
header_field = mostly(st.text(max_size=20), json_values, 15)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
headers_ = mostly(
    st.fixed_dictionaries({"msg_type": mostly(msg_types.filter(bool), json_values, 8)}, optional={
        "msg_id": header_field, "username": header_field, "session": header_field,
        "date": header_field, "version": header_field, "extra": json_values}),
    json_values, 8)
codes = st.sampled_from(["", "1+1", "print('fz')", "1/0", "import sys; sys.stderr.write('e')",
                         "def f(:"]) | st.text(max_size=20)
contents = mostly(
    st.fixed_dictionaries({}, optional={
        "code": mostly(codes, json_values), "silent": json_values,
        "stop_on_error": json_values, "comm_id": json_values, "target_name": json_values,
        "cursor_pos": json_values, "restart": st.just(False), "data": json_values}),
    json_values, 8)
messages = st.fixed_dictionaries({"header": headers_}, optional={
    "parent_header": mostly(objects, json_values, 6),
    "metadata": mostly(objects, json_values, 6),
    "content": contents,
    "channel": mostly(st.sampled_from(["shell", "control", "iopub", "stdin", ""])
                      | st.none() | st.text(max_size=8), json_values, 6),
    "buffers": mostly(st.lists(json_values, max_size=3), json_values, 6),
    "msg_id": json_values, "msg_type": json_values})

_HEADER_STRINGS = ("msg_id", "msg_type", "username", "session", "date", "version")


def readable(message: Any) -> bool:
    """Whether the documented rules let the service read ``message`` (an independent oracle):
    an object, a header object with a non-empty string msg_type, header strings that are
    strings of at most 256 characters, dict fields that are objects (``parent_header`` is
    not read), a string channel, a list of buffers; ``null`` for any of these but the header
    is taken as the field left out (docs/jupyter.md)."""
    if not isinstance(message, dict) or not isinstance(message.get("header"), dict):
        return False
    header = message["header"]
    if any(header.get(k) is not None
           and not (isinstance(header[k], str) and len(header[k]) <= 256)
           for k in _HEADER_STRINGS):
        return False
    if not header.get("msg_type"):
        return False
    if any(message.get(k) is not None and not isinstance(message[k], dict)
           for k in ("metadata", "content")):
        return False
    channel = message.get("channel")
    if channel is not None and not (isinstance(channel, str) and len(channel) <= 256):
        return False  # a channel name is bounded as a header field is
    return message.get("buffers") is None or isinstance(message["buffers"], list)


def framed(body: bytes, buffers: list[bytes]) -> bytes:
    """Jupyter Server's binary form: count, offsets, then the parts."""
    parts = [body, *buffers]
    offsets: list[int] = []
    at = 4 * (len(parts) + 1)
    for part in parts:
        offsets.append(at)
        at += len(part)
    return b"".join([len(parts).to_bytes(4, "big"),
                     *(o.to_bytes(4, "big") for o in offsets), *parts])


@dataclass
class Sent:
    """One fuzz example: what goes on the wire and what the service must make of it."""

    data: str | bytes
    message: Any = None  # the JSON inside, when there is one
    readable: bool | None = None  # None: the oracle does not know


def broken_framing(body: bytes, how: int) -> bytes:
    good = framed(body, [b"buf"])
    count = int.from_bytes(good[:4], "big")
    if how == 0:
        return (0).to_bytes(4, "big") + good[4:]
    if how == 1:
        return (count + 1000).to_bytes(4, "big") + good[4:]
    if how == 2:  # the first offset does not point past the offsets
        return good[:4] + (3).to_bytes(4, "big") + good[8:]
    return good[:8] + (len(good) + 5).to_bytes(4, "big") + good[12:]  # past the end


_as_text = messages.map(lambda m: Sent(json.dumps(m), m, readable(m)))
_as_binary = st.tuples(messages, st.lists(st.binary(max_size=20), max_size=2)).map(
    lambda mb: Sent(framed(json.dumps(mb[0]).encode(), mb[1]), mb[0], readable(mb[0])))
wire = st.sampled_from([_as_text] * 6 + [_as_binary] * 2 + [st.one_of(
    st.tuples(messages, st.integers(0, 3)).map(
        lambda mh: Sent(broken_framing(json.dumps(mh[0]).encode(), mh[1]), mh[0], False)),
    json_values.map(lambda v: Sent(json.dumps(v), v, readable(v))),
    st.text(max_size=200).map(lambda t: Sent(t, None, None)),
    st.binary(max_size=200).map(lambda b: Sent(b, None, False if len(b) < 8 else None)),
    messages.map(lambda m: Sent(json.dumps(m)[:-1], None, False)),  # cut short
    messages.map(lambda m: Sent(json.dumps(m).encode(), m, False)),  # JSON, but unframed
)] * 3).flatmap(lambda chosen: chosen)


def _json_or_none(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return None


class Channel:
    """The fuzzed channel, reconnected whenever the service closes it."""

    def __init__(self, svc: Service, kernel_id: str) -> None:
        self.url = f"{svc.url}/api/kernels/{kernel_id}/channels?token={TOKEN}"
        self.ws: ClientConnection | None = None
        self.closes = 0

    def conn(self) -> ClientConnection:
        if self.ws is None:
            with contextlib.ExitStack() as stack:  # a context manager, as websockets asks
                self.ws = stack.enter_context(connect(self.url, open_timeout=30,
                                                      max_size=None))
                stack.pop_all()
        return self.ws

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None


@pytest.fixture(scope="module")
def channel(jservice: Service, kernel_id: str) -> Iterator[Channel]:
    ch = Channel(jservice, kernel_id)
    yield ch
    ch.close()


def expected_answer(message: Any) -> str | None:
    """The message type a readable message must be answered with, if any: none for one on a
    channel clients do not send on (``iopub``, any other name), which is ignored, as
    Jupyter Server ignores it."""
    if message.get("channel") not in (None, "", "shell", "control", "stdin"):
        return None
    msg_type = message["header"]["msg_type"]
    if msg_type == "comm_open":
        comm_id = (message.get("content") or {}).get("comm_id")
        return "comm_close" if isinstance(comm_id, str) and len(comm_id) <= 256 else None
    if msg_type.endswith("_request"):
        return str(msg_type.removesuffix("_request") + "_reply")
    return None


@CHANNEL_SETTINGS
@given(sent=wire)
def test_random_channel_messages_never_break_the_kernel(channel: Channel, sent: Sent) -> None:
    ws = channel.conn()
    readable_ = sent.readable
    if readable_ is None and isinstance(sent.data, str):
        parsed = _json_or_none(sent.data)
        readable_ = False if parsed is None else readable(parsed)
    want: tuple[str, str] | None = None
    if readable_ and isinstance(sent.message, dict):
        answer_type = expected_answer(sent.message)
        if answer_type is not None:
            want = (answer_type, sent.message["header"].get("msg_id", ""))
    probe = f"probe-{uuid.uuid4().hex}"
    closed: ConnectionClosed | None = None
    got: list[dict[str, Any]] = []
    try:
        ws.send(sent.data)
        ws.send(json.dumps({"header": {"msg_id": probe, "msg_type": "kernel_info_request"},
                            "parent_header": {}, "content": {}, "channel": "shell"}))
        answered = probe_seen = False
        while not (probe_seen and (want is None or answered)):
            raw = ws.recv(timeout=30)
            assert isinstance(raw, str), raw  # the JSON protocol: text messages only
            message = json.loads(raw)
            got.append(message)
            assert isinstance(message, dict) and message["msg_type"] == message["header"][
                "msg_type"], message
            parent = message["parent_header"].get("msg_id")
            if parent == probe and message["msg_type"] == "kernel_info_reply":
                assert message["content"]["status"] == "ok", message
                probe_seen = True
            if want is not None and parent == want[1] and message["msg_type"] == want[0]:
                answered = True
                if want[0].endswith("_reply") and sent.message["header"]["msg_type"] not in SERVED:
                    assert message["content"]["status"] == "error", message
                    assert message["content"]["ename"] == "NotImplementedError", message
    except ConnectionClosed as exc:
        closed = exc
    except TimeoutError:
        pytest.fail(f"no answer within 30 s to {sent!r}; got {got}")
    event(f"readable={readable_} closed={closed is not None}"
          + (f" answered={want[0]}" if want else ""))
    if closed is None:
        assert readable_ is not False, f"an unreadable message did not close the channel: {sent!r}"
        return
    channel.closes += 1
    channel.ws = None
    rcvd = closed.rcvd
    assert rcvd is not None, f"the connection dropped without a close frame: {sent!r}"
    assert rcvd.code in (1008, 1009), (rcvd, sent)
    assert rcvd.reason, (rcvd, sent)
    assert readable_ is not True, f"a readable message closed the channel: {rcvd} {sent!r}"


def test_the_kernel_lives_after_the_fuzzing(jservice: Service, kernel_id: str,
                                            channel: Channel) -> None:
    assert channel.closes > 0  # the fuzzing did reach the closing path
    channel.close()
    with connect(f"{jservice.url}/api/kernels/{kernel_id}/channels?token={TOKEN}",
                 open_timeout=30) as ws:
        ws.send(json.dumps({"header": {"msg_id": "info-end", "msg_type": "kernel_info_request"},
                            "content": {}}))
        ws.send(json.dumps(execute_request("print('survived')", "exec-end")))
        seen: dict[str, dict[str, Any]] = {}
        stdout = ""
        while "execute_reply" not in seen:
            message = json.loads(ws.recv(timeout=60))
            if message["msg_type"] == "stream" and message["parent_header"].get(
                    "msg_id") == "exec-end":
                stdout += message["content"]["text"]
            seen[message["msg_type"]] = message
        assert seen["kernel_info_reply"]["parent_header"]["msg_id"] == "info-end"
        assert seen["execute_reply"]["content"]["status"] == "ok", seen["execute_reply"]
        assert stdout == "survived\n"
    answer = call(jservice, "GET", f"/api/kernels/{kernel_id}", None, AUTH)
    assert answer.status == 200 and answer.json()["id"] == kernel_id


def test_service_log_is_clean_after_the_fuzzing(jservice: Service) -> None:
    status, body = jservice.get("/api/v1/health")
    assert status == 200, body
    assert jservice.process.poll() is None
    log = jservice.log_path.read_text(errors="replace")
    bad = [line for line in log.splitlines()
           if "Traceback" in line or " ERROR " in line or " CRITICAL " in line]
    assert not bad, "\n".join(bad[:40])
