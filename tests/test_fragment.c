/* test_fragment.c — fragment: the Message and Fragment types, their wire
 * codecs, frames, peer IDs.  Fragment tests are named frag_*. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ckt/error.h"
#include "ckt/fragment.h"
#include "ckt/message.h"
#include "core_buf.h"
#include "core_util.h"
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

/* The fields Message and Fragment share, from service on: service,
 * subject, args, payload, err. */
static void craft_tail(ckt_buf *b, const raw *r) {
  size_t i, k;
  put_str(b, 2, r->service);
  put_str(b, 2, r->subject);
  put(b, r->nargs, 2);
  for (i = 0; i < r->nargs; ++i) {
    /* Distinct keys: the index in base 26 in the last two bytes. */
    char *key = filled(r->key_len, 'a');
    cr_assert_geq(r->key_len, 2);
    key[r->key_len - 1] = (char)('a' + i % 26);
    key[r->key_len - 2] = (char)('a' + i / 26);
    put(b, r->key_len, 2);
    cr_assert_eq(ckt_buf_append(b, key, r->key_len), CKT_OK);
    free(key);
    put_str(b, 4, r->value_len);
  }
  if (r->payload_claim_only) {
    put(b, r->payload, 4);
    return;
  }
  put(b, r->payload, 4);
  for (k = 0; k < r->payload; ++k) {
    put(b, 0, 1);
  }
  put_str(b, 4, r->err);
}

static ckt_buf craft(const raw *r) {
  ckt_buf b;
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
  craft_tail(&b, r);
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
  hdr[0] = 0x04; /* 0x02 is CKT_FRAME_FRAGMENT, 0x03 CKT_FRAME_ZMESSAGE */
  cr_assert_eq(ckt_frame_header_decode(hdr, &type, &len), CKT_ERR_FORMAT);
  hdr[0] = 0x00;
  cr_assert_eq(ckt_frame_header_decode(hdr, &type, &len), CKT_ERR_FORMAT);
  cr_assert_eq(ckt_frame_header_decode(NULL, &type, &len),
               CKT_ERR_INVALID_ARGUMENT);
}

/* ==== Fragment ==== */

/* ---- helpers ---- */

static ckt_buf frag_encode_ok(const ckt_fragment *f) {
  ckt_buf b;
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_OK);
  return b;
}

static void fill_id(uint8_t id[CKT_PEER_ID_LEN], uint8_t first) {
  size_t i;
  for (i = 0; i < CKT_PEER_ID_LEN; ++i) {
    id[i] = (uint8_t)(first + i);
  }
}

/* A fragment with every field set: IDs covering 0x00 and 0xff, extreme
 * integers (negative op and part), several args (one with an empty value,
 * one NULL), a binary payload with NUL bytes, and an empty subject. */
static ckt_fragment *full_fragment(void) {
  ckt_fragment *f = ckt_fragment_new();
  cr_assert_not_null(f);
  fill_id(f->from_peer, 0x00);
  fill_id(f->to_peer, 0xf0); /* wraps through 0xff to 0x0f */
  fill_id(f->circuit, 0x80);
  f->serial = UINT64_MAX;
  f->type = CKT_FRAG_OPEN;
  f->op = INT64_MIN;
  f->part = -1;
  cr_assert_eq(ckt_fragment_set_service(f, "jsync.Push"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_subject(f, ""), CKT_OK);
  cr_assert_eq(ckt_fragment_set_err(f, "disk full: \xc3\xa9t\xc3\xa9"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "path", "/tmp/x"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "empty", ""), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "null", NULL), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "mode", "0644"), CKT_OK);
  cr_assert_eq(
      ckt_fragment_set_payload(f, binary_payload, sizeof(binary_payload)),
      CKT_OK);
  return f;
}

static raw raw_frag_default(void) {
  raw r = raw_default();
  r.version = CKT_FRAGMENT_VERSION;
  r.type = CKT_FRAG_DATA;
  return r;
}

/* A raw fragment: the fixed part (IDs and integers zero), then the shared
 * tail.  r's flags, from and to are not used. */
static ckt_buf craft_frag(const raw *r) {
  ckt_buf b;
  int j;
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  put(&b, r->version, 1);
  put(&b, r->type, 1);
  for (j = 0; j < 3 * CKT_PEER_ID_LEN / 8 + 3; ++j) {
    put(&b, 0, 8);
  }
  craft_tail(&b, r);
  return b;
}

static ckt_fragment frag_sentinel;

/* Decodes a crafted fragment with default limits; returns the code. */
static int decode_raw_frag(const raw *r) {
  ckt_buf b = craft_frag(r);
  ckt_fragment *f = &frag_sentinel;
  int rv = ckt_fragment_decode(b.data, b.len, NULL, &f);
  if (rv == CKT_OK) {
    cr_assert_not_null(f);
    ckt_fragment_free(f);
  } else {
    cr_assert_null(f, "a failed decode leaves *out NULL");
  }
  ckt_buf_free(&b);
  return rv;
}

/* ---- round trip and layout ---- */

