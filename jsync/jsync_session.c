/*
 * jsync_session.c — sessions: the client's push and pull, the server's
 * accepting and confinement, and what both roles share (failure, sending
 * and receiving, results, whole-file hashes).
 */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "jsync_int.h"

/* Circuits the server handles at once before their sessions exist, plus
 * running sessions: beyond this, new circuits are refused. */
#define MAX_THREADS 1024

/* ---- failure ------------------------------------------------------------- */

int sess_fail(jsync_sess *s, int kind, const char *fmt, ...) {
  va_list ap;
  pthread_mutex_lock(&s->mu);
  if (!s->fail) {
    s->fail = kind;
    va_start(ap, fmt);
    vsnprintf(s->why, sizeof(s->why), fmt, ap);
    va_end(ap);
  }
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return -1;
}

int sess_failed(jsync_sess *s) {
  int f;
  pthread_mutex_lock(&s->mu);
  f = s->fail || s->stop;
  pthread_mutex_unlock(&s->mu);
  return f;
}

/* TLS refusals are authentication failures; the rest of a lost
 * connection is the network's. */
static int reason_kind(const char *reason) {
  if (strstr(reason, "refused the TLS handshake") ||
      (strstr(reason, "TLS handshake with") && !strstr(reason, "timed out"))) {
    return FAIL_AUTH;
  }
  return FAIL_NET;
}

int sess_fail_circuit(jsync_sess *s, ckt_tcircuit *tc, int rv,
                      const ckt_fragment *f) {
  if (f && f->type == CKT_FRAG_ERROR) {
    return sess_fail(s, FAIL_REFUSED, "%s", f->err ? f->err : "error");
  }
  if (rv == CKT_ERR_CLOSED) {
    const char *r = ckt_tcircuit_reason(tc);
    r = r ? r : "closed";
    if (strncmp(r, "refused: ", 9) == 0) {
      return sess_fail(s, FAIL_REFUSED, "%s", r + 9);
    }
    if (strncmp(r, "protocol error: ", 16) == 0) {
      return sess_fail(s, FAIL_PROTOCOL, "the other side: %s", r + 16);
    }
    return sess_fail(s, reason_kind(r), "%s", r);
  }
  return sess_fail(s, FAIL_NET, "%s", ckt_strerror(rv));
}

/* ---- sending and receiving ----------------------------------------------- */

int sess_send_bytes(jsync_sess *s, ckt_tcircuit *tc, int64_t op, const void *p,
                    size_t len) {
  for (;;) {
    ckt_fragment *f = ckt_fragment_new();
    int rv;
    if (!f || ckt_fragment_set_payload(f, p, len) != CKT_OK) {
      ckt_fragment_free(f);
      return sess_fail(s, FAIL_NOMEM, "out of memory");
    }
    f->type = CKT_FRAG_DATA;
    f->op = op;
    rv = ckt_tcircuit_send_wait(tc, f, POLL_MS);
    if (rv == CKT_OK) {
      return 0;
    }
    if (rv != CKT_ERR_TIMEOUT) {
      return sess_fail_circuit(s, tc, rv, NULL);
    }
    if (sess_failed(s)) {
      return -1;
    }
    if (tc == s->ctrl && s->ctrl_stalled) {
      s->ctrl_stalled(s);
    }
  }
}

int sess_send(jsync_sess *s, ckt_tcircuit *tc, int64_t op, jsync_wbuf *w) {
  int rv;
  if (w->err) {
    jsync_wbuf_free(w);
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  rv = sess_send_bytes(s, tc, op, w->p, w->len);
  jsync_wbuf_free(w);
  return rv;
}

ckt_fragment *sess_recv(jsync_sess *s, ckt_tcircuit *tc) {
  for (;;) {
    ckt_fragment *f = NULL;
    int rv = ckt_tcircuit_recv(tc, POLL_MS, &f);
    if (rv == CKT_OK && f->type == CKT_FRAG_DATA) {
      return f;
    }
    if (rv == CKT_OK) {
      sess_fail_circuit(s, tc, rv, f);
      ckt_fragment_free(f);
      return NULL;
    }
    if (rv != CKT_ERR_TIMEOUT) {
      pthread_mutex_lock(&s->mu);
      rv = s->finished ? CKT_OK : rv;
      pthread_mutex_unlock(&s->mu);
      if (rv != CKT_OK) {
        sess_fail_circuit(s, tc, rv, NULL);
      }
      return NULL;
    }
    pthread_mutex_lock(&s->mu);
    rv = s->fail || s->stop || s->finished;
    pthread_mutex_unlock(&s->mu);
    if (rv) {
      return NULL;
    }
  }
}

/* ---- results and logs ---------------------------------------------------- */

void live_add(uint64_t *counter, uint64_t v) {
  atomic_fetch_add_explicit((_Atomic uint64_t *)counter, v,
                            memory_order_relaxed);
}

void sess_log(jsync_sess *s, int warn, const char *fmt, ...) {
  char line[JSYNC_WIRE_PATH_MAX + 256];
  va_list ap;
  void (*fn)(void *, const char *);
  if (!s->opts) {
    return;
  }
  fn = warn ? s->opts->warn : s->opts->log;
  if (!fn) {
    return;
  }
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&s->mu);
  fn(s->opts->user, line);
  pthread_mutex_unlock(&s->mu);
}

