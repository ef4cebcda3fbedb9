/*
 * peer_node.c — a node: identities, the endpoint on its own loop, and the
 * Message API (calls, one-way messages, pushes) on QUIC streams.
 *
 * Streams: a call is one bidirectional stream (CALL frame + FIN out, REPLY
 * or ERROR frame + FIN back); a one-way message or a push is one
 * unidirectional stream.  See docs/wire.md.
 */
#include "ckt/node.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core_util.h"
#include "fragment_zstd.h"
#include "peer_int.h"
#include "tls_known.h"

typedef struct inbound {
  rxstate rx;
  ckt_node *n;
} inbound;

/* ---- small helpers ------------------------------------------------------ */

void node_log(ckt_node *n, const char *fmt, ...) {
  char line[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n->cfg.log) {
    n->cfg.log(n->cfg.log_user, line);
  } else {
    fprintf(stderr, "ckt: %s\n", line);
  }
}

static void ep_log(void *user, const char *line) {
  node_log(user, "%s", line);
}

int node_stopping(ckt_node *n) {
  return __atomic_load_n(&n->stopping, __ATOMIC_ACQUIRE);
}

static void set_stopping(ckt_node *n) {
  __atomic_store_n(&n->stopping, 1, __ATOMIC_RELEASE);
}

int node_parse_addr(ckt_node *n, const char *host_port, ckt_addr *out) {
  /* A simulated node takes numeric addresses only: a name would go to
   * the resolver, and out of the simulation. */
  if (n->sim_host && host_port &&
      !(isdigit((unsigned char)host_port[0]) || host_port[0] == '[')) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  return ckt_addr_parse(host_port, NULL, out);
}

int node_on_loop(ckt_node *n) {
  int yes;
  if (n->sim_host) {
    return 1; /* one thread runs the whole simulation */
  }
  pthread_mutex_lock(&n->mu);
  yes = n->loop_running && pthread_equal(n->loop_thread, pthread_self());
  pthread_mutex_unlock(&n->mu);
  return yes;
}

/* ---- frames ------------------------------------------------------------- */

void node_rx_clear(rxstate *rx) {
  ckt_buf_free(&rx->body);
  rx->hdr_got = 0;
  rx->body_len = 0;
}

/* Gives back the connection credit of what rx holds, when it is consumed
 * or thrown away: until then it counts against the peer's window, which
 * bounds what a peer can make us buffer. */
void node_rx_credit(ckt_conn *conn, rxstate *rx) {
  uint64_t amt = rx->credit;
  if (rx->precredited) { /* held while paused: credited then */
    uint64_t d = amt < rx->precredited ? amt : rx->precredited;
    amt -= d;
    rx->precredited -= d;
  }
  if (amt) {
    ckt_conn_credit(conn, amt);
  }
  rx->credit = 0;
}

/* Reads one frame from stream bytes.  The body buffer grows with what
 * actually arrived, so a header announcing a large frame costs nothing by
 * itself; its bytes stay uncredited (rx->credit) until the caller is done
 * with them. */
int node_rx_frame(ckt_node *n, rxstate *rx, const uint8_t **data, size_t *len,
                  uint8_t *type, ckt_buf *body) {
  while (*len > 0) {
    size_t take;
    int rv;
    if (rx->hdr_got < CKT_FRAME_HEADER_LEN) {
      take = CKT_FRAME_HEADER_LEN - rx->hdr_got;
      if (take > *len) {
        take = *len;
      }
      memcpy(rx->hdr + rx->hdr_got, *data, take);
      rx->hdr_got += take;
      rx->credit += take;
      *data += take;
      *len -= take;
      if (rx->hdr_got < CKT_FRAME_HEADER_LEN) {
        return 0;
      }
      if (ckt_frame_header_decode(rx->hdr, type, &rx->body_len) != CKT_OK) {
        return CKT_ERR_FORMAT;
      }
      if (rx->body_len > n->frame_max) {
        return CKT_ERR_TOO_LARGE;
      }
      ckt_buf_init(&rx->body, rx->body_len);
    }
    take = rx->body_len - rx->body.len;
    if (take > *len) {
      take = *len;
    }
    if ((rv = ckt_buf_append(&rx->body, *data, take)) != CKT_OK) {
      return rv;
    }
    rx->credit += take;
    *data += take;
    *len -= take;
    if (rx->body.len < rx->body_len) {
      return 0;
    }
    *type = rx->hdr[0];
    *body = rx->body;
    ckt_buf_init(&rx->body, 0);
    rx->hdr_got = 0;
    rx->body_len = 0;
    return 1;
  }
  return 0;
}

/* ---- connections -------------------------------------------------------- */

static pconn *pconn_new(ckt_node *n, ckt_conn *conn, const ckt_addr *addr) {
  pconn *pc = calloc(1, sizeof(*pc));
  if (!pc) {
    return NULL;
  }
  pc->n = n;
  pc->conn = conn;
  pc->addr = *addr;
  ckt_addr_format(addr, pc->name, sizeof(pc->name));
  pc->next = n->conns;
  if (n->conns) {
    n->conns->prev = pc;
  }
  n->conns = pc;
  pc->linked = 1;
  return pc;
}

static void pconn_unlink(pconn *pc) {
  ckt_node *n = pc->n;
  if (!pc->linked) {
    return;
  }
  if (pc->prev) {
    pc->prev->next = pc->next;
  } else {
    n->conns = pc->next;
  }
  if (pc->next) {
    pc->next->prev = pc->prev;
  }
  pc->next = pc->prev = NULL;
  pc->linked = 0;
}

static void pconn_free(pconn *pc) {
  while (pc->ow_head) {
    oneway *o = pc->ow_head;
    pc->ow_head = o->next;
    free(o->frame);
    free(o);
  }
  pconn_unlink(pc);
  ckt_psk_hs_wipe(&pc->psk);
  free(pc);
}

/* A connection to addr for sending: a ready one of either role first,
 * else one being dialed. */
static pconn *pconn_find(ckt_node *n, const ckt_addr *addr) {
  pconn *pc, *dialing = NULL;
  for (pc = n->conns; pc; pc = pc->next) {
    if (!ckt_addr_equal(&pc->addr, addr)) {
      continue;
    }
    if (ckt_conn_is_ready(pc->conn)) {
      return pc;
    }
    if (!dialing) {
      dialing = pc;
    }
  }
  return dialing;
}

int node_pconn_get(ckt_node *n, const ckt_addr *addr, pconn **out) {
  ckt_conn *conn;
  pconn *pc = pconn_find(n, addr);
  int rv;
  if (pc) {
    *out = pc;
    return CKT_OK;
  }
  if (node_stopping(n)) {
    return CKT_ERR_CLOSED;
  }
  pc = pconn_new(n, NULL, addr);
  if (!pc) {
    return CKT_ERR_NOMEM;
  }
  rv = ckt_endpoint_connect(n->ep, addr, pc, &conn);
  if (rv != CKT_OK) {
    pconn_free(pc);
    return rv;
  }
  pc->conn = conn;
  *out = pc;
  return CKT_OK;
}

