/*
 * test_endpoint.c — a node, attacked by hand-built QUIC clients over real
 * UDP on loopback: clients whose TLS contexts break ckt's rules (RSA
 * certificate, no certificate, expired certificate) and a client that
 * sends a malformed frame.  The clients are the real endpoint and runtime
 * driven directly, so only the TLS context or the bytes differ.
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ngtcp2/ngtcp2_crypto_wolfssl.h>

#include "ckt/ckt.h"
#include "test_logbuf.h"
#include "core_buf.h"
#include "fragment_codec.h"
#include "quic_endpoint.h"
#include "quic_ev.h"
#include "tls_quic.h"

#ifndef FIXTURES_SCRIPT
#error "FIXTURES_SCRIPT must name tests/openssl_fixtures.sh"
#endif

static char root[] = "/tmp/ckt-test-endpoint-XXXXXX";

ReportHook(PRE_ALL)(struct criterion_test_set *set) {
  char cmd[8192], certs[700], priv[700], fx[700];
  (void)set;
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    exit(1);
  }
  snprintf(certs, sizeof(certs), "%s/certs", root);
  snprintf(priv, sizeof(priv), "%s/private", root);
  snprintf(fx, sizeof(fx), "%s/fx", root);
  if (ckt_identity_make(certs, "node", priv, NULL, NULL) != CKT_OK ||
      ckt_identity_make(certs, "client", priv, NULL, NULL) != CKT_OK) {
    exit(1);
  }
  /* openssl-made material: an Ed25519 CA with a valid and an expired
   * leaf, and RSA.  "ossl" is a certs dir in selfy's layout built from it,
   * whose node certificate has expired. */
  if (snprintf(cmd, sizeof(cmd),
               "mkdir -p '%s' && sh '%s' '%s' && d='%s/ossl' && mkdir -p $d && "
               "cp '%s/ossl_ca.crt' $d/ca.crt && "
               "cp '%s/ossl_expired.crt' $d/node.crt && "
               "cp '%s/ossl_leaf.key' $d/node.key && "
               "cp '%s/ossl_leaf.crt' $d/client.crt && "
               "cp '%s/ossl_leaf.key' $d/client.key && "
               "d='%s/rsa' && mkdir -p $d && cp '%s/ossl_ca.crt' $d/ca.crt && "
               "cp '%s/rsa.crt' $d/node.crt && cp '%s/rsa.key' $d/node.key",
               fx, FIXTURES_SCRIPT, fx, root, fx, fx, fx, fx, fx, root, fx, fx,
               fx) >= (int)sizeof(cmd) ||
      system(cmd) != 0) {
    fprintf(stderr, "test_endpoint: cannot make fixtures\n");
    exit(1);
  }
  setenv("CKT_TEST_ROOT", root, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
  char cmd[700];
  (void)stats;
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
  if (system(cmd) != 0) {
    fprintf(stderr, "test_endpoint: cannot remove %s\n", root);
  }
}

static const char *path_of(const char *rel, char *buf, size_t n) {
  snprintf(buf, n, "%s/%s", getenv("CKT_TEST_ROOT"), rel);
  return buf;
}

/* ---- the server: a real node -------------------------------------------- */

static int echo(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  (void)n, (void)user;
  return ckt_message_set_payload(reply, req->payload, req->payload_len) ==
                 CKT_OK
             ? 0
             : -1;
}

static ckt_node *server(const char *certs_rel, logbuf *log, char *addr,
                        size_t n) {
  char dir[700];
  ckt_node_config cfg;
  ckt_node *node;
  ckt_node_config_init(&cfg);
  cfg.listen = "127.0.0.1:0";
  cfg.serve = 1;
  cfg.cert_dir = path_of(certs_rel, dir, sizeof(dir));
  cfg.log = log_line;
  cfg.log_user = log;
  logbuf_init(log);
  cr_assert_eq(ckt_node_new(&cfg, &node), CKT_OK);
  cr_assert_eq(ckt_node_register_call(node, "echo", echo, NULL), CKT_OK);
  cr_assert_eq(ckt_node_start(node), CKT_OK);
  ckt_node_address(node, addr, n);
  return node;
}

/* ---- the client: endpoint + runtime driven by hand ---------------------- */

typedef struct client {
  ckt_ev *ev;
  ckt_endpoint *ep;
  WOLFSSL_CTX *ctx;
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  ckt_conn *conn; /* loop thread only */
  int ready, closed, close_err;
  char why[512];
  int resets;
  uint64_t last_app_error;
  ckt_buf rx; /* bytes received on streams */
  int fins;
} client;

static int c_ready(ckt_conn *c, void *user) {
  client *cl = user;
  cl->conn = c;
  pthread_mutex_lock(&cl->mu);
  cl->ready = 1;
  pthread_cond_broadcast(&cl->cv);
  pthread_mutex_unlock(&cl->mu);
  return 0;
}

