"""The web demo in a real headless chromium, against a real service on a real engine.

The page is driven as a person would: pick a language, type, press Run or Ctrl+Enter, read
what appears. Every test is a plain ``def`` (Playwright's sync API refuses a running loop).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, WebSocketRoute, expect

from tests.integration.conftest import Service, ServiceFactory

pytestmark = pytest.mark.docker
# Generous functional bounds: the machine may be busy (2 cores, a container per session).
expect.set_options(timeout=15_000)

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot.png"
NAMES = {"python": "Python", "javascript": "JavaScript", "shell": "Shell", "rust": "Rust"}


def open_page(browser: Browser, url: str, *, width: int = 1280, height: int = 860,
              problems: list[str] | None = None) -> Page:
    """A new page at ``url``; script errors and CSP violations are added to ``problems``."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(20_000)
    if problems is not None:
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}")
                if msg.type == "error" else None)
    page.goto(url)
    return page


def wait_ready(page: Page, language: str = "python") -> None:
    expect(page.locator("#state")).to_have_attribute("data-state", "ready", timeout=30_000)
    expect(page.locator("#state")).to_contain_text(NAMES[language])


def run_cell(page: Page, code: str) -> Locator:
    """Type ``code`` into the editor, press Run; the new cell's element."""
    before = page.locator("#cells > li.cell").count()
    page.fill("#code", code)
    page.click("#run")
    cell = page.locator("#cells > li.cell").nth(before)
    expect(cell).to_be_attached()
    return cell


def run_cell_output(page: Page, code: str) -> str:
    """Run ``code``; its stdout once it succeeded."""
    cell = run_cell(page, code)
    expect(cell).to_have_attribute("data-status", "success")
    return stdout(cell)


def stdout(cell: Locator) -> str:
    return "".join(cell.locator(".run.stdout .run-text").all_inner_texts())


@pytest.fixture
def page(browser: Browser, service: Service) -> Iterator[Page]:
    problems: list[str] = []
    page = open_page(browser, service.http + "/", problems=problems)
    wait_ready(page)
    yield page
    page.close()
    assert not problems, problems


def test_page_is_served_with_security_headers(service: Service) -> None:
    with urllib.request.urlopen(service.http + "/", timeout=10) as r:
        body = r.read().decode()
        headers = r.headers
    assert "<title>ws_sandbox" in body
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    host = urllib.parse.urlsplit(service.http).netloc
    assert f"connect-src 'self' ws://{host} wss://{host};" in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    # Never stored: a page asked for with ?api_key= was kept, key and all, in the cache.
    assert headers["Cache-Control"] == "no-store"
    # The mount at / does not shadow the API.
    status, config = service.get("/api/v1/config")
    assert status == 200 and "enabled_languages" in config


def test_each_language_runs_and_streams_are_told_apart(page: Page) -> None:
    programs = {
        "python": "import sys\nprint('out', 6 * 7)\nprint('oops', file=sys.stderr)",
        "javascript": "console.log('out', 6 * 7); console.error('oops');",
        "shell": "echo out $((6 * 7)); echo oops >&2",
        "rust": 'fn main() { println!("out {}", 6 * 7); eprintln!("oops"); }',
    }
    for language, code in programs.items():
        if language != "python":
            page.select_option("#language", language)
            wait_ready(page, language)
        cell = run_cell(page, code)
        expect(cell).to_have_attribute("data-status", "success", timeout=30_000)
        assert stdout(cell).strip() == "out 42", language
        stderr = cell.locator(".run.stderr")
        expect(stderr).to_contain_text("oops")
        expect(stderr.locator(".run-label")).to_have_text("stderr")
        # A Rust cell says how much of its time was rustc's.
        compiling = r" \(compiling [\d.]+ m?s\)" if language == "rust" else ""
        expect(cell.locator(".meta")).to_have_text(
            re.compile(rf"^[\d.]+ m?s{compiling} · [\d.]+ MB · exit 0$"))
    # Four cells, four history entries; choosing one loads its code again.
    expect(page.locator("#history li")).to_have_count(4)
    page.locator("#history button", has_text="println").click()
    expect(page.locator("#code")).to_have_value(programs["rust"])


def test_example_loads_when_editor_untouched(page: Page) -> None:
    assert "tick" in page.input_value("#code")
    page.select_option("#language", "javascript")
    wait_ready(page, "javascript")
    assert "fib" in page.input_value("#code")
    page.fill("#code", "console.log('mine')")
    page.select_option("#language", "shell")
    wait_ready(page, "shell")
    assert page.input_value("#code") == "console.log('mine')"


