"""The committed JSON Schema and transcripts agree with the msgspec structs."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from ws_sandbox import frames as fr
from ws_sandbox.exceptions import BadRequest
from ws_sandbox.schema import render_schema

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"


def test_committed_schema_matches_the_structs() -> None:
    assert (PROTOCOL / "schema.json").read_text() == render_schema(), (
        "protocol/schema.json is stale: run `ws-sandbox schema > protocol/schema.json`")


def test_schema_names_every_frame_type() -> None:
    schema = json.loads(render_schema())
    text = json.dumps(schema)
    for tag in ("execute", "interrupt", "restart", "ready", "stream", "display", "result",
                "error", "restarted", "closed"):
        assert f'"{tag}"' in text


@pytest.mark.parametrize("path", sorted((PROTOCOL / "transcripts").glob("*.json")),
                         ids=lambda p: p.stem)
def test_transcript_frames_are_valid(path: Path) -> None:
    transcript = json.loads(path.read_text())
    assert transcript["steps"], "a transcript needs steps"
    for step in transcript["steps"]:
        if "send" in step:
            fr.decode_client(json.dumps(step["send"]))
        elif "send_raw" in step:  # a deliberately bad frame
            with pytest.raises(BadRequest):
                fr.decode_client(step["send_raw"])
        else:
            # Expected frames name a subset of a server frame's fields (volatile ones left out).
            frame = step["expect"]
            struct = SERVER_TAGS[frame["type"]]
            names = {f.name for f in msgspec.structs.fields(struct)} | {"type"}
            assert set(frame) <= names, f"unknown fields {set(frame) - names} in {frame}"


SERVER_TAGS = {t.__struct_config__.tag: t for t in (
    fr.Ready, fr.Stream, fr.Display, fr.Result, fr.Error, fr.Restarted, fr.Closed)}
