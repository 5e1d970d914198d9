"""``ws_sandbox.redact``: credentials in URLs never reach a log line."""

from __future__ import annotations

import logging

import pytest

from ws_sandbox import redact


@pytest.mark.parametrize(("text", "expected"), [
    ("/api/v1/sessions/ws?language=python&api_key=k-1",
     "/api/v1/sessions/ws?language=python&api_key=[redacted]"),
    ("/api/kernels/abc/channels?token=s3cr3t&session_id=x",
     "/api/kernels/abc/channels?token=[redacted]&session_id=x"),
    ('"WebSocket /api/v1/sessions/ws?resume=tok.en-_" [accepted]',
     '"WebSocket /api/v1/sessions/ws?resume=[redacted]" [accepted]'),
    ("/x?API_KEY=a#frag", "/x?API_KEY=[redacted]#frag"),
    ("/api/v1/executions?status=ok&my_token=keep", "/api/v1/executions?status=ok&my_token=keep"),
    ("no query at all", "no query at all"),
    # Names as the service's query parser reads them: percent-encoded, they still authenticate.
    ("/api/v1/sessions/ws?api%5Fkey=k-1&x=1", "/api/v1/sessions/ws?api%5Fkey=[redacted]&x=1"),
    ("/api/v1/sessions/ws?%61pi_key=k-1", "/api/v1/sessions/ws?%61pi_key=[redacted]"),
    ("/api/kernels?x=1&%74oken=t", "/api/kernels?x=1&%74oken=[redacted]"),
])
def test_redact_url(text: str, expected: str) -> None:
    assert redact.redact_url(text) == expected


def test_the_filter_redacts_uvicorn_s_access_record(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redact.access")
    logger.addFilter(redact.RedactSecrets())
    with caplog.at_level(logging.INFO, logger=logger.name):
        # uvicorn's access log: client, method, path with query, HTTP version, status
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET",
                    "/api/v1/config?api_key=k-1", "1.1", 200)
        logger.info("plain ?token=abc in the message itself")
    (access, plain) = caplog.records
    assert access.getMessage() == \
        '127.0.0.1:5 - "GET /api/v1/config?api_key=[redacted] HTTP/1.1" 200'
    assert isinstance(access.args, tuple) and access.args[4] == 200  # the others are kept
    assert plain.getMessage() == "plain ?token=[redacted] in the message itself"


def test_install_adds_one_filter_per_logger() -> None:
    redact.install(("test.redact.once",))
    redact.install(("test.redact.once",))
    filters = logging.getLogger("test.redact.once").filters
    assert sum(isinstance(f, redact.RedactSecrets) for f in filters) == 1


def test_the_filter_redacts_header_lines_of_the_websocket_debug_log(
        caplog: pytest.LogCaptureFixture) -> None:
    """At LOG_LEVEL=debug the WebSocket library logs each upgrade's headers, one record per
    header: an API key in Authorization reached the log in clear (found by a security
    review)."""
    logger = logging.getLogger("test.redact.headers")
    logger.addFilter(redact.RedactSecrets())
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logger.debug("< GET %s HTTP/1.1", "/api/v1/sessions/ws?api_key=k-1")
        logger.debug("< %s: %s", "Authorization", "Bearer k-secret")
        logger.debug("< %s: %s", "cookie", "ws_sandbox_jupyter_login=sealed")
        logger.debug("> %s: %s", "Set-Cookie", "_xsrf=abc")
        logger.debug("< %s: %s", "X-XSRFToken", "abc")
        logger.debug("< %s: %s", "host", "localhost:8090")
        logger.debug("< %s", "odd")  # a format its arguments do not fit stays as it was
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "< GET /api/v1/sessions/ws?api_key=[redacted] HTTP/1.1",
        "< Authorization: [redacted]",
        "< cookie: [redacted]",
        "> Set-Cookie: [redacted]",
        "< X-XSRFToken: [redacted]",
        "< host: localhost:8090",
        "< odd",
    ]
    assert not any(s in "\n".join(lines) for s in ("k-secret", "sealed", "abc", "k-1"))
