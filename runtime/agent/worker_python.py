"""Python worker for the ws_sandbox agent: one persistent interpreter, Jupyter-like cells.

Started by the agent as ``python3 -I -S -u -X utf8 -c BOOT worker_python.pyc CTL_IN CTL_OUT``
(BOOT, in agent.c, runs the bytecode as ``__main__``, or the source when there is no ``.pyc``;
:func:`_site` does what ``-S`` leaves out). Cells arrive
on ``CTL_IN`` as JSON lines ``{"code": "..."}``; the worker answers on ``CTL_OUT`` with JSON
lines ``ready``, ``display`` and ``done``. The user's stdout/stderr are plain pipes that the
agent reads; stdin is ``/dev/null``. Nothing here is trusted by the agent.
"""

import _ast
import _thread
import binascii
import builtins
import errno
import io
import math
import os
import resource
import sys
from _json import encode_basestring_ascii, make_encoder, make_scanner

# Every sandbox start pays for the worker's imports, and for each system call they make
# (about 80 us under gVisor), so the worker imports only C modules and what the interpreter's
# start has loaded: `_ast`, not ast (which imports enum and contextlib); signal's C core; JSON
# through json's own C core, `_json` (json imports re, which imports enum, functools and
# collections), with no module of ours to find and load beside it. There is no
# `from __future__ import annotations` either (it imports the __future__ module at run time):
# annotations that name what only the type checker imports are strings. traceback (with
# linecache, tokenize and re) is imported when a traceback is first formatted, by
# :func:`_import_stdlib`: by then the working directory, where cells write files, is on
# sys.path, and it is left out for that.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    import types
    from collections.abc import Callable
    from typing import Any, NoReturn
else:
    import _signal as signal

CO_COROUTINE = 0x0080
MAX_REPR_CHARS = 100_000
MAX_IMAGE_B64 = 700_000
MAX_IMAGE_BYTES = MAX_IMAGE_B64 // 4 * 3
"""The largest image a display carries: 525,000 bytes, 700,000 characters in base64."""
MAX_DISPLAY_LINE = 1_900_000
"""A display's control line, in bytes, is kept under this (the agent's bound for a line is
2 MiB): each form within its cap, five text forms of non-ASCII characters (six bytes each
once escaped) made 3.7 MB, and the agent restarted the interpreter (a review)."""
MAX_FIGURE_PIXELS = 4_000_000
FIGURE_DPI = 100.0


def _worker_code_filename() -> str:
    """The file name the worker's frames carry (the source's, also when run from .pyc)."""
    return _worker_code_filename.__code__.co_filename


WORKER_FILE = _worker_code_filename()


# JSON, as ``json.dumps(obj, separators=(",", ":"), allow_nan=False)`` and ``json.loads``
# with NaN and the infinities refused, through json's C core (tests/unit/test_agent_startup.py
# holds them to that).


def _unserializable(obj: object) -> "Any":
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _reject_constant(name: str) -> "Any":
    raise ValueError(f"non-standard JSON constant {name}")


class _ScanContext:
    """What ``_json.make_scanner`` reads: the settings of ``json.loads`` with NaN and the
    infinities refused."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_reject_constant)


_scan = make_scanner(_ScanContext())  # type: ignore[arg-type]
_encode_ascii = make_encoder(None, _unserializable, encode_basestring_ascii, None, ":", ",",
                             False, False, False)
_JSON_SPACE = " \t\n\r"


def dumps_ascii(obj: "dict[str, Any]") -> str:
    """``json.dumps(obj, separators=(",", ":"), allow_nan=False)``: every non-ASCII character
    escaped (lone surrogates too).

    Raises:
        ValueError: For NaN or an infinity.
        TypeError: For a value JSON has no type for.
    """
    return "".join(_encode_ascii(obj, 0))


def loads(text: str) -> "Any":
    """``json.loads(text)`` that refuses NaN and the infinities.

    Raises:
        ValueError: If ``text`` is not one JSON value (``json.JSONDecodeError`` for errors
            inside it).
        RecursionError: If it nests too deeply.
    """
    text = text.strip(_JSON_SPACE)
    try:
        try:
            obj, end = _scan(text, 0)
        except SystemError:
            # _json raises json.decoder's JSONDecodeError, which it looks up in sys.modules
            # without importing it (SystemError when absent): load it and scan again. Only
            # malformed JSON pays for the import.
            _import_stdlib("json.decoder")
            obj, end = _scan(text, 0)
    except StopIteration as exc:
        raise ValueError(f"expecting a JSON value at character {exc.value}") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return obj


class _State:
    running = False
    cell_number = 0
    loop: "Any" = None
    children_maxrss = 0  # RUSAGE_CHILDREN's ru_maxrss when the last cell ended
    # Set in a child that a cell forked (os.fork, multiprocessing), by an at-fork hook: a
    # flag instead of comparing os.getpid() at every message, a system call each (about
    # 80 us under gVisor).
    forked = False
    # A SIGINT came while no cell ran: late (its cell has ended) or early (its cell is still
    # being read); the next cell tells which (_Control.interrupt_follows).
    sigint = False
    # The running cell was interrupted by the agent (its SIGINT, or its mark): a
    # KeyboardInterrupt the code raised itself is an exception like any other.
    interrupted = False
    # The thread that runs cells, and the number of the last display that waited for the
    # agent's answer (_display).
    main_thread = 0
    display_seq = 0
    # The thread writing a line to the agent (_send_line).
    sending_thread = 0


_state = _State()

# An exception a thread raised between cells (a thread an earlier cell started): Python prints
# it to stderr then, where output reaches no one; the next cell prints it first, with a line
# saying so. The first few, each cut short, and how many more.
HELD_ERRORS = 3
HELD_ERROR_CHARS = 4096
_held_errors: "list[str]" = []
_held_dropped = 0
_held_lock = _thread.allocate_lock()  # threads that fail at once kept more than the first few
_format_lock = _thread.allocate_lock()
"""One thread's error formatted at a time: threads that failed at once imported traceback at
once, and one used the module another had not finished loading ("it cannot be shown"), or
put back a sys.path that another had changed (:class:`_StandardPath`)."""
_default_thread_hook = _thread._excepthook


def _thread_excepthook(args: "Any") -> None:
    """``threading.excepthook`` (set before ``threading`` is imported, see :func:`main`)."""
    global _held_dropped
    if _state.running or args.exc_type is SystemExit:
        _default_thread_hook(args)  # on the cell's stderr (SystemExit: silence)
        return
    text = ""
    if len(_held_errors) < HELD_ERRORS:  # (checked again below, with the lock)
        try:
            name = args.thread.name if args.thread is not None else _thread.get_ident()
            with _format_lock:  # as a cell's error is: the last frames, none of the worker's
                lines = _format_exception(args.exc_value)[0]
            text = f"Exception in thread {name}:\n" + "".join(lines)
        except BaseException:  # the user's exception misbehaves
            text = "Exception in a thread (it cannot be shown)\n"
    with _held_lock:
        if text and len(_held_errors) < HELD_ERRORS:
            _held_errors.append(text[:HELD_ERROR_CHARS])
        else:
            _held_dropped += 1


def _print_held_errors() -> None:
    """Before a cell: what threads raised since the last one ended."""
    global _held_dropped
    if not _held_errors:
        return
    with _held_lock:
        held = _held_errors[:]
        _held_errors.clear()
        dropped, _held_dropped = _held_dropped, 0
    text = "".join(f"{error.rstrip()}\n(raised between cells, by a thread an earlier cell"
                   " started)\n" for error in held)
    if dropped:
        text += f"(and {dropped} more exceptions between cells)\n"
    try:
        sys.stderr.write(text)
    except KeyboardInterrupt:
        raise  # the agent's interrupt: the cell ends as interrupted
    except BaseException:  # the user replaced or closed stderr (even with SystemExit)
        return


_ctl_out = -1
# A cell that calls os.fork() leaves a copy of this loop in the child: that copy must never
# speak on (or read from) the control pipe, or it would report the parent's cells done and
# steal the next cell's code. It exits when its copy of the cell ends. An at-fork hook marks
# the child (`_State.forked`); a fork made without Python's hooks (a raw fork system call
# through ctypes) is not seen, and such a child would compete for the pipe.


def _in_forked_child() -> None:
    _state.forked = True


_deferred: "list[bytes]" = []
"""Lines a signal handler of the user's sent while its thread wrote another: they follow that
line, never cut it (:func:`_send_line`)."""

_send_lock = _thread.RLock()
"""One message at a time: a ``display`` from a thread of the cell (a PNG of up to 700 KB,
more than a pipe writes at once) must not interleave with the worker's ``done``. Reentrant:
a signal handler of the user's that displays runs in the thread that holds it, between two
of its bytecodes (with a plain lock it waited for itself, and the cell hung until its time
limit); its line is deferred until the one it interrupted is whole."""


MAX_ERROR_CHARS = 4096
"""A cell's error summary is cut to this many characters before it is sent: a message of
400,000 ``é`` (six bytes each once escaped) made the done line pass the agent's 2 MiB bound
for a control line, and the agent restarted the interpreter. The agent keeps 2000."""


def _send(obj: "dict[str, Any]") -> None:
    """Write one JSON line to the agent; a broken control pipe ends the worker."""
    _send_line(dumps_ascii(obj))


def _send_line(line: str) -> None:
    """Write ``line`` (JSON, ASCII) and its newline to the agent."""
    if _state.forked:
        return  # a forked child of a cell: not the worker
    data = (line + "\n").encode("utf-8", "replace")
    me = _thread.get_ident()
    with _send_lock:
        if _state.sending_thread == me:  # a signal handler's, mid-line: after that line
            _deferred.append(data)
            return
        try:
            while True:
                _state.sending_thread = me
                try:
                    while True:
                        while data:
                            n = os.write(_ctl_out, data)
                            data = data[n:]
                        if not _deferred:
                            break
                        data = _deferred.pop(0)
                finally:
                    _state.sending_thread = 0
                # A handler's line deferred between the last look and the line above: sent
                # now, not held until the next line (a one-shot call's last was its done).
                if not _deferred:
                    break
                data = _deferred.pop(0)
        except OSError:
            os._exit(70)


def _on_sigint(_signum: int, _frame: "types.FrameType | None") -> None:
    # A running cell is interrupted. Between cells the SIGINT is only remembered: a late one
    # must not kill the worker (nor the next cell), and an early one's cell decides when it
    # begins.
    if _state.running:
        _state.interrupted = True
        raise KeyboardInterrupt
    _state.sigint = True


def _print(*args: object, sep: str | None = " ", end: str | None = "\n", file: "Any" = None,
           flush: bool = False) -> None:
    """``print`` with one ``write`` per call. The builtin writes each argument, separator and
    ``end`` separately, and the worker's streams are unbuffered (every write reaches the
    agent at once, for live output): ``print(1)`` was two system calls and two reads by the
    agent, ``print(a, b)`` four; each costs about 80 us under gVisor. Same arguments, errors
    and output as the builtin's."""
    if sep is None:
        sep = " "
    elif not isinstance(sep, str):
        raise TypeError(f"sep must be None or a string, not {type(sep).__name__}")
    if end is None:
        end = "\n"
    elif not isinstance(end, str):
        raise TypeError(f"end must be None or a string, not {type(end).__name__}")
    if file is None:
        file = sys.stdout
        if file is None:  # no stdout (the user set it to None): print does nothing
            return
    file.write(sep.join([str(arg) for arg in args]) + end)
    if flush:
        file.flush()


