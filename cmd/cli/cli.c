/*
 * cli — a ckt client: calls, one-way messages and pushes against srv, with
 * latency percentiles and calls per second; streaming calls (upload,
 * download, bistream), cancellation and compression.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ckt/ckt.h"
#include "cmdline.h"

/* Payload of each part of an upload. */
#define PART_SIZE (256u * 1024)

typedef struct cli {
  const char *addr, *service;
  unsigned long total, window, size, timeout_ms, oneways, pushes;
  int quiet;
  const char *compress, *upload, *as, *download, *out, *args;
  unsigned long bistream, cancel_after;
  int stats, codec;
  cmd_node_opts node;
  ckt_node *n;
  uint8_t *payload;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned long started, finished, errors, mismatched, pushed;
  uint64_t *lat;
  int first_err;
  char first_why[512];
} cli;

typedef struct one {
  cli *c;
  uint64_t t0;
} one;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sets each K=V of -arg (comma-separated) on m.  CKT_OK, or
 * CKT_ERR_INVALID_ARGUMENT for an item without a key and '=', or what
 * ckt_message_set_arg() says. */
static int set_args(const char *args, ckt_message *m) {
  const char *p = args;
  while (p && *p) {
    const char *comma = strchr(p, ','), *eq = strchr(p, '=');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    char item[1024];
    int rv;
    if (!eq || eq >= p + len || eq == p || len >= sizeof(item)) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    memcpy(item, p, len);
    item[len] = 0;
    item[eq - p] = 0;
    if ((rv = ckt_message_set_arg(m, item, item + (eq - p) + 1)) != CKT_OK) {
      return rv;
    }
    p = comma ? comma + 1 : NULL;
  }
  return CKT_OK;
}

static ckt_message *make_request(cli *c) {
  ckt_message *m = ckt_message_new();
  if (!m || ckt_message_set_service(m, c->service) != CKT_OK ||
      ckt_message_set_payload(m, c->payload, c->size) != CKT_OK ||
      (c->args && set_args(c->args, m) != CKT_OK)) {
    ckt_message_free(m);
    return NULL;
  }
  return m;
}

static void note_error(cli *c, int err, const char *why) {
  c->errors++;
  if (!c->first_err) {
    c->first_err = err;
    snprintf(c->first_why, sizeof(c->first_why), "%s", why);
  }
}

static void call_done(ckt_node *n, int err, const ckt_message *reply,
                      void *user);

/* Starts the next call if any are left (mu held). */
static void start_next(cli *c) {
  one *o;
  ckt_message *m;
  int rv;
  if (c->started >= c->total) {
    return;
  }
  o = malloc(sizeof(*o));
  m = make_request(c);
  if (!o || !m) {
    free(o);
    ckt_message_free(m);
    note_error(c, CKT_ERR_NOMEM, "out of memory");
    c->started++;
    c->finished++;
    return;
  }
  o->c = c;
  o->t0 = mono_ns();
  c->started++;
  rv = ckt_node_call_async(c->n, c->addr, m, (uint32_t)c->timeout_ms, call_done,
                           o);
  if (rv != CKT_OK) {
    free(o);
    note_error(c, rv, ckt_strerror(rv));
    c->finished++;
  }
}

static void call_done(ckt_node *n, int err, const ckt_message *reply,
                      void *user) {
  one *o = user;
  cli *c = o->c;
  uint64_t dt = mono_ns() - o->t0;
  (void)n;
  free(o);
  pthread_mutex_lock(&c->mu);
  if (err != CKT_OK) {
    note_error(c, err, reply->err ? reply->err : ckt_strerror(err));
  } else if (reply->payload_len != c->size ||
             (c->size && memcmp(reply->payload, c->payload, c->size) != 0)) {
    c->mismatched++;
    note_error(c, CKT_ERR_FORMAT,
               "a reply's payload differs from the "
               "request's");
  }
  c->lat[c->finished++] = dt;
  start_next(c);
  if (c->finished == c->total) {
    pthread_cond_signal(&c->cv);
  }
  pthread_mutex_unlock(&c->mu);
}

static void on_push(ckt_node *n, const ckt_message *msg, void *user) {
  cli *c = user;
  (void)n, (void)msg;
  pthread_mutex_lock(&c->mu);
  c->pushed++;
  if (c->pushed == c->pushes) {
    pthread_cond_signal(&c->cv);
  }
  pthread_mutex_unlock(&c->mu);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, size_t n, double p) {
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return (double)v[i] / 1000.0;
}

