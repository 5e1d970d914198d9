/*
 * ws_sandbox in-container agent, in C (protocol/agent.md, version 1).
 *
 * It replaced agent.py, the Python agent (removed; it is in the git history), as a drop-in
 * replacement: same frames, same validation, same workers started with the same argv, fds and
 * environment. It was written because the Python agent cost ~14 ms of CPU to start and
 * ~0.3 ms per cell; this one makes no more system calls per cell than agent.py did (fewer:
 * ppoll instead of epoll registrations, signals through ppoll's mask instead of a wake-up
 * pipe, no fcntl per cell, one poll of the output pipes at a cell's end instead of a FIONREAD
 * each). Comments below that name
 * agent.py refer to that implementation, whose behaviour this one keeps.
 *
 * Build: sh runtime/agent/build.sh [OUTPUT] (gcc -std=gnu11 -O2 -Wall -Wextra -Werror ...)
 *
 * Strings taken from JSON are kept as "WTF-8": UTF-8 in which a lone surrogate escape
 * (\ud800) is stored as its 3-byte generalized encoding (ED A0..BF xx). Such a sequence counts
 * as one character like in Python, is written as '?' in frames (Python's
 * encode("utf-8", "replace")) and as a \uXXXX escape in ASCII JSON (dumps_ascii). Text that
 * comes from elsewhere (a path, an environment value such as a PATH entry) may be ill-formed:
 * each maximal ill-formed subpart is written as one '?' in frames and its bytes as \xNN
 * escapes in a repr(), so every frame is valid UTF-8.
 *
 * Process and budget rules that user code cannot get around:
 * - The agent is PID 1 of the container (no tini: tini was dumpable, so user code could open
 *   /proc/1/mem). It reaps every child that exits (wait4(-1, WNOHANG) until none is left),
 *   orphans of user code included; a known child's exit goes to its handler. Under
 *   --container it is also a child subreaper, should it ever not be PID 1. Its signal handling
 *   is unchanged: as PID 1, the kernel drops the signals it has no handler for.
 * - A display counts against max_output_bytes by the characters of each key and each value,
 *   plus one per entry (an empty entry is not free): user code can write display lines to the
 *   control pipe itself (its fd is in /proc/self/cmdline).
 * - When a worker exits, its control pipe is read for what it held at that moment, no more: a
 *   process the worker forked may hold the pipe's write end and never let it empty.
 * - Exactly one done per exec: an exec held until the worker is ready (received before
 *   `ready` or during a restart) that a restart discards gets a done "interrupted", exit code
 *   137, error "the interpreter was restarted", restarted true.
 *
 * Known differences from agent.py (none visible to a well-behaved worker or service):
 * - Before a `display` of the running cell, what the output pipes hold is forwarded (the
 *   worker wrote it first; agent.py follows epoll's readiness order, which may send the
 *   display first). A Python display with "seq" is answered (answer_display), which
 *   agent.py did not do: its worker did not wait.
 * - Python's repr() of values in error texts about a misbehaving worker decides which
 *   non-ASCII characters are printable without Unicode's tables (an approximation).
 * - Integers are saturated at 64 bits where the agent computes with them (max_output_bytes,
 *   children_maxrss_kb); exit codes are copied as written, at any size.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define PROTOCOL_VERSION 1
#define MAX_AGENT_FRAME ((size_t)1 << 20)
#define READ_SIZE ((size_t)1 << 16)
/* The largest frame the service sends: an exec of code of MAX_CODE_BYTES' ceiling (16 MiB),
 * each byte escaped as six (a control character is \u0001), and 64 KiB for the rest: the
 * service's own largest message, frames.MAX_WS_MESSAGE. 16 MiB cut off legal cells. */
#define MAX_SERVICE_FRAME ((size_t)6 * (16 << 20) + 65536)
#define MAX_TEXT_CHUNK ((size_t)64 * 1024)
#define MAX_DISPLAY_ENTRIES 8 /* a display's data: at most 8 entries (agent_wire.AgentDisplay) */
#define MAX_DISPLAY_KEY 100   /* with keys of at most 100 characters */
#define DISPLAY_FRAME_CHARS 64 /* a display frame's cost beyond its data (frames.py) */
#define DEFAULT_MAX_OUTPUT ((int64_t)1 << 20)
#define HIGH_WATER ((size_t)1 << 20)
#define HARD_WATER ((size_t)4 << 20)
#define LINGER 0.0003
#define LINGER_BYTES ((size_t)64 * 1024)
#define LINGER_OVERSLEEP 0.001
#define LINGER_OVERSLEEPS 3
/* A cell whose output comes in more than BUSY_FRAMES small reads (under BUSY_SMALL bytes)
 * within BUSY_WINDOW seconds is read every BUSY_PAUSE seconds for the rest of the window:
 * what it wrote meanwhile waits in its pipe and goes as one frame. Each read was a frame,
 * and each frame costs the engine's attach stream and the service alike, whatever its size:
 * a few cells writing one byte every 0.4 ms (29 KB each, far from any output cap) made the
 * service 100 times slower for every other session (a review). Output at a human's pace
 * (the benchmark's line every 3 ms, 33 a window) is never held, and neither is a flood of
 * full reads (counting those cut 50 MB of output from 0.13 s to 1.4 s): its frames are few
 * for their bytes, and the output cap bounds them. */
#define BUSY_WINDOW 0.1
#define BUSY_FRAMES 50
#define BUSY_SMALL 4096
#define BUSY_PAUSE 0.01
#define PROC_READ (16 * 1024)
#define MAX_CONTROL_LINE ((size_t)2 << 20)
#define MAX_ID_LEN 256
#define MAX_ERROR_LEN 2000
#define EXIT_BAD_FRAME 2
/* A worker that exits before it is ready is started again; after this many in a row the
 * agent gives up and exits 1 (the sandbox ends at once instead of starting interpreters
 * until the service's start timeout: a broken image, a preload that crashes). */
#define MAX_UNREADY_EXITS 3
/* Nesting accepted in a JSON body: agent.py parses under Python's recursion limit (1000)
 * less its own call stack, which leaves 992 levels for a service frame and 993 for a
 * worker's control line. */
#define JSON_DEPTH_SERVICE 992
#define JSON_DEPTH_CONTROL 993
#define INT_MAX_STR_DIGITS 4300 /* Python 3.11's int/str conversion limit */

/* ------------------------------------------------------------------------------- basics */

static void out_of_memory(void) {
    static const char msg[] = "ws_sandbox agent: out of memory\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(1);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (q == NULL) out_of_memory();
    return q;
}

static char *xstrndup(const char *s, size_t n) {
    char *d = xrealloc(NULL, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* A growable byte buffer; bytes before `off` are consumed. */
typedef struct {
    char *data;
    size_t off, len, cap; /* live bytes are data[off .. len) */
} Buf;

static size_t buf_size(const Buf *b) { return b->len - b->off; }
static char *buf_head(const Buf *b) { return b->data + b->off; }

static void buf_reserve(Buf *b, size_t extra) {
    if (b->off > 0 && (b->off == b->len || b->off >= b->cap / 2)) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (extra > SIZE_MAX / 4 - b->len) out_of_memory();
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static void buf_add(Buf *b, const void *p, size_t n) {
    if (n == 0) return;
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void buf_addc(Buf *b, char c) {
    buf_reserve(b, 1);
    b->data[b->len++] = c;
}

static void buf_adds(Buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_addf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_addf(Buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        buf_add(b, tmp, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void buf_consume(Buf *b, size_t n) {
    if (n > buf_size(b)) n = buf_size(b);
    b->off += n;
    if (b->off == b->len) b->off = b->len = 0;
}

static void buf_clear(Buf *b) { b->off = b->len = 0; }

static void buf_free(Buf *b) {
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

/* A NUL-terminated copy of the buffer's live bytes (the buffer owns it until changed). */
static const char *buf_cstr(Buf *b) {
    buf_reserve(b, 1);
    b->data[b->len] = '\0';
    return b->data + b->off;
}

static void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_msg(const char *fmt, ...) {
    Buf b = {0};
    buf_adds(&b, "ws_sandbox agent: ");
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) buf_add(&b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
    buf_addc(&b, '\n');
    ssize_t r = write(2, buf_head(&b), buf_size(&b));
    (void)r;
    buf_free(&b);
}

/* Log a message held in a buffer (may be longer than log_msg's limit). */
static void log_buf(Buf *msg) {
    Buf b = {0};
    buf_adds(&b, "ws_sandbox agent: ");
    buf_add(&b, buf_head(msg), buf_size(msg));
    buf_addc(&b, '\n');
    size_t done = 0;
    while (done < buf_size(&b)) {
        ssize_t r = write(2, buf_head(&b) + done, buf_size(&b) - done);
        if (r <= 0) break;
        done += (size_t)r;
    }
    buf_free(&b);
}

/* Python's str(OSError): "[Errno 2] No such file or directory". */
static void add_oserror(Buf *b, int err) { buf_addf(b, "[Errno %d] %s", err, strerror(err)); }

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------------- UTF-8 */

/* Length of the valid sequence starting at s[0] (of n bytes), 0 if ill-formed;
 * *sub = the length of its maximal valid prefix (at least 1) when ill-formed or truncated,
 * *incomplete = true when the bytes end inside a valid prefix. Surrogates (ED A0..BF) are
 * ill-formed unless allow_surrogates (internal WTF-8). */
static size_t utf8_seq(const unsigned char *s, size_t n, bool allow_surrogates, size_t *sub,
                       bool *incomplete) {
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    *incomplete = false;
    *sub = 1;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED && !allow_surrogates) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n) {
            *sub = i;
            *incomplete = true;
            return 0;
        }
        unsigned char d = s[i];
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (d < l || d > h) {
            *sub = i;
            return 0;
        }
    }
    return need + 1;
}

/* The end of the well-formed UTF-8 that starts at s[i]: the index of the first ill-formed
 * sequence, which *sub and *incomplete then describe (as utf8_seq does), or n. */
static size_t utf8_valid_to(const unsigned char *s, size_t n, size_t i, size_t *sub,
                            bool *incomplete) {
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq(s + i, n - i, false, sub, incomplete);
        if (!k) return i;
        i += k;
    }
    return n;
}

/* Strict validation like bytes.decode("utf-8"); on error, the message of Python's
 * UnicodeDecodeError goes to err. */
static bool utf8_check(const unsigned char *s, size_t n, Buf *err) {
    size_t sub;
    bool incomplete;
    size_t i = utf8_valid_to(s, n, 0, &sub, &incomplete);
    if (i < n) {
        const char *why;
        size_t end;
        if (s[i] < 0xC2 || s[i] > 0xF4) {
            why = "invalid start byte";
            end = i + 1;
        } else if (incomplete) {
            why = "unexpected end of data";
            end = n;
        } else {
            why = "invalid continuation byte";
            end = i + sub;
        }
        if (end - i == 1)
            buf_addf(err, "'utf-8' codec can't decode byte 0x%02x in position %zu: %s", s[i], i,
                     why);
        else
            buf_addf(err, "'utf-8' codec can't decode bytes in position %zu-%zu: %s", i, end - 1,
                     why);
        return false;
    }
    return true;
}

/* Number of characters (code points, a lone surrogate counting one) in WTF-8 text. */
static size_t char_count(const char *s, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) count++;
    return count;
}

/* Byte offset of the first `chars` characters of WTF-8 text (n if it has fewer). */
static size_t char_offset(const char *s, size_t n, size_t chars) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (count == chars) return i;
            count++;
        }
    }
    return n;
}

static void add_codepoint(Buf *b, uint32_t c) {
    char t[4];
    size_t n;
    if (c < 0x80) {
        t[0] = (char)c;
        n = 1;
    } else if (c < 0x800) {
        t[0] = (char)(0xC0 | (c >> 6));
        t[1] = (char)(0x80 | (c & 0x3F));
        n = 2;
    } else if (c < 0x10000) {
        t[0] = (char)(0xE0 | (c >> 12));
        t[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        t[2] = (char)(0x80 | (c & 0x3F));
        n = 3;
    } else {
        t[0] = (char)(0xF0 | (c >> 18));
        t[1] = (char)(0x80 | ((c >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((c >> 6) & 0x3F));
        t[3] = (char)(0x80 | (c & 0x3F));
        n = 4;
    }
    buf_add(b, t, n);
}

/* Decode one code point of WTF-8 text (already validated) at s; returns its length. */
static size_t wtf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80 || n < 2) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0 || n < 4) {
        if (n < 3) {
            *cp = c;
            return 1;
        }
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

/* codecs' incremental UTF-8 decoder with errors="replace". */
typedef struct {
    unsigned char pend[4];
    size_t npend;
} Utf8Decoder;

static const char REPLACEMENT[] = "\xEF\xBF\xBD";

static void utf8_decode_part(Utf8Decoder *d, const unsigned char *s, size_t n, bool final,
                             Buf *out) {
    /* Complete a held sequence first, one byte at a time. */
    size_t i = 0;
    while (d->npend > 0) {
        if (i >= n) {
            if (final) {
                buf_add(out, REPLACEMENT, 3);
                d->npend = 0;
            }
            return;
        }
        d->pend[d->npend++] = s[i++];
        size_t sub;
        bool incomplete;
        size_t k = utf8_seq(d->pend, d->npend, false, &sub, &incomplete);
        if (k) {
            buf_add(out, d->pend, k);
            d->npend = 0;
        } else if (!incomplete) {
            /* The maximal subpart is replaced; the rest (here: the byte just added, since
             * every held byte was a valid prefix) is decoded afresh. */
            buf_add(out, REPLACEMENT, 3);
            size_t rest = d->npend - sub;
            d->npend = 0;
            i -= rest;
        }
    }
    size_t start = i;
    while (i < n) {
        size_t sub;
        bool incomplete;
        i = utf8_valid_to(s, n, i, &sub, &incomplete);
        if (i == n) break;
        buf_add(out, s + start, i - start);
        if (incomplete) {
            if (final) {
                buf_add(out, REPLACEMENT, 3);
            } else {
                memcpy(d->pend, s + i, n - i);
                d->npend = n - i;
            }
            return;
        }
        buf_add(out, REPLACEMENT, 3);
        i += sub;
        start = i;
    }
    buf_add(out, s + start, n - start);
}

/* ------------------------------------------------------------------------------- JSON in */

enum { J_NONE, J_NULL, J_TRUE, J_FALSE, J_INT, J_FLOAT, J_STR, J_ARR, J_OBJ };

typedef struct {
    int type;
    size_t start, end;  /* the value's bytes in the source */
    char *str;          /* J_STR: decoded WTF-8 (owned) */
    size_t slen;
    int64_t ival;       /* J_INT: saturated value */
} JVal;

typedef struct {
    char *key;
    size_t klen;
    JVal val;
} JMember;

typedef struct {
    JMember *m;
    size_t n, cap;
} JObj;

typedef struct {
    const unsigned char *s;
    size_t n;    /* bytes of the (stripped) text */
    size_t pos;
    Buf *err;    /* message on failure */
    bool failed;
    size_t max_depth;
} JParser;

static bool j_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void j_fail_at(JParser *p, const char *msg, size_t at) {
    if (p->failed) return;
    p->failed = true;
    size_t chars = char_count((const char *)p->s, at);
    size_t line = 1, col;
    size_t last_nl = SIZE_MAX;
    for (size_t i = 0; i < at; i++)
        if (p->s[i] == '\n') {
            line++;
            last_nl = i;
        }
    if (last_nl == SIZE_MAX) col = chars + 1;
    else col = chars - char_count((const char *)p->s, last_nl + 1) + 1;
    buf_addf(p->err, "%s: line %zu column %zu (char %zu)", msg, line, col, chars);
}

/* StopIteration(idx): no JSON value starts at idx. */
static void j_stop(JParser *p, size_t at) {
    if (p->failed) return;
    p->failed = true;
    buf_addf(p->err, "expecting a JSON value at character %zu",
             char_count((const char *)p->s, at));
}

static void j_plain(JParser *p, const char *msg) {
    if (p->failed) return;
    p->failed = true;
    buf_adds(p->err, msg);
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Whether at least k characters follow byte i (the text is valid UTF-8). */
static bool j_has_chars(JParser *p, size_t i, size_t k) {
    while (k > 0 && i < p->n) {
        i++;
        while (i < p->n && (p->s[i] & 0xC0) == 0x80) i++;
        k--;
    }
    return k == 0;
}

/* Four hex digits at i (ASCII bytes, so byte == character); -1 if not. */
static long j_hex4(JParser *p, size_t i) {
    long v = 0;
    for (size_t k = 0; k < 4; k++) {
        int h = i + k < p->n ? hexval(p->s[i + k]) : -1;
        if (h < 0) return -1;
        v = (v << 4) | h;
    }
    return v;
}

/* scanstring_unicode: p->pos is after the opening quote. out may be NULL (validate only). */
static void j_string(JParser *p, Buf *out) {
    size_t begin = p->pos - 1;
    size_t i = p->pos;
    for (;;) {
        size_t chunk = i;
        while (i < p->n && p->s[i] != '"' && p->s[i] != '\\') {
            if (p->s[i] <= 0x1F) {
                j_fail_at(p, "Invalid control character at", i);
                return;
            }
            i++;
        }
        if (out) buf_add(out, p->s + chunk, i - chunk);
        if (i >= p->n) {
            j_fail_at(p, "Unterminated string starting at", begin);
            return;
        }
        if (p->s[i] == '"') {
            p->pos = i + 1;
            return;
        }
        /* a backslash */
        i++;
        if (i >= p->n) {
            j_fail_at(p, "Unterminated string starting at", begin);
            return;
        }
        unsigned char c = p->s[i];
        if (c != 'u') {
            char r;
            switch (c) {
            case '"': r = '"'; break;
            case '\\': r = '\\'; break;
            case '/': r = '/'; break;
            case 'b': r = '\b'; break;
            case 'f': r = '\f'; break;
            case 'n': r = '\n'; break;
            case 'r': r = '\r'; break;
            case 't': r = '\t'; break;
            default:
                j_fail_at(p, "Invalid \\escape", i - 1);
                return;
            }
            if (out) buf_addc(out, r);
            i++;
            continue;
        }
        /* \uXXXX: Python needs at least one character after the four digits. */
        i++;
        if (!j_has_chars(p, i, 5)) {
            j_fail_at(p, "Invalid \\uXXXX escape", i - 1);
            return;
        }
        long c1 = j_hex4(p, i);
        if (c1 < 0) {
            j_fail_at(p, "Invalid \\uXXXX escape", i - 1);
            return;
        }
        i += 4;
        uint32_t cp = (uint32_t)c1;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            /* a pair needs "\uXXXX" plus one more character after it */
            if (j_has_chars(p, i, 7) && p->s[i] == '\\' && p->s[i + 1] == 'u') {
                long c2 = j_hex4(p, i + 2);
                if (c2 < 0) {
                    j_fail_at(p, "Invalid \\uXXXX escape", i + 1);
                    return;
                }
                if (c2 >= 0xDC00 && c2 <= 0xDFFF) {
                    cp = 0x10000 + (((cp - 0xD800) << 10) | ((uint32_t)c2 - 0xDC00));
                    i += 6;
                }
            }
        }
        if (out) add_codepoint(out, cp); /* a lone surrogate becomes WTF-8 */
    }
}

static void j_value(JParser *p, size_t depth, JVal *v, bool keep_str);

static void j_number(JParser *p, JVal *v) {
    const unsigned char *s = p->s;
    size_t n = p->n, start = p->pos, i = p->pos;
    bool neg = false;
    if (s[i] == '-') {
        neg = true;
        i++;
        if (i >= n) {
            j_stop(p, start);
            return;
        }
    }
    if (s[i] >= '1' && s[i] <= '9') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    } else if (s[i] == '0') {
        i++;
    } else {
        j_stop(p, start);
        return;
    }
    size_t int_end = i;
    bool is_float = false;
    if (i + 1 < n && s[i] == '.' && s[i + 1] >= '0' && s[i + 1] <= '9') {
        is_float = true;
        i += 2;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i + 1 < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t e_start = i;
        i++;
        if (i + 1 < n && (s[i] == '-' || s[i] == '+')) i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        if (s[i - 1] >= '0' && s[i - 1] <= '9') is_float = true;
        else i = e_start;
    }
    p->pos = i;
    if (v) {
        v->type = is_float ? J_FLOAT : J_INT;
        v->ival = 0;
    }
    if (!is_float) {
        size_t digits = int_end - start - (neg ? 1 : 0);
        if (digits > INT_MAX_STR_DIGITS) {
            if (!p->failed) {
                p->failed = true;
                buf_addf(p->err,
                         "Exceeds the limit (%d digits) for integer string conversion: value has "
                         "%zu digits; use sys.set_int_max_str_digits() to increase the limit",
                         INT_MAX_STR_DIGITS, digits);
            }
            return;
        }
        if (v) {
            int64_t x = 0;
            for (size_t k = start + (neg ? 1 : 0); k < int_end; k++) {
                int dg = s[k] - '0';
                if (x > (INT64_MAX - dg) / 10) {
                    x = INT64_MAX;
                    break;
                }
                x = x * 10 + dg;
            }
            v->ival = neg ? -x : x;
        }
    }
}

static bool j_lit(JParser *p, const char *word) {
    size_t k = strlen(word);
    return p->pos + k <= p->n && memcmp(p->s + p->pos, word, k) == 0;
}

static void j_constant(JParser *p, const char *name) {
    if (p->failed) return;
    p->failed = true;
    buf_addf(p->err, "non-standard JSON constant %s", name);
}

static void j_object(JParser *p, size_t depth, JObj *obj);
static void j_array(JParser *p, size_t depth);

/* scan_once: one value at p->pos. v may be NULL (validate only). */
static void j_value(JParser *p, size_t depth, JVal *v, bool keep_str) {
    if (v) {
        memset(v, 0, sizeof *v);
        v->start = p->pos;
    }
    if (p->pos >= p->n) {
        j_stop(p, p->pos);
        return;
    }
    unsigned char c = p->s[p->pos];
    switch (c) {
    case '"': {
        p->pos++;
        if (v) v->type = J_STR;
        if (v && keep_str) {
            Buf b = {0};
            j_string(p, &b);
            if (p->failed) {
                buf_free(&b);
                return;
            }
            v->slen = buf_size(&b);
            v->str = xstrndup(b.data ? buf_head(&b) : "", v->slen);
            buf_free(&b);
        } else {
            j_string(p, NULL);
        }
        break;
    }
    case '{':
        if (depth >= p->max_depth) {
            j_plain(p, "maximum recursion depth exceeded while decoding a JSON object from a "
                       "unicode string");
            return;
        }
        p->pos++;
        if (v) v->type = J_OBJ;
        j_object(p, depth + 1, NULL);
        break;
    case '[':
        if (depth >= p->max_depth) {
            j_plain(p, "maximum recursion depth exceeded while decoding a JSON array from a "
                       "unicode string");
            return;
        }
        p->pos++;
        if (v) v->type = J_ARR;
        j_array(p, depth + 1);
        break;
    default:
        /* Python checks idx + len - 1 < length, i.e. the whole word fits. */
        if (c == 'n' && j_lit(p, "null")) {
            p->pos += 4;
            if (v) v->type = J_NULL;
        } else if (c == 't' && j_lit(p, "true")) {
            p->pos += 4;
            if (v) v->type = J_TRUE;
        } else if (c == 'f' && j_lit(p, "false")) {
            p->pos += 5;
            if (v) v->type = J_FALSE;
        } else if (c == 'N' && j_lit(p, "NaN")) {
            j_constant(p, "NaN");
        } else if (c == 'I' && j_lit(p, "Infinity")) {
            j_constant(p, "Infinity");
        } else if (c == '-' && j_lit(p, "-Infinity")) {
            j_constant(p, "-Infinity");
        } else {
            j_number(p, v);
        }
    }
    if (v) v->end = p->pos;
}

static void j_skip_ws(JParser *p) {
    while (p->pos < p->n && j_ws(p->s[p->pos])) p->pos++;
}

static void jobj_free(JObj *o) {
    for (size_t i = 0; i < o->n; i++) {
        free(o->m[i].key);
        free(o->m[i].val.str);
    }
    free(o->m);
    o->m = NULL;
    o->n = o->cap = 0;
}

/* After an object's member or an array's element: true when the container ends here (its
 * `close` is consumed) or on an error (p->failed), false after a ',' (the next item follows). */
static bool j_after_item(JParser *p, char close) {
    j_skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == close) {
        p->pos++;
        return true;
    }
    if (p->pos >= p->n || p->s[p->pos] != ',') {
        j_fail_at(p, "Expecting ',' delimiter", p->pos);
        return true;
    }
    p->pos++;
    j_skip_ws(p);
    return false;
}