_print.__module__ = "builtins"
_print.__qualname__ = _print.__name__ = "print"
_print.__doc__ = builtins.print.__doc__


def _agent_interrupted() -> bool:
    """Whether the running cell was interrupted by the agent: its SIGINT came to the worker's
    handler, or its mark is next on the control pipe (a handler of the user's, such as
    ``signal.default_int_handler``, took the SIGINT: one swallowed as a flush's lost the
    interrupt, and the cell ran on until the interpreter was restarted)."""
    if not _state.interrupted and _control is not None and _control.interrupt_follows():
        _state.interrupted = True
    return _state.interrupted


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        # The user may have replaced or closed them (a flush that raises SystemExit ended
        # the interpreter; a review).
        try:
            stream.flush()
        except KeyboardInterrupt:
            if _agent_interrupted():
                raise  # the agent's interrupt, in a display: the cell stops there
        except BaseException:
            continue


def _user_traceback(exc: BaseException) -> "types.TracebackType | None":
    """The traceback from the cell's first frame: the worker's frames before it, and the
    event loop's that run a cell with a top-level ``await``, are not the user's."""
    loop_file = getattr(sys.modules.get("asyncio"), "__file__", None)
    loop_dir = os.path.dirname(loop_file) + os.sep if isinstance(loop_file, str) else None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not (filename == WORKER_FILE
                or (loop_dir is not None and filename.startswith(loop_dir))):
            break
        tb = tb.tb_next
    return tb


class _StandardPath:
    """While in effect, sys.path without the working directory, which :func:`main` puts first
    for the user's own modules: a cell's ``traceback.py``, ``tokenize.py`` or ``ast.py`` must
    not stand in for the standard ones when the worker loads them, or when what it loaded
    imports more as it runs (traceback imports ast to place its carets)."""

    def __enter__(self) -> None:
        self._saved = sys.path[:]
        try:
            cwd: str | None = os.getcwd()
        except OSError:  # a cell removed its working directory
            cwd = None
        sys.path[:] = [p for p in self._saved if p not in ("", ".", cwd)]

    def __exit__(self, *_exc: object) -> None:
        sys.path[:] = self._saved


def _import_stdlib(name: str) -> "Any":
    """Import a standard module the worker needs only sometimes (traceback, asyncio), from
    the standard path (:class:`_StandardPath`). A module already loaded (by the user, from
    wherever) is used as it is."""
    module = sys.modules.get(name)
    if module is None:
        with _StandardPath():
            __import__(name)
        module = sys.modules[name]
    return module


def _plain_summary(exc: BaseException) -> str:
    try:
        message = str.__str__(str(exc))
    except BaseException:
        message = "<exception str() failed>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


TRACEBACK_FRAMES = 1000
"""The most frames a traceback shows of each exception, the last ones, as Python's own
printer does: after ``sys.setrecursionlimit(10**6)`` (common in model-written searches) a
runaway recursion's traceback took 14 s to format, past the cell's time limit, and its
state was lost; one raised ``from`` it, or an interrupt while it was handled, as long."""
_CHAINS = ("\nThe above exception was the direct cause of the following exception:\n\n",
           "\nDuring handling of the above exception, another exception occurred:\n\n")


