/*
 * test_peer.c — peers and circuits between nodes over real UDP on
 * loopback.  Peer code runs on the loop; the test thread drives it with
 * ckt_node_post() and waits on what the callbacks record.
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ckt/ckt.h"

static char root[] = "/tmp/ckt-test-peer-XXXXXX";

ReportHook(PRE_ALL)(struct criterion_test_set *set) {
  char certs[600], priv[600];
  (void)set;
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    exit(1);
  }
  snprintf(certs, sizeof(certs), "%s/certs", root);
  snprintf(priv, sizeof(priv), "%s/private", root);
  if (ckt_identity_make(certs, "node", priv, NULL, NULL) != CKT_OK ||
      ckt_identity_make(certs, "client", priv, NULL, NULL) != CKT_OK) {
    exit(1);
  }
  setenv("CKT_TEST_CERTS", certs, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
  char cmd[700];
  (void)stats;
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
  if (system(cmd) != 0) {
    fprintf(stderr, "test_peer: cannot remove %s\n", root);
  }
}

/* ---- a recording service ------------------------------------------------- */

#define MAX_EVENTS 4096

/* What one node's peers saw; guarded by mu, waited on with cv. */
typedef struct seen {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, opened, fragments, errors, closed, closed_remote;
  int64_t last_part;
  int in_order; /* every fragment's part was the previous + 1 per circuit */
  char last_reason[512];
  char last_payload[256];
  ckt_peer *peer;       /* the last peer started */
  ckt_circuit *circuit; /* the last circuit opened to us */
  int echo;             /* send every fragment back */
} seen;

static void seen_init(seen *s) {
  memset(s, 0, sizeof(*s));
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->in_order = 1;
  s->last_part = -1;
}

