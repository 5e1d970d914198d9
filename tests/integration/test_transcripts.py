"""Replay every example transcript of protocol/transcripts against the real service."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.integration.conftest import Service

pytestmark = pytest.mark.docker

TRANSCRIPTS = sorted((Path(__file__).resolve().parents[2] / "protocol" / "transcripts")
                     .glob("*.json"))


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
async def test_transcript_replays(service: Service, path: Path) -> None:
    transcript = json.loads(path.read_text())
    url = f"{service.url}/api/v1/sessions/ws?language={transcript['language']}"
    async with websockets.connect(url) as ws:
        pending: list[dict[str, Any]] = []  # received, not yet matched (streams may split)
        for step in transcript["steps"]:
            if "send" in step:
                await ws.send(json.dumps(step["send"]))
            elif "send_raw" in step:
                await ws.send(step["send_raw"])
            else:
                await expect(ws, step["expect"], pending)


async def expect(ws: websockets.ClientConnection, want: dict[str, Any],
                 pending: list[dict[str, Any]]) -> None:
    """Receive until a frame matches ``want``; stream text may arrive in several chunks."""
    text = ""
    while True:
        frame = pending.pop(0) if pending else json.loads(await asyncio.wait_for(ws.recv(), 20))
        if want["type"] == "stream" and frame["type"] == "stream":
            assert (frame["id"], frame["name"]) == (want["id"], want["name"]), frame
            text += frame["text"]
            if text == want["text"]:
                return
            assert want["text"].startswith(text), f"{text!r} does not lead to {want['text']!r}"
            continue
        assert frame["type"] == want["type"], f"expected {want}, got {frame}"
        for key, value in want.items():
            assert frame[key] == value, f"{key}: expected {value!r}, got {frame[key]!r}"
        return