static void c_closed(ckt_conn *c, int err, const char *why, void *user) {
  client *cl = user;
  (void)c;
  pthread_mutex_lock(&cl->mu);
  cl->closed = 1;
  cl->close_err = err;
  snprintf(cl->why, sizeof(cl->why), "%s", why);
  pthread_cond_broadcast(&cl->cv);
  pthread_mutex_unlock(&cl->mu);
}

static int c_opened(ckt_conn *c, ckt_stream *s, void *user) {
  (void)c, (void)s, (void)user;
  return 0;
}

static int c_data(ckt_conn *c, ckt_stream *s, const uint8_t *data, size_t len,
                  int fin, void *user) {
  client *cl = user;
  (void)c, (void)s;
  pthread_mutex_lock(&cl->mu);
  ckt_buf_append(&cl->rx, data, len);
  cl->fins += fin;
  pthread_cond_broadcast(&cl->cv);
  pthread_mutex_unlock(&cl->mu);
  return 0;
}

static void c_stream_closed(ckt_conn *c, ckt_stream *s, uint64_t app_error,
                            void *user) {
  client *cl = user;
  (void)c, (void)s;
  pthread_mutex_lock(&cl->mu);
  if (app_error) {
    cl->resets++;
    cl->last_app_error = app_error;
  }
  pthread_cond_broadcast(&cl->cv);
  pthread_mutex_unlock(&cl->mu);
}

static void c_datagram(void *user, const ckt_addr *from, const uint8_t *data,
                       size_t len) {
  client *cl = user;
  ckt_endpoint_recv(cl->ep, from, data, len);
}

static void c_batch(void *user) {
  client *cl = user;
  ckt_endpoint_flush(cl->ep);
}

static void *c_loop(void *arg) {
  client *cl = arg;
  ckt_ev_run(cl->ev);
  return NULL;
}

/* kind: "ckt" (a proper client identity), "rsa", "nocert". */
static WOLFSSL_CTX *client_ctx(const char *kind) {
  char buf[700], buf2[700];
  WOLFSSL_CTX *ctx;
  if (strcmp(kind, "ckt") == 0) {
    ckt_tls_config tc;
    ckt_ed25519_key key;
    char *crt, *ca;
    size_t crt_len, ca_len;
    cr_assert_eq(ckt_identity_load(path_of("certs", buf, sizeof(buf)), "client",
                                   NULL, &crt, &crt_len, &key),
                 CKT_OK);
    cr_assert_eq(ckt_pem_file_read(path_of("certs/ca.crt", buf2, sizeof(buf2)),
                                   &ca, &ca_len),
                 CKT_OK);
    memset(&tc, 0, sizeof(tc));
    tc.cert_pem = crt;
    tc.cert_len = crt_len;
    tc.key = &key;
    tc.ca_pem = ca;
    tc.ca_len = ca_len;
    cr_assert_eq(ckt_tls_ctx_new(0, &tc, &ctx), CKT_OK);
    ckt_free(crt);
    ckt_free(ca);
    return ctx;
  }
  /* A client that ignores ckt's rules: no CA check at all, and either an
   * RSA identity or none. */
  ctx = wolfSSL_CTX_new(wolfTLSv1_3_client_method());
  cr_assert_not_null(ctx);
  cr_assert_eq(ngtcp2_crypto_wolfssl_configure_client_context(ctx), 0);
  cr_assert_eq(
      wolfSSL_CTX_set_cipher_list(ctx, "TLS13-CHACHA20-POLY1305-SHA256"),
      WOLFSSL_SUCCESS);
  wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
  if (strcmp(kind, "rsa") == 0) {
    cr_assert_eq(
        wolfSSL_CTX_use_certificate_file(
            ctx, path_of("fx/rsa.crt", buf, sizeof(buf)), WOLFSSL_FILETYPE_PEM),
        WOLFSSL_SUCCESS);
    cr_assert_eq(
        wolfSSL_CTX_use_PrivateKey_file(
            ctx, path_of("fx/rsa.key", buf, sizeof(buf)), WOLFSSL_FILETYPE_PEM),
        WOLFSSL_SUCCESS);
  }
  return ctx;
}