Test(fragment, frag_round_trip_of_a_fully_populated_fragment) {
  ckt_fragment *f = full_fragment(), *d = NULL;
  ckt_buf b = frag_encode_ok(f);
  uint8_t id[CKT_PEER_ID_LEN];

  cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, &d), CKT_OK);
  cr_assert_not_null(d);
  fill_id(id, 0x00);
  cr_assert_eq(memcmp(d->from_peer, id, sizeof(id)), 0);
  fill_id(id, 0xf0);
  cr_assert_eq(memcmp(d->to_peer, id, sizeof(id)), 0);
  fill_id(id, 0x80);
  cr_assert_eq(memcmp(d->circuit, id, sizeof(id)), 0);
  cr_assert_eq(d->serial, UINT64_MAX);
  cr_assert_eq(d->type, CKT_FRAG_OPEN);
  cr_assert_eq(d->op, INT64_MIN);
  cr_assert_eq(d->part, -1);
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
  cr_assert(ckt_fragment_equal(f, d));

  ckt_fragment_free(d);
  ckt_fragment_free(f);
  ckt_buf_free(&b);
}

Test(fragment, frag_every_type_round_trips) {
  uint8_t t;
  for (t = CKT_FRAG_DATA; t <= CKT_FRAG_REFUSE; ++t) {
    ckt_fragment *f = full_fragment(), *d = NULL;
    ckt_buf b;
    f->type = t;
    b = frag_encode_ok(f);
    cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, &d), CKT_OK);
    cr_assert_eq(d->type, t);
    cr_assert(ckt_fragment_equal(f, d));
    ckt_fragment_free(d);
    ckt_fragment_free(f);
    ckt_buf_free(&b);
  }
}

Test(fragment, frag_empty_fragment_round_trips_with_empty_strings) {
  ckt_fragment *f = ckt_fragment_new(), *d = NULL;
  static const uint8_t zero[CKT_PEER_ID_LEN];
  ckt_buf b;
  cr_assert_not_null(f);
  f->type = CKT_FRAG_CLOSE;
  b = frag_encode_ok(f);
  cr_assert_eq(b.len, CKT_FRAGMENT_FIXED_LEN + 2 * 2 + 2 + 4 + 4);
  cr_assert_eq(b.len, 88, "as docs/wire.md says");
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, &d), CKT_OK);
  cr_assert_eq(memcmp(d->from_peer, zero, sizeof(zero)), 0);
  cr_assert_eq(memcmp(d->to_peer, zero, sizeof(zero)), 0);
  cr_assert_eq(memcmp(d->circuit, zero, sizeof(zero)), 0);
  cr_assert_str_eq(d->service, "");
  cr_assert_str_eq(d->subject, "");
  cr_assert_str_eq(d->err, "", "a CLOSE with no reason");
  cr_assert_eq(d->nargs, 0);
  cr_assert_null(d->args);
  cr_assert_null(d->payload, "an empty payload decodes as NULL");
  cr_assert_eq(d->payload_len, 0);
  cr_assert(ckt_fragment_equal(f, d));
  ckt_fragment_free(d);
  ckt_fragment_free(f);
  ckt_buf_free(&b);
}

/* The exact bytes of docs/wire.md's layout, written out by hand. */
Test(fragment, frag_encoding_matches_the_documented_layout) {
  static const uint8_t want[] = {
      0x01, 0x03,                                     /* version type */
      0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, /* from_peer ... */
      0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, /* */
      0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, /* to_peer ... */
      0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, /* */
      0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, /* circuit ... */
      0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf, /* */
      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, /* serial */
      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, /* op -2 */
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, /* part */
      0x00, 0x03, 's',  'v',  'c',                    /* service */
      0x00, 0x02, 'c',  '1',                          /* subject */
      0x00, 0x01,                                     /* nargs */
      0x00, 0x01, 'k',  0x00, 0x00, 0x00, 0x01, 'v',  /* k=v */
      0x00, 0x00, 0x00, 0x02, 0x00, 0xff,             /* payload */
      0x00, 0x00, 0x00, 0x01, 'e',                    /* err */
  };
  static const uint8_t payload[] = {0x00, 0xff};
  ckt_fragment *f = ckt_fragment_new();
  ckt_buf b;
  fill_id(f->from_peer, 0x00);
  fill_id(f->to_peer, 0x10);
  fill_id(f->circuit, 0xa0);
  f->serial = 0x0102030405060708ull;
  f->type = CKT_FRAG_OPEN;
  f->op = -2;
  f->part = 3;
  cr_assert_eq(ckt_fragment_set_service(f, "svc"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_subject(f, "c1"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "k", "v"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_payload(f, payload, sizeof(payload)), CKT_OK);
  cr_assert_eq(ckt_fragment_set_err(f, "e"), CKT_OK);
  b = frag_encode_ok(f);
  cr_assert_eq(b.len, sizeof(want));
  cr_assert_eq(memcmp(b.data, want, sizeof(want)), 0);
  ckt_fragment_free(f);
  ckt_buf_free(&b);
}

Test(fragment, frag_encode_appends_after_existing_bytes) {
  ckt_fragment *f = full_fragment(), *d = NULL;
  ckt_buf b;
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_buf_append(&b, "HDR", 3), CKT_OK);
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_OK);
  cr_assert_eq(memcmp(b.data, "HDR", 3), 0);
  cr_assert_eq(ckt_fragment_decode(b.data + 3, b.len - 3, NULL, &d), CKT_OK);
  cr_assert(ckt_fragment_equal(f, d));
  ckt_fragment_free(d);
  ckt_fragment_free(f);
  ckt_buf_free(&b);
}

/* ---- malformed input ---- */

