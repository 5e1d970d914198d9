// ws_sandbox web demo: a plain client of the public protocol v1 (protocol/ in the repo).
// No build step, no dependency, nothing fetched from elsewhere: the service serves this file
// and answers on the same origin.
"use strict";

(() => {
  const EXAMPLES = {
    python: [
      "import sys, time",
      "",
      "for i in range(3):",
      "    print(f\"tick {i}\")",
      "    time.sleep(0.3)",
      "print(\"this line goes to stderr\", file=sys.stderr)",
      "",
      "# State is kept between cells; a last expression is shown.",
      "squares = [n * n for n in range(8)]",
      "squares",
    ].join("\n"),
    javascript: [
      "const fib = (n) => (n < 2 ? n : fib(n - 1) + fib(n - 2));",
      "for (let i = 0; i < 10; i++) {",
      "  console.log(`fib(${i}) = ${fib(i)}`);",
      "}",
      "console.error(\"this line goes to stderr\");",
    ].join("\n"),
    shell: [
      "echo \"hello from $(uname -s) as uid $(id -u)\"",
      "cd /tmp && pwd",
      "for i in 1 2 3; do echo \"tick $i\"; sleep 0.3; done",
      "echo \"this line goes to stderr\" >&2",
    ].join("\n"),
    rust: [
      "fn main() {",
      "    let squares: Vec<u64> = (1..=10).map(|n| n * n).collect();",
      "    println!(\"squares: {:?}\", squares);",
      "    println!(\"sum: {}\", squares.iter().sum::<u64>());",
      "    eprintln!(\"this line goes to stderr\");",
      "}",
    ].join("\n"),
  };
  const LANGUAGE_NAMES = {
    python: "Python", javascript: "JavaScript", shell: "Shell (bash)", rust: "Rust",
  };
  const ALL_LANGUAGES = ["python", "javascript", "shell", "rust"];
  const INDENT = "    ";
  const MAX_IMAGE_PIXELS = 4096 * 4096;  // larger images are not shown (decoded, they are big)
  // What all of a cell's images, and all the page's, may ask the browser to decode: a cell
  // displaying a 2 KB PNG of 4096 x 4096 pixels 356 times asked for 24 GB (a review).
  const MAX_CELL_IMAGE_PIXELS = 2 * MAX_IMAGE_PIXELS;
  const MAX_PAGE_IMAGE_PIXELS = 16 * MAX_IMAGE_PIXELS;  // Clear gives it back
  // A cell that switches between stdout and stderr a byte at a time made one box per switch:
  // tens of thousands of elements and stalls of a second (a review). Past this many boxes in
  // one cell, the rest of its output goes into one last box for both streams.
  const MAX_RUNS_PER_CELL = 1000;
  const TEXT_NODE_CHARS = 4096;  // output joins the last text node while it is shorter
  // Characters that reorder the text around them (Trojan Source): a cell's output could make
  // its text read otherwise than it is. Shown by name instead, e.g. ⟦U+202E⟧.
  const BIDI_CONTROLS = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;
  // Terminal escapes in output (`ls --color=always`, `grep --color`, rich, pytest --color):
  // colours, bold, dim, italic and underline (SGR) are shown with the page's own classes,
  // every other sequence (cursor moves, titles, OSC 8 links, charsets) is dropped; they were
  // shown raw. A sequence split between two frames waits for its rest, up to ANSI_HELD.
  // Order matters: CSI, then OSC, then any other escape (an ESC alone goes too).
  const ANSI_SEQUENCE =
    /\x1b(?:\[([0-?]*)([ -/]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~]|$)/g;
  const ANSI_UNFINISHED = /\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[ -/]*)$/;
  const ANSI_HELD = 256;
  // A cell changing colour every character would make an element each: past this many
  // styled stretches in one cell, the rest of its output is shown plain.
  const MAX_STYLED_PER_CELL = 5000;

  const CLOSE_REASONS = {
    idle_timeout: "idle for too long",
    max_lifetime: "the session reached its maximum lifetime",
    server_shutdown: "the server is shutting down",
    client_closed: "you closed the session",
    sandbox_lost: "the sandbox was lost",
    closed_by_admin: "closed by an administrator",
    resume_expired: "the connection was lost for too long",
  };
  const ERROR_TEXT = {
    at_capacity: "The service is running as many sessions as it allows. Try again in a moment.",
    too_many_sessions: "You have as many sessions open as one caller may: close one (another tab?), then try again.",
    rate_limited: "Too many requests from this address. Wait a little, then try again.",
    unauthorized: "This service needs an API key: enter it below.",
    forbidden: "The API key (or this page's origin) was refused: enter another below.",
    language_unavailable: "That language is not enabled on this service.",
    queue_full: "Too many cells are waiting in this session; wait for some to finish.",
    payload_too_large: "The code is larger than the service accepts.",
    invalid_token: "The session could not be resumed: it expired or was closed.",
    not_found: "The session does not exist any more.",
    bad_request: "The service did not understand the request.",
    cancelled: "Cancelled before it ran.",
    engine_unavailable: "The sandbox engine is not available right now.",
    image_missing: "The sandbox image is missing on the server.",
    sandbox_lost: "The sandbox stopped answering.",
    backend_error: "The sandbox engine failed.",
    internal_error: "The service hit an internal error.",
  };
  // The state line after a refusal: "closed: <words>".
  const REFUSAL_STATE = {
    at_capacity: "the service is at capacity",
    too_many_sessions: "too many sessions of yours",
    rate_limited: "rate limited",
    unauthorized: "an API key is required",
    forbidden: "the API key was refused",
    language_unavailable: "language not available",
    invalid_token: "the session could not be resumed",
    not_found: "the session does not exist any more",
  };
  // Close codes, for a connection that ends without a frame saying why.
  const CLOSE_CODES = {
    1001: "the server went away",
    1006: "the connection was lost",
    1008: "the request was refused",
    1009: "the message was too large",
    1011: "the server hit an error",
    1013: "the service is busy; try again later",
    4000: "the session was resumed in another tab",
  };
  const STATUS_TEXT = {
    queued: "queued", running: "running", success: "success", error: "error",
    timeout: "timed out", interrupted: "interrupted", killed: "killed",
    refused: "refused", unknown: "unknown",
  };
  const RECONNECT_MAX_ATTEMPTS = 8;
  // Seconds a cell's result may come after its timeout (the service's interrupt grace, a
  // restart, a new sandbox) before the page takes the connection for dead: a connection
  // that stops carrying anything without closing (a dead NAT or Wi-Fi path) left a cell
  // "running" for good (a review). The page then resumes the session on a new connection;
  // a cell whose result still does not come within its bound again is given up as lost.
  const RESULT_GRACE_S = 10;
  const RECONNECT_BASE_MS = 500;
  const RECONNECT_MAX_MS = 8000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $("state"), language: $("language"), timeout: $("timeout"), code: $("code"),
    run: $("run"), interrupt: $("interrupt"), restart: $("restart"),
    reconnect: $("reconnect"), notice: $("notice"), cells: $("cells"), empty: $("empty"),
    clear: $("clear"), history: $("history"), limits: $("limits"),
    keyform: $("keyform"), apikey: $("apikey"),
  };

  // The key is typed into the page's key field when the service asks for one, and kept in
  // this tab's sessionStorage (a reload of the tab finds it there). A key given in the URL
  // (?api_key=) still works, and leaves the address bar at once, but the browser has
  // recorded that URL in its history and cache by then: the field is the way.
  const KEY_STORE = "ws_sandbox.api_key";
  const params = new URLSearchParams(location.search);
  let apiKey = (() => {
    const given = params.get("api_key");
    if (given === null) {
      try { return sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; }
    }
    try { sessionStorage.setItem(KEY_STORE, given); } catch (e) { return given; }  // kept in the URL
    const rest = new URLSearchParams(params);
    rest.delete("api_key");
    const query = rest.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + location.hash);
    return given;
  })();

  const S = {
    ws: null,            // the current WebSocket
    generation: 0,       // bumps on every new socket; events of older sockets are ignored
    language: "python",
    token: null,         // resume token of the live session
    sessionId: null,
    limits: null,
    ready: false,
    closedFrame: null,   // the server's `closed` frame, when it sent one
    lastError: null,     // the last error frame without a cell id (explains a refusal)
    attempts: 0,         // reconnection attempts since the last `ready`
    timer: null,         // pending reconnection
    deadline: null,      // the first unfinished cell's bound (a timer), and that cell's id
    deadlineFor: null,
    cells: new Map(),    // cell id -> {el, status, ...}
    pending: new Set(),  // ids of cells sent and not finished
    counter: 0,
    exampleShown: "",    // the example last put in the editor (untouched editor = this)
  };

  // ------------------------------------------------------------------ small helpers
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function errorWords(code, message) {
    const ours = ERROR_TEXT[code];
    if (ours && message && message !== ours) return `${ours} (${message})`;
    return ours || message || code;
  }

  function showNotice(text, kind = "error") {
    ui.notice.textContent = text;
    ui.notice.dataset.kind = kind;
    ui.notice.hidden = false;
  }

  function hideNotice() {
    ui.notice.hidden = true;
    ui.notice.textContent = "";
  }

  function setState(state, text) {
    ui.state.dataset.state = state;
    ui.state.textContent = text;
    document.body.dataset.state = state;
    const live = state === "ready" || state === "running";
    ui.run.disabled = !live;
    ui.interrupt.disabled = state !== "running";
    ui.restart.disabled = !live;
    ui.reconnect.hidden = state !== "closed";
  }

  function refreshRunningState() {
    armDeadline();
    if (!S.ready) return;
    const n = S.pending.size;
    if (n === 0) setState("ready", `ready — ${LANGUAGE_NAMES[S.language] || S.language}`);
    else setState("running", `running — ${n} cell${n === 1 ? "" : "s"} in progress`);
  }

  function wsUrl(query) {
    // Relative to the page, so the demo also works behind a path prefix.
    const url = new URL("api/v1/sessions/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    for (const [key, value] of Object.entries(query)) url.searchParams.set(key, value);
    if (apiKey) url.searchParams.set("api_key", apiKey);
    return url.toString();
  }

  // ------------------------------------------------------------------ connection
  function connect({ resume = false } = {}) {
    clearTimeout(S.timer);
    S.timer = null;
    const generation = ++S.generation;
    S.ready = false;
    S.closedFrame = null;
    S.lastError = null;
    if (!resume) {
      S.token = null;
      S.sessionId = null;
    }
    setState("connecting", resume ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(resume ? wsUrl({ resume: S.token }) : wsUrl({ language: S.language }));
    } catch (err) {
      finalClose(`could not connect (${err.message})`);
      return;
    }
    S.ws = ws;
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onmessage = (event) => {
      if (generation !== S.generation) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return; // not ours to guess at
      }
      onFrame(frame);
    };
    ws.onclose = (event) => {
      if (generation !== S.generation) return;
      if (opened || resume) {
        onClose(event);
        return;
      }
      // Refused during the handshake (no frame can say why): ask the HTTP side whether it
      // is the API key, so the person reads the cause instead of watching retries.
      probeRefusal().then((code) => {
        if (generation !== S.generation) return;
        if (code) refuse(code);
        else onClose(event);
      });
    };
  }

  function closeDeliberately() {
    // Code 1000 tells the server to end the session now, not to wait for a resume.
    S.generation++;
    clearTimeout(S.timer);
    S.timer = null;
    if (S.ws && S.ws.readyState <= WebSocket.OPEN) S.ws.close(1000, "client closed");
    S.ws = null;
    S.ready = false;
    S.token = null;
    abandonPending("session closed");
  }

  function onClose(event) {
    S.ready = false;
    S.ws = null;
    armDeadline();  // (none while there is no connection)
    if (S.closedFrame) {
      const reason = S.closedFrame.reason;
      finalClose(CLOSE_REASONS[reason] || S.closedFrame.message || reason);
      return;
    }
    if (S.lastError) {
      // A refusal (capacity, rate limit, key, language, stale token): retrying blindly
      // would only be refused again, so say why and let the person decide.
      refuse(S.lastError.code, S.lastError.message);
      return;
    }
    if (event.code === 1000) {
      finalClose("the server ended the session");
      return;
    }
    // A dropped connection: resume the same session (same sandbox, same state) with backoff.
    if (S.attempts >= RECONNECT_MAX_ATTEMPTS) {
      finalClose(`${CLOSE_CODES[event.code] || "the connection was lost"}; gave up reconnecting`);
      return;
    }
    const delay = Math.min(RECONNECT_BASE_MS * 2 ** S.attempts, RECONNECT_MAX_MS)
      * (0.8 + Math.random() * 0.4);
    S.attempts += 1;
    const resume = Boolean(S.token);
    const why = CLOSE_CODES[event.code] || "the connection was lost";
    setState("reconnecting",
      `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${S.attempts})`);
    S.timer = setTimeout(() => connect({ resume }), delay);
  }

  function refuse(code, message = "") {
    showNotice(errorWords(code, message));
    finalClose(REFUSAL_STATE[code] || message || code.replace(/_/g, " "));
    if (code === "unauthorized" || code === "forbidden") {
      ui.keyform.hidden = false;
      ui.apikey.focus();
    }
  }

  function useKey(event) {
    event.preventDefault();
    apiKey = ui.apikey.value.trim();
    ui.apikey.value = "";
    try { sessionStorage.setItem(KEY_STORE, apiKey); } catch (e) { /* this page only */ }
    ui.keyform.hidden = true;
    hideNotice();
    S.attempts = 0;
    begin();
  }

  function authHeaders() {
    return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  }

  async function probeRefusal() {
    try {
      const response = await fetch(new URL("api/v1/config", location.href),
        { headers: authHeaders() });
      if (response.status === 401) return "unauthorized";
      if (response.status === 403) return "forbidden";
    } catch {
      // unreachable: a plain dropped connection, retried as such
    }
    return null;
  }

  function finalClose(reasonWords) {
    S.token = null;
    abandonPending("the session closed before this cell finished");
    setState("closed", `closed: ${reasonWords}`);
  }

  // ------------------------------------------------------------------ frames
  function onFrame(frame) {
    switch (frame.type) {
      case "ready": return onReady(frame);
      case "stream": return onStream(frame);
      case "display": return onDisplay(frame);
      case "result": return onResult(frame);
      case "error": return onError(frame);
      case "restarted": return onRestarted(frame);
      case "closed":
        S.closedFrame = frame;
        return undefined;
      default:
        return undefined; // newer servers may add frames; ignore what we do not know
    }
  }

  function onReady(frame) {
    S.ready = true;
    S.attempts = 0;
    S.token = frame.token;
    S.sessionId = frame.session_id;
    S.limits = frame.limits || null;
    const dropped = frame.resumed && frame.frames_dropped > 0 ? frame.frames_dropped : 0;
    if (dropped) {
      // The service keeps 1024 frames for a client that is away, the newest: what was made
      // before them is gone, and the page said nothing of it (a review).
      showNotice(`Reconnected: the session and its state were kept, but ${dropped} frame${
        dropped === 1 ? "" : "s"} of output made while the connection was down did not fit`
        + " what the service keeps, and were lost.");
      for (const id of S.pending) {
        const cell = S.cells.get(id);
        if (!cell || cell.gap) continue;
        cell.gap = true;
        cell.notes.append(el("p", { class: "note",
          text: "Some of this cell's output may be missing: it was made while the connection was down." }));
      }
    } else if (frame.resumed) {
      showNotice("Reconnected: the session and its state were kept.", "info");
    } else if (ui.notice.dataset.kind !== "error") hideNotice();
    if (S.limits) {
      const l = S.limits;
      ui.timeout.max = String(l.max_execution_time);
      ui.timeout.placeholder = `default ${l.default_execution_time}`;
      const parts = [`Cell time limit ${l.max_execution_time} s`,
        `memory ${l.max_memory_mb} MB`];
      if (l.idle_timeout) parts.push(`idle timeout ${l.idle_timeout} s`);
      ui.limits.textContent = parts.join(", ") + ".";
    }
    refreshRunningState();
  }

  function cellOf(frame) {
    const cell = S.cells.get(frame.id);
    if (cell) settleEarlier(cell);
    return cell;
  }

  // Cells run in order: once a later cell's frames come, an earlier one still waiting for
  // its result, after a resume that lost frames, has ended, and its result was among them.
  function settleEarlier(cell) {
    for (const id of S.pending) {
      const earlier = S.cells.get(id);
      if (!earlier || earlier === cell || earlier.n > cell.n) continue;
      if (!earlier.gap) continue;
      S.pending.delete(id);
      setCellStatus(earlier, "unknown");
      earlier.notes.append(el("p", { class: "note",
        text: "It ended while the connection was down; its result was lost." }));
    }
  }

  // The first unfinished cell's bound: its timeout, then RESULT_GRACE_S. A timer per cell
  // that becomes the first, only while a connection is up.
  function armDeadline() {
    const first = S.ready && S.ws ? S.pending.values().next().value : undefined;
    if (first === S.deadlineFor && S.deadline !== null) return;
    clearTimeout(S.deadline);
    S.deadline = null;
    S.deadlineFor = first === undefined ? null : first;
    const cell = first === undefined ? null : S.cells.get(first);
    if (!cell) return;
    const l = S.limits || {};
    const timeout = Math.min(cell.timeout || l.default_execution_time || 30,
      l.max_execution_time || Infinity);
    S.deadline = setTimeout(() => onDeadline(first), (timeout + RESULT_GRACE_S) * 1000);
  }

  function onDeadline(id) {
    S.deadline = null;
    const cell = S.cells.get(id);
    if (!cell || !S.pending.has(id)) {
      armDeadline();
      return;
    }
    cell.expired = (cell.expired || 0) + 1;
    if (cell.expired >= 2) {
      // Resumed once already and still nothing: its result is not coming.
      S.pending.delete(id);
      setCellStatus(cell, "unknown");
      cell.notes.append(el("p", { class: "note",
        text: "No result came for this cell within its time limit and a grace: it was lost." }));
      refreshRunningState();
      return;
    }
    // The connection may be dead without the browser knowing (nothing closed it): resume
    // the session on a new one. The old one's events are not ours any more.
    const ws = S.ws;
    S.generation++;
    try { ws.close(4001, "no answer in time"); } catch { /* closing already */ }
    onClose({ code: 1006 });
  }

  function onStream(frame) {
    const cell = cellOf(frame);
    if (!cell) return;
    setCellStatus(cell, "running");
    let name = frame.name === "stderr" ? "stderr" : "stdout";
    let run = cell.out.lastElementChild;
    if (run && run.dataset.stream === "both") name = "both";  // past MAX_RUNS_PER_CELL
    if (!run || !run.classList.contains("run") || run.dataset.stream !== name) {
      if (++cell.runs > MAX_RUNS_PER_CELL) name = "both";
      // A run is a stretch of one stream; stderr gets a visible label, both a spoken one.
      const label = name === "both" ? "stdout and stderr, too many switches to tell apart" : name;
      run = el("div", { class: `run ${name}`, "data-stream": name },
        el("span", { class: name === "stdout" ? "visually-hidden" : "run-label", text: label }),
        el("pre", { class: "run-text" }));
      cell.out.append(run);
    }
    appendTerminalText(cell, name, run.lastElementChild, frame.text);
    cell.out.hidden = false;
  }

  // ------------------------------------------------------------------ terminal escapes
  function newStyle() {
    return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
  }

  // The classes of a style, or "" for the default (plain text).
  function styleClasses(style) {
    const names = [];
    if (style.fg !== null) names.push(`fg-${style.fg}`);
    if (style.bg !== null) names.push(`bg-${style.bg}`);
    if (style.bold) names.push("ansi-bold");
    if (style.dim) names.push("ansi-dim");
    if (style.italic) names.push("ansi-italic");
    if (style.underline) names.push("ansi-underline");
    return names.join(" ");
  }

  // A 256-colour index as one of the 16 the page has (the cube and the greys: nearest).
  function basicColour(n) {
    if (!(n >= 0 && n <= 255)) return null;
    if (n < 16) return n;
    if (n >= 232) return n < 244 ? (n < 238 ? 0 : 8) : (n < 250 ? 7 : 15);
    const c = n - 16, r = Math.floor(c / 36), g = Math.floor(c / 6) % 6, b = c % 6;
    const bright = Math.max(r, g, b) > 3 ? 8 : 0;
    const bits = (r > 1 ? 1 : 0) | (g > 1 ? 2 : 0) | (b > 1 ? 4 : 0);
    return bits === 0 ? (Math.max(r, g, b) > 0 ? 8 : 0) : bits + bright;
  }

  // Apply one SGR sequence's parameters ("1;31", "" is a reset) to a style.
  function applySgr(style, params) {
    const codes = params.split(/[;:]/).map((p) => (p === "" ? 0 : Number(p)));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) Object.assign(style, newStyle());
      else if (c === 1) style.bold = true;
      else if (c === 2) style.dim = true;
      else if (c === 3) style.italic = true;
      else if (c === 4) style.underline = true;
      else if (c === 22) style.bold = style.dim = false;
      else if (c === 23) style.italic = false;
      else if (c === 24) style.underline = false;
      else if (c >= 30 && c <= 37) style.fg = c - 30;
      else if (c >= 90 && c <= 97) style.fg = c - 90 + 8;
      else if (c === 39) style.fg = null;
      else if (c >= 40 && c <= 47) style.bg = c - 40;
      else if (c >= 100 && c <= 107) style.bg = c - 100 + 8;
      else if (c === 49) style.bg = null;
      else if (c === 38 || c === 48) {
        let colour = null;  // 38;5;n (256 colours) or 38;2;r;g;b (as a 256 colour's cube)
        if (codes[i + 1] === 5) {
          colour = basicColour(codes[i + 2]);
          i += 2;
        } else if (codes[i + 1] === 2) {
          const [r, g, b] = codes.slice(i + 2, i + 5).map((v) => Math.round((v || 0) / 51));
          colour = basicColour(16 + 36 * Math.min(r, 5) + 6 * Math.min(g, 5) + Math.min(b, 5));
          i += 4;
        }
        if (c === 38) style.fg = colour;
        else style.bg = colour;
      }
    }
  }

  // Append a stream's text to a run's <pre>, its escapes applied: the cell's style carries
  // over from frame to frame and between its streams (one terminal), an unfinished escape
  // at the end of a frame waits for the next frame of its stream.
  function appendTerminalText(cell, name, node, text) {
    const held = cell.ansiHeld || (cell.ansiHeld = {});
    text = (held[name] || "") + text;
    held[name] = "";
    const unfinished = ANSI_UNFINISHED.exec(text);
    if (unfinished && unfinished[0].length <= ANSI_HELD) {
      held[name] = unfinished[0];
      text = text.slice(0, unfinished.index);
    }
    if (!text.includes("\x1b") && !cell.ansiStyle) {
      appendText(node, text);  // the usual case: no escape seen in this cell
      return;
    }
    const style = cell.ansiStyle || (cell.ansiStyle = newStyle());
    let at = 0;
    for (const match of text.matchAll(ANSI_SEQUENCE)) {
      appendStyled(cell, node, text.slice(at, match.index), styleClasses(style));
      if (match[3] === "m" && match[2] === "") applySgr(style, match[1]);
      at = match.index + match[0].length;
    }
    appendStyled(cell, node, text.slice(at), styleClasses(style));
  }

  function appendStyled(cell, node, text, classes) {
    if (!text) return;
    if (!classes) {
      appendText(node, text);
      return;
    }
    const last = node.lastChild;
    if (last && last.nodeType === Node.ELEMENT_NODE && last.className === classes
        && last.textContent.length < TEXT_NODE_CHARS) {
      last.firstChild.appendData(cellText(text));
    } else if ((cell.styled = (cell.styled || 0) + 1) > MAX_STYLED_PER_CELL) {
      appendText(node, text);
    } else {
      node.append(el("span", { class: classes, text: cellText(text) }));
    }
  }

  // Text shown whole (a value, an error): its escapes dropped, its style not shown.
  function plainText(text) {
    return cellText(String(text).replace(ANSI_SEQUENCE, ""));
  }

  // A cell's text, with the characters that reorder text shown by name (BIDI_CONTROLS).
  function cellText(text) {
    return String(text).replace(BIDI_CONTROLS, (c) =>
      `\u27e6U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}\u27e7`);
  }

  // Appends to the last text node while it is short: one node per frame made as many nodes
  // as frames; one node for all of a run would copy it whole on every frame.
  function appendText(node, text) {
    const last = node.lastChild;
    if (last && last.nodeType === Node.TEXT_NODE && last.length < TEXT_NODE_CHARS) {
      last.appendData(cellText(text));
    } else {
      node.append(cellText(text));
    }
  }

  function onDisplay(frame) {
    const cell = cellOf(frame);
    if (!cell) return;
    const data = frame.data || {};
    let node;
    const size = typeof data["image/png"] === "string" ? pngSize(data["image/png"]) : null;
    if (typeof data["image/png"] === "string" && !size) {
      // The browser would decode whatever the bytes are (a GIF, say), of any size.
      node = el("p", { class: "note", text: "(an image that is not a PNG: not shown)" });
    } else if (size && size.width * size.height > MAX_IMAGE_PIXELS) {
      // A few KB of PNG can ask the browser to decode gigabytes: not shown.
      node = el("p", { class: "note",
        text: `(an image of ${size.width} × ${size.height} pixels: too large to show)` });
    } else if (size && cell.pixels + size.width * size.height > MAX_CELL_IMAGE_PIXELS) {
      node = el("p", { class: "note", text: `(an image of ${size.width} × ${size.height}`
        + " pixels: not shown, this cell's images are as large as one cell's may be)" });
    } else if (size && shownPixels() + size.width * size.height > MAX_PAGE_IMAGE_PIXELS) {
      node = el("p", { class: "note", text: `(an image of ${size.width} × ${size.height}`
        + " pixels: not shown, the page shows as many images as it may; Clear makes room)" });
    } else if (typeof data["image/png"] === "string") {
      // The alt text is ours: the cell's own words there would look like the page's.
      cell.pixels += size.width * size.height;
      node = el("img", { src: `data:image/png;base64,${data["image/png"]}`,
        alt: `image output of cell ${cell.n}` });
    } else if (typeof data["text/plain"] === "string") {
      node = el("pre", { class: "run-text" });
      appendTerminalText({}, "display", node, data["text/plain"]);
    } else {
      node = el("p", { class: "note", text: `(output of type ${Object.keys(data).join(", ")})` });
    }
    const kind = frame.kind === "execute_result" ? "value" : "display";
    cell.out.append(el("div", { class: `run display ${kind}`, "data-kind": kind },
      el("span", { class: "visually-hidden", text: kind === "value" ? "value" : "display" }),
      node));
    cell.out.hidden = false;
  }

  // Pixels of the images the page's cells show.
  function shownPixels() {
    let total = 0;
    for (const cell of S.cells.values()) total += cell.pixels;
    return total;
  }

  // The width and height in a PNG's header (IHDR), or null when it is not a PNG.
  function pngSize(base64) {
    if (!/^[A-Za-z0-9+/]{32}/.test(base64)) return null;  // atob would skip whitespace
    const head = atob(base64.slice(0, 32));  // 24 bytes: signature, IHDR length and type, size
    if (head.length < 24 || head.slice(0, 8) !== "\x89PNG\r\n\x1a\n") return null;
    const u32 = (at) => ((head.charCodeAt(at) << 24) >>> 0) + (head.charCodeAt(at + 1) << 16)
      + (head.charCodeAt(at + 2) << 8) + head.charCodeAt(at + 3);
    return { width: u32(16), height: u32(20) };
  }

  function onResult(frame) {
    const cell = cellOf(frame);
    if (!cell) return;
    S.pending.delete(frame.id);
    setCellStatus(cell, frame.status);
    const meta = [`${formatMs(frame.execution_time_ms)}`];
    if (typeof frame.compile_time_ms === "number") {
      meta[0] += ` (compiling ${formatMs(frame.compile_time_ms)})`;
    }
    meta.push(frame.memory_used_mb == null ? "memory n/a" : `${frame.memory_used_mb.toFixed(1)} MB`);
    if (frame.exit_code != null) meta.push(`exit ${frame.exit_code}`);
    cell.meta.textContent = meta.join(" · ");
    const notes = [];
    if (frame.error) notes.push(plainText(frame.error));
    if (frame.truncated) notes.push("Output was truncated: the cell printed more than the limit.");
    if (frame.state_lost) notes.push("The interpreter was restarted: variables from earlier cells are gone.");
    for (const text of notes) cell.notes.append(el("p", { class: "note", text }));
    refreshRunningState();
  }

  function onError(frame) {
    const cell = frame.id ? S.cells.get(frame.id) : null;
    if (cell) {
      S.pending.delete(frame.id);
      setCellStatus(cell, frame.code === "cancelled" ? "unknown" : "refused");
      cell.notes.append(el("p", { class: "note", text: errorWords(frame.code, frame.message) }));
      refreshRunningState();
      return;
    }
    if (!S.ready) S.lastError = frame; // a refusal before (or instead of) `ready`
    showNotice(errorWords(frame.code, frame.message));
  }

  function onRestarted(frame) {
    const text = frame.reason === "sandbox_replaced"
      ? "The sandbox was replaced: all state from earlier cells is gone."
      : "The interpreter was restarted: variables from earlier cells are gone.";
    showNotice(frame.message ? `${text} (${frame.message})` : text, "info");
    ui.cells.append(el("li", { class: "divider", text: "— restarted —" }));
  }

  function formatMs(ms) {
    if (typeof ms !== "number") return "—";
    return ms < 1000 ? `${ms.toFixed(ms < 10 ? 1 : 0)} ms` : `${(ms / 1000).toFixed(2)} s`;
  }

  // ------------------------------------------------------------------ cells
  function setCellStatus(cell, status) {
    if (cell.status === status) return;
    if (cell.status !== "queued" && cell.status !== "running" && status === "running") return;
    cell.status = status;
    cell.el.dataset.status = status;
    cell.badge.textContent = STATUS_TEXT[status] || status;
  }

  function abandonPending(why) {
    for (const id of S.pending) {
      const cell = S.cells.get(id);
      if (!cell) continue;
      setCellStatus(cell, "unknown");
      cell.notes.append(el("p", { class: "note", text: why }));
    }
    S.pending.clear();
    armDeadline();
  }

  function addCell(id, code) {
    const n = ++S.counter;
    const badge = el("span", { class: "badge", text: STATUS_TEXT.queued });
    const meta = el("span", { class: "meta" });
    const firstLine = code.split("\n", 1)[0];
    const codeView = el("details", { class: "cell-code" },
      el("summary", { text: firstLine.length > 60 ? `${firstLine.slice(0, 60)}…` : firstLine }),
      el("pre", { text: code }));
    const out = el("div", { class: "out" });
    const notes = el("div", { class: "notes" });
    const li = el("li", { class: "cell", "data-cell-id": id, "data-status": "queued",
      "data-language": S.language },
      el("div", { class: "cell-head" },
        el("span", { class: "cell-n", text: `[${n}] ${LANGUAGE_NAMES[S.language] || S.language}` }),
        badge, meta),
      codeView, out, notes);
    ui.cells.append(li);
    ui.empty.hidden = true;
    const cell = { el: li, badge, meta, out, notes, status: "queued", n, code, runs: 0,
      pixels: 0 };
    S.cells.set(id, cell);
    li.scrollIntoView({ block: "nearest" });
    return cell;
  }

  function addHistory(code, language) {
    const firstLine = code.split("\n").find((line) => line.trim()) || "(empty)";
    const button = el("button", { type: "button", class: "history-item",
      title: "Load this code into the editor" },
      el("span", { class: "history-lang", text: LANGUAGE_NAMES[language] || language }),
      el("span", { class: "history-code", text: firstLine }));
    button.addEventListener("click", () => {
      if (language !== S.language && [...ui.language.options].some((o) => o.value === language)) {
        ui.language.value = language;
        switchLanguage(language, { keepEditor: true });
      }
      setEditor(code, false);
      ui.code.focus();
    });
    ui.history.prepend(el("li", {}, button));
  }

  function run() {
    if (!S.ready || !S.ws) {
      showNotice("Not connected: wait for the session to be ready.");
      return;
    }
    const code = ui.code.value;
    if (!code.trim()) {
      showNotice("There is no code to run.", "info");
      return;
    }
    const id = `c${S.counter + 1}-${Date.now().toString(36)}`;
    const frame = { type: "execute", id, code };
    const timeout = Number(ui.timeout.value);
    if (ui.timeout.value && timeout > 0) frame.timeout = timeout;
    const cell = addCell(id, code);
    cell.timeout = frame.timeout;
    addHistory(code, S.language);
    // Refused here as the service would: a frame over its message limit closed the
    // connection (1009), and the cell stayed "queued" for good (a review).
    const size = new TextEncoder().encode(code).length;
    if (S.limits && size > S.limits.max_code_bytes) {
      setCellStatus(cell, "refused");
      cell.notes.append(el("p", { class: "note", text: errorWords("payload_too_large",
        `code of ${size} bytes exceeds the limit of ${S.limits.max_code_bytes} bytes`) }));
      return;
    }
    S.pending.add(id);
    S.ws.send(JSON.stringify(frame));
    refreshRunningState();
  }

  function send(frame) {
    if (S.ready && S.ws) S.ws.send(JSON.stringify(frame));
  }

  // ------------------------------------------------------------------ editor
  function setEditor(text, isExample) {
    ui.code.value = text;
    S.exampleShown = isExample ? text : "";
  }

  function editorUntouched() {
    return !ui.code.value.trim() || ui.code.value === S.exampleShown;
  }

  let tabLeaves = false; // after Escape, the next Tab moves focus instead of indenting

  function onEditorKey(event) {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      event.preventDefault();
      run();
      return;
    }
    if (event.key === "Escape") {
      tabLeaves = true;
      return;
    }
    if (event.key !== "Tab" || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) {
      if (event.key !== "Shift") tabLeaves = false;
      return;
    }
    if (tabLeaves) {
      tabLeaves = false;
      return; // let the browser move focus on
    }
    event.preventDefault();
    indent(ui.code);
  }

  function indent(area) {
    const { selectionStart: start, selectionEnd: end, value } = area;
    if (start === end || !value.slice(start, end).includes("\n")) {
      area.setRangeText(INDENT, start, end, "end");
    } else {
      // Indent every selected line.
      const lineStart = value.lastIndexOf("\n", start - 1) + 1;
      const block = value.slice(lineStart, end);
      const indented = block.replace(/^/gm, INDENT);
      area.setRangeText(indented, lineStart, end, "select");
    }
    area.dispatchEvent(new Event("input", { bubbles: true }));
  }

  // ------------------------------------------------------------------ languages
  function switchLanguage(language, { keepEditor = false } = {}) {
    if (!keepEditor && editorUntouched()) setEditor(EXAMPLES[language] || "", true);
    S.language = language;
    closeDeliberately();
    hideNotice();
    connect();
  }

  // The enabled languages, and the refusal code when the service turns this caller away.
  async function loadConfig() {
    try {
      const response = await fetch(new URL("api/v1/config", location.href),
        { headers: authHeaders() });
      if (response.ok) {
        const body = await response.json();
        const enabled = (body.enabled_languages || []).filter((l) => ALL_LANGUAGES.includes(l));
        if (enabled.length) return { enabled, refused: null };
      } else if (response.status === 401 || response.status === 403) {
        const refused = response.status === 401 ? "unauthorized" : "forbidden";
        return { enabled: ALL_LANGUAGES, refused };
      }
    } catch {
      // Fall through: offer every language and let the server say which it refuses.
    }
    return { enabled: ALL_LANGUAGES, refused: null };
  }

  async function start() {
    ui.code.addEventListener("keydown", onEditorKey);
    ui.code.addEventListener("focus", () => { tabLeaves = false; });
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && event.target !== ui.code) {
        event.preventDefault();
        run();
      }
    });
    ui.run.addEventListener("click", run);
    ui.interrupt.addEventListener("click", () => send({ type: "interrupt" }));
    ui.restart.addEventListener("click", () => send({ type: "restart" }));
    ui.reconnect.addEventListener("click", () => {
      hideNotice();
      S.attempts = 0;
      connect();
    });
    ui.clear.addEventListener("click", () => {
      for (const node of [...ui.cells.children]) {
        const id = node.dataset.cellId;
        if (id && S.pending.has(id)) continue; // keep cells still running
        if (id) S.cells.delete(id);
        node.remove();
      }
      ui.empty.hidden = ui.cells.children.length > 0;
    });
    ui.language.addEventListener("change", () => switchLanguage(ui.language.value));
    ui.keyform.addEventListener("submit", useKey);
    // A page that goes away ends its session at once instead of holding a sandbox.
    window.addEventListener("pagehide", () => closeDeliberately());
    // Back from the browser's page cache: that session is gone, start a fresh one.
    window.addEventListener("pageshow", (event) => { if (event.persisted) connect(); });
    await begin();
  }

  // The languages this caller may use, then a session (or the refusal, in words).
  async function begin() {
    const { enabled, refused } = await loadConfig();
    ui.language.replaceChildren(...enabled.map((l) =>
      el("option", { value: l, text: LANGUAGE_NAMES[l] || l })));
    const wanted = params.get("language");
    S.language = enabled.includes(wanted) ? wanted : enabled[0];
    ui.language.value = S.language;
    ui.language.disabled = false;
    if (editorUntouched()) setEditor(EXAMPLES[S.language] || "", true);
    if (refused) refuse(refused);
    else connect();
  }

  setState("connecting", "connecting…");
  start();
})();