static void client_start(client *cl, const char *kind, const char *peer) {
  ckt_endpoint_config ec;
  ckt_ev_receiver recv;
  ckt_addr local, to;
  memset(cl, 0, sizeof(*cl));
  pthread_mutex_init(&cl->mu, NULL);
  pthread_cond_init(&cl->cv, NULL);
  ckt_buf_init(&cl->rx, 1 << 20);
  cl->ctx = client_ctx(kind);
  cr_assert_eq(ckt_addr_parse("127.0.0.1:0", NULL, &local), CKT_OK);
  cr_assert_eq(ckt_ev_new(&local, &cl->ev), CKT_OK);
  memset(&ec, 0, sizeof(ec));
  ec.client_tls = cl->ctx;
  ec.cb.conn_ready = c_ready;
  ec.cb.conn_closed = c_closed;
  ec.cb.stream_opened = c_opened;
  ec.cb.stream_data = c_data;
  ec.cb.stream_closed = c_stream_closed;
  ec.user = cl;
  cr_assert_eq(ckt_endpoint_new(ckt_ev_runtime(cl->ev),
                                &ckt_ev_udp(cl->ev)->local, &ec, &cl->ep),
               CKT_OK);
  recv.datagram = c_datagram;
  recv.batch_done = c_batch;
  recv.user = cl;
  ckt_ev_set_receiver(cl->ev, &recv);
  cr_assert_eq(ckt_addr_parse(peer, NULL, &to), CKT_OK);
  /* Before the loop runs, this thread may still touch the endpoint. */
  cr_assert_eq(ckt_endpoint_connect(cl->ep, &to, NULL, NULL), CKT_OK);
  cr_assert_eq(pthread_create(&cl->th, NULL, c_loop, cl), 0);
}

static void client_stop(client *cl) {
  ckt_ev_stop(cl->ev);
  pthread_join(cl->th, NULL);
  ckt_endpoint_free(cl->ep);
  ckt_ev_free(cl->ev);
  ckt_tls_ctx_free(cl->ctx);
  ckt_buf_free(&cl->rx);
}

/* Waits until cond(cl) holds or 5 s pass. */
static int client_wait(client *cl, int (*cond)(client *)) {
  struct timespec until;
  int ok;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 5;
  pthread_mutex_lock(&cl->mu);
  while (!(ok = cond(cl)) &&
         pthread_cond_timedwait(&cl->cv, &cl->mu, &until) == 0) {
  }
  pthread_mutex_unlock(&cl->mu);
  return ok;
}

static int is_closed(client *cl) {
  return cl->closed;
}

static int is_ready_or_closed(client *cl) {
  return cl->ready || cl->closed;
}

/* ---- refusals ------------------------------------------------------------ */

static void expect_refused(const char *kind, const char *server_certs,
                           const char *client_text, const char *server_text) {
  logbuf slog;
  char saddr[80];
  ckt_node *srv = server(server_certs, &slog, saddr, sizeof(saddr));
  client cl;
  client_start(&cl, kind, saddr);
  cr_assert(client_wait(&cl, is_closed), "the client was not refused");
  cr_assert_eq(cl.close_err, CKT_ERR_TLS, "%s", cl.why);
  cr_assert(strstr(cl.why, client_text), "client: %s", cl.why);
  client_stop(&cl);
  ckt_node_free(srv);
  cr_assert(log_has(&slog, server_text), "server log: %s", slog.text);
}

Test(endpoint, an_rsa_client_is_refused_on_both_sides) {
  expect_refused("rsa", "certs", "not Ed25519", "not Ed25519");
}

Test(endpoint, a_client_without_certificate_is_refused_on_both_sides) {
  expect_refused("nocert", "certs", "client presented no certificate",
                 "client presented no certificate");
}

Test(endpoint, an_expired_server_certificate_is_refused_on_both_sides) {
  /* ckt's own client against a server whose (openssl-made) certificate
   * has expired: the client refuses, the server hears why. */
  logbuf slog, clog;
  char saddr[80], dir[700];
  ckt_node *srv = server("ossl", &slog, saddr, sizeof(saddr));
  ckt_node_config cfg;
  ckt_node *cli;
  ckt_message *req = ckt_message_new(), *reply = NULL;
  logbuf_init(&clog);
  ckt_node_config_init(&cfg);
  cfg.listen = "127.0.0.1:0";
  cfg.cert_dir = path_of("ossl", dir, sizeof(dir));
  cfg.log = log_line;
  cfg.log_user = &clog;
  cr_assert_eq(ckt_node_new(&cfg, &cli), CKT_OK);
  cr_assert_eq(ckt_node_start(cli), CKT_OK);
  ckt_message_set_service(req, "echo");
  cr_assert_eq(ckt_node_call(cli, saddr, req, 5000, &reply), CKT_ERR_TLS);
  cr_assert(strstr(reply->err, "server's certificate has expired"), "%s",
            reply->err);
  ckt_message_free(reply);
  ckt_node_free(cli);
  ckt_node_free(srv);
  cr_assert(strstr(slog.text, "server's certificate has expired"),
            "server log: %s", slog.text);
}