def test_output_appears_while_the_cell_runs(page: Page) -> None:
    cell = run_cell(page, "import time\nprint('first', flush=True)\ntime.sleep(5)\n"
                          "print('second')")
    expect(cell.locator(".run.stdout")).to_contain_text("first")
    assert cell.get_attribute("data-status") == "running"
    assert "second" not in stdout(cell)
    expect(page.locator("#state")).to_have_attribute("data-state", "running")
    expect(page.locator("#interrupt")).to_be_enabled()
    expect(cell).to_have_attribute("data-status", "success", timeout=10_000)
    assert stdout(cell) == "first\nsecond\n"


def test_interrupt_an_endless_loop(page: Page) -> None:
    cell = run_cell(page, "print('spinning', flush=True)\nwhile True:\n    pass")
    expect(cell.locator(".run.stdout")).to_contain_text("spinning")
    page.click("#interrupt")
    expect(cell).to_have_attribute("data-status", "interrupted", timeout=10_000)
    expect(page.locator("#state")).to_have_attribute("data-state", "ready")
    # The session goes on.
    after = run_cell(page, "print('still here')")
    expect(after).to_have_attribute("data-status", "success")


def test_timeout_shows_the_status(page: Page) -> None:
    page.fill("#timeout", "1")
    cell = run_cell(page, "while True:\n    pass")
    expect(cell).to_have_attribute("data-status", "timeout", timeout=10_000)
    expect(cell.locator(".badge")).to_have_text("timed out")
    expect(cell.locator(".notes")).to_contain_text("time limit of 1 s")


def test_restart_loses_state(page: Page) -> None:
    expect(run_cell(page, "kept = 1")).to_have_attribute("data-status", "success")
    page.click("#restart")
    expect(page.locator("#notice")).to_contain_text("restarted")
    cell = run_cell(page, "kept")
    expect(cell).to_have_attribute("data-status", "error")
    expect(cell.locator(".notes")).to_contain_text("NameError")


def test_keyboard_only(page: Page) -> None:
    editor = page.locator("#code")
    editor.fill("")
    editor.focus()
    page.keyboard.type("for i in range(2):")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    page.keyboard.type("print('kbd', i)")
    assert editor.input_value() == "for i in range(2):\n    print('kbd', i)"
    page.keyboard.press("Control+Enter")
    cell = page.locator("#cells > li.cell").last
    expect(cell).to_have_attribute("data-status", "success")
    assert stdout(cell) == "kbd 0\nkbd 1\n"
    # Escape, then Tab leaves the editor instead of indenting.
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "run"
    assert editor.input_value() == "for i in range(2):\n    print('kbd', i)"


def test_reconnects_with_the_resume_token(page: Page, service: Service,
                                          browser: Browser) -> None:
    page.close()
    page = browser.new_page()
    page.set_default_timeout(20_000)
    routes: list[WebSocketRoute] = []
    urls: list[str] = []

    def proxy(ws: WebSocketRoute) -> None:
        urls.append(ws.url)
        routes.append(ws)
        ws.connect_to_server()

    page.route_web_socket("**/api/v1/sessions/ws*", proxy)
    page.goto(service.http + "/")
    wait_ready(page)
    expect(run_cell(page, "x = 41")).to_have_attribute("data-status", "success")
    routes[-1].close(code=4001, reason="network blip")  # a drop, not a goodbye
    expect(page.locator("#notice")).to_contain_text("Reconnected", timeout=15_000)
    wait_ready(page)
    assert len(urls) == 2 and "resume=" in urls[1], urls
    cell = run_cell(page, "print(x + 1)")
    expect(cell).to_have_attribute("data-status", "success")
    assert stdout(cell) == "42\n"
    # A deliberate close (switching language) opens a new session; it resumes nothing.
    page.select_option("#language", "shell")
    wait_ready(page, "shell")
    assert len(urls) == 3 and "language=shell" in urls[2] and "resume=" not in urls[2], urls
    page.close()


