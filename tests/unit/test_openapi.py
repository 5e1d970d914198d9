"""The OpenAPI document is generated from the same structs that parse requests."""

from __future__ import annotations

import msgspec

from ws_sandbox.openapi import docs_page, openapi_document
from ws_sandbox.rest import ExecuteRequest, ExecuteResponse


def test_document_describes_execute_from_the_structs() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]
    assert set(schemas["ExecuteRequest"]["properties"]) == set(
        ExecuteRequest.__struct_fields__)
    response = schemas["ExecuteResponse"]["properties"]
    for name in ("execution_id", "status", "stdout", "stderr", "execution_time_ms",
                 "memory_used_mb", "exit_code", "error"):
        assert name in response
    assert set(response) == set(ExecuteResponse.__struct_fields__)
    op = doc["paths"]["/api/v1/execute"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ExecuteRequest")
    assert {"400", "401", "403", "413", "415", "429", "503"} <= set(op["responses"])
    for path in ("/api/v1/health", "/api/v1/stats", "/metrics", "/api/v1/executions",
                 "/api/v1/executions/{execution_id}", "/api/v1/admin/sessions"):
        assert path in doc["paths"]
    msgspec.json.encode(doc)  # serialisable as is


def test_docs_page_lists_every_endpoint_without_external_resources() -> None:
    page = docs_page()
    assert "/api/v1/execute" in page and "/api/v1/executions/{execution_id}" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_public_paths_need_no_key_and_every_refusal_is_listed() -> None:
    """What a client generated from the document would need: the paths open without a key
    say so, and the statuses the routes answer are there (the fuzz test checks them live)."""
    doc = openapi_document()
    paths = doc["paths"]
    assert doc["security"] == [{"bearer": []}]
    for path in ("/api/v1/health", "/api/v1/openapi.json", "/docs"):
        for op in paths.get(path, {}).values():
            assert op["security"] == [], path
    assert "security" not in paths["/api/v1/execute"]["post"]
    assert "503" in paths["/api/v1/health"]["get"]["responses"]
    assert "404" in paths["/api/v1/executions/{execution_id}"]["get"]["responses"]
    assert "404" in paths["/api/v1/executions"]["get"]["responses"]
    assert "404" in paths["/api/v1/admin/sessions/{session_id}"]["delete"]["responses"]
    assert "413" in paths["/api/v1/admin/limits"]["patch"]["responses"]
    assert "when known" in paths["/api/v1/execute"]["post"]["responses"]["503"]["description"]



def test_the_websocket_route_succeeds_with_101_not_200() -> None:
    """A plain GET there is a 426; a session begins with 101 (a docs review: it said 200)."""
    responses = openapi_document()["paths"]["/api/v1/sessions/ws"]["get"]["responses"]
    assert "101" in responses and "200" not in responses
    assert "426" in responses