/* _parse_object_unicode: p->pos is after '{'. obj (may be NULL) receives the members, with
 * decoded keys and decoded string values. */
static void j_object(JParser *p, size_t depth, JObj *obj) {
    j_skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == '}') {
        p->pos++;
        return;
    }
    for (;;) {
        if (p->pos >= p->n || p->s[p->pos] != '"') {
            j_fail_at(p, "Expecting property name enclosed in double quotes", p->pos);
            return;
        }
        p->pos++;
        Buf key = {0};
        j_string(p, obj ? &key : NULL);
        if (p->failed) {
            buf_free(&key);
            return;
        }
        j_skip_ws(p);
        if (p->pos >= p->n || p->s[p->pos] != ':') {
            buf_free(&key);
            j_fail_at(p, "Expecting ':' delimiter", p->pos);
            return;
        }
        p->pos++;
        j_skip_ws(p);
        if (obj) {
            if (obj->n == obj->cap) {
                obj->cap = obj->cap ? obj->cap * 2 : 8;
                obj->m = xrealloc(obj->m, obj->cap * sizeof *obj->m);
            }
            JMember *m = &obj->m[obj->n];
            m->klen = buf_size(&key);
            m->key = xstrndup(key.data ? buf_head(&key) : "", m->klen);
            buf_free(&key);
            j_value(p, depth, &m->val, true);
            obj->n++;
        } else {
            j_value(p, depth, NULL, false);
        }
        if (p->failed || j_after_item(p, '}')) return;
    }
}

static void j_array(JParser *p, size_t depth) {
    j_skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == ']') {
        p->pos++;
        return;
    }
    for (;;) {
        j_value(p, depth, NULL, false);
        if (p->failed || j_after_item(p, ']')) return;
    }
}

/* The member for `key`, the last one with that key (a dict keeps the last value). */
static JVal *jobj_get(JObj *o, const char *key) {
    size_t k = strlen(key);
    for (size_t i = o->n; i-- > 0;)
        if (o->m[i].klen == k && memcmp(o->m[i].key, key, k) == 0) return &o->m[i].val;
    return NULL;
}

/* decode_body + the object check: strict UTF-8, strict JSON (json.loads without NaN or the
 * infinities), a JSON object with a string field "t". On failure returns false with
 * FrameError's message in err. On success, `src` (which the object's spans refer to) is
 * s+lead, n-lead. */
typedef struct {
    JObj obj;
    const unsigned char *src; /* stripped text, for re-parsing nested spans */
    size_t srclen;
    void *owned; /* an allocation to free with the body, or NULL */
} Body;

static bool decode_body(const unsigned char *s, size_t n, size_t max_depth, Body *out,
                        Buf *err) {
    memset(out, 0, sizeof *out);
    Buf why = {0};
    if (!utf8_check(s, n, &why)) {
        buf_adds(err, "invalid JSON frame: ");
        buf_add(err, buf_head(&why), buf_size(&why));
        buf_free(&why);
        return false;
    }
    size_t a = 0, b = n;
    while (a < b && j_ws(s[a])) a++;
    while (b > a && j_ws(s[b - 1])) b--;
    JParser p = {.s = s + a, .n = b - a, .pos = 0, .err = &why, .failed = false,
                 .max_depth = max_depth};
    bool is_obj = p.n > 0 && p.s[0] == '{';
    if (is_obj) {
        p.pos = 1;
        j_object(&p, 1, &out->obj);
    } else {
        j_value(&p, 0, NULL, false);
    }
    if (!p.failed && p.pos != p.n) {
        p.failed = true;
        buf_addf(&why, "extra data after the JSON value at character %zu",
                 char_count((const char *)p.s, p.pos));
    }
    if (p.failed) {
        buf_adds(err, "invalid JSON frame: ");
        buf_add(err, buf_head(&why), buf_size(&why));
        buf_free(&why);
        jobj_free(&out->obj);
        return false;
    }
    buf_free(&why);
    JVal *t = is_obj ? jobj_get(&out->obj, "t") : NULL;
    if (t == NULL || t->type != J_STR) {
        buf_adds(err, "a frame must be a JSON object with a string field 't'");
        jobj_free(&out->obj);
        return false;
    }
    out->src = p.s;
    out->srclen = p.n;
    return true;
}

static bool jstr_eq(const JVal *v, const char *s) {
    return v && v->type == J_STR && v->slen == strlen(s) && memcmp(v->str, s, v->slen) == 0;
}

/* ------------------------------------------------------------------------------- JSON out */

/* json's encode_basestring (ensure_ascii=False) then encode("utf-8", "replace"); ascii: like
 * encode_basestring_ascii. The text is WTF-8, or bytes from elsewhere (a path, an environment
 * value) that may be ill-formed: each maximal ill-formed subpart is written as one '?', so a
 * frame is always valid UTF-8. */
static void json_str(Buf *b, const char *s, size_t n, bool ascii) {
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, n + 2);
    buf_addc(b, '"');
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (i < n) {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) break;
            i++;
        }
        buf_add(b, s + run, i - run);
        if (i >= n) break;
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            char e[7];
            switch (c) {
            case '"': buf_add(b, "\\\"", 2); break;
            case '\\': buf_add(b, "\\\\", 2); break;
            case '\n': buf_add(b, "\\n", 2); break;
            case '\r': buf_add(b, "\\r", 2); break;
            case '\t': buf_add(b, "\\t", 2); break;
            case '\b': buf_add(b, "\\b", 2); break;
            case '\f': buf_add(b, "\\f", 2); break;
            default:
                e[0] = '\\', e[1] = 'u', e[2] = '0', e[3] = '0', e[4] = hex[c >> 4],
                e[5] = hex[c & 15];
                buf_add(b, e, 6);
            }
            i++;
            continue;
        }
        size_t sub;
        bool incomplete;
        if (utf8_seq((const unsigned char *)s + i, n - i, true, &sub, &incomplete) == 0) {
            buf_addc(b, '?');
            i += sub;
            continue;
        }
        uint32_t cp;
        size_t k = wtf8_next((const unsigned char *)s + i, n - i, &cp);
        bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        if (!ascii) {
            if (surrogate) buf_addc(b, '?');
            else buf_add(b, s + i, k);
        } else {
            uint32_t units[2];
            int nu = 1;
            if (cp >= 0x10000) {
                units[0] = 0xD800 + ((cp - 0x10000) >> 10);
                units[1] = 0xDC00 + ((cp - 0x10000) & 0x3FF);
                nu = 2;
            } else {
                units[0] = cp;
            }
            for (int u = 0; u < nu; u++) {
                char e[6] = {'\\', 'u', hex[(units[u] >> 12) & 15], hex[(units[u] >> 8) & 15],
                             hex[(units[u] >> 4) & 15], hex[units[u] & 15]};
                buf_add(b, e, 6);
            }
        }
        i += k;
    }
    buf_addc(b, '"');
}

static void json_cstr(Buf *b, const char *s) { json_str(b, s, strlen(s), false); }

/* Python's repr() of a float. */
static void py_float_repr(Buf *b, double x) {
    if (isnan(x)) {
        buf_adds(b, "nan");
        return;
    }
    if (isinf(x)) {
        buf_adds(b, x < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[64];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, x);
        if (strtod(tmp, NULL) == x) break;
    }
    if (prec > 17) prec = 17;
    snprintf(tmp, sizeof tmp, "%.*e", prec - 1, x);
    /* tmp: [-]d[.ddd]e[+-]XX */
    char digits[32];
    size_t nd = 0;
    const char *q = tmp;
    bool neg = false;
    if (*q == '-') {
        neg = true;
        q++;
    }
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9' && nd < sizeof digits - 1) digits[nd++] = *q;
    int exp10 = *q == 'e' ? atoi(q + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    int decpt = exp10 + 1; /* value = 0.DIGITS * 10^decpt */
    if (neg) buf_addc(b, '-');
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            buf_adds(b, "0.");
            for (int k = 0; k < -decpt; k++) buf_addc(b, '0');
            buf_add(b, digits, nd);
        } else if ((size_t)decpt >= nd) {
            buf_add(b, digits, nd);
            for (size_t k = nd; k < (size_t)decpt; k++) buf_addc(b, '0');
            buf_adds(b, ".0");
        } else {
            buf_add(b, digits, (size_t)decpt);
            buf_addc(b, '.');
            buf_add(b, digits + decpt, nd - (size_t)decpt);
        }
    } else {
        buf_addc(b, digits[0]);
        if (nd > 1) {
            buf_addc(b, '.');
            buf_add(b, digits + 1, nd - 1);
        }
        int e = decpt - 1;
        buf_addf(b, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
}

/* Python's round(x, nd) (correctly rounded, like glibc's printf). */
static double py_round(double x, int nd) {
    if (!isfinite(x)) return x;
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%.*f", nd, x);
    return strtod(tmp, NULL);
}

/* ----------------------------------------------------------------- Python repr (errors) */

/* An approximation of str.isprintable for characters outside ASCII (no Unicode database). */
static bool py_printable(uint32_t c) {
    if (c < 0x20 || c == 0x7F) return false;
    if (c < 0x7F) return true;
    if (c <= 0xA0 || c == 0xAD) return false;
    if (c >= 0xD800 && c <= 0xDFFF) return false;
    if ((c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) ||
        (c >= 0x205F && c <= 0x206F) || c == 0x1680 || c == 0x3000 || c == 0xFEFF ||
        (c >= 0xFFF0 && c <= 0xFFFB) || (c & 0xFFFE) == 0xFFFE || c == 0x180E ||
        c == 0x061C || (c >= 0x0600 && c <= 0x0605) || c == 0x06DD || c == 0x070F ||
        (c >= 0xE000 && c <= 0xF8FF) || c >= 0xF0000 || (c >= 0xE0000 && c <= 0xE0FFF))
        return false;
    return true;
}

/* repr() of a str given as WTF-8; the bytes of an ill-formed sequence (text from a path or
 * an environment value) are written as \xNN escapes, so the result is always valid UTF-8. */
static void py_str_repr(Buf *b, const char *s, size_t n) {
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char quote = sq && !dq ? '"' : '\'';
    buf_addc(b, quote);
    size_t i = 0;
    while (i < n) {
        if ((unsigned char)s[i] >= 0x80) {
            size_t sub;
            bool incomplete;
            if (utf8_seq((const unsigned char *)s + i, n - i, true, &sub, &incomplete) == 0) {
                for (size_t j = 0; j < sub; j++)
                    buf_addf(b, "\\x%02x", (unsigned char)s[i + j]);
                i += sub;
                continue;
            }
        }
        uint32_t c;
        size_t k = wtf8_next((const unsigned char *)s + i, n - i, &c);
        if (c == (uint32_t)quote || c == '\\') {
            buf_addc(b, '\\');
            buf_addc(b, (char)c);
        } else if (c == '\t') buf_adds(b, "\\t");
        else if (c == '\n') buf_adds(b, "\\n");
        else if (c == '\r') buf_adds(b, "\\r");
        else if (py_printable(c)) buf_add(b, s + i, k);
        else if (c <= 0xFF) buf_addf(b, "\\x%02x", c);
        else if (c <= 0xFFFF) buf_addf(b, "\\u%04x", c);
        else buf_addf(b, "\\U%08x", c);
        i += k;
    }
    buf_addc(b, quote);
}

/* repr() of bytes. */
static void py_bytes_repr(Buf *b, const unsigned char *s, size_t n) {
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char quote = sq && !dq ? '"' : '\'';
    buf_addc(b, 'b');
    buf_addc(b, quote);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == (unsigned char)quote || c == '\\') {
            buf_addc(b, '\\');
            buf_addc(b, (char)c);
        } else if (c == '\t') buf_adds(b, "\\t");
        else if (c == '\n') buf_adds(b, "\\n");
        else if (c == '\r') buf_adds(b, "\\r");
        else if (c < 0x20 || c >= 0x7F) buf_addf(b, "\\x%02x", c);
        else buf_addc(b, (char)c);
    }
    buf_addc(b, quote);
}

/* A dict made of an object's members: for each member that is the first with its key, the
 * index of the last member with that key (the dict's value); -1 for the others. O(n log n):
 * a stable merge sort of the indices by key. The caller frees the array. */
static int member_cmp(const JMember *a, const JMember *b) {
    size_t l = a->klen < b->klen ? a->klen : b->klen;
    int c = memcmp(a->key, b->key, l);
    if (c == 0) c = a->klen < b->klen ? -1 : a->klen > b->klen ? 1 : 0;
    return c;
}

static long *jobj_dedup(const JObj *o) {
    size_t n = o->n;
    size_t *idx = xrealloc(NULL, (n ? n : 1) * sizeof(size_t));
    size_t *tmp = xrealloc(NULL, (n ? n : 1) * sizeof(size_t));
    for (size_t i = 0; i < n; i++) idx[i] = i;
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = n - lo > width ? lo + width : n;
            size_t hi = n - lo > 2 * width ? lo + 2 * width : n;
            size_t a = lo, b = mid, t = lo;
            while (a < mid && b < hi)
                tmp[t++] = member_cmp(&o->m[idx[a]], &o->m[idx[b]]) <= 0 ? idx[a++] : idx[b++];
            while (a < mid) tmp[t++] = idx[a++];
            while (b < hi) tmp[t++] = idx[b++];
        }
        memcpy(idx, tmp, n * sizeof(size_t));
    }
    free(tmp);
    long *use = xrealloc(NULL, (n ? n : 1) * sizeof(long));
    for (size_t i = 0; i < n; i++) use[i] = -1;
    for (size_t a = 0; a < n;) {
        size_t b = a + 1;
        while (b < n && member_cmp(&o->m[idx[a]], &o->m[idx[b]]) == 0) b++;
        use[idx[a]] = (long)idx[b - 1];
        a = b;
    }
    free(idx);
    return use;
}

static void py_repr_at(JParser *p, Buf *out);

/* repr() (or str() when as_str, for a top-level str) of a decoded JSON value; containers are
 * re-read from their (already validated) text. */
static void py_repr_value(Buf *b, const Body *body, const JVal *v, bool as_str) {
    if (v->type == J_STR) {
        if (as_str) buf_add(b, v->str, v->slen);
        else py_str_repr(b, v->str, v->slen);
        return;
    }
    Buf err = {0};
    JParser p = {.s = body->src, .n = v->end, .pos = v->start, .err = &err, .max_depth = SIZE_MAX};
    py_repr_at(&p, b);
    buf_free(&err);
}

/* repr() of the (validated) JSON value at p->pos, in one pass: a list's items are written
 * as they are read; a dict's too, rewritten only when a key repeats (first position, last
 * value). */