Test(fragment, frag_every_truncation_fails_with_format) {
  ckt_fragment *f = full_fragment(), *d;
  ckt_buf b = frag_encode_ok(f);
  size_t n;
  for (n = 0; n < b.len; ++n) {
    /* A copy of exactly n bytes, so ASan sees any read past the end. */
    uint8_t *cut = malloc(n ? n : 1);
    cr_assert_not_null(cut);
    memcpy(cut, b.data, n);
    d = &frag_sentinel;
    cr_assert_eq(ckt_fragment_decode(cut, n, NULL, &d), CKT_ERR_FORMAT,
                 "truncated to %zu of %zu bytes", n, b.len);
    cr_assert_null(d);
    free(cut);
  }
  cr_assert_eq(ckt_fragment_decode(NULL, 0, NULL, &d), CKT_ERR_FORMAT);
  cr_assert_eq(ckt_fragment_decode(NULL, 1, NULL, &d),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, NULL),
               CKT_ERR_INVALID_ARGUMENT);
  ckt_fragment_free(f);
  ckt_buf_free(&b);
}

Test(fragment, frag_trailing_bytes_are_rejected) {
  ckt_fragment *f = full_fragment(), *d;
  ckt_buf b = frag_encode_ok(f);
  cr_assert_eq(ckt_buf_append(&b, "\0", 1), CKT_OK);
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, &d), CKT_ERR_FORMAT);
  cr_assert_eq(ckt_buf_append(&b, "garbage", 7), CKT_OK);
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, &d), CKT_ERR_FORMAT);
  cr_assert_null(d);
  ckt_fragment_free(f);
  ckt_buf_free(&b);
}

Test(fragment, frag_unknown_version_and_type_are_rejected) {
  raw r = raw_frag_default();
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
  r.version = 0;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_FORMAT);
  r.version = 2;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_FORMAT);
  r = raw_frag_default();
  r.type = 0;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_FORMAT);
  r.type = CKT_FRAG_REFUSE + 1;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_FORMAT);
  r.type = 0xff;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_FORMAT);
  r.type = CKT_FRAG_REFUSE;
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
}

Test(fragment, frag_nul_bytes_in_strings_are_rejected) {
  /* Distinct markers so each field can be located in the encoding. */
  static const char *markers[] = {"SVCxx", "SUBJx", "KEYxx", "VALxx", "ERRxx"};
  ckt_fragment *f = ckt_fragment_new(), *d;
  ckt_buf b;
  size_t i, at;
  f->type = CKT_FRAG_ERROR;
  cr_assert_eq(ckt_fragment_set_service(f, markers[0]), CKT_OK);
  cr_assert_eq(ckt_fragment_set_subject(f, markers[1]), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, markers[2], markers[3]), CKT_OK);
  cr_assert_eq(ckt_fragment_set_err(f, markers[4]), CKT_OK);
  cr_assert_eq(ckt_fragment_set_payload(f, "\0\0", 2), CKT_OK);
  b = frag_encode_ok(f);
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, &d), CKT_OK,
               "NUL bytes in the payload and IDs are fine");
  ckt_fragment_free(d);
  for (i = 0; i < sizeof(markers) / sizeof(markers[0]); ++i) {
    at = find(&b, markers[i]);
    b.data[at + 2] = 0;
    cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, &d), CKT_ERR_FORMAT,
                 "NUL inside %s", markers[i]);
    cr_assert_null(d);
    b.data[at + 2] = (uint8_t)markers[i][2];
  }
  ckt_fragment_free(f);
  ckt_buf_free(&b);
}

Test(fragment, frag_empty_and_duplicate_arg_keys_are_rejected) {
  ckt_fragment *f = ckt_fragment_new(), *d;
  ckt_buf b;
  size_t at;
  f->type = CKT_FRAG_DATA;
  cr_assert_eq(ckt_fragment_set_arg(f, "ka", "1"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "kb", "2"), CKT_OK);
  b = frag_encode_ok(f);
  at = find(&b, "kb");
  b.data[at + 1] = 'a';
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, &d), CKT_ERR_FORMAT);
  ckt_buf_free(&b);

  /* The encoder refuses what the decoder would. */
  free(f->args[1].key);
  f->args[1].key = strdup("ka");
  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT);
  f->args[1].key[0] = 0;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(b.len, 0);

  {
    raw r = raw_frag_default();
    ckt_buf e = craft_frag(&r);
    /* nargs 1, key length 0, value length 0, then payload and err. */
    static const uint8_t tail[2 + 2 + 4 + 4 + 4] = {0, 1};
    e.len -= 2 + 4 + 4; /* drop nargs 0, payload and err */
    cr_assert_eq(ckt_buf_append(&e, tail, sizeof(tail)), CKT_OK);
    cr_assert_eq(ckt_fragment_decode(e.data, e.len, NULL, &d), CKT_ERR_FORMAT,
                 "an empty key");
    ckt_buf_free(&e);
  }
  ckt_fragment_free(f);
}

/* ---- limits on decode ---- */

Test(fragment, frag_decode_enforces_every_string_limit) {
  raw r;
  /* Each field at its limit decodes; one byte more is refused. */
  r = raw_frag_default();
  r.service = CKT_FRAGMENT_SERVICE_MAX;
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
  r.service++;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_TOO_LARGE);

  r = raw_frag_default();
  r.subject = CKT_FRAGMENT_SUBJECT_MAX;
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
  r.subject++;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_TOO_LARGE);

  r = raw_frag_default();
  r.err = CKT_FRAGMENT_ERR_MAX;
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
  r.err++;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_TOO_LARGE);
}