/* One synchronous call first: it connects, and says who answered. */
static int connect_first(cli *c) {
  ckt_message *reply = NULL, *m = make_request(c);
  char suite[64], key[80];
  int rv;
  if (!m) {
    return CKT_ERR_NOMEM;
  }
  ckt_message_set_service(m, "echo");
  rv = ckt_node_call(c->n, c->addr, m, (uint32_t)c->timeout_ms, &reply);
  if (rv != CKT_OK) {
    fprintf(stderr, "cli: %s.\n",
            reply && reply->err ? reply->err : ckt_strerror(rv));
    ckt_message_free(reply);
    return rv;
  }
  ckt_message_free(reply);
  if (ckt_node_peer_info(c->n, c->addr, suite, sizeof(suite), key,
                         sizeof(key)) == CKT_OK) {
    printf("cli: connected to %s: %s, server key Ed25519 %s\n", c->addr, suite,
           key[0] ? key : "(not checked: skip-verify)");
  }
  return CKT_OK;
}

static int run_calls(cli *c) {
  uint64_t t0, t1;
  unsigned long i;
  double secs;

  c->lat = calloc(c->total ? c->total : 1, sizeof(*c->lat));
  if (!c->lat) {
    return CKT_ERR_NOMEM;
  }
  t0 = mono_ns();
  pthread_mutex_lock(&c->mu);
  for (i = 0; i < c->window && c->started < c->total; ++i) {
    start_next(c);
  }
  while (c->finished < c->total) {
    pthread_cond_wait(&c->cv, &c->mu);
  }
  pthread_mutex_unlock(&c->mu);
  t1 = mono_ns();
  secs = (double)(t1 - t0) / 1e9;
  qsort(c->lat, c->total, sizeof(*c->lat), cmp_u64);
  printf("cli: %lu calls to '%s' (%lu in flight, %lu-byte payloads) in "
         "%.3f s: %.0f calls/s; latency us p50=%.1f p90=%.1f p99=%.1f "
         "max=%.1f; %lu errors\n",
         c->total, c->service, c->window, c->size, secs,
         (double)c->total / secs, pct(c->lat, c->total, 0.50),
         pct(c->lat, c->total, 0.90), pct(c->lat, c->total, 0.99),
         pct(c->lat, c->total, 1.0), c->errors);
  if (c->errors) {
    fprintf(stderr, "cli: first error: %s.\n", c->first_why);
  }
  return c->errors ? c->first_err : CKT_OK;
}

static int run_oneways(cli *c) {
  unsigned long i;
  ckt_message *reply = NULL, *m;
  int rv;
  for (i = 0; i < c->oneways; ++i) {
    m = make_request(c);
    if (!m) {
      return CKT_ERR_NOMEM;
    }
    ckt_message_set_service(m, "oneway");
    if ((rv = ckt_node_send(c->n, c->addr, m)) != CKT_OK) {
      fprintf(stderr, "cli: one-way send failed: %s.\n", ckt_strerror(rv));
      return rv;
    }
  }
  /* A call after them: once answered, the server has read them too. */
  m = make_request(c);
  if (!m) {
    return CKT_ERR_NOMEM;
  }
  ckt_message_set_service(m, "echo");
  rv = ckt_node_call(c->n, c->addr, m, (uint32_t)c->timeout_ms, &reply);
  ckt_message_free(reply);
  printf("cli: sent %lu one-way messages to %s\n", c->oneways, c->addr);
  return rv;
}

static int run_pushes(cli *c) {
  ckt_message *reply = NULL, *m = make_request(c);
  char count[32];
  struct timespec until;
  int rv;
  if (!m) {
    return CKT_ERR_NOMEM;
  }
  snprintf(count, sizeof(count), "%lu", c->pushes);
  ckt_message_set_service(m, "push");
  ckt_message_set_arg(m, "count", count);
  rv = ckt_node_call(c->n, c->addr, m, (uint32_t)c->timeout_ms, &reply);
  if (rv != CKT_OK) {
    fprintf(stderr, "cli: push request failed: %s.\n",
            reply && reply->err ? reply->err : ckt_strerror(rv));
    ckt_message_free(reply);
    return rv;
  }
  ckt_message_free(reply);
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += (time_t)(c->timeout_ms / 1000) + 1;
  pthread_mutex_lock(&c->mu);
  while (c->pushed < c->pushes &&
         pthread_cond_timedwait(&c->cv, &c->mu, &until) == 0) {
  }
  pthread_mutex_unlock(&c->mu);
  printf("cli: received %lu of %lu pushes from %s\n", c->pushed, c->pushes,
         c->addr);
  return c->pushed == c->pushes ? CKT_OK : CKT_ERR_TIMEOUT;
}

/* ---- streaming calls and cancellation ------------------------------------ */

/* One call started with ckt_node_call_start(), and what its callbacks
 * learn: the loop thread writes, the main thread reads once `finished`
 * is set (under mu). */
typedef struct stream {
  cli *c;
  ckt_call *call;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* CLOCK_MONOTONIC */
  pthread_t canceller;
  int has_canceller, finished, err, cancelled;
  ckt_message *reply; /* a copy of the final reply, or NULL */
  uint64_t t0, t1;
  /* download */
  int fd, werr;
  uint64_t bytes;
  crypto_generichash_state h;
  /* bistream */
  unsigned long got, n;
  size_t size;
  char bad[256];
} stream;