static void py_repr_at(JParser *p, Buf *out) {
    if (p->pos >= p->n || p->failed) return;
    const unsigned char *s = p->s;
    unsigned char c = s[p->pos];
    if (c == '[') {
        p->pos++;
        buf_addc(out, '[');
        j_skip_ws(p);
        bool first = true;
        while (p->pos < p->n && s[p->pos] != ']' && !p->failed) {
            if (!first) buf_adds(out, ", ");
            first = false;
            size_t before = p->pos;
            py_repr_at(p, out);
            if (p->pos == before) break;
            j_skip_ws(p);
            if (p->pos < p->n && s[p->pos] == ',') p->pos++;
            j_skip_ws(p);
        }
        if (p->pos < p->n) p->pos++;
        buf_addc(out, ']');
        return;
    }
    if (c == '{') {
        p->pos++;
        buf_addc(out, '{');
        size_t base = buf_size(out);
        JObj o = {0};
        size_t *vstart = NULL;
        j_skip_ws(p);
        while (p->pos < p->n && s[p->pos] == '"' && !p->failed) {
            p->pos++;
            Buf key = {0};
            j_string(p, &key);
            j_skip_ws(p);
            if (p->pos < p->n && s[p->pos] == ':') p->pos++;
            j_skip_ws(p);
            if (o.n == o.cap) {
                o.cap = o.cap ? o.cap * 2 : 8;
                o.m = xrealloc(o.m, o.cap * sizeof *o.m);
                vstart = xrealloc(vstart, o.cap * sizeof *vstart);
            }
            JMember *m = &o.m[o.n];
            memset(m, 0, sizeof *m);
            m->klen = buf_size(&key);
            m->key = xstrndup(key.data ? buf_head(&key) : "", m->klen);
            buf_free(&key);
            if (o.n) buf_adds(out, ", ");
            m->val.start = buf_size(out);
            py_str_repr(out, m->key, m->klen);
            buf_adds(out, ": ");
            vstart[o.n] = buf_size(out);
            size_t before = p->pos;
            py_repr_at(p, out);
            m->val.end = buf_size(out);
            o.n++;
            if (p->pos == before) break;
            j_skip_ws(p);
            if (p->pos < p->n && s[p->pos] == ',') p->pos++;
            j_skip_ws(p);
        }
        if (p->pos < p->n) p->pos++;
        long *use = jobj_dedup(&o);
        bool dup = false;
        for (size_t i = 0; i < o.n; i++)
            if (use[i] != (long)i) dup = true;
        if (dup) {
            size_t len = buf_size(out) - base;
            char *tmp = xrealloc(NULL, len ? len : 1);
            memcpy(tmp, buf_head(out) + base, len);
            out->len = out->off + base;
            bool first = true;
            for (size_t i = 0; i < o.n; i++) {
                if (use[i] < 0) continue;
                if (!first) buf_adds(out, ", ");
                first = false;
                size_t last = (size_t)use[i];
                buf_add(out, tmp + (o.m[i].val.start - base), vstart[i] - o.m[i].val.start);
                buf_add(out, tmp + (vstart[last] - base), o.m[last].val.end - vstart[last]);
            }
            free(tmp);
        }
        free(use);
        free(vstart);
        jobj_free(&o);
        buf_addc(out, '}');
        return;
    }
    JVal v;
    size_t start = p->pos;
    j_value(p, 0, &v, true);
    switch (v.type) {
    case J_NULL: buf_adds(out, "None"); break;
    case J_TRUE: buf_adds(out, "True"); break;
    case J_FALSE: buf_adds(out, "False"); break;
    case J_STR: py_str_repr(out, v.str, v.slen); break;
    case J_INT: {
        /* the literal is canonical except for "-0" */
        size_t len = p->pos - start;
        if (len == 2 && s[start] == '-' && s[start + 1] == '0') buf_addc(out, '0');
        else buf_add(out, s + start, len);
        break;
    }
    case J_FLOAT: {
        char *lit = xstrndup((const char *)s + start, p->pos - start);
        py_float_repr(out, strtod(lit, NULL));
        free(lit);
        break;
    }
    default: break;
    }
    free(v.str);
}

/* ------------------------------------------------------------------------------- state */

enum { L_PYTHON, L_JAVASCRIPT, L_SHELL, L_RUST };
static const char *const LANGUAGES[] = {"python", "javascript", "shell", "rust"};

#define RUST_TAIL 32 /* longer than any word rust_scan_stderr looks for */

typedef struct {
    const char *name;
    int fd;
    bool eof;
    Utf8Decoder dec;
    bool handled; /* drained while handling this wait: its own callback is skipped */
} Stream;

typedef struct {
    char *id;
    size_t idlen;
    int64_t max_output;
    double started;
    int64_t forwarded;
    bool truncated, interrupted;
    long peak_kb;
    bool oom_known;
    long long oom_before;
    char *workdir;
    double compile_ms; /* < 0: none */
    bool missing_crate; /* rustc said a crate the cell uses is not here */
    bool reads_stdin;   /* a Rust cell's code calls stdin() (not in tests mode) */
    bool empty_input;   /* its program's stderr told of an empty input (see forward) */
    unsigned char err_tail[RUST_TAIL]; /* the end of what its stderr said (rust_scan_stderr) */
    size_t err_tail_len;
} Cell;

typedef struct {
    pid_t pid;
    bool reaped;
    int ctl_w, ctl_r;
    Stream streams[2];
    int status_fd, clear_refs_fd;
    bool ready;
    Buf ctl_buf, ctl_out;
    bool ctl_eof;
    bool sigint_when_written; /* an interrupt's SIGINT waits for its mark to be written */
    char *broken;
} Worker;

enum { H_WORKER, H_RUSTC, H_PROGRAM };
typedef struct {
    pid_t pid;
    int handler;
} ChildEntry;

typedef struct {
    char *id;
    size_t idlen;
    char *code;
    size_t codelen;
    int64_t max_output;
    bool program; /* a whole program: its end waits for the work it left (python) */
} Exec;

#define MAX_CHILDREN 8
#define MAX_SESSIONS 8
#define MAX_POLL 16

static struct {
    int language;
    bool container;
    int unready_exits; /* workers in a row that exited before they were ready */
    Buf outbuf;
    Buf inbuf;
    int exit_code; /* -1: running */
    bool stdin_open;
    bool hello, ready_sent, restart_pending, state_lost;
    Cell *cell, *last_cell;
    Buf between;             /* output written between cells: see hold_between */
    size_t between_raw;      /* the bytes of it kept (at most BETWEEN_KEEP) */
    long long between_dropped;
    size_t between_last;     /* where the last record of it starts; SIZE_MAX: none */
    size_t between_display_raw; /* the bytes of the displays kept (BETWEEN_DISPLAY_KEEP) */
    long long between_displays_dropped;
    Exec *pending_exec;
    Worker *worker;
    ChildEntry children[MAX_CHILDREN];
    size_t nchildren;
    pid_t sessions[MAX_SESSIONS];
    size_t nsessions;
    long cell_count;
    long interrupt_for; /* the cell_count of a cell whose interrupt waits for the wait's end */
    pid_t rust_child;
    Stream rust_streams[2];
    int rust_write_fds[2];
    int oom_fd;
    double linger_until; /* < 0: none */
    bool lingering;
    double busy_start;  /* the window whose reads of user output are counted */
    int busy_reads;
    double quiet_until; /* < 0: none; until then the user's pipes are not read */
    int oversleeps;
    /* the wait whose descriptors are being handled */
    bool in_batch;
    struct pollfd batch[MAX_POLL];
    size_t nbatch;
    char agent_dir[PATH_MAX];
    char **child_env;
    char *which_cache[5];
} A;

static volatile sig_atomic_t got_sigchld, got_sigterm;

static void on_sigchld(int sig) { (void)sig; got_sigchld = 1; }
static void on_sigterm(int sig) { (void)sig; got_sigterm = 1; }
static void on_sigint(int sig) { (void)sig; }

/* ------------------------------------------------------------------------------- /proc */

/* The integer after `key` on its line ("VmHWM:  123 kB", "oom_kill 2"); false if none. */
static bool proc_field(const char *content, size_t n, const char *key, long long *out) {
    size_t klen = strlen(key);
    size_t i = 0;
    while (i < n) {
        size_t e = i;
        while (e < n && content[e] != '\n' && content[e] != '\r') e++;
        /* tokens of the line */
        size_t a = i;
        while (a < e && (content[a] == ' ' || content[a] == '\t' || content[a] == '\v' ||
                         content[a] == '\f'))
            a++;
        size_t ae = a;
        while (ae < e && !(content[ae] == ' ' || content[ae] == '\t' || content[ae] == '\v' ||
                           content[ae] == '\f'))
            ae++;
        size_t c = ae;
        while (c < e && (content[c] == ' ' || content[c] == '\t' || content[c] == '\v' ||
                         content[c] == '\f'))
            c++;
        size_t ce = c;
        while (ce < e && !(content[ce] == ' ' || content[ce] == '\t' || content[ce] == '\v' ||
                           content[ce] == '\f'))
            ce++;
        if (ae > a && ce > c && ae - a == klen && memcmp(content + a, key, klen) == 0) {
            size_t k = c;
            bool neg = false;
            if (content[k] == '+' || content[k] == '-') {
                neg = content[k] == '-';
                k++;
            }
            if (k == ce) return false;
            long long v = 0;
            for (; k < ce; k++) {
                if (content[k] < '0' || content[k] > '9') return false;
                if (v > (LLONG_MAX - 9) / 10) return false;
                v = v * 10 + (content[k] - '0');
            }
            *out = neg ? -v : v;
            return true;
        }
        i = e + 1;
        if (e + 1 < n && content[e] == '\r' && content[e + 1] == '\n') i = e + 2;
    }
    return false;
}

static bool proc_read_field(int fd, const char *key, long long *out) {
    if (fd < 0) return false;
    char buf[PROC_READ];
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    return proc_field(buf, (size_t)n, key, out);
}

static void open_oom_counter(void) {
    static const char *const paths[] = {"/sys/fs/cgroup/memory.events",
                                        "/sys/fs/cgroup/memory/memory.oom_control"};
    A.oom_fd = -1;
    for (size_t i = 0; i < 2; i++) {
        int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        long long v;
        if (proc_read_field(fd, "oom_kill", &v)) {
            A.oom_fd = fd;
            return;
        }
        close(fd);
    }
}

static bool oom_kills(long long *out) { return proc_read_field(A.oom_fd, "oom_kill", out); }

/* ------------------------------------------------------------------------------- processes */

static const char *which(int slot, const char *name) {
    if (A.which_cache[slot]) return A.which_cache[slot];
    const char *path = getenv("PATH");
    if (path == NULL) path = "/bin:/usr/bin";
    const char *p = path;
    for (;;) {
        const char *e = strchr(p, ':');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > 0 && p[0] == '/' && len + strlen(name) + 2 < PATH_MAX) {
            char full[PATH_MAX];
            snprintf(full, sizeof full, "%.*s%s%s", (int)len, p, p[len - 1] == '/' ? "" : "/",
                     name);
            struct stat st;
            if (access(full, X_OK) == 0 && stat(full, &st) == 0 && !S_ISDIR(st.st_mode)) {
                A.which_cache[slot] = xstrndup(full, strlen(full));
                return A.which_cache[slot];
            }
        }
        if (!e) break;
        p = e + 1;
    }
    return NULL;
}

/* Every node a sandbox runs (the JavaScript worker, a `node` a cell starts, and their
 * children and worker threads) loads node_preload.js first: the later releases' builtins that
 * code written for them uses (node_builtins.js), where this Node lacks them. After the
 * options the service gave (the heap's size). Made once; the environment keeps it. */
static char *node_options(const char *given) {
    Buf b = {0};
    buf_adds(&b, "NODE_OPTIONS=");
    if (*given) {
        buf_adds(&b, given);
        buf_addc(&b, ' ');
    }
    buf_adds(&b, "--require=\"");
    buf_adds(&b, A.agent_dir);
    buf_adds(&b, "/node_preload.js\"");
    return (char *)buf_cstr(&b);
}

static void build_child_env(void) {
    size_t n = 0;
    for (char **e = environ; *e; e++) n++;
    A.child_env = xrealloc(NULL, (n + 5) * sizeof(char *));
    size_t k = 0;
    bool path = false, lang = false, mpl = false, node = false;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "WS_SANDBOX_AGENT", 16) == 0) continue;
        if (strchr(*e, '=') == NULL) continue;
        if (strncmp(*e, "NODE_OPTIONS=", 13) == 0) {
            A.child_env[k++] = node_options(*e + 13);
            node = true;
            continue;
        }
        if (strncmp(*e, "PATH=", 5) == 0) path = true;
        if (strncmp(*e, "LANG=", 5) == 0) lang = true;
        if (strncmp(*e, "MPLBACKEND=", 11) == 0) mpl = true;
        A.child_env[k++] = *e;
    }
    if (!path) A.child_env[k++] = "PATH=/usr/local/bin:/usr/bin:/bin";
    if (!lang) A.child_env[k++] = "LANG=C.UTF-8";
    if (!mpl) A.child_env[k++] = "MPLBACKEND=Agg";
    if (!node) A.child_env[k++] = node_options("");
    A.child_env[k] = NULL;
}

/* The child's side of spawn(), in a frame of its own below spawn()'s: the child shares the
 * agent's stack until it execs, and must write nothing into the frame the agent resumes in
 * but *failure. Never returns. */
static __attribute__((noinline, noreturn)) void spawn_child(char *const argv[], int out,
                                                            int err, const int *pass,
                                                            size_t npass, const char *cwd,
                                                            const sigset_t *none,
                                                            volatile int *failure) {
    static const int reset[] = {SIGCHLD, SIGTERM, SIGPIPE, SIGXFSZ};
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    int fd;
    if (setsid() < 0) goto fail;
    for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++)
        if (sigaction(reset[i], &dfl, NULL) != 0) goto fail;
    fd = open("/dev/null", O_RDONLY);
    if (fd < 0 || (fd != 0 && (dup2(fd, 0) != 0 || close(fd) != 0))) goto fail;
    if (dup2(out, 1) != 1 || dup2(err, 2) != 2) goto fail;
    for (size_t i = 0; i < npass; i++)
        if (fcntl(pass[i], F_SETFD, 0) != 0) goto fail;
    if (cwd && chdir(cwd) != 0) goto fail;
    /* argv[0] is which()'s full path; a bare name means PATH has no such program
     * (posix_spawnp's search would fail the same way). execve, not execvpe: no search
     * relative to the working directory, and a file without a #! line fails with ENOEXEC
     * instead of running under /bin/sh, as with posix_spawn. */
    if (!strchr(argv[0], '/')) {
        errno = ENOENT;
        goto fail;
    }
    sigprocmask(SIG_SETMASK, none, NULL);
    execve(argv[0], argv, A.child_env);
fail:
    *failure = errno ? errno : EINVAL;
    _exit(127);
}

/* Start argv in a new session with stdin from /dev/null, stdout/stderr given, the pass fds
 * inherited, default dispositions for the signals the agent handles or ignores, an empty
 * signal mask. Returns the pid, or -errno.
 *
 * Not posix_spawn: glibc's child resets the disposition of every signal, a sigaction to
 * read it and one to set it for each of the 64, about 130 system calls before the exec.
 * That is nothing under runc, but each call costs about 80 us under gVisor: 10 ms of every
 * sandbox's start (the worker) and of every Rust cell (rustc, then the program). Here the
 * child resets only what needs it, the same way posix_spawn does: every signal is blocked
 * around vfork, so no handler of the agent's runs in the child, which shares the agent's
 * memory until it execs; exec resets the handled signals to the default, and the child
 * resets the ignored ones (SIGPIPE; SIGXFSZ too, should the agent have inherited it
 * ignored) and the two the agent's handlers would otherwise act on (SIGCHLD and SIGTERM,
 * which set the agent's flags) before it unblocks. The no-op handlers (SIGINT and the
 * others the agent keeps from user code) may run in the child between that and the exec,
 * and do nothing. */
static pid_t spawn(char *const argv[], int out, int err, const int *pass, size_t npass,
                   const char *cwd) {
    sigset_t all, old, none;
    sigfillset(&all);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &all, &old);
    volatile int failure = 0; /* written by the child, which shares the agent's memory */
    pid_t pid = vfork();
    if (pid == 0) spawn_child(argv, out, err, pass, npass, cwd, &none, &failure);
    int saved = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) return -saved;
    if (failure) {
        /* The child is gone (or going): reap it here, it never ran the program. */
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
        return -failure;
    }
    return pid;
}

static void add_child(pid_t pid, int handler) {
    if (A.nchildren < MAX_CHILDREN) A.children[A.nchildren++] = (ChildEntry){pid, handler};
    if (A.nsessions < MAX_SESSIONS) A.sessions[A.nsessions++] = pid;
}

static void discard_session(pid_t pid) {
    for (size_t i = 0; i < A.nsessions; i++)
        if (A.sessions[i] == pid) {
            A.sessions[i] = A.sessions[--A.nsessions];
            return;
        }
}

static int exitcode_of(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return -WTERMSIG(status);
    return status;
}

/* "SIGSEGV (segmentation fault)": the name Python's signal module gives (aliases resolve to
 * the alphabetically first name; SIGRTMIN and SIGRTMAX named, other real-time signals not),
 * then strsignal's text in lower case unless glibc does not know the signal. */
static void signal_description(Buf *b, int sig) {
    const char *abbrev = sig > 0 && sig < NSIG ? sigabbrev_np(sig) : NULL;
    if (sig == SIGABRT) abbrev = "ABRT";
    if (sig == SIGIO) abbrev = "IO";
    if (sig == SIGCHLD) abbrev = "CHLD";
    if (sig == SIGRTMIN) abbrev = "RTMIN";
    if (sig == SIGRTMAX) abbrev = "RTMAX";
    if (abbrev) buf_addf(b, "SIG%s", abbrev);
    else buf_addf(b, "signal %d", sig);
    const char *desc = NULL;
    if (sig == SIGKILL) {
        /* With the cgroup's OOM counter, a kill by the OOM killer is named as one (the
         * cell's error starts "memory limit exceeded"): this one was not. Without it, it
         * may have been. */
        desc = A.cell && A.cell->oom_known ? "killed"
                                           : "killed, possibly by the out-of-memory killer";
    } else {
        errno = 0;
        desc = strsignal(sig);
        if (errno || (desc && strstr(desc, "Unknown signal"))) desc = NULL;
    }
    if (desc && *desc) {
        buf_adds(b, " (");
        for (const char *q = desc; *q; q++) {
            char c = *q;
            buf_addc(b, (char)(c >= 'A' && c <= 'Z' ? c + 32 : c));
        }
        buf_addc(b, ')');
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)ftw;
    if (flag == FTW_DP || flag == FTW_D) rmdir(path);
    else unlink(path);
    return 0;
}

static void remove_tree(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static int pending_bytes(int fd) {
    int n = 0;
    if (ioctl(fd, FIONREAD, &n) < 0) return 0;
    return n;
}

static void set_nonblocking_rd(int fd) { fcntl(fd, F_SETFL, O_RDONLY | O_NONBLOCK); }
static void set_nonblocking_wr(int fd) { fcntl(fd, F_SETFL, O_WRONLY | O_NONBLOCK); }

/* ------------------------------------------------------------------------------- frames */

/* A frame is built in place at the end of the outgoing buffer: frame_open reserves its
 * header and returns its position, relative to the buffer's live head (the buffer may be
 * compacted while the body is written, which keeps relative positions). */
static size_t frame_open(void) {
    buf_reserve(&A.outbuf, 256);
    size_t mark = buf_size(&A.outbuf);
    A.outbuf.len += 4;
    return mark;
}

/* Write the header of the frame opened at mark; false (and the frame dropped) if its body is
 * larger than MAX_AGENT_FRAME. */
static bool frame_close(size_t mark) {
    size_t body = buf_size(&A.outbuf) - mark - 4;
    if (body > MAX_AGENT_FRAME) {
        A.outbuf.len = A.outbuf.off + mark;
        return false;
    }
    unsigned char *h = (unsigned char *)buf_head(&A.outbuf) + mark;
    h[0] = (unsigned char)(body >> 24);
    h[1] = (unsigned char)(body >> 16);
    h[2] = (unsigned char)(body >> 8);
    h[3] = (unsigned char)body;
    return true;
}

static void send_simple(const char *body) {
    A.linger_until = -1;
    size_t mark = frame_open();
    buf_adds(&A.outbuf, body);
    frame_close(mark);
}

static void send_text(const char *id, size_t idlen, const char *name, const char *text,
                      size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t k = char_offset(text + i, n - i, MAX_TEXT_CHUNK);
        size_t mark = frame_open();
        buf_adds(&A.outbuf, "{\"t\":\"out\",\"id\":");
        json_str(&A.outbuf, id, idlen, false);
        buf_adds(&A.outbuf, ",\"name\":");
        json_cstr(&A.outbuf, name);
        buf_adds(&A.outbuf, ",\"text\":");
        json_str(&A.outbuf, text + i, k, false);
        buf_addc(&A.outbuf, '}');
        if (!frame_close(mark)) log_msg("an out frame exceeded the limit; dropped");
        i += k;
    }
}