static void on_started(ckt_peer *p, void *user) {
  seen *s = user;
  pthread_mutex_lock(&s->mu);
  s->started++;
  s->peer = p;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static int on_new(ckt_peer *p, ckt_circuit *c, const ckt_fragment *open,
                  void *user) {
  seen *s = user;
  (void)p, (void)open;
  pthread_mutex_lock(&s->mu);
  s->opened++;
  s->circuit = c;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return 0;
}

static void on_fragment(ckt_peer *p, ckt_circuit *c, const ckt_fragment *f,
                        void *user) {
  seen *s = user;
  (void)p;
  pthread_mutex_lock(&s->mu);
  s->fragments++;
  if (f->part != s->last_part + 1 && f->part != 0) {
    s->in_order = 0;
  }
  s->last_part = f->part;
  snprintf(s->last_payload, sizeof(s->last_payload), "%.*s",
           (int)(f->payload_len < 200 ? f->payload_len : 200),
           (const char *)f->payload);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (s->echo) {
    ckt_fragment *back = NULL;
    cr_assert_eq(ckt_fragment_copy(f, &back), CKT_OK);
    cr_assert_eq(ckt_circuit_send(c, back), CKT_OK);
  }
}

static void on_error(ckt_peer *p, ckt_circuit *c, const ckt_fragment *f,
                     void *user) {
  seen *s = user;
  (void)p, (void)c;
  pthread_mutex_lock(&s->mu);
  s->errors++;
  snprintf(s->last_reason, sizeof(s->last_reason), "%s", f->err);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void on_closed(ckt_peer *p, ckt_circuit *c, const char *reason,
                      int remote, void *user) {
  seen *s = user;
  (void)p;
  pthread_mutex_lock(&s->mu);
  s->closed++;
  s->closed_remote += remote;
  if (s->circuit == c) {
    s->circuit = NULL;
  }
  snprintf(s->last_reason, sizeof(s->last_reason), "%s", reason);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static const ckt_peer_service recorder = {
    .started = on_started,
    .circuit_new = on_new,
    .fragment = on_fragment,
    .error = on_error,
    .circuit_closed = on_closed,
};

/* Waits up to 5 s until *field >= want. */
static int wait_for(seen *s, const int *field, int want) {
  struct timespec until;
  int v;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 5;
  pthread_mutex_lock(&s->mu);
  while (*field < want && pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0) {
  }
  v = *field;
  pthread_mutex_unlock(&s->mu);
  return v;
}

static ckt_node *node(int serve, seen *s, char *addr, size_t n) {
  ckt_node_config cfg;
  ckt_node *nd;
  ckt_node_config_init(&cfg);
  cfg.listen = "127.0.0.1:0";
  cfg.serve = serve;
  cfg.cert_dir = getenv("CKT_TEST_CERTS");
  cfg.idle_timeout_ms = 2000;
  cr_assert_eq(ckt_node_new(&cfg, &nd), CKT_OK);
  cr_assert_eq(ckt_node_register_peer_service(nd, "chat", &recorder, s),
               CKT_OK);
  {
    ckt_peer_service solo = recorder;
    solo.max_instances = 1;
    cr_assert_eq(ckt_node_register_peer_service(nd, "solo", &solo, s), CKT_OK);
  }
  {
    /* "versioned" is version 2 on servers and 3 on clients. */
    ckt_peer_service v = recorder;
    v.version = serve ? 2 : 3;
    cr_assert_eq(ckt_node_register_peer_service(nd, "versioned", &v, s),
                 CKT_OK);
  }
  cr_assert_eq(ckt_node_start(nd), CKT_OK);
  if (addr) {
    ckt_node_address(nd, addr, n);
  }
  return nd;
}

/* ---- running code on a node's loop --------------------------------------- */

typedef struct job {
  void (*fn)(struct job *);
  ckt_node *n;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, rv;
  const char *text;
  char url[CKT_PEER_URL_MAX];
  ckt_peer *peer;
  ckt_circuit *circuit;
  int count;
} job;

static void job_run(void *arg) {
  job *j = arg;
  j->fn(j);
  pthread_mutex_lock(&j->mu);
  j->done = 1;
  pthread_cond_broadcast(&j->cv);
  pthread_mutex_unlock(&j->mu);
}

static void on_loop(ckt_node *n, job *j, void (*fn)(job *)) {
  j->fn = fn;
  j->n = n;
  j->done = 0;
  pthread_mutex_init(&j->mu, NULL);
  pthread_cond_init(&j->cv, NULL);
  cr_assert_eq(ckt_node_post(n, job_run, j), CKT_OK);
  pthread_mutex_lock(&j->mu);
  while (!j->done) {
    pthread_cond_wait(&j->cv, &j->mu);
  }
  pthread_mutex_unlock(&j->mu);
}

static void do_start(job *j) {
  j->rv = ckt_node_start_peer(j->n, "chat", &j->peer);
  if (j->rv == CKT_OK) {
    snprintf(j->url, sizeof(j->url), "%s", ckt_peer_url(j->peer));
  }
}

static ckt_fragment *frag(const char *text, int64_t part) {
  ckt_fragment *f = ckt_fragment_new();
  cr_assert_not_null(f);
  cr_assert_eq(ckt_fragment_set_payload(f, text, strlen(text)), CKT_OK);
  f->part = part;
  return f;
}

static ckt_fragment *sized_local(size_t n) {
  ckt_fragment *f = ckt_fragment_new();
  uint8_t *p = calloc(1, n);
  cr_assert_not_null(p);
  cr_assert_eq(ckt_fragment_set_payload(f, p, n), CKT_OK);
  free(p);
  return f;
}

static void do_open(job *j) {
  j->rv = ckt_peer_open_circuit(j->peer, j->url, "talk",
                                frag(j->text ? j->text : "hello", 0), NULL,
                                &j->circuit);
}

static void do_send_many(job *j) {
  int i;
  for (i = 1; i <= j->count; ++i) {
    char text[32];
    snprintf(text, sizeof(text), "msg %d", i);
    j->rv = ckt_circuit_send(j->circuit, frag(text, i));
    if (j->rv != CKT_OK) {
      return;
    }
  }
}

static void do_close(job *j) {
  ckt_circuit_close(j->circuit, j->text);
}

static void do_stop_peer(job *j) {
  ckt_peer_stop(j->peer);
}

static void do_send_error(job *j) {
  j->rv = ckt_circuit_send_error(j->circuit, j->text);
}

/* ---- tests ----------------------------------------------------------------
 */

Test(peer, urls_round_trip_and_reject_garbage) {
  ckt_url u;
  char out[CKT_PEER_URL_MAX];
  const char *good =
      "ckt://127.0.0.1:7100/chat/00112233445566778899aabbccddeeff";
  const char *with_circuit =
      "ckt://[::1]:7100/chat/00112233445566778899aabbccddeeff/"
      "ffeeddccbbaa99887766554433221100";
  cr_assert_eq(ckt_url_parse(good, &u), CKT_OK);
  cr_assert_str_eq(u.host_port, "127.0.0.1:7100");
  cr_assert_str_eq(u.service, "chat");
  cr_assert_eq(u.peer_id[15], 0xff);
  cr_assert_eq(ckt_url_format(&u, out, sizeof(out)), CKT_OK);
  cr_assert_str_eq(out, good);
  cr_assert_eq(ckt_url_parse(with_circuit, &u), CKT_OK);
  cr_assert(u.has_circuit);
  cr_assert_eq(ckt_url_format(&u, out, sizeof(out)), CKT_OK);
  cr_assert_str_eq(out, with_circuit);
  cr_assert_eq(ckt_url_parse("http://x/chat/00", &u), CKT_ERR_FORMAT);
  cr_assert_eq(ckt_url_parse("ckt://h:1/chat/0011", &u), CKT_ERR_FORMAT);
  cr_assert_eq(ckt_url_parse("ckt://h:1//00112233445566778899aabbccddeeff", &u),
               CKT_ERR_FORMAT);
  cr_assert_eq(ckt_url_parse("ckt://h:1/chat", &u), CKT_ERR_FORMAT);
}

Test(peer, circuit_between_a_client_and_a_server_both_ways) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  job j;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  memset(&j, 0, sizeof(j));

  /* A peer on the server (the server role), one on the client. */
  on_loop(srv, &j, do_start);
  cr_assert_eq(j.rv, CKT_OK);
  {
    char srv_url[CKT_PEER_URL_MAX];
    snprintf(srv_url, sizeof(srv_url), "%s", j.url);
    on_loop(cli, &j, do_start);
    cr_assert_eq(j.rv, CKT_OK);
    cr_assert_str_neq(j.url, srv_url, "every peer has its own ID");
    snprintf(j.url, sizeof(j.url), "%s", srv_url);
  }
  /* The client's peer opens a circuit with a first fragment. */
  j.text = "hello server";
  on_loop(cli, &j, do_open);
  cr_assert_eq(j.rv, CKT_OK);
  cr_assert_eq(wait_for(&ss, &ss.opened, 1), 1);
  cr_assert_eq(wait_for(&ss, &ss.fragments, 1), 1);
  cr_assert_str_eq(ss.last_payload, "hello server");

  /* 500 fragments arrive in order. */
  j.count = 500;
  on_loop(cli, &j, do_send_many);
  cr_assert_eq(j.rv, CKT_OK);
  cr_assert_eq(wait_for(&ss, &ss.fragments, 501), 501);
  cr_assert(ss.in_order);

  /* The server's peer answers on the same circuit (either side talks). */
  {
    job k;
    memset(&k, 0, sizeof(k));
    pthread_mutex_lock(&ss.mu);
    k.circuit = ss.circuit;
    pthread_mutex_unlock(&ss.mu);
    k.count = 3;
    on_loop(srv, &k, do_send_many);
    cr_assert_eq(k.rv, CKT_OK);
    cr_assert_eq(wait_for(&cs, &cs.fragments, 3), 3);
    k.text = "a user-level error";
    on_loop(srv, &k, do_send_error);
    cr_assert_eq(wait_for(&cs, &cs.errors, 1), 1);
    cr_assert_str_eq(cs.last_reason, "a user-level error");
  }

  /* Closing tells both ends, the remote with the reason. */
  j.text = "done talking";
  on_loop(cli, &j, do_close);
  cr_assert_eq(wait_for(&cs, &cs.closed, 1), 1);
  cr_assert_eq(cs.closed_remote, 0);
  cr_assert_eq(wait_for(&ss, &ss.closed, 1), 1);
  cr_assert_eq(ss.closed_remote, 1);
  cr_assert_str_eq(ss.last_reason, "done talking");
  ckt_node_free(cli);
  ckt_node_free(srv);
}

static void note_started(ckt_node *n, int err, const char *url, const char *why,
                         void *user) {
  job *j = user;
  (void)n;
  pthread_mutex_lock(&j->mu);
  j->rv = err;
  snprintf(j->url, sizeof(j->url), "%s", url ? url : (why ? why : ""));
  j->done = 1;
  pthread_cond_broadcast(&j->cv);
  pthread_mutex_unlock(&j->mu);
}

static void remote_start(ckt_node *n, const char *where, const char *service,
                         job *j) {
  memset(j, 0, sizeof(*j));
  pthread_mutex_init(&j->mu, NULL);
  pthread_cond_init(&j->cv, NULL);
  cr_assert_eq(ckt_node_start_remote_peer(n, where, service, note_started, j),
               CKT_OK);
  pthread_mutex_lock(&j->mu);
  while (!j->done) {
    pthread_cond_wait(&j->cv, &j->mu);
  }
  pthread_mutex_unlock(&j->mu);
}

Test(peer, remote_peer_start_gives_a_url_and_a_restart_a_new_id) {
  seen ss, cs;
  char saddr[80], first[CKT_PEER_URL_MAX];
  ckt_node *srv, *cli;
  ckt_url u;
  job j;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  remote_start(cli, saddr, "chat", &j);
  cr_assert_eq(j.rv, CKT_OK, "%s", j.url);
  cr_assert_eq(ckt_url_parse(j.url, &u), CKT_OK, "%s", j.url);
  cr_assert_str_eq(u.host_port, saddr);
  cr_assert_str_eq(u.service, "chat");
  cr_assert_eq(wait_for(&ss, &ss.started, 1), 1);
  snprintf(first, sizeof(first), "%s", j.url);
  /* The peer stops; a new start is a new peer with a new ID. */
  {
    job k;
    memset(&k, 0, sizeof(k));
    k.peer = ss.peer;
    on_loop(srv, &k, do_stop_peer);
  }
  remote_start(cli, saddr, "chat", &j);
  cr_assert_eq(j.rv, CKT_OK);
  cr_assert_str_neq(j.url, first);
  /* An unknown service is refused with a clear error. */
  remote_start(cli, saddr, "nosuch", &j);
  cr_assert_eq(j.rv, CKT_ERR_NO_SERVICE);
  cr_assert(strstr(j.url, "no peer service 'nosuch'"), "%s", j.url);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(peer, circuits_to_gone_peers_and_unknown_services_are_refused) {
  seen ss, cs;
  char saddr[80], url[CKT_PEER_URL_MAX];
  ckt_node *srv, *cli;
  job j;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  memset(&j, 0, sizeof(j));
  on_loop(cli, &j, do_start);
  /* A peer ID nobody has. */
  snprintf(url, sizeof(url), "ckt://%s/chat/0123456789abcdef0123456789abcdef",
           saddr);
  snprintf(j.url, sizeof(j.url), "%s", url);
  on_loop(cli, &j, do_open);
  cr_assert_eq(j.rv, CKT_OK, "opening costs no round trip");
  cr_assert_eq(wait_for(&cs, &cs.closed, 1), 1);
  cr_assert(strstr(cs.last_reason, "refused: no peer 0123456789abcdef"), "%s",
            cs.last_reason);
  /* A service the server does not have. */
  snprintf(j.url, sizeof(j.url),
           "ckt://%s/nosuch/0123456789abcdef0123456789abcdef", saddr);
  on_loop(cli, &j, do_open);
  cr_assert_eq(wait_for(&cs, &cs.closed, 2), 2);
  cr_assert(strstr(cs.last_reason, "no peer service 'nosuch'"), "%s",
            cs.last_reason);
  cr_assert_eq(ss.opened, 0);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(peer, a_stopping_peer_closes_its_circuits_on_both_ends) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  job j, k;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  memset(&j, 0, sizeof(j));
  memset(&k, 0, sizeof(k));
  on_loop(srv, &k, do_start);
  on_loop(cli, &j, do_start);
  snprintf(j.url, sizeof(j.url), "%s", k.url);
  on_loop(cli, &j, do_open);
  on_loop(cli, &j, do_open);
  cr_assert_eq(wait_for(&ss, &ss.opened, 2), 2);
  on_loop(srv, &k, do_stop_peer);
  cr_assert_eq(wait_for(&cs, &cs.closed, 2), 2);
  cr_assert_eq(cs.closed_remote, 2);
  cr_assert_str_eq(cs.last_reason, "peer stopped");
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(peer, a_lost_connection_closes_every_circuit_on_both_sides) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  job j, k;
  int i;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  memset(&j, 0, sizeof(j));
  memset(&k, 0, sizeof(k));
  on_loop(srv, &k, do_start);
  on_loop(cli, &j, do_start);
  snprintf(j.url, sizeof(j.url), "%s", k.url);
  for (i = 0; i < 3; ++i) {
    on_loop(cli, &j, do_open);
  }
  cr_assert_eq(wait_for(&ss, &ss.opened, 3), 3);
  /* The client's whole node goes away without closing its circuits one
   * by one: the server must close all three itself. */
  ckt_node_free(cli);
  cr_assert_eq(wait_for(&ss, &ss.closed, 3), 3);
  cr_assert_eq(ss.closed_remote, 3);
  ckt_node_free(srv);
}

Test(peer, one_thousand_circuits_on_one_connection) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  job j, k;
  int i;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  memset(&j, 0, sizeof(j));
  memset(&k, 0, sizeof(k));
  on_loop(srv, &k, do_start);
  on_loop(cli, &j, do_start);
  snprintf(j.url, sizeof(j.url), "%s", k.url);
  for (i = 0; i < 1000; ++i) {
    on_loop(cli, &j, do_open);
    cr_assert_eq(j.rv, CKT_OK);
  }
  cr_assert_eq(wait_for(&ss, &ss.opened, 1000), 1000);
  cr_assert_eq(wait_for(&ss, &ss.fragments, 1000), 1000);
  {
    ckt_node_stats st;
    ckt_node_get_stats(cli, &st);
    cr_assert_eq(st.connections_open, 1);
  }
  ckt_node_free(cli);
  ckt_node_free(srv);
}

static void do_send_big(job *j) {
  ckt_fragment *f = ckt_fragment_new();
  size_t size = (size_t)j->count;
  uint8_t *p = calloc(1, size);
  cr_assert_not_null(p);
  cr_assert_eq(ckt_fragment_set_payload(f, p, size), CKT_OK);
  free(p);
  j->rv = ckt_circuit_send(j->circuit, f);
}

Test(peer, a_fragment_at_the_size_limit_and_one_past_it) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  job j, k;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  memset(&j, 0, sizeof(j));
  memset(&k, 0, sizeof(k));
  on_loop(srv, &k, do_start);
  on_loop(cli, &j, do_start);
  snprintf(j.url, sizeof(j.url), "%s", k.url);
  on_loop(cli, &j, do_open);
  cr_assert_eq(wait_for(&ss, &ss.fragments, 1), 1);
  j.count = CKT_FRAGMENT_DEFAULT_MAX_PAYLOAD + 1;
  on_loop(cli, &j, do_send_big);
  cr_assert_eq(j.rv, CKT_ERR_TOO_LARGE);
  j.count = CKT_FRAGMENT_DEFAULT_MAX_PAYLOAD;
  on_loop(cli, &j, do_send_big);
  cr_assert(j.rv == CKT_OK || j.rv == CKT_ERR_AGAIN, "%d", j.rv);
  if (j.rv == CKT_OK) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&ss.mu);
    while (ss.fragments < 2 &&
           pthread_cond_timedwait(&ss.cv, &ss.mu, &until) == 0) {
    }
    pthread_mutex_unlock(&ss.mu);
    cr_assert_eq(ss.fragments, 2, "the 16 MiB fragment arrived");
  }
  ckt_node_free(cli);
  ckt_node_free(srv);
}

