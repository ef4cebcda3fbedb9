/*
 * cktbench — ckt's side of the transport benchmarks (bench/transport).
 *
 *   cktbench -serve -addr 127.0.0.1:7400 [-aes] [-max-circuits N]
 *   cktbench -to 127.0.0.1:7400 -mode bulk -bytes 1073741824 [-circuits N]
 *   cktbench -to 127.0.0.1:7400 -mode calls -n 200000 -inflight 64
 *   cktbench -to 127.0.0.1:7400 -mode calls -n 20000 -inflight 1
 *   cktbench -to 127.0.0.1:7400 -mode connect -n 200
 *
 * The server runs the peer service "sink" (counts the bytes of every
 * fragment it gets, on any number of circuits, and answers "done" once it
 * has all a client announced), the call "echo" (the request's payload
 * back) and the call "bench.stat" (its heap in use and open circuits,
 * for memory per circuit; arg reset=1 zeroes the byte count).
 *
 * Client modes print one line each, for bench/transport to parse:
 *   bulk:    bytes over K circuits (fragments round-robin), timed from the
 *            first send to the server's "done"; heap memory per idle
 *            circuit on both ends is measured before any data moves.
 *   calls:   N calls of SIZE bytes each way, INFLIGHT at a time, on one
 *            connection: calls/s and round-trip percentiles.
 *   connect: N times a new node dials (full mutual-auth handshake) and
 *            makes one call; the time from the call to its reply.
 * Only the public API is used.
 */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ckt/ckt.h"
#include "cmdline.h"

enum { MODE_BULK, MODE_CALLS, MODE_CONNECT };

typedef struct call_slot {
  struct bench *b;
  uint64_t t0;
} call_slot;

typedef struct bench {
  /* flags */
  const char *addr, *to, *mode_name;
  int serve, mode;
  unsigned long n, inflight, size, frag, circuits, max_circuits, warmup;
  unsigned long long bytes;
  cmd_node_opts node;
  ckt_node_config cfg;
  ckt_node *nd;
  /* server: the sink's count, on the loop thread */
  unsigned long long got, expect;
  ckt_circuit *done_circ;
  long open_circuits;
  /* client, bulk */
  ckt_peer *peer;
  ckt_circuit **circ;
  char remote_url[CKT_PEER_URL_MAX];
  unsigned long long sent;
  unsigned long next, closed_seen;
  uint8_t *buf;
  int sending;
  /* client, calls */
  call_slot *slots;
  unsigned long issued, answered, failed;
  uint64_t *lat;
  unsigned long nlat;
  int recording;
  /* both */
  uint64_t t0, t1;
  int err;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
} bench;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Heap bytes in use, every arena (what per-circuit state costs). */
static unsigned long long heap_bytes(void) {
  struct mallinfo2 mi = mallinfo2();
  return (unsigned long long)mi.uordblks + (unsigned long long)mi.hblkhd;
}

static unsigned long long rss_bytes(void) {
  unsigned long long size = 0, res = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f) {
    if (fscanf(f, "%llu %llu", &size, &res) != 2) {
      res = 0;
    }
    fclose(f);
  }
  return res * (unsigned long long)sysconf(_SC_PAGESIZE);
}