static void stream_init(stream *st, cli *c) {
  pthread_condattr_t ca;
  memset(st, 0, sizeof(*st));
  st->c = c;
  st->fd = -1;
  pthread_mutex_init(&st->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&st->cv, &ca);
  pthread_condattr_destroy(&ca);
  crypto_generichash_init(&st->h, NULL, 0, 32);
}

static void stream_done(ckt_node *n, int err, const ckt_message *reply,
                        void *user) {
  stream *st = user;
  ckt_message *copy = NULL;
  (void)n;
  ckt_message_copy(reply, &copy);
  pthread_mutex_lock(&st->mu);
  st->err = err;
  st->reply = copy;
  st->t1 = mono_ns();
  st->finished = 1;
  pthread_cond_broadcast(&st->cv);
  pthread_mutex_unlock(&st->mu);
}

/* -cancel-after: cancels the call unless it finished first. */
static void *canceller(void *arg) {
  stream *st = arg;
  struct timespec until;
  int fire;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += (time_t)(st->c->cancel_after / 1000);
  until.tv_nsec += (long)(st->c->cancel_after % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&st->mu);
  while (!st->finished &&
         pthread_cond_timedwait(&st->cv, &st->mu, &until) != ETIMEDOUT) {
  }
  fire = !st->finished;
  st->cancelled = fire;
  pthread_mutex_unlock(&st->mu);
  if (fire) {
    ckt_call_cancel(st->call);
  }
  return NULL;
}

/* Starts the call (taking req) and, with -cancel-after, its canceller. */
static int stream_start(stream *st, ckt_message *req, int kind,
                        uint32_t timeout_ms, ckt_call_part_cb on_part) {
  ckt_call_opts opts;
  int rv;
  memset(&opts, 0, sizeof(opts));
  opts.kind = kind;
  opts.timeout_ms = timeout_ms;
  opts.done = stream_done;
  opts.on_part = on_part;
  opts.user = st;
  st->t0 = mono_ns();
  rv = ckt_node_call_start(st->c->n, st->c->addr, req, &opts, &st->call);
  if (rv != CKT_OK) {
    fprintf(stderr, "cli: cannot start the call: %s.\n", ckt_strerror(rv));
    return rv;
  }
  if (st->c->cancel_after &&
      pthread_create(&st->canceller, NULL, canceller, st) == 0) {
    st->has_canceller = 1;
  }
  return CKT_OK;
}

/* Waits for done, then lets go of the call. */
static void stream_wait(stream *st) {
  pthread_mutex_lock(&st->mu);
  while (!st->finished) {
    pthread_cond_wait(&st->cv, &st->mu);
  }
  pthread_mutex_unlock(&st->mu);
  if (st->has_canceller) {
    pthread_join(st->canceller, NULL);
  }
  ckt_call_release(st->call);
  st->call = NULL;
}

static void stream_free(stream *st) {
  ckt_message_free(st->reply);
  pthread_cond_destroy(&st->cv);
  pthread_mutex_destroy(&st->mu);
}

/* What the call ended with, in one sentence fragment. */
static const char *stream_why(const stream *st) {
  return st->reply && st->reply->err && st->reply->err[0]
             ? st->reply->err
             : ckt_strerror(st->err);
}

/* After -cancel-after fired: 0 when the call ended cancelled. */
static int cancel_outcome(const stream *st) {
  if (st->err == CKT_ERR_CANCEL_SENT || st->err == CKT_ERR_CANCELED) {
    printf("cli: call cancelled: %s\n", ckt_strerror(st->err));
    return 0;
  }
  if (st->err == CKT_OK) {
    fprintf(stderr, "cli: the call finished before it could be cancelled.\n");
    return CMD_EXIT_FAIL;
  }
  fprintf(stderr, "cli: the call failed before it could be cancelled: %s.\n",
          stream_why(st));
  return cmd_exit_code(st->err);
}

static double secs_of(const stream *st) {
  double s = (double)(st->t1 - st->t0) / 1e9;
  return s > 0 ? s : 1e-9;
}

static void hex_digest(crypto_generichash_state *h, char hex[65]) {
  unsigned char sum[32];
  crypto_generichash_final(h, sum, sizeof(sum));
  sodium_bin2hex(hex, 65, sum, sizeof(sum));
}

/* Checks the final reply's bytes and blake2b against ours: 0 if equal,
 * else prints why and returns CMD_EXIT_FAIL. */