Test(fragment, frag_decode_enforces_arg_limits) {
  raw r = raw_frag_default();
  r.key_len = 2;
  r.nargs = CKT_FRAGMENT_NARGS_MAX;
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
  r.nargs++;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_TOO_LARGE);

  r = raw_frag_default();
  r.nargs = 3;
  r.key_len = CKT_FRAGMENT_ARG_KEY_MAX;
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
  r.key_len++;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_TOO_LARGE);

  r = raw_frag_default();
  r.nargs = 3;
  r.key_len = 2;
  r.value_len = CKT_FRAGMENT_ARG_VALUE_MAX;
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
  r.value_len++;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_TOO_LARGE);

  /* 16 args of 2 + 65534 bytes fill the 1 MiB total exactly. */
  r = raw_frag_default();
  r.nargs = 16;
  r.key_len = 2;
  r.value_len = CKT_FRAGMENT_ARGS_TOTAL_MAX / 16 - 2;
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
  r.value_len++;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_TOO_LARGE);
  r.value_len = CKT_FRAGMENT_ARGS_TOTAL_MAX / 16 - 2;
  r.nargs++;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_TOO_LARGE);
}

Test(fragment, frag_payload_at_the_limit_and_one_past) {
  raw r = raw_frag_default();
  ckt_fragment_limits lim = {.max_payload = 1000};
  ckt_fragment *d;
  ckt_buf b;

  r.payload = 1000;
  b = craft_frag(&r);
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, &lim, &d), CKT_OK);
  cr_assert_eq(d->payload_len, 1000);
  ckt_fragment_free(d);
  lim.max_payload = 999;
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, &lim, &d), CKT_ERR_TOO_LARGE);
  cr_assert_null(d);
  lim.max_payload = 0; /* the default */
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, &lim, &d), CKT_OK);
  ckt_fragment_free(d);
  ckt_buf_free(&b);

  /* The default is 16 MiB, inclusive. */
  r.payload = CKT_FRAGMENT_DEFAULT_MAX_PAYLOAD;
  cr_assert_eq(decode_raw_frag(&r), CKT_OK);
  r.payload++;
  cr_assert_eq(decode_raw_frag(&r), CKT_ERR_TOO_LARGE);
  lim.max_payload = CKT_FRAGMENT_DEFAULT_MAX_PAYLOAD + 1;
  b = craft_frag(&r);
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, &lim, &d), CKT_OK);
  ckt_fragment_free(d);
  ckt_buf_free(&b);
}

/* Same as the message test: with the address space capped, a decoder that
 * allocated before checking a claimed 4 GiB payload would fail. */
Test(fragment, frag_huge_lengths_are_refused_before_allocating) {
  raw r = raw_frag_default();
  ckt_fragment_limits lim = {.max_payload = SIZE_MAX};
  ckt_fragment *d;
  ckt_buf b;

  r.payload = 0xffffffffu;
  r.payload_claim_only = 1;
  b = craft_frag(&r);
  cap_address_space(64u * 1024 * 1024);
#ifndef UNDER_ASAN
  {
    void *big = malloc(1024u * 1024 * 1024);
    cr_assert_null(big);
  }
#endif
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, NULL, &d), CKT_ERR_TOO_LARGE,
               "4 GiB payload claimed against the 16 MiB default");
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, &lim, &d), CKT_ERR_FORMAT);
  ckt_buf_free(&b);
}

/* ---- limits on encode and in the setters ---- */