/* What the client shows for a result, wherever it came from. */
static void show_result(jsync_sess *s, const jsync_result *r) {
  const char *dry = (s->flags & JSYNC_F_DRY_RUN) ? " (dry run)" : "";
  switch (r->what) {
  case JSYNC_R_CREATED:
    sess_log(s, 0, "created %s%s", r->path, dry);
    break;
  case JSYNC_R_UPDATED:
    sess_log(s, 0, "updated %s%s", r->path, dry);
    break;
  case JSYNC_R_META:
    sess_log(s, 0, "metadata %s%s", r->path, dry);
    break;
  case JSYNC_R_DELETED:
    sess_log(s, 0, "deleting %s%s", r->path, dry);
    break;
  case JSYNC_R_FAILED:
    sess_log(s, 1, "%s: %s", r->path, r->text);
    break;
  }
}

static void count_result(jsync_sess *s, const jsync_result *r) {
  pthread_mutex_lock(&s->mu);
  switch (r->what) {
  case JSYNC_R_CREATED:
  case JSYNC_R_UPDATED:
    s->st.transferred++;
    break;
  case JSYNC_R_DELETED:
    s->st.deleted++;
    break;
  case JSYNC_R_FAILED:
    s->st.failed++;
    break;
  }
  s->st.literal += r->literal;
  s->st.matched += r->matched;
  pthread_mutex_unlock(&s->mu);
}

void sess_result(jsync_sess *s, const jsync_result *r) {
  count_result(s, r);
  if (s->is_client) {
    show_result(s, r);
    return;
  }
  /* The receiver is the server: the client shows it. */
  pthread_mutex_lock(&s->mu);
  jsync_result_put(&s->results, r);
  s->nresults++;
  if (s->results.len >= 32 * 1024) {
    jsync_wbuf w = s->results;
    jsync_wbuf_init(&s->results);
    s->nresults = 0;
    pthread_mutex_unlock(&s->mu);
    sess_send(s, s->ctrl, JSYNC_OP_RESULTS, &w);
    return;
  }
  pthread_mutex_unlock(&s->mu);
}

int sess_flush_results(jsync_sess *s) {
  jsync_wbuf w;
  pthread_mutex_lock(&s->mu);
  w = s->results;
  jsync_wbuf_init(&s->results);
  s->nresults = 0;
  pthread_mutex_unlock(&s->mu);
  if (w.len == 0) {
    jsync_wbuf_free(&w);
    return 0;
  }
  return sess_send(s, s->ctrl, JSYNC_OP_RESULTS, &w);
}

/* The sender on the client shows what the server's receiver did. */
void sess_take_results(jsync_sess *s, const ckt_fragment *f) {
  jsync_rbuf r;
  jsync_result *res = malloc(sizeof(*res));
  int rv;
  if (!res) {
    sess_fail(s, FAIL_NOMEM, "out of memory");
    return;
  }
  jsync_rbuf_init(&r, f->payload, f->payload_len);
  while ((rv = jsync_result_next(&r, res)) == 1) {
    count_result(s, res);
    show_result(s, res);
    if (s->opts && s->opts->live && res->what != JSYNC_R_DELETED) {
      live_add(&s->opts->live->files_done, 1);
    }
  }
  free(res);
  if (rv < 0) {
    sess_fail(s, FAIL_PROTOCOL, "malformed results from the other side");
  }
}

/* ---- whole-file hashes --------------------------------------------------- */

struct whole_hash {
  int blake2b;
  XXH3_state_t *x;
  crypto_generichash_state b;
};

whole_hash *whole_new(int blake2b) {
  whole_hash *h = calloc(1, sizeof(*h));
  if (!h) {
    return NULL;
  }
  h->blake2b = blake2b;
  if (blake2b) {
    crypto_generichash_init(&h->b, NULL, 0, JSYNC_HASH_LEN);
    return h;
  }
  h->x = XXH3_createState();
  if (!h->x) {
    free(h);
    return NULL;
  }
  XXH3_128bits_reset(h->x);
  return h;
}

void whole_update(whole_hash *h, const void *p, size_t n) {
  if (h->blake2b) {
    crypto_generichash_update(&h->b, p, n);
  } else {
    XXH3_128bits_update(h->x, p, n);
  }
}