def test_a_silent_connection_is_taken_for_dropped(browser: Browser, service: Service) -> None:
    """A connection that carries nothing more and never closes (a dead NAT or Wi-Fi path)
    left a cell "running" for good (a review). Past the cell's timeout and the page's grace,
    the page resumes the session on a new connection; the cell, whose result the dead one
    swallowed, is given up as lost after its bound again, and the session goes on."""
    page = browser.new_page()
    page.set_default_timeout(20_000)
    routes: list[WebSocketRoute] = []
    dead: list[WebSocketRoute] = []  # routes that carry nothing more, either way

    def proxy(ws: WebSocketRoute) -> None:
        routes.append(ws)
        server = ws.connect_to_server()
        ws.on_message(lambda message: None if ws in dead else server.send(message))
        server.on_message(lambda message: None if ws in dead else ws.send(message))

    page.route_web_socket("**/api/v1/sessions/ws*", proxy)
    page.goto(service.http + "/")
    wait_ready(page)
    expect(run_cell(page, "x = 41")).to_have_attribute("data-status", "success")
    page.fill("#timeout", "1")
    dead.append(routes[-1])
    cell = run_cell(page, "print('never seen')")
    routes_before = len(routes)
    # Resumed after 1 s and the 10 s grace (the dead connection's route is left open).
    expect(page.locator("#notice")).to_contain_text("Reconnected", timeout=25_000)
    assert len(routes) == routes_before + 1 and "resume=" in routes[-1].url
    expect(cell).to_have_attribute("data-status", "unknown", timeout=25_000)
    expect(cell.locator(".notes")).to_contain_text("it was lost")
    wait_ready(page)
    assert run_cell_output(page, "print(x + 1)") == "42\n"
    page.close()


def test_output_lost_while_away_is_told(browser: Browser, service: Service) -> None:
    """The service keeps 1024 frames for a client that is away: a resume whose ``ready``
    says more were dropped was shown as "the session and its state were kept", and the
    running cell's missing output went unremarked (a review)."""
    page = browser.new_page()
    page.set_default_timeout(20_000)
    routes: list[WebSocketRoute] = []

    def proxy(ws: WebSocketRoute) -> None:
        routes.append(ws)
        server = ws.connect_to_server()
        ws.on_message(server.send)

        def to_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "ready" and frame.get("resumed"):
                frame["frames_dropped"] = 7  # as the service says when its replay overflowed
            ws.send(json.dumps(frame))

        server.on_message(to_page)

    page.route_web_socket("**/api/v1/sessions/ws*", proxy)
    page.goto(service.http + "/")
    wait_ready(page)
    cell = run_cell(page, "import time; time.sleep(2); print('late')")
    expect(cell).to_have_attribute("data-status", "queued")
    routes[-1].close(code=4001, reason="network blip")
    expect(page.locator("#notice")).to_contain_text("7 frames of output", timeout=15_000)
    expect(cell.locator(".notes")).to_contain_text("may be missing")
    expect(cell).to_have_attribute("data-status", "success")  # its result was kept
    page.close()


