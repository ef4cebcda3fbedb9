/* test_fragment.c — fragment: the Message type, its wire codec, frames. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ckt/error.h"
#include "ckt/message.h"
#include "core_buf.h"
#include "fragment_codec.h"

/* Large enough for every message built here. */
#define TEST_BUF_LIMIT (64u * 1024 * 1024)

/* ---- helpers ---- */

/* A string of n copies of c (caller frees). */
static char *filled(size_t n, char c) {
  char *s = malloc(n + 1);
  cr_assert_not_null(s);
  memset(s, c, n);
  s[n] = 0;
  return s;
}

/* Encodes m into a fresh buffer, asserting success. */
static ckt_buf encode_ok(const ckt_message *m) {
  ckt_buf b;
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_message_encode(m, &b), CKT_OK);
  return b;
}

static const uint8_t binary_payload[] = {0x00, 0x01, 0x00, 0xff, 0x00,
                                         0x7f, 0x80, 0x00, 0x00};

/* A message with every field set: extreme integers (including negative
 * times), several args (one with an empty value, one replaced), a binary
 * payload with NUL bytes, and an empty subject. */
static ckt_message *full_message(void) {
  ckt_message *m = ckt_message_new();
  cr_assert_not_null(m);
  m->type = CKT_MSG_CALL;
  m->flags = CKT_MSG_FLAG_NO_COMPRESS | CKT_MSG_FLAG_LAST_PART;
  m->call_id = UINT64_MAX;
  m->serial = 0x0102030405060708ull;
  m->seqno = 42;
  m->created_ns = INT64_MIN;
  m->deadline_ns = 1700000000123456789ll;
  m->stream_part = -1;
  cr_assert_eq(ckt_message_set_from(m, "node-a/ed25519:abcd"), CKT_OK);
  cr_assert_eq(ckt_message_set_to(m, "node-b"), CKT_OK);
  cr_assert_eq(ckt_message_set_service(m, "jsync.Push"), CKT_OK);
  cr_assert_eq(ckt_message_set_subject(m, ""), CKT_OK);
  cr_assert_eq(ckt_message_set_err(m, "disk full: \xc3\xa9t\xc3\xa9"), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "path", "/tmp/x"), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "empty", ""), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "null", NULL), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "mode", "0644"), CKT_OK);
  cr_assert_eq(
      ckt_message_set_payload(m, binary_payload, sizeof(binary_payload)),
      CKT_OK);
  return m;
}

/* Raw message builder for inputs the encoder refuses to make: every field
 * is given by its length (bytes filled with 'a'), lengths may be claimed
 * without the bytes following. */
typedef struct raw {
  uint8_t version, type, flags;
  size_t from, to, service, subject;
  size_t nargs, key_len, value_len; /* every arg the same shape */
  size_t payload, err;
  int payload_claim_only; /* write the payload length but not its bytes */
} raw;

static raw raw_default(void) {
  raw r;
  memset(&r, 0, sizeof(r));
  r.version = CKT_MESSAGE_VERSION;
  r.type = CKT_MSG_ONEWAY;
  return r;
}

