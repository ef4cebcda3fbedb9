/* test_failmalloc.c — allocation failure in the core modules: every
 * allocation of every encoder, decoder and builder is failed in turn.
 *
 * nghttp2's tests/failmalloc_test.c is the model.  This executable
 * replaces malloc, calloc, realloc, free and the aligned allocators,
 * forwarding to glibc's own (__libc_malloc...), so that every allocation
 * made on the test's thread goes through it: ours, wolfSSL's, libsodium's,
 * zstd's and glibc's.  Each test runs an operation once to count the
 * allocations it makes (K), then K more times, failing the i-th one (and
 * only that one) on run i.  Every run must end in one of the error codes
 * the operation documents (CKT_ERR_NOMEM, or CKT_ERR_CRYPTO where a crypto
 * library failed), leave nothing allocated once its results are freed, and
 * leave its inputs as the API promises ("on error the message is
 * unchanged").  A run may also succeed when the allocation that failed was
 * one the code can do without; its result is then checked like any other.
 * An operation whose normal answer is a refusal (an untrusted certificate)
 * may answer CKT_ERR_NOMEM instead, never CKT_OK.
 *
 * Not built with the sanitizers: ASan and LSan replace malloc themselves.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <malloc.h>
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "ckt/error.h"
#include "ckt/fragment.h"
#include "ckt/identity.h"
#include "ckt/message.h"
#include "core_addr.h"
#include "core_buf.h"
#include "core_file.h"
#include "fragment_codec.h"
#include "fragment_zstd.h"
#include "jsync_wire.h"
#include "tls_pem.h"

/* ---- the allocator ------------------------------------------------------- */

/* The replacements must be exported (the project builds with
 * -fvisibility=hidden) for the shared libraries, glibc included, to call
 * them. */
#define FM_EXPORT __attribute__((visibility("default")))

/* glibc's allocator, which the replacements forward to. */
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t n);

/* The state belongs to the test's thread: a thread Criterion or a library
 * runs on its own allocates untouched. */
static _Thread_local int fm_tracking; /* record blocks in fm_blocks */
static _Thread_local int fm_armed;    /* count allocations, fail one */
static _Thread_local long fm_count;   /* allocations made while armed */
static _Thread_local long fm_fail_at; /* the index to fail, or -1 */
static _Thread_local int fm_injected; /* that failure happened */

/* Blocks allocated while tracking and not freed yet: what a run leaked. */
#define FM_BLOCKS_MAX 16384
static struct {
  void *p;
  size_t n;
} fm_blocks[FM_BLOCKS_MAX];
static size_t fm_nblocks;

/* 1 when this allocation is the one to fail. */
static int fm_fail_now(void) {
  if (!fm_armed || fm_count++ != fm_fail_at) {
    return 0;
  }
  fm_injected = 1;
  return 1;
}

static void fm_track(void *p, size_t n) {
  static const char full[] = "test_failmalloc: too many live blocks\n";
  if (!fm_tracking || !p) {
    return;
  }
  if (fm_nblocks == FM_BLOCKS_MAX) {
    if (write(2, full, sizeof(full) - 1) < 0) {
      abort();
    }
    abort();
  }
  fm_blocks[fm_nblocks].p = p;
  fm_blocks[fm_nblocks].n = n;
  fm_nblocks++;
}

/* The index of p in fm_blocks, or -1 (not tracked: allocated before the
 * run, or NULL). */
static long fm_find(const void *p) {
  size_t i;
  if (!fm_tracking || !p) {
    return -1;
  }
  for (i = fm_nblocks; i-- > 0;) {
    if (fm_blocks[i].p == p) {
      return (long)i;
    }
  }
  return -1;
}

static void fm_untrack(const void *p) {
  long i = fm_find(p);
  if (i >= 0) {
    fm_blocks[i] = fm_blocks[--fm_nblocks];
  }
}

FM_EXPORT void *malloc(size_t n) {
  void *p;
  if (fm_fail_now()) {
    errno = ENOMEM;
    return NULL;
  }
  p = __libc_malloc(n);
  fm_track(p, n);
  return p;
}

FM_EXPORT void *calloc(size_t n, size_t size) {
  void *p;
  if (fm_fail_now()) {
    errno = ENOMEM;
    return NULL;
  }
  p = __libc_calloc(n, size);
  fm_track(p, n * size);
  return p;
}

FM_EXPORT void *realloc(void *p, size_t n) {
  long i;
  void *q;
  if (p && n == 0) { /* glibc's realloc frees: not an allocation */
    free(p);
    return NULL;
  }
  if (fm_fail_now()) {
    errno = ENOMEM; /* p stays valid, as with a real failure */
    return NULL;
  }
  i = fm_find(p);
  q = __libc_realloc(p, n);
  if (q && i >= 0) {
    fm_blocks[i].p = q;
    fm_blocks[i].n = n;
  } else if (q && !p) {
    fm_track(q, n);
  }
  return q;
}

FM_EXPORT void free(void *p) {
  fm_untrack(p);
  __libc_free(p);
}

FM_EXPORT int posix_memalign(void **out, size_t align, size_t n) {
  void *p;
  if (align < sizeof(void *) || (align & (align - 1)) != 0) {
    return EINVAL;
  }
  if (fm_fail_now()) {
    return ENOMEM;
  }
  p = __libc_memalign(align, n);
  if (!p) {
    return ENOMEM;
  }
  fm_track(p, n);
  *out = p;
  return 0;
}

FM_EXPORT void *aligned_alloc(size_t align, size_t n) {
  void *p;
  if (fm_fail_now()) {
    errno = ENOMEM;
    return NULL;
  }
  p = __libc_memalign(align, n);
  fm_track(p, n);
  return p;
}

FM_EXPORT void *memalign(size_t align, size_t n) {
  return aligned_alloc(align, n);
}

/* ---- the driver ---------------------------------------------------------- */

/* What one run of an operation reports. */
typedef struct fm_run {
  int rv;          /* what the operation returned */
  int normal;      /* what it returns when nothing fails: CKT_OK, or an
                    * expected refusal the op sets before FM_CALL */
  const char *bad; /* the first check that failed, or NULL */
  int line;        /* ... and where */
} fm_run;

/* One run: set up (Criterion asserts allowed), the operation under
 * FM_CALL, checks with FM_CHECK (no asserts: they allocate), clean-up of
 * everything, inputs and results. */
typedef void (*fm_op)(fm_run *r, const void *arg);

/* Runs expr with allocation counting (and the planned failure) on. */
#define FM_CALL(r, expr)                                                       \
  do {                                                                         \
    fm_armed = 1;                                                              \
    (r)->rv = (expr);                                                          \
    fm_armed = 0;                                                              \
  } while (0)

#define FM_CHECK(r, cond)                                                      \
  do {                                                                         \
    if (!(cond) && !(r)->bad) {                                                \
      (r)->bad = #cond;                                                        \
      (r)->line = __LINE__;                                                    \
    }                                                                          \
  } while (0)

/* The error codes an operation may return when an allocation fails, as a
 * set of bits. */
#define FM_ERR(code) (1u << -(code))
#define FM_NOMEM FM_ERR(CKT_ERR_NOMEM)
#define FM_CRYPTO (FM_NOMEM | FM_ERR(CKT_ERR_CRYPTO))
/* jsync's codecs return -1 for every failure (jsync_wire.h). */
#define FM_JSYNC (1u << 1)

/* Runs op once, failing allocation fail_at (-1: none).  Sets *count to
 * the allocations it made and returns the blocks it left allocated. */
static size_t fm_once(fm_op op, const void *arg, long fail_at, fm_run *r,
                      long *count) {
  memset(r, 0, sizeof(*r));
  fm_nblocks = 0;
  fm_count = 0;
  fm_fail_at = fail_at;
  fm_injected = 0;
  fm_tracking = 1;
  op(r, arg);
  fm_tracking = 0;
  *count = fm_count;
  return fm_nblocks;
}