static void do_open_extant(job *j) {
  j->rv = ckt_peer_open_circuit_extant(j->peer, j->text, "chat", "extant",
                                       frag("hi", 0), NULL, &j->circuit);
}

Test(peer, prefer_extant_reaches_one_canonical_peer) {
  seen ss, cs1, cs2;
  char saddr[80];
  ckt_node *srv, *c1, *c2;
  job j1, j2;
  seen_init(&ss);
  seen_init(&cs1);
  seen_init(&cs2);
  srv = node(1, &ss, saddr, sizeof(saddr));
  c1 = node(0, &cs1, NULL, 0);
  c2 = node(0, &cs2, NULL, 0);
  memset(&j1, 0, sizeof(j1));
  memset(&j2, 0, sizeof(j2));
  on_loop(c1, &j1, do_start);
  on_loop(c2, &j2, do_start);
  j1.text = saddr;
  j2.text = saddr;
  on_loop(c1, &j1, do_open_extant);
  cr_assert_eq(wait_for(&ss, &ss.opened, 1), 1);
  on_loop(c1, &j1, do_open_extant);
  on_loop(c2, &j2, do_open_extant);
  cr_assert_eq(wait_for(&ss, &ss.opened, 3), 3);
  cr_assert_eq(ss.started, 1, "one peer started, the others reused it");
  ckt_node_free(c1);
  ckt_node_free(c2);
  ckt_node_free(srv);
}