Test(fragment, frag_setters_enforce_the_hard_limits) {
  ckt_fragment *f = ckt_fragment_new();
  uint8_t one = 1;
  char *s;
  struct {
    int (*set)(ckt_fragment *, const char *);
    size_t max;
  } fields[] = {
      {ckt_fragment_set_service, CKT_FRAGMENT_SERVICE_MAX},
      {ckt_fragment_set_subject, CKT_FRAGMENT_SUBJECT_MAX},
      {ckt_fragment_set_err, CKT_FRAGMENT_ERR_MAX},
  };
  size_t i;
  for (i = 0; i < sizeof(fields) / sizeof(fields[0]); ++i) {
    cr_assert_eq(fields[i].set(f, "kept"), CKT_OK);
    s = filled(fields[i].max + 1, 'x');
    cr_assert_eq(fields[i].set(f, s), CKT_ERR_INVALID_ARGUMENT);
    free(s);
    cr_assert_eq(fields[i].set(NULL, "x"), CKT_ERR_INVALID_ARGUMENT);
    s = filled(fields[i].max, 'y');
    cr_assert_eq(fields[i].set(f, s), CKT_OK);
    free(s);
    cr_assert_eq(fields[i].set(f, NULL), CKT_OK, "NULL clears");
  }
  cr_assert_null(f->service);
  cr_assert_eq(ckt_fragment_set_service(f, "kept"), CKT_OK);
  s = filled(CKT_FRAGMENT_SERVICE_MAX + 1, 'x');
  cr_assert_eq(ckt_fragment_set_service(f, s), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_str_eq(f->service, "kept", "a refused set leaves the old value");
  free(s);

  cr_assert_eq(ckt_fragment_set_payload(f, NULL, 1), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_fragment_set_payload(NULL, "a", 1),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_fragment_set_payload(f, "ab", 2), CKT_OK);
  /* Refused from the length alone: the one byte is never read past. */
  cr_assert_eq(ckt_fragment_set_payload(f, &one, (size_t)UINT32_MAX + 1),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(f->payload_len, 2, "a refused set leaves the old payload");
  cr_assert_eq(ckt_fragment_set_payload(f, NULL, 0), CKT_OK);
  cr_assert_null(f->payload);
  cr_assert_eq(f->payload_len, 0);
  ckt_fragment_free(f);
}

Test(fragment, frag_set_arg_enforces_arg_limits) {
  ckt_fragment *f = ckt_fragment_new();
  char key[8], *s;
  size_t i;

  cr_assert_eq(ckt_fragment_set_arg(NULL, "k", "v"), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_fragment_set_arg(f, NULL, "v"), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_fragment_set_arg(f, "", "v"), CKT_ERR_INVALID_ARGUMENT);
  s = filled(CKT_FRAGMENT_ARG_KEY_MAX + 1, 'k');
  cr_assert_eq(ckt_fragment_set_arg(f, s, "v"), CKT_ERR_INVALID_ARGUMENT);
  s[CKT_FRAGMENT_ARG_KEY_MAX] = 0;
  cr_assert_eq(ckt_fragment_set_arg(f, s, "v"), CKT_OK);
  free(s);
  s = filled(CKT_FRAGMENT_ARG_VALUE_MAX + 1, 'v');
  cr_assert_eq(ckt_fragment_set_arg(f, "big", s), CKT_ERR_INVALID_ARGUMENT);
  s[CKT_FRAGMENT_ARG_VALUE_MAX] = 0;
  cr_assert_eq(ckt_fragment_set_arg(f, "big", s), CKT_OK);
  free(s);
  cr_assert_eq(f->nargs, 2);

  for (i = 2; i < CKT_FRAGMENT_NARGS_MAX; ++i) {
    snprintf(key, sizeof(key), "a%zu", i);
    cr_assert_eq(ckt_fragment_set_arg(f, key, "1"), CKT_OK);
  }
  cr_assert_eq(ckt_fragment_set_arg(f, "one-more", "1"),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_fragment_set_arg(f, "a2", "replacing is fine"), CKT_OK);
  cr_assert_eq(f->nargs, CKT_FRAGMENT_NARGS_MAX);
  ckt_fragment_free(f);

  /* The total: 15 values of 65536 plus keys, then one that would cross
   * 1 MiB; replacing a value with a shorter one makes room again. */
  f = ckt_fragment_new();
  s = filled(CKT_FRAGMENT_ARG_VALUE_MAX, 'v');
  for (i = 0; i < 15; ++i) {
    snprintf(key, sizeof(key), "k%02zu", i);
    cr_assert_eq(ckt_fragment_set_arg(f, key, s), CKT_OK);
  }
  cr_assert_eq(ckt_fragment_set_arg(f, "k15", s), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(f->nargs, 15);
  s[CKT_FRAGMENT_ARG_VALUE_MAX - 15 * 3 - 3] = 0; /* exactly fills 1 MiB */
  cr_assert_eq(ckt_fragment_set_arg(f, "k15", s), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "k16", NULL), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_fragment_set_arg(f, "k00", "short"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "k16", NULL), CKT_OK);
  free(s);
  ckt_fragment_free(f);
}

Test(fragment, frag_encode_refuses_fields_beyond_the_hard_limits) {
  ckt_fragment *f = ckt_fragment_new();
  ckt_buf b;
  char **fields[] = {&f->service, &f->subject, &f->err};
  size_t maxes[] = {CKT_FRAGMENT_SERVICE_MAX, CKT_FRAGMENT_SUBJECT_MAX,
                    CKT_FRAGMENT_ERR_MAX};
  size_t i;

  ckt_buf_init(&b, TEST_BUF_LIMIT);
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT,
               "type 0 is not a fragment");
  f->type = CKT_FRAG_REFUSE + 1;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT);
  f->type = CKT_FRAG_DATA;
  cr_assert_eq(ckt_fragment_encode(NULL, &b), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_fragment_encode(f, NULL), CKT_ERR_INVALID_ARGUMENT);

  /* Fields assigned directly bypass the setters; encode still checks. */
  for (i = 0; i < 3; ++i) {
    *fields[i] = filled(maxes[i] + 1, 'x');
    cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT,
                 "field %zu", i);
    (*fields[i])[maxes[i]] = 0;
    cr_assert_eq(ckt_fragment_encode(f, &b), CKT_OK, "field %zu", i);
  }
  b.len = 0;

  f->args = calloc(CKT_FRAGMENT_NARGS_MAX + 1, sizeof(*f->args));
  for (i = 0; i <= CKT_FRAGMENT_NARGS_MAX; ++i) {
    f->args[i].key = malloc(8);
    snprintf(f->args[i].key, 8, "a%zu", i);
  }
  f->nargs = CKT_FRAGMENT_NARGS_MAX + 1;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT, "nargs");
  f->nargs = CKT_FRAGMENT_NARGS_MAX;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_OK);
  f->nargs = CKT_FRAGMENT_NARGS_MAX + 1; /* so free sees them all */
  b.len = 0;

  free(f->args[0].key);
  f->args[0].key = filled(CKT_FRAGMENT_ARG_KEY_MAX + 1, 'k');
  f->nargs = 1;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT, "key");
  f->args[0].key[CKT_FRAGMENT_ARG_KEY_MAX] = 0;
  f->args[0].value = filled(CKT_FRAGMENT_ARG_VALUE_MAX + 1, 'v');
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT, "value");
  f->args[0].value[CKT_FRAGMENT_ARG_VALUE_MAX] = 0;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_OK);
  b.len = 0;

  /* 16 full values plus keys: each within its limit, the total beyond
   * 1 MiB. */
  for (i = 1; i < 16; ++i) {
    f->args[i].value = filled(CKT_FRAGMENT_ARG_VALUE_MAX, 'v');
  }
  f->nargs = 16;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT, "total");
  f->nargs = 15;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_OK);
  f->nargs = CKT_FRAGMENT_NARGS_MAX + 1;
  b.len = 0;

  f->nargs = 1;
  f->payload_len = 1; /* with a NULL payload */
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT);
  /* A payload longer than the u32 length can say, refused from the length
   * alone. */
  f->payload = malloc(1);
  f->payload_len = (size_t)UINT32_MAX + 1;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT);
  f->payload_len = 1;
  free(f->args[0].key);
  f->args[0].key = NULL;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT,
               "NULL key");
  for (i = 0; i < CKT_FRAGMENT_NARGS_MAX + 1; ++i) {
    free(f->args[i].key);
    free(f->args[i].value);
  }
  free(f->args);
  f->args = NULL;
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_INVALID_ARGUMENT,
               "args NULL with nargs 1");
  f->nargs = 0;
  cr_assert_eq(b.len, 0, "refused encodes append nothing");
  ckt_fragment_free(f);
  ckt_buf_free(&b);
}