/* Fails each allocation of op in turn; returns how many there were. */
static long fail_each(const char *name, fm_op op, const void *arg,
                      unsigned accepted) {
  fm_run r;
  long k, again, n, i, survived = 0;
  size_t left;

  /* The first run may do one-time initialisation (the crypto libraries'
   * pthread_once, glibc's lazily loaded pieces): not the operation's. */
  fm_once(op, arg, -1, &r, &k);
  cr_assert_eq(r.rv, r.normal, "%s: %s", name, ckt_strerror(r.rv));
  left = fm_once(op, arg, -1, &r, &k);
  cr_assert_eq(r.rv, r.normal, "%s: %s", name, ckt_strerror(r.rv));
  cr_assert_null(r.bad, "%s: line %d: %s", name, r.line, r.bad);
  cr_assert_eq(left, 0, "%s leaks %zu blocks without any failure", name, left);
  fm_once(op, arg, -1, &r, &again);
  cr_assert_eq(k, again, "%s: %ld allocations, then %ld", name, k, again);

  for (i = 0; i < k; ++i) {
    left = fm_once(op, arg, i, &r, &n);
    cr_assert(fm_injected, "%s: allocation %ld of %ld was never made", name,
              i + 1, k);
    cr_assert(r.rv == r.normal ||
                  (r.rv < 0 && r.rv > -32 && (accepted & FM_ERR(r.rv))),
              "%s: failing allocation %ld of %ld: unexpected %d (%s)", name,
              i + 1, k, r.rv, ckt_strerror(r.rv));
    cr_assert_null(r.bad,
                   "%s: failing allocation %ld of %ld (rv %d): line %d: %s",
                   name, i + 1, k, r.rv, r.line, r.bad);
    cr_assert_eq(left, 0,
                 "%s: failing allocation %ld of %ld (rv %d) leaks %zu "
                 "blocks (the first of %zu bytes)",
                 name, i + 1, k, r.rv, left, fm_blocks[0].n);
    if (r.rv == r.normal) {
      survived++;
    }
  }
  cr_log_info("%-36s %4ld allocations failed in turn, %ld survived", name, k,
              survived);
  return k;
}

/* Set as an output pointer before a call, to see that a failure resets or
 * keeps it. */
static char sentinel;

/* ---- fixtures ------------------------------------------------------------ */

static const uint8_t binary_payload[] = {0x00, 0x01, 0x00, 0xff, 0x00,
                                         0x7f, 0x80, 0x00, 0x00};

/* A message with every kind of field set (args with an empty and a NULL
 * value among them). */
static ckt_message *full_message(void) {
  ckt_message *m = ckt_message_new();
  cr_assert_not_null(m);
  m->type = CKT_MSG_CALL;
  m->flags = CKT_MSG_FLAG_LAST_PART;
  m->call_id = 7;
  m->serial = UINT64_MAX;
  m->seqno = 42;
  m->created_ns = INT64_MIN;
  m->deadline_ns = 1700000000123456789ll;
  m->stream_part = -1;
  cr_assert_eq(ckt_message_set_from(m, "node-a/ed25519:abcd"), CKT_OK);
  cr_assert_eq(ckt_message_set_to(m, "node-b"), CKT_OK);
  cr_assert_eq(ckt_message_set_service(m, "jsync.Push"), CKT_OK);
  cr_assert_eq(ckt_message_set_subject(m, "a subject"), CKT_OK);
  cr_assert_eq(ckt_message_set_err(m, "disk full"), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "path", "/tmp/x"), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "empty", ""), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "null", NULL), CKT_OK);
  cr_assert_eq(ckt_message_set_arg(m, "mode", "0644"), CKT_OK);
  cr_assert_eq(
      ckt_message_set_payload(m, binary_payload, sizeof(binary_payload)),
      CKT_OK);
  return m;
}

static ckt_fragment *full_fragment(void) {
  ckt_fragment *f = ckt_fragment_new();
  cr_assert_not_null(f);
  memset(f->from_peer, 0x11, CKT_PEER_ID_LEN);
  memset(f->to_peer, 0x22, CKT_PEER_ID_LEN);
  memset(f->circuit, 0x33, CKT_PEER_ID_LEN);
  f->serial = UINT64_MAX;
  f->type = CKT_FRAG_OPEN;
  f->op = INT64_MIN;
  f->part = -1;
  cr_assert_eq(ckt_fragment_set_service(f, "jsync.Push"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_subject(f, "a subject"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_err(f, "disk full"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "path", "/tmp/x"), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "empty", ""), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "null", NULL), CKT_OK);
  cr_assert_eq(ckt_fragment_set_arg(f, "mode", "0644"), CKT_OK);
  cr_assert_eq(
      ckt_fragment_set_payload(f, binary_payload, sizeof(binary_payload)),
      CKT_OK);
  return f;
}

/* Encodes m (or f) into a fresh buffer, asserting success. */
static ckt_buf message_bytes(const ckt_message *m) {
  ckt_buf b;
  ckt_buf_init(&b, 1u << 20);
  cr_assert_eq(ckt_message_encode(m, &b), CKT_OK);
  return b;
}

static ckt_buf fragment_bytes(const ckt_fragment *f) {
  ckt_buf b;
  ckt_buf_init(&b, 1u << 20);
  cr_assert_eq(ckt_fragment_encode(f, &b), CKT_OK);
  return b;
}

/* A bytewise copy of a record, taken before a call that promises to leave
 * it unchanged on error (memcpy: the padding is compared too). */
#define SNAPSHOT(dst, src) memcpy(&(dst), (src), sizeof(dst))
#define UNCHANGED(before, now) (memcmp(&(before), (now), sizeof(before)) == 0)

/* ---- the Message --------------------------------------------------------- */

static void op_message_new(fm_run *r, const void *arg) {
  ckt_message *m = NULL, zero;
  (void)arg;
  FM_CALL(r, (m = ckt_message_new()) ? CKT_OK : CKT_ERR_NOMEM);
  if (m) {
    memset(&zero, 0, sizeof(zero));
    FM_CHECK(r, memcmp(m, &zero, sizeof(zero)) == 0);
  }
  ckt_message_free(m);
}

/* A string setter and the field it sets. */
typedef struct msg_setter {
  int (*set)(ckt_message *, const char *);
  size_t field;
} msg_setter;

static char *msg_field(ckt_message *m, size_t field) {
  return *(char **)(void *)((char *)m + field);
}

static void op_message_set_str(fm_run *r, const void *arg) {
  const msg_setter *s = arg;
  ckt_message *m = full_message(), *copy = NULL, before;
  cr_assert_eq(ckt_message_copy(m, &copy), CKT_OK);
  SNAPSHOT(before, m);
  FM_CALL(r, s->set(m, "a new value"));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, strcmp(msg_field(m, s->field), "a new value") == 0);
  } else {
    FM_CHECK(r, UNCHANGED(before, m));
    FM_CHECK(r, ckt_message_equal(m, copy));
  }
  ckt_message_free(m);
  ckt_message_free(copy);
}

static void op_message_set_payload(fm_run *r, const void *arg) {
  static const uint8_t data[300] = {1, 2, 3};
  ckt_message *m = full_message(), *copy = NULL, before;
  (void)arg;
  cr_assert_eq(ckt_message_copy(m, &copy), CKT_OK);
  SNAPSHOT(before, m);
  FM_CALL(r, ckt_message_set_payload(m, data, sizeof(data)));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, m->payload_len == sizeof(data) &&
                    memcmp(m->payload, data, sizeof(data)) == 0);
  } else {
    FM_CHECK(r, UNCHANGED(before, m));
    FM_CHECK(r, ckt_message_equal(m, copy));
  }
  ckt_message_free(m);
  ckt_message_free(copy);
}

