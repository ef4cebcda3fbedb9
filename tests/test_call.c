/*
 * test_call.c — calls in progress (ckt/call.h) over real UDP on loopback:
 * asynchronous handlers, uploads, downloads and bistreams with
 * back-pressure, cancellation on both sides, deadlines enforced by the
 * server, a connection dying mid-stream, and compression (every codec,
 * reader makes right, the per-message opt-out).
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

static char root[] = "/tmp/ckt-test-call-XXXXXX";
static char certs[600];

ReportHook(PRE_ALL)(struct criterion_test_set *set) {
  char priv[600];
  (void)set;
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    exit(1);
  }
  snprintf(certs, sizeof(certs), "%s/certs", root);
  snprintf(priv, sizeof(priv), "%s/private", root);
  if (ckt_identity_make(certs, "node", priv, NULL, NULL) != CKT_OK ||
      ckt_identity_make(certs, "client", priv, NULL, NULL) != CKT_OK) {
    fprintf(stderr, "test_call: cannot make identities\n");
    exit(1);
  }
  setenv("CKT_TEST_CERTS", certs, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
  char cmd[700];
  (void)stats;
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
  if (system(cmd) != 0) {
    fprintf(stderr, "test_call: cannot remove %s\n", root);
  }
}

/* ---- helpers ------------------------------------------------------------- */

/* CALL_LOG=1 shows the nodes' log lines. */
static void quiet(void *user, const char *line) {
  (void)user;
  if (getenv("CALL_LOG")) {
    fprintf(stderr, "log %p: %s\n", user, line);
  }
}

static ckt_node *start_node(int serve, int codec, uint64_t queue_max,
                            char *addr, size_t addr_sz) {
  ckt_node_config cfg;
  ckt_node *n;
  int rv;
  ckt_node_config_init(&cfg);
  cfg.listen = "127.0.0.1:0";
  cfg.serve = serve;
  cfg.cert_dir = getenv("CKT_TEST_CERTS");
  cfg.codec = codec;
  cfg.max_queued_per_circuit = queue_max;
  cfg.log = quiet;
  cfg.log_user = (void *)(uintptr_t)(serve ? 1 : 2);
  rv = ckt_node_new(&cfg, &n);
  cr_assert_eq(rv, CKT_OK, "ckt_node_new: %s", ckt_strerror(rv));
  cr_assert_eq(ckt_node_start(n), CKT_OK);
  if (addr) {
    ckt_node_address(n, addr, addr_sz);
  }
  return n;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* What a test watches, guarded by mu. */
typedef struct box {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, err;
  char why[512];
  ckt_message *reply;
  /* server side */
  ckt_srvcall *sc;
  int started, cancel_why, cancel_cb_runs, parts_in, bad_order, lasts;
  size_t bytes_in;
  int codec_seen;
  /* client side */
  int parts_out, parts_back, again, writable_runs;
  ckt_call *call;
  int total;
  size_t part_size;
} box;

static void box_init(box *b) {
  memset(b, 0, sizeof(*b));
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
}

static void box_free(box *b) {
  ckt_message_free(b->reply);
  pthread_cond_destroy(&b->cv);
  pthread_mutex_destroy(&b->mu);
}

static void on_done(ckt_node *n, int err, const ckt_message *reply,
                    void *user) {
  box *b = user;
  (void)n;
  pthread_mutex_lock(&b->mu);
  b->err = err;
  snprintf(b->why, sizeof(b->why), "%s", reply->err ? reply->err : "");
  ckt_message_copy(reply, &b->reply);
  b->done++;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

/* Waits until *flag >= want (under b->mu) or ms pass; the last value. */
static int wait_for(box *b, const int *flag, int want, unsigned ms) {
  uint64_t until = now_ms() + ms;
  int v;
  pthread_mutex_lock(&b->mu);
  while ((v = *flag) < want && now_ms() < until) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 20 * 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&b->cv, &b->mu, &ts);
  }
  pthread_mutex_unlock(&b->mu);
  return v;
}