typedef struct {
    const char *status;
    bool has_exit;
    long long exit_code;
    const char *exit_literal; /* a worker's integer, printed as is */
    size_t exit_literal_len;
    const char *error;        /* WTF-8 or NULL */
    size_t errlen;
    double elapsed_ms;
    long long peak_kb; /* < 0: unknown (sent as null) */
    bool restarted, truncated, oom_killed;
    double compile_ms; /* < 0: none */
} Done;

static void send_done(const char *id, size_t idlen, const Done *d) {
    A.linger_until = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        size_t mark = frame_open();
        Buf *b = &A.outbuf;
        buf_adds(b, "{\"t\":\"done\",\"id\":");
        json_str(b, id, idlen, false);
        buf_adds(b, ",\"status\":");
        json_cstr(b, d->status);
        buf_adds(b, ",\"exit_code\":");
        if (d->exit_literal) buf_add(b, d->exit_literal, d->exit_literal_len);
        else if (d->has_exit) buf_addf(b, "%lld", d->exit_code);
        else buf_adds(b, "null");
        buf_adds(b, ",\"execution_time_ms\":");
        py_float_repr(b, py_round(d->elapsed_ms, 3));
        buf_adds(b, ",\"memory_used_mb\":");
        if (d->peak_kb < 0) buf_adds(b, "null");
        else py_float_repr(b, py_round((double)d->peak_kb / 1024.0, 2));
        buf_adds(b, ",\"error\":");
        if (d->error) {
            size_t n = d->errlen;
            if (attempt == 1) n = char_offset(d->error, n, MAX_ERROR_LEN);
            json_str(b, d->error, n, false);
        } else {
            buf_adds(b, attempt == 1 ? "\"None\"" : "null");
        }
        buf_adds(b, d->restarted ? ",\"restarted\":true" : ",\"restarted\":false");
        buf_adds(b, d->truncated ? ",\"truncated\":true" : ",\"truncated\":false");
        if (d->oom_killed) buf_adds(b, ",\"oom_killed\":true");
        if (d->compile_ms >= 0) {
            buf_adds(b, ",\"compile_time_ms\":");
            py_float_repr(b, py_round(d->compile_ms, 3));
        }
        buf_addc(b, '}');
        if (frame_close(mark)) return;
    }
}

/* ------------------------------------------------------------------------------- agent */

static void kill_user_processes(void);
static void start_worker(void);
static void read_stream(Stream *s, size_t size, size_t *got);
static void on_ctl_readable(void);

static void shutdown_agent(int code) {
    kill_user_processes();
    if (A.cell && A.cell->workdir) remove_tree(A.cell->workdir);
    A.exit_code = code;
}

static void free_cell(Cell *c) {
    if (!c) return;
    free(c->id);
    free(c->workdir);
    free(c);
}

static void free_exec(Exec *e) {
    if (!e) return;
    free(e->id);
    free(e->code);
    free(e);
}

static size_t streams_of(Stream **out) {
    if (A.language == L_RUST) {
        *out = A.rust_streams;
        return 2;
    }
    if (A.worker) {
        *out = A.worker->streams;
        return 2;
    }
    *out = NULL;
    return 0;
}

/* Output written between cells (by a thread, an interval or a `command &` that an earlier
 * cell left running) has no cell to carry it: a cell's `done` comes after all of its output.
 * So it waits, decoded, for the next cell, whose output it starts (as it would, had it been
 * written a moment later), followed by a line on stderr that says where it came from. The
 * first BETWEEN_KEEP bytes wait, as records of one stream each (a byte for the stream, four
 * for the length, the text; a write to the stream of the last record extends it); the rest
 * is counted and dropped. A restart drops it all: it came from the interpreter it ends. */
#define BETWEEN_KEEP (64 * 1024)
/* Displays made between cells (a thread's figure) wait the same way, as records of their own
 * (BETWEEN_DISPLAY or BETWEEN_RESULT for the kind, four bytes of length, four of cost, then
 * the display's data as JSON), up to BETWEEN_DISPLAY_KEEP bytes; the rest are counted and
 * dropped. */
#define BETWEEN_DISPLAY_KEEP (2 * 1024 * 1024)
#define BETWEEN_DISPLAY 2
#define BETWEEN_RESULT 3

/* Big-endian 32-bit lengths of the records below. */
static void put_u32(unsigned char *p, size_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static size_t get_u32(const unsigned char *p) {
    return (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
}

static void hold_between(Stream *s, const unsigned char *data, size_t n) {
    size_t room = BETWEEN_KEEP - A.between_raw;
    size_t k = n < room ? n : room;
    A.between_dropped += (long long)(n - k);
    A.between_raw += k;
    Buf text = {0};
    /* a cut ends a partial character (also one begun by an earlier write) */
    if (k > 0 || (k < n && s->dec.npend > 0)) utf8_decode_part(&s->dec, data, k, k < n, &text);
    if (k < n) s->dec.npend = 0;
    size_t len = buf_size(&text);
    if (len) {
        unsigned char stream = strcmp(s->name, "stderr") == 0;
        Buf *b = &A.between;
        unsigned char *last = A.between_last < buf_size(b)
                                  ? (unsigned char *)buf_head(b) + A.between_last : NULL;
        if (last && last[0] == stream) {
            len += get_u32(last + 1);
        } else {
            A.between_last = buf_size(b);
            unsigned char h[5] = {stream};
            buf_add(b, h, sizeof h);
            last = (unsigned char *)buf_head(b) + A.between_last;
        }
        put_u32(last + 1, len);
        buf_add(b, buf_head(&text), buf_size(&text));
    }
    buf_free(&text);
}

/* A display made between cells: `data` is its data as JSON, `cost` what it counts against
 * a cell's output budget. */
static void hold_display(bool result, const Buf *data, int64_t cost) {
    size_t n = buf_size(data);
    if (n + 9 > BETWEEN_DISPLAY_KEEP - A.between_display_raw) { /* its record's 9 too */
        A.between_displays_dropped++;
        return;
    }
    A.between_display_raw += n + 9;
    A.between_last = buf_size(&A.between);
    unsigned char h[9] = {result ? BETWEEN_RESULT : BETWEEN_DISPLAY};
    put_u32(h + 1, n);
    put_u32(h + 5, (size_t)cost);
    buf_add(&A.between, h, sizeof h);
    buf_add(&A.between, buf_head(data), n);
}

static void drop_between(void) {
    buf_clear(&A.between);
    A.between_raw = 0;
    A.between_dropped = 0;
    A.between_last = SIZE_MAX;
    A.between_display_raw = 0;
    A.between_displays_dropped = 0;
}

/* Send text (valid UTF-8) as the cell's output, within what is left of its budget and at
 * most `most` bytes of it; false when it was cut. */
static bool forward_text(Cell *cell, const char *name, const char *text, size_t n,
                         int64_t most) {
    int64_t room = cell->max_output - cell->forwarded;
    bool cut = (int64_t)n > most || (int64_t)n > room;
    if (cut) {
        n = (size_t)(most < room ? (most > 0 ? most : 0) : (room > 0 ? room : 0));
        while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80) n--; /* whole characters */
        if (most >= room) cell->truncated = true;
    }
    if (n > 0) {
        cell->forwarded += (int64_t)n;
        send_text(cell->id, cell->idlen, name, text, n);
    }
    return !cut;
}

/* Send a display of `cell` (`data`: its data as JSON) if the cell's output budget has room
 * for its cost; false (and the cell truncated) when it has not. A frame too large to send
 * becomes a note of the same kind. */
static bool send_display(Cell *cell, const char *kind, const char *data, size_t n,
                         int64_t cost) {
    if (cell->forwarded + cost > cell->max_output) {
        cell->truncated = true;
        return false;
    }
    cell->forwarded += cost;
    A.linger_until = -1;
    for (int whole = 1; whole >= 0; whole--) {
        size_t mark = frame_open();
        Buf *b = &A.outbuf;
        buf_adds(b, "{\"t\":\"display\",\"id\":");
        json_str(b, cell->id, cell->idlen, false);
        buf_adds(b, ",\"kind\":\"");
        buf_adds(b, kind);
        buf_adds(b, "\",\"data\":");
        if (whole)
            buf_add(b, data, n);
        else
            buf_adds(b, "{\"text/plain\":\"<output too large to display>\"}");
        buf_addc(b, '}');
        if (frame_close(mark)) break;
    }
    return true;
}

/* The output that waited between cells, as the first output of the cell that starts: at
 * most half of the cell's budget, so that the cell's own output and the line saying where
 * the output came from still fit; what is past it is dropped whole, not some of each
 * record. */
static void send_between(Cell *cell) {
    const unsigned char *p = (const unsigned char *)buf_head(&A.between);
    size_t off = 0, size = buf_size(&A.between);
    int64_t share = cell->max_output / 2 - 160, sent = 0; /* room for the line, below */
    if (share < 0) share = 0;
    long long dropped = A.between_dropped, displays_dropped = A.between_displays_dropped;
    bool whole = true;
    while (off + 5 <= size) {
        size_t len = get_u32(p + off + 1);
        if (p[off] == BETWEEN_DISPLAY || p[off] == BETWEEN_RESULT) {
            int64_t cost = (int64_t)get_u32(p + off + 5);
            const char *kind = p[off] == BETWEEN_RESULT ? "execute_result" : "display_data";
            bool sent_it = whole && sent + cost <= share;
            if (sent_it) {
                int64_t before = cell->forwarded;
                sent_it = send_display(cell, kind, (const char *)p + off + 9, len, cost);
                sent += cell->forwarded - before;
            }
            if (!sent_it) displays_dropped++;
            off += 9 + len;
            continue;
        }
        const char *text = (const char *)p + off + 5;
        if (whole) {
            int64_t before = cell->forwarded;
            whole = forward_text(cell, p[off] ? "stderr" : "stdout", text, len, share - sent);
            sent += cell->forwarded - before;
            dropped += (long long)len - (cell->forwarded - before);
        } else {
            dropped += (long long)len;
        }
        off += 5 + len;
    }
    Buf m = {0};
    buf_adds(&m, "(the output above was written between cells, by work an earlier cell left"
                 " running");
    if (dropped > 0)
        buf_addf(&m, "; %lld more byte%s of it %s dropped", dropped, dropped == 1 ? "" : "s",
                 dropped == 1 ? "was" : "were");
    if (displays_dropped > 0)
        buf_addf(&m, "; %lld display%s of it %s dropped", displays_dropped,
                 displays_dropped == 1 ? "" : "s", displays_dropped == 1 ? "was" : "were");
    buf_adds(&m, ")\n");
    forward_text(cell, "stderr", buf_head(&m), buf_size(&m), INT64_MAX);
    buf_free(&m);
    drop_between();
}

/* Whether a Rust cell's stderr said `word`, in this read or across the last one's end: a
 * program's stderr is unbuffered, so `{:?}` of an error comes in pieces ("kind", ": ",
 * "Empty"), a read each at times. */
static bool rust_said(const unsigned char *joined, size_t nj, const unsigned char *data,
                      size_t n, const char *word) {
    size_t w = strlen(word);
    return memmem(joined, nj, word, w) || memmem(data, n, word, w);
}

static void rust_scan_stderr(Cell *cell, const unsigned char *data, size_t n) {
    unsigned char joined[2 * RUST_TAIL];
    size_t head = n < RUST_TAIL ? n : RUST_TAIL;
    memcpy(joined, cell->err_tail, cell->err_tail_len);
    memcpy(joined + cell->err_tail_len, data, head);
    size_t nj = cell->err_tail_len + head;
    if (cell->compile_ms < 0) {
        cell->missing_crate = cell->missing_crate ||
            rust_said(joined, nj, data, n, "undeclared crate or module") || /* rustc 1.63 */
            rust_said(joined, nj, data, n, "unlinked crate") ||             /* later rustc */
            rust_said(joined, nj, data, n, "can't find crate for");
    } else if (cell->reads_stdin) {
        cell->empty_input = cell->empty_input ||
            rust_said(joined, nj, data, n, "kind: Empty") ||    /* a parse of "" */
            rust_said(joined, nj, data, n, "`None` value") ||   /* lines().next() */
            rust_said(joined, nj, data, n, "the len is 0") ||   /* v[0] of nothing */
            rust_said(joined, nj, data, n, "UnexpectedEof") ||  /* read_exact */
            rust_said(joined, nj, data, n, "empty string");     /* a parse's Display */
    }
    /* the last RUST_TAIL bytes said, for the next read */
    if (n >= RUST_TAIL) {
        memcpy(cell->err_tail, data + n - RUST_TAIL, RUST_TAIL);
        cell->err_tail_len = RUST_TAIL;
    } else {
        size_t keep = nj < RUST_TAIL ? nj : RUST_TAIL;
        memmove(cell->err_tail, joined + nj - keep, keep);
        cell->err_tail_len = keep;
    }
}

static void forward(Stream *s, const unsigned char *data, size_t n) {
    Cell *cell = A.cell;
    if (cell == NULL && A.last_cell != NULL) {
        hold_between(s, data, n);
        return;
    }
    if (cell == NULL) {
        Buf m = {0};
        buf_addf(&m, "%s before the first cell: ", s->name);
        py_bytes_repr(&m, data, n < 1000 ? n : 1000);
        log_buf(&m);
        buf_free(&m);
        return;
    }
    if (A.language == L_RUST && s == &A.rust_streams[1]) rust_scan_stderr(cell, data, n);
    int64_t room = cell->max_output - cell->forwarded;
    if ((int64_t)n > room) {
        n = room > 0 ? (size_t)room : 0;
        cell->truncated = true;
    }
    if (n == 0) return;
    cell->forwarded += (int64_t)n;
    double now = monotonic();
    if (now - A.busy_start >= BUSY_WINDOW) {
        A.busy_start = now;
        A.busy_reads = 0;
    }
    if (n < BUSY_SMALL && ++A.busy_reads > BUSY_FRAMES) A.quiet_until = now + BUSY_PAUSE;
    if (A.lingering && A.cell == cell && buf_size(&A.outbuf) == 0)
        A.linger_until = now + LINGER;
    Buf text = {0};
    utf8_decode_part(&s->dec, data, n, false, &text);
    send_text(cell->id, cell->idlen, s->name, text.data ? buf_head(&text) : "", buf_size(&text));
    buf_free(&text);
}

static unsigned char iobuf[1 << 16];

/* Read up to size bytes from a user pipe and forward them. */
static void read_stream(Stream *s, size_t size, size_t *got) {
    *got = 0;
    if (size > sizeof iobuf) size = sizeof iobuf;
    ssize_t r = read(s->fd, iobuf, size);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) {
        s->eof = true;
        return;
    }
    forward(s, iobuf, (size_t)r);
    *got = (size_t)r;
}

/* Read and forward up to `pending` more bytes from a user pipe, as far as it has them. */
static void read_stream_bytes(Stream *s, long pending) {
    while (pending > 0) {
        size_t got;
        size_t want = (size_t)pending < MAX_TEXT_CHUNK ? (size_t)pending : MAX_TEXT_CHUNK;
        read_stream(s, want, &got);
        if (got == 0) break;
        pending -= (long)got;
    }
}

/* Whether fd was reported readable by the current wait. */
static bool batch_was_ready(int fd) {
    for (size_t i = 0; i < A.nbatch; i++)
        if (A.batch[i].fd == fd) return (A.batch[i].events & POLLIN) && A.batch[i].revents;
    return false;
}

/* after: which of the ns (at most 2) streams hold data now. The worker wrote its output before
 * its `done`, which has just been read, so everything it wrote is in the pipes by now, and
 * one zero-timeout poll of them all tells which hold any. The wait that delivered `done`
 * does not tell: it looked at the pipes before `done` was read, and the worker may have
 * written output and `done` after that look and before the read of its control pipe (a
 * helper's probe lost a cell's stdout after `plt.show()` that way, in 4% of cells). A pipe
 * that wait reported readable has data (nobody else reads it) and is not polled again. */
static void streams_with_data(Stream *ss, size_t ns, bool *has_data) {
    struct pollfd fds[2];
    size_t which[2];
    nfds_t n = 0;
    for (size_t i = 0; i < ns && i < 2; i++) {
        has_data[i] = !ss[i].eof && batch_was_ready(ss[i].fd);
        if (ss[i].eof || has_data[i]) continue;
        fds[n] = (struct pollfd){.fd = ss[i].fd, .events = POLLIN};
        which[n++] = i;
    }
    if (n == 0) return;
    int r;
    do r = poll(fds, n, 0);
    while (r < 0 && errno == EINTR);
    for (nfds_t j = 0; j < n; j++) has_data[which[j]] = r < 0 || fds[j].revents != 0;
}

/* Forward what is already in the pipes (not more: a background job may never stop).
 *
 * after: the worker's `done` was just read while handling a wait. A pipe with data (see
 * streams_with_data) is read at once, and a read that comes back short of MAX_TEXT_CHUNK
 * emptied it of everything written before `done`: no FIONREAD for it, and none for a pipe
 * without data. The pipe's own callback in this wait is skipped (it would find the pipe
 * empty). */
static void drain_streams(Cell *cell, bool after) {
    Stream *ss;
    size_t ns = streams_of(&ss);
    bool has_data[2] = {true, true};
    if (after) streams_with_data(ss, ns, has_data);
    for (size_t i = 0; i < ns; i++) {
        Stream *s = &ss[i];
        long pending;
        if (after && !has_data[i]) {
            pending = 0;
        } else if (after && !s->eof && !s->handled) {
            size_t got;
            read_stream(s, MAX_TEXT_CHUNK, &got);
            pending = got == MAX_TEXT_CHUNK ? pending_bytes(s->fd) : 0;
        } else {
            pending = pending_bytes(s->fd);
        }
        if (A.in_batch) s->handled = true;
        read_stream_bytes(s, pending);
        Buf tail = {0};
        utf8_decode_part(&s->dec, NULL, 0, true, &tail);
        s->dec.npend = 0;
        if (buf_size(&tail) && !cell->truncated)
            send_text(cell->id, cell->idlen, s->name, buf_head(&tail), buf_size(&tail));
        buf_free(&tail);
    }
}

static bool can_start(void) {
    if (A.language == L_RUST) return true;
    return A.worker && A.worker->ready && !A.restart_pending;
}