/* set_arg(key, value): a new key, or one the fixtures already have. */
typedef struct kv_case {
  const char *key, *value;
} kv_case;

static void op_message_set_arg(fm_run *r, const void *arg) {
  const kv_case *kv = arg;
  ckt_message *m = full_message(), *copy = NULL, before;
  cr_assert_eq(ckt_message_copy(m, &copy), CKT_OK);
  SNAPSHOT(before, m);
  FM_CALL(r, ckt_message_set_arg(m, kv->key, kv->value));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, strcmp(ckt_message_get_arg(m, kv->key),
                       kv->value ? kv->value : "") == 0);
  } else {
    FM_CHECK(r, UNCHANGED(before, m));
    FM_CHECK(r, ckt_message_equal(m, copy));
  }
  ckt_message_free(m);
  ckt_message_free(copy);
}

static void op_message_copy(fm_run *r, const void *arg) {
  ckt_message *m = full_message(), *out = (ckt_message *)(void *)&sentinel;
  (void)arg;
  FM_CALL(r, ckt_message_copy(m, &out));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, out && ckt_message_equal(out, m));
    FM_CHECK(r, out && out->from != m->from && out->args != m->args &&
                    out->payload != m->payload);
  } else {
    FM_CHECK(r, out == NULL);
    out = NULL;
  }
  ckt_message_free(out);
  ckt_message_free(m);
}

/* Encoding appends after what the buffer holds: a failure must cut back
 * to exactly that. */
#define PREFIX "prefix"
#define PREFIX_LEN (sizeof(PREFIX) - 1)

static int prefix_only(const ckt_buf *b) {
  return b->len == PREFIX_LEN && memcmp(b->data, PREFIX, PREFIX_LEN) == 0 &&
         b->data[PREFIX_LEN] == 0;
}

static int prefix_then(const ckt_buf *b, const ckt_buf *body) {
  return b->len == PREFIX_LEN + body->len &&
         memcmp(b->data, PREFIX, PREFIX_LEN) == 0 &&
         memcmp(b->data + PREFIX_LEN, body->data, body->len) == 0;
}

static void op_message_encode(fm_run *r, const void *arg) {
  ckt_message *m = full_message();
  ckt_buf want = message_bytes(m), out;
  (void)arg;
  ckt_buf_init(&out, 1u << 20);
  cr_assert_eq(ckt_buf_append_str(&out, PREFIX), CKT_OK);
  FM_CALL(r, ckt_message_encode(m, &out));
  FM_CHECK(r, r->rv == CKT_OK ? prefix_then(&out, &want) : prefix_only(&out));
  ckt_buf_free(&out);
  ckt_buf_free(&want);
  ckt_message_free(m);
}

static void op_message_decode(fm_run *r, const void *arg) {
  ckt_message *m = full_message(), *out = (ckt_message *)(void *)&sentinel;
  ckt_buf in = message_bytes(m);
  (void)arg;
  FM_CALL(r, ckt_message_decode(in.data, in.len, NULL, &out));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, out && ckt_message_equal(out, m));
  } else {
    FM_CHECK(r, out == NULL);
    out = NULL;
  }
  ckt_message_free(out);
  ckt_buf_free(&in);
  ckt_message_free(m);
}

Test(failmalloc, message) {
  static const msg_setter setters[] = {
      {ckt_message_set_service, offsetof(ckt_message, service)},
      {ckt_message_set_from, offsetof(ckt_message, from)},
      {ckt_message_set_to, offsetof(ckt_message, to)},
      {ckt_message_set_subject, offsetof(ckt_message, subject)},
      {ckt_message_set_err, offsetof(ckt_message, err)},
  };
  static const char *const names[] = {
      "ckt_message_set_service", "ckt_message_set_from", "ckt_message_set_to",
      "ckt_message_set_subject", "ckt_message_set_err"};
  static const kv_case new_key = {"new", "value"}, new_null = {"new", NULL},
                       old_key = {"path", "/var/y"};
  size_t i;

  fail_each("ckt_message_new", op_message_new, NULL, FM_NOMEM);
  for (i = 0; i < sizeof(setters) / sizeof(setters[0]); ++i) {
    fail_each(names[i], op_message_set_str, &setters[i], FM_NOMEM);
  }
  fail_each("ckt_message_set_payload", op_message_set_payload, NULL, FM_NOMEM);
  fail_each("ckt_message_set_arg (new)", op_message_set_arg, &new_key,
            FM_NOMEM);
  fail_each("ckt_message_set_arg (new, NULL)", op_message_set_arg, &new_null,
            FM_NOMEM);
  fail_each("ckt_message_set_arg (replace)", op_message_set_arg, &old_key,
            FM_NOMEM);
  fail_each("ckt_message_copy", op_message_copy, NULL, FM_NOMEM);
  fail_each("ckt_message_encode", op_message_encode, NULL, FM_NOMEM);
  fail_each("ckt_message_decode", op_message_decode, NULL, FM_NOMEM);
}

/* ---- compressed message frames ------------------------------------------ */

/* Text that compresses (so zstd runs both ways) or random bytes (stored). */
static ckt_buf zframe_input(int text) {
  ckt_buf b;
  uint32_t x = 7;
  int i;
  ckt_buf_init(&b, 1u << 20);
  for (i = 0; i < 2000; ++i) {
    uint8_t rnd[16];
    size_t k;
    for (k = 0; k < sizeof(rnd); ++k) {
      rnd[k] = (uint8_t)((x = x * 1103515245u + 12345u) >> 24);
    }
    cr_assert_eq(text ? ckt_buf_append_str(&b, "circuit fragment peer ")
                      : ckt_buf_append(&b, rnd, sizeof(rnd)),
                 CKT_OK);
  }
  return b;
}

/* A context, one frame encoded and decoded back: every failure is a clean
 * CKT_ERR_NOMEM, out as it was, nothing left allocated. */
static void op_zframe(fm_run *r, const void *arg) {
  const int *text = arg;
  ckt_buf in = zframe_input(*text), out, raw;
  ckt_zctx *z = NULL;
  int codec = 0;
  ckt_buf_init(&out, 2u << 20);
  cr_assert_eq(ckt_buf_append_str(&out, PREFIX), CKT_OK);
  memset(&raw, 0, sizeof(raw));
  FM_CALL(r, (z = ckt_zctx_new()) == NULL
                 ? CKT_ERR_NOMEM
                 : ckt_zframe_encode(z, CKT_CODEC_ZSTD_3, 0, in.data, in.len,
                                     &out));
  if (r->rv != CKT_OK) {
    FM_CHECK(r, prefix_only(&out));
  } else {
    size_t pre = strlen(PREFIX) + CKT_FRAME_HEADER_LEN;
    FM_CALL(r, ckt_zframe_decode(z, out.data + pre, out.len - pre, 1u << 20,
                                 &raw, &codec));
    if (r->rv == CKT_OK) {
      FM_CHECK(r, codec == CKT_CODEC_ZSTD_3 && raw.len == in.len &&
                      memcmp(raw.data, in.data, in.len) == 0);
    } else {
      FM_CHECK(r, raw.data == NULL && raw.len == 0);
    }
  }
  ckt_buf_free(&raw);
  ckt_zctx_free(z);
  ckt_buf_free(&out);
  ckt_buf_free(&in);
}

Test(failmalloc, zframe) {
  static const int text = 1, random_bytes = 0;
  fail_each("ckt_zframe_encode/decode (text)", op_zframe, &text, FM_NOMEM);
  fail_each("ckt_zframe_encode/decode (random)", op_zframe, &random_bytes,
            FM_NOMEM);
}

/* ---- the Fragment -------------------------------------------------------- */