def _shown(tb: "types.TracebackType | None") -> "tuple[types.TracebackType | None, int]":
    """``tb`` as a traceback shows it, and how many frames it leaves out: its last
    :data:`TRACEBACK_FRAMES` frames, without the worker's own (anywhere: the worker's
    ``print`` runs a user's ``__str__``, its SIGINT handler raises the interrupt). A new
    chain: the exception's own is not changed."""
    count = 0
    walk = tb
    while walk is not None:
        count += 1
        walk = walk.tb_next
    for _ in range(count - TRACEBACK_FRAMES):
        tb = tb.tb_next if tb is not None else None
    kept = []
    while tb is not None:
        if tb.tb_frame.f_code.co_filename != WORKER_FILE:
            kept.append(tb)
        tb = tb.tb_next
    shown = None
    for entry in reversed(kept):
        shown = type(entry)(shown, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return shown, max(count - TRACEBACK_FRAMES, 0)


def _chained(exc: BaseException) -> "list[BaseException]":
    """The exceptions a traceback of ``exc`` shows besides it (causes, contexts, a group's
    members), at most 100, each once."""
    seen = {id(exc)}
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < 100:
        current = todo.pop()
        more = [current.__cause__, current.__context__]
        more += list(getattr(current, "exceptions", ())) if isinstance(
            current, BaseExceptionGroup) else []
        for other in more:
            if isinstance(other, BaseException) and id(other) not in seen:
                seen.add(id(other))
                found.append(other)
                todo.append(other)
    return found


def _format_exception(exc: BaseException) -> "tuple[list[str], list[str]]":
    """The traceback's lines, and the exception's own (``format_exception_only``), with
    every traceback as :func:`_shown` makes it. Those of the chained exceptions are swapped
    in for the formatting only."""
    tb, left_out = _shown(_user_traceback(exc))
    swapped = [(other, other.__traceback__) for other in _chained(exc)]
    try:
        for other, original in swapped:
            other.__traceback__ = _shown(original)[0]
        with _StandardPath():
            traceback = _import_stdlib("traceback")
            lines = traceback.format_exception(type(exc), exc, tb)
            only = traceback.format_exception_only(type(exc), exc)
    finally:
        for other, original in swapped:
            other.__traceback__ = original
    if left_out:
        # right under the header of exc's own part, after the parts of what it chains to
        start = max((i for i, line in enumerate(lines) if line in _CHAINS), default=-1) + 1
        for i in range(start, len(lines)):
            if "Traceback (most recent call last):" in lines[i]:
                margin = "  | " if lines[i].startswith("  + ") else "  "
                lines.insert(i + 1, f"{margin}[the first {left_out} of"
                                    f" {left_out + TRACEBACK_FRAMES} frames are not shown]\n")
                break
    return lines, only


def _report_exception(exc: BaseException) -> str:
    """Print the traceback without the worker's own frames; return ``"Type: message"``."""
    try:
        lines, only = _format_exception(exc)
        text = "".join(lines)
        lines = only
        # Notes (PEP 678) come after the "Type: message" line; the summary gives them after it.
        notes = getattr(exc, "__notes__", None)
        notes = [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []
        note_lines = sum(len(n.split("\n")) for n in notes)  # as traceback prints them
        if notes and len(lines) > note_lines:
            lines = lines[: -note_lines]
        summary = lines[-1].strip() if lines else type(exc).__name__
        if notes:
            summary = f"{summary} ({'; '.join(' '.join(n.split()) for n in notes)})"
    except BaseException:  # the user replaced traceback, linecache or their helpers, or the
        summary = _plain_summary(exc)  # exception's own hooks raise (SystemExit too)
        text = summary + "\n"
    try:
        sys.stderr.write(text)
    except BaseException:
        os.write(2, text.encode("utf-8", "replace"))
    return summary


def _run(body: "types.CodeType | None", last: "types.CodeType | None",
         glb: "dict[str, Any]") -> "Any":
    """Run a cell's statements (``body``), then its last expression (``last``), in ``glb``;
    return the expression's value (``None`` without one).

    A cell with a top-level ``await`` anywhere runs whole inside the worker's event loop, as
    in IPython: statements before the ``await`` can use the running loop
    (``task = asyncio.create_task(work())`` then ``await task``). A cell without one runs
    with no loop running, so that ``asyncio.run()`` works in it.
    """
    if not any(code is not None and code.co_flags & CO_COROUTINE for code in (body, last)):
        if body is not None:
            eval(body, glb)
        return None if last is None else eval(last, glb)
    if _state.loop is None:
        _state.loop = _import_stdlib("asyncio").new_event_loop()
    loop = _state.loop
    task = loop.create_task(_run_async(body, last, glb))
    try:
        return loop.run_until_complete(task)
    except BaseException as exc:
        # An interrupt (or an error of the loop's) left the cell's task pending: it resumed
        # in every later cell that awaits, printing on (a review). Cancelled, as asyncio.run
        # cancels its main task on Ctrl-C; its own clean-up runs now, within the interrupt's
        # grace.
        if not task.done():
            task.cancel()
            try:
                loop.run_until_complete(task)
            except BaseException as ended:
                # The interrupt came in the loop's wait, so its traceback was the loop's
                # (selectors.py), not a line of the cell: where the cell stood is in the
                # traceback of the cancellation its ``await`` raised, from the cell on.
                tb = ended.__traceback__
                while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(
                        "<cell-"):
                    tb = tb.tb_next
                if isinstance(exc, KeyboardInterrupt) and tb is not None:
                    raise exc.with_traceback(tb) from None
        raise


async def _run_async(body: "types.CodeType | None", last: "types.CodeType | None",
                     glb: "dict[str, Any]") -> "Any":
    value = None
    for code in (body, last):
        if code is not None:
            value = eval(code, glb)
            if code.co_flags & CO_COROUTINE:
                value = await value
    return value


def _display(kind: str, data: dict[str, str], ordered: bool = True) -> None:
    """Send one display. What the cell printed first is in the pipes before it (a user's
    buffered stream, a wrapper such as tqdm's): the agent forwards that first.

    What the cell prints after it must not be forwarded first: the agent reads the display
    when it wakes, and by then the cell had often printed the next line too
    (``print("A"); display("B"); print("C")`` came out A, C, B). So a display that the
    cell's own thread makes while the cell runs (``display``, ``plt.show``) carries a
    number, and the worker waits until the agent answers ``{"t":"shown","seq":n}``, which
    it does once it has forwarded the output and the display. Not for the cell's value
    (``ordered`` false: only ``done`` follows it), a thread's display (its order against
    other threads is theirs), nor one between cells."""
    _flush_std()
    seq = _display_seq() if ordered else None
    try:
        message: dict[str, Any] = {"t": "display", "kind": kind, "data": data}
        if seq is not None:
            message["seq"] = seq
        line = dumps_ascii(message)
        if len(line) > MAX_DISPLAY_LINE:
            # The largest rich forms go until it fits; text/plain (at most 100,001 characters,
            # 1.2 MB escaped) stays, as when a rich form fails.
            sizes = {mime: len(encode_basestring_ascii(form)) for mime, form in data.items()}
            data = dict(data)
            for mime in sorted(sizes, key=sizes.__getitem__, reverse=True):
                if mime != "text/plain" and len(line) > MAX_DISPLAY_LINE:
                    del data[mime]
                    _left_out(data, mime, f"{sizes[mime]:,} bytes escaped",
                              f"{MAX_DISPLAY_LINE:,} bytes of forms in all")
                    message["data"] = data
                    line = dumps_ascii(message)
        _send_line(line)
        if seq is not None and _control is not None:
            _control.await_shown(seq)
    finally:
        if seq is not None and _control is not None:
            _control.waiting = False


def _display_seq() -> "int | None":
    """The next display's number, when the cell's own thread makes it while the cell runs
    and no display of its waits already (then ``_control.waiting`` is set, until the display
    has its answer or is abandoned).

    A signal handler of the user's that runs while a display waits, and displays, does not
    wait too: its read of the pipe, inside the first one's, took the first one's answer as
    stale, and the first one then waited on an empty pipe until the cell's time limit."""
    if (not _state.running or _state.forked or _thread.get_ident() != _state.main_thread
            or _control is None or _control.waiting
            or _state.sending_thread == _state.main_thread):  # a handler's, mid-line
        return None
    _control.waiting = True
    _state.display_seq += 1
    return _state.display_seq


def _repr_method(value: "Any", name: str) -> "Any":
    """What ``value._repr_*_()`` returns, or ``None`` (no such method, a class, or it
    failed: a broken rich form falls back to the text one, as in IPython)."""
    method = getattr(value, name, None)
    if not callable(method) or isinstance(value, type):
        return None
    try:
        return method()
    except Exception:
        return None


_TEXT_FORMS = (("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_"),
               ("text/latex", "_repr_latex_"), ("image/svg+xml", "_repr_svg_"))


def _mime_bundle(value: "Any") -> dict[str, str]:
    """``value`` as Jupyter shows it: ``text/plain`` (its ``repr``), plus ``text/html``,
    ``text/markdown``, ``text/latex``, ``image/svg+xml``, ``image/png`` and ``image/jpeg``
    when it has ``_repr_html_``, ``_repr_markdown_``, ``_repr_latex_`` (a sympy
    expression), ``_repr_svg_``, ``_repr_png_`` or ``_repr_jpeg_`` (a DataFrame, a PIL
    image), each within its size cap."""
    data = {"text/plain": _text_repr(value)}
    for mime, method in _TEXT_FORMS:
        form = _repr_method(value, method)
        # (As a plain str: a subclass's __len__ may say 1.)
        form = str.__str__(form) if isinstance(form, str) else None
        if form is not None:
            if len(form) <= MAX_REPR_CHARS:
                data[mime] = form
            else:
                _left_out(data, mime, f"{len(form):,} characters",
                          f"{MAX_REPR_CHARS:,} characters at most")
    too_big: list[tuple[str, int]] = []
    for mime, method in (("image/png", "_repr_png_"), ("image/jpeg", "_repr_jpeg_")):
        image = _repr_method(value, method)
        if isinstance(image, bytes):
            if len(image) > MAX_IMAGE_BYTES:
                too_big.append((mime, len(image)))
                continue
            data[mime] = binascii.b2a_base64(image, newline=False).decode("ascii")
            break  # one image form: a PIL image has both
    else:
        for mime, size in too_big:  # each form tried (only the first was named)
            _left_out(data, mime, f"{size:,} bytes", f"{MAX_IMAGE_BYTES:,} bytes at most")
    return data


def _left_out(data: "dict[str, str]", mime: str, size: str, cap: str) -> None:
    """Say in ``data``'s text form that its ``mime`` form, of ``size``, was left out, being
    over ``cap``: an image or a table's HTML over its cap was dropped without a word (the
    result said nothing was cut; a review)."""
    data["text/plain"] += f"\n[{mime} of {size} not shown: a display carries {cap}]"


def _text_repr(value: "Any") -> str:
    """``repr(value)`` as a plain str, cut to MAX_REPR_CHARS and an ellipsis."""
    text = str.__str__(repr(value))
    return text[:MAX_REPR_CHARS] + "…" if len(text) > MAX_REPR_CHARS else text


def _display_value(value: "Any") -> None:
    _display("execute_result", _mime_bundle(value), ordered=False)


def display(*objs: "Any", **_options: "Any") -> None:
    """IPython's ``display``, a builtin as in a notebook: each object is shown as
    ``display_data`` (its text, HTML and PNG forms; a matplotlib figure as an image, which is
    then closed so the end of the cell does not show it again). IPython's options
    (``raw``, ``include``, ...) are accepted and ignored."""
    for obj in objs:
        figure = _matplotlib_figure(obj)
        if figure is None:
            _display("display_data", _mime_bundle(obj))
            continue
        try:
            _display("display_data", _render_figure(figure))
        finally:
            sys.modules["matplotlib.pyplot"].close(figure)


def _matplotlib_figure(obj: "Any") -> "Any":
    """``obj`` if it is a matplotlib figure (only when pyplot is already imported)."""
    plt = sys.modules.get("matplotlib.pyplot")
    figure_type = getattr(plt, "Figure", None) if plt is not None else None
    return obj if isinstance(figure_type, type) and isinstance(obj, figure_type) else None


def _render_figure(fig: "Any") -> dict[str, str]:
    """Render a figure to PNG with a bounded pixel count and encoded size. An empty figure
    (``plt.figure()`` alone, or what ``plt.clf()`` left) is its text alone, as in Jupyter: it
    was a blank image."""
    data = {"text/plain": _text_repr(fig)}
    if all(child is fig.patch for child in fig.get_children()):  # its background alone
        return data
    width, height = (float(v) for v in fig.get_size_inches())
    area = max(width * height, 1e-6)
    dpi = min(FIGURE_DPI, math.sqrt(MAX_FIGURE_PIXELS / area))
    for _ in range(4):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        image = buf.getvalue()
        if len(image) <= MAX_IMAGE_BYTES:
            data["image/png"] = binascii.b2a_base64(image, newline=False).decode("ascii")
            return data
        dpi /= 2
    _left_out(data, "image/png", f"{len(image):,} bytes", f"{MAX_IMAGE_BYTES:,} bytes at most")
    return data


def _flush_figures(*_args: "Any", **_kwargs: "Any") -> None:
    """Send every open pyplot figure as ``display_data`` and close it (also ``plt.show``)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in list(plt.get_fignums()):
        fig = plt.figure(num)
        try:
            _display("display_data", _render_figure(fig))
        except Exception as exc:
            _report_exception(exc)
        finally:
            plt.close(fig)


def _show_displays_figures(pyplot: "types.ModuleType") -> None:
    pyplot.show = _flush_figures  # type: ignore[attr-defined]


_sources: dict[str, tuple[int, None, list[str], str]] = {}
"""Every cell's source, as linecache keeps it, for tracebacks and ``inspect``. linecache is
imported when first needed (by the worker or the user), and learns them all then."""


def _linecache_learns_cells(linecache: "types.ModuleType") -> None:
    cache = getattr(linecache, "cache", None)
    if isinstance(cache, dict):
        cache.update(_sources)


def _cell_filename(number: int) -> str:
    return f"<cell-{number}>"


def _remember_source(filename: str, code: str) -> None:
    """Keep a cell's source; a loaded linecache learns it too.

    One entry per cell, not the whole history (copying every cell's source at every cell
    made a long session's cells slower and slower). A cache that lost the earlier cells
    (``linecache.clearcache()``, say) learns them all again.
    """
    previous = _cell_filename(_state.cell_number - 1)
    entry = (len(code), None, code.splitlines(True), filename)
    _sources[filename] = entry
    linecache = sys.modules.get("linecache")
    cache = getattr(linecache, "cache", None)
    if not isinstance(cache, dict):
        return
    if previous in _sources and previous not in cache:
        cache.update(_sources)
    else:
        cache[filename] = entry


def _children_run_site(subprocess: "types.ModuleType") -> None:
    """Interpreters started with the worker's flags (multiprocessing's spawn, joblib's loky
    workers and resource tracker) run ``site``: the worker's ``-S`` is its own (see
    :func:`_site`), and a child without it finds no package that is not on the path it is
    handed (loky's resource tracker could not import joblib, and every parallel call of
    scikit-learn printed its traceback: a review)."""
    flags = getattr(subprocess, "_args_from_interpreter_flags", None)
    if not callable(flags):
        return

    def args_from_interpreter_flags() -> "list[str]":
        return [arg for arg in flags() if arg != "-S"]

    subprocess._args_from_interpreter_flags = args_from_interpreter_flags  # type: ignore[attr-defined]


_AFTER_LOAD: "dict[str, Callable[[types.ModuleType], None]]" = {
    "matplotlib.pyplot": _show_displays_figures,
    "linecache": _linecache_learns_cells,
    "subprocess": _children_run_site,
}


class _DisplayObject:
    """IPython's display objects, for ``from IPython.display import HTML`` (model-written
    code imports them; IPython is not in the image): the data, from ``data`` or a file."""

    def __init__(self, data: "Any" = None, url: "str | None" = None,
                 filename: "str | None" = None, **_options: "Any") -> None:
        if data is None and filename is not None:
            with open(filename, "rb" if isinstance(self, Image) else "r") as file:
                data = file.read()
        self.data = data
        self.url = url

    def __repr__(self) -> str:
        return f"<IPython.core.display.{type(self).__name__} object>"


class HTML(_DisplayObject):
    def _repr_html_(self) -> str:
        return str(self.data)


class Markdown(_DisplayObject):
    def _repr_markdown_(self) -> str:
        return str(self.data)

    def __repr__(self) -> str:  # the text itself, for a client that shows text only
        return str(self.data)


class Image(_DisplayObject):
    def _repr_png_(self) -> "bytes | None":
        data = self.data
        return data if isinstance(data, bytes) and data.startswith(b"\x89PNG") else None

    def _repr_jpeg_(self) -> "bytes | None":
        data = self.data
        return data if isinstance(data, bytes) and data.startswith(b"\xff\xd8") else None


class Latex(_DisplayObject):
    def _repr_latex_(self) -> str:
        return str(self.data)

    def __repr__(self) -> str:  # the formula, for a client that shows text only
        return str(self.data)


class Math(Latex):
    def _repr_latex_(self) -> str:
        text = str(self.data).strip("$")
        return f"$\\displaystyle {text}$"


class SVG(_DisplayObject):
    def _repr_svg_(self) -> str:
        data = self.data
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


class JSON(_DisplayObject):
    def __repr__(self) -> str:
        return str(_import_stdlib("json").dumps(self.data, indent=2, default=str))


def _clear_output(wait: bool = False) -> None:
    """IPython's ``clear_output``: output already sent stays (a stream cannot take it back)."""