static void finish_cell(const char *status, bool has_exit, long long exit_code,
                        const char *exit_literal, size_t exit_literal_len, const char *error,
                        size_t errlen, bool restarted, long long peak_kb, bool after) {
    Cell *cell = A.cell;
    if (!cell) return;
    double elapsed_ms = (monotonic() - cell->started) * 1000;
    drain_streams(cell, after);
    Worker *w = A.worker;
    bool unknown = peak_kb < 0; /* the caller could not tell */
    if (w && !w->reaped && !restarted) {
        long long hwm = 0;
        if (proc_read_field(w->status_fd, "VmHWM:", &hwm)) {
            if (hwm > peak_kb) peak_kb = hwm;
        } else {
            unknown = true; /* gVisor's /proc has no VmHWM */
        }
    }
    if (cell->peak_kb > peak_kb) peak_kb = cell->peak_kb;
    if (unknown && peak_kb <= 0) peak_kb = -1; /* null, not a peak of 0.0 MB */
    Done d = {.status = status, .has_exit = has_exit, .exit_code = exit_code,
              .exit_literal = exit_literal, .exit_literal_len = exit_literal_len,
              .error = error, .errlen = errlen, .elapsed_ms = elapsed_ms, .peak_kb = peak_kb,
              .restarted = restarted, .truncated = cell->truncated, .compile_ms = -1};
    Buf err2 = {0};
    long long oom_after;
    if (cell->oom_known && oom_kills(&oom_after) && oom_after > cell->oom_before) {
        d.oom_killed = true;
        if (strcmp(status, "success") != 0) {
            buf_adds(&err2, "memory limit exceeded (the kernel killed a process); ");
            if (error) buf_add(&err2, error, errlen);
            /* rstrip("; ") */
            while (buf_size(&err2) && (err2.data[err2.len - 1] == ';' ||
                                       err2.data[err2.len - 1] == ' '))
                err2.len--;
            d.error = buf_cstr(&err2);
            d.errlen = buf_size(&err2);
        }
    }
    if (cell->compile_ms >= 0) d.compile_ms = cell->compile_ms;
    if (A.state_lost) {
        d.restarted = true;
        A.state_lost = false;
    }
    send_done(cell->id, cell->idlen, &d);
    buf_free(&err2);
    if (cell->workdir) remove_tree(cell->workdir);
    free_cell(A.last_cell);
    A.last_cell = cell;
    A.cell = NULL;
}

static void finish_simple(const char *status, long long exit_code, const char *error,
                          long long peak_kb) {
    finish_cell(status, true, exit_code, NULL, 0, error, error ? strlen(error) : 0, false,
                peak_kb, false);
}

/* ------------------------------------------------------------------------------- rust */

static bool spawn_rust(char *const argv[], const char *cwd, int handler) {
    pid_t pid = spawn(argv, A.rust_write_fds[0], A.rust_write_fds[1], NULL, 0, cwd);
    if (pid < 0) {
        int err = (int)-pid;
        Buf m = {0};
        add_oserror(&m, err);
        buf_adds(&m, ": ");
        py_str_repr(&m, argv[0], strlen(argv[0]));
        buf_addc(&m, '\n');
        if (A.cell) send_text(A.cell->id, A.cell->idlen, "stderr", buf_head(&m), buf_size(&m));
        else send_text("", 0, "stderr", buf_head(&m), buf_size(&m));
        buf_clear(&m);
        buf_addf(&m, "could not start %s: %s", argv[0], strerror(err));
        finish_simple("error", 127, buf_cstr(&m), 0);
        buf_free(&m);
        return false;
    }
    A.rust_child = pid;
    add_child(pid, handler);
    return true;
}

/* tempfile.mkdtemp(prefix="ws-rust-") under $TMPDIR (else /tmp): eight random characters
 * of [a-z0-9_], mode 0700, another name on a collision. */
static bool make_tempdir(Buf *path, int *err) {
    static const char chars[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
    const char *tmp = getenv("TMPDIR");
    struct stat st;
    if (!tmp || !*tmp || stat(tmp, &st) != 0 || !S_ISDIR(st.st_mode)) tmp = "/tmp";
    size_t tlen = strlen(tmp);
    while (tlen > 1 && tmp[tlen - 1] == '/') tlen--;
    for (int attempt = 0; attempt < 10000; attempt++) {
        unsigned char rnd[8];
        if (getrandom(rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd) {
            uint64_t x = (uint64_t)(monotonic() * 1e9) ^ ((uint64_t)getpid() << 32) ^
                         (uint64_t)attempt * 0x9E3779B97F4A7C15ull;
            for (size_t k = 0; k < sizeof rnd; k++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                rnd[k] = (unsigned char)x;
            }
        }
        buf_clear(path);
        buf_add(path, tmp, tlen);
        buf_adds(path, "/ws-rust-");
        for (size_t k = 0; k < sizeof rnd; k++) buf_addc(path, chars[rnd[k] % (sizeof chars - 1)]);
        if (mkdir(buf_cstr(path), 0700) == 0) return true;
        if (errno != EEXIST) {
            *err = errno;
            return false;
        }
    }
    *err = EEXIST;
    return false;
}

/* The crate root a snippet is compiled from: the snippet, in main.rs, is the block its main
 * includes. */
#define RUST_ROOT "ws_snippet.rs"
#define RUST_ROOT_SOURCE                                                                  \
    "#[allow(unreachable_code)] fn main() -> Result<(), Box<dyn std::error::Error>> {\n" \
    "    let _ = include!(\"main.rs\");\n    Ok(())\n}\n"
/* ... and the crate root of a snippet that ends as such a main does (`Ok(())`): the block
 * is main's value. */
#define RUST_ROOT_RESULT_SOURCE                                                           \
    "#[allow(unreachable_code)] fn main() -> Result<(), Box<dyn std::error::Error>> {\n" \
    "    include!(\"main.rs\")\n}\n"
/* ... and of a snippet with no `?` in its code, which needs no Result: there `return;`
 * ends the program, as in a main of its own (it failed with E0069, "`return;` in a function
 * whose return type is not `()`"). */
#define RUST_ROOT_UNIT_SOURCE                                                             \
    "#[allow(unreachable_code)] fn main() {\n"                                            \
    "    let _ = include!(\"main.rs\");\n}\n"

static bool rust_ident_char(unsigned char c) {
    return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c >= 0x80;
}

/* Where the Rust token at `i` (a comment, a string or a char literal) ends, or `i` when none
 * starts there. Comments nest; a string or a comment left open runs to the end. */
static size_t rust_skip_literal(const char *s, size_t n, size_t i) {
    if (s[i] == '/' && i + 1 < n && s[i + 1] == '/') {
        const char *nl = memchr(s + i, '\n', n - i);
        return nl ? (size_t)(nl - s) + 1 : n;
    }
    if (s[i] == '/' && i + 1 < n && s[i + 1] == '*') {
        size_t depth = 1, j = i + 2;
        while (j < n && depth > 0) {
            if (s[j] == '/' && j + 1 < n && s[j + 1] == '*') {
                depth++;
                j += 2;
            } else if (s[j] == '*' && j + 1 < n && s[j + 1] == '/') {
                depth--;
                j += 2;
            } else {
                j++;
            }
        }
        return j;
    }
    if (s[i] == '"') {
        size_t j = i + 1;
        while (j < n && s[j] != '"') j += s[j] == '\\' ? 2 : 1;
        return j < n ? j + 1 : n;
    }
    /* r"...", r#"..."# (also after b or c, which the caller passes over as a word's start) */
    if (s[i] == 'r' && i + 1 < n && (s[i + 1] == '"' || s[i + 1] == '#')) {
        size_t hashes = 0, j = i + 1;
        while (j < n && s[j] == '#') {
            hashes++;
            j++;
        }
        if (j >= n || s[j] != '"') return i;  /* r#ident, a raw identifier */
        for (j++; j < n; j++) {
            if (s[j] != '"') continue;
            size_t k = 0;
            while (k < hashes && j + 1 + k < n && s[j + 1 + k] == '#') k++;
            if (k == hashes) return j + 1 + k;
        }
        return n;
    }
    /* 'x', '\n', '\u{1F600}', '"'; a lifetime or a label ('a) is not a literal */
    if (s[i] == '\'') {
        size_t j = i + 1;
        if (j < n && s[j] == '\\') {
            for (j += 2; j < n && j < i + 14; j++)
                if (s[j] == '\'') return j + 1;
            return i + 1;
        }
        if (j < n) {
            unsigned char c = (unsigned char)s[j];
            size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
            if (j + len < n && s[j + len] == '\'') return j + len + 1;
        }
        return i + 1;
    }
    return i;
}

/* Where the comment, string or char literal at `i` ends, or `i` when none starts there. */
static size_t rust_skip_token(const char *s, size_t n, size_t i) {
    bool word_start = i == 0 || !rust_ident_char((unsigned char)s[i - 1]);
    /* A raw string's r opens a word, or follows the b or c that does (br"..."). */
    bool raw_ok = word_start || ((s[i - 1] == 'b' || s[i - 1] == 'c') &&
                                 (i < 2 || !rust_ident_char((unsigned char)s[i - 2])));
    return s[i] != 'r' || raw_ok ? rust_skip_literal(s, n, i) : i;
}

/* Past the blanks and comments at `i`. */
static size_t rust_skip_blanks(const char *s, size_t n, size_t i) {
    while (i < n) {
        if (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') i++;
        else if (s[i] == '/' && rust_skip_literal(s, n, i) > i) i = rust_skip_literal(s, n, i);
        else break;
    }
    return i;
}

/* Whether a snippet's last expression is `Ok(...)` or `Err(...)`, so spelled, as a main that
 * returns a Result ends (`?` above it, `Ok(())` last). Dropped as other last values are,
 * such a value's error type was unknown, and rustc refused the cell with "type annotations
 * needed", pointing into the wrapper (a review of model-written cells). The last
 * expression is what follows the last `;` or `}` outside any bracket. */
static bool rust_ends_in_result(const char *s, size_t n) {
    size_t depth = 0, tail = 0, i = 0;
    while (i < n) {
        size_t end = rust_skip_token(s, n, i);
        if (end > i) {
            i = end;
            continue;
        }
        if (s[i] == '(' || s[i] == '[' || s[i] == '{') {
            depth++;
        } else if ((s[i] == ')' || s[i] == ']' || s[i] == '}') && depth > 0) {
            depth--;
            if (depth == 0 && s[i] == '}') tail = i + 1;
        } else if (s[i] == ';' && depth == 0) {
            tail = i + 1;
        }
        i++;
    }
    i = rust_skip_blanks(s, n, tail);
    size_t word = i;
    while (i < n && rust_ident_char((unsigned char)s[i])) i++;
    if (!(i - word == 2 && memcmp(s + word, "Ok", 2) == 0) &&
        !(i - word == 3 && memcmp(s + word, "Err", 3) == 0))
        return false;
    i = rust_skip_blanks(s, n, i);
    if (i >= n || s[i] != '(') return false;
    for (depth = 0; i < n;) {
        size_t end = rust_skip_token(s, n, i);
        if (end > i) {
            i = end;
            continue;
        }
        if (s[i] == '(' || s[i] == '[' || s[i] == '{') depth++;
        else if ((s[i] == ')' || s[i] == ']' || s[i] == '}') && --depth == 0) break;
        i++;
    }
    return i < n && rust_skip_blanks(s, n, i + 1) == n;
}

/* Whether a snippet has a `?` in its code (not in a comment, string or char literal): the
 * try operator needs main to return a Result (`?Sized` counts too: no harm, the Result main
 * serves it as before). */
static bool rust_has_question(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t end = rust_skip_token(s, n, i);
        if (end > i) {
            i = end;
            continue;
        }
        if (s[i] == '?') return true;
        i++;
    }
    return false;
}

/* Whether a Rust source declares `fn main` (the word `fn`, blanks, the word `main`) in its
 * code: a mention in a comment, a string or a char literal does not count (`// not fn main
 * here` left a snippet unwrapped, and rustc said that main was missing: a review). */
static bool rust_has_main(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        bool word_start = i == 0 || !rust_ident_char((unsigned char)s[i - 1]);
        size_t end = rust_skip_token(s, n, i);
        if (end > i) {
            i = end;
            continue;
        }
        if (word_start && s[i] == 'f' && i + 1 < n && s[i + 1] == 'n') {
            size_t j = i + 2;
            while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) j++;
            if (j > i + 2 && n - j >= 4 && memcmp(s + j, "main", 4) == 0 &&
                (j + 4 == n || !rust_ident_char((unsigned char)s[j + 4])))
                return true;
        }
        i++;
    }
    return false;
}

/* Whether the word at `i` (to `end`) is `w`. */
static bool rust_word_is(const char *s, size_t i, size_t end, const char *w) {
    return end - i == strlen(w) && memcmp(s + i, w, end - i) == 0;
}

/* Whether a snippet (no `fn main`) is items alone, one of them a test (`#[test]`), as a
 * model writes a function and its tests: the Rust playground runs those tests, and
 * wrapped in a main they were items of a block no one called, so the cell passed running
 * nothing (a review). Each thing at the top level must start as an item does (an
 * attribute, `fn`, `struct`, `mod`, `use`, `impl`, ...); a statement (`let`, a call) makes
 * the snippet a program's body, as before. */
static bool rust_is_test_items(const char *s, size_t n) {
    static const char *const ITEM_WORDS[] = {
        "fn", "pub", "struct", "enum", "union", "impl", "trait", "mod", "use", "const", "static",
        "type", "extern", "unsafe", "async", "macro_rules", NULL};
    size_t depth = 0, i = 0;
    bool at_start = true, tests = false;
    while (i < n) {
        size_t end = rust_skip_token(s, n, i);
        if (end > i) {  /* a comment, or a literal (which no item starts with) */
            if (depth == 0 && at_start && !(s[i] == '/' && end - i >= 2 &&
                                            (s[i + 1] == '/' || s[i + 1] == '*')))
                return false;
            i = end;
            continue;
        }
        char c = s[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            i++;
            continue;
        }
        if (c == '#') {  /* an attribute? `#[test]` is a test (in a `mod tests` too) */
            size_t j = rust_skip_blanks(s, n, i + 1 < n && s[i + 1] == '!' ? i + 2 : i + 1);
            if (j < n && s[j] == '[') {
                size_t w = rust_skip_blanks(s, n, j + 1), e = w;
                while (e < n && rust_ident_char((unsigned char)s[e])) e++;
                size_t after = rust_skip_blanks(s, n, e);
                if (rust_word_is(s, w, e, "test") && after < n && s[after] == ']') tests = true;
            }
            if (!(depth == 0 && at_start)) {
                i++;
                continue;
            }
            /* At the top level, passed over whole: what it covers decides. */
            if (j >= n || s[j] != '[') return false;
            size_t level = 0;
            for (i = j; i < n; i++) {
                size_t e = rust_skip_token(s, n, i);
                if (e > i) {
                    i = e - 1;
                    continue;
                }
                if (s[i] == '[' || s[i] == '(' || s[i] == '{') level++;
                else if ((s[i] == ']' || s[i] == ')' || s[i] == '}') && --level == 0) break;
            }
            if (i >= n) return false;  /* left open */
            i++;
            continue;
        }
        if (depth == 0 && at_start) {
            size_t w = i;
            while (i < n && rust_ident_char((unsigned char)s[i])) i++;
            bool item = false;
            for (const char *const *k = ITEM_WORDS; *k && !item; k++)
                item = rust_word_is(s, w, i, *k);
            if (!item) return false;
            /* `unsafe { ... }`, `async move { ... }` and `union(a, b)` are statements. */
            size_t j = rust_skip_blanks(s, n, i);
            bool block = rust_word_is(s, w, i, "unsafe") || rust_word_is(s, w, i, "async");
            if (block && (j >= n || s[j] == '{' || (n - j >= 4 && memcmp(s + j, "move", 4) == 0)))
                return false;
            if (rust_word_is(s, w, i, "union") && (j >= n || !rust_ident_char((unsigned char)s[j])))
                return false;
            at_start = false;
            continue;
        }
        if (c == '(' || c == '[' || c == '{') {
            depth++;
        } else if ((c == ')' || c == ']' || c == '}') && depth > 0) {
            if (--depth == 0 && c == '}') at_start = true;
        } else if (c == ';' && depth == 0) {
            at_start = true;
        }
        i++;
    }
    return tests;
}

/* Whether `#!` at `i` opens an inner attribute: `#!`, blanks, `[`. */
static bool rust_inner_attribute_at(const char *s, size_t n, size_t i) {
    if (i + 2 > n || s[i] != '#' || s[i + 1] != '!') return false;
    size_t j = i + 2;
    while (j < n && (s[j] == ' ' || s[j] == '\t')) j++;
    return j < n && s[j] == '[';
}

/* The inner attributes (`#![allow(unused)]`) that open a snippet, from `i` (past its
 * shebang) and between blanks and comments: their [start, end) offsets in `at`, at most
 * `max` of them; how many. Only there does Rust take them (as the crate's), and a mention
 * in a comment or a string is none. */
static size_t rust_leading_attributes(const char *s, size_t n, size_t i, size_t (*at)[2],
                                      size_t max) {
    size_t count = 0;
    for (;;) {
        i = rust_skip_blanks(s, n, i);
        if (count == max || !rust_inner_attribute_at(s, n, i)) return count;
        size_t j = i + 2, depth = 0;
        bool closed = false;
        while (j < n && !closed) {
            size_t end = rust_skip_token(s, n, j);
            if (end > j) {
                j = end;
                continue;
            }
            if (s[j] == '[' || s[j] == '(' || s[j] == '{') depth++;
            else if ((s[j] == ']' || s[j] == ')' || s[j] == '}') && depth > 0 && --depth == 0)
                closed = true;
            j++;
        }
        if (!closed) return count;  /* left open: rustc says so where it stands */
        at[count][0] = i;
        at[count][1] = j;
        count++;
        i = j;
    }
}

/* The length of a shebang line (`#!` that opens no inner attribute) starting a Rust source,
 * its newline included; 0 when there is none. */
static size_t rust_shebang_len(const char *s, size_t n) {
    if (n < 2 || s[0] != '#' || s[1] != '!' || rust_inner_attribute_at(s, n, 0)) return 0;
    const char *nl = memchr(s, '\n', n);
    return nl ? (size_t)(nl - s) + 1 : n;
}

/* `s` as UTF-8 with each lone surrogate (WTF-8) as '?': encode("utf-8", "replace"). */
static void add_replacing_surrogates(Buf *b, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t c;
        size_t k = wtf8_next((const unsigned char *)s + i, n - i, &c);
        if (c >= 0xD800 && c <= 0xDFFF) buf_addc(b, '?');
        else buf_add(b, s + i, k);
        i += k;
    }
}

/* Write `n` bytes to `fd` and close it; false with the errno in `*err` when either fails. */
static bool write_file(int fd, const char *data, size_t n, int *err) {
    bool ok = true;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, data + done, n - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            ok = false;
            *err = errno;
            break;
        }
        done += (size_t)w;
    }
    if (close(fd) != 0 && ok) {
        ok = false;
        *err = errno;
    }
    return ok;
}

/* rustc's -C opt-level for Rust cells: WS_SANDBOX_RUST_OPT_LEVEL (the service's
 * RUST_OPT_LEVEL), one of 0, 1, 2, 3, s and z; 0 (the fastest to compile) otherwise. */
static const char *rust_opt_level(void) {
    static const char *const levels[] = {"0", "1", "2", "3", "s", "z"};
    const char *chosen = getenv("WS_SANDBOX_RUST_OPT_LEVEL");
    for (size_t i = 0; chosen && i < sizeof levels / sizeof *levels; i++)
        if (strcmp(chosen, levels[i]) == 0) return levels[i];
    return "0";
}

