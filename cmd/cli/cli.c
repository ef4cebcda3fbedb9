/*
 * cli — a ckt client: calls, one-way messages and pushes against srv, with
 * latency percentiles and calls per second.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckt/ckt.h"
#include "cmdline.h"

typedef struct cli {
  const char *addr, *service;
  unsigned long total, window, size, timeout_ms, oneways, pushes;
  int quiet;
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

static ckt_message *make_request(cli *c) {
  ckt_message *m = ckt_message_new();
  if (!m || ckt_message_set_service(m, c->service) != CKT_OK ||
      ckt_message_set_payload(m, c->payload, c->size) != CKT_OK) {
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

int main(int argc, char **argv) {
  cli c;
  ckt_node_config cfg;
  cmd_flag flags[9 + CMD_NODE_NFLAGS];
  size_t nf = 0;
  int rv;

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
                           "payload of each call (default 64)"};
  flags[nf++] = (cmd_flag){"service",
                           CMD_STRING,
                           &c.service,
                           0,
                           0,
                           "NAME",
                           "service to call (default echo)"};
  flags[nf++] = (cmd_flag){"timeout",
                           CMD_UINT,
                           &c.timeout_ms,
                           1,
                           3600000ul,
                           "MS",
                           "per-call deadline (default 10000)"};
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
  flags[nf++] =
      (cmd_flag){"q", CMD_BOOL, &c.quiet, 0, 0, NULL, "print only the summary"};
  nf +=
      cmd_node_flags(&c.node, "client identity (default: client)", flags + nf);
  {
    const cmd_spec spec = {
        "cli",
        "[options]",
        "Call a ckt server (see srv): N echo calls with C in flight, printing\n"
        "calls/s and latency percentiles; or one-way messages; or pushes.",
        flags,
        nf,
        "\nExit status: 0 success, 1 failed calls, 2 usage, 3 authentication "
        "(TLS,\npassphrase), 4 network (unreachable, timeout), 5 files "
        "(missing or\nunreadable identity).\n"};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("cli", "unexpected argument '%s'.", argv[first]);
    }
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
  rv = ckt_node_new(&cfg, &c.n);
  if (rv != CKT_OK) {
    fprintf(stderr, "cli: cannot start: %s.\n", ckt_strerror(rv));
    free(c.payload);
    return cmd_exit_code(rv);
  }
  if (c.pushes) {
    ckt_node_register_oneway(c.n, "push", on_push, &c);
  }
  if ((rv = ckt_node_start(c.n)) == CKT_OK &&
      (rv = connect_first(&c)) == CKT_OK) {
    if (c.oneways) {
      rv = run_oneways(&c);
    } else if (c.pushes) {
      rv = run_pushes(&c);
    } else {
      rv = run_calls(&c);
    }
  }
  ckt_node_free(c.n);
  free(c.lat);
  free(c.payload);
  return cmd_exit_code(rv);
}