static void put(ckt_buf *b, uint64_t v, size_t n) {
  uint8_t x[8];
  size_t i;
  for (i = 0; i < n; ++i) {
    x[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
  }
  cr_assert_eq(ckt_buf_append(b, x, n), CKT_OK);
}

static void put_str(ckt_buf *b, size_t len_bytes, size_t len) {
  char *s = filled(len, 'a');
  put(b, len, len_bytes);
  cr_assert_eq(ckt_buf_append(b, s, len), CKT_OK);
  free(s);
}

static ckt_buf craft(const raw *r) {
  ckt_buf b;
  size_t i, k;
  int j;
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  put(&b, r->version, 1);
  put(&b, r->type, 1);
  put(&b, r->flags, 1);
  for (j = 0; j < 6; ++j) {
    put(&b, 0, 8);
  }
  put_str(&b, 2, r->from);
  put_str(&b, 2, r->to);
  put_str(&b, 2, r->service);
  put_str(&b, 2, r->subject);
  put(&b, r->nargs, 2);
  for (i = 0; i < r->nargs; ++i) {
    /* Distinct keys: the index in base 26 in the last two bytes. */
    char *key = filled(r->key_len, 'a');
    cr_assert_geq(r->key_len, 2);
    key[r->key_len - 1] = (char)('a' + i % 26);
    key[r->key_len - 2] = (char)('a' + i / 26);
    put(&b, r->key_len, 2);
    cr_assert_eq(ckt_buf_append(&b, key, r->key_len), CKT_OK);
    free(key);
    put_str(&b, 4, r->value_len);
  }
  if (r->payload_claim_only) {
    put(&b, r->payload, 4);
    return b;
  }
  put(&b, r->payload, 4);
  for (k = 0; k < r->payload; ++k) {
    put(&b, 0, 1);
  }
  put_str(&b, 4, r->err);
  return b;
}

/* Set as *out before a decode, to see that a failure resets it. */
static ckt_message sentinel;

/* Decodes a crafted message with default limits; returns the code. */
static int decode_raw(const raw *r) {
  ckt_buf b = craft(r);
  ckt_message *m = &sentinel;
  int rv = ckt_message_decode(b.data, b.len, NULL, &m);
  if (rv == CKT_OK) {
    cr_assert_not_null(m);
    ckt_message_free(m);
  } else {
    cr_assert_null(m, "a failed decode leaves *out NULL");
  }
  ckt_buf_free(&b);
  return rv;
}

/* ---- round trip and layout ---- */

Test(fragment, round_trip_of_a_fully_populated_message) {
  ckt_message *m = full_message(), *d = NULL;
  ckt_buf b = encode_ok(m);

  cr_assert_eq(ckt_message_decode(b.data, b.len, NULL, &d), CKT_OK);
  cr_assert_not_null(d);
  cr_assert_eq(d->type, CKT_MSG_CALL);
  cr_assert_eq(d->flags, CKT_MSG_FLAG_NO_COMPRESS | CKT_MSG_FLAG_LAST_PART);
  cr_assert_eq(d->call_id, UINT64_MAX);
  cr_assert_eq(d->serial, 0x0102030405060708ull);
  cr_assert_eq(d->seqno, 42);
  cr_assert_eq(d->created_ns, INT64_MIN);
  cr_assert_eq(d->deadline_ns, 1700000000123456789ll);
  cr_assert_eq(d->stream_part, -1);
  cr_assert_str_eq(d->from, "node-a/ed25519:abcd");
  cr_assert_str_eq(d->to, "node-b");
  cr_assert_str_eq(d->service, "jsync.Push");
  cr_assert_not_null(d->subject, "decoded strings are never NULL");
  cr_assert_str_eq(d->subject, "");
  cr_assert_str_eq(d->err, "disk full: \xc3\xa9t\xc3\xa9");
  cr_assert_eq(d->nargs, 4);
  cr_assert_str_eq(d->args[0].key, "path");
  cr_assert_str_eq(d->args[0].value, "/tmp/x");
  cr_assert_str_eq(d->args[1].key, "empty");
  cr_assert_str_eq(d->args[1].value, "");
  cr_assert_str_eq(d->args[2].key, "null");
  cr_assert_str_eq(d->args[2].value, "", "a NULL value arrives as \"\"");
  cr_assert_str_eq(d->args[3].key, "mode");
  cr_assert_str_eq(d->args[3].value, "0644");
  cr_assert_eq(d->payload_len, sizeof(binary_payload));
  cr_assert_eq(memcmp(d->payload, binary_payload, sizeof(binary_payload)), 0);
  cr_assert(ckt_message_equal(m, d));

  ckt_message_free(d);
  ckt_message_free(m);
  ckt_buf_free(&b);
}

Test(fragment, empty_message_round_trips_with_empty_strings) {
  ckt_message *m = ckt_message_new(), *d = NULL;
  ckt_buf b;
  cr_assert_not_null(m);
  m->type = CKT_MSG_CANCEL;
  b = encode_ok(m);
  cr_assert_eq(b.len, CKT_MESSAGE_FIXED_LEN + 4 * 2 + 2 + 4 + 4);
  cr_assert_eq(ckt_message_decode(b.data, b.len, NULL, &d), CKT_OK);
  cr_assert_str_eq(d->from, "");
  cr_assert_str_eq(d->to, "");
  cr_assert_str_eq(d->service, "");
  cr_assert_str_eq(d->subject, "");
  cr_assert_str_eq(d->err, "");
  cr_assert_eq(d->nargs, 0);
  cr_assert_null(d->payload, "an empty payload decodes as NULL");
  cr_assert_eq(d->payload_len, 0);
  cr_assert(ckt_message_equal(m, d));
  ckt_message_free(d);
  ckt_message_free(m);
  ckt_buf_free(&b);
}

/* The exact bytes of docs/wire.md's layout, written out by hand. */
Test(fragment, encoding_matches_the_documented_layout) {
  static const uint8_t want[] = {
      0x01, 0x01, 0x02,                               /* version type flags */
      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, /* call_id */
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, /* serial */
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, /* seqno */
      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, /* created -1 */
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* deadline */
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, /* stream_part */
      0x00, 0x01, 'a',                                /* from */
      0x00, 0x00,                                     /* to */
      0x00, 0x03, 's',  'v',                          /* service ... */
      'c',  0x00, 0x00,                               /* ... subject */
      0x00, 0x01,                                     /* nargs */
      0x00, 0x01, 'k',  0x00, 0x00, 0x00, 0x01, 'v',  /* k=v */
      0x00, 0x00, 0x00, 0x02, 0x00, 0xff,             /* payload */
      0x00, 0x00, 0x00, 0x00,                         /* err */
  };
  static const uint8_t payload[] = {0x00, 0xff};
  ckt_message *m = ckt_message_new();
  ckt_buf b;
  m->type = CKT_MSG_CALL;
  m->flags = CKT_MSG_FLAG_LAST_PART;
  m->call_id = 0x0102030405060708ull;
  m->serial = 9;
  m->seqno = 10;
  m->created_ns = -1;
  m->stream_part = 2;
  cr_assert_eq(ckt_message_set_from(m, "a"), CKT_OK);
  cr_assert_eq(ckt_message_set_service(m, "svc"), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "k", "v"), CKT_OK);
  cr_assert_eq(ckt_message_set_payload(m, payload, sizeof(payload)), CKT_OK);
  b = encode_ok(m);
  cr_assert_eq(b.len, sizeof(want));
  cr_assert_eq(memcmp(b.data, want, sizeof(want)), 0);
  ckt_message_free(m);
  ckt_buf_free(&b);
}

