/* test_jsync_wire.c — jsync's message codec: round trips and refusals. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "jsync_wire.h"

Test(jsync_wire, varints_round_trip_and_overlong_forms_are_refused) {
  static const uint64_t vals[] = {0, 1, 127, 128, 300, 1ull << 32, UINT64_MAX};
  jsync_wbuf w;
  jsync_rbuf r;
  size_t i;
  jsync_wbuf_init(&w);
  for (i = 0; i < sizeof(vals) / sizeof(vals[0]); ++i) {
    jsync_w_varint(&w, vals[i]);
  }
  jsync_w_svarint(&w, -5);
  jsync_w_svarint(&w, INT64_MIN);
  jsync_rbuf_init(&r, w.p, w.len);
  for (i = 0; i < sizeof(vals) / sizeof(vals[0]); ++i) {
    cr_assert_eq(jsync_r_varint(&r), vals[i]);
  }
  cr_assert_eq(jsync_r_svarint(&r), -5);
  cr_assert_eq(jsync_r_svarint(&r), INT64_MIN);
  cr_assert(jsync_r_done(&r));
  jsync_wbuf_free(&w);
  {
    const uint8_t overlong[] = {0x80, 0x00};
    const uint8_t too_big[] = {0xff, 0xff, 0xff, 0xff, 0xff,
                               0xff, 0xff, 0xff, 0xff, 0x02};
    const uint8_t cut[] = {0x80};
    jsync_rbuf_init(&r, overlong, sizeof(overlong));
    jsync_r_varint(&r);
    cr_assert(r.err);
    jsync_rbuf_init(&r, too_big, sizeof(too_big));
    jsync_r_varint(&r);
    cr_assert(r.err);
    jsync_rbuf_init(&r, cut, sizeof(cut));
    jsync_r_varint(&r);
    cr_assert(r.err);
  }
}

Test(jsync_wire, hello_round_trips) {
  char p1[] = "a/b", p2[] = "c/", e1[] = "*.o";
  char *paths[] = {p1, p2}, *ex[] = {e1};
  jsync_hello h = {JSYNC_PROTO_VERSION,
                   JSYNC_PULL,
                   JSYNC_F_DELETE,
                   3,
                   {1, 2, 3},
                   paths,
                   2,
                   ex,
                   1};
  jsync_hello back;
  jsync_wbuf w;
  jsync_wbuf_init(&w);
  jsync_hello_encode(&w, &h);
  cr_assert_eq(jsync_hello_decode(w.p, w.len, &back), 0);
  cr_assert_eq(back.mode, JSYNC_PULL);
  cr_assert_eq(back.flags, JSYNC_F_DELETE);
  cr_assert_eq(back.ncircuits, 3);
  cr_assert_eq(back.npaths, 2);
  cr_assert_str_eq(back.paths[1], "c/");
  cr_assert_eq(back.nexcludes, 1);
  cr_assert_str_eq(back.excludes[0], "*.o");
  cr_assert_eq(memcmp(back.session, h.session, 16), 0);
  jsync_hello_free(&back);
  /* every truncation is refused */
  for (size_t n = 0; n < w.len; ++n) {
    cr_assert_neq(jsync_hello_decode(w.p, n, &back), 0, "cut at %zu", n);
  }
  jsync_wbuf_free(&w);
  /* too many circuits, unknown mode, unknown flags */
  h.ncircuits = JSYNC_WIRE_CIRCUITS_MAX + 1;
  jsync_wbuf_init(&w);
  jsync_hello_encode(&w, &h);
  cr_assert_neq(jsync_hello_decode(w.p, w.len, &back), 0);
  jsync_wbuf_free(&w);
  h.ncircuits = 1;
  h.mode = 7;
  jsync_wbuf_init(&w);
  jsync_hello_encode(&w, &h);
  cr_assert_neq(jsync_hello_decode(w.p, w.len, &back), 0);
  jsync_wbuf_free(&w);
}

