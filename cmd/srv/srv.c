/*
 * srv — a ckt server: echo, one-way and push services on one UDP port, a
 * cancellable slow service, a streaming echo and, with -dir, file upload
 * and download confined to one directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ckt/ckt.h"
#include "cmdline.h"

/* Payload of each part of a download. */
#define PART_SIZE (256u * 1024)
/* The longest the sleep service sleeps. */
#define SLEEP_MAX_MS 3600000ul

typedef struct served served;

typedef struct srv {
  const char *addr, *dir;
  int quiet, retry;
  cmd_node_opts node;
  unsigned long oneways;
  int dirfd; /* -dir, or -1 */
  /* Upload and bistream calls in progress (loop thread only): a parts
   * handler learns its call's state from the handle. */
  served *calls;
  /* Sleep calls in progress, each on its own thread. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned long sleepers;
  int stopping;
} srv;

/* The state of one upload or bistream call, found by its handle. */
struct served {
  served *next;
  ckt_srvcall *sc;
};

static void say(const srv *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(const srv *s, const char *fmt, ...) {
  va_list ap;
  if (s->quiet) {
    return;
  }
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fflush(stdout);
}

static served *served_find(srv *s, const ckt_srvcall *sc) {
  served *c;
  for (c = s->calls; c; c = c->next) {
    if (c->sc == sc) {
      return c;
    }
  }
  return NULL;
}

static void served_add(srv *s, served *c, ckt_srvcall *sc) {
  c->sc = sc;
  c->next = s->calls;
  s->calls = c;
}

static void served_remove(srv *s, served *c) {
  served **p;
  for (p = &s->calls; *p; p = &(*p)->next) {
    if (*p == c) {
      *p = c->next;
      return;
    }
  }
}

/* A reply that is an error sentence (the caller gets CKT_ERR_REMOTE), or
 * NULL when out of memory. */
static ckt_message *err_msg(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static ckt_message *err_msg(const char *fmt, ...) {
  char why[512];
  ckt_message *m = ckt_message_new();
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  if (m && ckt_message_set_err(m, why) != CKT_OK) {
    ckt_message_set_err(m, "the server failed");
  }
  return m;
}

#define reply_err(sc, ...) ckt_srvcall_reply((sc), err_msg(__VA_ARGS__))

/* Replies with args bytes and blake2b (hex of the 32-byte BLAKE2b). */
static void reply_digest(ckt_srvcall *sc, uint64_t bytes,
                         crypto_generichash_state *h) {
  unsigned char sum[32];
  char hex[65], nb[32];
  ckt_message *m = ckt_message_new();
  crypto_generichash_final(h, sum, sizeof(sum));
  sodium_bin2hex(hex, sizeof(hex), sum, sizeof(sum));
  snprintf(nb, sizeof(nb), "%" PRIu64, bytes);
  if (!m || ckt_message_set_arg(m, "bytes", nb) != CKT_OK ||
      ckt_message_set_arg(m, "blake2b", hex) != CKT_OK) {
    ckt_message_free(m);
    reply_err(sc, "out of memory");
    return;
  }
  ckt_srvcall_reply(sc, m);
}

/* ---- the simple services ------------------------------------------------ */

/* echo: the reply carries the request's payload, args and subject. */
static int echo(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  size_t i;
  (void)n, (void)user;
  if (ckt_message_set_payload(reply, req->payload, req->payload_len) !=
          CKT_OK ||
      ckt_message_set_subject(reply, req->subject) != CKT_OK) {
    ckt_message_set_err(reply, "out of memory");
    return -1;
  }
  for (i = 0; i < req->nargs; ++i) {
    ckt_message_set_arg(reply, req->args[i].key, req->args[i].value);
  }
  return 0;
}

static void oneway(ckt_node *n, const ckt_message *msg, void *user) {
  srv *s = user;
  (void)n;
  s->oneways++;
  say(s, "srv: one-way message %lu from %s (%zu bytes, subject '%s')\n",
      s->oneways, msg->from, msg->payload_len, msg->subject);
}

/* push: answers at once, then pushes args["count"] messages (the request's
 * payload each) to the caller over the caller's own connection. */
static int push(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  const char *count = ckt_message_get_arg(req, "count");
  unsigned long i, k = count ? strtoul(count, NULL, 10) : 1;
  srv *s = user;
  if (k > 1000000) {
    ckt_message_set_err(reply, "count must be at most 1000000");
    return -1;
  }
  for (i = 0; i < k; ++i) {
    ckt_message *m = ckt_message_new();
    char seq[32];
    if (!m) {
      break;
    }
    snprintf(seq, sizeof(seq), "%lu", i);
    ckt_message_set_service(m, "push");
    ckt_message_set_arg(m, "seq", seq);
    ckt_message_set_payload(m, req->payload, req->payload_len);
    if (ckt_node_push(n, req->from, m) != CKT_OK) {
      break;
    }
  }
  say(s, "srv: pushed %lu messages to %s\n", i, req->from);
  return 0;
}

/* ---- sleep: an asynchronous handler on its own thread ---------------------
 */

typedef struct sleeper {
  srv *s;
  ckt_srvcall *sc;
  unsigned long ms;
} sleeper;

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int stopping(srv *s) {
  int v;
  pthread_mutex_lock(&s->mu);
  v = s->stopping;
  pthread_mutex_unlock(&s->mu);
  return v;
}

/* Sleeps in 10 ms steps, so that a cancellation, the deadline or a
 * stopping server ends the wait at once. */
static void *sleep_thread(void *arg) {
  sleeper *z = arg;
  srv *s = z->s;
  uint64_t until = mono_ms() + z->ms;
  int why = 0;
  for (;;) {
    uint64_t now = mono_ms();
    struct timespec step = {0, 10 * 1000000L};
    if ((why = ckt_srvcall_cancelled(z->sc)) != 0 || now >= until ||
        stopping(s)) {
      break;
    }
    if (until - now < 10) {
      step.tv_nsec = (long)(until - now) * 1000000L;
    }
    nanosleep(&step, NULL);
  }
  if (why) {
    say(s, "srv: call %" PRIu64 " cancelled (%s)\n", ckt_srvcall_id(z->sc),
        ckt_strerror(why));
    ckt_srvcall_reply(z->sc, NULL);
  } else if (stopping(s)) {
    reply_err(z->sc, "the server is stopping");
  } else {
    ckt_message *m = ckt_message_new();
    char ms[32];
    snprintf(ms, sizeof(ms), "%lu", z->ms);
    if (m) {
      ckt_message_set_arg(m, "slept_ms", ms);
    }
    ckt_srvcall_reply(z->sc, m);
  }
  free(z);
  pthread_mutex_lock(&s->mu);
  s->sleepers--;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* sleep: replies after args["ms"] milliseconds (default 1000). */
static void sleep_serve(ckt_srvcall *sc, const ckt_message *req, void *user) {
  const char *arg = ckt_message_get_arg(req, "ms");
  srv *s = user;
  unsigned long ms = 1000;
  sleeper *z;
  pthread_t t;
  pthread_attr_t attr;
  int rv;
  if (arg) {
    char *end;
    errno = 0;
    ms = strtoul(arg, &end, 10);
    if (!*arg || *end || errno || ms > SLEEP_MAX_MS) {
      reply_err(sc, "args[ms] must be a whole number of milliseconds up to %lu",
                SLEEP_MAX_MS);
      return;
    }
  }
  if (!(z = malloc(sizeof(*z)))) {
    reply_err(sc, "out of memory");
    return;
  }
  *z = (sleeper){s, sc, ms};
  pthread_mutex_lock(&s->mu);
  s->sleepers++;
  pthread_mutex_unlock(&s->mu);
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  rv = pthread_create(&t, &attr, sleep_thread, z);
  pthread_attr_destroy(&attr);
  if (rv != 0) {
    pthread_mutex_lock(&s->mu);
    s->sleepers--;
    pthread_mutex_unlock(&s->mu);
    free(z);
    reply_err(sc, "cannot start a thread: %s", strerror(rv));
  }
}

/* ---- echo.stream: a bistream that sends every part back --------------------
 */

typedef struct queued {
  struct queued *next;
  ckt_message *m;
  int last;
} queued;

typedef struct stream_call {
  served base;
  srv *s;
  queued *head, *tail;
  unsigned long parts;
  int paused;
} stream_call;

static void stream_end(stream_call *st, ckt_message *reply) {
  queued *q;
  while ((q = st->head) != NULL) {
    st->head = q->next;
    ckt_message_free(q->m);
    free(q);
  }
  served_remove(st->s, &st->base);
  ckt_srvcall_reply(st->base.sc, reply);
  free(st);
}

/* The final reply: how many parts came (and went back). */
static void stream_finish(stream_call *st) {
  ckt_message *m = ckt_message_new();
  char count[32];
  snprintf(count, sizeof(count), "%lu", st->parts);
  if (m) {
    ckt_message_set_arg(m, "parts", count);
  }
  stream_end(st, m);
}

/* Sends the queued parts until the queue is empty or full; reading the
 * caller's parts pauses while any wait.  After the last part, replies.
 * Returns -1 when the call has ended (st is gone). */
static int stream_pump(stream_call *st) {
  ckt_srvcall *sc = st->base.sc;
  queued *q;
  while ((q = st->head) != NULL) {
    int rv = ckt_srvcall_send(sc, q->m, q->last), last = q->last;
    if (rv == CKT_ERR_AGAIN) {
      if (!st->paused) {
        ckt_srvcall_pause(sc, 1);
        st->paused = 1;
      }
      return 0;
    }
    st->head = q->next;
    if (!st->head) {
      st->tail = NULL;
    }
    free(q); /* the message was taken */
    if (rv == CKT_ERR_CANCELED) {
      stream_end(st, NULL);
      return -1;
    }
    if (rv != CKT_OK) {
      stream_end(st, err_msg("cannot send a part back: %s", ckt_strerror(rv)));
      return -1;
    }
    if (last) {
      stream_finish(st);
      return -1;
    }
  }
  if (st->paused) {
    ckt_srvcall_pause(sc, 0);
    st->paused = 0;
  }
  return 0;
}

static void stream_writable(ckt_srvcall *sc, void *user) {
  (void)sc;
  stream_pump(user);
}

static void stream_cancelled(ckt_srvcall *sc, int why, void *user) {
  stream_call *st = user;
  say(st->s, "srv: stream call %" PRIu64 " cancelled (%s)\n",
      ckt_srvcall_id(sc), ckt_strerror(why));
  stream_end(st, NULL);
}

/* The copy of a part that goes back: its payload, args and subject. */
static ckt_message *stream_copy(const ckt_message *part) {
  ckt_message *m = ckt_message_new();
  size_t i;
  if (!m || ckt_message_set_payload(m, part->payload, part->payload_len) ||
      ckt_message_set_subject(m, part->subject)) {
    ckt_message_free(m);
    return NULL;
  }
  for (i = 0; i < part->nargs; ++i) {
    if (ckt_message_set_arg(m, part->args[i].key, part->args[i].value)) {
      ckt_message_free(m);
      return NULL;
    }
  }
  return m;
}

static void stream_part(ckt_srvcall *sc, const ckt_message *part, int last,
                        void *user) {
  srv *s = user;
  stream_call *st = (stream_call *)served_find(s, sc);
  queued *q;
  if (!st) { /* the request, part 0: not echoed */
    if (ckt_srvcall_cancelled(sc)) {
      ckt_srvcall_reply(sc, NULL);
      return;
    }
    if (!(st = calloc(1, sizeof(*st)))) {
      reply_err(sc, "out of memory");
      return;
    }
    st->s = s;
    served_add(s, &st->base, sc);
    ckt_srvcall_on_cancel(sc, stream_cancelled, st);
    ckt_srvcall_on_writable(sc, stream_writable, st);
    return;
  }
  st->parts++;
  q = malloc(sizeof(*q));
  if (!q || !(q->m = stream_copy(part))) {
    free(q);
    stream_end(st, err_msg("out of memory"));
    return;
  }
  q->last = last;
  q->next = NULL;
  if (st->tail) {
    st->tail->next = q;
  } else {
    st->head = q;
  }
  st->tail = q;
  stream_pump(st);
}

/* ---- paths confined to -dir ------------------------------------------------
 */

/* Opens the directory that holds `rel`, a relative path inside root, one
 * component at a time without following symlinks; copies the last
 * component to leaf.  Returns the directory's descriptor, or -1 with a
 * sentence in why. */
static int open_parent(int root, const char *rel, char *leaf, size_t leafsz,
                       char *why, size_t whysz) {
  char buf[PATH_MAX], *p, *slash;
  int fd;
  if (!rel || !*rel) {
    snprintf(why, whysz, "refused an empty path");
    return -1;
  }
  if (rel[0] == '/') {
    snprintf(why, whysz, "refused '%s': absolute paths are not allowed", rel);
    return -1;
  }
  if (strlen(rel) >= sizeof(buf)) {
    snprintf(why, whysz, "refused a path of %zu bytes: too long", strlen(rel));
    return -1;
  }
  memcpy(buf, rel, strlen(rel) + 1);
  for (p = buf; p; p = slash ? slash + 1 : NULL) {
    slash = strchr(p, '/');
    if ((slash ? (size_t)(slash - p) : strlen(p)) == 2 && p[0] == '.' &&
        p[1] == '.') {
      snprintf(why, whysz, "refused '%s': '..' is not allowed in a path", rel);
      return -1;
    }
  }
  if (rel[strlen(rel) - 1] == '/') {
    snprintf(why, whysz, "refused '%s': not a file name", rel);
    return -1;
  }
  if ((fd = fcntl(root, F_DUPFD_CLOEXEC, 0)) < 0) {
    snprintf(why, whysz, "cannot open the directory: %s", strerror(errno));
    return -1;
  }
  for (p = buf; (slash = strchr(p, '/')) != NULL; p = slash + 1) {
    struct stat st;
    int next;
    *slash = 0;
    if (!*p || strcmp(p, ".") == 0) {
      continue;
    }
    next = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) {
      int e = errno;
      if (fstatat(fd, p, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          S_ISLNK(st.st_mode)) {
        snprintf(why, whysz, "refused '%s': it goes through a symlink", rel);
      } else if (e == ENOENT) {
        snprintf(why, whysz, "no such directory: %s", rel);
      } else {
        snprintf(why, whysz, "cannot open the directory of %s: %s", rel,
                 strerror(e));
      }
      close(fd);
      return -1;
    }
    close(fd);
    fd = next;
  }
  if (!*p || strcmp(p, ".") == 0 || strlen(p) >= leafsz) {
    snprintf(why, whysz, "refused '%s': not a file name", rel);
    close(fd);
    return -1;
  }
  memcpy(leaf, p, strlen(p) + 1);
  return fd;
}

/* ---- upload: parts appended to a temporary file, renamed at the end -------
 */

typedef struct upload_call {
  served base;
  srv *s;
  int dirfd, fd;
  uint64_t bytes;
  crypto_generichash_state h;
  char name[PATH_MAX]; /* as the caller gave it */
  char leaf[NAME_MAX + 1], tmp[NAME_MAX + 1];
} upload_call;

/* Ends the upload: the temporary file goes unless it was renamed. */
static void upload_end(upload_call *u, int keep) {
  if (u->fd >= 0) {
    close(u->fd);
  }
  if (!keep && u->tmp[0]) {
    unlinkat(u->dirfd, u->tmp, 0);
  }
  close(u->dirfd);
  served_remove(u->s, &u->base);
  free(u);
}

static void upload_cancelled(ckt_srvcall *sc, int why, void *user) {
  upload_call *u = user;
  say(u->s, "srv: upload of %s cancelled (%s)\n", u->name, ckt_strerror(why));
  upload_end(u, 0);
  ckt_srvcall_reply(sc, NULL);
}

/* Makes .LEAF.XXXXXX beside the destination, never an existing file. */
static int upload_open_temp(upload_call *u) {
  static const char digits[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  int tries;
  for (tries = 0; tries < 100; ++tries) {
    unsigned char r[6];
    char suffix[7];
    size_t i;
    randombytes_buf(r, sizeof(r));
    for (i = 0; i < sizeof(r); ++i) {
      suffix[i] = digits[r[i] % (sizeof(digits) - 1)];
    }
    suffix[6] = 0;
    /* NAME_MAX - 8 keeps the dot, the second dot and the suffix in. */
    snprintf(u->tmp, sizeof(u->tmp), ".%.*s.%s", NAME_MAX - 8, u->leaf, suffix);
    u->fd = openat(u->dirfd, u->tmp,
                   O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (u->fd >= 0 || errno != EEXIST) {
      break;
    }
  }
  if (u->fd < 0) {
    u->tmp[0] = 0;
    return -1;
  }
  return 0;
}

/* The request: checks the name and makes the temporary file.  Returns
 * the new state, or NULL once it has replied. */
static upload_call *upload_begin(srv *s, ckt_srvcall *sc,
                                 const ckt_message *req) {
  const char *name = ckt_message_get_arg(req, "name");
  char why[PATH_MAX + 128];
  upload_call *u;
  if (ckt_srvcall_cancelled(sc)) {
    ckt_srvcall_reply(sc, NULL);
    return NULL;
  }
  if (!(u = calloc(1, sizeof(*u)))) {
    reply_err(sc, "out of memory");
    return NULL;
  }
  u->s = s;
  u->fd = -1;
  snprintf(u->name, sizeof(u->name), "%s", name ? name : "");
  u->dirfd =
      open_parent(s->dirfd, name, u->leaf, sizeof(u->leaf), why, sizeof(why));
  if (u->dirfd < 0) {
    say(s, "srv: upload %s\n", why);
    reply_err(sc, "%s", why);
    free(u);
    return NULL;
  }
  if (upload_open_temp(u) != 0) {
    reply_err(sc, "cannot create a file beside %s: %s", u->name,
              strerror(errno));
    close(u->dirfd);
    free(u);
    return NULL;
  }
  crypto_generichash_init(&u->h, NULL, 0, 32);
  served_add(s, &u->base, sc);
  ckt_srvcall_on_cancel(sc, upload_cancelled, u);
  return u;
}

/* After the last part: the file is flushed to disk, then renamed over the
 * destination, so that it is always the old or the new file. */
static void upload_finish(upload_call *u) {
  ckt_srvcall *sc = u->base.sc;
  int e;
  if (fsync(u->fd) != 0 || close(u->fd) != 0) {
    e = errno;
    u->fd = -1;
    reply_err(sc, "cannot write %s: %s", u->name, strerror(e));
    upload_end(u, 0);
    return;
  }
  u->fd = -1;
  if (renameat(u->dirfd, u->tmp, u->dirfd, u->leaf) != 0) {
    e = errno;
    reply_err(sc, "cannot replace %s: %s", u->name, strerror(e));
    upload_end(u, 0);
    return;
  }
  fsync(u->dirfd);
  say(u->s, "srv: received %s (%" PRIu64 " bytes) from %s\n", u->name, u->bytes,
      ckt_srvcall_peer(sc));
  reply_digest(sc, u->bytes, &u->h);
  upload_end(u, 1);
}

static void upload_part(ckt_srvcall *sc, const ckt_message *part, int last,
                        void *user) {
  srv *s = user;
  upload_call *u = (upload_call *)served_find(s, sc);
  if (!u && !(u = upload_begin(s, sc, part))) {
    return;
  }
  if (part->payload_len > 0) {
    if (cmd_write_all(u->fd, part->payload, part->payload_len) != 0) {
      reply_err(sc, "cannot write %s: %s", u->name, strerror(errno));
      upload_end(u, 0);
      return;
    }
    crypto_generichash_update(&u->h, part->payload, part->payload_len);
    u->bytes += part->payload_len;
  }
  if (last) {
    upload_finish(u);
  }
}

/* ---- download: the file streamed in parts, as fast as the caller reads ----
 */

typedef struct download_call {
  srv *s;
  ckt_srvcall *sc;
  int fd;
  uint64_t size, sent;
  crypto_generichash_state h;
  ckt_message *pending; /* refused with CKT_ERR_AGAIN: sent again */
  int pending_last;
  char path[PATH_MAX];
} download_call;

static void download_end(download_call *d) {
  ckt_message_free(d->pending);
  close(d->fd);
  free(d);
}

/* The next part, read from the file.  Returns NULL once it has replied. */
static ckt_message *download_read(download_call *d) {
  uint64_t left = d->size - d->sent;
  size_t want = left < PART_SIZE ? (size_t)left : PART_SIZE, got = 0;
  uint8_t *buf = want ? malloc(want) : NULL;
  ckt_message *m;
  if (want && !buf) {
    reply_err(d->sc, "out of memory");
    return NULL;
  }
  while (got < want) {
    ssize_t k = read(d->fd, buf + got, want - got);
    if (k < 0 && errno == EINTR) {
      continue;
    }
    if (k <= 0) {
      if (k < 0) {
        reply_err(d->sc, "cannot read %s: %s", d->path, strerror(errno));
      } else {
        reply_err(d->sc, "%s shrank while being sent", d->path);
      }
      free(buf);
      return NULL;
    }
    got += (size_t)k;
  }
  if (!(m = ckt_message_new())) {
    free(buf);
    reply_err(d->sc, "out of memory");
    return NULL;
  }
  m->payload = buf; /* the message owns it now */
  m->payload_len = want;
  crypto_generichash_update(&d->h, buf, want);
  d->sent += want;
  d->pending_last = d->sent == d->size;
  return m;
}

/* Sends parts until the caller's stream is full (then waits for room) or
 * the file has gone. */
static void download_pump(download_call *d) {
  for (;;) {
    int rv, last;
    if (!d->pending && !(d->pending = download_read(d))) {
      download_end(d);
      return;
    }
    last = d->pending_last;
    rv = ckt_srvcall_send(d->sc, d->pending, last);
    if (rv == CKT_ERR_AGAIN) {
      return; /* download_writable() goes on */
    }
    d->pending = NULL; /* taken */
    if (rv == CKT_ERR_CANCELED) {
      ckt_srvcall_reply(d->sc, NULL);
      download_end(d);
      return;
    }
    if (rv != CKT_OK) {
      reply_err(d->sc, "cannot send %s: %s", d->path, ckt_strerror(rv));
      download_end(d);
      return;
    }
    if (last) {
      say(d->s, "srv: sent %s (%" PRIu64 " bytes) to %s\n", d->path, d->sent,
          ckt_srvcall_peer(d->sc));
      reply_digest(d->sc, d->sent, &d->h);
      download_end(d);
      return;
    }
  }
}

static void download_writable(ckt_srvcall *sc, void *user) {
  (void)sc;
  download_pump(user);
}

static void download_cancelled(ckt_srvcall *sc, int why, void *user) {
  download_call *d = user;
  say(d->s, "srv: download of %s cancelled (%s)\n", d->path, ckt_strerror(why));
  ckt_srvcall_reply(sc, NULL);
  download_end(d);
}

static void download_serve(ckt_srvcall *sc, const ckt_message *req,
                           void *user) {
  const char *path = ckt_message_get_arg(req, "path");
  char why[PATH_MAX + 128], leaf[NAME_MAX + 1];
  srv *s = user;
  download_call *d;
  struct stat st;
  int dirfd, fd;
  if (ckt_srvcall_cancelled(sc)) {
    ckt_srvcall_reply(sc, NULL);
    return;
  }
  dirfd = open_parent(s->dirfd, path, leaf, sizeof(leaf), why, sizeof(why));
  if (dirfd < 0) {
    say(s, "srv: download %s\n", why);
    reply_err(sc, "%s", why);
    return;
  }
  /* O_NONBLOCK: a FIFO must not hold the loop (it is refused below). */
  fd = openat(dirfd, leaf, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT) {
      reply_err(sc, "no such file: %s", path);
    } else if (e == ELOOP) {
      say(s, "srv: download refused '%s': it is a symlink\n", path);
      reply_err(sc, "refused '%s': it is a symlink", path);
    } else {
      reply_err(sc, "cannot open %s: %s", path, strerror(e));
    }
    close(dirfd);
    return;
  }
  close(dirfd);
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    reply_err(sc, "refused '%s': not a regular file", path);
    close(fd);
    return;
  }
  if (!(d = calloc(1, sizeof(*d)))) {
    reply_err(sc, "out of memory");
    close(fd);
    return;
  }
  d->s = s;
  d->sc = sc;
  d->fd = fd;
  d->size = (uint64_t)st.st_size;
  snprintf(d->path, sizeof(d->path), "%s", path);
  crypto_generichash_init(&d->h, NULL, 0, 32);
  ckt_srvcall_on_cancel(sc, download_cancelled, d);
  ckt_srvcall_on_writable(sc, download_writable, d);
  download_pump(d);
}

/* ---- main -----------------------------------------------------------------
 */

static int register_services(srv *s, ckt_node *n) {
  if (ckt_node_register_call(n, "echo", echo, s) != CKT_OK ||
      ckt_node_register_oneway(n, "oneway", oneway, s) != CKT_OK ||
      ckt_node_register_call(n, "push", push, s) != CKT_OK ||
      ckt_node_register_async(n, "sleep", sleep_serve, s) != CKT_OK ||
      ckt_node_register_bistream(n, "echo.stream", stream_part, s) != CKT_OK) {
    return -1;
  }
  if (s->dirfd >= 0 &&
      (ckt_node_register_upload(n, "upload", upload_part, s) != CKT_OK ||
       ckt_node_register_download(n, "download", download_serve, s) !=
           CKT_OK)) {
    return -1;
  }
  return 0;
}

/* Lets the sleep threads answer (each notices within 10 ms) before the
 * node goes. */
static void stop_sleepers(srv *s) {
  pthread_mutex_lock(&s->mu);
  s->stopping = 1;
  while (s->sleepers > 0) {
    pthread_cond_wait(&s->cv, &s->mu);
  }
  pthread_mutex_unlock(&s->mu);
}

int main(int argc, char **argv) {
  srv s;
  ckt_node_config cfg;
  ckt_node *n;
  cmd_flag flags[5 + CMD_NODE_NFLAGS];
  size_t nf = 0;
  char addr[80];
  int rv;

  cmd_tune_malloc();

  memset(&s, 0, sizeof(s));
  s.addr = "0.0.0.0:7100";
  s.dirfd = -1;
  flags[nf++] = (cmd_flag){"addr",
                           CMD_STRING,
                           &s.addr,
                           0,
                           0,
                           "HOST:PORT",
                           "listen here (default 0.0.0.0:7100)"};
  flags[nf++] = (cmd_flag){"dir",
                           CMD_STRING,
                           &s.dir,
                           0,
                           0,
                           "DIR",
                           "serve 'upload' and 'download' of files inside DIR\n"
                           "(no '..', absolute paths or symlinks)"};
  flags[nf++] = (cmd_flag){"retry",
                           CMD_BOOL,
                           &s.retry,
                           0,
                           0,
                           NULL,
                           "validate client addresses with a Retry"};
  flags[nf++] = (cmd_flag){
      "q", CMD_BOOL, &s.quiet, 0, 0, NULL, "print nothing per message"};
  nf += cmd_node_flags(&s.node, "server identity (default: node)", flags + nf);
  {
    const cmd_spec spec = {
        "srv",
        "[options]",
        "Serve ckt's example services on one UDP port:\n"
        "  echo         two-way: replies with the request\n"
        "  oneway       counts one-way messages\n"
        "  push         replies, then pushes args[count] messages to the "
        "caller\n"
        "  sleep        replies after args[ms] milliseconds (default 1000);\n"
        "               says so when the caller cancels or the deadline "
        "passes\n"
        "  echo.stream  bistream: sends every part back, then replies with\n"
        "               args[parts], the number of parts\n"
        "  upload       (with -dir) stores the parts of an upload as "
        "args[name],\n"
        "               renamed into place once complete; replies with args\n"
        "               bytes and blake2b (hex BLAKE2b-256 of the file)\n"
        "  download     (with -dir) streams the file args[path] in 256 KiB\n"
        "               parts, then replies with args bytes and blake2b",
        flags,
        nf,
        NULL};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("srv", "unexpected argument '%s'.", argv[first]);
    }
  }
  if (sodium_init() < 0) {
    fprintf(stderr, "srv: libsodium failed to start.\n");
    return 1;
  }
  if (s.dir &&
      (s.dirfd = open(s.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
    fprintf(stderr, "srv: cannot open the directory %s: %s.\n", s.dir,
            strerror(errno));
    return CMD_EXIT_IO;
  }
  pthread_mutex_init(&s.mu, NULL);
  pthread_cond_init(&s.cv, NULL);
  ckt_node_config_init(&cfg);
  cmd_node_config(&s.node, "srv", &cfg);
  cfg.listen = s.addr;
  cfg.serve = 1;
  cfg.retry = s.retry;
  cfg.server_name = s.node.identity;
  rv = ckt_node_new(&cfg, &n);
  if (rv != CKT_OK) {
    fprintf(stderr, "srv: cannot start: %s.\n", ckt_strerror(rv));
    return cmd_exit_code(rv);
  }
  if (register_services(&s, n) != 0) {
    fprintf(stderr, "srv: out of memory.\n");
    ckt_node_free(n);
    return 1;
  }
  cmd_block_signals();
  if ((rv = ckt_node_start(n)) != CKT_OK) {
    fprintf(stderr, "srv: cannot start the loop: %s.\n", ckt_strerror(rv));
    ckt_node_free(n);
    return 1;
  }
  ckt_node_address(n, addr, sizeof(addr));
  printf("srv: listening on %s (%s)\n", addr,
         s.node.aes ? "TLS_AES_128_GCM_SHA256"
                    : "TLS_CHACHA20_POLY1305_SHA256");
  fflush(stdout);
  cmd_wait_signal(0);
  printf("srv: stopping\n");
  fflush(stdout);
  stop_sleepers(&s);
  ckt_node_free(n); /* uploads in progress are cancelled: temp files go */
  if (s.dirfd >= 0) {
    close(s.dirfd);
  }
  return 0;
}