Test(fragment, frag_encode_respects_the_output_limit) {
  ckt_fragment *f = full_fragment();
  ckt_buf whole = frag_encode_ok(f), b;

  ckt_buf_init(&b, whole.len - 1);
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_TOO_LARGE);
  cr_assert_eq(b.len, 0);
  ckt_buf_free(&b);

  ckt_buf_init(&b, whole.len + 2);
  cr_assert_eq(ckt_buf_append(&b, "xyz", 3), CKT_OK);
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_TOO_LARGE);
  cr_assert_eq(b.len, 3, "a refused encode leaves the buffer as it was");
  cr_assert_str_eq((char *)b.data, "xyz");
  ckt_buf_free(&b);

  ckt_buf_init(&b, whole.len);
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_OK);
  cr_assert_eq(b.len, whole.len);
  cr_assert_eq(memcmp(b.data, whole.data, b.len), 0);
  ckt_buf_free(&b);
  ckt_buf_free(&whole);
  ckt_fragment_free(f);
}

Test(fragment, frag_encode_out_of_memory_leaves_the_buffer_as_it_was) {
#ifdef UNDER_ASAN
  cr_skip_test("ASan aborts on a failed allocation instead of returning NULL");
#else
  size_t big = 64u * 1024 * 1024;
  ckt_fragment *f = ckt_fragment_new();
  uint8_t *payload = calloc(1, big);
  ckt_buf b;
  f->type = CKT_FRAG_DATA;
  cr_assert_eq(ckt_fragment_set_payload(f, payload, big), CKT_OK);
  free(payload);
  ckt_buf_init(&b, TEST_BUF_LIMIT * 2);
  cr_assert_eq(ckt_buf_append(&b, "xyz", 3), CKT_OK);
  cap_address_space(16u * 1024 * 1024);
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_ERR_NOMEM);
  cr_assert_eq(b.len, 3);
  cr_assert_str_eq((char *)b.data, "xyz");
  ckt_buf_free(&b);
  ckt_fragment_free(f);
#endif
}

Test(fragment, frag_encoded_max_is_the_size_of_a_maximal_fragment) {
  ckt_fragment_limits lim = {.max_payload = 4096};
  ckt_fragment *f = ckt_fragment_new(), *d;
  char key[CKT_FRAGMENT_ARG_KEY_MAX + 1], *s;
  uint8_t *payload = calloc(1, lim.max_payload);
  ckt_buf b;
  size_t i;

  f->type = CKT_FRAG_OPEN;
  s = filled(CKT_FRAGMENT_ERR_MAX, 'e');
  cr_assert_eq(ckt_fragment_set_err(f, s), CKT_OK);
  s[CKT_FRAGMENT_SERVICE_MAX] = 0;
  cr_assert_eq(ckt_fragment_set_service(f, s), CKT_OK);
  free(s);
  s = filled(CKT_FRAGMENT_SUBJECT_MAX, 's');
  cr_assert_eq(ckt_fragment_set_subject(f, s), CKT_OK);
  free(s);
  /* 256 args of 4096 bytes each (255-byte key) fill both arg limits. */
  s = filled(CKT_FRAGMENT_ARGS_TOTAL_MAX / CKT_FRAGMENT_NARGS_MAX -
                 CKT_FRAGMENT_ARG_KEY_MAX,
             'v');
  memset(key, 'k', CKT_FRAGMENT_ARG_KEY_MAX);
  key[CKT_FRAGMENT_ARG_KEY_MAX] = 0;
  for (i = 0; i < CKT_FRAGMENT_NARGS_MAX; ++i) {
    snprintf(key, 4, "%03zu", i);
    key[3] = 'k';
    cr_assert_eq(ckt_fragment_set_arg(f, key, s), CKT_OK);
  }
  free(s);
  cr_assert_eq(ckt_fragment_set_payload(f, payload, lim.max_payload), CKT_OK);

  b = frag_encode_ok(f);
  cr_assert_eq(b.len, ckt_fragment_encoded_max(&lim));
  cr_assert_eq(ckt_fragment_decode(b.data, b.len, &lim, &d), CKT_OK);
  cr_assert(ckt_fragment_equal(f, d));
  ckt_fragment_free(d);
  cr_assert_eq(ckt_fragment_encoded_max(NULL) - ckt_fragment_encoded_max(&lim),
               CKT_FRAGMENT_DEFAULT_MAX_PAYLOAD - lim.max_payload);
  lim.max_payload = SIZE_MAX;
  cr_assert_eq(ckt_fragment_encoded_max(&lim) - b.len,
               (size_t)UINT32_MAX - 4096, "the wire caps the payload");
  ckt_buf_free(&b);
  free(payload);
  ckt_fragment_free(f);
}