static void op_fragment_new(fm_run *r, const void *arg) {
  ckt_fragment *f = NULL, zero;
  (void)arg;
  FM_CALL(r, (f = ckt_fragment_new()) ? CKT_OK : CKT_ERR_NOMEM);
  if (f) {
    memset(&zero, 0, sizeof(zero));
    FM_CHECK(r, memcmp(f, &zero, sizeof(zero)) == 0);
  }
  ckt_fragment_free(f);
}

typedef struct frag_setter {
  int (*set)(ckt_fragment *, const char *);
  size_t field;
} frag_setter;

static char *frag_field(ckt_fragment *f, size_t field) {
  return *(char **)(void *)((char *)f + field);
}

static void op_fragment_set_str(fm_run *r, const void *arg) {
  const frag_setter *s = arg;
  ckt_fragment *f = full_fragment(), *copy = NULL, before;
  cr_assert_eq(ckt_fragment_copy(f, &copy), CKT_OK);
  SNAPSHOT(before, f);
  FM_CALL(r, s->set(f, "a new value"));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, strcmp(frag_field(f, s->field), "a new value") == 0);
  } else {
    FM_CHECK(r, UNCHANGED(before, f));
    FM_CHECK(r, ckt_fragment_equal(f, copy));
  }
  ckt_fragment_free(f);
  ckt_fragment_free(copy);
}

static void op_fragment_set_payload(fm_run *r, const void *arg) {
  static const uint8_t data[300] = {1, 2, 3};
  ckt_fragment *f = full_fragment(), *copy = NULL, before;
  (void)arg;
  cr_assert_eq(ckt_fragment_copy(f, &copy), CKT_OK);
  SNAPSHOT(before, f);
  FM_CALL(r, ckt_fragment_set_payload(f, data, sizeof(data)));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, f->payload_len == sizeof(data) &&
                    memcmp(f->payload, data, sizeof(data)) == 0);
  } else {
    FM_CHECK(r, UNCHANGED(before, f));
    FM_CHECK(r, ckt_fragment_equal(f, copy));
  }
  ckt_fragment_free(f);
  ckt_fragment_free(copy);
}

static void op_fragment_set_arg(fm_run *r, const void *arg) {
  const kv_case *kv = arg;
  ckt_fragment *f = full_fragment(), *copy = NULL, before;
  cr_assert_eq(ckt_fragment_copy(f, &copy), CKT_OK);
  SNAPSHOT(before, f);
  FM_CALL(r, ckt_fragment_set_arg(f, kv->key, kv->value));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, strcmp(ckt_fragment_get_arg(f, kv->key),
                       kv->value ? kv->value : "") == 0);
  } else {
    FM_CHECK(r, UNCHANGED(before, f));
    FM_CHECK(r, ckt_fragment_equal(f, copy));
  }
  ckt_fragment_free(f);
  ckt_fragment_free(copy);
}

static void op_fragment_copy(fm_run *r, const void *arg) {
  ckt_fragment *f = full_fragment(), *out = (ckt_fragment *)(void *)&sentinel;
  (void)arg;
  FM_CALL(r, ckt_fragment_copy(f, &out));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, out && ckt_fragment_equal(out, f));
    FM_CHECK(r, out && out->service != f->service && out->args != f->args &&
                    out->payload != f->payload);
  } else {
    FM_CHECK(r, out == NULL);
    out = NULL;
  }
  ckt_fragment_free(out);
  ckt_fragment_free(f);
}

static void op_fragment_encode(fm_run *r, const void *arg) {
  ckt_fragment *f = full_fragment();
  ckt_buf want = fragment_bytes(f), out;
  (void)arg;
  ckt_buf_init(&out, 1u << 20);
  cr_assert_eq(ckt_buf_append_str(&out, PREFIX), CKT_OK);
  FM_CALL(r, ckt_fragment_encode(f, &out));
  FM_CHECK(r, r->rv == CKT_OK ? prefix_then(&out, &want) : prefix_only(&out));
  ckt_buf_free(&out);
  ckt_buf_free(&want);
  ckt_fragment_free(f);
}

static void op_fragment_decode(fm_run *r, const void *arg) {
  ckt_fragment *f = full_fragment(), *out = (ckt_fragment *)(void *)&sentinel;
  ckt_buf in = fragment_bytes(f);
  (void)arg;
  FM_CALL(r, ckt_fragment_decode(in.data, in.len, NULL, &out));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, out && ckt_fragment_equal(out, f));
  } else {
    FM_CHECK(r, out == NULL);
    out = NULL;
  }
  ckt_fragment_free(out);
  ckt_buf_free(&in);
  ckt_fragment_free(f);
}

/* Frame headers live on the stack: the run checks that they allocate
 * nothing. */
static void op_frame_header(fm_run *r, const void *arg) {
  uint8_t hdr[CKT_FRAME_HEADER_LEN], type = 0;
  uint32_t len = 0;
  (void)arg;
  FM_CALL(r, (ckt_frame_header_encode(hdr, CKT_FRAME_FRAGMENT, 123456),
              ckt_frame_header_decode(hdr, &type, &len)));
  FM_CHECK(r, type == CKT_FRAME_FRAGMENT && len == 123456);
}

Test(failmalloc, fragment) {
  static const frag_setter setters[] = {
      {ckt_fragment_set_service, offsetof(ckt_fragment, service)},
      {ckt_fragment_set_subject, offsetof(ckt_fragment, subject)},
      {ckt_fragment_set_err, offsetof(ckt_fragment, err)},
  };
  static const char *const names[] = {"ckt_fragment_set_service",
                                      "ckt_fragment_set_subject",
                                      "ckt_fragment_set_err"};
  static const kv_case new_key = {"new", "value"}, new_null = {"new", NULL},
                       old_key = {"path", "/var/y"};
  size_t i;

  fail_each("ckt_fragment_new", op_fragment_new, NULL, FM_NOMEM);
  for (i = 0; i < sizeof(setters) / sizeof(setters[0]); ++i) {
    fail_each(names[i], op_fragment_set_str, &setters[i], FM_NOMEM);
  }
  fail_each("ckt_fragment_set_payload", op_fragment_set_payload, NULL,
            FM_NOMEM);
  fail_each("ckt_fragment_set_arg (new)", op_fragment_set_arg, &new_key,
            FM_NOMEM);
  fail_each("ckt_fragment_set_arg (new, NULL)", op_fragment_set_arg, &new_null,
            FM_NOMEM);
  fail_each("ckt_fragment_set_arg (replace)", op_fragment_set_arg, &old_key,
            FM_NOMEM);
  fail_each("ckt_fragment_copy", op_fragment_copy, NULL, FM_NOMEM);
  fail_each("ckt_fragment_encode", op_fragment_encode, NULL, FM_NOMEM);
  fail_each("ckt_fragment_decode", op_fragment_decode, NULL, FM_NOMEM);
  cr_assert_eq(fail_each("ckt_frame_header_encode/decode", op_frame_header,
                         NULL, FM_NOMEM),
               0);
}

/* ---- core: buffers, files, addresses ------------------------------------- */

static void op_buf_append(fm_run *r, const void *arg) {
  static const char more[200] = "more";
  ckt_buf b, before;
  (void)arg;
  ckt_buf_init(&b, 1u << 20);
  cr_assert_eq(ckt_buf_append(&b, "abc", 3), CKT_OK);
  before = b;
  FM_CALL(r, ckt_buf_append(&b, more, sizeof(more)));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, b.len == 3 + sizeof(more) &&
                    memcmp(b.data + 3, more, sizeof(more)) == 0);
  } else {
    FM_CHECK(r, b.data == before.data && b.len == before.len &&
                    b.cap == before.cap && memcmp(b.data, "abc", 4) == 0);
  }
  ckt_buf_free(&b);
}