static void bump(box *b, int *field, int by) {
  pthread_mutex_lock(&b->mu);
  *field += by;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

static ckt_message *msg(const char *service, const void *payload, size_t len) {
  ckt_message *m = ckt_message_new();
  cr_assert_not_null(m);
  cr_assert_eq(ckt_message_set_service(m, service), CKT_OK);
  cr_assert_eq(ckt_message_set_payload(m, payload, len), CKT_OK);
  return m;
}

static ckt_call *start(ckt_node *n, const char *peer, ckt_message *req,
                       int kind, uint32_t timeout_ms, ckt_call_part_cb part,
                       box *b) {
  ckt_call_opts o;
  ckt_call *c = NULL;
  memset(&o, 0, sizeof(o));
  o.kind = kind;
  o.timeout_ms = timeout_ms;
  o.done = on_done;
  o.on_part = part;
  o.user = b;
  cr_assert_eq(ckt_node_call_start(n, peer, req, &o, &c), CKT_OK);
  return c;
}

/* A part's payload: its number in every byte of the first 8, then a
 * pattern, so order and content are both checked. */
static void fill_part(uint8_t *p, size_t len, int k) {
  size_t i;
  for (i = 0; i < len; ++i) {
    p[i] = i < 8 ? (uint8_t)k : (uint8_t)(k * 31 + i);
  }
}

static int part_ok(const ckt_message *m, int k, size_t len) {
  uint8_t *want = malloc(len ? len : 1);
  int ok;
  fill_part(want, len, k);
  ok =
      m->payload_len == len && (len == 0 || memcmp(m->payload, want, len) == 0);
  free(want);
  return ok;
}

/* ---- asynchronous unary handlers ---------------------------------------- */

static void *reply_later(void *arg) {
  ckt_srvcall *sc = arg;
  ckt_message *r = ckt_message_new();
  usleep(50 * 1000);
  ckt_message_set_payload(r, "later", 5);
  ckt_srvcall_reply(sc, r);
  return NULL;
}

static void async_handler(ckt_srvcall *sc, const ckt_message *req, void *user) {
  pthread_t t;
  (void)req, (void)user;
  cr_assert_eq(pthread_create(&t, NULL, reply_later, sc), 0);
  pthread_detach(t);
}

Test(call, an_async_handler_answers_later_from_another_thread) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  ckt_message *reply = NULL;
  int i;
  cr_assert_eq(ckt_node_register_async(srv, "later", async_handler, NULL),
               CKT_OK);
  for (i = 0; i < 20; ++i) {
    cr_assert_eq(ckt_node_call(cli, addr, msg("later", "x", 1), 0, &reply),
                 CKT_OK, "%s", reply ? reply->err : "");
    cr_assert_eq(reply->payload_len, 5);
    cr_assert(memcmp(reply->payload, "later", 5) == 0);
    ckt_message_free(reply);
  }
  ckt_node_free(cli);
  ckt_node_free(srv);
}

/* ---- uploads ------------------------------------------------------------- */

static void upload_handler(ckt_srvcall *sc, const ckt_message *part, int last,
                           void *user) {
  box *b = user;
  pthread_mutex_lock(&b->mu);
  b->sc = sc;
  if (part->stream_part != b->parts_in ||
      (part->stream_part > 0 &&
       !part_ok(part, (int)part->stream_part, b->part_size))) {
    b->bad_order++;
  }
  b->parts_in++;
  b->bytes_in += part->payload_len;
  b->lasts += last != 0;
  b->codec_seen = part->codec;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
  if (last) {
    ckt_message *r = ckt_message_new();
    char v[32];
    snprintf(v, sizeof(v), "%d", b->parts_in);
    ckt_message_set_arg(r, "parts", v);
    ckt_srvcall_reply(sc, r);
  }
}

static void upload_n(ckt_node *cli, const char *addr, box *b, int n,
                     size_t size) {
  uint8_t *p = malloc(size);
  ckt_call *c;
  int k;
  b->part_size = size;
  c = start(cli, addr, msg("up", "begin", 5), CKT_CALL_UPLOAD, 0, NULL, b);
  for (k = 1; k <= n; ++k) {
    fill_part(p, size, k);
    cr_assert_eq(ckt_call_send(c, msg("up", p, size), k == n), CKT_OK,
                 "part %d", k);
  }
  /* After the last part, nothing more may be sent. */
  cr_assert_eq(ckt_call_send(c, msg("up", p, 1), 0), CKT_ERR_INVALID_ARGUMENT);
  free(p);
  cr_assert_eq(wait_for(b, &b->done, 1, 20000), 1);
  ckt_call_release(c);
}

