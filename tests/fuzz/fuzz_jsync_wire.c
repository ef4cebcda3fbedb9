/*
 * fuzz_jsync_wire.c — libFuzzer target for jsync's message decoders.
 *
 * The first byte picks the message (op), the rest is its payload.
 * Properties: no decoder crashes, hangs or allocates beyond the input;
 * and the encoding is canonical, so a batch the decoder accepts (entries,
 * requests, results) or a HELLO / FILE_END / DONE re-encodes to exactly
 * the input bytes.  Anything else aborts.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsync_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const jsync_wbuf *w, const uint8_t *p, size_t n) {
  if (w->err || w->len != n || (n && memcmp(w->p, p, n) != 0)) {
    abort();
  }
}

static void roundtrip(int op, const uint8_t *p, size_t n) {
  jsync_wbuf w;
  jsync_rbuf r;
  jsync_wbuf_init(&w);
  jsync_rbuf_init(&r, p, n);
  switch (op) {
  case JSYNC_OP_ENTRIES: {
    jsync_wentry *e = malloc(sizeof(*e));
    jsync_entry_ctx *in = malloc(sizeof(*in)), *out = malloc(sizeof(*out));
    if (e && in && out) {
      jsync_entry_ctx_init(in);
      jsync_entry_ctx_init(out);
      while (jsync_entry_next(&r, in, e) == 1) {
        jsync_entry_put(&w, out, e);
      }
    }
    free(e);
    free(in);
    free(out);
    if (!e || !in || !out) {
      jsync_wbuf_free(&w);
      return;
    }
    break;
  }
  case JSYNC_OP_RESULTS: {
    jsync_result *res = malloc(sizeof(*res));
    if (!res) {
      return;
    }
    while (jsync_result_next(&r, res) == 1) {
      jsync_result_put(&w, res);
    }
    free(res);
    break;
  }
  case JSYNC_OP_REQ: {
    jsync_req q;
    while (jsync_req_next(&r, &q) == 1) {
      uint64_t i, a, b;
      jsync_req_put(&w, &q);
      for (i = 0; i < q.nitems; ++i) {
        if (q.kind == JSYNC_REQ_CHUNKS) {
          jsync_req_group(&r, &a);
          jsync_req_put_group(&w, a);
        } else {
          jsync_req_range(&r, &a, &b);
          jsync_req_put_range(&w, a, b);
        }
      }
    }
    break;
  }
  case JSYNC_OP_HELLO: {
    jsync_hello h;
    if (jsync_hello_decode(p, n, &h) == 0) {
      jsync_hello_encode(&w, &h);
      jsync_hello_free(&h);
    }
    break;
  }
  case JSYNC_OP_FILE_END: {
    jsync_file_end *e = malloc(sizeof(*e));
    if (e && jsync_file_end_decode(p, n, e) == 0) {
      jsync_file_end_encode(&w, e);
    }
    free(e);
    break;
  }
  case JSYNC_OP_DONE: {
    jsync_done *d = malloc(sizeof(*d));
    if (d && jsync_done_decode(p, n, d) == 0) {
      jsync_done_encode(&w, d);
    }
    free(d);
    break;
  }
  default:
    jsync_wbuf_free(&w);
    return;
  }
  same(&w, p, n);
  jsync_wbuf_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int op;
  if (size == 0) {
    return 0;
  }
  op = data[0] % (JSYNC_OP_MAX + 1);
  if (jsync_wire_check(op, data + 1, size - 1) == 0) {
    roundtrip(op, data + 1, size - 1);
  }
  return 0;
}