static void start_rust(Cell *cell, const char *code, size_t codelen) {
    Buf dir = {0};
    Buf err = {0};
    int e;
    if (!make_tempdir(&dir, &e)) {
        buf_adds(&err, "could not write the program: ");
        add_oserror(&err, e);
        buf_adds(&err, ": ");
        py_str_repr(&err, buf_head(&dir), buf_size(&dir));
        finish_simple("error", 1, buf_cstr(&err), 0);
        buf_free(&err);
        buf_free(&dir);
        return;
    }
    char *path = (char *)buf_cstr(&dir);
    Buf file = {0};
    buf_addf(&file, "%s/main.rs", path);
    int fd = open(buf_cstr(&file), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    bool ok = fd >= 0;
    e = errno;
    /* A snippet without `fn main` (statements and items, as a model often writes them) is
     * a block, in main.rs, that the main of another file includes: a main that returns a
     * Result (`?` works) and drops the block's value (a last expression without `;` is
     * fine). Items (use, fn, struct, impl) are allowed in it. Only the block's `{` comes
     * before the cell's first line, so diagnostics name main.rs with the cell's own lines
     * and its own text (that line's columns one to the right). A snippet's opening inner
     * attributes go to the crate root (below). A snippet that ends as a main returning a
     * Result does (`Ok(())` or `Err(...)` last) is main's value, not dropped: its error
     * type is main's. */
    bool wrap = !rust_has_main(code, codelen);
    /* A function and its tests, no main: built as rustc --test builds them, and run. */
    bool tests = wrap && rust_is_test_items(code, codelen);
    if (tests) wrap = false;
    cell->reads_stdin = !tests && (memmem(code, codelen, "stdin()", 7) ||
                                   memmem(code, codelen, "/dev/stdin", 10));
    size_t shebang = rust_shebang_len(code, codelen);
    bool result = wrap && rust_ends_in_result(code + shebang, codelen - shebang);
    /* The inner attributes that open a snippet (`#![allow(unused)]`) are not allowed on a
     * block: they go to the crate root, before its main, where they cover main.rs too, and
     * are blanked in main.rs, so the lines and columns after them hold. (The cell was once
     * the plain body of a `fn main() {}` instead: `?` and a last value failed there, and
     * rustc showed that main.) */
    size_t attrs[16][2];
    size_t nattrs = wrap ? rust_leading_attributes(code, codelen, shebang, attrs, 16) : 0;
    if (ok) {
        Buf src = {0};
        /* rustc accepts a shebang line only as a crate root's first: it is a comment in a
         * block; the block opens on the next line, so the line numbers still hold. */
        size_t head = wrap ? shebang : 0;
        if (head) buf_adds(&src, "// ");
        add_replacing_surrogates(&src, code, head);
        if (head && code[head - 1] != '\n') buf_addc(&src, '\n');  /* a shebang alone */
        if (wrap) buf_addc(&src, '{');
        size_t from = head;
        for (size_t a = 0; a < nattrs; a++) {
            add_replacing_surrogates(&src, code + from, attrs[a][0] - from);
            for (size_t k = attrs[a][0]; k < attrs[a][1]; k++)
                buf_addc(&src, code[k] == '\n' ? '\n' : ' ');
            from = attrs[a][1];
        }
        add_replacing_surrogates(&src, code + from, codelen - from);
        if (wrap) buf_adds(&src, "\n}\n");
        ok = write_file(fd, buf_head(&src), buf_size(&src), &e);
        buf_free(&src);
    }
    if (ok && wrap) {
        buf_clear(&file);
        buf_addf(&file, "%s/" RUST_ROOT, path);
        fd = open(buf_cstr(&file), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        Buf root = {0};
        for (size_t a = 0; a < nattrs; a++) {
            add_replacing_surrogates(&root, code + attrs[a][0], attrs[a][1] - attrs[a][0]);
            buf_addc(&root, '\n');
        }
        buf_adds(&root, result ? RUST_ROOT_RESULT_SOURCE
                        : rust_has_question(code + shebang, codelen - shebang)
                            ? RUST_ROOT_SOURCE
                            : RUST_ROOT_UNIT_SOURCE);
        ok = fd >= 0 && write_file(fd, buf_head(&root), buf_size(&root), &e);
        if (fd < 0) e = errno;
        buf_free(&root);
    }
    if (!ok) {
        buf_adds(&err, "could not write the program: ");
        add_oserror(&err, e);
        if (fd < 0) {
            buf_adds(&err, ": ");
            py_str_repr(&err, buf_cstr(&file), buf_size(&file));
        }
        finish_simple("error", 1, buf_cstr(&err), 0);
        buf_free(&err);
        buf_free(&dir);
        buf_free(&file);
        return;
    }
    buf_free(&file);
    cell->workdir = xstrndup(path, strlen(path));
    buf_free(&dir);
    const char *rustc = which(3, "rustc");
    char opt_level[16];
    snprintf(opt_level, sizeof opt_level, "opt-level=%s", rust_opt_level());
    /* Overflow checks and debug assertions stay on at every level: a cell's arithmetic
     * fails as it does in a debug build (past level 0 rustc would let it wrap silently). */
    char *argv[] = {(char *)(rustc ? rustc : "rustc"), "--edition", "2021", "--crate-name",
                    "main", "-C", opt_level, "-C", "overflow-checks=on", "-C",
                    "debug-assertions=on", "-o", "main", wrap ? RUST_ROOT : "main.rs",
                    tests ? "--test" : NULL, NULL};
    spawn_rust(argv, cell->workdir, H_RUSTC);
}

/* A program that reads stdin gets end of file at once, and then fails on the empty input in
 * one of many ways (an Option or a parse unwrapped, an index out of bounds, `?` on a parse):
 * a model read the panic, not the cause. Said when a program whose code calls stdin() ends
 * with a panic's 101 or an error's 1 after telling, on stderr, of something empty. */
#define RUST_NO_INPUT \
    "the program reads stdin, which is empty here (a cell gets no input): put the values in" \
    " the code"

#define RUST_NO_CRATES                                                                   \
    "only Rust's standard library is here: crates (rand, serde, regex, tokio...) are not, " \
    "and there is no Cargo or network to get them"

/* The cell, once all that its Rust compiler or program wrote is read: the exit may be
 * handled before its last write is read from the pipe, and what forward learns from it
 * (missing_crate, empty_input) is not known until then. */
static Cell *all_read(Cell *cell) {
    drain_streams(cell, false);
    return cell;
}

static void on_rustc_exit(pid_t pid, int status, bool have_rusage, const struct rusage *ru) {
    A.rust_child = 0;
    discard_session(pid);
    Cell *cell = A.cell;
    if (!cell) return;
    /* rustc's time, when it compiled or failed on its own (one an interrupt stopped, or a
     * signal killed, compiled nothing: the cell's time is not its; an interrupt may end it
     * with a status, its linker's "signal: 2"), once its last words are read: a negative
     * compile_ms is what tells rust_scan_stderr that they are rustc's. */
    double compile_ms = (monotonic() - cell->started) * 1000;
    int code = have_rusage ? exitcode_of(status) : 0;
    if (code == 0 || (code > 0 && !cell->interrupted)) {
        all_read(cell);
        cell->compile_ms = compile_ms;
    }
    if (code != 0) {
        long long peak = have_rusage ? ru->ru_maxrss : 0;
        if (cell->interrupted) {
            finish_simple("interrupted", 128 + SIGINT, "interrupted", peak);
        } else if (code < 0) {
            Buf m = {0};
            buf_adds(&m, "rustc was killed by signal ");
            signal_description(&m, -code);
            finish_simple("error", 128 - code, buf_cstr(&m), peak);
            buf_free(&m);
        } else if (cell->missing_crate) {
            /* A crate from crates.io (rand, serde): rustc's message does not say why it is
             * missing, and a model tried again with another. */
            forward(&A.rust_streams[1], (const unsigned char *)RUST_NO_CRATES "\n",
                    strlen(RUST_NO_CRATES) + 1);
            finish_simple("error", code, "compilation failed: " RUST_NO_CRATES, peak);
        } else {
            finish_simple("error", code, "compilation failed", peak);
        }
        return;
    }
    Buf prog = {0};
    buf_addf(&prog, "%s/main", cell->workdir);
    char *argv[] = {(char *)buf_cstr(&prog), NULL};
    spawn_rust(argv, NULL, H_PROGRAM);
    buf_free(&prog);
}

static void on_program_exit(pid_t pid, int status, bool have_rusage, const struct rusage *ru) {
    A.rust_child = 0;
    discard_session(pid);
    if (!A.cell) return;
    int code = have_rusage ? exitcode_of(status) : 0;
    long long peak = have_rusage ? ru->ru_maxrss : 0;
    Buf m = {0};
    if (code == 0) {
        finish_simple("success", 0, NULL, peak);
    } else if ((code == 101 || code == 1) && A.cell->reads_stdin &&
               all_read(A.cell)->empty_input) { /* a panic; an Err */
        forward(&A.rust_streams[1], (const unsigned char *)"note: " RUST_NO_INPUT "\n",
                strlen("note: " RUST_NO_INPUT "\n"));
        buf_addf(&m, "process exited with code %d; " RUST_NO_INPUT, code);
        finish_simple("error", code, buf_cstr(&m), peak);
    } else if (code > 0) {
        buf_addf(&m, "process exited with code %d", code);
        finish_simple("error", code, buf_cstr(&m), peak);
    } else {
        int sig = -code;
        if (A.cell->interrupted && sig == SIGINT) {
            finish_simple("interrupted", 128 + sig, "interrupted", peak);
        } else {
            buf_adds(&m, "process was killed by signal ");
            signal_description(&m, sig);
            finish_simple("error", 128 + sig, buf_cstr(&m), peak);
        }
    }
    buf_free(&m);
}

/* ------------------------------------------------------------------------------- workers */

static const char *noun(void) { return A.language == L_SHELL ? "shell" : "interpreter"; }

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static void close_worker(Worker *w) {
    close_fd(&w->status_fd);
    close_fd(&w->clear_refs_fd);
    close_fd(&w->ctl_w);
    close_fd(&w->ctl_r);
    close_fd(&w->streams[0].fd);
    close_fd(&w->streams[1].fd);
    buf_free(&w->ctl_buf);
    buf_free(&w->ctl_out);
    free(w->broken);
    free(w);
}

/* How the Python worker starts: `python3 -I -S -u -X utf8 -c PY_BOOT FILE CTL_IN CTL_OUT`
 * runs FILE (worker_python.pyc, or the source when there is none) as __main__. Given a file to
 * run, the interpreter first opens it as a zip archive, then opens it twice more to tell
 * bytecode from source and load it: about 30 system calls, 2.5 ms of every sandbox's start
 * under gVisor. Here it is one open and one read. A .pyc of another Python version (the
 * interpreter upgraded, the image not rebuilt) gives way to the source beside it. */
static const char PY_BOOT[] =
    "def _boot():\n"
    " import sys,marshal,_frozen_importlib_external as b\n"
    " del sys.argv[0]\n"
    " p=sys.argv[0]\n"
    " with open(p,'rb') as f:d=f.read()\n"
    " if d[:4]!=b.MAGIC_NUMBER and p.endswith('.pyc'):\n"
    "  p=p[:-1]\n"
    "  with open(p,'rb') as f:d=f.read()\n"
    " g=globals();g['__file__']=p;del g['_boot']\n"
    " exec(marshal.loads(memoryview(d)[16:]) if d[:4]==b.MAGIC_NUMBER\n"
    "      else compile(d,p,'exec',dont_inherit=True),g)\n"
    "_boot()\n";

static void start_worker(void) {
    int code_p[2], res_p[2], out_p[2], err_p[2];
    if (pipe2(code_p, O_CLOEXEC) || pipe2(res_p, O_CLOEXEC) || pipe2(out_p, O_CLOEXEC) ||
        pipe2(err_p, O_CLOEXEC)) {
        log_msg("cannot create the worker's pipes: %s", strerror(errno));
        _exit(1);
    }
    char fd1[16], fd2[16];
    snprintf(fd1, sizeof fd1, "%d", code_p[0]);
    snprintf(fd2, sizeof fd2, "%d", res_p[1]);
    char script[PATH_MAX + 64];
    char *argv[12];
    size_t k = 0;
    if (A.language == L_PYTHON) {
        snprintf(script, sizeof script, "%s/worker_python.pyc", A.agent_dir);
        if (access(script, F_OK) != 0)
            snprintf(script, sizeof script, "%s/worker_python.py", A.agent_dir);
        const char *py = which(0, "python3");
        argv[k++] = (char *)(py ? py : "python3");
        argv[k++] = "-I";
        argv[k++] = "-S"; /* the worker does what it needs of site itself (_site) */
        argv[k++] = "-u";
        argv[k++] = "-X";
        argv[k++] = "utf8";
        argv[k++] = "-c";
        argv[k++] = (char *)PY_BOOT;
    } else if (A.language == L_JAVASCRIPT) {
        snprintf(script, sizeof script, "%s/worker_node.js", A.agent_dir);
        const char *node = which(1, "node");
        if (!node) node = which(2, "nodejs");
        argv[k++] = (char *)(node ? node : "node");
        /* A cell's import() goes through the worker's importModuleDynamically, which Node 18
         * and 20 call only with this flag (it prints no warning for that use). */
        argv[k++] = "--experimental-vm-modules";
        /* So that the worker can hold Node's SIGINT watchdog for its life, instead of each
         * cell starting and stopping it (a thread and signal handlers: worker_node.js). */
        argv[k++] = "--expose-internals";
    } else {
        snprintf(script, sizeof script, "%s/worker_shell.bash", A.agent_dir);
        const char *bash = which(4, "bash");
        argv[k++] = (char *)(bash ? bash : "/bin/bash");
        argv[k++] = "--norc";
        argv[k++] = "--noprofile";
    }
    argv[k++] = script;
    argv[k++] = fd1;
    argv[k++] = fd2;
    argv[k] = NULL;
    int pass[2] = {code_p[0], res_p[1]};
    pid_t pid = spawn(argv, out_p[1], err_p[1], pass, 2, NULL);
    close(code_p[0]);
    close(res_p[1]);
    close(out_p[1]);
    close(err_p[1]);
    if (pid < 0) {
        log_msg("cannot start the worker %s: %s", argv[0], strerror((int)-pid));
        _exit(1);
    }
    set_nonblocking_wr(code_p[1]);
    set_nonblocking_rd(res_p[0]);
    set_nonblocking_rd(out_p[0]);
    set_nonblocking_rd(err_p[0]);
    Worker *w = xrealloc(NULL, sizeof *w);
    memset(w, 0, sizeof *w);
    w->pid = pid;
    w->ctl_w = code_p[1];
    w->ctl_r = res_p[0];
    w->streams[0] = (Stream){.name = "stdout", .fd = out_p[0]};
    w->streams[1] = (Stream){.name = "stderr", .fd = err_p[0]};
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    w->status_fd = open(path, O_RDONLY | O_CLOEXEC);
    snprintf(path, sizeof path, "/proc/%d/clear_refs", (int)pid);
    w->clear_refs_fd = open(path, O_WRONLY | O_CLOEXEC);
    A.worker = w;
    add_child(pid, H_WORKER);
}

static void on_ctl_writable(void) {
    Worker *w = A.worker;
    if (!w || !buf_size(&w->ctl_out)) return;
    ssize_t n = write(w->ctl_w, buf_head(&w->ctl_out), buf_size(&w->ctl_out));
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        buf_clear(&w->ctl_out); /* the worker closed its end; its exit comes as SIGCHLD */
        w->sigint_when_written = false;
        return;
    }
    buf_consume(&w->ctl_out, (size_t)n);
    if (w->sigint_when_written && !buf_size(&w->ctl_out)) {
        w->sigint_when_written = false;
        kill(-w->pid, SIGINT);
    }
}

static void worker_broken(const char *why) {
    log_msg("worker broke the control protocol: %s", why);
    Worker *w = A.worker;
    if (!w) return;
    free(w->broken);
    w->broken = xstrndup(why, strlen(why));
    kill(-w->pid, SIGKILL);
    w->ctl_eof = true;
}

static void maybe_ready(void);
static void start_cell(Exec *e);

/* Forward what the output pipes hold now, before a display of the running cell: the worker
 * wrote it before the display, but within one wait the control pipe is read first, so a
 * cell's print came after its value at times (`print('x'); 'value'`). Only what is there now
 * (a background job may never stop writing), and the decoder keeps a partial character. */
static void forward_output_first(void) {
    Stream *ss;
    size_t ns = streams_of(&ss);
    bool has_data[2] = {false, false};
    streams_with_data(ss, ns, has_data);
    for (size_t i = 0; i < ns && i < 2; i++) {
        Stream *s = &ss[i];
        if (!has_data[i] || s->eof) continue;
        if (A.in_batch) s->handled = true; /* read here: its own callback in this wait is not */
        size_t got;
        read_stream(s, MAX_TEXT_CHUNK, &got);
        read_stream_bytes(s, got == MAX_TEXT_CHUNK ? pending_bytes(s->fd) : 0);
    }
}

/* The Python worker's display made by a running cell's own thread carries "seq", and the
 * worker waits for {"t":"shown","seq":n} before the cell goes on: the output it wrote before
 * the display is forwarded before it, and what it writes after, after it (the agent read the
 * display once the cell had printed its next line too, and sent it after that line). Only
 * Python's worker waits (the others read any line as a cell's code).
 *
 * A worker that waits has read all it was sent, so an answer goes only where the pipe to it
 * holds less than SHOWN_PIPE_MAX and the agent has nothing queued for it: only user code
 * that writes displays to the control pipe itself, and reads no answers, meets the bound.
 * Unbounded, such answers grew the agent's memory, and filled the pipe so that an
 * interrupt's mark, and the SIGINT that waits for it, were never sent (a review). Such a
 * cell's own next display may then wait for an answer that did not come, until an
 * interrupt: harm to itself only. */
#define SHOWN_PIPE_MAX 4096
static void answer_display(Body *msg) {
    Worker *w = A.worker;
    JVal *seq = jobj_get(&msg->obj, "seq");
    if (A.language != L_PYTHON || !w || !seq || seq->type != J_INT ||
        buf_size(&w->ctl_out) || pending_bytes(w->ctl_w) >= SHOWN_PIPE_MAX)
        return;
    buf_addf(&w->ctl_out, "{\"t\":\"shown\",\"seq\":%lld}\n", (long long)seq->ival);
    on_ctl_writable();
}

static void on_display(Body *msg, Buf *err) {
    Cell *cell = A.cell;
    JVal *kind = jobj_get(&msg->obj, "kind");
    JVal *data = jobj_get(&msg->obj, "data");
    bool kind_ok = jstr_eq(kind, "execute_result") || jstr_eq(kind, "display_data");
    if (!kind_ok || !data || data->type != J_OBJ) {
        buf_adds(err, "invalid display message");
        return;
    }
    forward_output_first(); /* between cells, held before the display, as written */
    /* The data object's members: first-seen key order, last value, only str: str. */
    JObj o = {0};
    Buf perr = {0};
    JParser p = {.s = msg->src, .n = data->end, .pos = data->start + 1, .err = &perr,
                 .max_depth = SIZE_MAX};
    j_object(&p, 2, &o);
    buf_free(&perr);
    size_t n = o.n;
    long *use = jobj_dedup(&o);
    size_t clean = 0;
    /* the frame itself costs as much as its JSON envelope, so that a flood of small
     * displays (a million empty ones cost the service seconds of CPU) ends at the budget */
    int64_t size = DISPLAY_FRAME_CHARS;
    for (size_t i = 0; i < n; i++) {
        if (use[i] < 0) continue;
        JVal *v = &o.m[use[i]].val;
        /* what the service takes (agent_wire.AgentDisplay): the rest is dropped here, not
         * sent for the service to refuse with the whole sandbox */
        if (v->type != J_STR || clean == MAX_DISPLAY_ENTRIES ||
            char_count(o.m[i].key, o.m[i].klen) > MAX_DISPLAY_KEY) {
            use[i] = -1;
            continue;
        }
        clean++;
        /* every entry costs its key, its value and one more: none is free */
        size += (int64_t)char_count(o.m[i].key, o.m[i].klen) +
                (int64_t)char_count(v->str, v->slen) + 1;
    }
    if (clean) {
        bool result = jstr_eq(kind, "execute_result");
        Buf d = {0};
        buf_addc(&d, '{');
        bool first = true;
        for (size_t i = 0; i < n; i++) {
            if (use[i] < 0) continue;
            if (!first) buf_addc(&d, ',');
            first = false;
            json_str(&d, o.m[i].key, o.m[i].klen, false);
            buf_addc(&d, ':');
            json_str(&d, o.m[use[i]].val.str, o.m[use[i]].val.slen, false);
        }
        buf_addc(&d, '}');
        if (cell)
            send_display(cell, result ? "execute_result" : "display_data", buf_head(&d),
                         buf_size(&d), size);
        else if (A.last_cell) /* between cells (a thread an earlier cell left): the next's */
            hold_display(result, &d, size);
        else /* before the first cell (a preloaded module's), as its output: not a cell's */
            log_msg("dropping a display made before the first cell");
        buf_free(&d);
    }
    free(use);
    jobj_free(&o);
    answer_display(msg);
}

/* Handle one control message; on a protocol violation the message goes to err. */
static void on_worker_message(Body *msg, Buf *err) {
    Worker *w = A.worker;
    JVal *t = jobj_get(&msg->obj, "t");
    if (jstr_eq(t, "ready")) {
        w->ready = true;
        A.unready_exits = 0;
        maybe_ready();
    } else if (jstr_eq(t, "display")) {
        on_display(msg, err);
    } else if (jstr_eq(t, "done")) {
        if (!A.cell) {
            buf_adds(err, "worker sent done outside a cell");
            return;
        }
        JVal *status = jobj_get(&msg->obj, "status");
        JVal *exit_code = jobj_get(&msg->obj, "exit_code");
        JVal *error = jobj_get(&msg->obj, "error");
        if (!(jstr_eq(status, "success") || jstr_eq(status, "error") ||
              jstr_eq(status, "interrupted"))) {
            buf_adds(err, "worker sent an invalid status ");
            if (status) py_repr_value(err, msg, status, false);
            else buf_adds(err, "None");
            return;
        }
        bool has_exit = exit_code && exit_code->type == J_INT;
        if (has_exit && (exit_code->ival < INT32_MIN || exit_code->ival > INT32_MAX)) {
            /* No worker makes one (they exit as a process would, 0 to 255), and the
             * service takes a 32-bit code alone: passed on, it made the whole sandbox be
             * replaced (a review), where a message breaking the protocol restarts the
             * worker. */
            buf_adds(err, "worker sent an exit code out of range");
            return;
        }
        const char *lit = NULL;
        size_t litlen = 0;
        if (has_exit) {
            lit = (const char *)msg->src + exit_code->start;
            litlen = exit_code->end - exit_code->start;
            if (litlen == 2 && lit[0] == '-' && lit[1] == '0') {
                lit = "0";
                litlen = 1;
            }
        }
        Buf e = {0};
        bool have_err = false;
        if (error && error->type != J_NULL) {
            py_repr_value(&e, msg, error, true);
            have_err = true;
            size_t cut = char_offset(buf_head(&e), buf_size(&e), MAX_ERROR_LEN);
            e.len = e.off + cut;
        }
        if (jstr_eq(status, "error") && (!have_err || buf_size(&e) == 0)) {
            buf_clear(&e);
            buf_adds(&e, "exited with code ");
            if (has_exit) buf_add(&e, lit, litlen);
            else buf_adds(&e, "None");
            have_err = true;
        }
        if (jstr_eq(status, "interrupted") && (!have_err || buf_size(&e) == 0)) {
            buf_clear(&e);
            buf_adds(&e, "interrupted");
            have_err = true;
        }
        JVal *ck = jobj_get(&msg->obj, "children_maxrss_kb");
        /* isinstance(True, int): a bool counts as 1 */
        long long peak = ck && ck->type == J_INT && ck->ival > 0 ? ck->ival
                         : ck && ck->type == J_TRUE                ? 1
                                                                   : 0;
        const char *errp = have_err ? buf_cstr(&e) : NULL;
        char st[16];
        snprintf(st, sizeof st, "%.*s", (int)status->slen, status->str);
        finish_cell(st, has_exit, 0, lit, litlen, errp, have_err ? buf_size(&e) : 0, false,
                    peak, A.in_batch);
        buf_free(&e);
    } else {
        buf_adds(err, "unknown worker message ");
        py_repr_value(err, msg, t, false);
    }
}

/* Read up to size bytes of the control pipe and handle its complete lines; returns the
 * number of bytes read (0 at EOF, on EAGAIN or on an error). */
static size_t read_ctl(size_t size) {
    Worker *w = A.worker;
    if (!w) return 0;
    if (size > sizeof iobuf) size = sizeof iobuf;
    ssize_t r = read(w->ctl_r, iobuf, size);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (r <= 0) {
        w->ctl_eof = true;
        return 0;
    }
    buf_add(&w->ctl_buf, iobuf, (size_t)r);
    while (A.worker == w) {
        char *head = buf_head(&w->ctl_buf);
        char *nl = memchr(head, '\n', buf_size(&w->ctl_buf));
        if (!nl) {
            if (buf_size(&w->ctl_buf) > MAX_CONTROL_LINE) worker_broken("oversized control message");
            return (size_t)r;
        }
        size_t len = (size_t)(nl - head);
        Body body;
        Buf err = {0};
        /* copy the line: handling it may append to ctl_buf's owner (not here, but be safe) */
        char *line = xstrndup(head, len);
        buf_consume(&w->ctl_buf, len + 1);
        if (decode_body((const unsigned char *)line, len, JSON_DEPTH_CONTROL, &body, &err)) {
            on_worker_message(&body, &err);
            jobj_free(&body.obj);
        }
        free(line);
        if (buf_size(&err)) {
            if (A.worker == w) worker_broken(buf_cstr(&err));
            buf_free(&err);
            return (size_t)r;
        }
        buf_free(&err);
    }
    return (size_t)r;
}

static void on_ctl_readable(void) { read_ctl(sizeof iobuf); }

static void on_worker_exit(pid_t pid, int status, bool have_rusage, const struct rusage *ru) {
    Worker *w = A.worker;
    if (!w || w->pid != pid) return;
    w->reaped = true;
    /* Its last messages (e.g. `done`) come first, read outside the wait that saw the exit:
     * what the pipe held then and no more (like drain_streams), since a process the worker
     * forked may still hold the write end and keep the pipe from ever being empty. */
    A.in_batch = false;
    long pending = w->ctl_eof ? 0 : pending_bytes(w->ctl_r);
    while (pending > 0 && !w->ctl_eof && A.worker == w) {
        size_t got = read_ctl((size_t)pending);
        if (got == 0) break;
        pending -= (long)got;
    }
    if (A.worker != w) return;
    int code = have_rusage ? exitcode_of(status) : 0;
    long long peak = have_rusage ? ru->ru_maxrss : 0;
    Cell *cell = A.cell;
    Buf err = {0};
    /* How it ended, in words (nothing for an exit with 0 unless it broke the protocol). */
    bool has_err = code != 0 || w->broken;
    if (w->broken) {
        buf_addf(&err, "%s broke the control protocol (", noun());
        buf_adds(&err, w->broken);
        buf_addc(&err, ')');
    } else if (code > 0) {
        buf_addf(&err, "%s exited with code %d", noun(), code);
    } else if (code < 0) {
        buf_addf(&err, "%s was killed by signal ", noun());
        signal_description(&err, -code);
    }
    if (cell) {
        drain_streams(cell, false);
        const char *st;
        long long exit_code;
        if (code >= 0) {
            st = code == 0 ? "success" : "error";
            exit_code = code;
        } else {
            int sig = -code;
            st = cell->interrupted && sig == SIGINT ? "interrupted" : "error";
            exit_code = 128 + sig;
        }
        if (has_err) buf_adds(&err, "; state was reset");
        finish_cell(st, true, exit_code, NULL, 0, has_err ? buf_cstr(&err) : NULL,
                    has_err ? buf_size(&err) : 0, true, peak, false);
    } else if (!w->ready && ++A.unready_exits >= MAX_UNREADY_EXITS) {
        log_msg("worker %d exited with %d before it was ready, %d workers in a row; giving up",
                (int)pid, code, A.unready_exits);
        _exit(1);
    } else {
        log_msg("worker %d exited with %d while idle; restarting it", (int)pid, code);
        A.state_lost = true;
        if (w->ready) {
            /* Told now, not only with the next cell's done: a client waiting between cells
             * (a notebook) learns at once that its state is gone. */
            if (!has_err) buf_addf(&err, "%s exited with code 0", noun());
            Buf m = {0};
            buf_adds(&m, "{\"t\":\"lost\",\"error\":");
            /* at most MAX_ERROR_LEN characters, as a done's error (the service takes 4096) */
            json_str(&m, buf_head(&err),
                     char_offset(buf_head(&err), buf_size(&err), MAX_ERROR_LEN), false);
            buf_addc(&m, '}');
            send_simple(buf_cstr(&m));
            buf_free(&m);
        }
    }
    buf_free(&err);
    close_worker(w);
    A.worker = NULL;
    /* Its state is lost, and so is what it started: a process a cell left running (joblib's
     * workers, a server) is killed with it, as `restart` kills it and as Jupyter kills a dead
     * kernel's process group. Left, the workers of a pool whose interpreter the memory limit
     * killed held that memory, and every later cell was killed for it (a review). */
    kill_user_processes();
    start_worker();
}

/* ------------------------------------------------------------------------------- cells */

static void start_cell(Exec *e) {
    A.cell_count++;
    A.busy_reads = 0; /* a cell's output is counted from its start */
    A.busy_start = monotonic();
    A.quiet_until = -1;
    Cell *cell = xrealloc(NULL, sizeof *cell);
    memset(cell, 0, sizeof *cell);
    cell->id = e->id;
    cell->idlen = e->idlen;
    e->id = NULL;
    cell->max_output = e->max_output;
    cell->started = monotonic();
    cell->compile_ms = -1;
    long long oom;
    cell->oom_known = oom_kills(&oom);
    cell->oom_before = oom;
    A.cell = cell;
    if (buf_size(&A.between) || A.between_dropped) send_between(cell);
    if (A.language == L_RUST) {
        start_rust(cell, e->code, e->codelen);
        return;
    }
    Worker *w = A.worker;
    if (w->clear_refs_fd >= 0) {
        ssize_t r = write(w->clear_refs_fd, "5", 1);
        (void)r;
    }
    if (A.language == L_SHELL) {
        /* "c" and the code's length in bytes, a NUL, then the code with NULs dropped and lone
         * surrogates as '?': the worker reads the code in one `read -N` (a read up to a
         * delimiter takes one system call per byte from a pipe: 100 KB of code took 28 ms
         * under runc and 4.9 s under gVisor). A CR before a LF is dropped too: code with
         * Windows line endings (a client on Windows) made bash see `fi\r` and `$'\r'`
         * commands, where Python and Node take it as written (a review). */
        size_t n = 0;
        for (int pass = 0; pass < 2; pass++) {
            size_t i = 0;
            if (pass == 1) {
                buf_reserve(&w->ctl_out, n + 32);
                buf_addf(&w->ctl_out, "c%zu", n);
                buf_addc(&w->ctl_out, '\0');
            }
            while (i < e->codelen) {
                uint32_t c;
                size_t k = wtf8_next((const unsigned char *)e->code + i, e->codelen - i, &c);
                bool lone = c >= 0xD800 && c <= 0xDFFF;
                if (c == '\r' && i + 1 < e->codelen && e->code[i + 1] == '\n') c = 0;
                if (pass == 0) n += lone ? 1 : c != 0 ? k : 0;
                else if (lone) buf_addc(&w->ctl_out, '?');
                else if (c != 0) buf_add(&w->ctl_out, e->code + i, k);
                i += k;
            }
        }
    } else {
        buf_adds(&w->ctl_out, "{\"code\":");
        json_str(&w->ctl_out, e->code, e->codelen, true);
        buf_adds(&w->ctl_out, e->program ? ",\"program\":true}\n" : "}\n");
    }
    on_ctl_writable();
}

static void maybe_ready(void) {
    /* `ready` once the interpreter is warm, also when a restart is pending (a `hello` and a
     * `restart` that both came before the first worker was ready): then `ready` first, and
     * `restarted` right after it, for the same fresh interpreter. */
    bool warm = A.language == L_RUST || (A.worker && A.worker->ready);
    if (A.hello && !A.ready_sent && warm) {
        A.ready_sent = true;
        char body[96];
        snprintf(body, sizeof body, "{\"t\":\"ready\",\"language\":\"%s\",\"version\":%d}",
                 LANGUAGES[A.language], PROTOCOL_VERSION);
        send_simple(body);
    }
    if (A.restart_pending && warm) {
        A.restart_pending = false;
        send_simple("{\"t\":\"restarted\"}");
    }
    if (A.pending_exec && !A.cell && can_start()) {
        Exec *e = A.pending_exec;
        A.pending_exec = NULL;
        start_cell(e);
        free_exec(e);
    }
}

static void kill_sessions(void) {
    for (size_t i = 0; i < A.nsessions; i++) kill(-A.sessions[i], SIGKILL);
    if (A.nsessions == 0) return;
    DIR *d = opendir("/proc");
    if (!d) return;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        const char *name = ent->d_name;
        bool digits = *name != '\0';
        for (const char *q = name; *q; q++)
            if (*q < '0' || *q > '9') digits = false;
        if (!digits || strlen(name) > 10) continue;
        char path[320], stat[1024];
        snprintf(path, sizeof path, "/proc/%s/stat", name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, stat, sizeof stat - 1);
        close(fd);
        if (n <= 0) continue;
        stat[n] = '\0';
        char *rp = strrchr(stat, ')');
        if (!rp || rp[1] == '\0') continue;
        /* fields after ") ": state ppid pgrp session */
        char *q = rp + 2;
        long field[4];
        int got = 0;
        for (int f = 0; f < 4; f++) {
            while (*q == ' ') q++;
            if (!*q) break;
            if (f == 0) {
                while (*q && *q != ' ') q++;
                got++;
                continue;
            }
            char *end;
            errno = 0;
            field[f] = strtol(q, &end, 10);
            if (end == q || errno) break;
            q = end;
            got++;
        }
        if (got < 4) continue;
        for (size_t i = 0; i < A.nsessions; i++)
            if (field[3] == A.sessions[i]) {
                kill((pid_t)atol(name), SIGKILL);
                break;
            }
    }
    closedir(d);
}