Test(call, an_upload_arrives_in_order_with_one_final_reply) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  box b;
  box_init(&b);
  cr_assert_eq(ckt_node_register_upload(srv, "up", upload_handler, &b), CKT_OK);
  upload_n(cli, addr, &b, 300, 20000);
  cr_assert_eq(b.err, CKT_OK, "%s", b.why);
  cr_assert_eq(b.parts_in, 301); /* the request and 300 parts */
  cr_assert_eq(b.bad_order, 0);
  cr_assert_eq(b.lasts, 1);
  cr_assert_eq(b.bytes_in, 5 + 300 * 20000);
  cr_assert_str_eq(ckt_message_get_arg(b.reply, "parts"), "301");
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
}

/* Pauses the caller after the first part until the test resumes it. */
static void pausing_handler(ckt_srvcall *sc, const ckt_message *part, int last,
                            void *user) {
  upload_handler(sc, part, last, user);
  if (part->stream_part == 1) {
    ckt_srvcall_pause(sc, 1);
  }
}

typedef struct sender {
  ckt_node *cli;
  const char *addr;
  box *b;
  int n;
} sender;

static void *send_thread(void *arg) {
  sender *s = arg;
  uint8_t p[8192];
  ckt_call *c;
  int k;
  s->b->part_size = sizeof(p);
  c = start(s->cli, s->addr, msg("up", "begin", 5), CKT_CALL_UPLOAD, 0, NULL,
            s->b);
  for (k = 1; k <= s->n; ++k) {
    fill_part(p, sizeof(p), k);
    if (ckt_call_send(c, msg("up", p, sizeof(p)), k == s->n) != CKT_OK) {
      break;
    }
    bump(s->b, &s->b->parts_out, 1);
  }
  ckt_call_release(c);
  return NULL;
}

Test(call, a_paused_handler_holds_back_a_blocking_sender) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  /* The caller may have 64 KiB in flight. */
  ckt_node *cli = start_node(0, 0, 64 * 1024, NULL, 0);
  pthread_t t;
  sender s;
  box b;
  int out1, out2, in1;
  box_init(&b);
  cr_assert_eq(ckt_node_register_upload(srv, "up", pausing_handler, &b),
               CKT_OK);
  s.cli = cli;
  s.addr = addr;
  s.b = &b;
  s.n = 2000; /* 16 MB: far beyond every window */
  cr_assert_eq(pthread_create(&t, NULL, send_thread, &s), 0);
  cr_assert_geq(wait_for(&b, &b.parts_in, 2, 5000), 2);
  usleep(500 * 1000);
  pthread_mutex_lock(&b.mu);
  out1 = b.parts_out;
  in1 = b.parts_in;
  pthread_mutex_unlock(&b.mu);
  usleep(300 * 1000);
  pthread_mutex_lock(&b.mu);
  out2 = b.parts_out;
  pthread_mutex_unlock(&b.mu);
  /* The sender is stuck well short of the end, and the handler heard
   * nothing more while paused. */
  cr_assert_lt(out1, 1000, "sent %d parts to a paused reader", out1);
  cr_assert_eq(out1, out2, "the sender went on: %d then %d", out1, out2);
  cr_assert_eq(in1, 2, "the handler got %d parts while paused", in1);
  cr_assert_eq(ckt_srvcall_pause(b.sc, 0), CKT_OK);
  cr_assert_eq(wait_for(&b, &b.done, 1, 30000), 1);
  pthread_join(t, NULL);
  cr_assert_eq(b.err, CKT_OK, "%s", b.why);
  cr_assert_eq(b.parts_in, 2001);
  cr_assert_eq(b.bad_order, 0);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
}

/* A sender on the loop thread: sends until CKT_ERR_AGAIN, goes on when
 * the call is writable. */
typedef struct loop_sender {
  box *b;
  ckt_call *c;
  int next;
  uint8_t p[16384];
} loop_sender;