static int check_digest(const stream *st, const char *what, uint64_t bytes,
                        const char *hex) {
  const char *rb = ckt_message_get_arg(st->reply, "bytes");
  const char *rh = ckt_message_get_arg(st->reply, "blake2b");
  char nb[32];
  snprintf(nb, sizeof(nb), "%" PRIu64, bytes);
  if (!rb || !rh) {
    fprintf(stderr,
            "cli: the server's reply for %s has no bytes and blake2b: the "
            "copy cannot be verified.\n",
            what);
    return CMD_EXIT_FAIL;
  }
  if (strcmp(rb, nb) != 0 || strcmp(rh, hex) != 0) {
    fprintf(stderr,
            "cli: %s differs: the server counted %s bytes with BLAKE2b %s, "
            "this side %s bytes with BLAKE2b %s; the copy is damaged, run it "
            "again.\n",
            what, rb, rh, nb, hex);
    return CMD_EXIT_FAIL;
  }
  return 0;
}

/* One read(): the next piece of the file (at most PART_SIZE bytes, fewer
 * from a pipe), 0 at the end, -1 with errno on error. */
static ssize_t read_piece(int fd, uint8_t **buf) {
  ssize_t k;
  if (!(*buf = malloc(PART_SIZE))) {
    errno = ENOMEM;
    return -1;
  }
  do {
    k = read(fd, *buf, PART_SIZE);
  } while (k < 0 && errno == EINTR);
  if (k <= 0) {
    free(*buf);
    *buf = NULL;
  }
  return k;
}

/* Sends the file's pieces as parts; the part after which read() says end
 * of file is the last (an empty file: one empty last part).  Returns 0,
 * or -1 with errno after a read error (the call is then cancelled). */
static int upload_send(stream *st, int fd, uint64_t *bytes) {
  uint8_t *cur = NULL, *next = NULL;
  ssize_t ncur = read_piece(fd, &cur), nnext = 0;
  int rv, last;
  if (ncur < 0) {
    return -1;
  }
  for (;;) {
    ckt_message *part = ckt_message_new();
    if (ncur > 0 && (nnext = read_piece(fd, &next)) < 0) {
      int e = errno;
      free(cur);
      ckt_message_free(part);
      errno = e;
      return -1;
    }
    last = ncur == 0 || nnext == 0;
    if (!part) {
      free(cur);
      free(next);
      errno = ENOMEM;
      return -1;
    }
    part->payload = cur; /* the message owns it now */
    part->payload_len = (size_t)ncur;
    if (ncur > 0) {
      crypto_generichash_update(&st->h, cur, (size_t)ncur);
    }
    *bytes += (uint64_t)ncur;
    /* Off the loop thread this waits for room: QUIC's flow control paces
     * the reading of the file. */
    if ((rv = ckt_call_send(st->call, part, last)) != CKT_OK) {
      free(next);
      if (rv != CKT_ERR_CLOSED) { /* CLOSED: done says why */
        fprintf(stderr, "cli: cannot send a part: %s.\n", ckt_strerror(rv));
        ckt_call_cancel(st->call);
      }
      return 0;
    }
    if (last) {
      return 0;
    }
    cur = next, ncur = nnext;
    next = NULL;
  }
}

static int run_upload(cli *c) {
  const char *slash = strrchr(c->upload, '/');
  const char *name = c->as ? c->as : slash ? slash + 1 : c->upload;
  ckt_message *req;
  uint64_t bytes = 0;
  char hex[65];
  stream st;
  int fd, rv, code, read_errno = 0;
  if (!*name) {
    fprintf(stderr, "cli: '%s' has no file name: give -as NAME.\n", c->upload);
    return CMD_EXIT_USAGE;
  }
  if ((fd = open(c->upload, O_RDONLY | O_CLOEXEC)) < 0) {
    fprintf(stderr, "cli: cannot open %s: %s.\n", c->upload, strerror(errno));
    return CMD_EXIT_IO;
  }
  req = ckt_message_new();
  if (!req || ckt_message_set_service(req, "upload") != CKT_OK ||
      ckt_message_set_arg(req, "name", name) != CKT_OK) {
    fprintf(stderr, "cli: the name '%s' is too long.\n", name);
    ckt_message_free(req);
    close(fd);
    return CMD_EXIT_USAGE;
  }
  stream_init(&st, c);
  /* A streaming call has no deadline: it takes as long as the file. */
  if ((rv = stream_start(&st, req, CKT_CALL_UPLOAD, 0, NULL)) != CKT_OK) {
    stream_free(&st);
    close(fd);
    return cmd_exit_code(rv);
  }
  if (upload_send(&st, fd, &bytes) != 0) {
    read_errno = errno;
    ckt_call_cancel(st.call);
  }
  close(fd);
  stream_wait(&st);
  hex_digest(&st.h, hex);
  if (read_errno) {
    fprintf(stderr, "cli: cannot read %s: %s.\n", c->upload,
            strerror(read_errno));
    code = CMD_EXIT_IO;
  } else if (st.cancelled) {
    code = cancel_outcome(&st);
  } else if (st.err != CKT_OK) {
    fprintf(stderr, "cli: upload of %s failed: %s.\n", c->upload,
            stream_why(&st));
    code = cmd_exit_code(st.err);
  } else if ((code = check_digest(&st, name, bytes, hex)) == 0) {
    printf("cli: uploaded %" PRIu64 " bytes in %.3f s (%.1f MB/s) as %s, "
           "codec %s, BLAKE2b %s verified\n",
           bytes, secs_of(&st), (double)bytes / secs_of(&st) / 1e6, name,
           ckt_codec_name(c->codec ? c->codec : CKT_CODEC_NONE), hex);
  }
  stream_free(&st);
  return code;
}

