/* test_compress.c — fragment_zstd: codec names, the compressed-message
 * frame (CKT_FRAME_ZMESSAGE) and the worth-compressing guess. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zstd.h>

#include "ckt/error.h"
#include "ckt/message.h"
#include "core_buf.h"
#include "fragment_codec.h"
#include "fragment_zstd.h"

#define TEST_BUF_LIMIT (64u * 1024 * 1024)
#define MiB (1024u * 1024)
#define HEAD (CKT_FRAME_HEADER_LEN + CKT_ZFRAME_PREFIX_LEN)

/* ---- helpers ---- */

/* Deterministic pseudo-random bytes (xorshift64*). */
static void fill_random(uint8_t *p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  size_t i;
  for (i = 0; i < n; ++i) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    p[i] = (uint8_t)((x * 0x2545f4914f6cdd1dull) >> 56);
  }
}

static uint8_t *random_bytes(size_t n, uint64_t seed) {
  uint8_t *p = malloc(n ? n : 1);
  cr_assert_not_null(p);
  fill_random(p, n, seed);
  return p;
}

/* n bytes of text that looks like C source: what zstd compresses well. */
static uint8_t *source_text(size_t n) {
  static const char *const words[] = {
      "static", "int",    "return", "const",  "uint8_t", "size_t", "if",
      "for",    "while",  "buf",    "len",    "rv",      "ckt_",   "->",
      "(",      ")",      "{",      "}",      ";",       "=",      "+",
      "data",   "limit",  "NULL",   "CKT_OK", "\n  ",    "/* ",    " */",
      "error",  "stream", "frame",  "0x03"};
  uint8_t *p = malloc(n + 32);
  size_t len = 0;
  uint64_t x = 42;
  cr_assert_not_null(p);
  while (len < n) {
    const char *w;
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    w = words[(x >> 33) % (sizeof(words) / sizeof(words[0]))];
    len += (size_t)sprintf((char *)p + len, "%s ", w);
  }
  return p;
}

static ckt_zctx *zctx(void) {
  ckt_zctx *z = ckt_zctx_new();
  cr_assert_not_null(z);
  return z;
}

/* The parts of one frame in b, starting at off. */
typedef struct frame {
  uint8_t type;
  uint32_t body_len;
  int codec;
  uint32_t raw_len;
  const uint8_t *body, *data;
  size_t data_len;
} frame;

static frame parse_frame(const ckt_buf *b, size_t off) {
  frame f;
  const uint8_t *p = b->data + off;
  cr_assert_geq(b->len, off + HEAD);
  cr_assert_eq(ckt_frame_header_decode(p, &f.type, &f.body_len), CKT_OK);
  cr_assert_eq(f.type, CKT_FRAME_ZMESSAGE);
  cr_assert_eq((size_t)f.body_len, b->len - off - CKT_FRAME_HEADER_LEN,
               "the header's length is the body's");
  f.body = p + CKT_FRAME_HEADER_LEN;
  f.codec = f.body[0];
  f.raw_len = (uint32_t)f.body[1] << 24 | (uint32_t)f.body[2] << 16 |
              (uint32_t)f.body[3] << 8 | f.body[4];
  f.data = f.body + CKT_ZFRAME_PREFIX_LEN;
  f.data_len = f.body_len - CKT_ZFRAME_PREFIX_LEN;
  return f;
}

/* Encodes raw with codec into a fresh buffer, checks the frame and that it
 * decodes to raw again; returns the frame's data length. */
static size_t round_trip(ckt_zctx *z, int codec, int store_only,
                         const uint8_t *raw, size_t len) {
  ckt_buf b, back;
  frame f;
  int got = -1;
  size_t data_len;
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_zframe_encode(z, codec, store_only, raw, len, &b), CKT_OK);
  f = parse_frame(&b, 0);
  cr_assert_eq(f.codec, codec);
  cr_assert_eq((size_t)f.raw_len, len);
  cr_assert_leq(f.data_len, len, "never larger than the stored form");
  if (f.data_len == len) {
    cr_assert_eq(memcmp(f.data, raw, len), 0, "stored as is");
  }
  cr_assert_eq(ckt_zframe_decode(z, f.body, f.body_len, len, &back, &got),
               CKT_OK);
  cr_assert_eq(got, codec);
  cr_assert_eq(back.len, len);
  if (len == 0) {
    cr_assert_null(back.data, "nothing allocated for nothing");
  } else {
    cr_assert_eq(memcmp(back.data, raw, len), 0);
    cr_assert_eq(back.data[len], 0, "NUL after the contents, as in ckt_buf");
    cr_assert_eq(back.cap, len + 1, "exactly raw_len bytes and the NUL");
  }
  data_len = f.data_len;
  ckt_buf_free(&back);
  ckt_buf_free(&b);
  return data_len;
}