/* ---- args, copy, equal ---- */

Test(fragment, frag_set_arg_replaces_and_get_arg_finds) {
  ckt_fragment *f = ckt_fragment_new();
  cr_assert_null(ckt_fragment_get_arg(f, "x"));
  cr_assert_eq(ckt_fragment_set_arg(f, "x", "1"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "y", "2"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "x", "3"), CKT_OK);
  cr_assert_eq(f->nargs, 2, "replacing does not append");
  cr_assert_str_eq(f->args[0].key, "x", "and keeps the position");
  cr_assert_str_eq(ckt_fragment_get_arg(f, "x"), "3");
  cr_assert_str_eq(ckt_fragment_get_arg(f, "y"), "2");
  cr_assert_null(ckt_fragment_get_arg(f, "z"));
  cr_assert_null(ckt_fragment_get_arg(f, "X"), "keys are case-sensitive");
  cr_assert_eq(ckt_fragment_set_arg(f, "y", NULL), CKT_OK);
  cr_assert_str_eq(ckt_fragment_get_arg(f, "y"), "",
                   "present with an empty value is not absent");
  cr_assert_null(ckt_fragment_get_arg(NULL, "x"));
  cr_assert_null(ckt_fragment_get_arg(f, NULL));
  ckt_fragment_free(f);
  ckt_fragment_free(NULL);
}