Test(fragment, encode_appends_after_existing_bytes) {
  ckt_message *m = full_message(), *d = NULL;
  ckt_buf b;
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_buf_append(&b, "HDR", 3), CKT_OK);
  cr_assert_eq(ckt_message_encode(m, &b), CKT_OK);
  cr_assert_eq(memcmp(b.data, "HDR", 3), 0);
  cr_assert_eq(ckt_message_decode(b.data + 3, b.len - 3, NULL, &d), CKT_OK);
  cr_assert(ckt_message_equal(m, d));
  ckt_message_free(d);
  ckt_message_free(m);
  ckt_buf_free(&b);
}

/* ---- malformed input ---- */

Test(fragment, every_truncation_fails_with_format) {
  ckt_message *m = full_message(), *d;
  ckt_buf b = encode_ok(m);
  size_t n;
  for (n = 0; n < b.len; ++n) {
    /* A copy of exactly n bytes, so ASan sees any read past the end. */
    uint8_t *cut = malloc(n ? n : 1);
    cr_assert_not_null(cut);
    memcpy(cut, b.data, n);
    d = &sentinel;
    cr_assert_eq(ckt_message_decode(cut, n, NULL, &d), CKT_ERR_FORMAT,
                 "truncated to %zu of %zu bytes", n, b.len);
    cr_assert_null(d);
    free(cut);
  }
  cr_assert_eq(ckt_message_decode(NULL, 0, NULL, &d), CKT_ERR_FORMAT);
  ckt_message_free(m);
  ckt_buf_free(&b);
}

Test(fragment, trailing_bytes_are_rejected) {
  ckt_message *m = full_message(), *d;
  ckt_buf b = encode_ok(m);
  cr_assert_eq(ckt_buf_append(&b, "\0", 1), CKT_OK);
  cr_assert_eq(ckt_message_decode(b.data, b.len, NULL, &d), CKT_ERR_FORMAT);
  cr_assert_eq(ckt_buf_append(&b, "garbage", 7), CKT_OK);
  cr_assert_eq(ckt_message_decode(b.data, b.len, NULL, &d), CKT_ERR_FORMAT);
  cr_assert_null(d);
  ckt_message_free(m);
  ckt_buf_free(&b);
}

Test(fragment, unknown_version_type_and_flags_are_rejected) {
  raw r = raw_default();
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.version = 0;
  cr_assert_eq(decode_raw(&r), CKT_ERR_FORMAT);
  r.version = 2;
  cr_assert_eq(decode_raw(&r), CKT_ERR_FORMAT);
  r = raw_default();
  r.type = 0;
  cr_assert_eq(decode_raw(&r), CKT_ERR_FORMAT);
  r.type = CKT_MSG_CANCEL + 1;
  cr_assert_eq(decode_raw(&r), CKT_ERR_FORMAT);
  r.type = CKT_MSG_CANCEL;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.flags = 4;
  cr_assert_eq(decode_raw(&r), CKT_ERR_FORMAT);
  r.flags = 0x80;
  cr_assert_eq(decode_raw(&r), CKT_ERR_FORMAT);
  r.flags = CKT_MSG_FLAG_NO_COMPRESS | CKT_MSG_FLAG_LAST_PART;
  cr_assert_eq(decode_raw(&r), CKT_OK);
}

/* Finds the first occurrence of needle in b (which must exist). */
static size_t find(const ckt_buf *b, const char *needle) {
  size_t n = strlen(needle), i;
  for (i = 0; i + n <= b->len; ++i) {
    if (memcmp(b->data + i, needle, n) == 0) {
      return i;
    }
  }
  cr_assert_fail("%s not in the encoding", needle);
  return 0;
}