/* A body: codec, raw_len, then data[0..n). */
static ckt_buf make_body(int codec, uint32_t raw_len, const void *data,
                         size_t n) {
  ckt_buf b;
  uint8_t prefix[CKT_ZFRAME_PREFIX_LEN] = {
      (uint8_t)codec, (uint8_t)(raw_len >> 24), (uint8_t)(raw_len >> 16),
      (uint8_t)(raw_len >> 8), (uint8_t)raw_len};
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_buf_append(&b, prefix, sizeof(prefix)), CKT_OK);
  cr_assert_eq(ckt_buf_append(&b, data, n), CKT_OK);
  return b;
}

/* One zstd frame of src[0..n), with or without the content size. */
static ckt_buf zstd_frame(const void *src, size_t n, int content_size) {
  ZSTD_CCtx *c = ZSTD_createCCtx();
  ckt_buf b;
  uint8_t *dst = malloc(ZSTD_compressBound(n));
  size_t got;
  cr_assert_not_null(c);
  cr_assert_not_null(dst);
  cr_assert(!ZSTD_isError(
      ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, content_size)));
  if (content_size) {
    got = ZSTD_compress2(c, dst, ZSTD_compressBound(n), src, n);
  } else {
    /* Streaming without a pledged size leaves the size out. */
    ZSTD_outBuffer out = {dst, ZSTD_compressBound(n), 0};
    ZSTD_inBuffer in = {src, n, 0};
    cr_assert(
        !ZSTD_isError(ZSTD_compressStream2(c, &out, &in, ZSTD_e_continue)));
    cr_assert_eq(ZSTD_compressStream2(c, &out, &in, ZSTD_e_end), 0);
    got = out.pos;
  }
  cr_assert(!ZSTD_isError(got));
  cr_assert_eq(ZSTD_getFrameContentSize(dst, got),
               content_size ? (unsigned long long)n : ZSTD_CONTENTSIZE_UNKNOWN);
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_buf_append(&b, dst, got), CKT_OK);
  free(dst);
  ZSTD_freeCCtx(c);
  return b;
}

/* Decodes body, expecting the error want, and that *raw is left empty. */
static void decode_fails(ckt_zctx *z, const ckt_buf *body, size_t max_raw,
                         int want, const char *why) {
  ckt_buf raw;
  int codec = -1;
  cr_assert_eq(
      ckt_zframe_decode(z, body->data, body->len, max_raw, &raw, &codec), want,
      "%s", why);
  cr_assert_null(raw.data, "%s: nothing kept", why);
  cr_assert_eq(raw.len, 0);
  cr_assert_eq(codec, -1, "%s: codec untouched", why);
}

/* ---- codec names ---- */

Test(compress, codec_names_round_trip) {
  static const char *const names[] = {
      "auto", "none", "zstd:fast", "zstd:01", "zstd:03", "zstd:07", "zstd:11"};
  int c, got;
  for (c = CKT_CODEC_AUTO; c <= CKT_CODEC_MAX; ++c) {
    cr_assert_str_eq(ckt_codec_name(c), names[c]);
    got = -1;
    cr_assert_eq(ckt_codec_parse(ckt_codec_name(c), &got), CKT_OK);
    cr_assert_eq(got, c);
  }
  cr_assert_str_eq(ckt_codec_name(-1), "?");
  cr_assert_str_eq(ckt_codec_name(CKT_CODEC_MAX + 1), "?");
}

Test(compress, codec_aliases_parse) {
  static const struct {
    const char *name;
    int codec;
  } aliases[] = {{"zstd", CKT_CODEC_ZSTD_1},
                 {"zstd:1", CKT_CODEC_ZSTD_1},
                 {"zstd:3", CKT_CODEC_ZSTD_3},
                 {"zstd:7", CKT_CODEC_ZSTD_7},
                 {"off", CKT_CODEC_NONE}};
  size_t i;
  int got;
  for (i = 0; i < sizeof(aliases) / sizeof(aliases[0]); ++i) {
    got = -1;
    cr_assert_eq(ckt_codec_parse(aliases[i].name, &got), CKT_OK, "%s",
                 aliases[i].name);
    cr_assert_eq(got, aliases[i].codec, "%s", aliases[i].name);
  }
}

Test(compress, unknown_codec_names_are_refused) {
  static const char *const bad[] = {
      "",        "ZSTD", "Zstd:03", "zstd:", "zstd:2", "zstd:011",
      "zstd:-5", "gzip", "auto ",   " none", "?",      "zstd:110"};
  size_t i;
  int got = 99;
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    cr_assert_eq(ckt_codec_parse(bad[i], &got), CKT_ERR_INVALID_ARGUMENT,
                 "'%s'", bad[i]);
    cr_assert_eq(got, 99, "unchanged on error");
  }
  cr_assert_eq(ckt_codec_parse(NULL, &got), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_codec_parse("none", NULL), CKT_ERR_INVALID_ARGUMENT);
}