Test(fragment, frag_copy_is_deep) {
  ckt_fragment *f = full_fragment(), *c = NULL;
  size_t i;
  cr_assert_eq(ckt_fragment_copy(f, &c), CKT_OK);
  cr_assert(ckt_fragment_equal(f, c));
  cr_assert_neq(c->service, f->service);
  cr_assert_neq(c->err, f->err);
  cr_assert_neq(c->payload, f->payload);
  cr_assert_neq(c->args, f->args);
  for (i = 0; i < f->nargs; ++i) {
    cr_assert_neq(c->args[i].key, f->args[i].key);
  }
  cr_assert_null(c->args[2].value, "a NULL value stays NULL");
  /* Changing and then freeing the original leaves the copy intact. */
  f->payload[1] = 0xee;
  f->circuit[0] ^= 0xff;
  cr_assert_eq(ckt_fragment_set_arg(f, "path", "changed"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_service(f, "other"), CKT_OK);
  ckt_fragment_free(f);
  cr_assert_eq(c->payload[1], binary_payload[1]);
  cr_assert_eq(c->circuit[0], 0x80);
  cr_assert_str_eq(ckt_fragment_get_arg(c, "path"), "/tmp/x");
  cr_assert_str_eq(c->service, "jsync.Push");

  /* Refused shapes, each before anything is copied. */
  cr_assert_eq(ckt_fragment_copy(NULL, &f), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_null(f, "a failed copy leaves *out NULL");
  cr_assert_eq(ckt_fragment_copy(c, NULL), CKT_ERR_INVALID_ARGUMENT);
  c->payload_len++;
  free(c->payload);
  c->payload = NULL;
  cr_assert_eq(ckt_fragment_copy(c, &f), CKT_ERR_INVALID_ARGUMENT);
  c->payload_len = 0;
  free(c->args[1].key);
  c->args[1].key = NULL;
  f = &frag_sentinel;
  cr_assert_eq(ckt_fragment_copy(c, &f), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_null(f);
  ckt_fragment_free(c);
}

Test(fragment, frag_equal_notices_each_difference) {
  ckt_fragment *a = full_fragment(), *b = NULL;
  uint8_t *ids[3];
  size_t i;
  cr_assert_eq(ckt_fragment_copy(a, &b), CKT_OK);
  ids[0] = b->from_peer;
  ids[1] = b->to_peer;
  ids[2] = b->circuit;
  for (i = 0; i < 3; ++i) {
    ids[i][CKT_PEER_ID_LEN - 1] ^= 1;
    cr_assert_not(ckt_fragment_equal(a, b), "ID %zu", i);
    ids[i][CKT_PEER_ID_LEN - 1] ^= 1;
  }
  b->serial--;
  cr_assert_not(ckt_fragment_equal(a, b));
  b->serial++;
  b->type = CKT_FRAG_DATA;
  cr_assert_not(ckt_fragment_equal(a, b));
  b->type = a->type;
  b->op++;
  cr_assert_not(ckt_fragment_equal(a, b));
  b->op--;
  b->part++;
  cr_assert_not(ckt_fragment_equal(a, b));
  b->part--;
  b->payload[0] ^= 1;
  cr_assert_not(ckt_fragment_equal(a, b));
  b->payload[0] ^= 1;
  cr_assert_eq(ckt_fragment_set_err(b, "other"), CKT_OK);
  cr_assert_not(ckt_fragment_equal(a, b));
  cr_assert_eq(ckt_fragment_set_err(b, a->err), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(b, "empty", "x"), CKT_OK);
  cr_assert_not(ckt_fragment_equal(a, b));
  cr_assert_eq(ckt_fragment_set_arg(b, "empty", NULL), CKT_OK);
  cr_assert(ckt_fragment_equal(a, b), "NULL and \"\" are the same value");
  cr_assert_eq(ckt_fragment_set_subject(b, NULL), CKT_OK);
  cr_assert(ckt_fragment_equal(a, b));
  ckt_fragment_free(a);
  ckt_fragment_free(b);
}

/* ---- peer IDs ---- */

Test(fragment, frag_peer_id_hex_round_trip) {
  uint8_t id[CKT_PEER_ID_LEN], back[CKT_PEER_ID_LEN];
  char hex[CKT_PEER_ID_HEX_LEN + 1];
  int n;

  fill_id(id, 0xf8); /* f8..ff then 00..07: both ends of the digit range */
  ckt_peer_id_to_hex(id, hex);
  cr_assert_str_eq(hex, "f8f9fafbfcfdfeff0001020304050607");
  cr_assert_eq(ckt_peer_id_from_hex(hex, back), CKT_OK);
  cr_assert_eq(memcmp(id, back, sizeof(id)), 0);

  cr_assert_eq(ckt_peer_id_from_hex("F8F9FAFBFCFDFEFF0001020304050607", back),
               CKT_OK, "upper case");
  cr_assert_eq(memcmp(id, back, sizeof(id)), 0);
  cr_assert_eq(ckt_peer_id_from_hex("f8F9fAFbfcfdfeff0001020304050607", back),
               CKT_OK, "mixed case");
  cr_assert_eq(memcmp(id, back, sizeof(id)), 0);

  for (n = 0; n < 100; ++n) {
    cr_assert_eq(ckt_random_bytes(id, sizeof(id)), CKT_OK);
    ckt_peer_id_to_hex(id, hex);
    cr_assert_eq(strlen(hex), CKT_PEER_ID_HEX_LEN);
    cr_assert_eq(ckt_peer_id_from_hex(hex, back), CKT_OK);
    cr_assert_eq(memcmp(id, back, sizeof(id)), 0);
  }
  ckt_peer_id_to_hex(NULL, hex);
  cr_assert_str_eq(hex, "");
  ckt_peer_id_to_hex(id, NULL); /* must not crash */
}

Test(fragment, frag_peer_id_from_hex_rejects_bad_input) {
  static const char *bad[] = {
      "",
      "0",
      "000102030405060708090a0b0c0d0e0",   /* 31 digits */
      "000102030405060708090a0b0c0d0e0f0", /* 33 */
      "000102030405060708090a0b0c0d0e0f00",
      "000102030405060708090a0b0c0d0e0g", /* g */
      "000102030405060708090a0b0c0d0e0 ", /* space */
      " 00102030405060708090a0b0c0d0e0f", /* leading space */
      "0x0102030405060708090a0b0c0d0e0f", /* prefix */
      "00010203-0405-0607-0809-0a0b0c0d", /* UUID dashes */
      "000102030405060708090a0b0c0d0e0f\n",
      "00010203040506070809\303\2510b0c0d0e0f", /* non-ASCII (é) */
  };
  uint8_t id[CKT_PEER_ID_LEN], was[CKT_PEER_ID_LEN];
  size_t i;

  fill_id(id, 0x40);
  memcpy(was, id, sizeof(id));
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    cr_assert_eq(ckt_peer_id_from_hex(bad[i], id), CKT_ERR_FORMAT, "\"%s\"",
                 bad[i]);
    cr_assert_eq(memcmp(id, was, sizeof(id)), 0, "id unchanged on error");
  }
  cr_assert_eq(ckt_peer_id_from_hex(NULL, id), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_peer_id_from_hex("000102030405060708090a0b0c0d0e0f", NULL),
               CKT_ERR_INVALID_ARGUMENT);
}

/* ---- frames ---- */

Test(fragment, frag_frame_header_accepts_fragment_frames) {
  uint8_t hdr[CKT_FRAME_HEADER_LEN], type = 0;
  uint32_t len = 0;
  ckt_frame_header_encode(hdr, CKT_FRAME_FRAGMENT, 88);
  cr_assert_eq(memcmp(hdr, "\x02\x00\x00\x00\x58", 5), 0);
  cr_assert_eq(ckt_frame_header_decode(hdr, &type, &len), CKT_OK);
  cr_assert_eq(type, CKT_FRAME_FRAGMENT);
  cr_assert_eq(len, 88);
  hdr[0] = 0x04; /* 0x03 is CKT_FRAME_ZMESSAGE */
  cr_assert_eq(ckt_frame_header_decode(hdr, &type, &len), CKT_ERR_FORMAT);
  cr_assert_eq(type, CKT_FRAME_FRAGMENT, "outputs untouched on error");
}