Test(fragment, nul_bytes_in_strings_are_rejected) {
  /* Distinct markers so each field can be located in the encoding. */
  static const char *markers[] = {"FROMx", "TOxxx", "SVCxx", "SUBJx",
                                  "KEYxx", "VALxx", "ERRxx"};
  ckt_message *m = ckt_message_new(), *d;
  ckt_buf b;
  size_t i, at;
  m->type = CKT_MSG_ERROR;
  cr_assert_eq(ckt_message_set_from(m, markers[0]), CKT_OK);
  cr_assert_eq(ckt_message_set_to(m, markers[1]), CKT_OK);
  cr_assert_eq(ckt_message_set_service(m, markers[2]), CKT_OK);
  cr_assert_eq(ckt_message_set_subject(m, markers[3]), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, markers[4], markers[5]), CKT_OK);
  cr_assert_eq(ckt_message_set_err(m, markers[6]), CKT_OK);
  cr_assert_eq(ckt_message_set_payload(m, "\0\0", 2), CKT_OK);
  b = encode_ok(m);
  cr_assert_eq(ckt_message_decode(b.data, b.len, NULL, &d), CKT_OK,
               "NUL bytes in the payload are fine");
  ckt_message_free(d);
  for (i = 0; i < sizeof(markers) / sizeof(markers[0]); ++i) {
    at = find(&b, markers[i]);
    b.data[at + 2] = 0;
    cr_assert_eq(ckt_message_decode(b.data, b.len, NULL, &d), CKT_ERR_FORMAT,
                 "NUL inside %s", markers[i]);
    cr_assert_null(d);
    b.data[at + 2] = (uint8_t)markers[i][2];
  }
  ckt_message_free(m);
  ckt_buf_free(&b);
}

Test(fragment, empty_and_duplicate_arg_keys_are_rejected) {
  ckt_message *m = ckt_message_new(), *d;
  ckt_buf b;
  size_t at;
  m->type = CKT_MSG_CALL;
  cr_assert_eq(ckt_message_set_arg(m, "ka", "1"), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "kb", "2"), CKT_OK);
  b = encode_ok(m);
  /* Rename the second key to the first: same length, so still well formed. */
  at = find(&b, "kb");
  b.data[at + 1] = 'a';
  cr_assert_eq(ckt_message_decode(b.data, b.len, NULL, &d), CKT_ERR_FORMAT);
  ckt_buf_free(&b);

  /* The encoder refuses what the decoder would. */
  free(m->args[1].key);
  m->args[1].key = strdup("ka");
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT);
  m->args[1].key[0] = 0;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(b.len, 0);

  {
    raw r = raw_default();
    ckt_buf e = craft(&r);
    /* nargs 1, key length 0, value length 0, then payload and err. */
    static const uint8_t tail[2 + 2 + 4 + 4 + 4] = {0, 1};
    e.len -= 2 + 4 + 4; /* drop nargs 0, payload and err */
    cr_assert_eq(ckt_buf_append(&e, tail, sizeof(tail)), CKT_OK);
    cr_assert_eq(ckt_message_decode(e.data, e.len, NULL, &d), CKT_ERR_FORMAT,
                 "an empty key");
    ckt_buf_free(&e);
  }
  ckt_message_free(m);
}

/* ---- limits on decode ---- */

Test(fragment, decode_enforces_every_string_limit) {
  raw r;
  /* Each field at its limit decodes; one byte more is refused. */
  r = raw_default();
  r.from = CKT_MESSAGE_ADDR_MAX;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.from++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);

  r = raw_default();
  r.to = CKT_MESSAGE_ADDR_MAX;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.to++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);

  r = raw_default();
  r.service = CKT_MESSAGE_SERVICE_MAX;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.service++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);

  r = raw_default();
  r.subject = CKT_MESSAGE_SUBJECT_MAX;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.subject++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);

  r = raw_default();
  r.err = CKT_MESSAGE_ERR_MAX;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.err++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);
}

Test(fragment, decode_enforces_arg_limits) {
  raw r = raw_default();
  r.key_len = 2;
  r.nargs = CKT_MESSAGE_NARGS_MAX;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.nargs++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);

  r = raw_default();
  r.nargs = 3;
  r.key_len = CKT_MESSAGE_ARG_KEY_MAX;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.key_len++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);

  r = raw_default();
  r.nargs = 3;
  r.key_len = 2;
  r.value_len = CKT_MESSAGE_ARG_VALUE_MAX;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.value_len++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);

  /* 16 args of 2 + 65534 bytes fill the 1 MiB total exactly. */
  r = raw_default();
  r.nargs = 16;
  r.key_len = 2;
  r.value_len = CKT_MESSAGE_ARGS_TOTAL_MAX / 16 - 2;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.value_len++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);
  r.value_len = CKT_MESSAGE_ARGS_TOTAL_MAX / 16 - 2;
  r.nargs++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);
}

Test(fragment, max_payload_is_configurable) {
  raw r = raw_default();
  ckt_message_limits lim = {.max_payload = 1000};
  ckt_message *d;
  ckt_buf b;

  r.payload = 1000;
  b = craft(&r);
  cr_assert_eq(ckt_message_decode(b.data, b.len, &lim, &d), CKT_OK);
  cr_assert_eq(d->payload_len, 1000);
  ckt_message_free(d);
  lim.max_payload = 999;
  cr_assert_eq(ckt_message_decode(b.data, b.len, &lim, &d), CKT_ERR_TOO_LARGE);
  cr_assert_null(d);
  lim.max_payload = 0; /* the default */
  cr_assert_eq(ckt_message_decode(b.data, b.len, &lim, &d), CKT_OK);
  ckt_message_free(d);
  ckt_buf_free(&b);

  /* The default is 16 MiB, inclusive. */
  r.payload = CKT_MESSAGE_DEFAULT_MAX_PAYLOAD;
  cr_assert_eq(decode_raw(&r), CKT_OK);
  r.payload++;
  cr_assert_eq(decode_raw(&r), CKT_ERR_TOO_LARGE);
  lim.max_payload = CKT_MESSAGE_DEFAULT_MAX_PAYLOAD + 1;
  b = craft(&r);
  cr_assert_eq(ckt_message_decode(b.data, b.len, &lim, &d), CKT_OK);
  ckt_message_free(d);
  ckt_buf_free(&b);
}

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

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