static void finish(bench *b, int err) {
  pthread_mutex_lock(&b->mu);
  if (!b->err) {
    b->err = err;
  }
  b->done = 1;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

/* Waits for finish() at most `seconds`; returns the error it was given,
 * or CKT_ERR_TIMEOUT. */
static int wait_done(bench *b, int seconds) {
  struct timespec until;
  int err;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += seconds;
  pthread_mutex_lock(&b->mu);
  while (!b->done && pthread_cond_timedwait(&b->cv, &b->mu, &until) == 0) {
  }
  err = b->done ? b->err : CKT_ERR_TIMEOUT;
  b->done = 0;
  b->err = 0;
  pthread_mutex_unlock(&b->mu);
  return err;
}

/* ---- the sink service: the same code on both ends ------------------------ */

static void sink_check(bench *b) {
  if (b->done_circ && b->got >= b->expect) {
    ckt_fragment *f = ckt_fragment_new();
    char v[32];
    snprintf(v, sizeof(v), "%llu", b->got);
    if (f && ckt_fragment_set_subject(f, "done") == CKT_OK &&
        ckt_fragment_set_arg(f, "bytes", v) == CKT_OK) {
      (void)ckt_circuit_send(b->done_circ, f);
    } else {
      ckt_fragment_free(f);
    }
    b->done_circ = NULL;
    b->expect = 0;
  }
}

static int sink_new(ckt_peer *p, ckt_circuit *c, const ckt_fragment *open,
                    void *user) {
  bench *b = user;
  (void)p, (void)c, (void)open;
  b->open_circuits++;
  return 0;
}

static void sink_fragment(ckt_peer *p, ckt_circuit *c, const ckt_fragment *f,
                          void *user) {
  bench *b = user;
  (void)p;
  if (b->serve) {
    b->got += f->payload_len;
    if (f->subject && strcmp(f->subject, "done") == 0) {
      const char *v = ckt_fragment_get_arg(f, "bytes");
      b->expect = v ? strtoull(v, NULL, 10) : 0;
      b->done_circ = c;
    }
    sink_check(b);
  } else if (f->subject && strcmp(f->subject, "done") == 0) {
    const char *v = ckt_fragment_get_arg(f, "bytes");
    b->t1 = mono_ns();
    finish(b, v && strtoull(v, NULL, 10) == b->bytes ? CKT_OK : CKT_ERR_FORMAT);
  }
}

static void sink_closed(ckt_peer *p, ckt_circuit *c, const char *reason,
                        int remote, void *user) {
  bench *b = user;
  (void)p;
  if (b->serve) {
    b->open_circuits--;
    if (b->done_circ == c) {
      b->done_circ = NULL;
    }
  } else if ((remote || b->sending) && !b->closed_seen++) {
    fprintf(stderr, "cktbench: circuit closed: %s\n", reason);
    finish(b, CKT_ERR_CLOSED);
  }
}

static void send_more(bench *b);

static void sink_writable(ckt_peer *p, ckt_circuit *c, void *user) {
  (void)p, (void)c;
  send_more(user);
}

static const ckt_peer_service sink_service = {
    .circuit_new = sink_new,
    .fragment = sink_fragment,
    .circuit_closed = sink_closed,
    .writable = sink_writable,
};

/* ---- server calls ---------------------------------------------------------
 */

static int echo_call(ckt_node *n, const ckt_message *req, ckt_message *reply,
                     void *user) {
  (void)n, (void)user;
  return ckt_message_set_payload(reply, req->payload, req->payload_len) !=
         CKT_OK;
}

static int stat_call(ckt_node *n, const ckt_message *req, ckt_message *reply,
                     void *user) {
  bench *b = user;
  const char *reset = ckt_message_get_arg(req, "reset");
  char v[32];
  (void)n;
  if (reset && strcmp(reset, "1") == 0) {
    b->got = 0;
    b->expect = 0;
    b->done_circ = NULL;
  }
  snprintf(v, sizeof(v), "%llu", rss_bytes());
  if (ckt_message_set_arg(reply, "rss", v) != CKT_OK) {
    return 1;
  }
  snprintf(v, sizeof(v), "%llu", heap_bytes());
  if (ckt_message_set_arg(reply, "heap", v) != CKT_OK) {
    return 1;
  }
  snprintf(v, sizeof(v), "%ld", b->open_circuits);
  return ckt_message_set_arg(reply, "circuits", v) != CKT_OK;
}

/* ---- client: bulk ---------------------------------------------------------
 */

/* Keeps the circuits full, round-robin (loop thread). */
static void send_more(bench *b) {
  while (b->sending && b->sent < b->bytes) {
    unsigned long long left = b->bytes - b->sent;
    size_t len = left < b->frag ? (size_t)left : b->frag;
    ckt_fragment *f = ckt_fragment_new();
    int rv;
    if (!f || ckt_fragment_set_payload(f, b->buf, len) != CKT_OK) {
      ckt_fragment_free(f);
      finish(b, CKT_ERR_NOMEM);
      return;
    }
    rv = ckt_circuit_send(b->circ[b->next % b->circuits], f);
    if (rv == CKT_ERR_AGAIN) {
      return; /* that circuit's writable brings us back */
    }
    if (rv != CKT_OK) {
      fprintf(stderr, "cktbench: send: %s\n", ckt_strerror(rv));
      finish(b, rv);
      return;
    }
    b->sent += len;
    b->next++;
  }
  if (b->sending && b->sent == b->bytes) {
    ckt_fragment *f = ckt_fragment_new();
    char v[32];
    int rv;
    b->sending = 0;
    snprintf(v, sizeof(v), "%llu", b->bytes);
    if (!f || ckt_fragment_set_subject(f, "done") != CKT_OK ||
        ckt_fragment_set_arg(f, "bytes", v) != CKT_OK) {
      ckt_fragment_free(f);
      finish(b, CKT_ERR_NOMEM);
      return;
    }
    rv = ckt_circuit_send(b->circ[0], f);
    if (rv == CKT_ERR_AGAIN) {
      b->sending = 1; /* full of data: retried from writable */
    } else if (rv != CKT_OK) {
      finish(b, rv);
    }
  }
}

static void remote_started(ckt_node *n, int err, const char *url,
                           const char *why, void *user) {
  bench *b = user;
  unsigned long i;
  (void)n;
  if (err != CKT_OK) {
    fprintf(stderr, "cktbench: cannot start a sink at %s: %s\n", b->to,
            why ? why : ckt_strerror(err));
    finish(b, err);
    return;
  }
  snprintf(b->remote_url, sizeof(b->remote_url), "%s", url);
  for (i = 0; i < b->circuits; ++i) {
    char name[32];
    int rv;
    snprintf(name, sizeof(name), "c%lu", i);
    rv = ckt_peer_open_circuit(b->peer, b->remote_url, name, NULL, NULL,
                               &b->circ[i]);
    if (rv != CKT_OK) {
      fprintf(stderr, "cktbench: opening circuit %lu: %s\n", i,
              ckt_strerror(rv));
      finish(b, rv);
      return;
    }
  }
  finish(b, CKT_OK);
}

static void bulk_open(void *arg) {
  bench *b = arg;
  int rv = ckt_node_start_peer(b->nd, "sink", &b->peer);
  if (rv == CKT_OK) {
    rv = ckt_node_start_remote_peer(b->nd, b->to, "sink", remote_started, b);
  }
  if (rv != CKT_OK) {
    fprintf(stderr, "cktbench: %s\n", ckt_strerror(rv));
    finish(b, rv);
  }
}

static void bulk_go(void *arg) {
  bench *b = arg;
  b->sending = 1;
  b->t0 = mono_ns();
  send_more(b);
}

/* Asks the server for its heap in use and open circuits. */
static int server_stat(bench *b, int reset, unsigned long long *heap,
                       long *circuits) {
  ckt_message *req = ckt_message_new(), *reply = NULL;
  int rv;
  if (!req || ckt_message_set_service(req, "bench.stat") != CKT_OK ||
      (reset && ckt_message_set_arg(req, "reset", "1") != CKT_OK)) {
    ckt_message_free(req);
    return CKT_ERR_NOMEM;
  }
  req->type = CKT_MSG_CALL;
  rv = ckt_node_call(b->nd, b->to, req, 10000, &reply);
  if (rv == CKT_OK) {
    const char *r = ckt_message_get_arg(reply, "heap");
    const char *c = ckt_message_get_arg(reply, "circuits");
    *heap = r ? strtoull(r, NULL, 10) : 0;
    *circuits = c ? strtol(c, NULL, 10) : -1;
  } else {
    fprintf(stderr, "cktbench: bench.stat at %s: %s\n", b->to,
            reply && reply->err ? reply->err : ckt_strerror(rv));
  }
  ckt_message_free(reply);
  return rv;
}

static int run_bulk(bench *b) {
  unsigned long long sheap0, sheap1, cheap0, cheap1;
  long scirc = 0;
  uint64_t until;
  char suite[64] = "?", key[130];
  double secs;
  int rv;

  b->circ = calloc(b->circuits, sizeof(*b->circ));
  b->buf = malloc(b->frag);
  if (!b->circ || !b->buf) {
    fprintf(stderr, "cktbench: out of memory.\n");
    return CKT_ERR_NOMEM;
  }
  for (size_t i = 0; i < b->frag; ++i) {
    b->buf[i] = (uint8_t)(i * 2654435761u >> 13);
  }
  if ((rv = server_stat(b, 1, &sheap0, &scirc)) != CKT_OK) {
    return rv;
  }
  if (scirc != 0) {
    fprintf(stderr,
            "cktbench: the server still has %ld circuits open from an "
            "earlier run; waiting for them to close.\n",
            scirc);
    until = mono_ns() + 10000000000ull;
    while (scirc != 0 && mono_ns() < until) {
      usleep(50000);
      if ((rv = server_stat(b, 1, &sheap0, &scirc)) != CKT_OK) {
        return rv;
      }
    }
  }
  cheap0 = heap_bytes();
  if ((rv = ckt_node_post(b->nd, bulk_open, b)) != CKT_OK ||
      (rv = wait_done(b, 60)) != CKT_OK) {
    fprintf(stderr, "cktbench: could not open the circuits: %s\n",
            ckt_strerror(rv));
    return rv;
  }
  /* Circuits open without a round trip: wait until the server has all. */
  until = mono_ns() + 60000000000ull;
  do {
    if ((rv = server_stat(b, 0, &sheap1, &scirc)) != CKT_OK) {
      return rv;
    }
    if (scirc < (long)b->circuits) {
      usleep(20000);
    }
  } while (scirc < (long)b->circuits && mono_ns() < until);
  if (scirc < (long)b->circuits) {
    fprintf(stderr, "cktbench: the server has %ld of %lu circuits open.\n",
            scirc, b->circuits);
    return CKT_ERR_TIMEOUT;
  }
  usleep(100000);
  if ((rv = server_stat(b, 0, &sheap1, &scirc)) != CKT_OK) {
    return rv;
  }
  cheap1 = heap_bytes();
  (void)ckt_node_peer_info(b->nd, b->to, suite, sizeof(suite), key,
                           sizeof(key));
  if ((rv = ckt_node_post(b->nd, bulk_go, b)) != CKT_OK ||
      (rv = wait_done(b, 600)) != CKT_OK) {
    fprintf(stderr, "cktbench: bulk transfer failed: %s (%llu bytes sent)\n",
            ckt_strerror(rv), b->sent);
    return rv;
  }
  secs = (double)(b->t1 - b->t0) / 1e9;
  printf("cktbench bulk bytes=%llu circuits=%lu frag=%lu suite=%s secs=%.4f "
         "gbps=%.3f client_bytes_per_circuit=%.0f "
         "server_bytes_per_circuit=%.0f\n",
         b->bytes, b->circuits, b->frag, suite, secs,
         (double)b->bytes * 8 / secs / 1e9,
         ((double)cheap1 - (double)cheap0) / (double)b->circuits,
         ((double)sheap1 - (double)sheap0) / (double)b->circuits);
  return CKT_OK;
}

/* ---- client: calls --------------------------------------------------------
 */

static void issue(bench *b, call_slot *s);

static void call_done(ckt_node *n, int err, const ckt_message *reply,
                      void *user) {
  call_slot *s = user;
  bench *b = s->b;
  (void)n;
  if (err != CKT_OK || reply->payload_len != b->size) {
    if (b->failed++ == 0) {
      fprintf(stderr, "cktbench: call failed: %s\n",
              reply->err ? reply->err : ckt_strerror(err));
    }
  } else if (b->recording && b->nlat < b->n) {
    b->lat[b->nlat++] = mono_ns() - s->t0;
  }
  b->answered++;
  if (b->issued < b->n) {
    issue(b, s);
  } else if (b->answered == b->n) {
    b->t1 = mono_ns();
    finish(b, b->failed ? CKT_ERR_REMOTE : CKT_OK);
  }
}

static void issue(bench *b, call_slot *s) {
  ckt_message *m = ckt_message_new();
  int rv;
  if (!m || ckt_message_set_service(m, "echo") != CKT_OK ||
      ckt_message_set_payload(m, b->buf, b->size) != CKT_OK) {
    ckt_message_free(m);
    finish(b, CKT_ERR_NOMEM);
    return;
  }
  m->type = CKT_MSG_CALL;
  b->issued++;
  s->t0 = mono_ns();
  rv = ckt_node_call_async(b->nd, b->to, m, 10000, call_done, s);
  if (rv != CKT_OK) {
    fprintf(stderr, "cktbench: call: %s\n", ckt_strerror(rv));
    finish(b, rv);
  }
}

static void calls_go(void *arg) {
  bench *b = arg;
  unsigned long i, k = b->inflight < b->n ? b->inflight : b->n;
  b->t0 = mono_ns();
  for (i = 0; i < k; ++i) {
    issue(b, &b->slots[i]);
  }
}

static int cmp_u64(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

static double pct_us(const uint64_t *v, unsigned long n, double p) {
  unsigned long i;
  if (n == 0) {
    return 0;
  }
  i = (unsigned long)(p * (double)(n - 1) + 0.5);
  return (double)v[i] / 1e3;
}

static void print_lat(const uint64_t *v, unsigned long n) {
  printf("p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f",
         pct_us(v, n, 0.50), pct_us(v, n, 0.90), pct_us(v, n, 0.99),
         pct_us(v, n, 0.999), n ? (double)v[n - 1] / 1e3 : 0.0);
}

static int calls_phase(bench *b, unsigned long n, int recording) {
  int rv;
  b->n = n;
  b->issued = b->answered = b->failed = 0;
  b->recording = recording;
  b->nlat = 0;
  if ((rv = ckt_node_post(b->nd, calls_go, b)) != CKT_OK) {
    return rv;
  }
  return wait_done(b, 600);
}

static int run_calls(bench *b) {
  ckt_node_stats st0, st1;
  unsigned long n = b->n, i;
  double secs;
  int rv;
  b->slots = calloc(b->inflight, sizeof(*b->slots));
  b->lat = calloc(n, sizeof(*b->lat));
  b->buf = calloc(1, b->size ? b->size : 1);
  if (!b->slots || !b->lat || !b->buf) {
    fprintf(stderr, "cktbench: out of memory.\n");
    return CKT_ERR_NOMEM;
  }
  for (i = 0; i < b->inflight; ++i) {
    b->slots[i].b = b;
  }
  /* The first calls dial and warm the caches; they are not counted. */
  if (b->warmup && (rv = calls_phase(b, b->warmup, 0)) != CKT_OK) {
    fprintf(stderr, "cktbench: warm-up calls failed: %s\n", ckt_strerror(rv));
    return rv;
  }
  ckt_node_get_stats(b->nd, &st0);
  if ((rv = calls_phase(b, n, 1)) != CKT_OK) {
    fprintf(stderr, "cktbench: calls failed: %s (%lu of %lu answered)\n",
            ckt_strerror(rv), b->answered, n);
    return rv;
  }
  ckt_node_get_stats(b->nd, &st1);
  secs = (double)(b->t1 - b->t0) / 1e9;
  qsort(b->lat, b->nlat, sizeof(*b->lat), cmp_u64);
  printf("cktbench calls n=%lu inflight=%lu size=%lu secs=%.4f rate=%.0f "
         "dgrams_out_per_call=%.2f dgrams_in_per_call=%.2f ",
         n, b->inflight, b->size, secs, (double)n / secs,
         (double)(st1.datagrams_sent - st0.datagrams_sent) / (double)n,
         (double)(st1.datagrams_received - st0.datagrams_received) / (double)n);
  print_lat(b->lat, b->nlat);
  printf("\n");
  return CKT_OK;
}

/* ---- client: connect + first call ------------------------------------------
 */

static int run_connect(bench *b) {
  unsigned long i, n = b->n;
  uint8_t payload[64] = {0};
  int rv = CKT_OK;
  b->lat = calloc(n, sizeof(*b->lat));
  if (!b->lat) {
    return CKT_ERR_NOMEM;
  }
  for (i = 0; i < n + b->warmup && rv == CKT_OK; ++i) {
    ckt_node *nd = NULL;
    ckt_message *req = ckt_message_new(), *reply = NULL;
    uint64_t t0;
    if (!req || ckt_message_set_service(req, "echo") != CKT_OK ||
        ckt_message_set_payload(req, payload, sizeof(payload)) != CKT_OK) {
      ckt_message_free(req);
      return CKT_ERR_NOMEM;
    }
    req->type = CKT_MSG_CALL;
    if ((rv = ckt_node_new(&b->cfg, &nd)) != CKT_OK ||
        (rv = ckt_node_start(nd)) != CKT_OK) {
      fprintf(stderr, "cktbench: cannot start a node: %s\n", ckt_strerror(rv));
      ckt_message_free(req);
      ckt_node_free(nd);
      return rv;
    }
    t0 = mono_ns();
    rv = ckt_node_call(nd, b->to, req, 5000, &reply);
    if (rv == CKT_OK && i >= b->warmup) {
      b->lat[b->nlat++] = mono_ns() - t0;
    } else if (rv != CKT_OK) {
      fprintf(stderr, "cktbench: connect + call %lu: %s\n", i,
              reply && reply->err ? reply->err : ckt_strerror(rv));
    }
    ckt_message_free(reply);
    ckt_node_free(nd);
  }
  if (rv != CKT_OK) {
    return rv;
  }
  qsort(b->lat, b->nlat, sizeof(*b->lat), cmp_u64);
  printf("cktbench connect n=%lu ", b->nlat);
  print_lat(b->lat, b->nlat);
  printf("\n");
  return CKT_OK;
}

/* ---- main -----------------------------------------------------------------
 */

int main(int argc, char **argv) {
  static bench b;
  cmd_flag flags[14 + CMD_NODE_NFLAGS];
  size_t nf = 0;
  char addr[80];
  unsigned long bytes_ul = 0;
  int rv;

  cmd_tune_malloc();
  pthread_mutex_init(&b.mu, NULL);
  pthread_cond_init(&b.cv, NULL);
  b.n = 0;
  b.inflight = 64;
  b.size = 64;
  b.frag = 64 * 1024;
  b.circuits = 1;
  b.max_circuits = 20000;
  b.warmup = ~0ul;
  flags[nf++] = (cmd_flag){"serve",
                           CMD_BOOL,
                           &b.serve,
                           0,
                           0,
                           NULL,
                           "run the server side: the sink service and the "
                           "echo and\nbench.stat calls"};
  flags[nf++] = (cmd_flag){"addr",
                           CMD_STRING,
                           &b.addr,
                           0,
                           0,
                           "HOST:PORT",
                           "bind here (default 127.0.0.1:7400 with -serve, "
                           "else\n127.0.0.1:0)"};
  flags[nf++] = (cmd_flag){
      "to", CMD_STRING, &b.to, 0, 0, "HOST:PORT", "the server (client side)"};
  flags[nf++] = (cmd_flag){"mode",
                           CMD_STRING,
                           &b.mode_name,
                           0,
                           0,
                           "MODE",
                           "bulk, calls or connect (client side)"};
  flags[nf++] = (cmd_flag){"bytes",
                           CMD_UINT,
                           &bytes_ul,
                           1,
                           ~0ul,
                           "N",
                           "bulk: bytes to send (default 1 GiB)"};
  flags[nf++] = (cmd_flag){"circuits",
                           CMD_UINT,
                           &b.circuits,
                           1,
                           100000ul,
                           "N",
                           "bulk: circuits, fragments round-robin (default 1)"};
  flags[nf++] = (cmd_flag){"frag",
                           CMD_UINT,
                           &b.frag,
                           1,
                           16ul * 1024 * 1024,
                           "BYTES",
                           "bulk: payload per fragment (default 65536)"};
  flags[nf++] = (cmd_flag){"n",
                           CMD_UINT,
                           &b.n,
                           1,
                           100000000ul,
                           "N",
                           "calls: calls to time (default 200000); connect: "
                           "connections\n(default 200)"};
  flags[nf++] = (cmd_flag){"inflight",
                           CMD_UINT,
                           &b.inflight,
                           1,
                           100000ul,
                           "K",
                           "calls: calls in flight at once (default 64)"};
  flags[nf++] = (cmd_flag){"size",
                           CMD_UINT,
                           &b.size,
                           0,
                           1024ul * 1024,
                           "BYTES",
                           "calls: payload each way (default 64)"};
  flags[nf++] = (cmd_flag){"warmup",
                           CMD_UINT,
                           &b.warmup,
                           0,
                           100000000ul,
                           "N",
                           "calls or connections before timing (default: a "
                           "tenth of -n,\nat most 5000; connect: 5)"};
  flags[nf++] = (cmd_flag){"max-circuits",
                           CMD_UINT,
                           &b.max_circuits,
                           1,
                           1000000ul,
                           "N",
                           "server: circuits and calls a connection may have "
                           "open\n(default 20000)"};
  nf += cmd_node_flags(&b.node,
                       "identity (default: node with -serve, else "
                       "client)",
                       flags + nf);
  {
    const cmd_spec spec = {
        "cktbench",
        "-serve [options] | -to HOST:PORT -mode bulk|calls|connect [options]",
        "ckt's side of bench/transport: bulk bytes over circuits, small "
        "calls\nand their round trips, connect + first call. Prints one "
        "result line.",
        flags,
        nf,
        NULL};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("cktbench", "unexpected argument '%s'.", argv[first]);
    }
  }
  if (!b.serve) {
    if (!b.to || !b.mode_name) {
      cmd_usage_error("cktbench", "give -serve, or -to HOST:PORT and -mode.");
    }
    if (strcmp(b.mode_name, "bulk") == 0) {
      b.mode = MODE_BULK;
    } else if (strcmp(b.mode_name, "calls") == 0) {
      b.mode = MODE_CALLS;
    } else if (strcmp(b.mode_name, "connect") == 0) {
      b.mode = MODE_CONNECT;
    } else {
      cmd_usage_error("cktbench", "-mode is bulk, calls or connect, not '%s'.",
                      b.mode_name);
    }
  }
  b.bytes = bytes_ul ? bytes_ul : 1024ull * 1024 * 1024;
  if (!b.n) {
    b.n = b.mode == MODE_CONNECT ? 200 : 200000;
  }
  if (b.warmup == ~0ul) {
    b.warmup = b.mode == MODE_CONNECT ? 5 : (b.n / 10 < 5000 ? b.n / 10 : 5000);
  }

  ckt_node_config_init(&b.cfg);
  cmd_node_config(&b.node, "cktbench", &b.cfg);
  b.cfg.serve = b.serve;
  b.cfg.listen = b.addr ? b.addr : (b.serve ? "127.0.0.1:7400" : "127.0.0.1:0");
  b.cfg.server_name = b.node.identity;
  b.cfg.client_name = b.node.identity;
  b.cfg.max_circuits_per_connection = (uint32_t)b.max_circuits;
  if (b.mode == MODE_CONNECT) {
    cmd_block_signals();
    rv = run_connect(&b);
    return cmd_exit_code(rv);
  }
  rv = ckt_node_new(&b.cfg, &b.nd);
  if (rv != CKT_OK) {
    fprintf(stderr, "cktbench: cannot start: %s.\n", ckt_strerror(rv));
    return cmd_exit_code(rv);
  }
  if (ckt_node_register_peer_service(b.nd, "sink", &sink_service, &b) !=
          CKT_OK ||
      ckt_node_register_call(b.nd, "echo", echo_call, &b) != CKT_OK ||
      ckt_node_register_call(b.nd, "bench.stat", stat_call, &b) != CKT_OK) {
    fprintf(stderr, "cktbench: out of memory.\n");
    return 1;
  }
  cmd_block_signals();
  if ((rv = ckt_node_start(b.nd)) != CKT_OK) {
    ckt_node_free(b.nd);
    return cmd_exit_code(rv);
  }
  if (b.serve) {
    ckt_node_address(b.nd, addr, sizeof(addr));
    printf("cktbench: listening on %s\n", addr);
    fflush(stdout);
    cmd_wait_signal(0);
    rv = CKT_OK;
  } else if (b.mode == MODE_BULK) {
    rv = run_bulk(&b);
  } else {
    rv = run_calls(&b);
  }
  ckt_node_free(b.nd);
  free(b.circ);
  free(b.buf);
  free(b.slots);
  free(b.lat);
  return cmd_exit_code(rv);
}