def _get_ipython() -> None:
    """IPython's ``get_ipython``: there is no IPython shell here."""
    return None


_DISPLAY_NAMES: "dict[str, Any]" = {
    "display": display, "HTML": HTML, "Markdown": Markdown, "Image": Image, "JSON": JSON,
    "Latex": Latex, "Math": Math, "SVG": SVG, "DisplayObject": _DisplayObject,
    "clear_output": _clear_output}
_IPYTHON_SHIM: "dict[str, dict[str, Any]]" = {
    "IPython": {"display": display, "get_ipython": _get_ipython},
    "IPython.core": {},
    "IPython.display": _DISPLAY_NAMES,
    "IPython.core.display": _DISPLAY_NAMES,
}
"""The modules of IPython a cell may import where IPython is not installed, and their names."""


class _IPythonShim:
    """Loads :data:`_IPYTHON_SHIM`'s modules."""

    def create_module(self, spec: "Any") -> None:
        return None

    def exec_module(self, module: "types.ModuleType") -> None:
        module.__dict__.update(_IPYTHON_SHIM[module.__name__])
        if module.__name__ in ("IPython", "IPython.core"):
            module.__path__ = []  # a package, for its submodules


class _ImportHook:
    """Import hook that adjusts a few modules right after they load:

    - ``matplotlib.pyplot``: ``show`` displays the figures, as in Jupyter;
    - ``linecache``: it learns the cells' sources (see :data:`_sources`);

    and gives ``IPython.display`` (:data:`_IPYTHON_SHIM`) where IPython is not installed.
    """

    def find_spec(self, fullname: str, path: "Any", target: "Any" = None) -> "Any":
        if fullname in _IPYTHON_SHIM:
            machinery = _import_stdlib("importlib.machinery")
            real = machinery.PathFinder.find_spec(fullname, path)
            if real is not None:
                return real
            return machinery.ModuleSpec(fullname, _IPythonShim(),
                                        is_package=fullname in ("IPython", "IPython.core"))
        adjust = _AFTER_LOAD.get(fullname)
        if adjust is None:
            return None
        machinery = _import_stdlib("importlib.machinery")
        spec = machinery.PathFinder.find_spec(fullname, path)
        loader = getattr(spec, "loader", None)
        original = getattr(loader, "exec_module", None)
        if spec is None or loader is None or original is None:
            return spec

        def exec_module(module: "types.ModuleType") -> None:
            original(module)
            adjust(module)

        loader.exec_module = exec_module
        return spec