/* Each part of a download, on the loop thread: appended to the file. */
static void download_part(ckt_node *n, ckt_call *call, const ckt_message *part,
                          void *user) {
  stream *st = user;
  (void)n;
  if (st->werr || part->payload_len == 0) {
    return;
  }
  if (cmd_write_all(st->fd, part->payload, part->payload_len) != 0) {
    st->werr = errno;
    ckt_call_cancel(call);
    return;
  }
  crypto_generichash_update(&st->h, part->payload, part->payload_len);
  st->bytes += part->payload_len;
}

/* A temporary file beside `out`, made with the umask's permissions. */
static int download_temp(const char *out, char *tmp, size_t tmpsz) {
  const char *slash = strrchr(out, '/');
  mode_t mask = umask(0);
  int fd;
  umask(mask);
  if (slash) {
    snprintf(tmp, tmpsz, "%.*s/.%s.XXXXXX", (int)(slash - out), out, slash + 1);
  } else {
    snprintf(tmp, tmpsz, ".%s.XXXXXX", out);
  }
  if ((fd = mkostemp(tmp, O_CLOEXEC)) >= 0) {
    fchmod(fd, 0666 & ~mask);
  }
  return fd;
}

static int run_download(cli *c) {
  char tmp[PATH_MAX + 16], hex[65];
  ckt_message *req = ckt_message_new();
  stream st;
  int rv, code;
  if (!req || ckt_message_set_service(req, "download") != CKT_OK ||
      ckt_message_set_arg(req, "path", c->download) != CKT_OK) {
    fprintf(stderr, "cli: the path '%s' is too long.\n", c->download);
    ckt_message_free(req);
    return CMD_EXIT_USAGE;
  }
  stream_init(&st, c);
  if ((st.fd = download_temp(c->out, tmp, sizeof(tmp))) < 0) {
    fprintf(stderr, "cli: cannot create a file beside %s: %s.\n", c->out,
            strerror(errno));
    ckt_message_free(req);
    stream_free(&st);
    return CMD_EXIT_IO;
  }
  if ((rv = stream_start(&st, req, CKT_CALL_DOWNLOAD, 0, download_part)) !=
      CKT_OK) {
    code = cmd_exit_code(rv);
  } else {
    stream_wait(&st);
    hex_digest(&st.h, hex);
    if (st.werr) {
      fprintf(stderr, "cli: cannot write %s: %s.\n", tmp, strerror(st.werr));
      code = CMD_EXIT_IO;
    } else if (st.cancelled) {
      code = cancel_outcome(&st);
    } else if (st.err != CKT_OK) {
      fprintf(stderr, "cli: download of %s failed: %s.\n", c->download,
              stream_why(&st));
      code = cmd_exit_code(st.err);
    } else if ((code = check_digest(&st, c->download, st.bytes, hex)) == 0 &&
               (fsync(st.fd) != 0 || rename(tmp, c->out) != 0)) {
      fprintf(stderr, "cli: cannot write %s: %s.\n", c->out, strerror(errno));
      code = CMD_EXIT_IO;
    } else if (code == 0) {
      printf("cli: downloaded %" PRIu64 " bytes in %.3f s (%.1f MB/s) into "
             "%s, BLAKE2b %s verified\n",
             st.bytes, secs_of(&st), (double)st.bytes / secs_of(&st) / 1e6,
             c->out, hex);
    }
  }
  close(st.fd);
  if (code != 0) {
    unlink(tmp);
  }
  stream_free(&st);
  return code;
}

/* Part i of a bistream: its bytes depend on i, so that a part delivered
 * out of order or twice shows. */
static uint8_t bistream_byte(unsigned long i, size_t j) {
  return (uint8_t)(j * 131u + i * 7u + 1u);
}

static void bistream_bad(stream *st, unsigned long i, const char *what) {
  if (!st->bad[0]) {
    snprintf(st->bad, sizeof(st->bad), "echoed part %lu %s", i, what);
  }
}