static void loop_send_more(loop_sender *ls) {
  while (ls->next <= ls->b->total) {
    ckt_message *m;
    int rv;
    fill_part(ls->p, sizeof(ls->p), ls->next);
    m = msg("up", ls->p, sizeof(ls->p));
    rv = ckt_call_send(ls->c, m, ls->next == ls->b->total);
    if (rv == CKT_ERR_AGAIN) {
      ckt_message_free(m); /* not taken */
      bump(ls->b, &ls->b->again, 1);
      return;
    }
    cr_assert_eq(rv, CKT_OK);
    ls->next++;
  }
}

static loop_sender *the_ls;

static void writable_go(ckt_node *n, ckt_call *c, void *user) {
  box *b = user;
  (void)n, (void)c;
  bump(b, &b->writable_runs, 1);
  loop_send_more(the_ls);
}

static void loop_start(void *arg) {
  loop_send_more(arg);
}

Test(call, a_loop_thread_sender_gets_again_then_writable) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 64 * 1024, NULL, 0);
  static loop_sender ls;
  ckt_call_opts o;
  box b;
  box_init(&b);
  b.total = 400;
  b.part_size = sizeof(ls.p);
  cr_assert_eq(ckt_node_register_upload(srv, "up", upload_handler, &b), CKT_OK);
  memset(&o, 0, sizeof(o));
  o.kind = CKT_CALL_UPLOAD;
  o.done = on_done;
  o.on_writable = writable_go;
  o.user = &b;
  memset(&ls, 0, sizeof(ls));
  ls.b = &b;
  ls.next = 1;
  the_ls = &ls;
  cr_assert_eq(ckt_node_call_start(cli, addr, msg("up", "begin", 5), &o, &ls.c),
               CKT_OK);
  cr_assert_eq(ckt_node_post(cli, loop_start, &ls), CKT_OK);
  cr_assert_eq(wait_for(&b, &b.done, 1, 30000), 1);
  cr_assert_eq(b.err, CKT_OK, "%s", b.why);
  cr_assert_eq(b.parts_in, 401);
  cr_assert_eq(b.bad_order, 0);
  cr_assert_gt(b.again, 0, "64 KiB of room never ran out");
  cr_assert_geq(b.writable_runs, b.again);
  ckt_call_release(ls.c);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
}

/* ---- downloads and bistreams -------------------------------------------- */

typedef struct dl_job {
  ckt_srvcall *sc;
  int n;
  size_t size;
} dl_job;

static void *download_thread(void *arg) {
  dl_job *j = arg;
  uint8_t *p = malloc(j->size);
  ckt_message *r;
  int k;
  for (k = 1; k <= j->n; ++k) {
    ckt_message *m = ckt_message_new();
    fill_part(p, j->size, k);
    ckt_message_set_payload(m, p, j->size);
    if (ckt_srvcall_send(j->sc, m, k == j->n) != CKT_OK) {
      break;
    }
  }
  r = ckt_message_new();
  ckt_message_set_arg(r, "sent", k > j->n ? "all" : "some");
  ckt_srvcall_reply(j->sc, r);
  free(p);
  free(j);
  return NULL;
}

static void download_handler(ckt_srvcall *sc, const ckt_message *req,
                             void *user) {
  dl_job *j = calloc(1, sizeof(*j));
  pthread_t t;
  (void)user;
  j->sc = sc;
  j->n = atoi(ckt_message_get_arg(req, "n"));
  j->size = (size_t)atoi(ckt_message_get_arg(req, "size"));
  cr_assert_eq(pthread_create(&t, NULL, download_thread, j), 0);
  pthread_detach(t);
}

static void on_part(ckt_node *n, ckt_call *c, const ckt_message *part,
                    void *user) {
  box *b = user;
  (void)n, (void)c;
  pthread_mutex_lock(&b->mu);
  b->parts_back++;
  if (part->stream_part != b->parts_back ||
      !part_ok(part, b->parts_back, b->part_size)) {
    b->bad_order++;
  }
  b->lasts += (part->flags & CKT_MSG_FLAG_LAST_PART) != 0;
  b->codec_seen = part->codec;
  pthread_mutex_unlock(&b->mu);
}

