/* Test harness for the agent's text core (tests/unit/test_agent_text.py): the agent's own
 * UTF-8 stream decoder and JSON frame parser, driven over stdin, so that the tests can
 * compare them with CPython's.
 *
 * Records on stdin: 1 byte mode, a 4-byte big-endian length, the data. Answers on stdout: a
 * 4-byte big-endian length, the result.
 *   'u': data = number of splits (1 byte), each split offset (4 bytes), the bytes. The bytes
 *        are fed to one decoder in the pieces the splits make, then flushed; the result is
 *        the decoded UTF-8.
 *   'j': data = a frame body. "OK" and, per member, "\n" + the key as JSON + "=" + the
 *        value's Python repr; or "ERR " + the error.
 */
#define main agent_main
#include "../../runtime/agent/agent.c"
#undef main

static bool read_exactly(void *p, size_t n) { return fread(p, 1, n, stdin) == n; }

static size_t be32(const unsigned char *b) {
    return ((size_t)b[0] << 24) | ((size_t)b[1] << 16) | ((size_t)b[2] << 8) | b[3];
}

static void decode_pieces(const unsigned char *d, size_t n, Buf *out) {
    size_t splits = n ? d[0] : 0;
    size_t pos = 1 + 4 * splits, prev = pos;
    if (pos > n) return;
    Utf8Decoder dec = {0};
    for (size_t i = 0; i <= splits; i++) {
        size_t at = i < splits ? pos + be32(d + 1 + 4 * i) : n;
        if (at < prev) at = prev;
        if (at > n) at = n;
        unsigned char *piece = xrealloc(NULL, at - prev + 1); /* its own buffer: ASan sees overreads */
        memcpy(piece, d + prev, at - prev);
        utf8_decode_part(&dec, piece, at - prev, false, out);
        free(piece);
        prev = at;
    }
    utf8_decode_part(&dec, NULL, 0, true, out);
}

static void parse_body(const unsigned char *d, size_t n, Buf *out) {
    unsigned char *copy = xrealloc(NULL, n + 1);
    memcpy(copy, d, n);
    Body b;
    Buf err = {0};
    if (decode_body(copy, n, 992, &b, &err)) {
        buf_adds(out, "OK");
        /* As a Python dict holds them: a key repeated in the body is listed once, where it
         * first came, with its last value (the one jobj_get finds). */
        for (size_t i = 0; i < b.obj.n; i++) {
            const JMember *m = &b.obj.m[i];
            bool seen = false;
            for (size_t j = 0; j < i && !seen; j++)
                seen = b.obj.m[j].klen == m->klen && memcmp(b.obj.m[j].key, m->key, m->klen) == 0;
            if (seen) continue;
            const JMember *last = m;
            for (size_t j = i + 1; j < b.obj.n; j++)
                if (b.obj.m[j].klen == m->klen && memcmp(b.obj.m[j].key, m->key, m->klen) == 0)
                    last = &b.obj.m[j];
            buf_addc(out, '\n');
            json_str(out, m->key, m->klen, false);
            buf_addc(out, '=');
            py_repr_value(out, &b, &last->val, false);
        }
        jobj_free(&b.obj);
    } else {
        buf_adds(out, "ERR ");
        buf_add(out, buf_head(&err), buf_size(&err));
    }
    buf_free(&err);
    free(copy);
}

int main(void) {
    unsigned char mode, header[4];
    while (read_exactly(&mode, 1) && read_exactly(header, 4)) {
        size_t n = be32(header);
        unsigned char *d = xrealloc(NULL, n + 1);
        if (!read_exactly(d, n)) break;
        Buf out = {0};
        if (mode == 'u') decode_pieces(d, n, &out);
        else parse_body(d, n, &out);
        size_t len = buf_size(&out);
        unsigned char h[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
                              (unsigned char)(len >> 8), (unsigned char)len};
        fwrite(h, 1, 4, stdout);
        if (len) fwrite(buf_head(&out), 1, len, stdout);
        fflush(stdout);
        buf_free(&out);
        free(d);
    }
    (void)agent_main;
    return 0;
}