Test(compress, codec_levels) {
  cr_assert_eq(ckt_codec_level(CKT_CODEC_ZSTD_FAST), -5);
  cr_assert_eq(ckt_codec_level(CKT_CODEC_ZSTD_1), 1);
  cr_assert_eq(ckt_codec_level(CKT_CODEC_ZSTD_3), 3);
  cr_assert_eq(ckt_codec_level(CKT_CODEC_ZSTD_7), 7);
  cr_assert_eq(ckt_codec_level(CKT_CODEC_ZSTD_11), 11);
  cr_assert_eq(ckt_codec_level(CKT_CODEC_AUTO), 0);
  cr_assert_eq(ckt_codec_level(CKT_CODEC_NONE), 0);
  cr_assert_eq(ckt_codec_level(CKT_CODEC_MAX + 1), 0);
}

/* ---- the frame header ---- */

Test(compress, frame_header_accepts_zmessage) {
  uint8_t hdr[CKT_FRAME_HEADER_LEN], type = 0;
  uint32_t len = 0;
  ckt_frame_header_encode(hdr, CKT_FRAME_ZMESSAGE, 77);
  cr_assert_eq(hdr[0], 0x03);
  cr_assert_eq(ckt_frame_header_decode(hdr, &type, &len), CKT_OK);
  cr_assert_eq(type, CKT_FRAME_ZMESSAGE);
  cr_assert_eq(len, 77);
  hdr[0] = 0x04;
  cr_assert_eq(ckt_frame_header_decode(hdr, &type, &len), CKT_ERR_FORMAT);
}

/* ---- round trips ---- */

Test(compress, text_round_trips_compressed_with_every_codec) {
  ckt_zctx *z = zctx();
  size_t sizes[] = {100, 4096, 100000, MiB}, i;
  int c;
  for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
    uint8_t *text = source_text(sizes[i]);
    size_t fast = 0;
    for (c = CKT_CODEC_ZSTD_FAST; c <= CKT_CODEC_ZSTD_11; ++c) {
      size_t n = round_trip(z, c, 0, text, sizes[i]);
      /* zstd's negative levels do not code literals: short text does not
       * shrink there. */
      if (sizes[i] >= 1000 || c != CKT_CODEC_ZSTD_FAST) {
        cr_assert_lt(n, sizes[i], "codec %d, %zu bytes: compressed", c,
                     sizes[i]);
      }
      if (sizes[i] >= 100000) {
        cr_assert_lt(n, sizes[i] / 2, "text compresses well");
      }
      if (c == CKT_CODEC_ZSTD_FAST) {
        fast = n;
      } else if (c == CKT_CODEC_ZSTD_11 && sizes[i] >= 4096) {
        cr_assert_lt(n, fast, "the level was applied");
      }
    }
    free(text);
  }
  ckt_zctx_free(z);
}

Test(compress, random_bytes_are_stored_with_every_codec) {
  ckt_zctx *z = zctx();
  size_t sizes[] = {0, 1, 63, 64, 1000, 65536, MiB}, i;
  int c;
  for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
    uint8_t *rnd = random_bytes(sizes[i], i);
    for (c = CKT_CODEC_ZSTD_FAST; c <= CKT_CODEC_ZSTD_11; ++c) {
      cr_assert_eq(round_trip(z, c, 0, rnd, sizes[i]), sizes[i],
                   "codec %d, %zu bytes: stored", c, sizes[i]);
    }
    free(rnd);
  }
  ckt_zctx_free(z);
}

Test(compress, store_only_keeps_text_as_is) {
  ckt_zctx *z = zctx();
  uint8_t *text = source_text(100000);
  int c;
  for (c = CKT_CODEC_ZSTD_FAST; c <= CKT_CODEC_ZSTD_11; ++c) {
    cr_assert_eq(round_trip(z, c, 1, text, 100000), 100000);
  }
  free(text);
  ckt_zctx_free(z);
}

/* Text too short for zstd to win: the guess says try, zstd's frame is not
 * smaller, the stored form is sent.  Both ways of making room: a fresh
 * buffer (the stored copy is written first, then overwritten and
 * restored) and one with room to spare. */
Test(compress, stored_when_zstd_does_not_win) {
  ckt_zctx *z = zctx();
  uint8_t raw[80], *rnd = random_bytes(4000, 7);
  ckt_buf b;
  frame f;
  size_t i, start;
  for (i = 0; i < sizeof(raw); ++i) {
    raw[i] = (uint8_t)('a' + rnd[i] % 26);
  }
  cr_assert_eq(ckt_compress_worthwhile(raw, sizeof(raw)), 1);
  cr_assert_eq(round_trip(z, CKT_CODEC_ZSTD_1, 0, raw, sizeof(raw)),
               sizeof(raw));

  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_buf_append(&b, rnd, 4000), CKT_OK);
  b.len = start = 10; /* keep 10 bytes and all the capacity */
  cr_assert_geq(b.cap - b.len - 1, HEAD + sizeof(raw), "room to spare");
  cr_assert_eq(ckt_zframe_encode(z, CKT_CODEC_ZSTD_3, 0, raw, sizeof(raw), &b),
               CKT_OK);
  f = parse_frame(&b, start);
  cr_assert_eq(f.data_len, sizeof(raw));
  cr_assert_eq(memcmp(f.data, raw, sizeof(raw)), 0);
  cr_assert_eq(memcmp(b.data, rnd, 10), 0, "existing bytes kept");
  ckt_buf_free(&b);
  free(rnd);
  ckt_zctx_free(z);
}