Test(call, a_download_streams_parts_in_order_then_the_reply) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 64 * 1024, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  ckt_message *req = msg("down", NULL, 0);
  ckt_call *c;
  box b;
  box_init(&b);
  b.part_size = 30000;
  cr_assert_eq(ckt_node_register_download(srv, "down", download_handler, NULL),
               CKT_OK);
  ckt_message_set_arg(req, "n", "500");
  ckt_message_set_arg(req, "size", "30000");
  c = start(cli, addr, req, CKT_CALL_DOWNLOAD, 0, on_part, &b);
  cr_assert_eq(wait_for(&b, &b.done, 1, 30000), 1);
  cr_assert_eq(b.err, CKT_OK, "%s", b.why);
  cr_assert_eq(b.parts_back, 500);
  cr_assert_eq(b.bad_order, 0);
  cr_assert_eq(b.lasts, 1);
  cr_assert_str_eq(ckt_message_get_arg(b.reply, "sent"), "all");
  ckt_call_release(c);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
}

static void bistream_echo(ckt_srvcall *sc, const ckt_message *part, int last,
                          void *user) {
  (void)user;
  if (part->stream_part > 0) {
    ckt_message *m = NULL;
    cr_assert_eq(ckt_message_copy(part, &m), CKT_OK);
    m->codec = CKT_CODEC_AUTO;
    /* On the loop thread: the test's parts are small enough never to
     * fill the queue. */
    cr_assert_eq(ckt_srvcall_send(sc, m, last), CKT_OK);
  }
  if (last) {
    ckt_srvcall_reply(sc, NULL);
  }
}

Test(call, a_bistream_echoes_every_part_in_order) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  uint8_t p[1000];
  ckt_call *c;
  box b;
  int k;
  box_init(&b);
  b.part_size = sizeof(p);
  cr_assert_eq(ckt_node_register_bistream(srv, "bi", bistream_echo, NULL),
               CKT_OK);
  c = start(cli, addr, msg("bi", NULL, 0), CKT_CALL_BISTREAM, 0, on_part, &b);
  for (k = 1; k <= 200; ++k) {
    fill_part(p, sizeof(p), k);
    cr_assert_eq(ckt_call_send(c, msg("bi", p, sizeof(p)), k == 200), CKT_OK);
  }
  cr_assert_eq(wait_for(&b, &b.done, 1, 20000), 1);
  cr_assert_eq(b.err, CKT_OK, "%s", b.why);
  cr_assert_eq(b.parts_back, 200);
  cr_assert_eq(b.bad_order, 0);
  cr_assert_eq(b.lasts, 1);
  ckt_call_release(c);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
}

static int plain_echo(ckt_node *n, const ckt_message *req, ckt_message *reply,
                      void *user) {
  box *b = user;
  (void)n;
  if (b) {
    pthread_mutex_lock(&b->mu);
    b->codec_seen = req->codec;
    pthread_mutex_unlock(&b->mu);
  }
  return ckt_message_set_payload(reply, req->payload, req->payload_len) ==
                 CKT_OK
             ? 0
             : -1;
}

Test(call, a_call_of_the_wrong_kind_is_refused_with_a_sentence) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  ckt_message *reply = NULL;
  ckt_call *c;
  box b, b2;
  box_init(&b);
  box_init(&b2);
  cr_assert_eq(ckt_node_register_call(srv, "echo", plain_echo, NULL), CKT_OK);
  cr_assert_eq(ckt_node_register_upload(srv, "up", upload_handler, &b2),
               CKT_OK);
  c = start(cli, addr, msg("echo", NULL, 0), CKT_CALL_UPLOAD, 0, NULL, &b);
  cr_assert_eq(wait_for(&b, &b.done, 1, 5000), 1);
  cr_assert_eq(b.err, CKT_ERR_REMOTE);
  cr_assert(strstr(b.why, "'echo' is a call service") &&
                strstr(b.why, "asked for upload"),
            "%s", b.why);
  /* Sending on after the refusal: the call is over. */
  cr_assert_eq(ckt_call_send(c, msg("echo", "x", 1), 1), CKT_ERR_CLOSED);
  ckt_call_release(c);
  cr_assert_eq(ckt_node_call(cli, addr, msg("up", NULL, 0), 0, &reply),
               CKT_ERR_REMOTE);
  cr_assert(strstr(reply->err, "is an upload service"), "%s", reply->err);
  ckt_message_free(reply);
  cr_assert_eq(b2.parts_in, 0);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
  box_free(&b2);
}

/* ---- cancellation and deadlines ----------------------------------------- */