/* Huge claimed lengths must be refused from the length alone: with the
 * address space capped at 64 MiB more than in use, a decoder that
 * allocated first would get NOMEM (or, under ASan, abort). */
Test(fragment, huge_lengths_are_refused_before_allocating) {
  raw r = raw_default();
  ckt_message_limits lim = {.max_payload = SIZE_MAX};
  ckt_message *d;
  ckt_buf b;

  r.payload = 0xffffffffu;
  r.payload_claim_only = 1;
  b = craft(&r);
  cap_address_space(64u * 1024 * 1024);
#ifndef UNDER_ASAN
  {
    /* The cap works: 1 GiB cannot be had.  (ASan aborts instead of
     * returning NULL, so this check is for the plain build.) */
    void *big = malloc(1024u * 1024 * 1024);
    cr_assert_null(big);
  }
#endif
  cr_assert_eq(ckt_message_decode(b.data, b.len, NULL, &d), CKT_ERR_TOO_LARGE,
               "4 GiB payload claimed against the 16 MiB default");
  /* Even with no payload limit, a length past the input is malformed and
   * nothing is allocated for it. */
  cr_assert_eq(ckt_message_decode(b.data, b.len, &lim, &d), CKT_ERR_FORMAT);
  ckt_buf_free(&b);
}

/* ---- limits on encode and in the setters ---- */

Test(fragment, setters_enforce_the_hard_limits) {
  ckt_message *m = ckt_message_new();
  char *s;
  struct {
    int (*set)(ckt_message *, const char *);
    size_t max;
  } fields[] = {
      {ckt_message_set_from, CKT_MESSAGE_ADDR_MAX},
      {ckt_message_set_to, CKT_MESSAGE_ADDR_MAX},
      {ckt_message_set_service, CKT_MESSAGE_SERVICE_MAX},
      {ckt_message_set_subject, CKT_MESSAGE_SUBJECT_MAX},
      {ckt_message_set_err, CKT_MESSAGE_ERR_MAX},
  };
  size_t i;
  for (i = 0; i < sizeof(fields) / sizeof(fields[0]); ++i) {
    cr_assert_eq(fields[i].set(m, "kept"), CKT_OK);
    s = filled(fields[i].max + 1, 'x');
    cr_assert_eq(fields[i].set(m, s), CKT_ERR_INVALID_ARGUMENT);
    free(s);
    cr_assert_eq(fields[i].set(NULL, "x"), CKT_ERR_INVALID_ARGUMENT);
    s = filled(fields[i].max, 'y');
    cr_assert_eq(fields[i].set(m, s), CKT_OK);
    free(s);
    cr_assert_eq(fields[i].set(m, NULL), CKT_OK, "NULL clears");
  }
  cr_assert_null(m->from);
  cr_assert_eq(ckt_message_set_from(m, "kept"), CKT_OK);
  s = filled(CKT_MESSAGE_ADDR_MAX + 1, 'x');
  cr_assert_eq(ckt_message_set_from(m, s), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_str_eq(m->from, "kept", "a refused set leaves the old value");
  free(s);

  cr_assert_eq(ckt_message_set_payload(m, NULL, 1), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_message_set_payload(m, "ab", 2), CKT_OK);
  cr_assert_eq(ckt_message_set_payload(m, NULL, 0), CKT_OK);
  cr_assert_null(m->payload);
  cr_assert_eq(m->payload_len, 0);
  ckt_message_free(m);
}

Test(fragment, set_arg_enforces_arg_limits) {
  ckt_message *m = ckt_message_new();
  char key[8], *s;
  size_t i;

  cr_assert_eq(ckt_message_set_arg(m, NULL, "v"), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_message_set_arg(m, "", "v"), CKT_ERR_INVALID_ARGUMENT);
  s = filled(CKT_MESSAGE_ARG_KEY_MAX + 1, 'k');
  cr_assert_eq(ckt_message_set_arg(m, s, "v"), CKT_ERR_INVALID_ARGUMENT);
  s[CKT_MESSAGE_ARG_KEY_MAX] = 0;
  cr_assert_eq(ckt_message_set_arg(m, s, "v"), CKT_OK);
  free(s);
  s = filled(CKT_MESSAGE_ARG_VALUE_MAX + 1, 'v');
  cr_assert_eq(ckt_message_set_arg(m, "big", s), CKT_ERR_INVALID_ARGUMENT);
  s[CKT_MESSAGE_ARG_VALUE_MAX] = 0;
  cr_assert_eq(ckt_message_set_arg(m, "big", s), CKT_OK);
  free(s);
  cr_assert_eq(m->nargs, 2);

  for (i = 2; i < CKT_MESSAGE_NARGS_MAX; ++i) {
    snprintf(key, sizeof(key), "a%zu", i);
    cr_assert_eq(ckt_message_set_arg(m, key, "1"), CKT_OK);
  }
  cr_assert_eq(ckt_message_set_arg(m, "one-more", "1"),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_message_set_arg(m, "a2", "replacing is fine"), CKT_OK);
  cr_assert_eq(m->nargs, CKT_MESSAGE_NARGS_MAX);
  ckt_message_free(m);

  /* The total: 15 values of 65536 plus keys, then one that would cross
   * 1 MiB; replacing a value with a shorter one makes room again. */
  m = ckt_message_new();
  s = filled(CKT_MESSAGE_ARG_VALUE_MAX, 'v');
  for (i = 0; i < 15; ++i) {
    snprintf(key, sizeof(key), "k%02zu", i);
    cr_assert_eq(ckt_message_set_arg(m, key, s), CKT_OK);
  }
  cr_assert_eq(ckt_message_set_arg(m, "k15", s), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(m->nargs, 15);
  s[CKT_MESSAGE_ARG_VALUE_MAX - 15 * 3 - 3] = 0; /* exactly fills 1 MiB */
  cr_assert_eq(ckt_message_set_arg(m, "k15", s), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "k16", NULL), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_message_set_arg(m, "k00", "short"), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "k16", NULL), CKT_OK);
  free(s);
  ckt_message_free(m);
}