def test_refusals_and_idle_timeout(browser: Browser, make_service: ServiceFactory) -> None:
    with make_service(IDLE_TIMEOUT="2", MAX_CONCURRENT_EXECUTIONS="1", MAX_CODE_BYTES="1024",
                      API_KEYS="demo-key-0123456789ab", ENABLE_JAVASCRIPT="0", ENABLE_RUST="0",
                      ENABLE_SHELL="0") as svc:
        svc.wait_pool_full()
        # Asked for a key, the page offers a field for it, and its URL never holds it (a key
        # in the page's URL is in the browser's history and cache: a review). A wrong key is
        # refused in words, and the field is offered again; the right one opens a session,
        # kept with the tab.
        asked = open_page(browser, svc.http + "/")
        expect(asked.locator("#state")).to_have_text("closed: an API key is required")
        expect(asked.locator("#notice")).to_contain_text("enter it below")
        expect(asked.locator("#keyform")).to_be_visible()
        asked.fill("#apikey", "wrong")
        asked.press("#apikey", "Enter")
        expect(asked.locator("#state")).to_have_text("closed: the API key was refused")
        expect(asked.locator("#keyform")).to_be_visible()
        expect(asked.locator("#apikey")).to_have_value("")
        asked.fill("#apikey", "demo-key-0123456789ab")
        asked.click("#keyform button")
        wait_ready(asked)
        expect(asked.locator("#keyform")).to_be_hidden()
        assert run_cell_output(asked, "print(6 * 7)") == "42\n"
        asked.reload()
        wait_ready(asked)  # the tab keeps the key
        assert "demo-key-0123456789ab" not in asked.url
        asked.close()
        # Without a key, or with a wrong one in the URL (still taken), the page says so
        # instead of retrying.
        for query, words in (("", "an API key is required"),
                             ("?api_key=wrong", "the API key was refused")):
            refused = open_page(browser, svc.http + "/" + query)
            expect(refused.locator("#state")).to_have_text(f"closed: {words}")
            expect(refused.locator("#notice")).to_contain_text("API key")
            if query:
                # The key leaves the address bar at once (history, bookmarks, screenshots)
                # and stays with the tab: a reload still uses it.
                assert "api_key" not in refused.url and "wrong" not in refused.url
                refused.reload()
                expect(refused.locator("#state")).to_have_text(f"closed: {words}")
            refused.close()
        url = svc.http + "/?api_key=demo-key-0123456789ab"
        first = open_page(browser, url)
        wait_ready(first)
        expect(first.locator("#language option")).to_have_count(1)
        # A second page is refused: the service runs as many sessions as it allows.
        second = open_page(browser, url)
        expect(second.locator("#notice")).to_contain_text("as many sessions")
        expect(second.locator("#state")).to_have_text("closed: the service is at capacity")
        # Left alone, the first session is closed for idleness, and says so in words.
        expect(first.locator("#state")).to_have_text("closed: idle for too long",
                                                     timeout=15_000)
        expect(first.locator("#run")).to_be_disabled()
        expect(first.locator("#reconnect")).to_be_visible()
        # Now there is room again: the refused page starts a new session on request.
        second.click("#reconnect")
        wait_ready(second)
        # A cell above the code size limit is refused, in words, and the session goes on.
        big = run_cell(second, "# " + "x" * 2000)
        expect(big).to_have_attribute("data-status", "refused")
        expect(big.locator(".notes")).to_contain_text("larger than the service accepts")
        expect(second.locator("#state")).to_have_attribute("data-state", "ready")
        # One over the service's message limit too: sent, it closed the connection (1009)
        # and the cell stayed queued for good (a review); the page refuses it first.
        huge = run_cell(second, "# " + "x" * 100_000)
        expect(huge).to_have_attribute("data-status", "refused")
        expect(huge.locator(".notes")).to_contain_text("code of 100002 bytes exceeds")
        expect(second.locator("#state")).to_have_attribute("data-state", "ready")
        assert run_cell_output(second, "print('still here')") == "still here\n"
        first.close()
        second.close()


def test_an_image_too_large_to_decode_is_not_shown(page: Page) -> None:
    """31 KB of PNG that says 16000 x 16000 pixels made the viewer's browser decode about
    1 GB (a review): an image over 4096 x 4096 pixels is named, not shown."""
    cell = run_cell(page, (
        "import struct, zlib\n"
        "def chunk(t, d):\n"
        "    return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))\n"
        "row = bytes(1 + 2000)\n"
        "idat = zlib.compress(row * 16000, 9)\n"
        "png = (b'\\x89PNG\\r\\n\\x1a\\n'\n"
        "       + chunk(b'IHDR', struct.pack('>IIBBBBB', 16000, 16000, 1, 0, 0, 0, 0))\n"
        "       + chunk(b'IDAT', idat) + chunk(b'IEND', b''))\n"
        "class Big:\n"
        "    def _repr_png_(self):\n"
        "        return png\n"
        "display(Big())\n"
        "class Small:\n"
        "    def _repr_png_(self):\n"
        "        return (b'\\x89PNG\\r\\n\\x1a\\n'\n"
        "                + chunk(b'IHDR', struct.pack('>IIBBBBB', 1, 1, 1, 0, 0, 0, 0))\n"
        "                + chunk(b'IDAT', zlib.compress(bytes(2))) + chunk(b'IEND', b''))\n"
        "display(Small())\n"
        # Not a PNG, whatever its type says: the browser decodes what the bytes are (a
        # GIF of 16000 x 16000 here), so it got past a PNG-only check (a review).
        "gif = (b'GIF89a' + struct.pack('<HHBBB', 16000, 16000, 0x80, 0, 0)\n"
        "       + bytes([0, 0, 0, 255, 255, 255, 0x2c]) + struct.pack('<HHHHB', 0, 0, 1, 1, 0)\n"
        "       + bytes([2, 2, 0x44, 1, 0, 0x3b]))\n"
        "class Gif:\n"
        "    def _repr_png_(self):\n"
        "        return gif\n"
        "display(Gif())\n"))
    expect(cell).to_have_attribute("data-status", "success")
    expect(cell.locator(".display .note")).to_have_text([
        "(an image of 16000 \u00d7 16000 pixels: too large to show)",
        "(an image that is not a PNG: not shown)"])
    expect(cell.locator(".display img")).to_have_count(1)  # the small one is shown