MISSING_MODULE_NOTE = ("Packages cannot be installed here: there is no network and no pip."
                       " Installed: the standard library, numpy, pandas, scipy, scikit-learn,"
                       " statsmodels, sympy, networkx, matplotlib, seaborn, PIL, openpyxl,"
                       " bs4, lxml, yaml, jinja2, tabulate and tqdm.")
NO_INPUT_NOTE = "There is no input here: stdin is at its end, so put the values in the code."
NO_NETWORK_NOTE = ("There is no network here: host names do not resolve and nothing outside the"
                   " sandbox can be reached.")
NO_SOCKETS_NOTE = ("TCP and UDP sockets are off in this sandbox, even on localhost: a local server"
                   " and its client cannot run here. Unix sockets (AF_UNIX), pipes and"
                   " in-process calls work.")
NO_SPACE_NOTE = ("The sandbox's disk is full: /workspace and /tmp are small, in memory"
                 " (`df -h /workspace /tmp` shows them). Delete files to make room, or write less.")


_getrlimit = resource.getrlimit  # the worker's own: cells share the module
_RLIMIT_FSIZE = resource.RLIMIT_FSIZE
_RLIM_INFINITY = resource.RLIM_INFINITY


def _file_size_note() -> str:
    """The note on a write past the sandbox's file size limit (RLIMIT_FSIZE)."""
    try:
        limit = _getrlimit(_RLIMIT_FSIZE)[0]
        size = ("" if limit == _RLIM_INFINITY
                else f" ({limit / 2**20:g} MB; the file keeps what was written)")
    except BaseException:  # an odd limit: the note without it
        size = ""
    return f"A file here may be no larger than the sandbox's file size limit{size}."


def _network_note(exc: BaseException) -> str | None:
    """The note for ``exc`` if it comes of the sandbox having no network (a name that did not
    resolve, ``socket.gaierror``, or a network out of reach) or no TCP and UDP sockets
    (EAFNOSUPPORT: the service's seccomp profile under runc), on its own or as the cause of
    what a library raised (``urllib``'s ``URLError``, ``requests``' ``ConnectionError``)."""
    socket = sys.modules.get("socket")  # not imported: no name was looked up
    todo: list[object] = [exc]
    seen: set[int] = set()
    try:
        while todo and len(seen) < 32:
            err = todo.pop()
            if not isinstance(err, BaseException) or id(err) in seen:
                continue
            seen.add(id(err))
            if socket is not None and isinstance(err, socket.gaierror):
                return NO_NETWORK_NOTE
            if isinstance(err, OSError) and err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return NO_NETWORK_NOTE
            if isinstance(err, OSError) and err.errno == errno.EAFNOSUPPORT:
                return NO_SOCKETS_NOTE
            # URLError and urllib3's MaxRetryError keep what failed as their reason.
            todo += [err.__cause__, err.__context__, getattr(err, "reason", None)]
    except BaseException:  # the user's exception class misbehaves (even with SystemExit)
        return None
    return None