Test(fragment, encode_refuses_fields_beyond_the_hard_limits) {
  ckt_message *m = ckt_message_new();
  ckt_buf b;
  char **fields[] = {&m->from, &m->to, &m->service, &m->subject, &m->err};
  size_t maxes[] = {CKT_MESSAGE_ADDR_MAX, CKT_MESSAGE_ADDR_MAX,
                    CKT_MESSAGE_SERVICE_MAX, CKT_MESSAGE_SUBJECT_MAX,
                    CKT_MESSAGE_ERR_MAX};
  size_t i;

  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT,
               "type 0 is not a message");
  m->type = CKT_MSG_PUSH;
  m->flags = 4;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT);
  m->flags = 0;
  cr_assert_eq(ckt_message_encode(NULL, &b), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_message_encode(m, NULL), CKT_ERR_INVALID_ARGUMENT);

  /* Fields assigned directly bypass the setters; encode still checks. */
  for (i = 0; i < 5; ++i) {
    *fields[i] = filled(maxes[i] + 1, 'x');
    cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT,
                 "field %zu", i);
    (*fields[i])[maxes[i]] = 0;
    cr_assert_eq(ckt_message_encode(m, &b), CKT_OK, "field %zu", i);
  }
  b.len = 0;

  m->args = calloc(CKT_MESSAGE_NARGS_MAX + 1, sizeof(*m->args));
  for (i = 0; i <= CKT_MESSAGE_NARGS_MAX; ++i) {
    m->args[i].key = malloc(8);
    snprintf(m->args[i].key, 8, "a%zu", i);
  }
  m->nargs = CKT_MESSAGE_NARGS_MAX + 1;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT, "nargs");
  m->nargs = CKT_MESSAGE_NARGS_MAX;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_OK);
  m->nargs = CKT_MESSAGE_NARGS_MAX + 1; /* so free sees them all */
  b.len = 0;

  free(m->args[0].key);
  m->args[0].key = filled(CKT_MESSAGE_ARG_KEY_MAX + 1, 'k');
  m->nargs = 1;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT, "key");
  m->args[0].key[CKT_MESSAGE_ARG_KEY_MAX] = 0;
  m->args[0].value = filled(CKT_MESSAGE_ARG_VALUE_MAX + 1, 'v');
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT, "value");
  m->args[0].value[CKT_MESSAGE_ARG_VALUE_MAX] = 0;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_OK);
  b.len = 0;

  /* 17 full values: each within its limit, the total beyond 1 MiB. */
  for (i = 1; i < 17; ++i) {
    m->args[i].value = filled(CKT_MESSAGE_ARG_VALUE_MAX, 'v');
  }
  m->nargs = 17;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT, "total");
  m->nargs = 16;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT,
               "16 full values plus keys still exceed 1 MiB");
  m->nargs = 15;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_OK);
  m->nargs = CKT_MESSAGE_NARGS_MAX + 1;
  b.len = 0;

  m->payload_len = 1; /* with a NULL payload */
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT);
  m->payload_len = 0;
  free(m->args[0].key);
  m->args[0].key = NULL;
  m->nargs = 1;
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_INVALID_ARGUMENT, "NULL key");
  m->nargs = CKT_MESSAGE_NARGS_MAX + 1;
  cr_assert_eq(b.len, 0, "refused encodes append nothing");
  ckt_message_free(m);
  ckt_buf_free(&b);
}