/* Whether out had room or had to grow, the frame is the same. */
Test(compress, encode_appends_and_is_the_same_in_any_buffer) {
  ckt_zctx *z = zctx();
  uint8_t *text = source_text(50000);
  ckt_buf fresh, roomy;
  frame f;
  ckt_buf_init(&fresh, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_zframe_encode(z, CKT_CODEC_ZSTD_7, 0, text, 50000, &fresh),
               CKT_OK);
  ckt_buf_init(&roomy, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_buf_append(&roomy, text, 50000), CKT_OK);
  cr_assert_eq(ckt_buf_append(&roomy, text, 50000), CKT_OK);
  roomy.len = 3; /* keep 3 bytes and all the capacity */
  cr_assert_eq(ckt_zframe_encode(z, CKT_CODEC_ZSTD_7, 0, text, 50000, &roomy),
               CKT_OK);
  cr_assert_eq(memcmp(roomy.data, text, 3), 0, "existing bytes kept");
  cr_assert_eq(roomy.len, 3 + fresh.len);
  cr_assert_eq(memcmp(roomy.data + 3, fresh.data, fresh.len), 0);
  cr_assert_eq(roomy.data[roomy.len], 0);
  f = parse_frame(&fresh, 0);
  cr_assert_lt(f.data_len, 50000);
  ckt_buf_free(&fresh);
  ckt_buf_free(&roomy);
  free(text);
  ckt_zctx_free(z);
}

/* A real message through the frame and back. */
Test(compress, message_round_trips_through_a_zframe) {
  ckt_zctx *z = zctx();
  ckt_message *m = ckt_message_new(), *d = NULL;
  uint8_t *text = source_text(200000);
  ckt_buf enc, frm, raw;
  frame f;
  int codec;
  cr_assert_not_null(m);
  m->type = CKT_MSG_CALL;
  m->call_id = 9;
  cr_assert_eq(ckt_message_set_service(m, "svc"), CKT_OK);
  cr_assert_eq(ckt_message_set_payload(m, text, 200000), CKT_OK);
  ckt_buf_init(&enc, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_message_encode(m, &enc), CKT_OK);
  ckt_buf_init(&frm, TEST_BUF_LIMIT);
  cr_assert_eq(
      ckt_zframe_encode(z, CKT_CODEC_ZSTD_FAST, 0, enc.data, enc.len, &frm),
      CKT_OK);
  f = parse_frame(&frm, 0);
  cr_assert_lt(f.data_len, enc.len / 2);
  cr_assert_eq(ckt_zframe_decode(z, f.body, f.body_len,
                                 ckt_message_encoded_max(NULL), &raw, &codec),
               CKT_OK);
  cr_assert_eq(codec, CKT_CODEC_ZSTD_FAST);
  cr_assert_eq(ckt_message_decode(raw.data, raw.len, NULL, &d), CKT_OK);
  cr_assert(ckt_message_equal(m, d));
  ckt_message_free(d);
  ckt_message_free(m);
  ckt_buf_free(&raw);
  ckt_buf_free(&frm);
  ckt_buf_free(&enc);
  free(text);
  ckt_zctx_free(z);
}

/* Another encoder's frame without the content size decodes as well. */
Test(compress, frame_without_content_size_is_accepted) {
  ckt_zctx *z = zctx();
  uint8_t *text = source_text(5000);
  ckt_buf zf = zstd_frame(text, 5000, 0), body, raw;
  int codec = -1;
  body = make_body(CKT_CODEC_ZSTD_11, 5000, zf.data, zf.len);
  cr_assert_eq(ckt_zframe_decode(z, body.data, body.len, 5000, &raw, &codec),
               CKT_OK);
  cr_assert_eq(codec, CKT_CODEC_ZSTD_11);
  cr_assert_eq(raw.len, 5000);
  cr_assert_eq(memcmp(raw.data, text, 5000), 0);
  ckt_buf_free(&raw);
  ckt_buf_free(&body);
  ckt_buf_free(&zf);
  free(text);
  ckt_zctx_free(z);
}

/* ---- worth compressing? ---- */

Test(compress, worthwhile_refuses_random_bytes) {
  size_t sizes[] = {64, 100, 1000, 4096, 10000, 65536, MiB}, i;
  uint64_t seed;
  for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
    for (seed = 1; seed <= 8; ++seed) {
      uint8_t *rnd = random_bytes(sizes[i], seed * 100 + i);
      cr_assert_eq(ckt_compress_worthwhile(rnd, sizes[i]), 0,
                   "%zu random bytes, seed %llu", sizes[i],
                   (unsigned long long)seed);
      free(rnd);
    }
  }
}