static void op_buf_printf(fm_run *r, const void *arg) {
  ckt_buf b, before;
  (void)arg;
  ckt_buf_init(&b, 1u << 20);
  cr_assert_eq(ckt_buf_append_str(&b, "abc"), CKT_OK);
  before = b;
  FM_CALL(r, ckt_buf_printf(&b, "%0200d|%s", 7, "end"));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, b.len == 3 + 204 && strcmp((char *)b.data + 203, "|end") == 0);
  } else {
    FM_CHECK(r, b.data == before.data && b.len == before.len &&
                    b.cap == before.cap && memcmp(b.data, "abc", 4) == 0);
  }
  ckt_buf_free(&b);
}

/* Releasing an empty buffer allocates its NUL. */
static void op_buf_release(fm_run *r, const void *arg) {
  ckt_buf b;
  uint8_t *p = NULL;
  size_t len = 99;
  (void)arg;
  ckt_buf_init(&b, 1u << 20);
  FM_CALL(r, (p = ckt_buf_release(&b, &len)) ? CKT_OK : CKT_ERR_NOMEM);
  FM_CHECK(r, len == 0 && (!p || p[0] == 0));
  free(p);
  ckt_buf_free(&b);
}

static char tmpdir[64];

/* In memory where there is a tmpfs: the identity runs fsync hundreds of
 * files. */
static void setup_tmp(void) {
  snprintf(tmpdir, sizeof(tmpdir), "/dev/shm/ckt-test-failmalloc-XXXXXX");
  if (!mkdtemp(tmpdir)) {
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ckt-test-failmalloc-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
  }
}

static void teardown_tmp(void) {
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) {
    fprintf(stderr, "test_failmalloc: cannot remove %s\n", tmpdir);
  }
}

static void tmp_path(char *out, size_t outsz, const char *rel) {
  snprintf(out, outsz, "%s/%s", tmpdir, rel);
}

/* A file of FILE_LEN bytes: its read grows a buffer several times. */
#define FILE_LEN 20000

static uint8_t file_byte(size_t i) {
  return (uint8_t)(i * 7 + 1);
}

static void op_file_read(fm_run *r, const void *arg) {
  const char *path = arg;
  ckt_buf b;
  size_t i;
  int same = 1;
  ckt_buf_init(&b, 0);
  FM_CALL(r, ckt_file_read(path, 1u << 20, &b));
  if (r->rv == CKT_OK) {
    for (i = 0; i < FILE_LEN && same; ++i) {
      same = b.data[i] == file_byte(i);
    }
    FM_CHECK(r, b.len == FILE_LEN && same);
  }
  ckt_buf_free(&b);
}

static void op_file_create(fm_run *r, const void *arg) {
  const char *path = arg;
  FM_CALL(r, ckt_file_create(path, "data", 4, 0600));
  FM_CHECK(r, ckt_path_exists(path) == (r->rv == CKT_OK));
  unlink(path);
}

static void op_addr_parse(fm_run *r, const void *arg) {
  const char *host = arg;
  ckt_addr a;
  memset(&a, 0, sizeof(a));
  FM_CALL(r, ckt_addr_parse(host, NULL, &a));
  FM_CHECK(r, r->rv != CKT_OK || ckt_addr_port(&a) == 4433);
}

Test(failmalloc, core, .init = setup_tmp, .fini = teardown_tmp) {
  char file[512], created[512];
  uint8_t data[FILE_LEN];
  size_t i;
  FILE *fp;

  fail_each("ckt_buf_append", op_buf_append, NULL, FM_NOMEM);
  fail_each("ckt_buf_printf", op_buf_printf, NULL, FM_NOMEM);
  fail_each("ckt_buf_release", op_buf_release, NULL, FM_NOMEM);

  tmp_path(file, sizeof(file), "data");
  for (i = 0; i < FILE_LEN; ++i) {
    data[i] = file_byte(i);
  }
  fp = fopen(file, "wb");
  cr_assert_not_null(fp);
  cr_assert_eq(fwrite(data, 1, sizeof(data), fp), sizeof(data));
  cr_assert_eq(fclose(fp), 0);
  fail_each("ckt_file_read", op_file_read, file, FM_NOMEM);
  tmp_path(created, sizeof(created), "created");
  fail_each("ckt_file_create", op_file_create, created, FM_NOMEM);

  /* Host names are left out: when the hosts file cannot be read, glibc
   * asks DNS, which depends on the machine and keeps resolver state. */
  fail_each("ckt_addr_parse (IPv4)", op_addr_parse, "127.0.0.1:4433", FM_NOMEM);
  fail_each("ckt_addr_parse (IPv6)", op_addr_parse, "[::1]:4433", FM_NOMEM);
}

/* ---- tls: PEM, keys, certificates, identities -----------------------------
 */

static void op_pem_encode(fm_run *r, const void *arg) {
  const ckt_buf *want = arg;
  uint8_t der[300];
  ckt_buf out;
  size_t i;
  for (i = 0; i < sizeof(der); ++i) {
    der[i] = (uint8_t)i;
  }
  ckt_buf_init(&out, 1u << 20);
  FM_CALL(r, ckt_pem_encode(&out, "CKT TEST", "Name: value\nOther: x\n", der,
                            sizeof(der)));
  FM_CHECK(r, r->rv != CKT_OK || (out.len == want->len &&
                                  memcmp(out.data, want->data, out.len) == 0));
  ckt_buf_free(&out);
}

static void op_pem_decode(fm_run *r, const void *arg) {
  const ckt_buf *text = arg;
  ckt_pem pem;
  size_t i;
  int same = 1;
  FM_CALL(r, ckt_pem_decode((const char *)text->data, text->len, &pem));
  if (r->rv == CKT_OK) {
    for (i = 0; i < pem.der_len && same; ++i) {
      same = pem.der[i] == (uint8_t)i;
    }
    FM_CHECK(r, strcmp(pem.label, "CKT TEST") == 0 &&
                    strcmp(pem.headers, "Name: value\nOther: x\n") == 0 &&
                    pem.der_len == 300 && same);
  } else {
    FM_CHECK(r, pem.der == NULL && pem.der_len == 0); /* nothing to free */
  }
  ckt_pem_clear(&pem);
}

/* A key file and how to read it. */
typedef struct key_case {
  const ckt_ed25519_key *key;
  const char *pass; /* NULL: plain */
  const char *pem;  /* for the decoders */
  size_t pemlen;
} key_case;

static void op_key_to_pem(fm_run *r, const void *arg) {
  const key_case *kc = arg;
  ckt_ed25519_key back;
  char *pem = &sentinel;
  size_t len = 0;
  FM_CALL(r, ckt_key_to_pem(kc->key, kc->pass, kc->pass ? strlen(kc->pass) : 0,
                            &pem, &len));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, ckt_key_from_pem(pem, len, kc->pass,
                                 kc->pass ? strlen(kc->pass) : 0,
                                 &back) == CKT_OK &&
                    memcmp(&back, kc->key, sizeof(back)) == 0);
    ckt_free(pem);
  } else {
    FM_CHECK(r, pem == &sentinel);
  }
}

static void op_key_from_pem(fm_run *r, const void *arg) {
  const key_case *kc = arg;
  ckt_ed25519_key key;
  FM_CALL(r, ckt_key_from_pem(kc->pem, kc->pemlen, kc->pass,
                              kc->pass ? strlen(kc->pass) : 0, &key));
  FM_CHECK(r, r->rv != CKT_OK || memcmp(&key, kc->key, sizeof(key)) == 0);
}

/* ckt_key_to_pem() always uses the default Argon2id cost (64 MiB, 3
 * passes); for the decoder, a file sealed the same way at the least cost
 * ckt reads (8 KiB, 1 pass) keeps each run cheap.  The headers are the
 * canonical text tls_key.c writes: they are the AEAD's associated data. */