Test(fragment, encode_respects_the_output_limit) {
  ckt_message *m = full_message();
  ckt_buf whole = encode_ok(m), b;

  ckt_buf_init(&b, whole.len - 1);
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_TOO_LARGE);
  cr_assert_eq(b.len, 0);
  ckt_buf_free(&b);

  ckt_buf_init(&b, whole.len + 2);
  cr_assert_eq(ckt_buf_append(&b, "xyz", 3), CKT_OK);
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_TOO_LARGE);
  cr_assert_eq(b.len, 3, "a refused encode leaves the buffer as it was");
  cr_assert_str_eq((char *)b.data, "xyz");
  ckt_buf_free(&b);

  ckt_buf_init(&b, whole.len);
  cr_assert_eq(ckt_message_encode(m, &b), CKT_OK);
  cr_assert_eq(b.len, whole.len);
  cr_assert_eq(memcmp(b.data, whole.data, b.len), 0);
  ckt_buf_free(&b);
  ckt_buf_free(&whole);
  ckt_message_free(m);
}

/* When memory runs out part way through, the partial encoding is dropped:
 * a 64 MiB payload cannot be appended under a 16 MiB address-space
 * margin, after the fixed part already was. */
Test(fragment, encode_out_of_memory_leaves_the_buffer_as_it_was) {
#ifdef UNDER_ASAN
  cr_skip_test("ASan aborts on a failed allocation instead of returning NULL");
#else
  size_t big = 64u * 1024 * 1024;
  ckt_message *m = ckt_message_new();
  uint8_t *payload = calloc(1, big);
  ckt_buf b;
  m->type = CKT_MSG_ONEWAY;
  cr_assert_eq(ckt_message_set_payload(m, payload, big), CKT_OK);
  free(payload);
  ckt_buf_init(&b, TEST_BUF_LIMIT * 2);
  cr_assert_eq(ckt_buf_append(&b, "xyz", 3), CKT_OK);
  cap_address_space(16u * 1024 * 1024);
  cr_assert_eq(ckt_message_encode(m, &b), CKT_ERR_NOMEM);
  cr_assert_eq(b.len, 3);
  cr_assert_str_eq((char *)b.data, "xyz");
  ckt_buf_free(&b);
  ckt_message_free(m);
#endif
}

Test(fragment, encoded_max_is_the_size_of_a_maximal_message) {
  ckt_message_limits lim = {.max_payload = 4096};
  ckt_message *m = ckt_message_new(), *d;
  char key[CKT_MESSAGE_ARG_KEY_MAX + 1], *s;
  uint8_t *payload = calloc(1, lim.max_payload);
  ckt_buf b;
  size_t i;

  m->type = CKT_MSG_REPLY;
  s = filled(CKT_MESSAGE_ERR_MAX, 'e');
  cr_assert_eq(ckt_message_set_err(m, s), CKT_OK);
  s[CKT_MESSAGE_ADDR_MAX] = 0;
  cr_assert_eq(ckt_message_set_from(m, s), CKT_OK);
  cr_assert_eq(ckt_message_set_to(m, s), CKT_OK);
  s[CKT_MESSAGE_SERVICE_MAX] = 0;
  cr_assert_eq(ckt_message_set_service(m, s), CKT_OK);
  free(s);
  s = filled(CKT_MESSAGE_SUBJECT_MAX, 's');
  cr_assert_eq(ckt_message_set_subject(m, s), CKT_OK);
  free(s);
  /* 256 args of 4096 bytes each (255-byte key) fill both arg limits. */
  s = filled(CKT_MESSAGE_ARGS_TOTAL_MAX / CKT_MESSAGE_NARGS_MAX -
                 CKT_MESSAGE_ARG_KEY_MAX,
             'v');
  memset(key, 'k', CKT_MESSAGE_ARG_KEY_MAX);
  key[CKT_MESSAGE_ARG_KEY_MAX] = 0;
  for (i = 0; i < CKT_MESSAGE_NARGS_MAX; ++i) {
    snprintf(key, 4, "%03zu", i);
    key[3] = 'k';
    cr_assert_eq(ckt_message_set_arg(m, key, s), CKT_OK);
  }
  free(s);
  cr_assert_eq(ckt_message_set_payload(m, payload, lim.max_payload), CKT_OK);

  b = encode_ok(m);
  cr_assert_eq(b.len, ckt_message_encoded_max(&lim));
  cr_assert_eq(ckt_message_decode(b.data, b.len, &lim, &d), CKT_OK);
  cr_assert(ckt_message_equal(m, d));
  ckt_message_free(d);
  cr_assert_eq(ckt_message_encoded_max(NULL) - ckt_message_encoded_max(&lim),
               CKT_MESSAGE_DEFAULT_MAX_PAYLOAD - lim.max_payload);
  lim.max_payload = SIZE_MAX;
  cr_assert_eq(ckt_message_encoded_max(&lim) - b.len, (size_t)UINT32_MAX - 4096,
               "the wire caps the payload");
  ckt_buf_free(&b);
  free(payload);
  ckt_message_free(m);
}