/* Each echoed part, on the loop thread: must be the next one, intact. */
static void bistream_part(ckt_node *n, ckt_call *call, const ckt_message *part,
                          void *user) {
  stream *st = user;
  unsigned long i = st->got++;
  const char *seq = ckt_message_get_arg(part, "seq");
  int last = (part->flags & CKT_MSG_FLAG_LAST_PART) != 0;
  size_t j;
  (void)n, (void)call;
  if (!seq || strtoul(seq, NULL, 10) != i) {
    bistream_bad(st, i, "came out of order");
  } else if (part->payload_len != st->size) {
    bistream_bad(st, i, "has another size");
  } else if (last != (i + 1 == st->n)) {
    bistream_bad(st, i, "has a wrong last-part flag");
  }
  for (j = 0; j < part->payload_len && j < st->size; ++j) {
    if (part->payload[j] != bistream_byte(i, j)) {
      bistream_bad(st, i, "differs from the part sent");
      break;
    }
  }
}

static int bistream_send(stream *st, unsigned long i) {
  ckt_message *part = ckt_message_new();
  char seq[32];
  size_t j;
  if (!part || (st->size && !(part->payload = malloc(st->size)))) {
    ckt_message_free(part);
    return CKT_ERR_NOMEM;
  }
  part->payload_len = st->size;
  for (j = 0; j < st->size; ++j) {
    part->payload[j] = bistream_byte(i, j);
  }
  snprintf(seq, sizeof(seq), "%lu", i);
  if (ckt_message_set_arg(part, "seq", seq) != CKT_OK) {
    ckt_message_free(part);
    return CKT_ERR_NOMEM;
  }
  return ckt_call_send(st->call, part, i + 1 == st->n);
}

static int run_bistream(cli *c) {
  ckt_message *req = ckt_message_new();
  const char *parts;
  unsigned long i;
  stream st;
  int rv, code = 0;
  if (!req || ckt_message_set_service(req, "echo.stream") != CKT_OK) {
    ckt_message_free(req);
    return CMD_EXIT_FAIL;
  }
  stream_init(&st, c);
  st.n = c->bistream;
  st.size = c->size;
  if ((rv = stream_start(&st, req, CKT_CALL_BISTREAM, 0, bistream_part)) !=
      CKT_OK) {
    stream_free(&st);
    return cmd_exit_code(rv);
  }
  for (i = 0; i < st.n; ++i) {
    if ((rv = bistream_send(&st, i)) != CKT_OK) {
      if (rv != CKT_ERR_CLOSED) { /* CLOSED: done says why */
        fprintf(stderr, "cli: cannot send part %lu: %s.\n", i,
                ckt_strerror(rv));
        ckt_call_cancel(st.call);
      }
      break;
    }
  }
  stream_wait(&st);
  parts = ckt_message_get_arg(st.reply, "parts");
  if (st.cancelled) {
    code = cancel_outcome(&st);
  } else if (st.err != CKT_OK) {
    fprintf(stderr, "cli: bistream failed: %s.\n", stream_why(&st));
    code = cmd_exit_code(st.err);
  } else if (st.bad[0]) {
    fprintf(stderr, "cli: bistream: %s.\n", st.bad);
    code = CMD_EXIT_FAIL;
  } else if (st.got != st.n) {
    fprintf(stderr, "cli: bistream: %lu parts sent, %lu came back.\n", st.n,
            st.got);
    code = CMD_EXIT_FAIL;
  } else if (!parts || strtoul(parts, NULL, 10) != st.n) {
    fprintf(stderr, "cli: bistream: %lu parts sent, the server counted %s.\n",
            st.n, parts ? parts : "none");
    code = CMD_EXIT_FAIL;
  } else {
    printf("cli: bistream: %lu parts of %zu bytes echoed back in order and "
           "intact in %.3f s (%.1f MB/s each way); the server counted %s\n",
           st.n, st.size, secs_of(&st),
           (double)st.n * (double)st.size / secs_of(&st) / 1e6, parts);
  }
  stream_free(&st);
  return code;
}

/* -cancel-after with a unary call: one call, cancelled after MS. */
static int run_cancel(cli *c) {
  ckt_message *req = make_request(c);
  stream st;
  int rv, code;
  if (!req) {
    fprintf(stderr, "cli: out of memory.\n");
    return CMD_EXIT_FAIL;
  }
  stream_init(&st, c);
  if ((rv = stream_start(&st, req, CKT_CALL_UNARY, (uint32_t)c->timeout_ms,
                         NULL)) != CKT_OK) {
    stream_free(&st);
    return cmd_exit_code(rv);
  }
  stream_wait(&st);
  if (st.cancelled) {
    code = cancel_outcome(&st);
  } else if (st.err != CKT_OK) {
    fprintf(stderr, "cli: the call failed before it could be cancelled: %s.\n",
            stream_why(&st));
    code = cmd_exit_code(st.err);
  } else {
    fprintf(stderr, "cli: the call finished before it could be cancelled.\n");
    code = CMD_EXIT_FAIL;
  }
  stream_free(&st);
  return code;
}