static void record_cancel(ckt_srvcall *sc, int why, void *user) {
  box *b = user;
  pthread_mutex_lock(&b->mu);
  b->cancel_why = why;
  b->cancel_cb_runs++;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
  cr_assert_eq(ckt_srvcall_cancelled(sc), why);
  /* Answering after the end only releases the handle. */
  cr_assert_eq(ckt_srvcall_reply(sc, NULL), CKT_ERR_CANCELED);
}

/* Never answers by itself: waits to be cancelled. */
static void waiting_handler(ckt_srvcall *sc, const ckt_message *req,
                            void *user) {
  box *b = user;
  (void)req;
  cr_assert_eq(ckt_srvcall_cancelled(sc), 0);
  ckt_srvcall_on_cancel(sc, record_cancel, b);
  bump(b, &b->started, 1);
}

Test(call, cancelling_after_the_request_left_reaches_the_handler) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  ckt_call *c;
  box b, sb;
  box_init(&b);
  box_init(&sb);
  cr_assert_eq(ckt_node_register_async(srv, "wait", waiting_handler, &sb),
               CKT_OK);
  c = start(cli, addr, msg("wait", NULL, 0), CKT_CALL_UNARY, 10000, NULL, &b);
  cr_assert_eq(wait_for(&sb, &sb.started, 1, 5000), 1);
  cr_assert_eq(ckt_call_cancel(c), CKT_OK);
  cr_assert_eq(wait_for(&b, &b.done, 1, 5000), 1);
  cr_assert_eq(b.err, CKT_ERR_CANCEL_SENT, "%d %s", b.err, b.why);
  cr_assert(strstr(b.why, "asked to abandon"), "%s", b.why);
  cr_assert_eq(wait_for(&sb, &sb.cancel_cb_runs, 1, 5000), 1);
  cr_assert_eq(sb.cancel_why, CKT_ERR_CANCELED);
  /* Once over, cancelling again says so. */
  cr_assert_eq(ckt_call_cancel(c), CKT_ERR_CLOSED);
  ckt_call_release(c);
  usleep(100 * 1000);
  cr_assert_eq(sb.cancel_cb_runs, 1);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
  box_free(&sb);
}

Test(call, cancelling_before_the_request_left_says_so) {
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  ckt_call *c;
  box b;
  box_init(&b);
  /* Port 9 (discard): nobody answers, so no stream ever opens. */
  c = start(cli, "127.0.0.1:9", msg("wait", NULL, 0), CKT_CALL_UNARY, 10000,
            NULL, &b);
  usleep(50 * 1000);
  cr_assert_eq(ckt_call_cancel(c), CKT_OK);
  cr_assert_eq(wait_for(&b, &b.done, 1, 5000), 1);
  cr_assert_eq(b.err, CKT_ERR_CANCELED, "%d %s", b.err, b.why);
  cr_assert(strstr(b.why, "before its request was sent"), "%s", b.why);
  ckt_call_release(c);
  ckt_node_free(cli);
  box_free(&b);
}

Test(call, the_server_enforces_the_deadline_too) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  uint64_t t0;
  ckt_call *c;
  box b, sb;
  box_init(&b);
  box_init(&sb);
  cr_assert_eq(ckt_node_register_async(srv, "wait", waiting_handler, &sb),
               CKT_OK);
  t0 = now_ms();
  c = start(cli, addr, msg("wait", NULL, 0), CKT_CALL_UNARY, 300, NULL, &b);
  cr_assert_eq(wait_for(&sb, &sb.cancel_cb_runs, 1, 5000), 1);
  cr_assert_eq(sb.cancel_why, CKT_ERR_TIMEOUT, "%s",
               ckt_strerror(sb.cancel_why));
  cr_assert_eq(wait_for(&b, &b.done, 1, 5000), 1);
  cr_assert_eq(b.err, CKT_ERR_TIMEOUT, "%d %s", b.err, b.why);
  cr_assert_lt(now_ms() - t0, 2000);
  ckt_call_release(c);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
  box_free(&sb);
}