/* ---- args, copy ---- */

Test(fragment, set_arg_replaces_and_get_arg_finds) {
  ckt_message *m = ckt_message_new();
  cr_assert_null(ckt_message_get_arg(m, "x"));
  cr_assert_eq(ckt_message_set_arg(m, "x", "1"), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "y", "2"), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "x", "3"), CKT_OK);
  cr_assert_eq(m->nargs, 2, "replacing does not append");
  cr_assert_str_eq(m->args[0].key, "x", "and keeps the position");
  cr_assert_str_eq(ckt_message_get_arg(m, "x"), "3");
  cr_assert_str_eq(ckt_message_get_arg(m, "y"), "2");
  cr_assert_null(ckt_message_get_arg(m, "z"));
  cr_assert_null(ckt_message_get_arg(m, "X"), "keys are case-sensitive");
  cr_assert_eq(ckt_message_set_arg(m, "y", NULL), CKT_OK);
  cr_assert_str_eq(ckt_message_get_arg(m, "y"), "",
                   "present with an empty value is not absent");
  cr_assert_null(ckt_message_get_arg(NULL, "x"));
  cr_assert_null(ckt_message_get_arg(m, NULL));
  ckt_message_free(m);
}

Test(fragment, copy_is_deep) {
  ckt_message *m = full_message(), *c = NULL;
  size_t i;
  cr_assert_eq(ckt_message_copy(m, &c), CKT_OK);
  cr_assert(ckt_message_equal(m, c));
  cr_assert_neq(c->from, m->from);
  cr_assert_neq(c->service, m->service);
  cr_assert_neq(c->payload, m->payload);
  cr_assert_neq(c->args, m->args);
  for (i = 0; i < m->nargs; ++i) {
    cr_assert_neq(c->args[i].key, m->args[i].key);
  }
  cr_assert_null(c->args[2].value, "a NULL value stays NULL");
  /* Changing and then freeing the original leaves the copy intact. */
  m->payload[1] = 0xee;
  cr_assert_eq(ckt_message_set_arg(m, "path", "changed"), CKT_OK);
  cr_assert_eq(ckt_message_set_service(m, "other"), CKT_OK);
  ckt_message_free(m);
  cr_assert_eq(c->payload[1], binary_payload[1]);
  cr_assert_str_eq(ckt_message_get_arg(c, "path"), "/tmp/x");
  cr_assert_str_eq(c->service, "jsync.Push");
  ckt_message_free(c);

  cr_assert_eq(ckt_message_copy(NULL, &c), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_null(c, "a failed copy leaves *out NULL");
}

Test(fragment, equal_notices_each_difference) {
  ckt_message *a = full_message(), *b = NULL;
  cr_assert_eq(ckt_message_copy(a, &b), CKT_OK);
  b->seqno++;
  cr_assert_not(ckt_message_equal(a, b));
  b->seqno--;
  b->payload[0] ^= 1;
  cr_assert_not(ckt_message_equal(a, b));
  b->payload[0] ^= 1;
  cr_assert_eq(ckt_message_set_arg(b, "empty", "x"), CKT_OK);
  cr_assert_not(ckt_message_equal(a, b));
  cr_assert_eq(ckt_message_set_arg(b, "empty", NULL), CKT_OK);
  cr_assert(ckt_message_equal(a, b), "NULL and \"\" are the same value");
  cr_assert_eq(ckt_message_set_subject(b, NULL), CKT_OK);
  cr_assert(ckt_message_equal(a, b));
  ckt_message_free(a);
  ckt_message_free(b);
}

/* ---- frames ---- */

Test(fragment, frame_header_round_trip) {
  static const uint32_t lens[] = {0, 1, 0x01020304u, UINT32_MAX};
  uint8_t hdr[CKT_FRAME_HEADER_LEN], type;
  uint32_t len;
  size_t i;
  for (i = 0; i < sizeof(lens) / sizeof(lens[0]); ++i) {
    ckt_frame_header_encode(hdr, CKT_FRAME_MESSAGE, lens[i]);
    cr_assert_eq(ckt_frame_header_decode(hdr, &type, &len), CKT_OK);
    cr_assert_eq(type, CKT_FRAME_MESSAGE);
    cr_assert_eq(len, lens[i]);
  }
  ckt_frame_header_encode(hdr, CKT_FRAME_MESSAGE, 0x01020304u);
  cr_assert_eq(memcmp(hdr, "\x01\x01\x02\x03\x04", 5), 0, "big-endian");
  hdr[0] = 0x02;
  cr_assert_eq(ckt_frame_header_decode(hdr, &type, &len), CKT_ERR_FORMAT);
  hdr[0] = 0x00;
  cr_assert_eq(ckt_frame_header_decode(hdr, &type, &len), CKT_ERR_FORMAT);
  cr_assert_eq(ckt_frame_header_decode(NULL, &type, &len),
               CKT_ERR_INVALID_ARGUMENT);
}