Test(compress, worthwhile_accepts_text_and_repetition) {
  size_t sizes[] = {64, 200, 5000, MiB}, i;
  for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
    uint8_t *text = source_text(sizes[i]);
    uint8_t *zeros = calloc(1, sizes[i]);
    uint8_t *abc = malloc(sizes[i]);
    size_t k;
    cr_assert_not_null(zeros);
    cr_assert_not_null(abc);
    for (k = 0; k < sizes[i]; ++k) {
      abc[k] = (uint8_t)("abc"[k % 3]);
    }
    cr_assert_eq(ckt_compress_worthwhile(text, sizes[i]), 1, "text %zu",
                 sizes[i]);
    cr_assert_eq(ckt_compress_worthwhile(zeros, sizes[i]), 1, "zeros %zu",
                 sizes[i]);
    cr_assert_eq(ckt_compress_worthwhile(abc, sizes[i]), 1, "abc %zu",
                 sizes[i]);
    free(text);
    free(zeros);
    free(abc);
  }
}

/* Bytes that each look uniform but repeat: only LZ sees it, and the
 * repeat search should too. */
Test(compress, worthwhile_accepts_a_repeated_random_block) {
  size_t periods[] = {16, 48, 256}, i, k;
  uint8_t *buf = malloc(MiB);
  cr_assert_not_null(buf);
  for (i = 0; i < sizeof(periods) / sizeof(periods[0]); ++i) {
    fill_random(buf, periods[i], i + 1);
    for (k = periods[i]; k < MiB; ++k) {
      buf[k] = buf[k - periods[i]];
    }
    cr_assert_eq(ckt_compress_worthwhile(buf, MiB), 1, "period %zu",
                 periods[i]);
  }
  free(buf);
}

Test(compress, worthwhile_refuses_tiny_buffers) {
  uint8_t zeros[64] = {0};
  size_t n;
  for (n = 0; n < 64; ++n) {
    cr_assert_eq(ckt_compress_worthwhile(zeros, n), 0, "%zu bytes", n);
  }
  cr_assert_eq(ckt_compress_worthwhile(zeros, 64), 1);
  cr_assert_eq(ckt_compress_worthwhile(NULL, 1000), 0);
}

/* The sample is spread over the buffer: random where the start is looked
 * at, compressible further on. */
Test(compress, worthwhile_samples_the_whole_buffer) {
  uint8_t *buf = calloc(1, MiB);
  cr_assert_not_null(buf);
  fill_random(buf, MiB / 2, 3);
  cr_assert_eq(ckt_compress_worthwhile(buf, MiB), 1, "random, then zeros");
  fill_random(buf, MiB - MiB / 4, 4);
  cr_assert_eq(ckt_compress_worthwhile(buf, MiB), 1, "zeros in the last 1/4");
  memset(buf, 0, MiB / 2);
  fill_random(buf + MiB / 2, MiB / 2, 5);
  cr_assert_eq(ckt_compress_worthwhile(buf, MiB), 1, "zeros, then random");
  fill_random(buf, MiB, 6);
  cr_assert_eq(ckt_compress_worthwhile(buf, MiB), 0, "all random");
  free(buf);
}

/* ---- decoding refusals ---- */

Test(compress, decode_refuses_unknown_codecs) {
  ckt_zctx *z = zctx();
  static const int codecs[] = {0, 1, 7, 0x80, 0xff};
  size_t i;
  for (i = 0; i < sizeof(codecs) / sizeof(codecs[0]); ++i) {
    ckt_buf body = make_body(codecs[i], 5, "hello", 5);
    decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "unknown codec");
    ckt_buf_free(&body);
  }
  ckt_zctx_free(z);
}

Test(compress, decode_refuses_short_bodies) {
  ckt_zctx *z = zctx();
  static const uint8_t prefix[] = {CKT_CODEC_ZSTD_1, 0, 0, 0, 0};
  ckt_buf raw;
  int codec = -1;
  size_t n;
  for (n = 0; n < CKT_ZFRAME_PREFIX_LEN; ++n) {
    ckt_buf body;
    ckt_buf_init(&body, TEST_BUF_LIMIT);
    cr_assert_eq(ckt_buf_append(&body, prefix, n), CKT_OK);
    decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "shorter than the prefix");
    ckt_buf_free(&body);
  }
  cr_assert_eq(ckt_zframe_decode(z, NULL, 0, MiB, &raw, &codec),
               CKT_ERR_FORMAT);
  /* The prefix alone is an empty message, stored. */
  cr_assert_eq(ckt_zframe_decode(z, prefix, sizeof(prefix), MiB, &raw, &codec),
               CKT_OK);
  cr_assert_eq(raw.len, 0);
  cr_assert_eq(codec, CKT_CODEC_ZSTD_1);
  ckt_buf_free(&raw);
  ckt_zctx_free(z);
}