def _is_missing_package(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``ImportError`` of a top-level module that is not installed, or
    one a library raised while handling that (pandas' "Missing optional dependency
    'tabulate'. Use pip or conda to install tabulate." of ``df.to_markdown()``)."""
    try:
        if not isinstance(exc, ImportError):
            return False
        err: object = exc
        for _ in range(8):
            if not isinstance(err, BaseException):
                return False
            if isinstance(err, ModuleNotFoundError):
                name = err.name
                return isinstance(name, str) and bool(name) and "." not in name
            err = err.__cause__ or err.__context__
    except BaseException:  # the user's exception class misbehaves
        return False
    return False


def _os_errno(exc: BaseException) -> "int | None":
    """An ``OSError``'s errno, or None (another error, or one whose errno cannot be read)."""
    try:
        number = exc.errno if isinstance(exc, OSError) else None
        return number if type(number) is int else None
    except BaseException:  # the user's exception class misbehaves (even with SystemExit)
        return None


def _add_hint(exc: BaseException) -> None:
    """A note on what a model-written cell cannot do here: install a missing package, read
    input, reach the network, or write past the file size limit or the disk's size. Only on
    the exceptions that say so, once."""
    if _is_missing_package(exc):
        note = MISSING_MODULE_NOTE
    elif isinstance(exc, EOFError) and exc.args == ("EOF when reading a line",):
        note = NO_INPUT_NOTE
    elif (network := _network_note(exc)) is not None:
        note = network
    elif _os_errno(exc) == errno.EFBIG:
        note = _file_size_note()
    elif _os_errno(exc) == errno.ENOSPC:
        note = NO_SPACE_NOTE
    else:
        return
    # The exception's class is the user's: its __notes__ or add_note may raise anything
    # (SystemExit there ended the interpreter, and the cell was a success; a review).
    try:
        notes = getattr(exc, "__notes__", None)
        if not (isinstance(notes, list) and note in notes):
            exc.add_note(note)
    except BaseException:
        pass


MAGIC_NOTE = ("IPython magics (%...), shell escapes (!...) and help (x?) are not available"
              " here: cells are plain Python. Run commands with subprocess, or in a shell"
              " session; help(x) works; there is no network for pip.")


def _is_ipython_syntax(line: str) -> bool:
    """Whether a line that is not Python is IPython's: a magic (``%time f()``), a shell
    escape (``!ls``) or one assigned (``files = !ls``), or help (``x?``, ``np.sum??``,
    ``?x``)."""
    line = line.strip()
    if line.startswith(("%", "!")):
        return True
    # Help: a name, dotted or not, with one or two question marks before or after it.
    name = line.lstrip("?") if line.startswith("?") else line.rstrip("?")
    if 0 < len(line) - len(name) <= 2 and name and all(
            part.isidentifier() for part in name.split(".")):
        return True
    target, equals, value = line.partition("=")
    names = target.replace(",", " ").split()
    return (bool(equals) and bool(names) and not value.startswith("=")
            and value.lstrip().startswith(("!", "%"))
            and all(part.isidentifier() for name in names for part in name.split(".")))


def _parse(code: str, filename: str) -> "_ast.Module":
    """The cell's syntax tree. A ``%matplotlib`` line, which notebooks need and model-written
    code carries, is read as ``pass`` (figures are shown without it); any other line that
    starts with ``%`` or ``!`` fails as Python does, with a note that says why."""
    lines: list[str] | None = None
    while True:
        try:
            tree = compile(code if lines is None else "".join(lines), filename, "exec",
                           _ast.PyCF_ONLY_AST, dont_inherit=True)
            assert isinstance(tree, _ast.Module)
            return tree
        except SyntaxError as exc:
            if lines is None:
                lines = code.splitlines(keepends=True)
            at = (exc.lineno or 0) - 1
            line = lines[at] if 0 <= at < len(lines) else ""
            stripped = line.lstrip()
            if stripped.startswith("%matplotlib"):
                end = "\n" if line.endswith("\n") else ""
                lines[at] = line[: len(line) - len(stripped)] + "pass" + end
                continue
            if _is_ipython_syntax(line):
                exc.add_note(MAGIC_NOTE)
            raise


def run_cell(code: str, glb: "dict[str, Any]", program: bool = False) -> "dict[str, Any]":
    """Run one cell in ``glb`` and return the ``done`` message for the agent.

    Args:
        code: The cell's source.
        glb: The persistent globals.
        program: The cell is a whole program (a one-shot call): its end waits for the work
            it left, as a program's exit does (:func:`_end_program`).

    Returns:
        The ``done`` message (status, exit_code, error).

    ``sys.exit()`` ends the cell, not the interpreter, as in IPython: the state stays
    (model-written code ends with ``sys.exit(main())``). See :func:`_exit_status`.
    """
    _print_held_errors()
    _state.cell_number += 1
    filename = _cell_filename(_state.cell_number)
    _remember_source(filename, code)
    status, error, exit_code = "success", None, 0
    # Children are waited for while cells run: the peak at the last cell's end stands for
    # the one before this cell (one system call per cell fewer).
    children_before = _state.children_maxrss
    try:
        _state.interrupted = False
        _state.running = True
        if _state.sigint:
            _state.sigint = False
            if _control is not None and _control.interrupt_follows():
                _state.interrupted = True
                raise KeyboardInterrupt
        tree = _parse(code, filename)
        last: _ast.Expression | None = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, _ast.Expr) and not code.rstrip().endswith(";"):
            tree.body.pop()
            last = _ast.Expression(tail.value)
        flags = _ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        value = _run(
            # A lone expression leaves no statements.
            compile(tree, filename, "exec", flags=flags, dont_inherit=True) if tree.body else None,
            None if last is None else compile(last, filename, "eval", flags=flags,
                                              dont_inherit=True),
            glb)
        if value is not None:
            glb["_"] = value
            _display_value(value)
    except SystemExit as exc:
        _state.running = False
        status, error, exit_code = _exit_status(exc)
    except KeyboardInterrupt as exc:
        _state.running = False
        # The agent's interrupt, whichever handler turned it into this exception (the
        # worker's, or one the user installed): its mark is on the control pipe.
        if _agent_interrupted():
            status, error, exit_code = "interrupted", "interrupted", 130
            _flush_std()
            # where it stopped, as Python and Jupyter show it (a bare "KeyboardInterrupt"
            # did not say which line a slow loop was on; a review)
            _report_exception(exc)
        else:
            status, error, exit_code = "error", _report_exception(exc), 1
    except BaseException as exc:
        _state.running = False
        _add_hint(exc)
        status, error, exit_code = "error", _report_exception(exc), 1
    finally:
        _state.running = False
    if program and status != "interrupted":
        status, error, exit_code = _end_program(status, error, exit_code)
    _flush_std()
    try:
        _flush_figures()
    except Exception as exc:
        _report_exception(exc)
    _flush_std()
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS]  # the agent keeps 2000 of them (its control line: 2 MiB)
    done: dict[str, Any] = {"t": "done", "status": status, "exit_code": exit_code, "error": error}
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    _state.children_maxrss = children_after
    if children_after > children_before:
        done["children_maxrss_kb"] = children_after
    return done