void whole_zeros(whole_hash *h, uint64_t n) {
  static const uint8_t zeros[64 * 1024];
  while (n > 0) {
    size_t k = n < sizeof(zeros) ? (size_t)n : sizeof(zeros);
    whole_update(h, zeros, k);
    n -= k;
  }
}

void whole_final(whole_hash *h, uint8_t out[JSYNC_HASH_LEN]) {
  memset(out, 0, JSYNC_HASH_LEN);
  if (h->blake2b) {
    crypto_generichash_final(&h->b, out, JSYNC_HASH_LEN);
  } else {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(h->x));
    memcpy(out, c.digest, sizeof(c.digest));
  }
}

void whole_free(whole_hash *h) {
  if (h) {
    XXH3_freeState(h->x);
    free(h);
  }
}

/* ---- sessions ------------------------------------------------------------ */

static jsync_sess *sess_new(void) {
  jsync_sess *s = calloc(1, sizeof(*s));
  if (!s) {
    return NULL;
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->root_fd = -1;
  s->dst_fd = -1;
  jsync_wbuf_init(&s->results);
  return s;
}

static void sess_free(jsync_sess *s) {
  char refused[sizeof(s->why) + 16];
  const char *reason;
  size_t i;
  unsigned k;
  if (!s) {
    return;
  }
  reason = s->fail ? s->why : "done";
  /* The server's paths failing (a missing source, a destination that
   * cannot be made) is a refusal to the client, not a lost connection. */
  if (!s->is_client && (s->fail == FAIL_REFUSED || s->fail == FAIL_LOCAL)) {
    snprintf(refused, sizeof(refused), "refused: %s", s->why);
    reason = refused;
  } else if (!s->is_client && s->fail == FAIL_PROTOCOL) {
    snprintf(refused, sizeof(refused), "protocol error: %s", s->why);
    reason = refused;
  }
  for (k = 0; k < s->ndata; ++k) {
    ckt_tcircuit_close(s->data[k], reason);
  }
  if (s->ctrl) {
    ckt_tcircuit_close(s->ctrl, reason);
  }
  for (i = 0; i < s->nsrc; ++i) {
    if (s->src[i].fd >= 0) {
      close(s->src[i].fd);
    }
    free(s->src[i].rel);
  }
  free(s->src);
  for (i = 0; i < s->nents; ++i) {
    free(s->ents[i].path);
  }
  free(s->ents);
  if (s->dst_fd >= 0) {
    close(s->dst_fd);
  }
  jsync_excludes_free(s->ex);
  jsync_wbuf_free(&s->results);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

static int add_excludes(jsync_sess *s, const char *const *pats, size_t n) {
  size_t i;
  if (n == 0) {
    return 0;
  }
  s->ex = jsync_excludes_new();
  if (!s->ex) {
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  for (i = 0; i < n; ++i) {
    if (jsync_excludes_add(s->ex, pats[i]) != 0) {
      return sess_fail(s, FAIL_LOCAL, "bad exclude pattern '%s'", pats[i]);
    }
  }
  return 0;
}

/* Adds a source: `path` with a trailing '/' (a directory) stands for its
 * contents.  Local paths (client) resolve normally; the server's resolve
 * beneath root_fd. */
static int add_source(jsync_sess *s, const char *path, int beneath) {
  char buf[JSYNC_PATH_MAX + 2];
  size_t len = strlen(path);
  int contents = len > 0 && path[len - 1] == '/', fd;
  const char *leaf = NULL;
  char *rel;
  jsync_source *n;
  if (len >= sizeof(buf) - 1) {
    return sess_fail(s, FAIL_LOCAL, "%s: path too long", path);
  }
  memcpy(buf, path, len + 1);
  while (len > 1 && buf[len - 1] == '/') {
    buf[--len] = '\0';
  }
  if (beneath) {
    if (strcmp(buf, ".") == 0 || strcmp(buf, "/") == 0) {
      buf[0] = '\0';
    }
    if (buf[0] == '/') {
      return sess_fail(s, FAIL_REFUSED,
                       "'%s' is refused: paths are relative to the server's "
                       "root, not absolute",
                       path);
    }
    if (buf[0] != '\0' && !jsync_path_valid(buf)) {
      return sess_fail(s, FAIL_REFUSED,
                       "'%s' is refused: paths are relative to the server's "
                       "root, without '..'",
                       path);
    }
    if (buf[0] == '\0') {
      contents = 1;
    }
    if (contents) {
      fd = jsync_open_beneath(s->root_fd, buf, O_RDONLY | O_DIRECTORY, 0);
      leaf = "";
    } else {
      fd = jsync_open_parent(s->root_fd, buf, &leaf);
    }
    if (fd < 0) {
      return sess_fail(s, FAIL_REFUSED, "%s: %s", path,
                       fd == -EXDEV ? "outside the server's root"
                                    : strerror(-fd));
    }
  } else {
    struct stat st;
    if (stat(buf, &st) != 0) {
      return sess_fail(s, FAIL_LOCAL, "%s: %s", path, strerror(errno));
    }
    contents = contents && S_ISDIR(st.st_mode);
    if (contents || strcmp(buf, "/") == 0) {
      fd = open(buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      leaf = "";
    } else {
      char *slash = strrchr(buf, '/');
      if (slash == buf) {
        fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        leaf = buf + 1;
      } else if (slash) {
        *slash = '\0';
        fd = open(buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        leaf = slash + 1;
      } else {
        fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        leaf = buf;
      }
      if (strcmp(leaf, ".") == 0 || strcmp(leaf, "..") == 0) {
        /* "dir/." or "..": name the directory itself instead */
        if (fd >= 0) {
          close(fd);
        }
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        leaf = "";
      }
    }
    if (fd < 0) {
      return sess_fail(s, FAIL_LOCAL, "%s: %s", path, strerror(errno));
    }
  }
  n = realloc(s->src, (s->nsrc + 1) * sizeof(*n));
  if (n) {
    s->src = n;
  }
  if (!n || !(rel = strdup(leaf))) {
    close(fd);
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  s->src[s->nsrc].fd = fd;
  s->src[s->nsrc].rel = rel;
  s->nsrc++;
  return 0;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail_code(int kind) {
  switch (kind) {
  case FAIL_NONE:
    return CKT_OK;
  case FAIL_AUTH:
    return CKT_ERR_TLS;
  case FAIL_NET:
    return CKT_ERR_CONNECTION;
  case FAIL_REFUSED:
    return JSYNC_ERR_REFUSED;
  case FAIL_PROTOCOL:
    return JSYNC_ERR_PROTOCOL;
  case FAIL_LOCAL:
    return JSYNC_ERR_LOCAL;
  case FAIL_NOMEM:
    return CKT_ERR_NOMEM;
  }
  return CKT_ERR_CLOSED;
}

/* The client: HELLO on a control circuit, WELCOME back, JOIN on each data
 * circuit, then the role. */
static int client_run(ckt_node *n, int mode, const char *host_port,
                      const char *const *srcs, size_t nsrcs, const char *dst,
                      const jsync_opts *o, jsync_stats *st, char *why,
                      size_t why_sz) {
  jsync_sess *s = sess_new();
  jsync_hello h;
  jsync_wbuf w;
  ckt_tpeer *tp = NULL;
  ckt_fragment *f = NULL;
  double t0 = now_s();
  size_t i;
  int rv = 0, code;
  unsigned k;

  if (!s) {
    snprintf(why, why_sz, "out of memory");
    return CKT_ERR_NOMEM;
  }
  memset(st, 0, sizeof(*st));
  s->is_client = 1;
  s->opts = o;
  s->flags = o->flags;
  s->zlevel = o->zstd_level ? o->zstd_level : 1;
  s->role = mode == JSYNC_PUSH ? ROLE_SENDER : ROLE_RECEIVER;
  s->ndata = o->circuits ? o->circuits : 4;
  if (s->ndata > JSYNC_WIRE_CIRCUITS_MAX || nsrcs == 0 ||
      nsrcs > JSYNC_WIRE_PATHS_MAX) {
    rv = sess_fail(s, FAIL_LOCAL, "between 1 and %d sources and %d circuits",
                   JSYNC_WIRE_PATHS_MAX, JSYNC_WIRE_CIRCUITS_MAX);
  }
  if (rv == 0) {
    rv = add_excludes(s, o->excludes, o->nexcludes);
  }
  if (rv == 0 && mode == JSYNC_PUSH) {
    for (i = 0; i < nsrcs && rv == 0; ++i) {
      rv = add_source(s, srcs[i], 0);
    }
  } else if (rv == 0) {
    s->dst = dst;
  }

  /* HELLO */
  memset(&h, 0, sizeof(h));
  h.version = JSYNC_PROTO_VERSION;
  h.mode = (uint8_t)mode;
  h.flags = o->flags;
  h.ncircuits = s->ndata;
  getrandom(h.session, sizeof(h.session), 0);
  h.paths = calloc(nsrcs + 1, sizeof(char *));
  h.excludes = calloc(o->nexcludes + 1, sizeof(char *));
  if (rv == 0 && (!h.paths || !h.excludes)) {
    rv = sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  for (i = 0; rv == 0 && i < (mode == JSYNC_PUSH ? 1 : nsrcs); ++i) {
    if (!(h.paths[i] = strdup(mode == JSYNC_PUSH ? dst : srcs[i]))) {
      rv = sess_fail(s, FAIL_NOMEM, "out of memory");
    }
    h.npaths = i + 1;
  }
  for (i = 0; rv == 0 && i < o->nexcludes; ++i) {
    if (!(h.excludes[i] = strdup(o->excludes[i]))) {
      rv = sess_fail(s, FAIL_NOMEM, "out of memory");
    }
    h.nexcludes = i + 1;
  }
  jsync_wbuf_init(&w);
  jsync_hello_encode(&w, &h);
  if (rv == 0 && w.err) {
    rv = sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  if (rv == 0 && (code = ckt_tpeer_start(n, "jsync-client", &tp)) != CKT_OK) {
    rv = sess_fail(s, FAIL_LOCAL, "cannot start a local peer: %s",
                   ckt_strerror(code));
  }
  if (rv == 0) {
    f = ckt_fragment_new();
    if (!f) {
      rv = sess_fail(s, FAIL_NOMEM, "out of memory");
    }
  }
  if (rv == 0) {
    f->type = CKT_FRAG_DATA;
    f->op = JSYNC_OP_HELLO;
    f->payload = jsync_wbuf_take(&w, &f->payload_len);
    code = ckt_tpeer_open_extant(tp, host_port, JSYNC_SERVICE, JSYNC_CTRL_NAME,
                                 f, &s->ctrl);
    if (code != CKT_OK) {
      rv =
          sess_fail(s, code == CKT_ERR_INVALID_ARGUMENT ? FAIL_LOCAL : FAIL_NET,
                    "cannot reach %s: %s", host_port, ckt_strerror(code));
      s->ctrl = NULL;
    }
  }
  jsync_wbuf_free(&w);

  /* WELCOME, or why not */
  if (rv == 0) {
    int wait = o->timeout_ms > 0 ? o->timeout_ms : 15000;
    code = ckt_tcircuit_recv(s->ctrl, wait, &f);
    if (code == CKT_ERR_TIMEOUT) {
      rv = sess_fail(s, FAIL_NET, "%s did not answer within %d ms", host_port,
                     wait);
    } else if (code != CKT_OK || f->type != CKT_FRAG_DATA) {
      rv = sess_fail_circuit(s, s->ctrl, code, code == CKT_OK ? f : NULL);
    } else if (f->op != JSYNC_OP_WELCOME) {
      rv = sess_fail(s, FAIL_PROTOCOL, "%s is not a jsync server", host_port);
    }
    if (code == CKT_OK) {
      ckt_fragment_free(f);
    }
  }
  for (k = 0; rv == 0 && k < s->ndata; ++k) {
    jsync_join j;
    memcpy(j.session, h.session, sizeof(j.session));
    j.index = k;
    jsync_wbuf_init(&w);
    jsync_join_encode(&w, &j);
    f = ckt_fragment_new();
    if (!f || w.err) {
      ckt_fragment_free(f);
      jsync_wbuf_free(&w);
      rv = sess_fail(s, FAIL_NOMEM, "out of memory");
      break;
    }
    f->type = CKT_FRAG_DATA;
    f->op = JSYNC_OP_JOIN;
    f->payload = jsync_wbuf_take(&w, &f->payload_len);
    code = ckt_tcircuit_open_sibling(s->ctrl, JSYNC_DATA_NAME, f, &s->data[k]);
    if (code != CKT_OK) {
      s->ndata = k;
      rv = sess_fail_circuit(s, s->ctrl, code, NULL);
    }
  }
  if (rv == 0) {
    rv = mode == JSYNC_PUSH ? sender_run(s) : receiver_run(s);
  }

  jsync_hello_free(&h);
  *st = s->st;
  st->elapsed_s = now_s() - t0;
  code = fail_code(s->fail);
  if (code == CKT_OK && st->failed) {
    code = JSYNC_ERR_FILES;
    snprintf(why, why_sz, "%llu file%s could not be synced",
             (unsigned long long)st->failed, st->failed == 1 ? "" : "s");
  } else if (code != CKT_OK) {
    snprintf(why, why_sz, "%s", s->why);
  } else {
    snprintf(why, why_sz, "ok");
  }
  sess_free(s);
  if (tp) {
    ckt_tpeer_stop(tp);
  }
  return code;
}

int jsync_push(ckt_node *n, const char *host_port, const char *const *srcs,
               size_t nsrcs, const char *dst, const jsync_opts *o,
               jsync_stats *st, char *why, size_t why_sz) {
  return client_run(n, JSYNC_PUSH, host_port, srcs, nsrcs, dst, o, st, why,
                    why_sz);
}

int jsync_pull(ckt_node *n, const char *host_port, const char *const *srcs,
               size_t nsrcs, const char *dst, const jsync_opts *o,
               jsync_stats *st, char *why, size_t why_sz) {
  return client_run(n, JSYNC_PULL, host_port, srcs, nsrcs, dst, o, st, why,
                    why_sz);
}

/* ---- the server ---------------------------------------------------------- */

typedef struct srv_sess srv_sess;
struct jsync_server {
  ckt_node *n;
  ckt_tpeer *tp;
  jsync_server_opts o;
  int root_fd;
  pthread_t accept_th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stopping;
  unsigned threads; /* greeters and sessions running */
  srv_sess *sessions;
  unsigned nsessions;
};

struct srv_sess {
  srv_sess *next;
  uint8_t id[16];
  jsync_sess *s;
  unsigned want, joined;
};

typedef struct greeter {
  jsync_server *srv;
  ckt_tcircuit *tc;
} greeter;

static void srv_log(jsync_server *srv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void srv_log(jsync_server *srv, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (srv->o.log) {
    srv->o.log(srv->o.user, line);
  }
}

/* The client's address, for the log. */
static const char *client_of(ckt_tcircuit *tc, char *out, size_t n) {
  ckt_url u;
  if (ckt_url_parse(ckt_tcircuit_remote_url(tc), &u) == CKT_OK) {
    snprintf(out, n, "%s", u.host_port);
  } else {
    snprintf(out, n, "an unknown client");
  }
  return out;
}

static void srv_thread_done(jsync_server *srv) {
  pthread_mutex_lock(&srv->mu);
  srv->threads--;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

/* Runs a session that said HELLO: checks it, answers, waits for its data
 * circuits, runs the role, logs the outcome. */
static void serve_hello(jsync_server *srv, ckt_tcircuit *tc,
                        const ckt_fragment *f) {
  jsync_hello h;
  jsync_sess *s = sess_new();
  srv_sess ss, **pp;
  char who[CKT_MESSAGE_ADDR_MAX + 1];
  double t0 = now_s();
  int rv = 0;
  size_t i;
  memset(&ss, 0, sizeof(ss));
  client_of(tc, who, sizeof(who));
  if (!s) {
    ckt_tcircuit_send_error(tc, "out of memory at the server");
    ckt_tcircuit_close(tc, "out of memory");
    return;
  }
  s->ctrl = tc;
  s->root_fd = srv->root_fd;
  if (jsync_hello_decode(f->payload, f->payload_len, &h) != 0) {
    sess_fail(s, FAIL_PROTOCOL, "malformed HELLO");
    ckt_tcircuit_send_error(tc, "malformed HELLO");
    sess_free(s);
    return;
  }
  s->flags = h.flags;
  s->zlevel = 1;
  s->role = h.mode == JSYNC_PUSH ? ROLE_RECEIVER : ROLE_SENDER;
  if (h.version != JSYNC_PROTO_VERSION) {
    rv = sess_fail(s, FAIL_REFUSED,
                   "jsync protocol version %u is not spoken here (this "
                   "server speaks %d)",
                   h.version, JSYNC_PROTO_VERSION);
  } else if (h.mode == JSYNC_PUSH && srv->o.read_only) {
    rv = sess_fail(s, FAIL_REFUSED, "this server is read-only");
  } else if (h.mode == JSYNC_PUSH && h.npaths != 1) {
    rv = sess_fail(s, FAIL_PROTOCOL, "a push names one destination");
  } else if (h.npaths == 0) {
    rv = sess_fail(s, FAIL_PROTOCOL, "no paths");
  }
  if (rv == 0) {
    rv = add_excludes(s, (const char *const *)h.excludes, h.nexcludes);
  }
  if (rv == 0 && h.mode == JSYNC_PULL) {
    for (i = 0; i < h.npaths && rv == 0; ++i) {
      rv = add_source(s, h.paths[i], 1);
    }
  } else if (rv == 0) {
    char *d = h.paths[0];
    size_t len = strlen(d);
    s->dst_beneath = 1;
    if (d[0] == '/' && strcmp(d, "/") != 0) {
      rv = sess_fail(s, FAIL_REFUSED,
                     "'%s' is refused: paths are relative to the server's "
                     "root",
                     d);
    } else {
      /* keep a trailing '/': it asks for a directory */
      char tmp[JSYNC_PATH_MAX + 2];
      snprintf(tmp, sizeof(tmp), "%s", d);
      while (len > 0 && tmp[len - 1] == '/') {
        tmp[--len] = '\0';
      }
      if (strcmp(tmp, ".") == 0) {
        tmp[0] = '\0';
      }
      if (tmp[0] && !jsync_path_valid(tmp)) {
        rv = sess_fail(s, FAIL_REFUSED,
                       "'%s' is refused: paths are relative to the server's "
                       "root, without '..'",
                       d);
      }
    }
  }
  if (rv == 0) {
    pthread_mutex_lock(&srv->mu);
    if (srv->nsessions >= (srv->o.max_sessions ? srv->o.max_sessions : 64)) {
      rv = -1;
    } else {
      memcpy(ss.id, h.session, sizeof(ss.id));
      ss.s = s;
      ss.want = h.ncircuits;
      ss.next = srv->sessions;
      srv->sessions = &ss;
      srv->nsessions++;
    }
    pthread_mutex_unlock(&srv->mu);
    if (rv != 0) {
      sess_fail(s, FAIL_REFUSED, "the server is busy (too many sessions)");
    }
  }
  if (rv != 0) {
    ckt_tcircuit_send_error(tc, s->why);
    srv_log(srv, "refused a session from %s: %s", who, s->why);
    jsync_hello_free(&h);
    sess_free(s);
    return;
  }
  if (s->role == ROLE_RECEIVER) {
    s->dst = h.paths[0];
  }
  rv = sess_send_bytes(s, tc, JSYNC_OP_WELCOME, NULL, 0);

  /* The data circuits join. */
  if (rv == 0) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 15;
    pthread_mutex_lock(&srv->mu);
    while (ss.joined < ss.want && !srv->stopping) {
      if (pthread_cond_timedwait(&srv->cv, &srv->mu, &until) != 0) {
        break;
      }
    }
    rv = ss.joined == ss.want ? 0 : -1;
    pthread_mutex_unlock(&srv->mu);
    if (rv != 0) {
      sess_fail(s, FAIL_NET, "the client's data circuits did not arrive");
    }
  }
  if (rv == 0) {
    rv = s->role == ROLE_SENDER ? sender_run(s) : receiver_run(s);
  }

  pthread_mutex_lock(&srv->mu);
  for (pp = &srv->sessions; *pp; pp = &(*pp)->next) {
    if (*pp == &ss) {
      *pp = ss.next;
      break;
    }
  }
  srv->nsessions--;
  pthread_mutex_unlock(&srv->mu);

  if (s->fail) {
    srv_log(srv, "%s %s from %s: failed after %.3f s: %s",
            h.mode == JSYNC_PUSH ? "push to" : "pull of",
            h.paths[0][0] ? h.paths[0] : ".", who, now_s() - t0, s->why);
  } else {
    srv_log(
        srv,
        "%s %s from %s: files=%llu transferred=%llu literal_bytes=%llu "
        "matched_bytes=%llu deleted=%llu failed=%llu elapsed_s=%.3f",
        h.mode == JSYNC_PUSH ? "push to" : "pull of",
        h.paths[0][0] ? h.paths[0] : ".", who, (unsigned long long)s->st.files,
        (unsigned long long)s->st.transferred,
        (unsigned long long)s->st.literal, (unsigned long long)s->st.matched,
        (unsigned long long)s->st.deleted, (unsigned long long)s->st.failed,
        now_s() - t0);
  }
  /* The client closes when it is done; wait a little for that so the
   * last messages are not cut short. */
  if (!s->fail) {
    ckt_fragment *x = NULL;
    if (ckt_tcircuit_recv(tc, 2000, &x) == CKT_OK) {
      ckt_fragment_free(x);
    }
  }
  jsync_hello_free(&h);
  s->dst = NULL;
  sess_free(s);
}

static void *greet(void *arg) {
  greeter *g = arg;
  jsync_server *srv = g->srv;
  ckt_tcircuit *tc = g->tc;
  ckt_fragment *f = NULL;
  int rv;
  free(g);
  rv = ckt_tcircuit_recv(tc, 10000, &f);
  if (rv != CKT_OK || f->type != CKT_FRAG_DATA) {
    ckt_tcircuit_close(tc, "expected HELLO or JOIN");
  } else if (f->op == JSYNC_OP_HELLO) {
    serve_hello(srv, tc, f);
  } else if (f->op == JSYNC_OP_JOIN) {
    jsync_join j;
    srv_sess *ss = NULL;
    if (jsync_join_decode(f->payload, f->payload_len, &j) == 0) {
      pthread_mutex_lock(&srv->mu);
      for (ss = srv->sessions; ss; ss = ss->next) {
        if (memcmp(ss->id, j.session, sizeof(j.session)) == 0) {
          break;
        }
      }
      if (ss && j.index < ss->want && !ss->s->data[j.index]) {
        ss->s->data[j.index] = tc;
        ss->joined++;
        if (ss->s->ndata < j.index + 1) {
          ss->s->ndata = j.index + 1;
        }
        tc = NULL;
        pthread_cond_broadcast(&srv->cv);
      }
      pthread_mutex_unlock(&srv->mu);
    }
    if (tc) {
      ckt_tcircuit_close(tc, "JOIN for no session");
    }
  } else {
    ckt_tcircuit_close(tc, "expected HELLO or JOIN");
  }
  ckt_fragment_free(f);
  srv_thread_done(srv);
  return NULL;
}

static void *accept_loop(void *arg) {
  jsync_server *srv = arg;
  for (;;) {
    ckt_tcircuit *tc = NULL;
    greeter *g;
    pthread_t th;
    pthread_attr_t at;
    int rv, stopping;
    pthread_mutex_lock(&srv->mu);
    stopping = srv->stopping;
    pthread_mutex_unlock(&srv->mu);
    if (stopping) {
      break;
    }
    rv = ckt_tpeer_accept(srv->tp, POLL_MS, &tc);
    if (rv != CKT_OK) {
      continue;
    }
    pthread_mutex_lock(&srv->mu);
    stopping = srv->threads >= MAX_THREADS;
    pthread_mutex_unlock(&srv->mu);
    if (stopping) {
      ckt_tcircuit_close(tc, "refused: the server is busy");
      continue;
    }
    g = malloc(sizeof(*g));
    if (!g) {
      ckt_tcircuit_close(tc, "out of memory at the server");
      continue;
    }
    g->srv = srv;
    g->tc = tc;
    pthread_mutex_lock(&srv->mu);
    srv->threads++;
    pthread_mutex_unlock(&srv->mu);
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, greet, g) != 0) {
      ckt_tcircuit_close(tc, "the server cannot start a thread");
      free(g);
      srv_thread_done(srv);
    }
    pthread_attr_destroy(&at);
  }
  return NULL;
}

int jsync_server_start(ckt_node *n, const jsync_server_opts *o,
                       jsync_server **out, char *why, size_t why_sz) {
  jsync_server *srv = calloc(1, sizeof(*srv));
  int rv;
  if (!srv) {
    snprintf(why, why_sz, "out of memory");
    return CKT_ERR_NOMEM;
  }
  srv->n = n;
  srv->o = *o;
  srv->root_fd =
      open(o->root ? o->root : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (srv->root_fd < 0) {
    snprintf(why, why_sz, "root %s: %s", o->root ? o->root : ".",
             strerror(errno));
    free(srv);
    return JSYNC_ERR_LOCAL;
  }
  pthread_mutex_init(&srv->mu, NULL);
  pthread_cond_init(&srv->cv, NULL);
  rv = ckt_tpeer_start(n, JSYNC_SERVICE, &srv->tp);
  if (rv == CKT_OK &&
      pthread_create(&srv->accept_th, NULL, accept_loop, srv) != 0) {
    ckt_tpeer_stop(srv->tp);
    rv = CKT_ERR_NOMEM;
  }
  if (rv != CKT_OK) {
    snprintf(why, why_sz, "cannot start the jsync service: %s",
             ckt_strerror(rv));
    close(srv->root_fd);
    pthread_cond_destroy(&srv->cv);
    pthread_mutex_destroy(&srv->mu);
    free(srv);
    return rv;
  }
  *out = srv;
  return CKT_OK;
}

void jsync_server_stop(jsync_server *srv) {
  struct timespec until;
  srv_sess *ss;
  if (!srv) {
    return;
  }
  pthread_mutex_lock(&srv->mu);
  srv->stopping = 1;
  for (ss = srv->sessions; ss; ss = ss->next) {
    pthread_mutex_lock(&ss->s->mu);
    ss->s->stop = 1;
    if (!ss->s->fail) {
      ss->s->fail = FAIL_STOPPED;
      snprintf(ss->s->why, sizeof(ss->s->why), "the server is stopping");
    }
    pthread_cond_broadcast(&ss->s->cv);
    pthread_mutex_unlock(&ss->s->mu);
  }
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
  pthread_join(srv->accept_th, NULL);
  /* Sessions notice within POLL_MS and wind down.  A sender blocked on a
   * client that stopped reading (killed mid-pull) does not notice before
   * the connection times out: after a grace period, stopping the peer
   * closes every circuit, which ends its wait. */
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_nsec += 2L * POLL_MS * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&srv->mu);
  while (srv->threads > 0) {
    if (pthread_cond_timedwait(&srv->cv, &srv->mu, &until) != 0) {
      break;
    }
  }
  if (srv->threads > 0) {
    pthread_mutex_unlock(&srv->mu);
    ckt_tpeer_stop(srv->tp);
    srv->tp = NULL;
    pthread_mutex_lock(&srv->mu);
  }
  while (srv->threads > 0) {
    pthread_cond_wait(&srv->cv, &srv->mu);
  }
  pthread_mutex_unlock(&srv->mu);
  ckt_tpeer_stop(srv->tp);
  close(srv->root_fd);
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->mu);
  free(srv);
}