def test_images_are_bounded_per_cell_and_per_page(page: Page) -> None:
    """A cell displaying a 2 KB PNG of 4096 x 4096 pixels 356 times asked the browser to
    decode 24 GB, each image within the per-image bound (a review). A cell's images may
    total two of the largest, the page's sixteen; past either, an image is named, not
    shown, and Clear makes room again."""
    setup = run_cell(page, (
        "import struct, zlib\n"
        "def chunk(t, d):\n"
        "    return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))\n"
        "def png(side):\n"
        "    idat = zlib.compress(bytes(1 + (side + 7) // 8) * side, 9)\n"
        "    return (b'\\x89PNG\\r\\n\\x1a\\n'\n"
        "            + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 1, 0, 0, 0, 0))\n"
        "            + chunk(b'IDAT', idat) + chunk(b'IEND', b''))\n"
        "class Png:\n"
        "    def __init__(self, side):\n"
        "        self.data = png(side)\n"
        "    def _repr_png_(self):\n"
        "        return self.data\n"
        "big, small = Png(4096), Png(1)\n"
        "for _ in range(3):\n"
        "    display(big)\n"))
    expect(setup).to_have_attribute("data-status", "success")
    expect(setup.locator(".display img")).to_have_count(2)
    expect(setup.locator(".display .note")).to_have_text([
        "(an image of 4096 \u00d7 4096 pixels: not shown, this cell's images are as large as"
        " one cell's may be)"])
    for _ in range(7):  # 2 + 7 x 2: the page's 16
        cell = run_cell(page, "display(big)\ndisplay(big)\n")
        expect(cell).to_have_attribute("data-status", "success")
        expect(cell.locator(".display img")).to_have_count(2)
    full = run_cell(page, "display(small)\n")
    expect(full).to_have_attribute("data-status", "success")
    expect(full.locator(".display .note")).to_have_text([
        "(an image of 1 \u00d7 1 pixels: not shown, the page shows as many images as it"
        " may; Clear makes room)"])
    page.click("#clear")
    after = run_cell(page, "display(small)\n")
    expect(after).to_have_attribute("data-status", "success")
    expect(after.locator(".display img")).to_have_count(1)


def test_output_that_switches_streams_often_stays_small(page: Page) -> None:
    """A cell alternating stdout and stderr a byte at a time made one box per switch: tens of
    thousands of elements and stalls of a second (a review). Past 1,000 boxes the rest of a
    cell's output goes into one box for both streams, and none of it is lost. (Longer than
    1,000 switches' worth: past 50 small reads in 0.1 s the agent reads such a cell every 10 ms,
    which makes two boxes of each batch.)"""
    cell = run_cell(page, (
        "import os, time\n"
        "for i in range(3000):\n"
        "    os.write(1, b'o'); os.write(2, b'e'); time.sleep(0.0008)\n"))
    expect(cell).to_have_attribute("data-status", "success", timeout=60_000)
    shape = cell.evaluate("""(li) => {
        const runs = [...li.querySelectorAll(".out > .run")];
        const walker = document.createTreeWalker(li.querySelector(".out"), NodeFilter.SHOW_TEXT);
        let nodes = 0;
        while (walker.nextNode()) nodes++;
        const text = runs.map((r) => r.querySelector(".run-text").textContent).join("");
        return { runs: runs.length, last: runs[runs.length - 1].dataset.stream, nodes,
                 o: text.split("o").length - 1, e: text.split("e").length - 1 };
    }""")
    assert shape["runs"] == 1001, shape  # the cell switched far more often than that
    assert shape["last"] == "both", shape
    assert shape["o"] == 3000 and shape["e"] == 3000, shape
    assert shape["nodes"] < 2 * 1001 + 100, shape  # a label and a text per box, not per frame


