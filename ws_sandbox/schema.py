"""The protocol's JSON Schema, generated from the msgspec structs of :mod:`ws_sandbox.frames`.

``protocol/schema.json`` is this output; ``tests/unit/test_schema.py`` fails when they differ.
"""

from __future__ import annotations

import json

import msgspec

from ws_sandbox import frames as fr


def protocol_schema() -> dict[str, object]:
    """Client and server frame unions as one JSON Schema document."""
    (client, server), components = msgspec.json.schema_components(
        [fr.ClientFrame, fr.ServerFrame], ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ws_sandbox protocol v1",
        "description": "Frames of /api/v1/sessions/ws: one JSON object per text message.",
        "$defs": {**components,
                  "ClientFrame": client,
                  "ServerFrame": server},
        "oneOf": [{"$ref": "#/$defs/ClientFrame"}, {"$ref": "#/$defs/ServerFrame"}],
    }


def render_schema() -> str:
    """The schema as stable, indented JSON text."""
    return json.dumps(protocol_schema(), indent=2, sort_keys=True) + "\n"