/* Opens streams for calls and one-way messages waiting on pc. */
void node_pconn_pump(pconn *pc) {
  if (!ckt_conn_is_ready(pc->conn) || (pc->psk_on && !pc->psk_ready)) {
    return;
  }
  calls_pump(pc);
  while (pc->ow_head) {
    oneway *o = pc->ow_head;
    ckt_stream *s;
    if (ckt_conn_open_stream(pc->conn, 0, NULL, &s) != CKT_OK) {
      return;
    }
    if (node_stream_write(s, o->frame, o->frame_len, 1) != CKT_OK) {
      ckt_stream_reset(s, APP_CANCELED);
      return;
    }
    pc->ow_head = o->next;
    if (!pc->ow_head) {
      pc->ow_tail = NULL;
    }
    free(o->frame);
    free(o);
  }
  circuit_pump(pc);
}

/* ---- one-way messages and pushes --------------------------------------- */

typedef struct send_job {
  ckt_node *n;
  ckt_addr addr;
  int push;
  ckt_message *msg; /* a push still to encode, or NULL */
  uint8_t *frame;
  size_t frame_len;
} send_job;

static void send_start(void *arg) {
  send_job *job = arg;
  ckt_node *n = job->n;
  pconn *pc = NULL;
  oneway *o;
  if (job->push) {
    pc = pconn_find(n, &job->addr);
    if (!pc || !ckt_conn_is_ready(pc->conn)) {
      pc = NULL; /* the client left in the meantime */
    }
  } else if (node_pconn_get(n, &job->addr, &pc) != CKT_OK) {
    pc = NULL;
  }
  if (pc && job->msg) {
    if (node_frame_encode(n, job->msg, node_codec(n, pc, job->msg, 1),
                          &job->frame, &job->frame_len) != CKT_OK) {
      pc = NULL;
    }
    ckt_message_free(job->msg);
    job->msg = NULL;
  }
  o = pc ? malloc(sizeof(*o)) : NULL;
  if (!o) {
    ckt_message_free(job->msg);
    free(job->frame);
    free(job);
    return;
  }
  o->next = NULL;
  o->frame = job->frame;
  o->frame_len = job->frame_len;
  if (pc->ow_tail) {
    pc->ow_tail->next = o;
  } else {
    pc->ow_head = o;
  }
  pc->ow_tail = o;
  free(job);
  CKT_COUNTER_ADD(n->stats.oneways_sent, 1);
  node_pconn_pump(pc);
}

/* What a caller thread learns about a connection (filled on the loop). */
typedef struct conn_facts {
  int found;
  char suite[64], key[65];
} conn_facts;

typedef struct find_job {
  ckt_node *n;
  ckt_addr addr;
  conn_facts facts;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, refs; /* the asking thread and the loop each hold one */
} find_job;

static void facts_of(ckt_node *n, const ckt_addr *addr, conn_facts *f) {
  pconn *pc = pconn_find(n, addr);
  memset(f, 0, sizeof(*f));
  if (pc && ckt_conn_is_ready(pc->conn)) {
    f->found = 1;
    snprintf(f->suite, sizeof(f->suite), "%s", ckt_conn_suite(pc->conn));
    snprintf(f->key, sizeof(f->key), "%s", ckt_conn_peer_key(pc->conn));
  }
}

static void find_unref(find_job *f) {
  int last;
  pthread_mutex_lock(&f->mu);
  last = --f->refs == 0;
  pthread_mutex_unlock(&f->mu);
  if (last) {
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
  }
}

static void find_conn(void *arg) {
  find_job *f = arg;
  conn_facts facts;
  facts_of(f->n, &f->addr, &facts);
  pthread_mutex_lock(&f->mu);
  f->facts = facts;
  f->done = 1;
  pthread_cond_signal(&f->cv);
  pthread_mutex_unlock(&f->mu);
  find_unref(f);
}

static int loop_running(ckt_node *n) {
  int yes;
  pthread_mutex_lock(&n->mu);
  yes = n->loop_running;
  pthread_mutex_unlock(&n->mu);
  return yes;
}

/* Asks the loop whether a ready connection to addr exists.  From another
 * thread the answer may take up to 5 s (a busy loop); a loop that does
 * not run answers "no" at once instead of hanging the caller. */
static int lookup_conn(ckt_node *n, const ckt_addr *addr, conn_facts *out) {
  struct timespec until;
  find_job *f;
  int rv = CKT_ERR_NOT_FOUND;

  memset(out, 0, sizeof(*out));
  if (node_on_loop(n)) {
    facts_of(n, addr, out);
    return out->found ? CKT_OK : CKT_ERR_NOT_FOUND;
  }
  if (node_stopping(n) || !loop_running(n)) {
    return CKT_ERR_NOT_FOUND;
  }
  f = calloc(1, sizeof(*f));
  if (!f) {
    return CKT_ERR_NOMEM;
  }
  f->n = n;
  f->addr = *addr;
  f->refs = 2;
  pthread_mutex_init(&f->mu, NULL);
  pthread_cond_init(&f->cv, NULL);
  if (n->rt->ops->post(n->rt, find_conn, f) != CKT_OK) {
    f->refs = 1;
    find_unref(f);
    return CKT_ERR_NOMEM;
  }
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 5;
  pthread_mutex_lock(&f->mu);
  while (!f->done && pthread_cond_timedwait(&f->cv, &f->mu, &until) == 0) {
  }
  if (f->done && f->facts.found) {
    *out = f->facts;
    rv = CKT_OK;
  }
  pthread_mutex_unlock(&f->mu);
  find_unref(f);
  return rv;
}