Test(call, a_connection_dying_mid_stream_tells_both_sides) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  ckt_call *c;
  box b, sb;
  box_init(&b);
  box_init(&sb);
  cr_assert_eq(ckt_node_register_async(srv, "wait", waiting_handler, &sb),
               CKT_OK);
  /* A download-style call that never ends: the client goes away. */
  c = start(cli, addr, msg("wait", NULL, 0), CKT_CALL_UNARY, CKT_NO_TIMEOUT,
            NULL, &b);
  cr_assert_eq(wait_for(&sb, &sb.started, 1, 5000), 1);
  ckt_node_free(cli); /* a graceful stop closes the connection */
  cr_assert_eq(b.done, 1);
  cr_assert_eq(b.err, CKT_ERR_CLOSED, "%d %s", b.err, b.why);
  ckt_call_release(c);
  cr_assert_eq(wait_for(&sb, &sb.cancel_cb_runs, 1, 5000), 1);
  cr_assert_eq(sb.cancel_why, CKT_ERR_CONNECTION, "%s",
               ckt_strerror(sb.cancel_why));
  ckt_node_free(srv);
  box_free(&b);
  box_free(&sb);
}

/* ---- compression ----------------------------------------------------------
 */

/* Text-like bytes that compress well, with a random-ish tail. */
static uint8_t *mixed(size_t len) {
  static const char *words[] = {"circuit ", "fragment ", "peer ", "stream ",
                                "quic ",    "message ",  "node ", "reply "};
  uint8_t *p = malloc(len);
  size_t i = 0;
  uint32_t x = 12345;
  while (i < len) {
    const char *w = words[(x = x * 1103515245 + 12345) >> 29];
    size_t k = strlen(w);
    if (i + k > len) {
      k = len - i;
    }
    memcpy(p + i, w, k);
    i += k;
  }
  for (i = len - len / 8; i < len; ++i) {
    p[i] = (uint8_t)((x = x * 1103515245 + 12345) >> 24);
  }
  return p;
}

Test(call, every_codec_round_trips_and_answers_match_the_callers) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, CKT_CODEC_ZSTD_3, 0, NULL, 0);
  size_t len = 300 * 1000;
  uint8_t *p = mixed(len);
  box b;
  int codec;
  box_init(&b);
  cr_assert_eq(ckt_node_register_call(srv, "echo", plain_echo, &b), CKT_OK);
  for (codec = CKT_CODEC_AUTO; codec <= CKT_CODEC_MAX; ++codec) {
    ckt_message *req = msg("echo", p, len), *reply = NULL;
    int want = codec == CKT_CODEC_AUTO ? CKT_CODEC_ZSTD_3 : codec;
    req->codec = (uint8_t)codec;
    cr_assert_eq(ckt_node_call(cli, addr, req, 0, &reply), CKT_OK);
    cr_assert_eq(reply->payload_len, len);
    cr_assert(memcmp(reply->payload, p, len) == 0, "%s", ckt_codec_name(codec));
    /* The server decoded what the client chose and answered in kind. */
    cr_assert_eq(b.codec_seen, want, "%s: server saw %s", ckt_codec_name(codec),
                 ckt_codec_name(b.codec_seen));
    cr_assert_eq(reply->codec, want, "%s: reply came as %s",
                 ckt_codec_name(codec), ckt_codec_name(reply->codec));
    ckt_message_free(reply);
  }
  free(p);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
}

/* UDP payload bytes the client sent for one echo call of p: the least of
 * three calls, as loopback bursts may lose (and resend) packets. */
static uint64_t bytes_for(ckt_node *cli, const char *addr, const uint8_t *p,
                          size_t len, int codec, int no_compress) {
  uint64_t best = UINT64_MAX;
  int i;
  for (i = 0; i < 3; ++i) {
    ckt_node_stats s0, s1;
    ckt_message *req = msg("echo", p, len), *reply = NULL;
    req->codec = (uint8_t)codec;
    if (no_compress) {
      req->flags |= CKT_MSG_FLAG_NO_COMPRESS;
    }
    ckt_node_get_stats(cli, &s0);
    cr_assert_eq(ckt_node_call(cli, addr, req, 0, &reply), CKT_OK);
    cr_assert(reply->payload_len == len && memcmp(reply->payload, p, len) == 0);
    ckt_message_free(reply);
    ckt_node_get_stats(cli, &s1);
    if (s1.bytes_sent - s0.bytes_sent < best) {
      best = s1.bytes_sent - s0.bytes_sent;
    }
  }
  return best;
}