Test(compress, decode_refuses_raw_len_beyond_max_raw) {
  ckt_zctx *z = zctx();
  ckt_buf body = make_body(CKT_CODEC_ZSTD_3, 1001, "x", 1), raw;
  uint8_t *text = source_text(1000);
  ckt_buf zf = zstd_frame(text, 1000, 1);
  int codec;
  decode_fails(z, &body, 1000, CKT_ERR_TOO_LARGE, "1001 > 1000");
  ckt_buf_free(&body);
  /* The bound itself is fine. */
  body = make_body(CKT_CODEC_ZSTD_3, 1000, zf.data, zf.len);
  cr_assert_eq(ckt_zframe_decode(z, body.data, body.len, 1000, &raw, &codec),
               CKT_OK);
  ckt_buf_free(&raw);
  decode_fails(z, &body, 999, CKT_ERR_TOO_LARGE, "1000 > 999");
  decode_fails(z, &body, 0, CKT_ERR_TOO_LARGE, "1000 > 0");
  ckt_buf_free(&body);
  ckt_buf_free(&zf);
  free(text);
  ckt_zctx_free(z);
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#ifndef UNDER_ASAN
/* Caps this process's address space to what it uses now plus `extra`, so
 * that any large allocation fails.  Criterion runs each test in its own
 * process, so the cap ends with the test. */
static void cap_address_space(size_t extra) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long pages;
  struct rlimit rl;
  cr_assert_not_null(f);
  cr_assert_eq(fscanf(f, "%lu", &pages), 1);
  fclose(f);
  rl.rlim_cur = rl.rlim_max =
      (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + extra;
  cr_assert_eq(setrlimit(RLIMIT_AS, &rl), 0);
}
#endif

/* 4 GiB claimed by a few bytes: refused from the length alone.  With the
 * address space capped (in the build without ASan), a decoder that
 * allocated first would get NOMEM. */
Test(compress, huge_raw_len_is_refused_before_allocating) {
  ckt_zctx *z = zctx();
  ckt_buf body = make_body(CKT_CODEC_ZSTD_1, 0xffffffffu, "\x28\xb5", 2);
  ckt_buf zf = zstd_frame("", 0, 1);
#ifndef UNDER_ASAN
  /* ASan reserves terabytes of shadow memory: no cap then. */
  cap_address_space(64u * 1024 * 1024);
  {
    void *big = malloc(1024u * 1024 * 1024);
    cr_assert_null(big, "the cap works");
  }
#endif
  decode_fails(z, &body, MiB, CKT_ERR_TOO_LARGE, "4 GiB against 1 MiB");
  decode_fails(z, &body, 0xfffffffeu, CKT_ERR_TOO_LARGE, "by one");
  /* With no bound at all, the bytes must still make one frame, not of
   * another stated size, before anything is allocated. */
  decode_fails(z, &body, SIZE_MAX, CKT_ERR_FORMAT, "no zstd frame");
  ckt_buf_free(&body);
  body = make_body(CKT_CODEC_ZSTD_1, 0xffffffffu, zf.data, zf.len);
  decode_fails(z, &body, SIZE_MAX, CKT_ERR_FORMAT, "frame of 0 bytes");
  ckt_buf_free(&body);
  ckt_buf_free(&zf);
  ckt_zctx_free(z);
}

Test(compress, decode_refuses_data_longer_than_raw_len) {
  ckt_zctx *z = zctx();
  ckt_buf body = make_body(CKT_CODEC_ZSTD_1, 4, "hello", 5);
  decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "5 bytes for 4");
  ckt_buf_free(&body);
  body = make_body(CKT_CODEC_ZSTD_1, 0, "h", 1);
  decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "1 byte for 0");
  ckt_buf_free(&body);
  ckt_zctx_free(z);
}

/* raw_len says one size, the frame holds another: whether the frame
 * states its size (refused from the header) or not (refused by the
 * decompression, which has exactly raw_len bytes to write to). */
Test(compress, decode_refuses_a_frame_of_the_wrong_size) {
  ckt_zctx *z = zctx();
  uint8_t *text = source_text(1000);
  int content_size;
  for (content_size = 0; content_size <= 1; ++content_size) {
    ckt_buf zf = zstd_frame(text, 1000, content_size), body;
    cr_assert_lt(zf.len, 500);
    body = make_body(CKT_CODEC_ZSTD_1, 999, zf.data, zf.len);
    decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "frame larger than raw_len");
    ckt_buf_free(&body);
    body = make_body(CKT_CODEC_ZSTD_1, 1001, zf.data, zf.len);
    decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "frame smaller than raw_len");
    ckt_buf_free(&body);
    body = make_body(CKT_CODEC_ZSTD_1, (uint32_t)zf.len + 1, zf.data, zf.len);
    decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "much smaller");
    ckt_buf_free(&body);
    ckt_buf_free(&zf);
  }
  free(text);
  ckt_zctx_free(z);
}