static int send_common(ckt_node *n, const char *peer, ckt_message *msg,
                       int push) {
  send_job *job;
  int rv;
  if (!n || !peer || !msg) {
    ckt_message_free(msg);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (node_stopping(n)) {
    ckt_message_free(msg);
    return CKT_ERR_CLOSED;
  }
  job = calloc(1, sizeof(*job));
  if (!job) {
    ckt_message_free(msg);
    return CKT_ERR_NOMEM;
  }
  if (node_parse_addr(n, peer, &job->addr) != CKT_OK) {
    free(job);
    ckt_message_free(msg);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (push) {
    conn_facts f;
    if (lookup_conn(n, &job->addr, &f) != CKT_OK) {
      free(job);
      ckt_message_free(msg);
      return CKT_ERR_NOT_FOUND;
    }
  }
  msg->type = push ? CKT_MSG_PUSH : CKT_MSG_ONEWAY;
  node_stamp(n, msg, peer, 0);
  if (push && msg->codec == CKT_CODEC_AUTO) {
    /* Encoded on the loop, in the codec the client last used. */
    rv = msg->payload_len > n->lim.max_payload ? CKT_ERR_TOO_LARGE : CKT_OK;
    job->msg = msg;
  } else {
    rv = node_frame_encode(n, msg, node_codec(n, NULL, msg, push), &job->frame,
                           &job->frame_len);
    ckt_message_free(msg);
  }
  if (rv != CKT_OK) {
    ckt_message_free(job->msg);
    free(job);
    return rv;
  }
  job->n = n;
  job->push = push;
  rv = node_run_on_loop(n, send_start, job);
  if (rv != CKT_OK) {
    ckt_message_free(job->msg);
    free(job->frame);
    free(job);
  }
  return rv;
}

int ckt_node_send(ckt_node *n, const char *peer, ckt_message *msg) {
  return send_common(n, peer, msg, 0);
}

int ckt_node_push(ckt_node *n, const char *client, ckt_message *msg) {
  return send_common(n, client, msg, 1);
}

int ckt_node_peer_info(ckt_node *n, const char *peer, char *suite,
                       size_t suite_sz, char *peer_key, size_t key_sz) {
  ckt_addr addr;
  conn_facts f;
  if (!n || !peer || node_parse_addr(n, peer, &addr) != CKT_OK) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (lookup_conn(n, &addr, &f) != CKT_OK) {
    return CKT_ERR_NOT_FOUND;
  }
  if (suite && suite_sz) {
    snprintf(suite, suite_sz, "%s", f.suite);
  }
  if (peer_key && key_sz) {
    snprintf(peer_key, key_sz, "%s", f.key);
  }
  return CKT_OK;
}

/* ---- serving ------------------------------------------------------------ */

static service_t *service_find(ckt_node *n, const char *name) {
  service_t *s;
  for (s = n->services; s; s = s->next) {
    if (strcmp(s->name, name) == 0) {
      return s;
    }
  }
  return NULL;
}

/* The entry for name, made if missing; n->mu must be held.  NULL when out
 * of memory. */
static service_t *service_entry(ckt_node *n, const char *name) {
  service_t *s = service_find(n, name);
  if (!s && (s = calloc(1, sizeof(*s))) != NULL) {
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->next = n->services;
    n->services = s;
  }
  return s;
}

static int name_ok(const char *name) {
  return name && *name && strlen(name) <= CKT_MESSAGE_SERVICE_MAX;
}

/* Registers a call handler of one kind (fn: ckt_call_handler for a
 * synchronous one, ckt_serve_fn or ckt_parts_fn by kind) or a one-way
 * handler (ow). */
static int register_handler(ckt_node *n, const char *name, int kind,
                            ckt_call_handler call, ckt_serve_fn serve,
                            ckt_parts_fn parts, ckt_oneway_handler ow,
                            void *user) {
  service_t *s;
  if (!n || !name_ok(name)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  pthread_mutex_lock(&n->mu);
  if ((s = service_entry(n, name)) != NULL) {
    if (ow) {
      s->oneway = ow;
      s->oneway_user = user;
    } else {
      s->call_kind = kind;
      s->call = call;
      s->serve = serve;
      s->parts = parts;
      s->call_user = user;
    }
  }
  pthread_mutex_unlock(&n->mu);
  return s ? CKT_OK : CKT_ERR_NOMEM;
}

int ckt_node_register_peer_service(ckt_node *n, const char *name,
                                   const ckt_peer_service *svc, void *user) {
  service_t *s;
  if (!n || !svc || !name_ok(name)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  pthread_mutex_lock(&n->mu);
  if ((s = service_entry(n, name)) != NULL) {
    s->has_peer = 1;
    s->peer = *svc;
    s->peer_user = user;
  }
  pthread_mutex_unlock(&n->mu);
  return s ? CKT_OK : CKT_ERR_NOMEM;
}

void node_unregister_peer_service(ckt_node *n, const char *name,
                                  const void *user) {
  service_t *s;
  pthread_mutex_lock(&n->mu);
  s = service_find(n, name);
  if (s && s->has_peer && s->peer_user == user) {
    s->has_peer = 0;
  }
  pthread_mutex_unlock(&n->mu);
}

int node_peer_service(ckt_node *n, const char *name, ckt_peer_service *svc,
                      void **user) {
  service_t *s;
  int rv = CKT_ERR_NO_SERVICE;
  pthread_mutex_lock(&n->mu);
  s = service_find(n, name);
  if (s && s->has_peer) {
    *svc = s->peer;
    *user = s->peer_user;
    rv = CKT_OK;
  }
  pthread_mutex_unlock(&n->mu);
  return rv;
}

int ckt_node_post(ckt_node *n, void (*fn)(void *arg), void *arg) {
  if (!n || !fn) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (node_stopping(n)) {
    return CKT_ERR_CLOSED;
  }
  return n->rt->ops->post(n->rt, fn, arg);
}

int ckt_node_register_call(ckt_node *n, const char *service,
                           ckt_call_handler fn, void *user) {
  return fn ? register_handler(n, service, CKT_CALL_UNARY, fn, NULL, NULL, NULL,
                               user)
            : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_node_register_async(ckt_node *n, const char *service, ckt_serve_fn fn,
                            void *user) {
  return fn ? register_handler(n, service, CKT_CALL_UNARY, NULL, fn, NULL, NULL,
                               user)
            : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_node_register_upload(ckt_node *n, const char *service, ckt_parts_fn fn,
                             void *user) {
  return fn ? register_handler(n, service, CKT_CALL_UPLOAD, NULL, NULL, fn,
                               NULL, user)
            : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_node_register_download(ckt_node *n, const char *service,
                               ckt_serve_fn fn, void *user) {
  return fn ? register_handler(n, service, CKT_CALL_DOWNLOAD, NULL, fn, NULL,
                               NULL, user)
            : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_node_register_bistream(ckt_node *n, const char *service,
                               ckt_parts_fn fn, void *user) {
  return fn ? register_handler(n, service, CKT_CALL_BISTREAM, NULL, NULL, fn,
                               NULL, user)
            : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_node_register_oneway(ckt_node *n, const char *service,
                             ckt_oneway_handler fn, void *user) {
  return fn ? register_handler(n, service, 0, NULL, NULL, NULL, fn, user)
            : CKT_ERR_INVALID_ARGUMENT;
}

void node_service_lookup(ckt_node *n, const char *name, service_t *out) {
  service_t *s;
  memset(out, 0, sizeof(*out));
  pthread_mutex_lock(&n->mu);
  s = service_find(n, name);
  if (s) {
    *out = *s;
    out->next = NULL;
  }
  pthread_mutex_unlock(&n->mu);
}

static void serve_oneway(ckt_node *n, ckt_message *msg) {
  service_t svc;
  node_service_lookup(n, msg->service, &svc);
  CKT_COUNTER_ADD(n->stats.oneways_received, 1);
  if (svc.oneway) {
    svc.oneway(n, msg, svc.oneway_user);
  } else {
    node_log(n, "dropped a one-way message for unknown service '%s' from %s",
             msg->service, msg->from);
  }
}

/* ---- endpoint callbacks ------------------------------------------------- */

/* When two nodes dial each other at once, the connection that came up
 * first carries what waits for the other one, which is then closed. */
static void adopt_waiting(pconn *pc) {
  ckt_node *n = pc->n;
  pconn *o, *next;
  for (o = n->conns; o; o = next) {
    next = o->next;
    if (o == pc || ckt_conn_is_ready(o->conn) ||
        !ckt_addr_equal(&o->addr, &pc->addr)) {
      continue;
    }
    calls_adopt(pc, o);
    while (o->ow_head) {
      oneway *w = o->ow_head;
      o->ow_head = w->next;
      w->next = NULL;
      if (pc->ow_tail) {
        pc->ow_tail->next = w;
      } else {
        pc->ow_head = w;
      }
      pc->ow_tail = w;
    }
    o->ow_tail = NULL;
    circuit_adopt(pc, o);
    if (!o->calls && !o->circuits && o->conn) {
      ckt_conn_close(o->conn, 0, "superseded by another connection");
    }
  }
}

static int on_conn_ready(ckt_conn *conn, void *user) {
  ckt_node *n = user;
  pconn *pc = ckt_conn_user(conn);
  if (!pc) { /* accepted */
    pc = pconn_new(n, conn, ckt_conn_peer(conn));
    if (!pc) {
      ckt_conn_set_why(conn, "out of memory");
      return -1;
    }
    ckt_conn_set_user(conn, pc);
  }
  if (n->psk_len && !pc->psk_on && psk_start(pc) != 0) {
    return -1; /* psk_start said why */
  }
  adopt_waiting(pc);
  node_pconn_pump(pc);
  return 0;
}

static void on_conn_closed(ckt_conn *conn, int err, const char *why,
                           void *user) {
  pconn *pc = ckt_conn_user(conn);
  ckt_node *n = user;
  int call_err = CKT_ERR_CONNECTION;
  if (!pc) {
    return;
  }
  if (node_stopping(n)) {
    call_err = CKT_ERR_CLOSED;
  } else if (err == CKT_ERR_TLS || err == CKT_ERR_TIMEOUT) {
    call_err = err;
  }
  /* Out of the list first: a done callback that retries must dial anew,
   * not queue on the connection that is going away. */
  pconn_unlink(pc);
  ckt_conn_set_user(conn, NULL);
  calls_conn_lost(pc, call_err, why);
  circuit_conn_lost(pc, why);
  pconn_free(pc);
}

static rxstate psk_stream = {.kind = RX_PSK}; /* marks the peer's PSK stream */

static int on_stream_opened(ckt_conn *conn, ckt_stream *s, void *user) {
  pconn *pc = ckt_conn_user(conn);
  inbound *in;
  if (pc && pc->psk_on && (ckt_stream_id(s) & 2) &&
      (ckt_stream_id(s) >> 2) == 0) {
    /* The peer's first unidirectional stream: its HELLO and CONFIRM (it
     * opens nothing else before the layer is ready). */
    ckt_stream_set_user(s, &psk_stream);
    return 0;
  }
  if (pc && pc->psk_on && !pc->psk.have_keys) {
    ckt_conn_close(conn, APP_PSK,
                   "the peer sent data before the pre-shared-key exchange "
                   "(it has no -psk?)");
    return 0;
  }
  in = calloc(1, sizeof(*in));
  if (!in) {
    return -1;
  }
  in->rx.kind = RX_INBOUND;
  in->n = user;
  ckt_stream_set_user(s, in);
  return 0;
}

/* Drops an inbound stream's state after a bad frame: its bytes are
 * credited back and nothing more is read from it. */
static void inbound_drop(ckt_conn *conn, ckt_stream *s, rxstate *rx,
                         size_t unread) {
  rx->credit += unread;
  node_rx_credit(conn, rx);
  ckt_stream_set_user(s, NULL);
  node_rx_clear(rx);
  free(rx);
}

/* A message frame arrived on a call's or an inbound stream: hands it on
 * (takes m).  Returns 0, or an application error code to reset the
 * stream with. */
static int on_message(ckt_node *n, ckt_conn *conn, ckt_stream *s, rxstate *rx,
                      ckt_message *m, size_t unread) {
  pconn *pc = ckt_conn_user(conn);
  if (pc) {
    /* Reader makes right: answers to this peer use its latest codec. */
    pc->peer_codec = m->codec;
  }
  if (rx->kind == RX_CALL) {
    return call_on_message(rx, s, m);
  }
  /* From the peer: trust the transport for who sent it. */
  if (pc) {
    ckt_message_set_from(m, pc->name);
  }
  if (rx->kind == RX_SRVCALL) {
    return srvcall_on_message(rx, s, m);
  }
  if (m->type == CKT_MSG_CALL && (ckt_stream_id(s) & 0x2) == 0) {
    node_serve(n, s, rx, m);
    return 0;
  }
  if (m->type == CKT_MSG_ONEWAY || m->type == CKT_MSG_PUSH) {
    serve_oneway(n, m);
    ckt_message_free(m);
    return 0;
  }
  ckt_message_free(m);
  inbound_drop(conn, s, rx, unread);
  return APP_MALFORMED;
}

/* The first frame of a peer-opened bidirectional stream may be a
 * fragment OPEN: the stream becomes a circuit. */
static int on_open(ckt_node *n, ckt_conn *conn, ckt_stream *s, rxstate *rx,
                   ckt_buf *body, size_t unread) {
  ckt_fragment *f = NULL;
  pconn *pc = ckt_conn_user(conn);
  int rv = ckt_fragment_decode(body->data, body->len, &n->flim, &f);
  ckt_buf_free(body);
  if (rv != CKT_OK || f->type != CKT_FRAG_OPEN || !pc ||
      (ckt_stream_id(s) & 0x2) != 0) {
    ckt_fragment_free(f);
    inbound_drop(conn, s, rx, unread);
    return APP_MALFORMED;
  }
  {
    uint64_t open_bytes = rx->credit;
    node_rx_credit(conn, rx);
    circuit_accept(n, pc, s, rx, f, open_bytes); /* frees rx */
  }
  return 0;
}

/* Reads frames from stream bytes and hands them on.  `held`: the bytes
 * come from rx->held (a paused stream resumed): the connection already
 * credited them.  Returns 0, or an application error code to reset the
 * stream with. */
static int stream_input(ckt_node *n, ckt_conn *conn, ckt_stream *s, rxstate *rx,
                        const uint8_t *data, size_t len, int held) {
  pconn *pc = ckt_conn_user(conn);
  while (rx && len > 0) {
    ckt_message *m = NULL;
    ckt_buf body;
    uint8_t type;
    int rv;
    if (rx->answered) {
      rx->credit += len; /* dropped unread */
      node_rx_credit(conn, rx);
      return 0;
    }
    if (rx->paused) {
      /* Kept until resumed (at most the stream's window: its credit is
       * withheld), and credited to the connection now so that other
       * streams go on. */
      if (!rx->held.limit) {
        ckt_buf_init(&rx->held, SIZE_MAX);
      }
      if (ckt_buf_append(&rx->held, data, len) != CKT_OK) {
        ckt_conn_credit(conn, len);
        rv = CKT_ERR_NOMEM;
        goto malformed;
      }
      if (!held) {
        ckt_conn_credit(conn, len);
        rx->precredited += len;
      }
      return 0;
    }
    rv = node_rx_frame(n, rx, &data, &len, &type, &body);
    if (rv == 0) {
      break;
    }
    if (rv > 0 && pc && pc->psk_on &&
        psk_open_body(pc, type, &body) != CKT_OK) {
      ckt_buf_free(&body);
      rv = CKT_ERR_PSK; /* a frame not sealed with our keys */
    }
    if (rv > 0 && rx->kind == RX_CIRCUIT) {
      rv = circuit_on_frame(s, rx, type, &body);
      if (rv != 0) {
        ckt_conn_credit(conn, len); /* the circuit is gone: discard */
        return rv;
      }
    } else if (rv > 0 && rx->kind == RX_INBOUND && type == CKT_FRAME_FRAGMENT) {
      rv = on_open(n, conn, s, rx, &body, len);
      if (rv != 0) {
        return rv;
      }
    } else if (rv > 0) {
      rv = node_message_decode(n, type, &body, &m);
      if (rv == CKT_OK) {
        node_rx_credit(conn, rx); /* the frame is decoded: its bytes are free */
        rv = on_message(n, conn, s, rx, m, len);
        if (rv != 0) {
          if (ckt_stream_user(s)) {
            ckt_conn_credit(conn, len);
          }
          return rv;
        }
        rx = ckt_stream_user(s);
        continue;
      }
    }
    if (rv < 0) {
    malformed:
      node_log(n, "malformed frame from %s: %s; stream reset",
               pc ? pc->name : "a peer", ckt_strerror(rv));
      if (rx->kind == RX_CALL) {
        rx->credit += len;
        node_rx_credit(conn, rx);
        call_malformed(rx);
      } else if (rx->kind == RX_SRVCALL) {
        ckt_conn_credit(conn, len);
        srvcall_malformed(rx);
      } else if (rx->kind == RX_CIRCUIT) {
        ckt_conn_credit(conn, len);
        circuit_malformed(rx, ckt_strerror(rv)); /* both ends hear it */
      } else {
        inbound_drop(conn, s, rx, len);
      }
      return APP_MALFORMED;
    }
    rx = ckt_stream_user(s);
  }
  if (!rx && len > 0 && !held) {
    ckt_conn_credit(conn, len); /* a stream we gave up on: discard */
  }
  return 0;
}

void node_stream_resume(ckt_stream *s) {
  rxstate *rx = ckt_stream_user(s);
  ckt_conn *conn = ckt_stream_conn(s);
  pconn *pc = ckt_conn_user(conn);
  ckt_buf held;
  int rv;
  if (!rx || !pc || rx->paused || !rx->held.len) {
    return;
  }
  held = rx->held;
  ckt_buf_init(&rx->held, SIZE_MAX);
  rv = stream_input(pc->n, conn, s, rx, held.data, held.len, 1);
  free(held.data);
  if (rv > 0) {
    ckt_stream_reset(s, (uint64_t)rv);
  }
}

static int on_stream_data(ckt_conn *conn, ckt_stream *s, const uint8_t *data,
                          size_t len, int fin, void *user) {
  ckt_node *n = user;
  rxstate *rx = ckt_stream_user(s);
  pconn *pc = ckt_conn_user(conn);
  int was_manual = rx && (rx->kind == RX_CIRCUIT || rx->manual);
  int rv;
  (void)fin;
  if (rx && rx->kind == RX_PSK) {
    ckt_conn_credit(conn, len);
    if (pc) {
      psk_input(pc, data, len);
    }
    return 0;
  }
  if (rx && rx->kind == RX_INBOUND && pc && !pc->psk_on &&
      (ckt_stream_id(s) & 2) && (ckt_stream_id(s) >> 2) == 0 && len >= 7 &&
      memcmp(data, "CKTPSK1", 7) == 0) {
    ckt_conn_close(conn, APP_PSK,
                   "the peer uses a pre-shared key (-psk) and this node has "
                   "none");
    return 0;
  }
  if (rx && rx->kind == RX_CIRCUIT) {
    circuit_received(rx, len); /* stream credit, unless its reader lags */
  } else if (rx && rx->manual) {
    if (rx->paused) {
      rx->owed += len;
    } else {
      ckt_stream_credit(s, len);
    }
  }
  rv = stream_input(n, conn, s, rx, data, len, 0);
  rx = ckt_stream_user(s);
  if (!was_manual && rx && rx->kind == RX_CIRCUIT) {
    /* This chunk opened the circuit (its stream credit is manual now). */
    circuit_received(rx, len);
  } else if (!was_manual && rx && rx->manual) {
    /* This chunk started a streaming call (its credit is manual now). */
    ckt_stream_credit(s, len);
  }
  return rv;
}

static void on_stream_closed(ckt_conn *conn, ckt_stream *s, uint64_t app_error,
                             void *user) {
  rxstate *rx = ckt_stream_user(s);
  (void)user;
  if (!rx || rx->kind == RX_PSK) {
    return; /* the PSK stream's marker is shared and static */
  }
  ckt_stream_set_user(s, NULL);
  node_rx_credit(conn, rx); /* a partial frame thrown away */
  if (rx->kind == RX_CALL) {
    call_on_stream_closed(rx, app_error);
    return;
  }
  if (rx->kind == RX_SRVCALL) {
    srvcall_on_stream_closed(rx, app_error);
    return;
  }
  if (rx->kind == RX_CIRCUIT) {
    circuit_on_stream_closed(rx, app_error);
    return;
  }
  node_rx_clear(rx);
  ckt_buf_free(&rx->held);
  free(rx);
}

static void on_stream_acked(ckt_conn *conn, ckt_stream *s, void *user) {
  rxstate *rx = ckt_stream_user(s);
  (void)conn, (void)user;
  if (!rx) {
    return;
  }
  if (rx->kind == RX_CIRCUIT) {
    circuit_writable(s, rx);
  } else if (rx->kind == RX_CALL) {
    call_acked(rx);
  } else if (rx->kind == RX_SRVCALL) {
    srvcall_acked(rx);
  }
}

static void on_streams_available(ckt_conn *conn, void *user) {
  pconn *pc = ckt_conn_user(conn);
  (void)user;
  if (pc) {
    node_pconn_pump(pc);
  }
}

/* ---- runtime glue ------------------------------------------------------- */

static void ev_datagram(void *user, const ckt_addr *from, const uint8_t *data,
                        size_t len) {
  ckt_node *n = user;
  ckt_endpoint_recv(n->ep, from, data, len);
}

static void ev_batch_done(void *user) {
  ckt_node *n = user;
  ckt_endpoint_flush(n->ep);
}

/* ---- life cycle --------------------------------------------------------- */

void ckt_node_config_init(ckt_node_config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
}

/* The known-keys store of one role (server: the client keys it checks):
 * the file the configuration names, else <cert_dir>/known_client_keys or
 * known_server_keys when the node reads its identities from a directory.
 * *out stays NULL when there is no file to consult.  The store logs its
 * own errors, naming the file. */
static int open_known(ckt_node *n, int server, ckt_known **out) {
  const char *path =
      server ? n->cfg.known_client_keys : n->cfg.known_server_keys;
  char buf[PATH_MAX];
  ckt_known_config kc;

  *out = NULL;
  if (!path && n->cert_dir) {
    if (snprintf(buf, sizeof(buf), "%s/%s", n->cert_dir,
                 server ? "known_client_keys" : "known_server_keys") >=
        (int)sizeof(buf)) {
      node_log(n, "the certificate directory's name is too long: %s",
               n->cert_dir);
      return CKT_ERR_TOO_LARGE;
    }
    path = buf;
  }
  if (!path) {
    return CKT_OK;
  }
  memset(&kc, 0, sizeof(kc));
  kc.path = path;
  kc.clients = server;
  kc.log = ep_log;
  kc.log_user = n;
  return ckt_known_open(&kc, out);
}

/* The TLS context of one role (server: 1) for an identity: its known-keys
 * file opened, and its key kept to sign pre-shared-key HELLOs. */
static int role_ctx(ckt_node *n, int server, const char *cert, size_t cert_len,
                    const ckt_ed25519_key *key, const char *ca, size_t ca_len,
                    WOLFSSL_CTX **out) {
  ckt_tls_config tc;
  int rv;
  memset(&tc, 0, sizeof(tc));
  tc.cert_pem = cert;
  tc.cert_len = cert_len;
  tc.key = key;
  tc.ca_pem = ca;
  tc.ca_len = ca_len;
  tc.aes_gcm = n->cfg.aes_gcm;
  tc.skip_verify = n->cfg.insecure_skip_verify;
  n->id_key[server ? 1 : 0] = *key;
  rv = open_known(n, server, &tc.known);
  if (rv == CKT_OK && (rv = ckt_tls_ctx_new(server, &tc, out)) != CKT_OK) {
    ckt_known_free(tc.known); /* the context did not take it */
  }
  return rv;
}

static int load_tls(ckt_node *n, const char *name, int server, const char *ca,
                    size_t ca_len, WOLFSSL_CTX **out) {
  ckt_identity_options io;
  ckt_ed25519_key key;
  char *cert = NULL;
  size_t cert_len = 0;
  int rv;

  memset(&io, 0, sizeof(io));
  io.passphrase = n->cfg.passphrase;
  io.passphrase_user = n->cfg.passphrase_user;
  rv = ckt_identity_load(n->cert_dir, name, &io, &cert, &cert_len, &key);
  if (rv != CKT_OK) {
    node_log(n, "cannot load the identity %s/%s.{crt,key}: %s", n->cert_dir,
             name, ckt_strerror(rv));
    return rv;
  }
  rv = role_ctx(n, server, cert, cert_len, &key, ca, ca_len, out);
  if (rv != CKT_OK) {
    node_log(n, "cannot use the identity %s/%s: %s", n->cert_dir, name,
             ckt_strerror(rv));
  }
  ckt_key_wipe(&key);
  ckt_free(cert);
  return rv;
}

static int identity_exists(ckt_node *n, const char *name) {
  char path[PATH_MAX];
  FILE *f;
  snprintf(path, sizeof(path), "%s/%s.crt", n->cert_dir, name);
  f = fopen(path, "r");
  if (f) {
    fclose(f);
  }
  return f != NULL;
}

static int node_tls(ckt_node *n) {
  char ca_path[PATH_MAX], *ca = NULL;
  size_t ca_len = 0;
  int rv;

  snprintf(ca_path, sizeof(ca_path), "%s", n->ca_file);
  rv = ckt_pem_file_read(ca_path, &ca, &ca_len);
  if (rv != CKT_OK) {
    node_log(n, "cannot read the CA certificate %s: %s", ca_path,
             rv == CKT_ERR_IO ? strerror(errno) : ckt_strerror(rv));
    return rv;
  }
  if (n->cfg.serve) {
    rv = load_tls(n, n->server_name, 1, ca, ca_len, &n->server_tls);
  }
  if (rv == CKT_OK) {
    const char *who = n->client_name;
    if (n->cfg.serve && !identity_exists(n, who)) {
      who = n->server_name;
    }
    rv = load_tls(n, who, 0, ca, ca_len, &n->client_tls);
  }
  ckt_free(ca);
  if (rv == CKT_OK && n->cfg.insecure_skip_verify) {
    node_log(n, "WARNING: INSECURE skip-verify mode: peers' certificates are "
                "NOT checked against the CA");
  }
  /* The caller's strings are valid during ckt_node_new() only. */
  n->cfg.known_client_keys = n->cfg.known_server_keys = NULL;
  return rv;
}

/* A simulated node's TLS contexts from the built-in identity of its host
 * (both roles present the same one).  Known keys only from files the
 * configuration names: a simulation touches no file by default. */
static int node_tls_sim(ckt_node *n, int index) {
  ckt_ed25519_key key;
  const char *cert, *ca;
  size_t cert_len, ca_len;
  int rv = peer_sim_identity(index, &cert, &cert_len, &key, &ca, &ca_len);
  int role;
  if (rv != CKT_OK) {
    node_log(n, "cannot make the simulation's identity %d: %s", index,
             ckt_strerror(rv));
    return rv;
  }
  for (role = n->cfg.serve ? 1 : 0; role >= 0 && rv == CKT_OK; --role) {
    rv = role_ctx(n, role, cert, cert_len, &key, ca, ca_len,
                  role ? &n->server_tls : &n->client_tls);
  }
  ckt_key_wipe(&key);
  n->cfg.known_client_keys = n->cfg.known_server_keys = NULL;
  return rv;
}

static void derive_secret(ckt_node *n, uint8_t out[CKT_STATIC_SECRET_LEN]) {
  /* Tied to the node's identity and port: a restarted node answers
   * packets of its previous run with resets the peers accept. */
  crypto_generichash_state st;
  crypto_generichash_init(&st, NULL, 0, CKT_STATIC_SECRET_LEN);
  crypto_generichash_update(&st, (const uint8_t *)"ckt stateless v1", 16);
  crypto_generichash_update(&st, (const uint8_t *)n->cert_dir,
                            strlen(n->cert_dir));
  crypto_generichash_update(&st, (const uint8_t *)n->address,
                            strlen(n->address));
  crypto_generichash_final(&st, out, CKT_STATIC_SECRET_LEN);
}

/* The part of a new node that does not depend on where it runs: the
 * configuration with its defaults, limits and names. */
static int node_alloc(const ckt_node_config *cfg, int default_certs,
                      ckt_node **out) {
  char config_dir[PATH_MAX], buf[PATH_MAX];
  ckt_node *n = calloc(1, sizeof(*n));
  if (!n) {
    return CKT_ERR_NOMEM;
  }
  *out = n;
  n->cfg = *cfg;
  pthread_mutex_init(&n->mu, NULL);
  if (!n->cfg.call_timeout_ms) {
    n->cfg.call_timeout_ms = CKT_DEFAULT_CALL_TIMEOUT_MS;
  }
  if (!n->cfg.idle_timeout_ms) {
    n->cfg.idle_timeout_ms = CKT_DEFAULT_IDLE_TIMEOUT_MS;
  }
  if (!n->cfg.keepalive_ms) {
    n->cfg.keepalive_ms = n->cfg.idle_timeout_ms / 3;
  }
  if (!n->cfg.handshake_timeout_ms) {
    n->cfg.handshake_timeout_ms = 10000;
  }
  n->lim.max_payload = cfg->max_message_size ? cfg->max_message_size
                                             : CKT_MESSAGE_DEFAULT_MAX_PAYLOAD;
  n->flim.max_payload = n->lim.max_payload;
  n->circuit_queue_max = cfg->max_queued_per_circuit
                             ? cfg->max_queued_per_circuit
                             : CKT_CIRCUIT_QUEUE_MAX;
  if (n->circuit_queue_max > (1ull << 40)) {
    n->circuit_queue_max = 1ull << 40; /* no overflow in what is added */
  }
  /* A message frame may be compressed, or stored behind the compressed
   * frame's prefix. */
  n->frame_max = ckt_message_encoded_max(&n->lim) + CKT_ZFRAME_PREFIX_LEN;
  if (ckt_fragment_encoded_max(&n->flim) > n->frame_max) {
    n->frame_max = ckt_fragment_encoded_max(&n->flim);
  }
  n->listen = strdup(cfg->listen ? cfg->listen : "0.0.0.0:0");
  if (cfg->cert_dir) {
    n->cert_dir = strdup(cfg->cert_dir);
  } else if (default_certs &&
             ckt_config_dir(config_dir, sizeof(config_dir)) == CKT_OK &&
             snprintf(buf, sizeof(buf), "%s/certs", config_dir) <
                 (int)sizeof(buf)) {
    n->cert_dir = strdup(buf);
  }
  n->server_name = strdup(cfg->server_name ? cfg->server_name : "node");
  n->client_name = strdup(cfg->client_name ? cfg->client_name : "client");
  if (cfg->ca_file) {
    n->ca_file = strdup(cfg->ca_file);
  } else if (n->cert_dir && snprintf(buf, sizeof(buf), "%s/ca.crt",
                                     n->cert_dir) < (int)sizeof(buf)) {
    n->ca_file = strdup(buf);
  }
  n->cfg.listen = n->cfg.cert_dir = n->cfg.server_name = NULL;
  n->cfg.client_name = n->cfg.ca_file = NULL;
  if (!n->listen || (default_certs && (!n->cert_dir || !n->ca_file)) ||
      (cfg->cert_dir && !n->cert_dir) || (cfg->ca_file && !n->ca_file) ||
      !n->server_name || !n->client_name) {
    return CKT_ERR_NOMEM;
  }
  if (cfg->psk_file) {
    int rv = ckt_psk_load(cfg->psk_file, n->psk, &n->psk_len);
    if (rv != CKT_OK) {
      node_log(n, "cannot use the pre-shared key %s: %s", cfg->psk_file,
               rv == CKT_ERR_FORMAT ? "it must hold 32 to 64 bytes"
               : rv == CKT_ERR_IO   ? strerror(errno)
                                    : ckt_strerror(rv));
      return rv;
    }
    /* Sealed frame bodies are longer by the nonce and the tag. */
    n->frame_max += CKT_PSK_OVERHEAD;
  }
  n->cfg.psk_file = NULL;
  return CKT_OK;
}

/* The endpoint on the node's runtime, bound at `local`. */
static int node_endpoint(ckt_node *n, const ckt_addr *local,
                         const uint8_t secret[CKT_STATIC_SECRET_LEN]) {
  ckt_endpoint_config ec;
  int rv;

  n->rt->ops->random(n->rt, (uint8_t *)&n->next_call_id,
                     sizeof(n->next_call_id));
  n->next_call_id &= 0x00ffffffffffffffull; /* room to count up */
  ckt_addr_format(local, n->address, sizeof(n->address));
  memset(&ec, 0, sizeof(ec));
  ec.server_tls = n->server_tls;
  ec.client_tls = n->client_tls;
  ec.idle_timeout = (uint64_t)n->cfg.idle_timeout_ms * 1000000ull;
  ec.keepalive = (uint64_t)n->cfg.keepalive_ms * 1000000ull;
  ec.handshake_timeout = (uint64_t)n->cfg.handshake_timeout_ms * 1000000ull;
  ec.retry = n->cfg.retry;
  /* Connection credit follows consumption, so a peer can make this node
   * hold at most one window of unfinished frames per connection; the
   * window must fit the largest frame. */
  ec.manual_conn_credit = 1;
  ec.conn_window = 2 * (n->frame_max + CKT_FRAME_HEADER_LEN);
  if (ec.conn_window < 8u * 1024 * 1024) {
    ec.conn_window = 8u * 1024 * 1024;
  }
  ec.max_connections = n->cfg.max_connections;
  ec.max_per_address = n->cfg.max_connections_per_address;
  ec.handshake_rate = n->cfg.max_handshakes_per_second;
  ec.max_streams = n->cfg.max_circuits_per_connection;
  ec.max_queued = n->cfg.max_queued_per_connection;
  if (ec.max_queued && ec.max_queued < n->frame_max + CKT_FRAME_HEADER_LEN) {
    /* Smaller, and the largest frame could never be written. */
    ec.max_queued = n->frame_max + CKT_FRAME_HEADER_LEN;
  }
  ec.no_loopback_shortcuts = n->sim_host != NULL;
  memcpy(ec.static_secret, secret, CKT_STATIC_SECRET_LEN);
  ec.cb.conn_ready = on_conn_ready;
  ec.cb.conn_closed = on_conn_closed;
  ec.cb.stream_opened = on_stream_opened;
  ec.cb.stream_data = on_stream_data;
  ec.cb.stream_closed = on_stream_closed;
  ec.cb.streams_available = on_streams_available;
  ec.cb.stream_acked = on_stream_acked;
  ec.user = n;
  ec.log = ep_log;
  rv = ckt_endpoint_new(n->rt, local, &ec, &n->ep);
  if (rv == CKT_OK) {
    circuit_register_builtin(n);
  }
  return rv;
}

int ckt_node_new(const ckt_node_config *cfg, ckt_node **out) {
  ckt_ev_receiver recv;
  ckt_addr bind_addr;
  uint8_t secret[CKT_STATIC_SECRET_LEN];
  ckt_node *n = NULL;
  int rv;

  if (!cfg || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = node_alloc(cfg, 1, &n)) != CKT_OK) {
    goto fail;
  }
  if (ckt_addr_parse(n->listen, NULL, &bind_addr) != CKT_OK) {
    node_log(n, "bad listen address '%s' (want host:port)", n->listen);
    rv = CKT_ERR_INVALID_ARGUMENT;
    goto fail;
  }
  if ((rv = node_tls(n)) != CKT_OK) {
    goto fail;
  }
  if ((rv = ckt_ev_new(&bind_addr, &n->ev)) != CKT_OK) {
    node_log(n, "cannot bind %s: %s", n->listen,
             rv == CKT_ERR_IO ? strerror(errno) : ckt_strerror(rv));
    goto fail;
  }
  n->rt = ckt_ev_runtime(n->ev);
  ckt_addr_format(&ckt_ev_udp(n->ev)->local, n->address, sizeof(n->address));
  derive_secret(n, secret);
  rv = node_endpoint(n, &ckt_ev_udp(n->ev)->local, secret);
  ckt_secure_zero(secret, sizeof(secret));
  if (rv != CKT_OK) {
    goto fail;
  }
  recv.datagram = ev_datagram;
  recv.batch_done = ev_batch_done;
  recv.user = n;
  ckt_ev_set_receiver(n->ev, &recv);
  *out = n;
  return CKT_OK;

fail:
  ckt_node_free(n);
  return rv;
}

int ckt_sim_node_new(ckt_sim_host *h, uint16_t port, const ckt_node_config *cfg,
                     ckt_node **out) {
  sim_receiver recv;
  ckt_addr local;
  uint8_t secret[CKT_STATIC_SECRET_LEN];
  ckt_sim_host *prev;
  ckt_node *n = NULL;
  int rv;

  if (!h || !cfg || !out || sim_host_is_bound(h)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = node_alloc(cfg, 0, &n)) != CKT_OK) {
    ckt_node_free(n);
    return rv;
  }
  recv.datagram = ev_datagram;
  recv.batch_done = ev_batch_done;
  recv.user = n;
  rv = sim_host_bind(h, port ? port : CKT_DEFAULT_PORT, &recv, &n->rt, &local);
  if (rv != CKT_OK) {
    ckt_node_free(n);
    return rv;
  }
  n->sim_host = h;
  /* What the node draws while it is built (TLS contexts, its call IDs)
   * comes from the host's stream too. */
  prev = sim_enter(h);
  ckt_addr_format(&local, n->address, sizeof(n->address));
  rv = n->cert_dir ? node_tls(n) : node_tls_sim(n, ckt_sim_host_index(h));
  if (rv == CKT_OK) {
    sim_host_secret(h, secret);
    rv = node_endpoint(n, &local, secret);
    ckt_secure_zero(secret, sizeof(secret));
  }
  sim_leave(prev);
  if (rv != CKT_OK) {
    ckt_node_free(n);
    return rv;
  }
  *out = n;
  return CKT_OK;
}

void ckt_node_address(const ckt_node *n, char *out, size_t outsz) {
  snprintf(out, outsz, "%s", n->address);
}

static void loop_body(ckt_node *n) {
  pthread_mutex_lock(&n->mu);
  n->loop_thread = pthread_self();
  n->loop_running = 1;
  pthread_mutex_unlock(&n->mu);
  ckt_ev_run(n->ev);
  pthread_mutex_lock(&n->mu);
  n->loop_running = 0;
  pthread_mutex_unlock(&n->mu);
}

static void *loop_main(void *arg) {
  loop_body(arg);
  return NULL;
}

int ckt_node_start(ckt_node *n) {
  if (n->sim_host) {
    return CKT_ERR_INVALID_ARGUMENT; /* the simulation runs it */
  }
  if (n->thread_started) {
    return CKT_OK;
  }
  if (pthread_create(&n->thread, NULL, loop_main, n) != 0) {
    return CKT_ERR_IO;
  }
  n->thread_started = 1;
  return CKT_OK;
}

void ckt_node_run(ckt_node *n) {
  if (!n->sim_host) {
    loop_body(n);
  }
}

/* On the loop: fail what waits, close connections, end the loop. */
/* The second half of a stop: fail what waits, close the connections,
 * end the loop. */
static void stop_finish(void *arg) {
  ckt_node *n = arg;
  while (n->conns) {
    pconn *pc = n->conns;
    calls_conn_lost(pc, CKT_ERR_CLOSED, "the node is stopping");
    if (pc->conn) {
      ckt_conn_close(pc->conn, 0, "node stopping"); /* frees pc */
    } else {
      pconn_free(pc);
    }
  }
  if (n->ev) {
    ckt_ev_stop(n->ev);
  }
}

/* Circuits closing as the node stops send CLOSE frames; they get a short
 * grace (STOP_GRACE_NS) to reach the remote ends before the connections
 * close, so those hear "peer stopped" and not "connection lost". */
#define STOP_GRACE_NS (150ull * 1000 * 1000)

static void stop_on_loop(void *arg) {
  ckt_node *n = arg;
  int had_circuits = circuit_stop_all(n);
  set_stopping(n);
  ckt_endpoint_flush(n->ep);
  if (had_circuits) {
    n->stop_timer = n->rt->ops->timer_new(n->rt, stop_finish, n);
    if (n->stop_timer) {
      n->rt->ops->timer_arm(n->rt, n->stop_timer,
                            n->rt->ops->now(n->rt) + STOP_GRACE_NS);
      return;
    }
  }
  stop_finish(n);
}

void ckt_node_stop(ckt_node *n) {
  if (!n || (!n->ev && !n->sim_host)) {
    return;
  }
  if (n->sim_host) {
    /* Completes as the simulation runs (the CLOSE grace included). */
    if (!n->stop_posted) {
      n->stop_posted = 1;
      n->rt->ops->post(n->rt, stop_on_loop, n);
    }
    return;
  }
  if (node_on_loop(n)) {
    /* From a handler or callback: the endpoint may be mid-packet here,
     * so the stop runs once this callback has returned. */
    n->rt->ops->post(n->rt, stop_on_loop, n);
    return;
  }
  if (n->rt->ops->post(n->rt, stop_on_loop, n) != CKT_OK) {
    ckt_ev_stop(n->ev);
  }
  if (n->thread_started) {
    pthread_join(n->thread, NULL);
    n->thread_started = 0;
  }
}

void ckt_node_free(ckt_node *n) {
  service_t *s;
  if (!n) {
    return;
  }
  if (n->thread_started) {
    ckt_node_stop(n);
  }
  set_stopping(n);
  if (n->ev) {
    /* Work other threads posted still runs, and fails as "closed". */
    ckt_ev_run_posted(n->ev);
  } else if (n->sim_host) {
    sim_host_run_posted(n->sim_host);
  }
  /* A node freed without a stop (as a simulated crash does): its peers
   * stop (their circuits end, told "peer stopped" locally), and the
   * connections still up go as if lost, their calls failing, before the
   * endpoint frees the streams under them. */
  circuit_stop_all(n);
  while (n->conns) {
    pconn *pc = n->conns;
    pconn_unlink(pc);
    if (pc->conn) {
      ckt_conn_set_user(pc->conn, NULL);
    }
    calls_conn_lost(pc, CKT_ERR_CLOSED, "the node is stopping");
    circuit_conn_lost(pc, "the node is stopping");
    pconn_free(pc);
  }
  srvcalls_free_all(n);
  ckt_endpoint_free(n->ep);
  ckt_zctx_free(n->zctx);
  if (n->stop_timer) {
    n->rt->ops->timer_free(n->rt, n->stop_timer);
  }
  ckt_ev_free(n->ev);
  if (n->sim_host) {
    sim_host_unbind(n->sim_host);
  }
  ckt_tls_ctx_free(n->server_tls);
  ckt_tls_ctx_free(n->client_tls);
  ckt_secure_zero(n->psk, sizeof(n->psk));
  ckt_secure_zero(n->id_key, sizeof(n->id_key));
  while ((s = n->services) != NULL) {
    n->services = s->next;
    free(s);
  }
  free(n->listen);
  free(n->cert_dir);
  free(n->server_name);
  free(n->client_name);
  free(n->ca_file);
  pthread_mutex_destroy(&n->mu);
  free(n);
}

void ckt_node_get_stats(ckt_node *n, ckt_node_stats *out) {
  ckt_udp *u = n->ev ? ckt_ev_udp(n->ev) : NULL;
  memset(out, 0, sizeof(*out));
  out->calls_sent = CKT_COUNTER_GET(n->stats.calls_sent);
  out->calls_answered = CKT_COUNTER_GET(n->stats.calls_answered);
  out->calls_failed = CKT_COUNTER_GET(n->stats.calls_failed);
  out->calls_served = CKT_COUNTER_GET(n->stats.calls_served);
  out->oneways_sent = CKT_COUNTER_GET(n->stats.oneways_sent);
  out->oneways_received = CKT_COUNTER_GET(n->stats.oneways_received);
  if (n->ep) {
    const ckt_endpoint_stats *es = ckt_endpoint_get_stats(n->ep);
    out->connections_open = CKT_COUNTER_GET(es->connections_open);
    out->packets_dropped = CKT_COUNTER_GET(es->packets_dropped);
    out->stateless_resets_sent = CKT_COUNTER_GET(es->stateless_resets_sent);
    out->version_negotiations_sent =
        CKT_COUNTER_GET(es->version_negotiations_sent);
    out->retries_sent = CKT_COUNTER_GET(es->retries_sent);
  }
  if (u) {
    out->bytes_sent = CKT_COUNTER_GET(u->bytes_sent);
    out->bytes_received = CKT_COUNTER_GET(u->bytes_received);
    out->datagrams_sent = CKT_COUNTER_GET(u->datagrams_sent);
    out->datagrams_received = CKT_COUNTER_GET(u->datagrams_received);
  } else if (n->sim_host) {
    const sim_host_counters *hc = sim_host_get_counters(n->sim_host);
    out->bytes_sent = hc->bytes_sent;
    out->bytes_received = hc->bytes_received;
    out->datagrams_sent = hc->datagrams_sent;
    out->datagrams_received = hc->datagrams_received;
  }
}