Test(peer, a_limited_service_refuses_a_second_instance_naming_the_first) {
  seen ss, cs;
  char saddr[80], first[CKT_PEER_URL_MAX];
  ckt_node *srv, *cli;
  job j;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  remote_start(cli, saddr, "solo", &j);
  cr_assert_eq(j.rv, CKT_OK, "%s", j.url);
  snprintf(first, sizeof(first), "%s", j.url);
  remote_start(cli, saddr, "solo", &j);
  cr_assert_eq(j.rv, CKT_ERR_LIMIT, "%s", j.url);
  /* The error names the running peer (its ID, at the server's address). */
  cr_assert(strstr(j.url, strrchr(first, '/') + 1), "%s", j.url);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* ---- the thread-facing layer --------------------------------------------- */

Test(peer, thread_peers_open_accept_send_receive_and_close) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv = node(1, &ss, saddr, sizeof(saddr));
  ckt_node *cli = node(0, &cs, NULL, 0);
  ckt_tpeer *a, *b;
  ckt_tcircuit *at, *bt;
  ckt_fragment *f = NULL;
  seen_init(&ss);
  seen_init(&cs);
  cr_assert_eq(ckt_tpeer_start(srv, "tchat", &a), CKT_OK);
  cr_assert_eq(ckt_tpeer_start(cli, "tchat", &b), CKT_OK);
  cr_assert_eq(ckt_tpeer_open(b, ckt_tpeer_url(a), "t", frag("hello", 0), &bt),
               CKT_OK);
  cr_assert_eq(ckt_tpeer_accept(a, 5000, &at), CKT_OK);
  cr_assert_eq(ckt_tcircuit_recv(at, 5000, &f), CKT_OK);
  cr_assert_eq(f->payload_len, 5);
  cr_assert_eq(memcmp(f->payload, "hello", 5), 0);
  ckt_fragment_free(f);
  cr_assert_eq(ckt_tcircuit_send(at, frag("hi back", 0)), CKT_OK);
  cr_assert_eq(ckt_tcircuit_recv(bt, 5000, &f), CKT_OK);
  cr_assert_eq(memcmp(f->payload, "hi back", 7), 0);
  ckt_fragment_free(f);
  cr_assert_eq(ckt_tcircuit_send_error(at, "not quite"), CKT_OK);
  cr_assert_eq(ckt_tcircuit_recv(bt, 5000, &f), CKT_OK);
  cr_assert_eq(f->type, CKT_FRAG_ERROR);
  cr_assert_str_eq(f->err, "not quite");
  ckt_fragment_free(f);
  cr_assert_eq(ckt_tcircuit_recv(bt, 100, &f), CKT_ERR_TIMEOUT);
  ckt_tcircuit_close(bt, "bye");
  cr_assert_eq(ckt_tcircuit_recv(at, 5000, &f), CKT_ERR_CLOSED);
  cr_assert_str_eq(ckt_tcircuit_reason(at), "bye");
  ckt_tcircuit_close(at, NULL);
  ckt_tpeer_stop(a);
  ckt_tpeer_stop(b);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

static ckt_fragment *sized(size_t n, int64_t part) {
  ckt_fragment *f = ckt_fragment_new();
  uint8_t *p = calloc(1, n);
  cr_assert_not_null(p);
  cr_assert_eq(ckt_fragment_set_payload(f, p, n), CKT_OK);
  free(p);
  f->part = part;
  return f;
}

Test(peer, a_stalled_reader_holds_back_only_its_own_circuit) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv = node(1, &ss, saddr, sizeof(saddr));
  ckt_node *cli = node(0, &cs, NULL, 0);
  ckt_tpeer *a, *b;
  ckt_tcircuit *slow_a, *slow_b, *fast_a, *fast_b;
  ckt_fragment *f = NULL;
  int sent = 0, i, rv = CKT_OK;
  seen_init(&ss);
  seen_init(&cs);
  cr_assert_eq(ckt_tpeer_start(srv, "tchat", &a), CKT_OK);
  cr_assert_eq(ckt_tpeer_start(cli, "tchat", &b), CKT_OK);
  cr_assert_eq(ckt_tpeer_open(b, ckt_tpeer_url(a), "slow", NULL, &slow_b),
               CKT_OK);
  cr_assert_eq(ckt_tpeer_open(b, ckt_tpeer_url(a), "fast", NULL, &fast_b),
               CKT_OK);
  /* Open frames travel with the first fragment: send one on each. */
  cr_assert_eq(ckt_tcircuit_send(slow_b, sized(16, 0)), CKT_OK);
  cr_assert_eq(ckt_tcircuit_send(fast_b, sized(16, 0)), CKT_OK);
  cr_assert_eq(ckt_tpeer_accept(a, 5000, &slow_a), CKT_OK);
  cr_assert_eq(ckt_tpeer_accept(a, 5000, &fast_a), CKT_OK);
  if (strcmp(ckt_tcircuit_name(slow_a), "slow") != 0) {
    ckt_tcircuit *t = slow_a; /* they may arrive in either order */
    slow_a = fast_a;
    fast_a = t;
  }
  cr_assert_str_eq(ckt_tcircuit_name(slow_a), "slow");
  cr_assert_str_eq(ckt_tcircuit_name(fast_a), "fast");
  /* Nobody reads slow_a.  Its sender must be held back: sends soon say
   * "again" (bounded buffering all the way), instead of piling up. */
  for (i = 1; i < 5000; ++i) {
    rv = ckt_tcircuit_send(slow_b, sized(64 * 1024, i));
    if (rv == CKT_ERR_AGAIN) {
      usleep(2000);
      rv = ckt_tcircuit_send(slow_b, sized(64 * 1024, i));
      if (rv == CKT_ERR_AGAIN) {
        break;
      }
    }
    cr_assert_eq(rv, CKT_OK);
    sent = i;
  }
  cr_assert_eq(rv, CKT_ERR_AGAIN, "the stalled circuit was never held back");
  cr_assert_lt(sent, 400, "at most a few windows were buffered (%d)", sent);
  /* Meanwhile the other circuit flows freely. */
  cr_assert_eq(ckt_tcircuit_recv(fast_a, 5000, &f), CKT_OK);
  ckt_fragment_free(f);
  for (i = 1; i <= 200; ++i) {
    cr_assert_eq(ckt_tcircuit_send(fast_b, sized(1000, i)), CKT_OK);
  }
  for (i = 1; i <= 200; ++i) {
    cr_assert_eq(ckt_tcircuit_recv(fast_a, 5000, &f), CKT_OK, "fast %d", i);
    cr_assert_eq(f->part, i);
    ckt_fragment_free(f);
  }
  /* The stalled reader catches up: everything arrives, in order. */
  cr_assert_eq(ckt_tcircuit_recv(slow_a, 5000, &f), CKT_OK);
  cr_assert_eq(f->part, 0);
  ckt_fragment_free(f);
  for (i = 1; i <= sent; ++i) {
    cr_assert_eq(ckt_tcircuit_recv(slow_a, 5000, &f), CKT_OK, "slow %d", i);
    cr_assert_eq(f->part, i);
    ckt_fragment_free(f);
  }
  ckt_tcircuit_close(slow_b, NULL);
  ckt_tcircuit_close(fast_b, NULL);
  ckt_tcircuit_close(slow_a, NULL);
  ckt_tcircuit_close(fast_a, NULL);
  ckt_tpeer_stop(a);
  ckt_tpeer_stop(b);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

static void do_start_versioned(job *j) {
  j->rv = ckt_node_start_peer(j->n, "versioned", &j->peer);
}

static void do_open_versioned(job *j) {
  j->rv = ckt_peer_open_circuit_extant(j->peer, j->text, "versioned", "v",
                                       frag("x", 0), NULL, &j->circuit);
}

Test(peer, a_version_mismatch_is_refused_naming_both_versions) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  job j;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  memset(&j, 0, sizeof(j));
  on_loop(cli, &j, do_start_versioned);
  cr_assert_eq(j.rv, CKT_OK, "%d %s", j.rv, ckt_strerror(j.rv));
  j.text = saddr;
  on_loop(cli, &j, do_open_versioned);
  cr_assert_eq(wait_for(&cs, &cs.closed, 1), 1);
  cr_assert(strstr(cs.last_reason, "version 2") &&
                strstr(cs.last_reason, "version 3"),
            "%s", cs.last_reason);
  cr_assert_eq(ss.opened, 0);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* A client node whose "chat" service records into cs and hears
 * `writable` (the sender's queue has room again). */
static ckt_node *
writable_client(seen *cs, void (*writable)(ckt_peer *, ckt_circuit *, void *)) {
  ckt_node_config cfg;
  ckt_peer_service svc = recorder;
  ckt_node *cli;
  ckt_node_config_init(&cfg);
  cfg.listen = "127.0.0.1:0";
  cfg.cert_dir = getenv("CKT_TEST_CERTS");
  cr_assert_eq(ckt_node_new(&cfg, &cli), CKT_OK);
  svc.writable = writable;
  cr_assert_eq(ckt_node_register_peer_service(cli, "chat", &svc, cs), CKT_OK);
  cr_assert_eq(ckt_node_start(cli), CKT_OK);
  return cli;
}

/* Callback-mode senders: a full queue says "again", then writable. */
typedef struct pump {
  int again, writable, sent;
} pump;

static pump pump_state;

static void pump_writable(ckt_peer *p, ckt_circuit *c, void *user) {
  (void)p, (void)c, (void)user;
  __atomic_add_fetch(&pump_state.writable, 1, __ATOMIC_SEQ_CST);
}

static void do_flood(job *j) {
  int i;
  for (i = 0; i < 200; ++i) {
    int rv = ckt_circuit_send(j->circuit, sized_local(64 * 1024));
    if (rv == CKT_ERR_AGAIN) {
      pump_state.again = 1;
      return;
    }
    pump_state.sent++;
  }
}

Test(peer, a_full_send_queue_says_again_then_writable) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  job j, k;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = writable_client(&cs, pump_writable);
  memset(&j, 0, sizeof(j));
  memset(&k, 0, sizeof(k));
  on_loop(srv, &k, do_start);
  on_loop(cli, &j, do_start);
  snprintf(j.url, sizeof(j.url), "%s", k.url);
  on_loop(cli, &j, do_open);
  cr_assert_eq(wait_for(&ss, &ss.fragments, 1), 1);
  on_loop(cli, &j, do_flood);
  cr_assert(pump_state.again, "sent %d without a full queue", pump_state.sent);
  cr_assert_leq(pump_state.sent, 17, "the queue holds about 1 MiB");
  for (int i = 0;
       i < 100 && !__atomic_load_n(&pump_state.writable, __ATOMIC_SEQ_CST);
       ++i) {
    usleep(50 * 1000);
  }
  cr_assert_gt(pump_state.writable, 0, "no writable after the queue drained");
  cr_assert_eq(wait_for(&ss, &ss.fragments, 1 + pump_state.sent),
               1 + pump_state.sent, "nothing was dropped");
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* Many circuits, each with big fragments in flight at once.  The
 * receiver credits the connection only for whole frames: a sender that
 * left a partial frame on every circuit would fill the window with bytes
 * the receiver cannot finish, and both ends would wait forever. */
#define SPREAD_CIRCUITS 1000
#define SPREAD_FRAGMENTS 1000

typedef struct spread {
  ckt_circuit *c[SPREAD_CIRCUITS];
  int next, sent, failed;
} spread;

static spread spread_state;

static void spread_more(void) {
  spread *s = &spread_state;
  while (s->sent < SPREAD_FRAGMENTS && !s->failed) {
    int rv = ckt_circuit_send(s->c[s->next % SPREAD_CIRCUITS],
                              sized_local(64 * 1024));
    if (rv == CKT_ERR_AGAIN) {
      return; /* that circuit's writable brings us back */
    }
    if (rv != CKT_OK) {
      s->failed = rv;
      return;
    }
    s->sent++;
    s->next++;
  }
}

static void spread_writable(ckt_peer *p, ckt_circuit *c, void *user) {
  (void)p, (void)c, (void)user;
  spread_more();
}

static void do_spread(job *j) {
  int i;
  for (i = 0; i < SPREAD_CIRCUITS; ++i) {
    j->rv = ckt_peer_open_circuit(j->peer, j->url, "spread", NULL, NULL,
                                  &spread_state.c[i]);
    if (j->rv != CKT_OK) {
      return;
    }
  }
  spread_more();
}

Test(peer, big_fragments_on_a_thousand_busy_circuits_all_arrive) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  job j, k;
  int got = 0, i;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = writable_client(&cs, spread_writable);
  memset(&j, 0, sizeof(j));
  memset(&k, 0, sizeof(k));
  on_loop(srv, &k, do_start);
  on_loop(cli, &j, do_start);
  snprintf(j.url, sizeof(j.url), "%s", k.url);
  on_loop(cli, &j, do_spread);
  cr_assert_eq(j.rv, CKT_OK);
  for (i = 0; i < 6 && got < SPREAD_FRAGMENTS; ++i) {
    got = wait_for(&ss, &ss.fragments, SPREAD_FRAGMENTS);
  }
  cr_assert_eq(spread_state.failed, 0, "send: %s",
               ckt_strerror(spread_state.failed));
  cr_assert_eq(got, SPREAD_FRAGMENTS,
               "%d of %d fragments (64 KiB each, over %d circuits) arrived; "
               "%d were sent",
               got, SPREAD_FRAGMENTS, SPREAD_CIRCUITS, spread_state.sent);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* ---- regressions from review -------------------------------------------- */

static void do_open_many(job *j) {
  int i;
  for (i = 0; i < j->count; ++i) {
    ckt_circuit *c;
    j->rv = ckt_peer_open_circuit(j->peer, j->url, "x", frag("x", 0), NULL, &c);
    if (j->rv != CKT_OK) {
      return;
    }
  }
}

static int echo_call(ckt_node *n, const ckt_message *req, ckt_message *reply,
                     void *user) {
  (void)n, (void)user;
  return ckt_message_set_payload(reply, req->payload, req->payload_len);
}

Test(peer, refused_circuits_give_their_streams_back) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  ckt_message *req, *reply = NULL;
  job j;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  ckt_node_register_call(srv, "echo", echo_call, NULL);
  memset(&j, 0, sizeof(j));
  on_loop(cli, &j, do_start);
  /* More refused circuits than the connection has stream slots (1024). */
  snprintf(j.url, sizeof(j.url),
           "ckt://%s/chat/0123456789abcdef0123456789abcdef", saddr);
  j.count = 1100;
  on_loop(cli, &j, do_open_many);
  cr_assert_eq(j.rv, CKT_OK);
  cr_assert_eq(wait_for(&cs, &cs.closed, 1100), 1100);
  req = ckt_message_new();
  ckt_message_set_service(req, "echo");
  cr_assert_eq(ckt_node_call(cli, saddr, req, 5000, &reply), CKT_OK,
               "the connection still has streams for a call");
  ckt_message_free(reply);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(peer, a_stopping_node_says_peer_stopped_to_remote_ends) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  job j, k;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  memset(&j, 0, sizeof(j));
  memset(&k, 0, sizeof(k));
  on_loop(srv, &k, do_start);
  on_loop(cli, &j, do_start);
  snprintf(j.url, sizeof(j.url), "%s", k.url);
  on_loop(cli, &j, do_open);
  cr_assert_eq(wait_for(&ss, &ss.opened, 1), 1);
  ckt_node_free(srv);
  cr_assert_eq(wait_for(&cs, &cs.closed, 1), 1);
  cr_assert_str_eq(cs.last_reason, "peer stopped");
  ckt_node_free(cli);
}

Test(peer, a_stopped_thread_peer_leaves_no_service_behind) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  ckt_tpeer *a;
  job j;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  cr_assert_eq(ckt_tpeer_start(srv, "tchat", &a), CKT_OK);
  ckt_tpeer_stop(a);
  memset(&j, 0, sizeof(j));
  on_loop(cli, &j, do_start);
  j.text = saddr;
  j.rv = ckt_peer_open_circuit_extant(NULL, NULL, NULL, NULL, NULL, NULL, NULL);
  cr_assert_eq(j.rv, CKT_ERR_INVALID_ARGUMENT);
  remote_start(cli, saddr, "tchat", &j);
  cr_assert_eq(j.rv, CKT_ERR_NO_SERVICE, "%s", j.url);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* ---- thread peers: waiting sends, extant and sibling opens --------------- */

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#define BULK_FRAG (256 * 1024)
#ifdef UNDER_ASAN
#define BULK_PARTS 64 /* 16 MiB: ASan moves about 20 MB/s here */
#else
#define BULK_PARTS 256 /* 64 MiB */
#endif

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Word k of the bulk stream: distinct per position, so a lost, repeated
 * or reordered fragment shows. */
static uint32_t bulk_word(uint64_t k) {
  return (uint32_t)((k + 1) * 0x9e3779b97f4a7c15ull >> 29);
}

static ckt_fragment *bulk_frag(int64_t part) {
  ckt_fragment *f = ckt_fragment_new();
  uint32_t *w = malloc(BULK_FRAG);
  uint64_t base = (uint64_t)part * (BULK_FRAG / 4);
  size_t i;
  cr_assert(f && w);
  for (i = 0; i < BULK_FRAG / 4; ++i) {
    w[i] = bulk_word(base + i);
  }
  cr_assert_eq(ckt_fragment_set_payload(f, w, BULK_FRAG), CKT_OK);
  free(w);
  f->part = part;
  return f;
}

/* Reads `parts` bulk fragments, slowly at first; checks every byte. */
typedef struct bulk_reader {
  ckt_tcircuit *tc;
  int parts, got, ok;
  char why[160];
} bulk_reader;

static void *bulk_read(void *arg) {
  bulk_reader *r = arg;
  ckt_fragment *f;
  int i, rv;
  usleep(100 * 1000);
  for (i = 0; i < r->parts; ++i) {
    uint64_t base = (uint64_t)i * (BULK_FRAG / 4);
    size_t k;
    if (i < 8) {
      usleep(10 * 1000); /* a slow start: the sender must wait */
    }
    rv = ckt_tcircuit_recv(r->tc, 5000, &f);
    if (rv != CKT_OK) {
      snprintf(r->why, sizeof(r->why), "part %d: %s", i, ckt_strerror(rv));
      return NULL;
    }
    if (f->part != i || f->payload_len != BULK_FRAG) {
      snprintf(r->why, sizeof(r->why), "part %d: got part %lld of %zu bytes", i,
               (long long)f->part, f->payload_len);
      ckt_fragment_free(f);
      return NULL;
    }
    for (k = 0; k < BULK_FRAG / 4; ++k) {
      uint32_t v;
      memcpy(&v, (const uint8_t *)f->payload + 4 * k, 4);
      if (v != bulk_word(base + k)) {
        snprintf(r->why, sizeof(r->why), "part %d: wrong bytes at %zu", i,
                 4 * k);
        ckt_fragment_free(f);
        return NULL;
      }
    }
    ckt_fragment_free(f);
    r->got++;
  }
  r->ok = 1;
  return NULL;
}

/* Two thread peers (a on the server, b on the client) and a circuit from
 * b to a, accepted. */
typedef struct tpair {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  ckt_tpeer *a, *b;
  ckt_tcircuit *at, *bt;
} tpair;

static void tpair_open(tpair *t) {
  ckt_fragment *f = NULL;
  seen_init(&t->ss);
  seen_init(&t->cs);
  t->srv = node(1, &t->ss, t->saddr, sizeof(t->saddr));
  t->cli = node(0, &t->cs, NULL, 0);
  cr_assert_eq(ckt_tpeer_start(t->srv, "tchat", &t->a), CKT_OK);
  cr_assert_eq(ckt_tpeer_start(t->cli, "tchat", &t->b), CKT_OK);
  cr_assert_eq(ckt_tpeer_open(t->b, ckt_tpeer_url(t->a), "bulk",
                              frag("hello", -1), &t->bt),
               CKT_OK);
  cr_assert_eq(ckt_tpeer_accept(t->a, 5000, &t->at), CKT_OK);
  cr_assert_eq(ckt_tcircuit_recv(t->at, 5000, &f), CKT_OK);
  cr_assert_eq(f->part, -1);
  ckt_fragment_free(f);
}

static void tpair_close(tpair *t) {
  if (t->bt) {
    ckt_tcircuit_close(t->bt, NULL);
  }
  if (t->at) {
    ckt_tcircuit_close(t->at, NULL);
  }
  ckt_tpeer_stop(t->a);
  ckt_tpeer_stop(t->b);
  ckt_node_free(t->cli);
  ckt_node_free(t->srv);
}

Test(peer, send_wait_carries_bulk_data_in_order_through_a_full_queue) {
  tpair t;
  bulk_reader r;
  pthread_t th;
  int part = 0, rv = CKT_OK;
  tpair_open(&t);
  /* Nobody reads yet: plain sends soon find the queue full ("again"; the
   * fragment is gone, so that part is sent again below). */
  for (; part < BULK_PARTS; ++part) {
    rv = ckt_tcircuit_send(t.bt, bulk_frag(part));
    if (rv != CKT_OK) {
      break;
    }
  }
  cr_assert_eq(rv, CKT_ERR_AGAIN, "sent %d parts without a full queue", part);
  /* The reader starts slowly; send_wait waits for room and goes on. */
  memset(&r, 0, sizeof(r));
  r.tc = t.at;
  r.parts = BULK_PARTS;
  cr_assert_eq(pthread_create(&th, NULL, bulk_read, &r), 0);
  for (; part < BULK_PARTS; ++part) {
    rv = ckt_tcircuit_send_wait(t.bt, bulk_frag(part), 5000);
    if (rv != CKT_OK) {
      break;
    }
  }
  pthread_join(th, NULL);
  cr_assert_eq(rv, CKT_OK, "part %d: %s", part, ckt_strerror(rv));
  cr_assert(r.ok, "%s", r.why);
  cr_assert_eq(r.got, BULK_PARTS);
  tpair_close(&t);
}

/* Sends bulk parts with send_wait(timeout_ms) until one times out; the
 * number sent. */
static int fill_until_timeout(ckt_tcircuit *tc, int timeout_ms) {
  int part, rv = CKT_OK;
  for (part = 0; part < 2000; ++part) {
    int64_t t0 = now_ms();
    rv = ckt_tcircuit_send_wait(tc, bulk_frag(part), timeout_ms);
    if (rv != CKT_OK) {
      int64_t waited = now_ms() - t0;
      cr_assert_geq(waited, timeout_ms - 20, "gave up after %lld ms",
                    (long long)waited);
      cr_assert_lt(waited, timeout_ms + 1000, "gave up after %lld ms",
                   (long long)waited);
      break;
    }
  }
  cr_assert_eq(rv, CKT_ERR_TIMEOUT, "%s", ckt_strerror(rv));
  cr_assert_lt(part, 400, "at most a few windows were buffered (%d)", part);
  return part;
}

Test(peer, send_wait_times_out_when_the_reader_never_reads) {
  tpair t;
  ckt_fragment *f;
  int sent, i;
  tpair_open(&t);
  sent = fill_until_timeout(t.bt, 200);
  /* What timed out was not sent: the reader finds exactly the rest. */
  for (i = 0; i < sent; ++i) {
    cr_assert_eq(ckt_tcircuit_recv(t.at, 5000, &f), CKT_OK, "part %d", i);
    cr_assert_eq(f->part, i);
    ckt_fragment_free(f);
  }
  cr_assert_eq(ckt_tcircuit_recv(t.at, 200, &f), CKT_ERR_TIMEOUT);
  /* With room again, send_wait sends at once. */
  cr_assert_eq(ckt_tcircuit_send_wait(t.bt, frag("more", sent), 0), CKT_OK);
  cr_assert_eq(ckt_tcircuit_recv(t.at, 5000, &f), CKT_OK);
  cr_assert_eq(f->part, sent);
  ckt_fragment_free(f);
  tpair_close(&t);
}

typedef struct closer {
  ckt_tcircuit *tc;
  int delay_ms;
} closer;

static void *close_later(void *arg) {
  closer *c = arg;
  usleep((useconds_t)c->delay_ms * 1000);
  ckt_tcircuit_close(c->tc, "enough");
  return NULL;
}

Test(peer, send_wait_says_closed_when_the_remote_closes_while_it_waits) {
  tpair t;
  pthread_t th;
  closer c;
  int64_t t0;
  int rv, n = 0;
  tpair_open(&t);
  fill_until_timeout(t.bt, 200);
  /* The queue is full; the remote end closes while send_wait waits. */
  c.tc = t.at;
  c.delay_ms = 100;
  t.at = NULL;
  cr_assert_eq(pthread_create(&th, NULL, close_later, &c), 0);
  t0 = now_ms();
  /* (Until the close is heard, a send may still find room: the remote end
   * discards what comes after it closed.) */
  do {
    rv = ckt_tcircuit_send_wait(t.bt, bulk_frag(n), -1);
  } while (rv == CKT_OK && ++n < 100);
  cr_assert_eq(rv, CKT_ERR_CLOSED, "%s after %d more", ckt_strerror(rv), n);
  cr_assert_lt(now_ms() - t0, 2000);
  pthread_join(th, NULL);
  cr_assert_str_eq(ckt_tcircuit_reason(t.bt), "enough");
  cr_assert_eq(ckt_tcircuit_send_wait(t.bt, frag("late", 0), -1),
               CKT_ERR_CLOSED);
  cr_assert_eq(ckt_tcircuit_send(t.bt, frag("late", 0)), CKT_ERR_CLOSED);
  tpair_close(&t);
}

Test(peer, open_extant_reaches_the_running_thread_peer) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  ckt_tpeer *a, *b;
  ckt_tcircuit *b1, *b2, *a1, *a2;
  ckt_fragment *f;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  cr_assert_eq(ckt_tpeer_start(srv, "tchat", &a), CKT_OK);
  cr_assert_eq(ckt_tpeer_start(cli, "tchat", &b), CKT_OK);
  cr_assert_eq(
      ckt_tpeer_open_extant(b, saddr, "tchat", "one", frag("1", 1), &b1),
      CKT_OK);
  cr_assert_str_eq(ckt_tcircuit_remote_url(b1), "", "not known yet");
  cr_assert_eq(
      ckt_tpeer_open_extant(b, saddr, "tchat", "two", frag("2", 2), &b2),
      CKT_OK);
  /* Both reach a's peer (no second one started), in either order. */
  cr_assert_eq(ckt_tpeer_accept(a, 5000, &a1), CKT_OK);
  cr_assert_eq(ckt_tpeer_accept(a, 5000, &a2), CKT_OK);
  if (strcmp(ckt_tcircuit_name(a1), "one") != 0) {
    ckt_tcircuit *x = a1;
    a1 = a2;
    a2 = x;
  }
  cr_assert_str_eq(ckt_tcircuit_name(a1), "one");
  cr_assert_str_eq(ckt_tcircuit_name(a2), "two");
  cr_assert_eq(ckt_tcircuit_recv(a2, 5000, &f), CKT_OK);
  cr_assert_eq(f->part, 2);
  ckt_fragment_free(f);
  cr_assert_str_eq(ckt_tcircuit_remote_url(a1), ckt_tpeer_url(b));
  /* The answers tell b which peer that is: a's, for both. */
  cr_assert_eq(ckt_tcircuit_send(a1, frag("back", 1)), CKT_OK);
  cr_assert_eq(ckt_tcircuit_send(a2, frag("back", 2)), CKT_OK);
  cr_assert_eq(ckt_tcircuit_recv(b1, 5000, &f), CKT_OK);
  ckt_fragment_free(f);
  cr_assert_eq(ckt_tcircuit_recv(b2, 5000, &f), CKT_OK);
  ckt_fragment_free(f);
  cr_assert_str_eq(ckt_tcircuit_remote_url(b1), ckt_tpeer_url(a));
  cr_assert_str_eq(ckt_tcircuit_remote_url(b2), ckt_tpeer_url(a));
  cr_assert_eq(ckt_tpeer_accept(a, 100, &a1), CKT_ERR_TIMEOUT);
  ckt_tcircuit_close(b1, NULL);
  ckt_tcircuit_close(b2, NULL);
  ckt_tcircuit_close(a1, NULL);
  ckt_tcircuit_close(a2, NULL);
  ckt_tpeer_stop(a);
  ckt_tpeer_stop(b);
  ckt_node_free(cli);
  ckt_node_free(srv);
}