Test(compress, decode_refuses_truncated_zstd) {
  ckt_zctx *z = zctx();
  uint8_t *text = source_text(20000);
  ckt_buf zf = zstd_frame(text, 20000, 1);
  size_t cut;
  for (cut = 0; cut < zf.len; ++cut) {
    ckt_buf body = make_body(CKT_CODEC_ZSTD_1, 20000, zf.data, cut);
    decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "truncated frame");
    ckt_buf_free(&body);
  }
  ckt_buf_free(&zf);
  free(text);
  ckt_zctx_free(z);
}

Test(compress, decode_refuses_bytes_after_the_frame) {
  ckt_zctx *z = zctx();
  uint8_t *text = source_text(20000);
  ckt_buf zf = zstd_frame(text, 20000, 1), body;
  /* A skippable frame: magic 0x184D2A50, u32 LE length 0. */
  static const uint8_t skippable[] = {0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0};
  int content_size;

  body = make_body(CKT_CODEC_ZSTD_1, 20000, zf.data, zf.len);
  cr_assert_eq(ckt_buf_append(&body, "", 1), CKT_OK);
  decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "a trailing zero byte");
  ckt_buf_free(&body);

  body = make_body(CKT_CODEC_ZSTD_1, 20000, zf.data, zf.len);
  cr_assert_eq(ckt_buf_append(&body, skippable, sizeof(skippable)), CKT_OK);
  decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "a skippable frame after");
  ckt_buf_free(&body);

  body = make_body(CKT_CODEC_ZSTD_1, 20000, skippable, sizeof(skippable));
  cr_assert_eq(ckt_buf_append(&body, zf.data, zf.len), CKT_OK);
  decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "a skippable frame before");
  ckt_buf_free(&body);

  /* Only today's format: not the legacy ones libzstd may also read. */
  body = make_body(CKT_CODEC_ZSTD_1, 20000, zf.data, zf.len);
  cr_assert_eq(body.data[CKT_ZFRAME_PREFIX_LEN], 0x28);
  body.data[CKT_ZFRAME_PREFIX_LEN] = 0x27; /* v0.7's magic number */
  decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "a legacy magic number");
  ckt_buf_free(&body);
  ckt_buf_free(&zf);

  /* Two frames whose sizes add up to raw_len, which zstd alone would
   * decode as one output. */
  for (content_size = 0; content_size <= 1; ++content_size) {
    ckt_buf a = zstd_frame(text, 10000, content_size);
    ckt_buf b = zstd_frame(text + 10000, 10000, content_size);
    body = make_body(CKT_CODEC_ZSTD_1, 20000, a.data, a.len);
    cr_assert_eq(ckt_buf_append(&body, b.data, b.len), CKT_OK);
    decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "two frames");
    ckt_buf_free(&body);
    ckt_buf_free(&a);
    ckt_buf_free(&b);
  }
  free(text);
  ckt_zctx_free(z);
}