static void kill_user_processes(void) {
    if (A.container) {
        for (int i = 0; i < 3; i++) kill(-1, SIGKILL);
    } else {
        kill_sessions();
    }
    for (size_t i = 0; i < A.nchildren; i++) {
        kill(A.children[i].pid, SIGKILL);
        struct rusage ru;
        int st;
        while (wait4(A.children[i].pid, &st, 0, &ru) < 0 && errno == EINTR) {
        }
    }
    A.nchildren = 0;
    if (A.worker) {
        close_worker(A.worker);
        A.worker = NULL;
    }
    A.rust_child = 0;
    A.nsessions = 0;
}

/* Dispatch a known child's exit to its handler; false if pid is not a known child. */
static bool dispatch_exit(pid_t pid, int status, bool have, const struct rusage *ru) {
    size_t i = 0;
    while (i < A.nchildren && A.children[i].pid != pid) i++;
    if (i == A.nchildren) return false;
    int handler = A.children[i].handler;
    A.children[i] = A.children[--A.nchildren];
    if (handler == H_WORKER) on_worker_exit(pid, status, have, ru);
    else if (handler == H_RUSTC) on_rustc_exit(pid, status, have, ru);
    else on_program_exit(pid, status, have, ru);
    return true;
}

/* Reap every child that has exited: the agent is PID 1 of the container (a subreaper under
 * --container otherwise), so orphaned processes of user code become its children and must not
 * stay zombies. A known child's exit goes to its handler; any other pid is discarded. */
static void reap(void) {
    bool swept = false;
    while (A.exit_code < 0) {
        int status = 0;
        struct rusage ru;
        memset(&ru, 0, sizeof ru);
        pid_t pid = wait4(-1, &status, WNOHANG, &ru);
        if (pid < 0 && errno == EINTR) continue;
        if (pid == 0) return;
        if (pid > 0) {
            dispatch_exit(pid, status, true, &ru);
            continue;
        }
        /* ECHILD: a known child that is not there any more (agent.py's ChildProcessError) is
         * treated as gone, with no rusage; once, as handlers may start new children. */
        if (swept || A.nchildren == 0) return;
        swept = true;
        pid_t snap[MAX_CHILDREN];
        size_t nsnap = A.nchildren;
        for (size_t k = 0; k < nsnap; k++) snap[k] = A.children[k].pid;
        for (size_t k = 0; k < nsnap && A.exit_code < 0; k++)
            dispatch_exit(snap[k], 0, false, &ru);
    }
}

/* An interrupt is a SIGINT to the worker and, ahead of it, a mark on the control pipe right
 * after the cell's code. A worker ignores a SIGINT between cells (a late one belongs to a cell
 * that has ended), so one that lands while the worker is still reading the cell would be lost:
 * the cell would run on until the service restarts the interpreter. A worker that saw a SIGINT
 * before its cell began looks for the mark behind the cell's code (only an interrupt can follow
 * it before the cell's `done`), and stops the cell at once if it is there; a mark read between
 * cells is an ended cell's, and is dropped. Still missed at times (protocol/agent.md): a
 * JavaScript cell that spins from its first line, rarely (a SIGINT sent between the worker's
 * last look and its run's start), and a shell cell whose first command is a program (bash's
 * child loses a SIGINT that lands as it is forked); the service's grace then restarts the
 * interpreter. */
static void do_interrupt(void) {
    Cell *cell = A.cell;
    if (!cell) return;
    cell->interrupted = true;
    if (A.language == L_RUST) {
        if (A.rust_child > 0) kill(-A.rust_child, SIGINT);
    } else if (A.worker) {
        Worker *w = A.worker;
        if (A.language == L_SHELL) buf_add(&w->ctl_out, "i", 2); /* "i" and its NUL */
        else buf_adds(&w->ctl_out, "{\"t\":\"interrupt\"}\n");
        /* The SIGINT goes once the whole mark is in the pipe (at once, unless a long cell's
         * code still fills it): a worker that finds part of a mark behind the code then
         * knows the rest is there to read. */
        w->sigint_when_written = true;
        on_ctl_writable();
    }
}

/* An interrupt read in a wait takes effect after the wait's other descriptors, and after a
 * last look at the worker's control pipe: a `done` the worker has written ends its cell first.
 * Sent to a worker that has finished, the SIGINT is a late one; the workers drop those, but
 * Node's `breakOnSigint` can keep one for the next cell's run and end that cell instead. */
static void deliver_interrupt(void) {
    long want = A.interrupt_for;
    A.interrupt_for = 0;
    if (!A.cell || A.cell_count != want) return;
    Worker *w = A.worker;
    if (A.language != L_RUST && w && !w->ctl_eof) {
        struct pollfd p = {.fd = w->ctl_r, .events = POLLIN};
        if (poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) on_ctl_readable();
        if (!A.cell || A.cell_count != want) return;
    }
    do_interrupt();
}

static void do_restart(void) {
    if (A.cell) drain_streams(A.cell, false);
    /* the interpreter's peak, read before it is killed (a restarted cell said 0.0 MB) */
    long long peak = -1;
    if (A.cell && A.worker && !A.worker->reaped &&
        !proc_read_field(A.worker->status_fd, "VmHWM:", &peak))
        peak = -1;
    kill_user_processes();
    drop_between();
    if (A.cell)
        finish_cell("interrupted", true, 137, NULL, 0, "the interpreter was restarted",
                    strlen("the interpreter was restarted"), true, peak, false);
    if (A.pending_exec) {
        /* a held exec (received before `ready` or during a restart) gets its one done too */
        Exec *e = A.pending_exec;
        A.pending_exec = NULL;
        Done d = {.status = "interrupted", .has_exit = true, .exit_code = 137,
                  .error = "the interpreter was restarted",
                  .errlen = strlen("the interpreter was restarted"), .restarted = true,
                  .compile_ms = -1};
        send_done(e->id, e->idlen, &d);
        free_exec(e);
    }
    A.state_lost = false;
    A.restart_pending = true;
    if (A.language != L_RUST) start_worker();
    maybe_ready();
}