Test(jsync_wire, entries_round_trip_and_bad_ones_are_refused) {
  jsync_wentry *e = calloc(1, sizeof(*e)), *b = calloc(1, sizeof(*b));
  jsync_entry_ctx *wc = malloc(sizeof(*wc)), *rc = malloc(sizeof(*rc));
  jsync_wbuf w;
  jsync_rbuf r;
  cr_assert(e && b && wc && rc);
  jsync_entry_ctx_init(wc);
  jsync_entry_ctx_init(rc);
  e->id = 7;
  e->type = JSYNC_E_SYMLINK;
  e->mode = 0777;
  e->uid = 1234;
  e->gid = 5678;
  e->mtime_sec = -12345;
  e->mtime_nsec = 999999999;
  strcpy(e->path, "dir/link");
  strcpy(e->link, "../target");
  jsync_wbuf_init(&w);
  jsync_entry_put(&w, wc, e);
  e->type = JSYNC_E_FILE;
  e->size = 1ull << 40;
  e->id = 9;
  strcpy(e->path, "dir/linked");
  jsync_entry_put(&w, wc, e);
  jsync_rbuf_init(&r, w.p, w.len);
  cr_assert_eq(jsync_entry_next(&r, rc, b), 1);
  cr_assert_eq(b->id, 7);
  cr_assert_eq(b->type, JSYNC_E_SYMLINK);
  cr_assert_str_eq(b->link, "../target");
  cr_assert_eq(b->mtime_sec, -12345);
  cr_assert_eq(b->mtime_nsec, 999999999);
  cr_assert_eq(b->uid, 1234);
  cr_assert_eq(jsync_entry_next(&r, rc, b), 1);
  cr_assert_eq(b->size, 1ull << 40);
  cr_assert_eq(b->id, 9);
  cr_assert_str_eq(b->path, "dir/linked"); /* 8 bytes shared */
  cr_assert_eq(jsync_entry_next(&r, rc, b), 0);
  cr_assert_eq(jsync_wire_check(JSYNC_OP_ENTRIES, w.p, w.len), 0);
  jsync_wbuf_free(&w);

  /* a NUL inside a path, an unknown type, nanoseconds out of range */
  {
    const uint8_t nul[] = {0, 1, 0, 0, 0, 0, 0, 0, 3, 'a', 0, 'b'};
    const uint8_t type[] = {0, 9, 0, 0, 0, 0, 0, 0, 1, 'a'};
    jsync_wbuf_init(&w);
    jsync_w_varint(&w, 0);
    jsync_w_u8(&w, JSYNC_E_FILE);
    for (int i = 0; i < 5; ++i) {
      jsync_w_varint(&w, 0);
    }
    jsync_w_varint(&w, 1000000000);
    jsync_w_str(&w, "a");
    cr_assert_neq(jsync_wire_check(JSYNC_OP_ENTRIES, w.p, w.len), 0);
    jsync_wbuf_free(&w);
    cr_assert_neq(jsync_wire_check(JSYNC_OP_ENTRIES, nul, sizeof(nul)), 0);
    cr_assert_neq(jsync_wire_check(JSYNC_OP_ENTRIES, type, sizeof(type)), 0);
  }
  /* a shared length shorter than it could be is not canonical */
  {
    jsync_wentry *x = calloc(1, sizeof(*x));
    uint8_t bad[64];
    size_t n = 0;
    cr_assert_not_null(x);
    jsync_wbuf_init(&w);
    jsync_entry_ctx_init(wc);
    strcpy(x->path, "ab");
    x->type = JSYNC_E_DIR;
    jsync_entry_put(&w, wc, x);
    memcpy(bad, w.p, w.len);
    n = w.len;
    jsync_wbuf_free(&w);
    /* second entry "ac" written with shared 0 and "ac" */
    bad[n++] = 0;           /* id gap */
    bad[n++] = JSYNC_E_DIR; /* type */
    for (int i = 0; i < 6; ++i) {
      bad[n++] = 0; /* mode uid gid size mtime nsec */
    }
    bad[n++] = 0; /* shared */
    bad[n++] = 2;
    bad[n++] = 'a';
    bad[n++] = 'c';
    cr_assert_neq(jsync_wire_check(JSYNC_OP_ENTRIES, bad, n), 0);
    bad[n - 4] = 1; /* shared 1 + "c": fine */
    bad[n - 3] = 1;
    bad[n - 2] = 'c';
    cr_assert_eq(jsync_wire_check(JSYNC_OP_ENTRIES, bad, n - 1), 0);
    free(x);
  }
  free(e);
  free(b);
  free(wc);
  free(rc);
}