def _end_program(status: str, error: "str | None",
                 exit_code: int) -> "tuple[str, str | None, int]":
    """What Python does as a program exits, for a cell that is a whole program: run
    ``threading``'s exit hooks (they tell a ``ThreadPoolExecutor`` that nothing more comes,
    and wait for its threads), wait for the threads that are not daemons, then run the
    ``atexit`` functions (which also wait for ``multiprocessing``'s children). A one-shot
    program's threads were cut short with its sandbox, and what they printed was lost.

    As at a program's exit, an error in a hook or an exit function is printed and changes
    nothing. An interrupt (the time limit) ends the wait: the cell is ``interrupted``, with
    a line naming what it waited for (``atexit`` swallows it in an exit function, as it
    swallows any error there: the cell is ``interrupted`` once they have run). Not after an
    interrupted cell: the user wants it stopped, not waited for."""
    threading: Any = sys.modules.get("threading")
    # The threads waited for, named if an interrupt ends the wait. Kept, not asked again:
    # an interrupted join marks its thread stopped, in Python 3.11.
    waited: list[Any] = []
    phase = "threads"
    _state.interrupted = False
    _state.running = True
    try:
        if _state.sigint:  # it came as the cell's code ended
            _state.sigint = False
            if _control is not None and _control.interrupt_follows():
                _state.interrupted = True
                raise KeyboardInterrupt
        if threading is not None:
            main = threading.main_thread()

            def left() -> "list[Any]":
                return [t for t in threading.enumerate()
                        if t is not main and not t.daemon and t.is_alive()]

            hooks = getattr(threading, "_threading_atexits", None)
            if isinstance(hooks, list) and hooks:
                waited = left()  # what an executor's hook waits for
                while hooks:
                    try:
                        hooks.pop()()
                    except Exception as exc:
                        _report_exception(exc)
            while waited := left():
                while waited:
                    waited[0].join()
                    del waited[0]
        phase = "exit functions"
        import atexit

        hook = sys.unraisablehook
        sys.unraisablehook = _exit_function_error
        try:
            phase = "ran exit functions"  # they run (and are cleared) whatever is raised
            atexit._run_exitfuncs()
        finally:
            sys.unraisablehook = hook
        if _agent_interrupted():
            raise KeyboardInterrupt
    except KeyboardInterrupt as exc:
        _state.running = False
        if not _agent_interrupted():
            return status, error or _report_exception(exc), exit_code or 1
        _flush_std()
        try:  # noqa: SIM105 - contextlib is not loaded in the worker, and need not be
            sys.stderr.write(_waited_for([str(t.name) for t in waited]) if phase == "threads"
                             else "Interrupted while the program's exit functions (atexit)"
                                  " ran\n")
        except BaseException:  # the user replaced threading's parts, or stderr
            pass
        return "interrupted", "interrupted", 130
    except BaseException as exc:  # the user replaced threading's or atexit's parts
        _report_exception(exc)
    finally:
        _state.running = False
        try:
            _reopen_after_program(threading, phase == "ran exit functions")
        except BaseException as exc:  # the user replaced the parts it mends
            _report_exception(exc)
    return status, error, exit_code


#: Modules whose exit hook (``_python_exit``, given to ``threading._register_atexit``) shuts
#: their executors for good, and the flag it sets.
_EXECUTOR_MODULES = (("concurrent.futures.thread", "_shutdown"),
                     ("concurrent.futures.process", "_global_shutdown"))


def _reopen_after_program(threading: "Any", exit_functions_ran: bool) -> None:
    """Undo what a program's end did to the interpreter, which lives on for the session's
    next cells: an executor's exit hook shut every executor for good ("cannot schedule new
    futures after interpreter shutdown", asyncio's ``run_in_executor`` too), and ran once,
    so the next program's end would have waited for ever for an executor's idle threads;
    ``multiprocessing`` thought the process exiting, and its exit function was gone with
    the others. Each is set as importing the module left it."""
    register = getattr(threading, "_register_atexit", None)
    hooks = getattr(threading, "_threading_atexits", None)
    for name, flag in _EXECUTOR_MODULES:
        module = sys.modules.get(name)
        if module is None:
            continue
        if getattr(module, flag, None) is True:
            setattr(module, flag, False)
        exit_hook = getattr(module, "_python_exit", None)
        if (callable(register) and callable(exit_hook) and isinstance(hooks, list)
                and exit_hook not in hooks):
            register(exit_hook)
    util = sys.modules.get("multiprocessing.util")
    if util is not None and exit_functions_ran:
        if getattr(util, "_exiting", None) is True:
            setattr(util, "_exiting", False)  # noqa: B010 - a private name
        import atexit

        atexit.register(util._exit_function)


def _exit_function_error(unraisable: "Any") -> None:
    """``sys.unraisablehook`` while the exit functions run: ``atexit`` hands it each error
    of theirs. The agent's interrupt is not the program's error (it is told after them,
    once), and an error's traceback leaves out the worker's frames, as a cell's does (they
    showed ``_end_program``)."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt) and _agent_interrupted():
        return
    try:
        what = f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}"
    except BaseException:  # the object's repr failed
        what = "Exception ignored in an exit function"
    try:  # noqa: SIM105 - contextlib is not loaded in the worker, and need not be
        sys.stderr.write(what + "\n")
    except BaseException:
        pass
    if exc is not None:
        _report_exception(exc)


def _waited_for(names: "list[str]") -> str:
    """The line of an interrupt of :func:`_end_program`'s wait for the threads ``names``."""
    if not names:
        return "Interrupted while the program waited for its threads\n"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    one = len(names) == 1
    return (f"Interrupted while the program waited for {len(names)}"
            f" thread{'' if one else 's'} ({shown}): Python waits at exit for every thread"
            f" that is not a daemon; join them, or start them with daemon=True\n")


_LONG_RANGE = range(-(2**63), 2**63)
"""The exit codes CPython takes as they are; an int outside them exits 255 (C's -1)."""


def _exit_status(exc: SystemExit) -> "tuple[str, str | None, int]":
    """The status, error and exit code of a cell that ended with ``sys.exit(code)``: what
    ``python3 -c`` would exit with. ``None`` is 0 and an int is its exit code (modulo 256,
    as the process's would be; 255 past a C long); anything else is printed to stderr, exit
    code 1. A cell that exits 0 succeeded; any other code is an error,
    ``SystemExit: <code>``.

    Never raises, whatever the code's type does (its ``__str__`` raising ``SystemExit``, its
    ``__class__`` lying): a failure here would end the worker."""
    try:
        return _exit_status_of(exc.code)
    except BaseException:  # the user's object misbehaved
        return "error", "SystemExit", 1


def _exit_status_of(code: object) -> "tuple[str, str | None, int]":
    if code is None:
        return "success", None, 0
    if issubclass(type(code), int):  # type(), not isinstance: __class__ can lie
        number = int.__index__(code)  # type: ignore[arg-type]
        exit_code = number & 0xFF if number in _LONG_RANGE else 255
        try:
            shown = int.__repr__(number)
        except ValueError:  # more digits than str() converts
            shown = f"an int of {number.bit_length()} bits"
    else:
        exit_code = 1
        try:
            shown = str(code)
        except BaseException:  # the user's own type, whose __str__ fails
            shown = object.__repr__(code)
        _flush_std()
        try:
            sys.stderr.write(shown + "\n")
        except BaseException:  # the user replaced sys.stderr
            os.write(2, (shown + "\n").encode("utf-8", "replace"))
    if exit_code == 0:
        return "success", None, 0
    return "error", f"SystemExit: {shown}", exit_code