Test(peer, open_sibling_reaches_the_same_remote_thread_peer) {
  tpair t;
  ckt_tcircuit *bs, *as, *back_a, *back_b;
  ckt_fragment *f;
  tpair_open(&t);
  cr_assert_eq(ckt_tcircuit_open_sibling(t.bt, "sibling", frag("sib", 7), &bs),
               CKT_OK);
  cr_assert_str_eq(ckt_tcircuit_remote_url(bs), ckt_tpeer_url(t.a));
  cr_assert_eq(ckt_tpeer_accept(t.a, 5000, &as), CKT_OK);
  cr_assert_str_eq(ckt_tcircuit_name(as), "sibling");
  cr_assert_str_eq(ckt_tcircuit_remote_url(as), ckt_tcircuit_remote_url(t.at));
  cr_assert_eq(ckt_tcircuit_recv(as, 5000, &f), CKT_OK);
  cr_assert_eq(f->part, 7);
  ckt_fragment_free(f);
  /* The accepting side may open siblings too: they reach b. */
  cr_assert_eq(ckt_tcircuit_open_sibling(as, "back", NULL, &back_a), CKT_OK);
  cr_assert_eq(ckt_tcircuit_send(back_a, frag("b", 8)), CKT_OK);
  cr_assert_eq(ckt_tpeer_accept(t.b, 5000, &back_b), CKT_OK);
  cr_assert_str_eq(ckt_tcircuit_name(back_b), "back");
  cr_assert_str_eq(ckt_tcircuit_remote_url(back_b), ckt_tpeer_url(t.a));
  /* A closed circuit has no siblings. */
  ckt_tcircuit_close(as, "done");
  cr_assert_eq(ckt_tcircuit_recv(bs, 5000, &f), CKT_ERR_CLOSED);
  cr_assert_eq(ckt_tcircuit_open_sibling(bs, "x", frag("x", 0), &as),
               CKT_ERR_CLOSED);
  ckt_tcircuit_close(bs, NULL);
  ckt_tcircuit_close(back_a, NULL);
  ckt_tcircuit_close(back_b, NULL);
  tpair_close(&t);
}