def test_characters_that_reorder_text_are_shown_by_name(page: Page) -> None:
    """U+202E in a cell's output reversed what followed it (Trojan Source): output, values
    and error notes show such characters by name instead."""
    cell = run_cell(page, (
        "class Rev:\n"
        "    def __repr__(self):\n"
        "        return 'value \\u2067inner\\u2069'\n"
        "print('out \\u202etxt.exe')\n"
        "display(Rev())\n"
        "raise ValueError('err \\u202ecba')\n"))
    expect(cell).to_have_attribute("data-status", "error")
    expect(cell.locator(".run.stdout .run-text")).to_have_text("out \u27e6U+202E\u27e7txt.exe\n")
    expect(cell.locator(".display .run-text")).to_have_text(
        "value \u27e6U+2067\u27e7inner\u27e6U+2069\u27e7")
    expect(cell.locator(".notes")).to_contain_text("err \u27e6U+202E\u27e7cba")
    shown = cell.evaluate("(li) => li.textContent")
    assert not re.search("[\u202a-\u202e\u2066-\u2069]", shown), shown


def test_terminal_colours_are_shown_and_other_escapes_dropped(page: Page) -> None:
    """Escapes were shown raw (``\\x1b[31m``). Colours and bold become classes of the page;
    a cursor move, a charset switch and an OSC 8 link go; an escape split between two
    frames is joined; the style carries over from one frame, and stream, to the next."""
    cell = run_cell(page, (
        "import sys, time\n"
        "E = '\\x1b'\n"
        "print(f'{E}[31mred{E}[0m plain {E}[1;32mbold green{E}(B{E}[m', flush=True)\n"
        "sys.stdout.write(f'{E}[3'); sys.stdout.flush(); time.sleep(0.3)\n"
        "sys.stdout.write(f'4mblue{E}[2K\\n'); sys.stdout.flush(); time.sleep(0.3)\n"
        "print(f'still blue{E}[0m {E}]8;;https://example.com{E}\\\\link{E}]8;;{E}\\\\',"
        " flush=True)\n"
        "print(f'{E}[38;5;196mcube red{E}[39m', flush=True)\n"
        "raise ValueError(f'{E}[31mboom{E}[0m')\n"))
    expect(cell).to_have_attribute("data-status", "error")
    shown = stdout(cell)
    assert shown == "red plain bold green\nblue\nstill blue link\ncube red\n", repr(shown)
    out = cell.locator(".run.stdout .run-text")
    expect(out.locator("span.fg-1").first).to_have_text("red")
    expect(out.locator("span.fg-2.ansi-bold")).to_have_text("bold green")
    expect(out.locator("span.fg-4")).to_have_text("blue\nstill blue")
    expect(out.locator("span.fg-9")).to_have_text("cube red")
    colour = out.locator("span.fg-1").first.evaluate("(s) => getComputedStyle(s).color")
    plain = out.evaluate("(p) => getComputedStyle(p).color")
    assert colour != plain, (colour, plain)
    expect(cell.locator(".notes")).to_contain_text("ValueError: boom")
    assert "\x1b" not in cell.evaluate("(li) => li.textContent")


def test_screenshot_with_output(browser: Browser, service: Service, artifacts: Path) -> None:
    page = open_page(browser, service.http + "/", width=1280, height=780)
    wait_ready(page)
    example = page.input_value("#code")
    cell = run_cell(page, example)
    expect(cell).to_have_attribute("data-status", "success", timeout=15_000)
    page.fill("#timeout", "20")  # a first matplotlib import: 0.2 s as a rule, 10 s in CI once
    plot = run_cell(page, "import matplotlib.pyplot as plt\nimport numpy as np\n"
                          "x = np.linspace(0, 4 * np.pi, 200)\n"
                          "plt.figure(figsize=(5, 2.6))\nplt.plot(x, np.sin(x), label='sin')\n"
                          "plt.plot(x, np.cos(x), label='cos')\nplt.legend()\nplt.show()")
    expect(plot).to_have_attribute("data-status", "success", timeout=20_000)
    expect(plot.locator("img")).to_be_visible()
    page.fill("#timeout", "")
    page.fill("#code", example)
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(artifacts / "web-demo.png"), full_page=True)
    if os.environ.get("WS_SANDBOX_UPDATE_SCREENSHOT"):  # refresh the README's picture
        shutil.copyfile(artifacts / "web-demo.png", DOCS_SCREENSHOT)
    page.close()

    # Phone width: nothing wider than the screen, everything still there.
    phone = open_page(browser, service.http + "/", width=375, height=740)
    wait_ready(phone)
    cell = run_cell(phone, "print('hello from a phone')")
    expect(cell).to_have_attribute("data-status", "success")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375
    phone.screenshot(path=str(artifacts / "web-demo-phone.png"), full_page=True)
    phone.close()
