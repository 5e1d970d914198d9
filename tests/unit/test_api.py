"""ws_sandbox.api: what the service's own endpoints give each caller."""

from __future__ import annotations

from ws_sandbox.api import pool_view


def test_a_tenant_sees_the_pool_without_its_start_errors() -> None:
    """A start's error names the engine's and the host's things: the operator's alone (a
    review found tenants' stats gave it, after health's details became the operator's)."""
    pool: dict[str, dict[str, int | str | None]] = {
        "python": {"ready": 1, "starting": 0, "target": 2,
                   "last_error": "image ws-sandbox-runtime:latest not found on /var/run/x"},
        "shell": {"ready": 2, "starting": 0, "target": 2, "last_error": None}}
    assert pool_view(pool, operator=True) == pool
    tenant = pool_view(pool, operator=False)
    assert tenant == {
        "python": {"ready": 1, "starting": 0, "target": 2, "last_error": None},
        "shell": {"ready": 2, "starting": 0, "target": 2, "last_error": None}}
    assert pool["python"]["last_error"] is not None  # the service's own state is untouched
