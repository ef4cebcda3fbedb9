/*
 * test_node.c — nodes over real UDP on loopback: handshakes, calls,
 * one-way messages, pushes, refusals, timeouts, hostile datagrams, dead
 * peers.  Every node binds 127.0.0.1 on an ephemeral port.
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ckt/ckt.h"
#include "test_logbuf.h"
#include "core_addr.h"

/* ---- fixtures: two independent CAs with node + client identities ------- */

static char root[] = "/tmp/ckt-test-node-XXXXXX";
static char certs_a[600], certs_b[600];

static void make_pki(const char *dir, char *certs, size_t size) {
  char priv[600];
  snprintf(certs, size, "%s/certs", dir);
  snprintf(priv, sizeof(priv), "%s/private", dir);
  if (ckt_identity_make(certs, "node", priv, NULL, NULL) != CKT_OK ||
      ckt_identity_make(certs, "client", priv, NULL, NULL) != CKT_OK) {
    fprintf(stderr, "test_node: cannot make identities in %s\n", dir);
    exit(1);
  }
}

ReportHook(PRE_ALL)(struct criterion_test_set *set) {
  char a[600], b[600];
  (void)set;
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    exit(1);
  }
  snprintf(a, sizeof(a), "%s/a", root);
  snprintf(b, sizeof(b), "%s/b", root);
  make_pki(a, certs_a, sizeof(certs_a));
  make_pki(b, certs_b, sizeof(certs_b));
  setenv("CKT_TEST_CERTS_A", certs_a, 1);
  setenv("CKT_TEST_CERTS_B", certs_b, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
  char cmd[700];
  (void)stats;
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
  if (system(cmd) != 0) {
    fprintf(stderr, "test_node: cannot remove %s\n", root);
  }
}

/* ---- helpers ------------------------------------------------------------- */

typedef struct node_opts {
  const char *certs; /* "A" or "B" */
  int serve, aes, skip_verify, retry;
  uint32_t idle_ms, call_timeout_ms;
  logbuf *log;
  size_t per_address;
  uint32_t handshake_rate;
  const char *psk; /* a pre-shared key file */
} node_opts;

static ckt_node *start_node(const node_opts *o, char *addr, size_t addr_sz) {
  ckt_node_config cfg;
  ckt_node *n;
  int rv;
  ckt_node_config_init(&cfg);
  cfg.listen = "127.0.0.1:0";
  cfg.serve = o->serve;
  cfg.cert_dir = getenv(o->certs && o->certs[0] == 'B' ? "CKT_TEST_CERTS_B"
                                                       : "CKT_TEST_CERTS_A");
  cfg.aes_gcm = o->aes;
  cfg.insecure_skip_verify = o->skip_verify;
  cfg.retry = o->retry;
  cfg.idle_timeout_ms = o->idle_ms;
  cfg.call_timeout_ms = o->call_timeout_ms;
  cfg.max_connections_per_address = o->per_address;
  cfg.max_handshakes_per_second = o->handshake_rate;
  cfg.psk_file = o->psk;
  if (o->log) {
    cfg.log = log_line;
    cfg.log_user = o->log;
  }
  rv = ckt_node_new(&cfg, &n);
  cr_assert_eq(rv, CKT_OK, "ckt_node_new: %s", ckt_strerror(rv));
  cr_assert_eq(ckt_node_start(n), CKT_OK);
  if (addr) {
    ckt_node_address(n, addr, addr_sz);
  }
  return n;
}

static int echo(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  (void)n, (void)user;
  ckt_message_set_subject(reply, req->subject);
  return ckt_message_set_payload(reply, req->payload, req->payload_len) ==
                 CKT_OK
             ? 0
             : -1;
}

static int fail_handler(ckt_node *n, const ckt_message *req, ckt_message *reply,
                        void *user) {
  (void)n, (void)req, (void)user;
  ckt_message_set_err(reply, "the disk is on fire");
  return -1;
}

static int slow(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  (void)n, (void)req, (void)user;
  usleep(400 * 1000); /* blocks this node's loop on purpose */
  ckt_message_set_payload(reply, "late", 4);
  return 0;
}

static ckt_message *request(const char *service, const void *payload,
                            size_t len) {
  ckt_message *m = ckt_message_new();
  cr_assert_not_null(m);
  cr_assert_eq(ckt_message_set_service(m, service), CKT_OK);
  cr_assert_eq(ckt_message_set_payload(m, payload, len), CKT_OK);
  return m;
}