Test(peer, a_thread_service_s_other_peers_share_its_queue_and_stop_with_it) {
  seen ss, cs;
  char saddr[80];
  ckt_node *srv, *cli;
  ckt_tpeer *a, *b;
  ckt_tcircuit *at, *bt, *at2, *bt2;
  ckt_fragment *f;
  job j;
  seen_init(&ss);
  seen_init(&cs);
  srv = node(1, &ss, saddr, sizeof(saddr));
  cli = node(0, &cs, NULL, 0);
  cr_assert_eq(ckt_tpeer_start(srv, "tchat", &a), CKT_OK);
  cr_assert_eq(ckt_tpeer_start(cli, "tchat", &b), CKT_OK);
  /* A remote node starts a second peer of a's service. */
  remote_start(cli, saddr, "tchat", &j);
  cr_assert_eq(j.rv, CKT_OK, "%s", j.url);
  cr_assert_str_neq(j.url, ckt_tpeer_url(a));
  cr_assert_eq(ckt_tpeer_open(b, j.url, "other", frag("o", 1), &bt), CKT_OK);
  cr_assert_eq(ckt_tpeer_accept(a, 5000, &at), CKT_OK);
  cr_assert_str_eq(ckt_tcircuit_name(at), "other");
  /* a's own peer still takes circuits. */
  cr_assert_eq(ckt_tpeer_open(b, ckt_tpeer_url(a), "own", NULL, &bt2), CKT_OK);
  cr_assert_eq(ckt_tcircuit_send(bt2, frag("x", 2)), CKT_OK);
  cr_assert_eq(ckt_tpeer_accept(a, 5000, &at2), CKT_OK);
  cr_assert_str_eq(ckt_tcircuit_name(at2), "own");
  /* Stopping a stops the other peer too (its circuits are a's). */
  ckt_tpeer_stop(a);
  cr_assert_eq(ckt_tcircuit_recv(bt, 5000, &f), CKT_ERR_CLOSED);
  cr_assert_str_eq(ckt_tcircuit_reason(bt), "peer stopped");
  cr_assert_eq(ckt_tcircuit_recv(bt2, 5000, &f), CKT_ERR_CLOSED);
  cr_assert_str_eq(ckt_tcircuit_reason(bt2), "peer stopped");
  ckt_tcircuit_close(at, NULL);
  ckt_tcircuit_close(at2, NULL);
  ckt_tcircuit_close(bt, NULL);
  ckt_tcircuit_close(bt2, NULL);
  ckt_tpeer_stop(b);
  ckt_node_free(cli);
  ckt_node_free(srv);
}