/* ------------------------------------------------------------------------------- service */

enum { F_UNKNOWN, F_HELLO, F_EXEC, F_INTERRUPT, F_RESTART };

/* parse_service_frame; false with the message in err on invalid fields. */
static bool parse_service_frame(Body *b, int *kind, Exec **exec, Buf *err) {
    JVal *t = jobj_get(&b->obj, "t");
    *exec = NULL;
    if (jstr_eq(t, "hello")) *kind = F_HELLO;
    else if (jstr_eq(t, "interrupt")) *kind = F_INTERRUPT;
    else if (jstr_eq(t, "restart")) *kind = F_RESTART;
    else if (!jstr_eq(t, "exec")) *kind = F_UNKNOWN;
    else {
        *kind = F_EXEC;
        JVal *id = jobj_get(&b->obj, "id"), *code = jobj_get(&b->obj, "code");
        JVal *limit = jobj_get(&b->obj, "max_output_bytes");
        size_t idchars = id && id->type == J_STR ? char_count(id->str, id->slen) : 0;
        if (!id || id->type != J_STR || idchars == 0 || idchars > MAX_ID_LEN) {
            buf_adds(err, "exec: 'id' must be a non-empty string of at most 256 characters");
            return false;
        }
        if (!code || code->type != J_STR) {
            buf_adds(err, "exec: 'code' must be a string");
            return false;
        }
        if (limit && (limit->type != J_INT || limit->ival < 0)) {
            buf_adds(err, "exec: 'max_output_bytes' must be a non-negative integer");
            return false;
        }
        JVal *program = jobj_get(&b->obj, "program");
        if (program && program->type != J_TRUE && program->type != J_FALSE) {
            buf_adds(err, "exec: 'program' must be a boolean");
            return false;
        }
        Exec *e = xrealloc(NULL, sizeof *e);
        e->id = id->str;
        e->idlen = id->slen;
        id->str = NULL;
        e->code = code->str;
        e->codelen = code->slen;
        code->str = NULL;
        e->max_output = limit ? limit->ival : DEFAULT_MAX_OUTPUT;
        e->program = program && program->type == J_TRUE;
        *exec = e;
    }
    return true;
}

static void handle_frame(Body *b, int kind, Exec *e) {
    switch (kind) {
    case F_HELLO:
        A.hello = true;
        maybe_ready();
        break;
    case F_EXEC:
        if (A.cell || A.pending_exec) {
            Done d = {.status = "error", .error = "busy", .errlen = 4, .compile_ms = -1};
            send_done(e->id, e->idlen, &d);
            free_exec(e);
        } else if (can_start()) {
            start_cell(e);
            free_exec(e);
        } else {
            A.pending_exec = e;
        }
        break;
    case F_INTERRUPT:
        if (A.cell) A.interrupt_for = A.cell_count; /* deliver_interrupt, once the wait's done */
        break;
    case F_RESTART:
        do_restart();
        break;
    default: {
        JVal *t = jobj_get(&b->obj, "t");
        Buf m = {0};
        buf_adds(&m, "ignoring unknown frame type ");
        py_str_repr(&m, t->str, t->slen);
        log_buf(&m);
        buf_free(&m);
    }
    }
}

static void on_stdin(void) {
    unsigned char data[READ_SIZE];
    ssize_t r = read(0, data, sizeof data);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r < 0) {
        Buf m = {0};
        buf_adds(&m, "stdin error (");
        add_oserror(&m, errno);
        buf_adds(&m, "); exiting");
        log_buf(&m);
        buf_free(&m);
        r = 0;
    }
    if (r == 0) {
        A.stdin_open = false;
        shutdown_agent(0);
        return;
    }
    buf_add(&A.inbuf, data, (size_t)r);
    /* FrameDecoder.feed: decode every complete frame first; one bad frame fails them all. */
    Body *frames = NULL;
    size_t nframes = 0, cap = 0;
    Buf err = {0};
    bool bad = false;
    while (buf_size(&A.inbuf) >= 4) {
        const unsigned char *h = (const unsigned char *)buf_head(&A.inbuf);
        size_t size = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) | ((size_t)h[2] << 8) | h[3];
        if (size > MAX_SERVICE_FRAME) {
            buf_addf(&err, "frame of %zu bytes exceeds the limit of %zu", size,
                     MAX_SERVICE_FRAME);
            bad = true;
            break;
        }
        if (buf_size(&A.inbuf) < 4 + size) break;
        if (nframes == cap) {
            cap = cap ? cap * 2 : 4;
            frames = xrealloc(frames, cap * sizeof *frames);
        }
        /* the body is referenced by the parsed frame: keep a copy */
        unsigned char *body = xrealloc(NULL, size ? size : 1);
        memcpy(body, h + 4, size);
        buf_consume(&A.inbuf, 4 + size);
        Body *f = &frames[nframes];
        if (!decode_body(body, size, JSON_DEPTH_SERVICE, f, &err)) {
            free(body);
            bad = true;
            break;
        }
        f->owned = body;
        nframes++;
    }
    size_t i = 0;
    if (!bad) {
        for (; i < nframes; i++) {
            int kind;
            Exec *e;
            Buf ferr = {0};
            if (!parse_service_frame(&frames[i], &kind, &e, &ferr)) {
                buf_add(&err, buf_head(&ferr), buf_size(&ferr));
                buf_free(&ferr);
                bad = true;
                break;
            }
            buf_free(&ferr);
            handle_frame(&frames[i], kind, e);
            if (A.exit_code >= 0) break;
        }
    }
    if (bad && A.exit_code < 0) {
        Buf m = {0};
        buf_adds(&m, "malformed frame from the service: ");
        buf_add(&m, buf_head(&err), buf_size(&err));
        log_buf(&m);
        buf_free(&m);
        shutdown_agent(EXIT_BAD_FRAME);
    }
    for (size_t k = 0; k < nframes; k++) {
        jobj_free(&frames[k].obj);
        free(frames[k].owned);
    }
    buf_free(&err);
    free(frames);
}

/* ------------------------------------------------------------------------------- stdout */

static void on_stdout(void) {
    size_t n = buf_size(&A.outbuf);
    if (n == 0) return;
    if (n > MAX_AGENT_FRAME) n = MAX_AGENT_FRAME;
    ssize_t r = write(1, buf_head(&A.outbuf), n);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        Buf m = {0};
        buf_adds(&m, "stdout closed (");
        add_oserror(&m, errno);
        buf_adds(&m, "); exiting");
        log_buf(&m);
        buf_free(&m);
        buf_clear(&A.outbuf);
        shutdown_agent(0);
        return;
    }
    buf_consume(&A.outbuf, (size_t)r);
}

static void flush_stdout_blocking(void) {
    if (buf_size(&A.outbuf) == 0) return;
    int fl = fcntl(1, F_GETFL);
    if (fl < 0 || fcntl(1, F_SETFL, fl & ~O_NONBLOCK) < 0) return;
    while (buf_size(&A.outbuf)) {
        ssize_t r = write(1, buf_head(&A.outbuf), buf_size(&A.outbuf));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return;
        buf_consume(&A.outbuf, (size_t)r);
    }
}

/* ------------------------------------------------------------------------------- loop */

/* Seconds the queued output may still wait; false to write it now. */
static bool linger_left(double *left) {
    if (A.linger_until >= 0 && buf_size(&A.outbuf) < LINGER_BYTES) {
        double l = A.linger_until - monotonic();
        if (l > 0) {
            *left = l;
            return true;
        }
    }
    A.linger_until = -1;
    return false;
}

static void judge_linger(double slept) {
    if (slept <= LINGER_OVERSLEEP) {
        A.oversleeps = 0;
        return;
    }
    A.oversleeps++;
    if (A.oversleeps >= LINGER_OVERSLEEPS && A.lingering) {
        A.lingering = false;
        log_msg("a %.0f us wait slept %.0f us: output is sent at once from now on", LINGER * 1e6,
                slept * 1e6);
    }
}

static void add_poll(struct pollfd *fds, size_t *n, int fd, short events) {
    if (fd < 0 || *n >= MAX_POLL) return;
    fds[*n].fd = fd;
    fds[*n].events = events;
    fds[*n].revents = 0;
    (*n)++;
}

static void dispatch(int fd) {
    if (fd == 0) {
        if (A.stdin_open) on_stdin();
        return;
    }
    if (fd == 1) {
        on_stdout();
        return;
    }
    Stream *ss;
    size_t ns = streams_of(&ss);
    for (size_t i = 0; i < ns; i++)
        if (ss[i].fd == fd) {
            size_t got;
            if (!ss[i].eof && !ss[i].handled) read_stream(&ss[i], MAX_TEXT_CHUNK, &got);
            return;
        }
    Worker *w = A.worker;
    if (w && fd == w->ctl_r) {
        if (!w->ctl_eof) on_ctl_readable();
    } else if (w && fd == w->ctl_w) {
        on_ctl_writable();
    }
}

static int run(void) {
    int fl = fcntl(0, F_GETFL);
    if (fl >= 0) fcntl(0, F_SETFL, fl | O_NONBLOCK);
    fl = fcntl(1, F_GETFL);
    if (fl >= 0) fcntl(1, F_SETFL, fl | O_NONBLOCK);

    /* SIGCHLD and SIGTERM are blocked except inside ppoll, which they interrupt. */
    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGCHLD);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGCHLD);
    sigdelset(&waitmask, SIGTERM);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_sigchld;
    sigaction(SIGCHLD, &sa, NULL);
    sa.sa_handler = on_sigterm;
    sigaction(SIGTERM, &sa, NULL);
    /* A no-op handler, not SIG_IGN: an ignored SIGINT would be inherited by the workers, and
     * bash cannot trap a signal that was ignored when it started. */
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    /* Signals user code (same uid) could otherwise end or stop the agent with. As PID 1
     * under runc the kernel drops them anyway; gVisor does not protect a namespace's init,
     * and outside a container the agent is not init. Handlers, not SIG_IGN, for the same
     * reason as SIGINT's: exec resets them to the default in every worker. */
    static const int harmless[] = {SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM,
                                   SIGPROF, SIGIO, SIGPWR, SIGTSTP, SIGTTIN, SIGTTOU};
    for (size_t i = 0; i < sizeof harmless / sizeof harmless[0]; i++)
        sigaction(harmless[i], &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = 0;
    sigaction(SIGPIPE, &sa, NULL);

    if (A.language == L_RUST) {
        static const char *const names[] = {"stdout", "stderr"};
        for (int i = 0; i < 2; i++) {
            int p[2];
            if (pipe2(p, O_CLOEXEC) != 0) {
                log_msg("cannot create a pipe: %s", strerror(errno));
                return 1;
            }
            set_nonblocking_rd(p[0]);
            A.rust_streams[i] = (Stream){.name = names[i], .fd = p[0]};
            A.rust_write_fds[i] = p[1];
        }
    } else {
        start_worker();
    }

    while (A.exit_code < 0) {
        double linger = 0;
        bool lingered = buf_size(&A.outbuf) && linger_left(&linger);
        if (buf_size(&A.outbuf) && !lingered) {
            /* Write what this iteration produced at once, in one write. */
            on_stdout();
            if (A.exit_code >= 0) break;
        }
        struct pollfd fds[MAX_POLL];
        size_t n = 0;
        size_t queued = buf_size(&A.outbuf);
        double quiet = A.quiet_until >= 0 ? A.quiet_until - monotonic() : 0;
        if (quiet <= 0) A.quiet_until = -1;
        if (A.stdin_open && queued < HARD_WATER) add_poll(fds, &n, 0, POLLIN);
        if (queued < HIGH_WATER) {
            /* the control pipe first: a display is sent before output read with it (a
             * display or a done reads the pipes, quiet or not: nothing comes after them) */
            if (A.worker && !A.worker->ctl_eof) add_poll(fds, &n, A.worker->ctl_r, POLLIN);
            Stream *ss;
            size_t ns = streams_of(&ss);
            for (size_t i = 0; i < ns && quiet <= 0; i++)
                if (!ss[i].eof) add_poll(fds, &n, ss[i].fd, POLLIN);
        }
        double wait = linger; /* the output's linger, or the quiet's end: the sooner */
        bool timed = lingered;
        if (quiet > 0 && (!timed || quiet < wait)) {
            wait = quiet;
            timed = true;
        }
        if (A.worker && buf_size(&A.worker->ctl_out)) add_poll(fds, &n, A.worker->ctl_w, POLLOUT);
        if (queued && A.linger_until < 0) add_poll(fds, &n, 1, POLLOUT);
        struct timespec ts;
        double t0 = 0;
        if (timed) {
            ts.tv_sec = (time_t)wait;
            ts.tv_nsec = (long)((wait - (double)ts.tv_sec) * 1e9);
            if (ts.tv_nsec < 0) ts.tv_nsec = 0;
            if (ts.tv_nsec > 999999999) ts.tv_nsec = 999999999;
            t0 = monotonic();
        }
        int r = ppoll(fds, n, timed ? &ts : NULL, &waitmask);
        if (r < 0 && errno != EINTR && errno != EAGAIN) {
            log_msg("ppoll failed: %s", strerror(errno));
            shutdown_agent(1);
            break;
        }
        if (r == 0 && lingered && wait == linger && linger < 0.001)
            judge_linger(monotonic() - t0);
        if (r > 0) {
            memcpy(A.batch, fds, n * sizeof fds[0]);
            A.nbatch = n;
            A.in_batch = true;
            Stream *ss;
            size_t ns = streams_of(&ss);
            for (size_t i = 0; i < ns; i++) ss[i].handled = false;
            for (size_t i = 0; i < n && A.exit_code < 0; i++)
                if (fds[i].revents) dispatch(fds[i].fd);
            A.in_batch = false;
            A.nbatch = 0;
            ns = streams_of(&ss);
            for (size_t i = 0; i < ns; i++) ss[i].handled = false;
        }
        if (got_sigchld) {
            got_sigchld = 0;
            if (A.exit_code < 0) reap();
        }
        if (got_sigterm && A.exit_code < 0) shutdown_agent(0);
        if (A.interrupt_for && A.exit_code < 0) deliver_interrupt();
    }
    flush_stdout_blocking();
    return A.exit_code;
}

/* A seccomp filter of the agent's own, inherited by every process it starts: `clone3`
 * fails with ENOSYS, so glibc falls back to `clone`, whose flags the engine's profile
 * checks (clone3 passes its flags in memory, out of any filter's sight).
 *
 * The engine's profile says the same under runc, but not under runsc: runsc answers every
 * denied call with EPERM (google/gvisor#14688), which stops glibc's fallback and every
 * thread, so the service lets clone3 through to gVisor's kernel there
 * (settings.RUNSC_PASS_THROUGH). gVisor 20221219 (Debian 12) answers ENOSYS itself; gVisor
 * 20240729 (Debian 13, bookworm-backports) implements clone3, and a cell's
 * clone3(CLONE_NEWUSER) made a user namespace, outside the task limit. A filter installed
 * inside the sandbox is answered with its own errno under both runtimes and any version.
 * Returns 0, or -1 with errno set. */
static int deny_clone3(void) {
    /* No check of the architecture, on purpose: from 424 on, x86's 64-bit, 32-bit and x32
     * ABIs (and the asm-generic ones, arm64's) give a call one number, so 435 is clone3 in
     * each (x32 sets bit 30) and no other call anywhere a process here can reach. */
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 435, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 435 | 0x40000000, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {.len = sizeof filter / sizeof filter[0], .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0);
}

/* Mark every descriptor above 2 that the agent inherited close-on-exec. */
static void close_on_exec_inherited(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return;
    int fds[256];
    size_t n = 0;
    int self = dirfd(d);
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(ent->d_name, &end, 10);
        if (end == ent->d_name || *end || fd <= 2 || fd == self || fd > INT_MAX) continue;
        if (n < sizeof fds / sizeof fds[0]) fds[n++] = (int)fd;
        else ioctl((int)fd, FIOCLEX);
    }
    closedir(d);
    for (size_t i = 0; i < n; i++) ioctl(fds[i], FIOCLEX);
}

/* Where the image's NSS (libnss-extrausers, /var/lib/extrausers a link here) reads the
 * sandbox's user and group: each sandbox runs as a uid of its own, which no passwd entry of
 * the read-only image can name, so `whoami`, `id -un`, Python's pwd.getpwuid() and Node's
 * os.userInfo() failed. The agent writes them on the fresh /tmp before any cell runs. They
 * name nothing the service reads: a cell may rewrite them, for itself alone. */
#define USERS_DIR "/tmp/.ws-sandbox-users"

static bool write_new_file(const char *path, const char *text, int *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        *err = errno;
        return false;
    }
    return write_file(fd, text, strlen(text), err);
}

static void name_the_user(void) {
    unsigned uid = (unsigned)getuid(), gid = (unsigned)getgid();
    char passwd[160], group[80];
    snprintf(passwd, sizeof passwd, "sandbox:x:%u:%u:ws_sandbox:/workspace:/bin/bash\n", uid,
             gid);
    snprintf(group, sizeof group, "sandbox:x:%u:\n", gid);
    int err = 0;
    if ((mkdir(USERS_DIR, 0755) != 0 && (err = errno) != 0) ||
        !write_new_file(USERS_DIR "/passwd", passwd, &err) ||
        !write_new_file(USERS_DIR "/group", group, &err))
        log_msg("cannot name the sandbox's user in " USERS_DIR ": %s", strerror(err));
}

int main(int argc, char **argv) {
    bool container = false;
    const char *language = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--container") == 0) container = true;
        else if (!language) language = argv[i];
    }
    if (!language) language = getenv("WS_SANDBOX_LANGUAGE");
    if (!language) language = "python";
    int lang = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(language, LANGUAGES[i]) == 0) lang = i;
    if (lang < 0) {
        Buf m = {0};
        buf_adds(&m, "unknown language ");
        py_str_repr(&m, language, strlen(language));
        buf_adds(&m, "; expected one of python, javascript, shell, rust");
        log_buf(&m);
        buf_free(&m);
        return EXIT_BAD_FRAME;
    }
    close_on_exec_inherited();
    if (container && deny_clone3() != 0) {
        /* Fail closed: a sandbox without it may let user code make a user namespace. */
        log_msg("cannot install the agent's seccomp filter: %s", strerror(errno));
        return 1;
    }
    if (container && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        log_msg("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", errno);
    /* Orphans come to the agent (reap() reaps them) also if it is ever not PID 1. */
    if (container && prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        log_msg("prctl(PR_SET_CHILD_SUBREAPER, 1) failed: errno %d", errno);
    /* The kernel's link is already the resolved path (realpath would walk it component by
     * component, a readlink each). */
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0 || exe[0] != '/') {
        log_msg("cannot find the agent's directory: %s", len < 0 ? strerror(errno) : "?");
        return 1;
    }
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == exe) slash[1] = '\0';
    else if (slash) *slash = '\0';
    snprintf(A.agent_dir, sizeof A.agent_dir, "%s", exe);
    A.language = lang;
    A.container = container;
    A.exit_code = -1;
    A.stdin_open = true;
    A.linger_until = -1;
    A.quiet_until = -1;
    A.between_last = SIZE_MAX;
    A.lingering = true;
    A.rust_write_fds[0] = A.rust_write_fds[1] = -1;
    A.rust_streams[0].fd = A.rust_streams[1].fd = -1;
    if (container) name_the_user();
    open_oom_counter();
    build_child_env();
    return run();
}