Test(compress, decode_refuses_garbage_and_bad_arguments) {
  ckt_zctx *z = zctx();
  uint8_t *rnd = random_bytes(200, 9);
  ckt_buf body = make_body(CKT_CODEC_ZSTD_1, 1000, rnd, 200), raw;
  int codec;
  decode_fails(z, &body, MiB, CKT_ERR_FORMAT, "not zstd");
  cr_assert_eq(ckt_zframe_decode(NULL, body.data, body.len, MiB, &raw, &codec),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_null(raw.data);
  cr_assert_eq(ckt_zframe_decode(z, body.data, body.len, MiB, &raw, NULL),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_zframe_decode(z, NULL, 5, MiB, &raw, &codec),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_zframe_decode(z, body.data, body.len, MiB, NULL, &codec),
               CKT_ERR_INVALID_ARGUMENT);
  ckt_buf_free(&body);
  free(rnd);
  ckt_zctx_free(z);
}

/* ---- encoding refusals ---- */

Test(compress, encode_refuses_bad_arguments) {
  ckt_zctx *z = zctx();
  static const int codecs[] = {CKT_CODEC_AUTO, CKT_CODEC_NONE,
                               CKT_CODEC_MAX + 1, -1};
  uint8_t raw[100] = {0};
  ckt_buf b;
  size_t i;
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  for (i = 0; i < sizeof(codecs) / sizeof(codecs[0]); ++i) {
    cr_assert_eq(ckt_zframe_encode(z, codecs[i], 0, raw, sizeof(raw), &b),
                 CKT_ERR_INVALID_ARGUMENT, "codec %d", codecs[i]);
  }
  cr_assert_eq(ckt_zframe_encode(NULL, CKT_CODEC_ZSTD_1, 0, raw, 1, &b),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_zframe_encode(z, CKT_CODEC_ZSTD_1, 0, raw, 1, NULL),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_zframe_encode(z, CKT_CODEC_ZSTD_1, 0, NULL, 1, &b),
               CKT_ERR_INVALID_ARGUMENT);
#if SIZE_MAX > UINT32_MAX
  /* Refused from the length alone (raw is not read). */
  cr_assert_eq(ckt_zframe_encode(z, CKT_CODEC_ZSTD_1, 1, raw,
                                 (size_t)UINT32_MAX - CKT_ZFRAME_PREFIX_LEN + 1,
                                 &b),
               CKT_ERR_INVALID_ARGUMENT);
#endif
  cr_assert_eq(b.len, 0);
  cr_assert_eq(ckt_zframe_encode(z, CKT_CODEC_ZSTD_1, 0, NULL, 0, &b), CKT_OK,
               "an empty message");
  cr_assert_eq(b.len, HEAD);
  ckt_buf_free(&b);
  ckt_zctx_free(z);
}

/* The stored form must fit out's limit; on refusal out is as it was.  The
 * compressed form fits whenever the stored one does, even where zstd's
 * worst-case bound would not. */
Test(compress, encode_respects_the_output_limit) {
  ckt_zctx *z = zctx();
  uint8_t *text = source_text(10000), *rnd = random_bytes(10000, 11);
  const uint8_t *inputs[] = {text, rnd};
  size_t i;
  int store_only;
  for (i = 0; i < 2; ++i) {
    for (store_only = 0; store_only <= 1; ++store_only) {
      ckt_buf b;
      ckt_buf_init(&b, 5 + HEAD + 10000 - 1);
      cr_assert_eq(ckt_buf_append(&b, "hello", 5), CKT_OK);
      cr_assert_eq(ckt_zframe_encode(z, CKT_CODEC_ZSTD_3, store_only, inputs[i],
                                     10000, &b),
                   CKT_ERR_TOO_LARGE);
      cr_assert_eq(b.len, 5);
      cr_assert_str_eq((const char *)b.data, "hello");
      b.limit++;
      cr_assert_eq(ckt_zframe_encode(z, CKT_CODEC_ZSTD_3, store_only, inputs[i],
                                     10000, &b),
                   CKT_OK);
      if (i == 0 && !store_only) {
        cr_assert_lt(b.len, 5 + HEAD + 10000, "text compressed at the limit");
      } else {
        cr_assert_eq(b.len, b.limit);
      }
      ckt_buf_free(&b);
    }
  }
  free(text);
  free(rnd);
  ckt_zctx_free(z);
}

/* ckt_zframe_seal() makes, in place, exactly the frame ckt_zframe_encode()
 * appends: compressed for text, stored for random bytes and store_only. */
Test(compress, seal_in_place_matches_encode) {
  ckt_zctx *z = ckt_zctx_new();
  const size_t sizes[] = {0, 63, 64, 1000, 100000, 1 << 20};
  cr_assert_not_null(z);
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
    for (int kind = 0; kind < 3; ++kind) {
      size_t n = sizes[i];
      uint8_t *raw = kind == 1 ? random_bytes(n, 9 + i) : source_text(n);
      int store_only = kind == 2;
      for (int codec = CKT_CODEC_ZSTD_FAST; codec <= CKT_CODEC_MAX; ++codec) {
        ckt_buf want, got;
        ckt_buf_init(&want, n + 64);
        ckt_buf_init(&got, n + 64);
        cr_assert_eq(ckt_zframe_encode(z, codec, store_only, raw, n, &want),
                     CKT_OK);
        cr_assert_eq(ckt_buf_append(&got, "xyzhdrpref", 10), CKT_OK);
        cr_assert_eq(ckt_buf_append(&got, raw, n), CKT_OK);
        cr_assert_eq(ckt_zframe_seal(z, codec, store_only, &got, 0), CKT_OK);
        cr_assert_eq(got.len, want.len, "size %zu kind %d codec %d", n, kind,
                     codec);
        cr_assert(memcmp(got.data, want.data, want.len) == 0);
        if (kind == 0 && n >= 1000) {
          cr_assert_lt(got.len, n, "text was not compressed");
        } else if (kind != 0) {
          cr_assert_eq(got.len, n + 10, "not stored");
        }
        ckt_buf_free(&want);
        ckt_buf_free(&got);
      }
      free(raw);
    }
  }
  {
    ckt_buf b;
    ckt_buf_init(&b, 64);
    cr_assert_eq(ckt_buf_append(&b, "short", 5), CKT_OK);
    cr_assert_eq(ckt_zframe_seal(z, CKT_CODEC_ZSTD_1, 0, &b, 0),
                 CKT_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ckt_zframe_seal(z, CKT_CODEC_NONE, 0, &b, 0),
                 CKT_ERR_INVALID_ARGUMENT);
    ckt_buf_free(&b);
  }
  ckt_zctx_free(z);
}