Test(jsync_wire, counts_cannot_exceed_the_payload) {
  jsync_wbuf w;
  jsync_groups_head g = {1, 1000, 8192, {0}, 1000000};
  jsync_wbuf_init(&w);
  jsync_groups_head_put(&w, &g);
  /* a million groups announced, none present: refused before any work */
  cr_assert_neq(jsync_wire_check(JSYNC_OP_GROUPS, w.p, w.len), 0);
  jsync_wbuf_free(&w);
  /* a chunk size the chunker never uses */
  g.ngroups = 0;
  g.avg = 12345;
  jsync_wbuf_init(&w);
  jsync_groups_head_put(&w, &g);
  cr_assert_neq(jsync_wire_check(JSYNC_OP_GROUPS, w.p, w.len), 0);
  jsync_wbuf_free(&w);
}

Test(jsync_wire, data_lengths_must_agree) {
  jsync_wbuf w;
  jsync_data_head d = {1, 0, JSYNC_CODEC_RAW, 5};
  jsync_wbuf_init(&w);
  jsync_data_head_put(&w, &d);
  jsync_w_bytes(&w, "hello", 5);
  cr_assert_eq(jsync_wire_check(JSYNC_OP_DATA, w.p, w.len), 0);
  cr_assert_neq(jsync_wire_check(JSYNC_OP_DATA, w.p, w.len - 1), 0);
  jsync_wbuf_free(&w);
  d.raw_len = JSYNC_DATA_MAX + 1;
  d.codec = JSYNC_CODEC_ZSTD;
  jsync_wbuf_init(&w);
  jsync_data_head_put(&w, &d);
  jsync_w_u8(&w, 1);
  cr_assert_neq(jsync_wire_check(JSYNC_OP_DATA, w.p, w.len), 0);
  jsync_wbuf_free(&w);
  d.codec = 9;
  d.raw_len = 0;
  jsync_wbuf_init(&w);
  jsync_data_head_put(&w, &d);
  cr_assert_neq(jsync_wire_check(JSYNC_OP_DATA, w.p, w.len), 0);
  jsync_wbuf_free(&w);
}

Test(jsync_wire, requests_results_and_done_round_trip) {
  jsync_wbuf w;
  jsync_rbuf r;
  jsync_req q = {JSYNC_REQ_DATA, 42, 2}, back;
  jsync_result res = {0}, *rb = calloc(1, sizeof(*rb));
  jsync_done d = {0}, db;
  uint64_t a, b;
  cr_assert_not_null(rb);
  jsync_wbuf_init(&w);
  jsync_req_put(&w, &q);
  jsync_req_put_range(&w, 0, 100);
  jsync_req_put_range(&w, 200, 50);
  jsync_rbuf_init(&r, w.p, w.len);
  cr_assert_eq(jsync_req_next(&r, &back), 1);
  cr_assert_eq(back.kind, JSYNC_REQ_DATA);
  cr_assert_eq(back.id, 42);
  cr_assert_eq(back.nitems, 2);
  cr_assert_eq(jsync_req_range(&r, &a, &b), 0);
  cr_assert_eq(jsync_req_range(&r, &a, &b), 0);
  cr_assert(a == 200 && b == 50);
  cr_assert_eq(jsync_req_next(&r, &back), 0);
  jsync_wbuf_free(&w);

  res.what = JSYNC_R_FAILED;
  res.id = 3;
  strcpy(res.path, "x/y");
  strcpy(res.text, "Permission denied");
  jsync_wbuf_init(&w);
  jsync_result_put(&w, &res);
  jsync_rbuf_init(&r, w.p, w.len);
  cr_assert_eq(jsync_result_next(&r, rb), 1);
  cr_assert_str_eq(rb->text, "Permission denied");
  cr_assert_str_eq(rb->path, "x/y");
  jsync_wbuf_free(&w);
  free(rb);

  d.files = 10;
  d.transferred = 2;
  d.literal = 1000;
  d.matched = 5000;
  jsync_wbuf_init(&w);
  jsync_done_encode(&w, &d);
  cr_assert_eq(jsync_done_decode(w.p, w.len, &db), 0);
  cr_assert_eq(db.matched, 5000);
  cr_assert_eq(db.files, 10);
  jsync_wbuf_free(&w);
}