Test(call, compression_shrinks_the_wire_unless_a_message_opts_out) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  size_t len = 1000 * 1000, i;
  uint8_t *text = mixed(len), *rnd = malloc(len);
  uint64_t plain, z, optout, rplain, rz;
  box b;
  box_init(&b);
  for (i = 0; i < len; ++i) {
    rnd[i] = (uint8_t)rand();
  }
  cr_assert_eq(ckt_node_register_call(srv, "echo", plain_echo, &b), CKT_OK);
  plain = bytes_for(cli, addr, text, len, CKT_CODEC_NONE, 0);
  z = bytes_for(cli, addr, text, len, CKT_CODEC_ZSTD_1, 0);
  optout = bytes_for(cli, addr, text, len, CKT_CODEC_ZSTD_1, 1);
  /* The opted-out message still told the server which codec to answer
   * with. */
  cr_assert_eq(b.codec_seen, CKT_CODEC_ZSTD_1);
  rplain = bytes_for(cli, addr, rnd, len, CKT_CODEC_NONE, 0);
  rz = bytes_for(cli, addr, rnd, len, CKT_CODEC_ZSTD_1, 0);
  cr_assert_lt(z * 2, plain, "zstd sent %lu of %lu", (unsigned long)z,
               (unsigned long)plain);
  cr_assert_gt(optout * 10, plain * 9, "opt-out sent %lu of %lu",
               (unsigned long)optout, (unsigned long)plain);
  /* Random bytes go stored: about what plain sends. */
  cr_assert_lt(rz, rplain + rplain / 50, "random: %lu vs %lu",
               (unsigned long)rz, (unsigned long)rplain);
  free(text);
  free(rnd);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&b);
}

/* Refuses every upload on its request. */
static void refusing_handler(ckt_srvcall *sc, const ckt_message *part, int last,
                             void *user) {
  box *b = user;
  ckt_message *r = ckt_message_new();
  (void)last;
  bump(b, &b->parts_in, 1);
  cr_assert_eq(part->stream_part, 0, "a part after the refusal");
  ckt_message_set_err(r, "no room for that");
  ckt_srvcall_reply(sc, r);
}

Test(call, an_upload_refused_early_stops_the_sender_and_spares_the_connection) {
  char addr[64];
  ckt_node *srv = start_node(1, 0, 0, addr, sizeof(addr));
  ckt_node *cli = start_node(0, 0, 0, NULL, 0);
  static uint8_t p[65536];
  const char *services[] = {"nobody", "up"};
  ckt_message *reply = NULL;
  box sb;
  box_init(&sb);
  cr_assert_eq(ckt_node_register_upload(srv, "up", refusing_handler, &sb),
               CKT_OK);
  cr_assert_eq(ckt_node_register_call(srv, "echo", plain_echo, NULL), CKT_OK);
  for (int round = 0; round < 6; round++) {
    box b;
    ckt_call *c;
    int k, rv = CKT_OK;
    box_init(&b);
    c = start(cli, addr, msg(services[round % 2], NULL, 0), CKT_CALL_UPLOAD, 0,
              NULL, &b);
    /* Far more than any window: the sender must be told to stop. */
    for (k = 1; k <= 400 && rv == CKT_OK; ++k) {
      rv = ckt_call_send(c, msg(services[round % 2], p, sizeof(p)), k == 400);
    }
    cr_assert_eq(wait_for(&b, &b.done, 1, 10000), 1);
    cr_assert(rv == CKT_OK || rv == CKT_ERR_CLOSED, "%s", ckt_strerror(rv));
    if (round % 2 == 1) {
      cr_assert_eq(b.err, CKT_ERR_REMOTE, "round %d: %d %s", round, b.err,
                   b.why);
      cr_assert_str_eq(b.why, "no room for that");
    } else {
      cr_assert_eq(b.err, CKT_ERR_NO_SERVICE, "round %d: %d %s", round, b.err,
                   b.why);
    }
    ckt_call_release(c);
    box_free(&b);
  }
  /* The connection carried on. */
  cr_assert_eq(ckt_node_call(cli, addr, msg("echo", "hi", 2), 0, &reply),
               CKT_OK);
  ckt_message_free(reply);
  cr_assert_eq(sb.parts_in, 3);
  ckt_node_free(cli);
  ckt_node_free(srv);
  box_free(&sb);
}