/* Checks that the flags make one job; exits with a usage error if not. */
static void check_modes(cli *c) {
  int modes =
      !!c->upload + !!c->download + !!c->bistream + !!c->oneways + !!c->pushes;
  char names[256];
  size_t len = 0;
  int k;
  if (modes > 1) {
    cmd_usage_error("cli", "give only one of -upload, -download, -bistream, "
                           "-oneway and -push.");
  }
  if (c->download && !c->out) {
    cmd_usage_error("cli", "-download needs -o FILE, where to write it.");
  }
  if (c->out && !c->download) {
    cmd_usage_error("cli", "-o goes with -download.");
  }
  if (c->as && !c->upload) {
    cmd_usage_error("cli", "-as goes with -upload.");
  }
  if (c->cancel_after && (c->oneways || c->pushes)) {
    cmd_usage_error("cli", "-cancel-after cancels a call, an upload, a "
                           "download or a bistream; not one-way messages "
                           "or pushes.");
  }
  if (c->args) {
    ckt_message *m = ckt_message_new();
    int rv = m ? set_args(c->args, m) : CKT_ERR_NOMEM;
    ckt_message_free(m);
    if (rv != CKT_OK) {
      cmd_usage_error("cli", "-arg wants KEY=VALUE[,KEY=VALUE...], not '%s'.",
                      c->args);
    }
  }
  if (c->compress && ckt_codec_parse(c->compress, &c->codec) != CKT_OK) {
    for (k = CKT_CODEC_NONE; k <= CKT_CODEC_MAX; ++k) {
      len += (size_t)snprintf(names + len, sizeof(names) - len, "%s%s",
                              k == CKT_CODEC_NONE  ? ""
                              : k == CKT_CODEC_MAX ? " or "
                                                   : ", ",
                              ckt_codec_name(k));
    }
    cmd_usage_error("cli", "unknown codec '%s': use %s.", c->compress, names);
  }
}

static int run(cli *c) {
  int rv;
  if ((rv = ckt_node_start(c->n)) != CKT_OK ||
      (rv = connect_first(c)) != CKT_OK) {
    return cmd_exit_code(rv);
  }
  if (c->upload) {
    return run_upload(c);
  }
  if (c->download) {
    return run_download(c);
  }
  if (c->bistream) {
    return run_bistream(c);
  }
  if (c->cancel_after) {
    return run_cancel(c);
  }
  if (c->oneways) {
    return cmd_exit_code(run_oneways(c));
  }
  if (c->pushes) {
    return cmd_exit_code(run_pushes(c));
  }
  return cmd_exit_code(run_calls(c));
}