class _Quitter:
    """The builtins ``exit`` and ``quit``, as in IPython: they end the cell (``sys.exit``)
    and leave ``sys.stdin`` open (site's close it, and ``input()`` then failed with
    ``ValueError`` for the rest of the session)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Use {self.name}() to end the cell (the interpreter and its state stay)"

    def __call__(self, code: object = None) -> "NoReturn":
        raise SystemExit(code)


def _seed_matplotlib_cache() -> None:
    """Copy the font cache built into the image (one small file) to the tmpfs MPLCONFIGDIR,
    so that matplotlib, in the worker or in a program it starts, does not rebuild it.

    Plain ``os`` calls: ``shutil`` alone would cost every sandbox start more than the copy.
    """
    src, dst = os.environ.get("WS_SANDBOX_MPL_CACHE"), os.environ.get("MPLCONFIGDIR")
    if not src or not dst or not os.path.isdir(src) or os.path.isdir(dst):
        return
    try:
        os.makedirs(dst, mode=0o700)
        for entry in os.scandir(src):
            if entry.is_file(follow_symlinks=False):
                with open(entry.path, "rb") as source, open(
                        os.path.join(dst, entry.name), "wb") as target:
                    target.write(source.read())
    except OSError:
        pass


def _warm_up() -> None:
    """Import what most cells use, so the first cell does not pay for it."""
    _seed_matplotlib_cache()
    for name in os.environ.get("WS_SANDBOX_PRELOAD", "numpy,pandas").split(","):
        if name.strip():
            try:
                __import__(name.strip())
            except Exception:
                continue


class _Control:
    """The agent's messages on the control pipe, one JSON object per line: a cell's code;
    ``{"t": "interrupt"}``, the mark the agent writes just before an interrupt's SIGINT; and
    ``{"t": "shown", "seq": n}``, its answer to a display that waits (:func:`_display`).

    A mark read between cells is a late interrupt's (its cell has ended) and is dropped. A
    SIGINT that came before a cell began is that cell's if its mark is already behind the
    cell's code: nothing else can come before the cell's ``done``. An answer that no display
    waits for any more (its wait was interrupted) is dropped wherever it is read.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.room = bytearray(len(_ZEROS))  # a 1 MiB read mapped a fresh buffer each time
        self.waiting = False  # a display of the cell's thread waits for its answer

    def _read(self) -> bool:
        """Add what the pipe holds (waiting for it) to the buffer; False at EOF or an error.

        Read into a zeroed buffer, not returned as a new bytes object: the SIGINT the agent
        sends just after an interrupt's mark can raise KeyboardInterrupt as the read returns,
        before a returned object is stored, and the mark was lost with it (a review: an
        interrupt then ended as an error where the user's own SIGINT handler raised). No
        line the agent writes has a NUL: what such a read got ends at the first one."""
        room = self.room
        try:
            n = os.readv(self.fd, [room])
        except KeyboardInterrupt:
            n = room.find(0)
            n = len(room) if n < 0 else n
            self.buf += room[:n]
            room[:n] = _ZEROS[:n]
            raise
        except OSError:
            return False
        # (no call until the room is zero again: a signal handler runs at a call's end)
        self.buf += room[:n]
        room[:n] = _ZEROS[:n]
        return n > 0

    def cells(self) -> "Any":
        """Yield each cell's message until EOF."""
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line != _MARK and _answered(line) is None:
                    yield loads(line.decode("utf-8", "replace"))
            try:
                if not self._read():
                    return
            except KeyboardInterrupt:
                continue

    def await_shown(self, seq: int) -> None:
        """Wait for the agent's answer to display ``seq``, keeping every other line (a mark,
        which its SIGINT follows: the KeyboardInterrupt ends this wait) and dropping answers
        to displays whose wait an interrupt ended. At EOF the agent is gone, and the worker
        with it."""
        while True:
            *lines, rest = self.buf.split(b"\n")
            answers = [_answered(line) for line in lines]
            self.buf = b"\n".join([*(line for line, answer in zip(lines, answers, strict=True)
                                     if answer is None), rest])
            if seq in answers:
                return
            if not self._read():
                os._exit(70)

    def interrupt_follows(self) -> bool:
        """Whether an interrupt's mark is next on the pipe (taken if so), after any answers
        to displays.

        Does not wait for a mark that has not come. The agent sends the SIGINT once the
        whole mark is in the pipe, so the rest of a mark or answer begun is read, waiting if
        need be (a read of a long cell's code can end inside it)."""
        whole = _MARK + b"\n"
        while True:
            # answers to displays first: their waits are over
            while self.buf.startswith(_SHOWN) and b"\n" in self.buf:
                self.buf = self.buf.split(b"\n", 1)[1]
            if self.buf.startswith(whole):
                self.buf = self.buf[len(whole):]
                return True
            if self.buf:
                # part of a mark or of an answer, whose rest is in the pipe; or a cell's code
                if not (whole.startswith(self.buf) or _SHOWN.startswith(self.buf[:len(_SHOWN)])):
                    return False
            else:
                import select

                try:
                    if not select.select([self.fd], [], [], 0)[0]:
                        return False  # nothing read, nothing in the pipe: no mark
                except OSError:
                    return False
            if not self._read():
                return False


_MARK = b'{"t":"interrupt"}'
_SHOWN = b'{"t":"shown"'
_ZEROS = bytes(1 << 16)


def _answered(line: bytes) -> "int | None":
    """The display number an answer line ``{"t":"shown","seq":n}`` names (None: another
    line)."""
    head = _SHOWN + b',"seq":'
    if not (line.startswith(head) and line.endswith(b"}")):
        return None
    try:
        return int(line[len(head):-1])
    except ValueError:
        return None


_control: "_Control | None" = None


def _site() -> None:
    """What ``site`` does at the start of an interpreter, less what costs a sandbox's start for
    nothing. The agent runs the worker with ``-S``, and this, through site's own functions,
    honours a virtual environment's ``pyvenv.cfg`` (a host's python3 may be one), adds the
    site-packages directories to ``sys.path`` in site's order, runs their ``.pth`` files,
    and gives builtins ``help``, ``copyright``, ``credits`` and ``license`` (``exit`` and
    ``quit`` are the worker's own, :class:`_Quitter`). Not done: looking for
    ``sitecustomize`` (the image has none; the search lists every directory on
    ``sys.path``) and ``usercustomize`` (``-I`` disables it). About 30 system calls fewer,
    2.5 ms under gVisor.

    What differs, for a cell that looks: ``sys.flags.no_site`` is 1. Interpreters that
    Python starts with the parent's flags run ``site`` all the same
    (:func:`_children_run_site`)."""
    builtins.exit = _Quitter("exit")  # type: ignore[assignment]
    builtins.quit = _Quitter("quit")  # type: ignore[assignment]
    if not sys.flags.no_site:
        return  # site has run (the source run by hand, say)
    import site

    site.ENABLE_USER_SITE = False  # what site decides under -I
    site.addsitepackages(site.venv(site.removeduppaths()) or set())
    site.setcopyright()
    site.sethelper()


def _user_main() -> "types.ModuleType":
    """The module cells run in, made ``sys.modules["__main__"]`` as in a notebook, so that
    what looks names up there finds the cells' own: ``unittest.main()`` and
    ``doctest.testmod()`` their tests (they ran none, and said OK), ``pickle`` their classes
    and functions (``multiprocessing`` hands them to its children by name). The worker's own
    module (``python3 -c``'s) leaves ``sys.modules``; its functions keep their globals."""
    module = type(sys)("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    return module


def main() -> None:
    """Serve cells until the agent closes the control pipe."""
    global _ctl_out, _control
    _site()
    os.register_at_fork(after_in_child=_in_forked_child)
    ctl_in, _ctl_out = int(sys.argv[1]), int(sys.argv[2])
    _state.main_thread = _thread.get_ident()
    os.set_inheritable(ctl_in, False)
    os.set_inheritable(_ctl_out, False)
    sys.argv = [""]
    sys.path.insert(0, "")
    signal.signal(signal.SIGINT, _on_sigint)
    sys.meta_path.insert(0, _ImportHook())
    builtins.print = _print
    builtins.display = display  # type: ignore[attr-defined]
    # threading takes its excepthook from _thread when it is imported; where it already is,
    # it is set there too.
    _thread._excepthook = _thread_excepthook
    threading: Any = sys.modules.get("threading")
    if threading is not None and threading.excepthook is _default_thread_hook:
        threading.excepthook = _thread_excepthook
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace", line_buffering=True)
    _warm_up()
    _state.children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    glb = _user_main().__dict__
    _send({"t": "ready"})
    _control = _Control(ctl_in)
    for message in _control.cells():
        code = message.get("code", "") if isinstance(message, dict) else ""
        program = isinstance(message, dict) and message.get("program") is True
        try:
            done = run_cell(str(code), glb, program)
        except KeyboardInterrupt:
            done = {"t": "done", "status": "interrupted", "exit_code": 130, "error": "interrupted"}
        if _state.forked:
            # A child forked by the cell finished its copy of the cell: end it here.
            _flush_std()
            os._exit(int(done.get("exit_code") or 0))
        _send(done)


if __name__ == "__main__":
    main()