static char *cheap_encrypted_pem(const ckt_ed25519_key *key, const char *pass,
                                 size_t *len) {
  uint8_t salt[crypto_pwhash_SALTBYTES];
  uint8_t nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
  uint8_t k[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
  uint8_t sealed[48 + crypto_aead_xchacha20poly1305_ietf_ABYTES];
  char salt64[64], nonce64[64], headers[512], *plain;
  size_t plainlen;
  ckt_pem der;
  ckt_buf out;

  cr_assert_eq(ckt_key_to_pem(key, NULL, 0, &plain, &plainlen), CKT_OK);
  cr_assert_eq(ckt_pem_decode(plain, plainlen, &der), CKT_OK);
  cr_assert_eq(der.der_len, 48);
  randombytes_buf(salt, sizeof(salt));
  randombytes_buf(nonce, sizeof(nonce));
  sodium_bin2base64(salt64, sizeof(salt64), salt, sizeof(salt),
                    sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(nonce64, sizeof(nonce64), nonce, sizeof(nonce),
                    sodium_base64_VARIANT_ORIGINAL);
  snprintf(headers, sizeof(headers),
           "Proc-Type: ckt-key-v1\n"
           "KDF: argon2id\n"
           "KDF-Params: v=19, m=8, t=1, p=1\n"
           "Salt: %s\n"
           "Cipher: xchacha20-poly1305\n"
           "Nonce: %s\n",
           salt64, nonce64);
  cr_assert_eq(crypto_pwhash(k, sizeof(k), pass, strlen(pass), salt, 1, 8192,
                             crypto_pwhash_ALG_ARGON2ID13),
               0);
  crypto_aead_xchacha20poly1305_ietf_encrypt(sealed, NULL, der.der, der.der_len,
                                             (const uint8_t *)headers,
                                             strlen(headers), NULL, nonce, k);
  ckt_buf_init(&out, 1u << 20);
  cr_assert_eq(ckt_pem_encode(&out, "CKT ENCRYPTED PRIVATE KEY", headers,
                              sealed, sizeof(sealed)),
               CKT_OK);
  ckt_pem_clear(&der);
  ckt_free(plain);
  return (char *)ckt_buf_release(&out, len);
}

static int give_pass(void *user, const char *what, int confirm, char *buf,
                     size_t size) {
  (void)what;
  (void)confirm;
  return snprintf(buf, size, "%s", (const char *)user);
}

static void op_key_load(fm_run *r, const void *arg) {
  const key_case *kc = arg; /* pem: the path */
  ckt_identity_options opt;
  ckt_ed25519_key key;
  memset(&opt, 0, sizeof(opt));
  opt.passphrase = give_pass;
  opt.passphrase_user = (void *)(uintptr_t)kc->pass;
  FM_CALL(r, ckt_key_load(kc->pem, &opt, &key));
  FM_CHECK(r, r->rv != CKT_OK || memcmp(&key, kc->key, sizeof(key)) == 0);
}

static void op_pem_file_read(fm_run *r, const void *arg) {
  char *pem = &sentinel;
  size_t len = 0;
  FM_CALL(r, ckt_pem_file_read(arg, &pem, &len));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, len > 0 && strlen(pem) == len);
    ckt_free(pem);
  } else {
    FM_CHECK(r, pem == &sentinel);
  }
}

static void write_file(const char *path, const char *data, size_t len) {
  cr_assert_eq(ckt_file_create(path, data, len, 0600), CKT_OK, "%s", path);
}

Test(failmalloc, pem_and_keys, .init = setup_tmp, .fini = teardown_tmp) {
  static const char pass[] = "correct horse";
  ckt_ed25519_key key;
  ckt_buf pem_text;
  uint8_t der[300];
  key_case kc;
  char *plain, *cheap, path[512];
  size_t i, plainlen, cheaplen;

  for (i = 0; i < sizeof(der); ++i) {
    der[i] = (uint8_t)i;
  }
  ckt_buf_init(&pem_text, 1u << 20);
  cr_assert_eq(ckt_pem_encode(&pem_text, "CKT TEST", "Name: value\nOther: x\n",
                              der, sizeof(der)),
               CKT_OK);
  fail_each("ckt_pem_encode", op_pem_encode, &pem_text, FM_NOMEM);
  fail_each("ckt_pem_decode", op_pem_decode, &pem_text, FM_NOMEM);
  ckt_buf_free(&pem_text);

  cr_assert_eq(ckt_key_generate(&key), CKT_OK);
  cr_assert_eq(ckt_key_to_pem(&key, NULL, 0, &plain, &plainlen), CKT_OK);
  cheap = cheap_encrypted_pem(&key, pass, &cheaplen);
  cr_assert_not_null(cheap);

  kc = (key_case){&key, NULL, plain, plainlen};
  fail_each("ckt_key_to_pem (plain)", op_key_to_pem, &kc, FM_CRYPTO);
  fail_each("ckt_key_from_pem (plain)", op_key_from_pem, &kc, FM_NOMEM);
  kc = (key_case){&key, pass, cheap, cheaplen};
  fail_each("ckt_key_from_pem (encrypted)", op_key_from_pem, &kc, FM_NOMEM);
  /* The default cost: a few runs of ~0.1 s each. */
  fail_each("ckt_key_to_pem (encrypted)", op_key_to_pem, &kc, FM_CRYPTO);

  tmp_path(path, sizeof(path), "plain.key");
  write_file(path, plain, plainlen);
  kc = (key_case){&key, pass, path, 0};
  fail_each("ckt_key_load (plain)", op_key_load, &kc, FM_NOMEM);
  tmp_path(path, sizeof(path), "encrypted.key");
  write_file(path, cheap, cheaplen);
  fail_each("ckt_key_load (encrypted)", op_key_load, &kc, FM_NOMEM);
  tmp_path(path, sizeof(path), "plain.key");
  fail_each("ckt_pem_file_read", op_pem_file_read, path, FM_NOMEM);

  ckt_free(plain);
  ckt_free(cheap);
  ckt_key_wipe(&key);
}

/* Two keys, a CA and a leaf made with fixed serials and validity: the
 * same bytes every time, so a certificate made under a failure that was
 * survived can be compared with these. */
typedef struct pki {
  ckt_ed25519_key ca_key, key, rogue_key;
  ckt_cert_options ca_opt, leaf_opt;
  char *ca, *leaf, *rogue_ca, *rogue; /* rogue: signed by rogue_ca */
  size_t ca_len, leaf_len, rogue_ca_len, rogue_len;
  ckt_cert_info ca_info;
} pki;

static const uint8_t ca_serial[] = {0x01, 0x02, 0x03};
static const uint8_t leaf_serial[] = {0x04, 0x05};

static void make_pki(pki *p) {
  memset(p, 0, sizeof(*p));
  cr_assert_eq(ckt_key_generate(&p->ca_key), CKT_OK);
  cr_assert_eq(ckt_key_generate(&p->key), CKT_OK);
  p->ca_opt.not_before = (int64_t)time(NULL) - 86400;
  p->ca_opt.serial = ca_serial;
  p->ca_opt.serial_len = sizeof(ca_serial);
  p->leaf_opt = p->ca_opt;
  p->leaf_opt.serial = leaf_serial;
  p->leaf_opt.serial_len = sizeof(leaf_serial);
  p->leaf_opt.unit = "node";
  p->leaf_opt.email = "node@example.org";
  cr_assert_eq(ckt_cert_make_ca(&p->ca_key, &p->ca_opt, &p->ca, &p->ca_len),
               CKT_OK);
  cr_assert_eq(ckt_cert_make_leaf(&p->key, &p->ca_key, p->ca, p->ca_len,
                                  &p->leaf_opt, &p->leaf, &p->leaf_len),
               CKT_OK);
  cr_assert_eq(ckt_cert_describe(p->ca, p->ca_len, &p->ca_info), CKT_OK);
  /* Another CA of the same name and serial signs a leaf for the same
   * key: only the signature tells it from the real one. */
  cr_assert_eq(ckt_key_generate(&p->rogue_key), CKT_OK);
  cr_assert_eq(ckt_cert_make_ca(&p->rogue_key, &p->ca_opt, &p->rogue_ca,
                                &p->rogue_ca_len),
               CKT_OK);
  cr_assert_eq(ckt_cert_make_leaf(&p->key, &p->rogue_key, p->rogue_ca,
                                  p->rogue_ca_len, &p->leaf_opt, &p->rogue,
                                  &p->rogue_len),
               CKT_OK);
}