int main(int argc, char **argv) {
  cli c;
  ckt_node_config cfg;
  cmd_flag flags[18 + CMD_NODE_NFLAGS];
  size_t nf = 0;
  int rv, code;

  cmd_tune_malloc();

  memset(&c, 0, sizeof(c));
  c.addr = "127.0.0.1:7100";
  c.service = "echo";
  c.total = 1;
  c.window = 1;
  c.size = 64;
  c.timeout_ms = CKT_DEFAULT_CALL_TIMEOUT_MS;
  flags[nf++] = (cmd_flag){"addr",
                           CMD_STRING,
                           &c.addr,
                           0,
                           0,
                           "HOST:PORT",
                           "server to call (default 127.0.0.1:7100)"};
  flags[nf++] = (cmd_flag){"n",
                           CMD_UINT,
                           &c.total,
                           1,
                           100000000ul,
                           "N",
                           "calls to make (default 1)"};
  flags[nf++] = (cmd_flag){"c",
                           CMD_UINT,
                           &c.window,
                           1,
                           100000ul,
                           "N",
                           "calls in flight at once (default 1)"};
  flags[nf++] = (cmd_flag){"size",
                           CMD_UINT,
                           &c.size,
                           0,
                           1024ul * 1024 * 1024,
                           "BYTES",
                           "payload of each call or bistream part (default "
                           "64)"};
  flags[nf++] = (cmd_flag){"service",
                           CMD_STRING,
                           &c.service,
                           0,
                           0,
                           "NAME",
                           "service to call (default echo)"};
  flags[nf++] = (cmd_flag){"arg",
                           CMD_STRING,
                           &c.args,
                           0,
                           0,
                           "K=V[,K=V]",
                           "arguments of each call (e.g. -service sleep -arg "
                           "ms=500)"};
  flags[nf++] = (cmd_flag){"timeout",
                           CMD_UINT,
                           &c.timeout_ms,
                           1,
                           3600000ul,
                           "MS",
                           "per-call deadline (default 10000; streaming "
                           "calls have none)"};
  flags[nf++] = (cmd_flag){"oneway",
                           CMD_UINT,
                           &c.oneways,
                           1,
                           100000000ul,
                           "N",
                           "send N one-way messages instead of calls"};
  flags[nf++] = (cmd_flag){"push",
                           CMD_UINT,
                           &c.pushes,
                           1,
                           1000000ul,
                           "N",
                           "ask the server to push N messages and wait"};
  flags[nf++] = (cmd_flag){"upload",
                           CMD_STRING,
                           &c.upload,
                           0,
                           0,
                           "FILE",
                           "stream FILE to the server's 'upload' service in "
                           "256 KiB parts\n(srv -dir) and check its "
                           "BLAKE2b"};
  flags[nf++] = (cmd_flag){"as",
                           CMD_STRING,
                           &c.as,
                           0,
                           0,
                           "NAME",
                           "the name of the upload on the server (default: "
                           "FILE's\nbase name)"};
  flags[nf++] = (cmd_flag){"download",
                           CMD_STRING,
                           &c.download,
                           0,
                           0,
                           "PATH",
                           "fetch PATH from the server's 'download' service "
                           "(srv -dir)"};
  flags[nf++] = (cmd_flag){"o",
                           CMD_STRING,
                           &c.out,
                           0,
                           0,
                           "FILE",
                           "where -download writes (replaced only once "
                           "complete and verified)"};
  flags[nf++] = (cmd_flag){"bistream",
                           CMD_UINT,
                           &c.bistream,
                           1,
                           100000000ul,
                           "N",
                           "send N parts of -size bytes through "
                           "'echo.stream' and check\nthey all come back in "
                           "order"};
  flags[nf++] = (cmd_flag){"cancel-after",
                           CMD_UINT,
                           &c.cancel_after,
                           1,
                           3600000ul,
                           "MS",
                           "make one call (or the upload, download, "
                           "bistream) and cancel it\nafter MS; exit 0 if it "
                           "ended cancelled"};
  flags[nf++] = (cmd_flag){"compress",
                           CMD_STRING,
                           &c.compress,
                           0,
                           0,
                           "CODEC",
                           "compress what this side sends: none (default), "
                           "zstd:fast,\nzstd:01, zstd:03, zstd:07, zstd:11"};
  flags[nf++] = (cmd_flag){"stats",
                           CMD_BOOL,
                           &c.stats,
                           0,
                           0,
                           NULL,
                           "at the end, print BYTES_SENT=N and "
                           "BYTES_RECEIVED=N (UDP payload)"};
  flags[nf++] =
      (cmd_flag){"q", CMD_BOOL, &c.quiet, 0, 0, NULL, "print only the summary"};
  nf +=
      cmd_node_flags(&c.node, "client identity (default: client)", flags + nf);
  {
    const cmd_spec spec = {
        "cli",
        "[options]",
        "Call a ckt server (see srv): N echo calls with C in flight, printing\n"
        "calls/s and latency percentiles; or one-way messages; or pushes; or\n"
        "a streaming call: -upload, -download, -bistream; -cancel-after MS\n"
        "cancels one call (e.g. -service sleep -arg ms=5000).",
        flags,
        nf,
        "\nExit status: 0 success, 1 failed calls, 2 usage, 3 authentication "
        "(TLS,\npassphrase), 4 network (unreachable, timeout), 5 files "
        "(missing or\nunreadable identity, unreadable upload, unwritable "
        "download).\n"};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("cli", "unexpected argument '%s'.", argv[first]);
    }
  }
  check_modes(&c);
  if (sodium_init() < 0) {
    fprintf(stderr, "cli: libsodium failed to start.\n");
    return 1;
  }
  pthread_mutex_init(&c.mu, NULL);
  pthread_cond_init(&c.cv, NULL);
  c.payload = malloc(c.size ? c.size : 1);
  if (!c.payload) {
    fprintf(stderr, "cli: out of memory.\n");
    return 1;
  }
  for (size_t i = 0; i < c.size; ++i) {
    c.payload[i] = (uint8_t)(i * 131 + 7);
  }
  ckt_node_config_init(&cfg);
  cmd_node_config(&c.node, "cli", &cfg);
  cfg.client_name = c.node.identity;
  cfg.call_timeout_ms = (uint32_t)c.timeout_ms;
  cfg.listen = "0.0.0.0:0";
  cfg.codec = c.codec;
  rv = ckt_node_new(&cfg, &c.n);
  if (rv != CKT_OK) {
    fprintf(stderr, "cli: cannot start: %s.\n", ckt_strerror(rv));
    free(c.payload);
    return cmd_exit_code(rv);
  }
  if (c.pushes) {
    ckt_node_register_oneway(c.n, "push", on_push, &c);
  }
  code = run(&c);
  if (c.stats) {
    ckt_node_stats ns;
    ckt_node_get_stats(c.n, &ns);
    printf("BYTES_SENT=%" PRIu64 "\nBYTES_RECEIVED=%" PRIu64 "\n",
           ns.bytes_sent, ns.bytes_received);
  }
  ckt_node_free(c.n);
  free(c.lat);
  free(c.payload);
  return code;
}