Test(endpoint, a_node_refuses_to_start_with_an_rsa_identity) {
  char dir[700];
  ckt_node_config cfg;
  ckt_node *n = NULL;
  logbuf log;
  logbuf_init(&log);
  ckt_node_config_init(&cfg);
  cfg.listen = "127.0.0.1:0";
  cfg.serve = 1;
  cfg.cert_dir = path_of("rsa", dir, sizeof(dir));
  cfg.log = log_line;
  cfg.log_user = &log;
  cr_assert_eq(ckt_node_new(&cfg, &n), CKT_ERR_KEY_TYPE);
  cr_assert_null(n);
  cr_assert(strstr(log.text, "not Ed25519"), "%s", log.text);
}

/* ---- a malformed frame kills only its stream ---------------------------- */

typedef struct open_job {
  client *cl;
  const uint8_t *bytes;
  size_t len;
  int done, rv;
} open_job;

/* Runs on the client's loop: opens a stream and writes the bytes + FIN. */
static void open_and_write(void *arg) {
  open_job *j = arg;
  ckt_stream *s;
  j->rv = ckt_conn_open_stream(j->cl->conn, 1, NULL, &s);
  if (j->rv == CKT_OK) {
    j->rv = ckt_stream_write(s, j->bytes, j->len, 1);
  }
  pthread_mutex_lock(&j->cl->mu);
  j->done = 1;
  pthread_cond_broadcast(&j->cl->cv);
  pthread_mutex_unlock(&j->cl->mu);
}

static int run_open(client *cl, const uint8_t *bytes, size_t len) {
  open_job j = {cl, bytes, len, 0, 0};
  ckt_runtime *rt = ckt_ev_runtime(cl->ev);
  cr_assert_eq(rt->ops->post(rt, open_and_write, &j), CKT_OK);
  pthread_mutex_lock(&cl->mu);
  while (!j.done) {
    pthread_cond_wait(&cl->cv, &cl->mu);
  }
  pthread_mutex_unlock(&cl->mu);
  return j.rv;
}

static int has_reset(client *cl) {
  return cl->resets > 0;
}

static int has_fin(client *cl) {
  return cl->fins > 0;
}

Test(endpoint, a_malformed_frame_kills_only_its_stream) {
  static const uint8_t garbage[] = {0x7f, 0, 0, 0, 3, 'b', 'a', 'd'};
  logbuf slog;
  char saddr[80];
  ckt_node *srv = server("certs", &slog, saddr, sizeof(saddr));
  ckt_message *m = ckt_message_new(), *reply = NULL;
  ckt_buf frame;
  client cl;

  client_start(&cl, "ckt", saddr);
  cr_assert(client_wait(&cl, is_ready_or_closed));
  cr_assert(cl.ready, "%s", cl.why);
  cr_assert_eq(run_open(&cl, garbage, sizeof(garbage)), CKT_OK);
  cr_assert(client_wait(&cl, has_reset), "the bad stream was not reset");
  cr_assert_eq(cl.last_app_error, 0x11);
  cr_assert_not(cl.closed, "the connection must survive: %s", cl.why);

  /* A proper call on the same connection still works. */
  m->type = CKT_MSG_CALL;
  m->call_id = 42;
  ckt_message_set_service(m, "echo");
  ckt_message_set_payload(m, "still here", 10);
  ckt_buf_init(&frame, 1 << 16);
  ckt_buf_append(&frame, "\0\0\0\0\0", CKT_FRAME_HEADER_LEN);
  cr_assert_eq(ckt_message_encode(m, &frame), CKT_OK);
  ckt_frame_header_encode(frame.data, CKT_FRAME_MESSAGE,
                          (uint32_t)(frame.len - CKT_FRAME_HEADER_LEN));
  cr_assert_eq(run_open(&cl, frame.data, frame.len), CKT_OK);
  cr_assert(client_wait(&cl, has_fin), "no reply");
  pthread_mutex_lock(&cl.mu);
  cr_assert_gt(cl.rx.len, CKT_FRAME_HEADER_LEN);
  cr_assert_eq(ckt_message_decode(cl.rx.data + CKT_FRAME_HEADER_LEN,
                                  cl.rx.len - CKT_FRAME_HEADER_LEN, NULL,
                                  &reply),
               CKT_OK);
  pthread_mutex_unlock(&cl.mu);
  cr_assert_eq(reply->type, CKT_MSG_REPLY);
  cr_assert_eq(reply->call_id, 42);
  cr_assert_eq(memcmp(reply->payload, "still here", 10), 0);
  ckt_message_free(reply);
  ckt_message_free(m);
  ckt_buf_free(&frame);
  client_stop(&cl);
  ckt_node_free(srv);
  cr_assert(strstr(slog.text, "malformed frame"), "%s", slog.text);
}