static void free_pki(pki *p) {
  ckt_free(p->ca);
  ckt_free(p->leaf);
  ckt_free(p->rogue_ca);
  ckt_free(p->rogue);
  ckt_key_wipe(&p->rogue_key);
  ckt_key_wipe(&p->ca_key);
  ckt_key_wipe(&p->key);
}

static void op_cert_describe(fm_run *r, const void *arg) {
  const pki *p = arg;
  ckt_cert_info info;
  FM_CALL(r, ckt_cert_describe(p->ca, p->ca_len, &info));
  FM_CHECK(r, r->rv != CKT_OK || memcmp(&info, &p->ca_info, sizeof(info)) == 0);
}

static void op_cert_make_ca(fm_run *r, const void *arg) {
  const pki *p = arg;
  char *pem = &sentinel;
  size_t len = 0;
  FM_CALL(r, ckt_cert_make_ca(&p->ca_key, &p->ca_opt, &pem, &len));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, len == p->ca_len && memcmp(pem, p->ca, len + 1) == 0);
    ckt_free(pem);
  } else {
    FM_CHECK(r, pem == &sentinel);
  }
}

static void op_cert_make_leaf(fm_run *r, const void *arg) {
  const pki *p = arg;
  char *pem = &sentinel;
  size_t len = 0;
  FM_CALL(r, ckt_cert_make_leaf(&p->key, &p->ca_key, p->ca, p->ca_len,
                                &p->leaf_opt, &pem, &len));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, len == p->leaf_len && memcmp(pem, p->leaf, len + 1) == 0);
    ckt_free(pem);
  } else {
    FM_CHECK(r, pem == &sentinel);
  }
}

static void op_cert_verify(fm_run *r, const void *arg) {
  const pki *p = arg;
  FM_CALL(r, ckt_cert_verify(p->ca, p->ca_len, p->leaf, p->leaf_len));
}

static void op_cert_check_key(fm_run *r, const void *arg) {
  const pki *p = arg;
  FM_CALL(r, ckt_cert_check_key(p->leaf, p->leaf_len, &p->key));
}

/* A failure may turn a refusal into CKT_ERR_NOMEM, never into CKT_OK. */
static void op_cert_verify_rogue(fm_run *r, const void *arg) {
  const pki *p = arg;
  r->normal = CKT_ERR_CERT_UNTRUSTED;
  FM_CALL(r, ckt_cert_verify(p->ca, p->ca_len, p->rogue, p->rogue_len));
}

static void op_cert_check_wrong_key(fm_run *r, const void *arg) {
  const pki *p = arg;
  r->normal = CKT_ERR_KEY_MISMATCH;
  FM_CALL(r, ckt_cert_check_key(p->leaf, p->leaf_len, &p->ca_key));
}

Test(failmalloc, certificates) {
  pki p;
  make_pki(&p);
  fail_each("ckt_cert_describe", op_cert_describe, &p, FM_NOMEM);
  fail_each("ckt_cert_make_ca", op_cert_make_ca, &p, FM_CRYPTO);
  fail_each("ckt_cert_make_leaf", op_cert_make_leaf, &p, FM_CRYPTO);
  fail_each("ckt_cert_verify", op_cert_verify, &p, FM_NOMEM);
  fail_each("ckt_cert_check_key", op_cert_check_key, &p, FM_NOMEM);
  fail_each("ckt_cert_verify (rogue CA)", op_cert_verify_rogue, &p, FM_NOMEM);
  fail_each("ckt_cert_check_key (wrong key)", op_cert_check_wrong_key, &p,
            FM_NOMEM);
  free_pki(&p);
}

/* Identities on disk: a failed make leaves no file behind. */
static int tmp_exists(const char *rel) {
  char path[512];
  tmp_path(path, sizeof(path), rel);
  return ckt_path_exists(path);
}

static void tmp_unlink(const char *rel) {
  char path[512];
  tmp_path(path, sizeof(path), rel);
  unlink(path);
}

static const char *tmpdir_psk(void) {
  static char path[512];
  tmp_path(path, sizeof(path), "psk/key");
  return path;
}

static void op_identity_make_ca(fm_run *r, const void *arg) {
  char dir[512];
  (void)arg;
  tmp_path(dir, sizeof(dir), "private2");
  FM_CALL(r, ckt_identity_make_ca(dir, NULL));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, tmp_exists("private2/ca.crt") && tmp_exists("private2/ca.key"));
  } else {
    FM_CHECK(r,
             !tmp_exists("private2/ca.crt") && !tmp_exists("private2/ca.key"));
  }
  tmp_unlink("private2/ca.crt");
  tmp_unlink("private2/ca.key");
}

static void op_identity_make(fm_run *r, const void *arg) {
  char certs[512], priv[512];
  int created = -1;
  (void)arg;
  tmp_path(certs, sizeof(certs), "certs");
  tmp_path(priv, sizeof(priv), "private");
  FM_CALL(r, ckt_identity_make(certs, "node", priv, NULL, &created));
  FM_CHECK(r, created == 0);
  if (r->rv == CKT_OK) {
    FM_CHECK(r, tmp_exists("certs/node.crt") && tmp_exists("certs/node.key") &&
                    tmp_exists("certs/ca.crt"));
  } else {
    FM_CHECK(r, !tmp_exists("certs/node.crt") && !tmp_exists("certs/node.key"));
  }
  tmp_unlink("certs/node.crt");
  tmp_unlink("certs/node.key");
  tmp_unlink("certs/ca.crt");
}

static void op_identity_load(fm_run *r, const void *arg) {
  char certs[512], *pem = &sentinel;
  size_t len = 0;
  ckt_ed25519_key key;
  (void)arg;
  tmp_path(certs, sizeof(certs), "certs");
  FM_CALL(r, ckt_identity_load(certs, "other", NULL, &pem, &len, &key));
  if (r->rv == CKT_OK) {
    FM_CHECK(r, len > 0 && pem != &sentinel);
    ckt_free(pem);
  } else {
    FM_CHECK(r, pem == &sentinel);
  }
}

static void op_psk_create(fm_run *r, const void *arg) {
  (void)arg;
  FM_CALL(r, ckt_psk_create(tmpdir_psk()));
  FM_CHECK(r, ckt_path_exists(tmpdir_psk()) == (r->rv == CKT_OK));
  unlink(tmpdir_psk());
}

static void op_key_generate(fm_run *r, const void *arg) {
  ckt_ed25519_key key;
  (void)arg;
  FM_CALL(r, ckt_key_generate(&key));
}

Test(failmalloc, identities, .init = setup_tmp, .fini = teardown_tmp) {
  char certs[512], priv[512];
  int created = 0;
  tmp_path(certs, sizeof(certs), "certs");
  tmp_path(priv, sizeof(priv), "private");
  cr_assert_eq(ckt_identity_make(certs, "other", priv, NULL, &created), CKT_OK);
  cr_assert_eq(created, 1);
  fail_each("ckt_identity_make_ca", op_identity_make_ca, NULL, FM_CRYPTO);
  fail_each("ckt_identity_make", op_identity_make, NULL, FM_CRYPTO);
  fail_each("ckt_identity_load", op_identity_load, NULL, FM_NOMEM);
  fail_each("ckt_psk_create", op_psk_create, NULL, FM_NOMEM);
  fail_each("ckt_key_generate", op_key_generate, NULL, FM_NOMEM);
}

/* ---- jsync's wire codec -------------------------------------------------- */