static int call(ckt_node *n, const char *peer, const char *service,
                const char *text, uint32_t timeout_ms, ckt_message **reply) {
  return ckt_node_call(n, peer, request(service, text, strlen(text)),
                       timeout_ms, reply);
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- handshake and calls ------------------------------------------------ */

Test(node, handshake_and_call_chacha20_ed25519) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80], suite[64], key[80], crt[700];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  ckt_message *reply = NULL;
  ckt_cert_info info;
  char *pem;
  size_t len;

  cr_assert_eq(ckt_node_register_call(srv, "echo", echo, NULL), CKT_OK);
  cr_assert_eq(call(cli, saddr, "echo", "hello", 5000, &reply), CKT_OK);
  cr_assert_eq(reply->type, CKT_MSG_REPLY);
  cr_assert_eq(reply->payload_len, 5);
  cr_assert_eq(memcmp(reply->payload, "hello", 5), 0);
  ckt_message_free(reply);

  cr_assert_eq(
      ckt_node_peer_info(cli, saddr, suite, sizeof(suite), key, sizeof(key)),
      CKT_OK);
  cr_assert_str_eq(suite, "TLS_CHACHA20_POLY1305_SHA256");
  /* The key the client verified is the server's node.crt key. */
  snprintf(crt, sizeof(crt), "%s/node.crt", getenv("CKT_TEST_CERTS_A"));
  cr_assert_eq(ckt_pem_file_read(crt, &pem, &len), CKT_OK);
  cr_assert_eq(ckt_cert_describe(pem, len, &info), CKT_OK);
  {
    char hex[65];
    ckt_hex_format(hex, sizeof(hex), info.public_key, 32, 0);
    cr_assert_str_eq(key, hex);
  }
  ckt_free(pem);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(node, retry_validates_the_client_address) {
  node_opts so = {.serve = 1, .retry = 1}, co = {0};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  ckt_message *reply = NULL;
  ckt_node_stats st;
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(call(cli, saddr, "echo", "after a retry", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  ckt_node_get_stats(srv, &st);
  cr_assert_eq(st.retries_sent, 1);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(node, aes_gcm_is_selectable) {
  node_opts so = {.serve = 1, .aes = 1}, co = {.aes = 1};
  char saddr[80], suite[64];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  ckt_message *reply = NULL;
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(call(cli, saddr, "echo", "x", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  cr_assert_eq(ckt_node_peer_info(cli, saddr, suite, sizeof(suite), NULL, 0),
               CKT_OK);
  cr_assert_str_eq(suite, "TLS_AES_128_GCM_SHA256");
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(node, handler_error_and_unknown_service_travel_back) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  ckt_message *reply = NULL;
  ckt_node_register_call(srv, "fail", fail_handler, NULL);
  cr_assert_eq(call(cli, saddr, "fail", "x", 5000, &reply), CKT_ERR_REMOTE);
  cr_assert_str_eq(reply->err, "the disk is on fire");
  ckt_message_free(reply);
  cr_assert_eq(call(cli, saddr, "nosuch", "x", 5000, &reply),
               CKT_ERR_NO_SERVICE);
  cr_assert(strstr(reply->err, "nosuch"), "%s", reply->err);
  ckt_message_free(reply);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* ---- refusals ------------------------------------------------------------ */

Test(node, wrong_ca_is_refused_on_both_sides) {
  logbuf slog, clog;
  node_opts so = {.serve = 1, .log = &slog}, co = {.certs = "B", .log = &clog};
  char saddr[80];
  ckt_node *srv, *cli;
  ckt_message *reply = NULL;
  logbuf_init(&slog);
  logbuf_init(&clog);
  srv = start_node(&so, saddr, sizeof(saddr));
  cli = start_node(&co, NULL, 0);
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(call(cli, saddr, "echo", "x", 5000, &reply), CKT_ERR_TLS);
  /* The client knows why: the server's certificate is not from its CA. */
  cr_assert(strstr(reply->err, "server's certificate is not signed by our CA"),
            "%s", reply->err);
  ckt_message_free(reply);
  /* The server refused too, or saw the client refuse: it logged it. */
  ckt_node_free(cli);
  ckt_node_free(srv);
  cr_assert(log_has(&slog, "refused"), "server log: %s", slog.text);
}

Test(node, server_refuses_a_client_from_another_ca) {
  logbuf slog;
  node_opts so = {.serve = 1, .log = &slog},
            co = {.certs = "B", .skip_verify = 1};
  char saddr[80];
  ckt_node *srv, *cli;
  ckt_message *reply = NULL;
  logbuf_init(&slog);
  srv = start_node(&so, saddr, sizeof(saddr));
  /* The client accepts anything (skip-verify); the server must not. */
  cli = start_node(&co, NULL, 0);
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(call(cli, saddr, "echo", "x", 5000, &reply), CKT_ERR_TLS);
  cr_assert(strstr(reply->err, "client's certificate is not signed by our CA"),
            "%s", reply->err);
  ckt_message_free(reply);
  ckt_node_free(cli);
  ckt_node_free(srv);
  cr_assert(log_has(&slog, "client's certificate is not signed by our CA"),
            "server log: %s", slog.text);
}

Test(node, skip_verify_accepts_a_foreign_ca_and_says_so) {
  logbuf clog;
  node_opts so = {.serve = 1, .skip_verify = 1},
            co = {.certs = "B", .skip_verify = 1, .log = &clog};
  char saddr[80];
  ckt_node *srv, *cli;
  ckt_message *reply = NULL;
  logbuf_init(&clog);
  srv = start_node(&so, saddr, sizeof(saddr));
  cli = start_node(&co, NULL, 0);
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(call(cli, saddr, "echo", "x", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  cr_assert(log_has(&clog, "INSECURE"), "%s", clog.text);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(node, nobody_listening_fails_within_the_timeout) {
  node_opts co = {0};
  ckt_node *cli = start_node(&co, NULL, 0);
  ckt_message *reply = NULL;
  uint64_t t0 = mono_ms();
  /* Port 9 on loopback: nothing answers. */
  int rv = call(cli, "127.0.0.1:9", "echo", "x", 300, &reply);
  cr_assert(rv == CKT_ERR_TIMEOUT || rv == CKT_ERR_CONNECTION, "%d", rv);
  cr_assert_lt(mono_ms() - t0, 3000);
  ckt_message_free(reply);
  ckt_node_free(cli);
}

/* ---- volume ------------------------------------------------------------- */

typedef struct many {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  ckt_node *cli;
  const char *peer;
  int started, finished, ok, total, window;
} many;

static void many_done(ckt_node *n, int err, const ckt_message *reply,
                      void *user);

static void many_start(many *m) {
  char text[64];
  int i = m->started++;
  snprintf(text, sizeof(text), "call number %d", i);
  cr_assert_eq(ckt_node_call_async(m->cli, m->peer,
                                   request("echo", text, strlen(text)), 10000,
                                   many_done, m),
               CKT_OK);
}

static void many_done(ckt_node *n, int err, const ckt_message *reply,
                      void *user) {
  many *m = user;
  (void)n;
  pthread_mutex_lock(&m->mu);
  /* Each reply must carry its own request's payload. */
  if (err == CKT_OK && reply->payload_len > 12 &&
      memcmp(reply->payload, "call number ", 12) == 0) {
    m->ok++;
  }
  m->finished++;
  if (m->started < m->total) {
    many_start(m);
  }
  if (m->finished == m->total) {
    pthread_cond_signal(&m->cv);
  }
  pthread_mutex_unlock(&m->mu);
}

Test(node, ten_thousand_calls_sixty_four_in_flight) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  many m;
  int i;
  memset(&m, 0, sizeof(m));
  pthread_mutex_init(&m.mu, NULL);
  pthread_cond_init(&m.cv, NULL);
  m.cli = start_node(&co, NULL, 0);
  m.peer = saddr;
  m.total = 10000;
  ckt_node_register_call(srv, "echo", echo, NULL);
  pthread_mutex_lock(&m.mu);
  for (i = 0; i < 64; ++i) {
    many_start(&m);
  }
  while (m.finished < m.total) {
    pthread_cond_wait(&m.cv, &m.mu);
  }
  pthread_mutex_unlock(&m.mu);
  cr_assert_eq(m.ok, 10000);
  ckt_node_free(m.cli);
  ckt_node_free(srv);
}

/* One call at a time, each started from the previous one's completion:
 * each way, a call costs one datagram.  Its ACK rides in the next
 * request or in the reply, and the server's new stream credit rides in a
 * reply (scripts/patches/ngtcp2-0.12.1-fewer-packets.patch); before,
 * both went in packets of their own, which the other end acknowledged
 * in turn: about 1.8 datagrams each way per call. */
Test(node, one_call_in_flight_costs_one_datagram_each_way) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node_stats before, after;
  uint64_t sent, received;
  many m;
  memset(&m, 0, sizeof(m));
  pthread_mutex_init(&m.mu, NULL);
  pthread_cond_init(&m.cv, NULL);
  m.cli = start_node(&co, NULL, 0);
  m.peer = saddr;
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(call(m.cli, saddr, "echo", "warm up", 0, NULL), CKT_OK);
  ckt_node_get_stats(m.cli, &before);
  m.total = 2000;
  pthread_mutex_lock(&m.mu);
  many_start(&m);
  while (m.finished < m.total) {
    pthread_cond_wait(&m.cv, &m.mu);
  }
  pthread_mutex_unlock(&m.mu);
  ckt_node_get_stats(m.cli, &after);
  cr_assert_eq(m.ok, 2000);
  sent = after.datagrams_sent - before.datagrams_sent;
  received = after.datagrams_received - before.datagrams_received;
  cr_assert_leq(sent, 2200, "%llu datagrams sent for 2000 calls",
                (unsigned long long)sent);
  cr_assert_leq(received, 2200, "%llu datagrams received for 2000 calls",
                (unsigned long long)received);
  ckt_node_free(m.cli);
  ckt_node_free(srv);
}

Test(node, large_message_and_the_size_limit) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  size_t big = 4 * 1024 * 1024, i;
  uint8_t *p = malloc(big);
  ckt_message *reply = NULL;
  for (i = 0; i < big; ++i) {
    p[i] = (uint8_t)(i * 7 + i / 251);
  }
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(
      ckt_node_call(cli, saddr, request("echo", p, big), 20000, &reply),
      CKT_OK);
  cr_assert_eq(reply->payload_len, big);
  cr_assert_eq(memcmp(reply->payload, p, big), 0);
  ckt_message_free(reply);
  free(p);
  /* Past the default 16 MiB: refused before anything is sent. */
  p = calloc(1, 16 * 1024 * 1024 + 1);
  cr_assert_eq(ckt_node_call(cli, saddr,
                             request("echo", p, 16 * 1024 * 1024 + 1), 1000,
                             &reply),
               CKT_ERR_TOO_LARGE);
  cr_assert_null(reply);
  free(p);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* ---- deadlines ----------------------------------------------------------- */

Test(node, timeout_fires_and_the_late_reply_is_dropped) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  ckt_message *reply = NULL;
  uint64_t t0;
  ckt_node_stats st;
  ckt_node_register_call(srv, "echo", echo, NULL);
  ckt_node_register_call(srv, "slow", slow, NULL);
  cr_assert_eq(call(cli, saddr, "echo", "warm", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  t0 = mono_ms();
  cr_assert_eq(call(cli, saddr, "slow", "x", 100, &reply), CKT_ERR_TIMEOUT);
  cr_assert_lt(mono_ms() - t0, 350, "the timeout, not the reply, ended it");
  cr_assert(strstr(reply->err, "no reply"), "%s", reply->err);
  ckt_message_free(reply);
  usleep(600 * 1000); /* the late reply arrives and must go nowhere */
  cr_assert_eq(call(cli, saddr, "echo", "after", 5000, &reply), CKT_OK);
  cr_assert_eq(memcmp(reply->payload, "after", 5), 0);
  ckt_message_free(reply);
  ckt_node_get_stats(cli, &st);
  cr_assert_eq(st.calls_failed, 1);
  cr_assert_eq(st.calls_answered, 2);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* ---- one-way and push ---------------------------------------------------- */

typedef struct inbox {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int count;
  char last_from[80];
} inbox;

static void inbox_put(ckt_node *n, const ckt_message *msg, void *user) {
  inbox *b = user;
  (void)n;
  pthread_mutex_lock(&b->mu);
  b->count++;
  snprintf(b->last_from, sizeof(b->last_from), "%s", msg->from);
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

static int inbox_wait(inbox *b, int count, int ms) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += ms / 1000;
  until.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&b->mu);
  while (b->count < count &&
         pthread_cond_timedwait(&b->cv, &b->mu, &until) == 0) {
  }
  count = b->count;
  pthread_mutex_unlock(&b->mu);
  return count;
}

static int push_back(ckt_node *n, const ckt_message *req, ckt_message *reply,
                     void *user) {
  int i;
  (void)reply, (void)user;
  for (i = 0; i < 10; ++i) {
    cr_assert_eq(ckt_node_push(n, req->from, request("news", "hot", 3)),
                 CKT_OK);
  }
  return 0;
}

Test(node, oneway_and_push_are_delivered) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80], caddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, caddr, sizeof(caddr));
  inbox at_srv, at_cli;
  ckt_message *reply = NULL;
  int i;
  memset(&at_srv, 0, sizeof(at_srv));
  memset(&at_cli, 0, sizeof(at_cli));
  pthread_mutex_init(&at_srv.mu, NULL);
  pthread_cond_init(&at_srv.cv, NULL);
  pthread_mutex_init(&at_cli.mu, NULL);
  pthread_cond_init(&at_cli.cv, NULL);
  ckt_node_register_oneway(srv, "log", inbox_put, &at_srv);
  ckt_node_register_call(srv, "subscribe", push_back, NULL);
  ckt_node_register_oneway(cli, "news", inbox_put, &at_cli);

  for (i = 0; i < 20; ++i) {
    cr_assert_eq(ckt_node_send(cli, saddr, request("log", "line", 4)), CKT_OK);
  }
  cr_assert_eq(inbox_wait(&at_srv, 20, 5000), 20);
  cr_assert_eq(call(cli, saddr, "subscribe", "", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  cr_assert_eq(inbox_wait(&at_cli, 10, 5000), 10);
  cr_assert_str_eq(at_cli.last_from, saddr, "pushes come from the server");
  /* Pushing to someone who never connected is an error, not a dial. */
  cr_assert_eq(ckt_node_push(srv, "127.0.0.1:9", request("news", "x", 1)),
               CKT_ERR_NOT_FOUND);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* ---- shared ports -------------------------------------------------------- */

Test(node, two_nodes_dial_each_other_over_their_single_sockets) {
  node_opts o = {.serve = 1};
  char a_addr[80], b_addr[80];
  ckt_node *a = start_node(&o, a_addr, sizeof(a_addr));
  ckt_node *b = start_node(&o, b_addr, sizeof(b_addr));
  ckt_message *reply = NULL;
  ckt_node_register_call(a, "echo", echo, NULL);
  ckt_node_register_call(b, "echo", echo, NULL);
  cr_assert_eq(call(a, b_addr, "echo", "a to b", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  cr_assert_eq(call(b, a_addr, "echo", "b to a", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  /* B answered over the connection A dialed (same ports both ways). */
  {
    ckt_node_stats sa, sb;
    ckt_node_get_stats(a, &sa);
    ckt_node_get_stats(b, &sb);
    cr_assert_eq(sa.connections_open, 1);
    cr_assert_eq(sb.connections_open, 1);
    cr_assert_eq(sa.calls_served, 1);
    cr_assert_eq(sb.calls_served, 1);
  }
  ckt_node_free(a);
  ckt_node_free(b);
}

Test(node, one_hundred_clients_on_one_server) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli[100];
  ckt_node_stats st;
  int i;
  ckt_node_register_call(srv, "echo", echo, NULL);
  for (i = 0; i < 100; ++i) {
    ckt_message *reply = NULL;
    cli[i] = start_node(&co, NULL, 0);
    cr_assert_eq(call(cli[i], saddr, "echo", "hi", 5000, &reply), CKT_OK,
                 "client %d", i);
    ckt_message_free(reply);
  }
  ckt_node_get_stats(srv, &st);
  cr_assert_eq(st.connections_open, 100);
  for (i = 0; i < 100; ++i) {
    ckt_node_free(cli[i]);
  }
  ckt_node_free(srv);
}

/* ---- hostile datagrams --------------------------------------------------- */

typedef struct flood {
  const char *target;
  int done;
} flood;

static void *flood_main(void *arg) {
  flood *f = arg;
  ckt_addr to;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  uint8_t buf[1500];
  unsigned seed = 12345;
  int i;
  cr_assert_eq(ckt_addr_parse(f->target, NULL, &to), CKT_OK);
  for (i = 0; i < 30000; ++i) {
    size_t len = 1 + (size_t)(rand_r(&seed) % sizeof(buf)), j;
    for (j = 0; j < len; ++j) {
      buf[j] = (uint8_t)rand_r(&seed);
    }
    switch (i % 4) {
    case 0: /* a short header aimed at our CID length */
      buf[0] = (uint8_t)(0x40 | (buf[0] & 0x3f));
      break;
    case 1: /* a truncated Initial of version 1 */
      buf[0] = 0xc0;
      buf[1] = buf[2] = buf[3] = 0;
      buf[4] = 1;
      if (len > 5) {
        buf[5] = (uint8_t)(len % 21);
      }
      break;
    case 2: /* an unknown version: version negotiation */
      buf[0] = 0xc0;
      buf[1] = 0x1a;
      break;
    default: /* anything */
      break;
    }
    sendto(fd, buf, len, 0, (struct sockaddr *)&to.ss, to.len);
  }
  close(fd);
  f->done = 1;
  return NULL;
}

Test(node, random_datagrams_do_not_disturb_a_live_connection) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  pthread_t th;
  flood f = {saddr, 0};
  int ok = 0, i;
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(pthread_create(&th, NULL, flood_main, &f), 0);
  for (i = 0; i < 300; ++i) {
    ckt_message *reply = NULL;
    char text[32];
    snprintf(text, sizeof(text), "ping %d", i);
    if (call(cli, saddr, "echo", text, 5000, &reply) == CKT_OK &&
        reply->payload_len == strlen(text)) {
      ok++;
    }
    ckt_message_free(reply);
  }
  pthread_join(th, NULL);
  cr_assert_eq(ok, 300);
  {
    ckt_node_stats st;
    ckt_node_get_stats(srv, &st);
    cr_assert_eq(st.connections_open, 1, "junk opened no connection");
    cr_assert_gt(st.packets_dropped, 10000);
    cr_assert_gt(st.version_negotiations_sent, 0);
    /* Resets are rate-limited: 100 a second plus the initial burst. */
    cr_assert_gt(st.stateless_resets_sent, 0);
    cr_assert_lt(st.stateless_resets_sent, 100 + 100 * 30);
  }
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* ---- liveness ------------------------------------------------------------ */

Test(node, idle_connection_between_live_nodes_stays_up) {
  node_opts so = {.serve = 1, .idle_ms = 600}, co = {.idle_ms = 600};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  ckt_message *reply = NULL;
  ckt_node_stats st;
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(call(cli, saddr, "echo", "a", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  usleep(2500 * 1000); /* four idle timeouts: keepalives hold it up */
  ckt_node_get_stats(srv, &st);
  cr_assert_eq(st.connections_open, 1);
  cr_assert_eq(call(cli, saddr, "echo", "b", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  ckt_node_get_stats(cli, &st);
  cr_assert_eq(st.connections_open, 1, "the same connection, no redial");
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(node, a_killed_client_is_detected) {
  logbuf slog;
  node_opts so = {.serve = 1, .idle_ms = 500, .log = &slog};
  char saddr[80];
  ckt_node *srv;
  ckt_node_stats st;
  int pipefd[2], status, i;
  pid_t pid;
  logbuf_init(&slog);
  cr_assert_eq(pipe(pipefd), 0);
  /* Fork before any thread exists here: the child starts clean. */
  pid = fork();
  if (pid == 0) {
    node_opts co = {.idle_ms = 500};
    ckt_node *cli;
    ckt_message *reply = NULL;
    int rv;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    alarm(60);
    close(pipefd[1]);
    if (read(pipefd[0], saddr, sizeof(saddr)) != (ssize_t)sizeof(saddr)) {
      _exit(1);
    }
    cli = start_node(&co, NULL, 0);
    rv = call(cli, saddr, "echo", "x", 5000, &reply);
    /* Die without a word: no CONNECTION_CLOSE reaches the server. */
    raise(rv == CKT_OK ? SIGKILL : SIGABRT);
    _exit(1);
  }
  cr_assert_gt(pid, 0);
  close(pipefd[0]);
  srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(write(pipefd[1], saddr, sizeof(saddr)), (ssize_t)sizeof(saddr));
  close(pipefd[1]);
  waitpid(pid, &status, 0);
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
            "the child's call failed");
  for (i = 0; i < 40; ++i) {
    ckt_node_get_stats(srv, &st);
    if (st.connections_open == 0) {
      break;
    }
    usleep(100 * 1000);
  }
  cr_assert_eq(st.connections_open, 0, "the dead client is still counted");
  cr_assert_lt(i, 20, "detected within about the idle timeout");
  cr_assert(log_has(&slog, "stopped answering"), "%s", slog.text);
  ckt_node_free(srv);
}

Test(node, a_killed_server_fails_pending_calls_early) {
  node_opts co = {.idle_ms = 500};
  ckt_node *cli;
  ckt_message *reply = NULL;
  char saddr[80];
  int pipefd[2], rv;
  pid_t pid;
  uint64_t t0;
  cr_assert_eq(pipe(pipefd), 0);
  pid = fork();
  if (pid == 0) {
    node_opts so = {.serve = 1, .idle_ms = 500};
    ckt_node *srv;
    /* Never outlive the test, whatever happens to it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    alarm(60);
    close(pipefd[0]);
    srv = start_node(&so, saddr, sizeof(saddr));
    ckt_node_register_call(srv, "echo", echo, NULL);
    ckt_node_register_call(srv, "slow", slow, NULL);
    if (write(pipefd[1], saddr, sizeof(saddr)) != (ssize_t)sizeof(saddr)) {
      _exit(1);
    }
    pause();
    _exit(0);
  }
  close(pipefd[1]); /* a child that dies early then gives EOF, not a hang */
  cr_assert_eq(read(pipefd[0], saddr, sizeof(saddr)), (ssize_t)sizeof(saddr));
  close(pipefd[0]);
  cli = start_node(&co, NULL, 0);
  cr_assert_eq(call(cli, saddr, "echo", "x", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  t0 = mono_ms();
  rv = call(cli, saddr, "echo", "anyone?", 20000, &reply);
  cr_assert_neq(rv, CKT_OK);
  cr_assert_lt(mono_ms() - t0, 5000, "not the 20 s call timeout");
  ckt_message_free(reply);
  ckt_node_free(cli);
}

/* ---- shutdown with work in flight ---------------------------------------- */

typedef struct outcome {
  pthread_mutex_t mu;
  int calls, err;
} outcome;

static void record_done(ckt_node *n, int err, const ckt_message *reply,
                        void *user) {
  outcome *o = user;
  (void)n, (void)reply;
  pthread_mutex_lock(&o->mu);
  o->calls++;
  o->err = err;
  pthread_mutex_unlock(&o->mu);
}

Test(node, freeing_a_node_finishes_its_calls_exactly_once) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  outcome o = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
  ckt_message *reply = NULL;
  ckt_node_register_call(srv, "echo", echo, NULL);
  ckt_node_register_call(srv, "slow", slow, NULL);
  cr_assert_eq(call(cli, saddr, "echo", "up", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  cr_assert_eq(ckt_node_call_async(cli, saddr, request("slow", "x", 1), 5000,
                                   record_done, &o),
               CKT_OK);
  usleep(50 * 1000); /* the call is on the wire, its stream open */
  ckt_node_free(cli);
  cr_assert_eq(o.calls, 1);
  cr_assert_eq(o.err, CKT_ERR_CLOSED);
  ckt_node_free(srv);
}

Test(node, asking_a_stopped_node_does_not_hang) {
  node_opts so = {.serve = 1}, co = {0};
  char saddr[80], suite[64];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cli = start_node(&co, NULL, 0);
  ckt_message *reply = NULL;
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(call(cli, saddr, "echo", "x", 5000, &reply), CKT_OK);
  ckt_message_free(reply);
  ckt_node_stop(cli);
  cr_assert_eq(ckt_node_peer_info(cli, saddr, suite, sizeof(suite), NULL, 0),
               CKT_ERR_NOT_FOUND);
  cr_assert_eq(ckt_node_push(cli, saddr, request("x", "y", 1)), CKT_ERR_CLOSED);
  cr_assert_eq(call(cli, saddr, "echo", "x", 5000, &reply), CKT_ERR_CLOSED);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(node, connections_per_address_are_limited) {
  node_opts so = {.serve = 1, .per_address = 2};
  node_opts co = {.call_timeout_ms = 3000};
  char saddr[64];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cl[3];
  ckt_message *reply = NULL;
  ckt_node_stats st;
  int rv;
  ckt_node_register_call(srv, "echo", echo, NULL);
  for (int i = 0; i < 3; i++) {
    cl[i] = start_node(&co, NULL, 0);
  }
  for (int i = 0; i < 2; i++) {
    rv = call(cl[i], saddr, "echo", "hi", 3000, &reply);
    cr_assert_eq(rv, CKT_OK, "client %d: %s", i, reply ? reply->err : "");
    ckt_message_free(reply);
  }
  /* A third connection from the same IP (127.0.0.1) is refused. */
  rv = call(cl[2], saddr, "echo", "hi", 3000, &reply);
  cr_assert_neq(rv, CKT_OK);
  cr_assert(reply && reply->err && strstr(reply->err, "refused"), "why: %s",
            reply && reply->err ? reply->err : "(none)");
  ckt_message_free(reply);
  ckt_node_get_stats(srv, &st);
  cr_assert_eq(st.connections_open, 2);
  for (int i = 0; i < 3; i++) {
    ckt_node_free(cl[i]);
  }
  ckt_node_free(srv);
}

Test(node, past_the_handshake_rate_clients_prove_their_address_first) {
  node_opts so = {.serve = 1, .handshake_rate = 1};
  node_opts co = {.call_timeout_ms = 3000};
  char saddr[64];
  ckt_node *srv = start_node(&so, saddr, sizeof(saddr));
  ckt_node *cl[3];
  ckt_message *reply = NULL;
  ckt_node_stats st;
  ckt_node_register_call(srv, "echo", echo, NULL);
  for (int i = 0; i < 3; i++) {
    cl[i] = start_node(&co, NULL, 0);
    cr_assert_eq(call(cl[i], saddr, "echo", "hi", 3000, &reply), CKT_OK);
    ckt_message_free(reply);
  }
  /* One handshake a second: the first got in at once, the next ones
   * (within the same second) after a Retry round trip. */
  ckt_node_get_stats(srv, &st);
  cr_assert_geq(st.retries_sent, 2, "retries: %lu",
                (unsigned long)st.retries_sent);
  cr_assert_eq(st.connections_open, 3);
  for (int i = 0; i < 3; i++) {
    ckt_node_free(cl[i]);
  }
  ckt_node_free(srv);
}

static void write_psk(const char *name, char fill, char *path, size_t size) {
  char data[32];
  FILE *f;
  /* Next to the test's certificates (the workers see them through the
   * environment). */
  snprintf(path, size, "%s/%s", getenv("CKT_TEST_CERTS_A"), name);
  memset(data, fill, sizeof(data));
  f = fopen(path, "wb");
  cr_assert_not_null(f);
  cr_assert_eq(fwrite(data, 1, sizeof(data), f), sizeof(data));
  fclose(f);
}

Test(node, a_shared_psk_seals_every_frame_and_calls_work) {
  char psk[700], saddr[64];
  node_opts so = {.serve = 1}, co = {.call_timeout_ms = 3000};
  ckt_node *srv, *cl;
  ckt_message *reply = NULL;
  write_psk("psk-a", 'a', psk, sizeof(psk));
  so.psk = co.psk = psk;
  srv = start_node(&so, saddr, sizeof(saddr));
  cl = start_node(&co, NULL, 0);
  ckt_node_register_call(srv, "echo", echo, NULL);
  for (int i = 0; i < 20; i++) {
    cr_assert_eq(call(cl, saddr, "echo", "sealed", 3000, &reply), CKT_OK, "%s",
                 reply && reply->err ? reply->err : "");
    cr_assert_eq(reply->payload_len, 6);
    cr_assert(memcmp(reply->payload, "sealed", 6) == 0);
    ckt_message_free(reply);
  }
  ckt_node_free(cl);
  ckt_node_free(srv);
}

static void psk_refused(const char *cpsk, const char *spsk, const char *want) {
  char saddr[64];
  logbuf slog;
  node_opts so = {.serve = 1, .psk = spsk, .log = &slog};
  node_opts co = {.call_timeout_ms = 3000, .psk = cpsk};
  ckt_node *srv, *cl;
  ckt_message *reply = NULL;
  int rv;
  logbuf_init(&slog);
  srv = start_node(&so, saddr, sizeof(saddr));
  cl = start_node(&co, NULL, 0);
  ckt_node_register_call(srv, "echo", echo, NULL);
  rv = call(cl, saddr, "echo", "hi", 3000, &reply);
  cr_assert_neq(rv, CKT_OK);
  cr_assert(reply && reply->err && strstr(reply->err, want), "client hears: %s",
            reply && reply->err ? reply->err : "");
  ckt_message_free(reply);
  for (int i = 0; i < 300 && !log_has(&slog, "pre-shared"); i++) {
    usleep(10 * 1000);
  }
  cr_assert(log_has(&slog, "pre-shared"), "server log: %s", slog.text);
  ckt_node_free(cl);
  ckt_node_free(srv);
}

Test(node, a_different_psk_is_refused_on_both_sides) {
  char a[700], b[700];
  write_psk("psk-a2", 'a', a, sizeof(a));
  write_psk("psk-b2", 'b', b, sizeof(b));
  psk_refused(a, b, "pre-shared keys differ");
}

Test(node, a_psk_on_one_side_only_is_refused_on_both_sides) {
  char a[700];
  write_psk("psk-a3", 'a', a, sizeof(a));
  psk_refused(NULL, a, "pre-shared");
}

Test(node, a_psk_on_the_client_only_is_refused_on_both_sides) {
  char a[700];
  write_psk("psk-a4", 'a', a, sizeof(a));
  psk_refused(a, NULL, "pre-shared");
}

Test(node, oneway_and_push_work_under_a_psk) {
  char psk[700], saddr[64];
  node_opts so = {.serve = 1}, co = {.call_timeout_ms = 3000};
  ckt_node *srv, *cl;
  ckt_message *reply = NULL;
  inbox box;
  write_psk("psk-a5", 'a', psk, sizeof(psk));
  so.psk = co.psk = psk;
  srv = start_node(&so, saddr, sizeof(saddr));
  cl = start_node(&co, NULL, 0);
  memset(&box, 0, sizeof(box));
  pthread_mutex_init(&box.mu, NULL);
  pthread_cond_init(&box.cv, NULL);
  ckt_node_register_oneway(srv, "sink", inbox_put, &box);
  ckt_node_register_call(srv, "echo", echo, NULL);
  cr_assert_eq(call(cl, saddr, "echo", "x", 3000, &reply), CKT_OK);
  ckt_message_free(reply);
  for (int i = 0; i < 5; i++) {
    cr_assert_eq(ckt_node_send(cl, saddr, request("sink", "m", 1)), CKT_OK);
  }
  cr_assert_eq(inbox_wait(&box, 5, 3000), 5,
               "one-way messages sealed and opened");
  ckt_node_free(cl);
  ckt_node_free(srv);
}

/* An identity signed by test CA A whose validity ended yesterday: the
 * ckt API makes one with a fixed start (ckt_cert_options.not_before). */
static void make_expired_identity(char *dir, size_t size) {
  const char *certs = getenv("CKT_TEST_CERTS_A");
  char path[800], cmd[1700], *ca_pem = NULL, *pem = NULL, *key_pem = NULL;
  size_t ca_len = 0, pem_len = 0, key_len = 0;
  ckt_ed25519_key ca_key, key;
  ckt_cert_options o;
  FILE *f;
  snprintf(dir, size, "%s/../expired-certs", certs);
  snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && cp '%s/ca.crt' '%s/'", dir,
           certs, dir);
  cr_assert_eq(system(cmd), 0);
  snprintf(path, sizeof(path), "%s/ca.crt", certs);
  cr_assert_eq(ckt_pem_file_read(path, &ca_pem, &ca_len), CKT_OK);
  snprintf(path, sizeof(path), "%s/../private/ca.key", certs);
  cr_assert_eq(ckt_key_load(path, NULL, &ca_key), CKT_OK);
  cr_assert_eq(ckt_key_generate(&key), CKT_OK);
  memset(&o, 0, sizeof(o));
  o.not_before = (int64_t)time(NULL) - 10 * 86400;
  o.valid_days = 9;
  cr_assert_eq(
      ckt_cert_make_leaf(&key, &ca_key, ca_pem, ca_len, &o, &pem, &pem_len),
      CKT_OK);
  cr_assert_eq(ckt_key_to_pem(&key, NULL, 0, &key_pem, &key_len), CKT_OK);
  snprintf(path, sizeof(path), "%s/node.crt", dir);
  f = fopen(path, "wb");
  cr_assert_not_null(f);
  cr_assert_eq(fwrite(pem, 1, pem_len, f), pem_len);
  fclose(f);
  snprintf(path, sizeof(path), "%s/node.key", dir);
  f = fopen(path, "wb");
  cr_assert_not_null(f);
  cr_assert_eq(fwrite(key_pem, 1, key_len, f), key_len);
  fclose(f);
  ckt_key_wipe(&key);
  ckt_key_wipe(&ca_key);
  ckt_free(ca_pem);
  ckt_free(pem);
  ckt_free(key_pem);
}

Test(node, an_expired_certificate_is_refused_on_both_sides) {
  char dir[700], saddr[64];
  logbuf slog;
  ckt_node_config cfg;
  ckt_node *srv, *cl;
  node_opts co = {.call_timeout_ms = 3000};
  ckt_message *reply = NULL;
  int rv;
  make_expired_identity(dir, sizeof(dir));
  logbuf_init(&slog);
  ckt_node_config_init(&cfg);
  cfg.listen = "127.0.0.1:0";
  cfg.serve = 1;
  cfg.cert_dir = dir;
  cfg.log = log_line;
  cfg.log_user = &slog;
  cr_assert_eq(ckt_node_new(&cfg, &srv), CKT_OK);
  cr_assert_eq(ckt_node_start(srv), CKT_OK);
  ckt_node_address(srv, saddr, sizeof(saddr));
  ckt_node_register_call(srv, "echo", echo, NULL);
  cl = start_node(&co, NULL, 0);
  rv = call(cl, saddr, "echo", "hi", 3000, &reply);
  cr_assert_eq(rv, CKT_ERR_TLS, "rv %d: %s", rv,
               reply && reply->err ? reply->err : "");
  cr_assert(reply && reply->err && strstr(reply->err, "expired"),
            "client hears: %s", reply && reply->err ? reply->err : "");
  ckt_message_free(reply);
  for (int i = 0; i < 300 && !log_has(&slog, "refused"); i++) {
    usleep(10 * 1000);
  }
  cr_assert(log_has(&slog, "refused") || log_has(&slog, "expired") ||
                log_has(&slog, "certificate"),
            "server log: %s", slog.text);
  ckt_node_free(cl);
  ckt_node_free(srv);
}