/* A HELLO long enough that its encoding grows the buffer several times. */
typedef struct hello_case {
  jsync_hello h;
  char *paths[3], *excludes[2];
  char long_path[1000];
  jsync_wbuf want;
} hello_case;

static void make_hello(hello_case *c) {
  static char data[] = "/srv/data", rel[] = "relative/dir", objs[] = "*.o";
  memset(c, 0, sizeof(*c));
  memset(c->long_path, 'p', sizeof(c->long_path) - 1);
  c->paths[0] = data;
  c->paths[1] = c->long_path;
  c->paths[2] = rel;
  c->excludes[0] = objs;
  c->excludes[1] = c->long_path;
  c->h.version = JSYNC_PROTO_VERSION;
  c->h.mode = JSYNC_PULL;
  c->h.flags = JSYNC_F_DELETE;
  c->h.ncircuits = 4;
  memset(c->h.session, 0x5a, sizeof(c->h.session));
  c->h.paths = c->paths;
  c->h.npaths = 3;
  c->h.excludes = c->excludes;
  c->h.nexcludes = 2;
  jsync_wbuf_init(&c->want);
  jsync_hello_encode(&c->want, &c->h);
  cr_assert_eq(c->want.err, 0);
}

static int wbuf_result(const jsync_wbuf *w) {
  return w->err ? -1 : 0;
}

static void op_jsync_hello_encode(fm_run *r, const void *arg) {
  const hello_case *c = arg;
  jsync_wbuf w;
  jsync_wbuf_init(&w);
  FM_CALL(r, (jsync_hello_encode(&w, &c->h), wbuf_result(&w)));
  FM_CHECK(r, r->rv != 0 ||
                  (w.len == c->want.len && memcmp(w.p, c->want.p, w.len) == 0));
  jsync_wbuf_free(&w);
}

static void op_jsync_hello_decode(fm_run *r, const void *arg) {
  const hello_case *c = arg;
  jsync_hello h;
  size_t i;
  FM_CALL(r, jsync_hello_decode(c->want.p, c->want.len, &h));
  if (r->rv == 0) {
    FM_CHECK(r, h.npaths == 3 && h.nexcludes == 2 &&
                    h.ncircuits == c->h.ncircuits && h.mode == c->h.mode);
    for (i = 0; i < h.npaths && i < 3; ++i) {
      FM_CHECK(r, strcmp(h.paths[i], c->paths[i]) == 0);
    }
    for (i = 0; i < h.nexcludes && i < 2; ++i) {
      FM_CHECK(r, strcmp(h.excludes[i], c->excludes[i]) == 0);
    }
    jsync_hello_free(&h);
  } else { /* "*h is then empty" */
    FM_CHECK(r, h.paths == NULL && h.npaths == 0 && h.excludes == NULL &&
                    h.nexcludes == 0);
  }
}

/* An ENTRIES batch of n entries. */
static void put_entries(jsync_wbuf *w, int n) {
  static jsync_wentry entry; /* 8 KiB: not on the stack, not allocated */
  jsync_wentry *e = &entry;
  jsync_entry_ctx ctx;
  int i;
  memset(e, 0, sizeof(*e));
  jsync_entry_ctx_init(&ctx);
  for (i = 0; i < n; ++i) {
    e->id = (uint64_t)i;
    e->type = i % 5 == 0 ? JSYNC_E_SYMLINK : JSYNC_E_FILE;
    e->mode = 0644;
    e->size = (uint64_t)i * 1000;
    e->mtime_sec = 1700000000 + i;
    snprintf(e->path, sizeof(e->path), "dir/sub/file-%04d.txt", i);
    snprintf(e->link, sizeof(e->link), "../target-%d", i);
    jsync_entry_put(w, &ctx, e);
  }
}

static void op_jsync_entries_encode(fm_run *r, const void *arg) {
  const jsync_wbuf *want = arg;
  jsync_wbuf w;
  jsync_wbuf_init(&w);
  FM_CALL(r, (put_entries(&w, 100), wbuf_result(&w)));
  FM_CHECK(r, r->rv != 0 ||
                  (w.len == want->len && memcmp(w.p, want->p, w.len) == 0));
  jsync_wbuf_free(&w);
}

/* A whole message for jsync_wire_check(). */
typedef struct wire_case {
  int64_t op;
  const uint8_t *p;
  size_t len;
} wire_case;

static void op_jsync_wire_check(fm_run *r, const void *arg) {
  const wire_case *c = arg;
  FM_CALL(r, jsync_wire_check(c->op, c->p, c->len));
}

Test(failmalloc, jsync_wire) {
  hello_case hello;
  jsync_wbuf entries, results, bundle;
  jsync_result res;
  uint8_t *z;
  size_t zcap, zlen;
  wire_case wc;
  int i;

  make_hello(&hello);
  fail_each("jsync_hello_encode", op_jsync_hello_encode, &hello, FM_JSYNC);
  fail_each("jsync_hello_decode", op_jsync_hello_decode, &hello, FM_JSYNC);

  jsync_wbuf_init(&entries);
  put_entries(&entries, 100);
  cr_assert_eq(entries.err, 0);
  fail_each("jsync_entry_put", op_jsync_entries_encode, &entries, FM_JSYNC);
  wc = (wire_case){JSYNC_OP_ENTRIES, entries.p, entries.len};
  fail_each("jsync_wire_check (ENTRIES)", op_jsync_wire_check, &wc, FM_JSYNC);

  /* ENTRIES_Z: the decoded length, then the zstd frame. */
  zcap = ZSTD_compressBound(entries.len) + 16;
  z = malloc(zcap);
  cr_assert_not_null(z);
  {
    jsync_wbuf head;
    jsync_wbuf_init(&head);
    jsync_w_varint(&head, entries.len);
    cr_assert_eq(head.err, 0);
    memcpy(z, head.p, head.len);
    zlen =
        ZSTD_compress(z + head.len, zcap - head.len, entries.p, entries.len, 1);
    cr_assert(!ZSTD_isError(zlen));
    zlen += head.len;
    jsync_wbuf_free(&head);
  }
  wc = (wire_case){JSYNC_OP_ENTRIES_Z, z, zlen};
  fail_each("jsync_wire_check (ENTRIES_Z)", op_jsync_wire_check, &wc, FM_JSYNC);

  jsync_wbuf_init(&results);
  memset(&res, 0, sizeof(res));
  for (i = 0; i < 10; ++i) {
    res.what = JSYNC_R_FAILED;
    res.id = (uint64_t)i;
    snprintf(res.path, sizeof(res.path), "a/b/%d", i);
    snprintf(res.text, sizeof(res.text), "no space left");
    jsync_result_put(&results, &res);
  }
  cr_assert_eq(results.err, 0);
  wc = (wire_case){JSYNC_OP_RESULTS, results.p, results.len};
  fail_each("jsync_wire_check (RESULTS)", op_jsync_wire_check, &wc, FM_JSYNC);

  /* A bundle: a HELLO and the RESULTS. */
  jsync_wbuf_init(&bundle);
  jsync_w_varint(&bundle, JSYNC_OP_HELLO);
  jsync_w_varint(&bundle, hello.want.len);
  jsync_w_bytes(&bundle, hello.want.p, hello.want.len);
  jsync_w_varint(&bundle, JSYNC_OP_RESULTS);
  jsync_w_varint(&bundle, results.len);
  jsync_w_bytes(&bundle, results.p, results.len);
  cr_assert_eq(bundle.err, 0);
  wc = (wire_case){JSYNC_OP_BUNDLE, bundle.p, bundle.len};
  fail_each("jsync_wire_check (BUNDLE)", op_jsync_wire_check, &wc, FM_JSYNC);

  jsync_wbuf_free(&bundle);
  jsync_wbuf_free(&results);
  free(z);
  jsync_wbuf_free(&entries);
  jsync_wbuf_free(&hello.want);
}
