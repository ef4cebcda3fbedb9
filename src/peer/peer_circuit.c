/*
 * peer_circuit.c — peers, circuits and fragments on the node.
 *
 * A circuit is one bidirectional QUIC stream.  Its first frame is a
 * fragment OPEN naming the target peer (or, with a zero peer ID, any peer
 * of the service), so opening costs no round trip; then DATA and ERROR
 * fragments flow both ways in order; CLOSE (with a reason) and FIN end it,
 * REFUSE answers an OPEN that cannot be served.  See docs/wire.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/peer.h"
#include "core_util.h"
#include "peer_int.h"

#define APP_CIRCUIT_GONE 0x12 /* the other end of a circuit is gone */
#define FROM_SERVICE_ARG "ckt.from_service"
#define VERSION_ARG "ckt.service_version"

struct ckt_peer {
  ckt_node *n;
  ckt_peer *next, *prev; /* n->peers */
  char service[CKT_MESSAGE_SERVICE_MAX + 1];
  uint8_t id[CKT_PEER_ID_LEN];
  char id_hex[CKT_PEER_ID_HEX_LEN + 1];
  char url[CKT_PEER_URL_MAX];
  ckt_peer_service svc;
  void *user;
  ckt_circuit *circuits;
  int stopping;
};

struct ckt_circuit {
  rxstate rx; /* first: stream user pointers cast to rxstate */
  ckt_peer *p;
  pconn *pc;
  ckt_stream *stream; /* NULL until the connection takes it */
  uint8_t id[CKT_PEER_ID_LEN];
  char id_hex[CKT_PEER_ID_HEX_LEN + 1];
  char *name;       /* owned; sized to fit: idle circuits stay small */
  char *remote_url; /* owned */
  uint8_t remote_id[CKT_PEER_ID_LEN];
  ckt_buf pending; /* frames written before the stream existed */
  uint64_t serial;
  int want_writable;
  int waiting_stream; /* counted in pc->circuits_waiting */
  int stalled;        /* its reader fell behind: received bytes are owed */
  int accepting;      /* inside circuit_new: circuit_end must not free it */
  int ended;
  uint64_t owed; /* stream credit withheld while stalled */
  void *user;
  ckt_circuit *p_next, *p_prev;   /* in p->circuits */
  ckt_circuit *pc_next, *pc_prev; /* in pc->circuits */
  /* In pc->wr_waiters while it waits for room (or in a list of those
   * about to hear they have it): acks walk the waiters, not every
   * circuit of the connection. */
  ckt_circuit *wr_next, *wr_prev, **wr_list;
};

static const uint8_t zero_id[CKT_PEER_ID_LEN];

/* ---- URLs ---------------------------------------------------------------- */

int ckt_url_format(const ckt_url *u, char *out, size_t outsz) {
  char id[CKT_PEER_ID_HEX_LEN + 1], cid[CKT_PEER_ID_HEX_LEN + 1];
  int n;
  ckt_peer_id_to_hex(u->peer_id, id);
  if (u->has_circuit) {
    ckt_peer_id_to_hex(u->circuit_id, cid);
    n = snprintf(out, outsz, "ckt://%s/%s/%s/%s", u->host_port, u->service, id,
                 cid);
  } else {
    n = snprintf(out, outsz, "ckt://%s/%s/%s", u->host_port, u->service, id);
  }
  return n >= 0 && (size_t)n < outsz ? CKT_OK : CKT_ERR_TOO_LARGE;
}

/* Copies [s, e) into out (size n) if it is non-empty, fits and has no
 * '/' or control characters. */
static int url_part(const char *s, const char *e, char *out, size_t n) {
  const char *q;
  if (e <= s || (size_t)(e - s) >= n) {
    return -1;
  }
  for (q = s; q < e; ++q) {
    if ((unsigned char)*q <= 0x20 || *q == '/' || *q == 0x7f) {
      return -1;
    }
  }
  memcpy(out, s, (size_t)(e - s));
  out[e - s] = 0;
  return 0;
}

int ckt_url_parse(const char *url, ckt_url *out) {
  static const char scheme[] = "ckt://";
  const char *p, *slash[3];
  char hex[CKT_PEER_ID_HEX_LEN + 1];
  int i;
  if (!url || !out) {
    return CKT_ERR_FORMAT;
  }
  memset(out, 0, sizeof(*out));
  if (strncmp(url, scheme, sizeof(scheme) - 1) != 0) {
    return CKT_ERR_FORMAT;
  }
  p = url + sizeof(scheme) - 1;
  for (i = 0; i < 3; ++i) {
    slash[i] = strchr(i ? slash[i - 1] + 1 : p, '/');
    if (!slash[i]) {
      break;
    }
  }
  if (i < 2) {
    return CKT_ERR_FORMAT;
  }
  if (url_part(p, slash[0], out->host_port, sizeof(out->host_port)) != 0 ||
      url_part(slash[0] + 1, slash[1], out->service, sizeof(out->service)) !=
          0) {
    return CKT_ERR_FORMAT;
  }
  if (i == 2) {
    if (url_part(slash[1] + 1, slash[1] + 1 + strlen(slash[1] + 1), hex,
                 sizeof(hex)) != 0 ||
        ckt_peer_id_from_hex(hex, out->peer_id) != CKT_OK) {
      return CKT_ERR_FORMAT;
    }
    return CKT_OK;
  }
  if (url_part(slash[1] + 1, slash[2], hex, sizeof(hex)) != 0 ||
      ckt_peer_id_from_hex(hex, out->peer_id) != CKT_OK ||
      url_part(slash[2] + 1, slash[2] + 1 + strlen(slash[2] + 1), hex,
               sizeof(hex)) != 0 ||
      ckt_peer_id_from_hex(hex, out->circuit_id) != CKT_OK) {
    return CKT_ERR_FORMAT;
  }
  out->has_circuit = 1;
  return CKT_OK;
}

/* ---- peers --------------------------------------------------------------- */

static ckt_peer *peer_find(ckt_node *n, const char *service,
                           const uint8_t id[CKT_PEER_ID_LEN]) {
  ckt_peer *p;
  for (p = n->peers; p; p = p->next) {
    if (!p->stopping && strcmp(p->service, service) == 0 &&
        (!id || memcmp(p->id, id, CKT_PEER_ID_LEN) == 0)) {
      return p;
    }
  }
  return NULL;
}

int ckt_node_start_peer(ckt_node *n, const char *service, ckt_peer **out) {
  ckt_peer_service svc;
  ckt_url u;
  void *user;
  ckt_peer *p;
  if (!n || !service || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (node_peer_service(n, service, &svc, &user) != CKT_OK) {
    return CKT_ERR_NO_SERVICE;
  }
  if (svc.max_instances) {
    unsigned running = 0;
    ckt_peer *q, *any = NULL;
    for (q = n->peers; q; q = q->next) {
      if (!q->stopping && strcmp(q->service, service) == 0) {
        running++;
        any = q;
      }
    }
    if (running >= svc.max_instances) {
      *out = any;
      return CKT_ERR_LIMIT;
    }
  }
  p = calloc(1, sizeof(*p));
  if (!p) {
    return CKT_ERR_NOMEM;
  }
  p->n = n;
  p->svc = svc;
  p->user = user;
  snprintf(p->service, sizeof(p->service), "%s", service);
  n->rt->ops->random(n->rt, p->id, sizeof(p->id));
  ckt_peer_id_to_hex(p->id, p->id_hex);
  memset(&u, 0, sizeof(u));
  snprintf(u.host_port, sizeof(u.host_port), "%s", n->address);
  snprintf(u.service, sizeof(u.service), "%s", service);
  memcpy(u.peer_id, p->id, sizeof(p->id));
  ckt_url_format(&u, p->url, sizeof(p->url));
  p->next = n->peers;
  if (n->peers) {
    n->peers->prev = p;
  }
  n->peers = p;
  if (p->svc.started) {
    p->svc.started(p, p->user);
  }
  *out = p;
  return CKT_OK;
}

const char *ckt_peer_url(const ckt_peer *p) {
  return p->url;
}

const char *ckt_peer_id(const ckt_peer *p) {
  return p->id_hex;
}

const char *ckt_peer_service_name(const ckt_peer *p) {
  return p->service;
}

ckt_node *ckt_peer_node(const ckt_peer *p) {
  return p->n;
}

/* ---- circuits: bookkeeping ----------------------------------------------- */

static void circuit_link(ckt_circuit *c, ckt_peer *p, pconn *pc) {
  c->p = p;
  c->p_next = p->circuits;
  if (p->circuits) {
    p->circuits->p_prev = c;
  }
  p->circuits = c;
  c->pc = pc;
  c->pc_next = pc->circuits;
  if (pc->circuits) {
    pc->circuits->pc_prev = c;
  }
  pc->circuits = c;
  if (!c->stream) {
    c->waiting_stream = 1;
    pc->circuits_waiting++;
  }
}

static void wr_remove(ckt_circuit *c) {
  if (!c->wr_list) {
    return;
  }
  if (c->wr_prev) {
    c->wr_prev->wr_next = c->wr_next;
  } else {
    *c->wr_list = c->wr_next;
  }
  if (c->wr_next) {
    c->wr_next->wr_prev = c->wr_prev;
  }
  c->wr_next = c->wr_prev = NULL;
  c->wr_list = NULL;
}

static void wr_add(ckt_circuit **list, ckt_circuit *c) {
  wr_remove(c);
  c->wr_list = list;
  c->wr_prev = NULL;
  c->wr_next = *list;
  if (*list) {
    (*list)->wr_prev = c;
  }
  *list = c;
}

/* c's sender was told CKT_ERR_AGAIN: it hears `writable` when there is
 * room again (once it has a stream; circuit_pump adds it then). */
static void circuit_want_writable(ckt_circuit *c) {
  c->want_writable = 1;
  if (c->stream && c->pc && !c->wr_list) {
    wr_add(&c->pc->wr_waiters, c);
  }
}

static void circuit_free(ckt_circuit *c) {
  free(c->name);
  free(c->remote_url);
  free(c);
}

static void circuit_unlink(ckt_circuit *c) {
  if (c->p) {
    if (c->p_prev) {
      c->p_prev->p_next = c->p_next;
    } else {
      c->p->circuits = c->p_next;
    }
    if (c->p_next) {
      c->p_next->p_prev = c->p_prev;
    }
  }
  if (c->pc) {
    if (c->waiting_stream) {
      c->waiting_stream = 0;
      c->pc->circuits_waiting--;
    }
    if (c->pc_prev) {
      c->pc_prev->pc_next = c->pc_next;
    } else {
      c->pc->circuits = c->pc_next;
    }
    if (c->pc_next) {
      c->pc_next->pc_prev = c->pc_prev;
    }
  }
  wr_remove(c);
  c->p = NULL;
  c->pc = NULL;
}

/* Ends a circuit: the owner hears once, then it is freed.  The stream (if
 * any) forgets it; what still arrives there is discarded. */
static void circuit_end(ckt_circuit *c, const char *reason, int remote) {
  ckt_peer *p = c->p;
  if (c->ended) {
    return;
  }
  c->ended = 1;
  if (c->stream) {
    if (c->pc && c->pc->conn) {
      node_rx_credit(c->pc->conn, &c->rx);
    }
    /* Whatever still comes is discarded: the stream's window must not
     * stay shut on it, or the stream never ends. */
    if (c->owed) {
      ckt_stream_credit(c->stream, c->owed);
      c->owed = 0;
    }
    ckt_stream_set_manual_credit(c->stream, 0);
    ckt_stream_set_user(c->stream, NULL);
  }
  circuit_unlink(c);
  if (p && p->svc.circuit_closed) {
    p->svc.circuit_closed(p, c, reason ? reason : "", remote, p->user);
  }
  node_rx_clear(&c->rx);
  ckt_buf_free(&c->pending);
  if (!c->accepting) {
    circuit_free(c); /* else circuit_accept frees it when circuit_new returns */
  }
}

void circuit_malformed(rxstate *rx, const char *what) {
  char why[128];
  snprintf(why, sizeof(why), "malformed frame from the remote end (%s)", what);
  circuit_end((ckt_circuit *)rx, why, 1);
}

void circuit_adopt(pconn *to, pconn *from) {
  ckt_circuit *c = from->circuits, *next;
  for (; c; c = next) {
    next = c->pc_next;
    if (c->stream) {
      continue;
    }
    /* unlink from `from` */
    if (c->pc_prev) {
      c->pc_prev->pc_next = c->pc_next;
    } else {
      from->circuits = c->pc_next;
    }
    if (c->pc_next) {
      c->pc_next->pc_prev = c->pc_prev;
    }
    if (c->waiting_stream) {
      from->circuits_waiting--;
      to->circuits_waiting++;
    }
    c->pc = to;
    c->pc_prev = NULL;
    c->pc_next = to->circuits;
    if (to->circuits) {
      to->circuits->pc_prev = c;
    }
    to->circuits = c;
  }
}

/* Replaces c's remote URL with u's.  CKT_OK, CKT_ERR_NOMEM. */
static int circuit_set_url(ckt_circuit *c, const ckt_url *u) {
  char url[CKT_PEER_URL_MAX], *copy;
  if (ckt_url_format(u, url, sizeof(url)) != CKT_OK) {
    url[0] = '\0'; /* fields were bounded when parsed: cannot happen */
  }
  if (!(copy = strdup(url))) {
    return CKT_ERR_NOMEM;
  }
  free(c->remote_url);
  c->remote_url = copy;
  return CKT_OK;
}

static ckt_circuit *circuit_new(ckt_node *n) {
  ckt_circuit *c = calloc(1, sizeof(*c));
  if (!c) {
    return NULL;
  }
  c->rx.kind = RX_CIRCUIT;
  ckt_buf_init(&c->pending, n->circuit_queue_max + 64 * 1024);
  return c;
}

/* Encodes a fragment of this circuit as one frame and hands it to the
 * stream, or keeps it until the stream exists. */
static int circuit_write(ckt_circuit *c, ckt_fragment *f, int fin, int force) {
  ckt_node *n = c->p->n;
  ckt_buf b;
  int rv;
  memcpy(f->from_peer, c->p->id, CKT_PEER_ID_LEN);
  memcpy(f->to_peer, c->remote_id, CKT_PEER_ID_LEN);
  memcpy(f->circuit, c->id, CKT_PEER_ID_LEN);
  f->serial = c->serial + 1;
  if (f->payload_len > n->flim.max_payload) {
    return CKT_ERR_TOO_LARGE;
  }
  if (!force && c->stream &&
      ckt_stream_unacked(c->stream) >= n->circuit_queue_max) {
    circuit_want_writable(c);
    return CKT_ERR_AGAIN;
  }
  ckt_buf_init(&b, n->frame_max + CKT_FRAME_HEADER_LEN);
  rv = ckt_buf_append(&b, "\0\0\0\0\0", CKT_FRAME_HEADER_LEN);
  if (rv == CKT_OK) {
    rv = ckt_fragment_encode(f, &b);
  }
  if (rv == CKT_OK) {
    ckt_frame_header_encode(b.data, CKT_FRAME_FRAGMENT,
                            (uint32_t)(b.len - CKT_FRAME_HEADER_LEN));
    if (c->stream) {
      rv = node_stream_write(c->stream, b.data, b.len, fin);
      if (rv == CKT_ERR_AGAIN) {
        circuit_want_writable(c); /* the connection's queue is full */
      }
    } else if (!force && c->pending.len + b.len > n->circuit_queue_max) {
      circuit_want_writable(c);
      rv = CKT_ERR_AGAIN;
    } else {
      c->pending.limit = c->pending.len + b.len + 1; /* forced frames fit */
      rv = ckt_buf_append(&c->pending, b.data, b.len);
    }
  }
  ckt_buf_free(&b);
  if (rv == CKT_OK) {
    c->serial++;
  }
  return rv;
}

/* Opens streams for circuits waiting on pc and flushes what they hold. */
void circuit_pump(pconn *pc) {
  ckt_circuit *c;
  if (!pc->circuits_waiting) {
    return; /* every circuit has its stream: nothing to walk */
  }
  for (c = pc->circuits; c; c = c->pc_next) {
    if (c->stream) {
      continue;
    }
    if (ckt_conn_open_stream(pc->conn, 1, c, &c->stream) != CKT_OK) {
      c->stream = NULL;
      return; /* the stream limit: streams_available brings us back */
    }
    /* Credit follows consumption: a circuit whose reader stalls holds
     * back only itself (QUIC stream flow control). */
    ckt_stream_set_manual_credit(c->stream, 1);
    if (c->pending.len && node_stream_write(c->stream, c->pending.data,
                                            c->pending.len, 0) != CKT_OK) {
      ckt_stream_set_user(c->stream, NULL);
      ckt_stream_reset(c->stream, APP_CIRCUIT_GONE);
      c->stream = NULL;
      return;
    }
    ckt_buf_free(&c->pending);
    c->pending.limit = pc->n->circuit_queue_max + 64 * 1024;
    c->waiting_stream = 0;
    pc->circuits_waiting--;
    if (c->want_writable) {
      circuit_want_writable(c);
    }
  }
}

/* ---- circuits: opening --------------------------------------------------- */

static int open_to(ckt_peer *p, const ckt_url *u, const char *name,
                   ckt_fragment *first, void *user, ckt_circuit **out) {
  ckt_node *n = p->n;
  ckt_fragment *open = NULL;
  ckt_circuit *c = NULL;
  ckt_addr addr;
  pconn *pc;
  int rv;

  if (node_parse_addr(n, u->host_port, &addr) != CKT_OK) {
    rv = CKT_ERR_INVALID_ARGUMENT;
    goto done;
  }
  if (p->stopping) {
    rv = CKT_ERR_CLOSED;
    goto done;
  }
  if ((rv = node_pconn_get(n, &addr, &pc)) != CKT_OK) {
    goto done;
  }
  c = circuit_new(n);
  open = ckt_fragment_new();
  if (!c || !open) {
    rv = CKT_ERR_NOMEM;
    goto done;
  }
  n->rt->ops->random(n->rt, c->id, sizeof(c->id));
  ckt_peer_id_to_hex(c->id, c->id_hex);
  memcpy(c->remote_id, u->peer_id, CKT_PEER_ID_LEN);
  if (!(c->name = strdup(name ? name : "")) ||
      (rv = circuit_set_url(c, u)) != CKT_OK) {
    rv = CKT_ERR_NOMEM;
    goto done;
  }
  c->user = user;
  open->type = CKT_FRAG_OPEN;
  if ((rv = ckt_fragment_set_service(open, u->service)) != CKT_OK ||
      (rv = ckt_fragment_set_subject(open, c->name)) != CKT_OK ||
      (rv = ckt_fragment_set_arg(open, FROM_SERVICE_ARG, p->service)) !=
          CKT_OK) {
    goto done;
  }
  if (p->svc.version) {
    char v[16];
    snprintf(v, sizeof(v), "%u", p->svc.version);
    if ((rv = ckt_fragment_set_arg(open, VERSION_ARG, v)) != CKT_OK) {
      goto done;
    }
  }
  circuit_link(c, p, pc);
  rv = circuit_write(c, open, 0, 1);
  if (rv == CKT_OK && first) {
    first->type = CKT_FRAG_DATA;
    rv = circuit_write(c, first, 0, 1);
  }
  if (rv != CKT_OK) {
    circuit_unlink(c);
    goto done;
  }
  node_pconn_pump(pc);
  *out = c;
  c = NULL;

done:
  ckt_fragment_free(open);
  ckt_fragment_free(first);
  if (c) {
    ckt_buf_free(&c->pending);
    circuit_free(c);
  }
  return rv;
}

int ckt_peer_open_circuit(ckt_peer *p, const char *url, const char *name,
                          ckt_fragment *first, void *circuit_user,
                          ckt_circuit **out) {
  ckt_url u;
  if (!p || !out || ckt_url_parse(url, &u) != CKT_OK) {
    ckt_fragment_free(first);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  u.has_circuit = 0;
  return open_to(p, &u, name, first, circuit_user, out);
}

int ckt_peer_open_circuit_extant(ckt_peer *p, const char *host_port,
                                 const char *service, const char *name,
                                 ckt_fragment *first, void *circuit_user,
                                 ckt_circuit **out) {
  ckt_url u;
  memset(&u, 0, sizeof(u));
  if (!p || !host_port || !service || !out ||
      strlen(host_port) >= sizeof(u.host_port) ||
      strlen(service) >= sizeof(u.service)) {
    ckt_fragment_free(first);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  snprintf(u.host_port, sizeof(u.host_port), "%s", host_port);
  snprintf(u.service, sizeof(u.service), "%s", service);
  /* The zero peer ID asks the remote for its running instance. */
  return open_to(p, &u, name, first, circuit_user, out);
}

int ckt_circuit_open_sibling(ckt_circuit *c, const char *name,
                             ckt_fragment *first, void *circuit_user,
                             ckt_circuit **out) {
  ckt_url u;
  if (!c || !c->p || ckt_url_parse(c->remote_url, &u) != CKT_OK) {
    ckt_fragment_free(first);
    return CKT_ERR_CLOSED;
  }
  return open_to(c->p, &u, name, first, circuit_user, out);
}

/* Answers an OPEN we cannot serve: REFUSE with the reason, then FIN. */
static void refuse(ckt_node *n, ckt_stream *s, const ckt_fragment *open,
                   const char *why) {
  ckt_fragment *f = ckt_fragment_new();
  ckt_buf b;
  if (f) {
    f->type = CKT_FRAG_REFUSE;
    memcpy(f->from_peer, open->to_peer, CKT_PEER_ID_LEN);
    memcpy(f->to_peer, open->from_peer, CKT_PEER_ID_LEN);
    memcpy(f->circuit, open->circuit, CKT_PEER_ID_LEN);
    ckt_fragment_set_err(f, why);
    ckt_buf_init(&b, n->frame_max + CKT_FRAME_HEADER_LEN);
    if (ckt_buf_append(&b, "\0\0\0\0\0", CKT_FRAME_HEADER_LEN) == CKT_OK &&
        ckt_fragment_encode(f, &b) == CKT_OK) {
      ckt_frame_header_encode(b.data, CKT_FRAME_FRAGMENT,
                              (uint32_t)(b.len - CKT_FRAME_HEADER_LEN));
      node_stream_write(s, b.data, b.len, 1);
    }
    ckt_buf_free(&b);
    ckt_fragment_free(f);
  }
  ckt_stream_set_user(s, NULL);
}

void circuit_accept(ckt_node *n, pconn *pc, ckt_stream *s, rxstate *inbound,
                    ckt_fragment *open, uint64_t open_bytes) {
  ckt_peer_service svc;
  ckt_peer *p;
  ckt_circuit *c;
  ckt_url u;
  const char *from_service = ckt_fragment_get_arg(open, FROM_SERVICE_ARG);
  char why[600];
  void *user;

  node_rx_clear(inbound);
  free(inbound);
  ckt_stream_set_user(s, NULL);
  if (node_peer_service(n, open->service, &svc, &user) != CKT_OK) {
    snprintf(why, sizeof(why), "no peer service '%s' on %s", open->service,
             n->address);
    refuse(n, s, open, why);
    ckt_fragment_free(open);
    return;
  }
  {
    const char *v = ckt_fragment_get_arg(open, VERSION_ARG);
    unsigned theirs = v ? (unsigned)strtoul(v, NULL, 10) : 0;
    if (theirs && svc.version && theirs != svc.version) {
      snprintf(why, sizeof(why),
               "service '%s' is version %u on %s; the opener speaks version "
               "%u",
               open->service, svc.version, n->address, theirs);
      refuse(n, s, open, why);
      ckt_fragment_free(open);
      return;
    }
  }
  if (memcmp(open->to_peer, zero_id, CKT_PEER_ID_LEN) == 0) {
    p = peer_find(n, open->service, NULL); /* any instance, else a new one */
    if (!p && ckt_node_start_peer(n, open->service, &p) != CKT_OK) {
      p = NULL;
    }
  } else {
    p = peer_find(n, open->service, open->to_peer);
  }
  if (!p) {
    char hex[CKT_PEER_ID_HEX_LEN + 1];
    ckt_peer_id_to_hex(open->to_peer, hex);
    snprintf(why, sizeof(why),
             "no peer %s of service '%s' on %s (it may have stopped or "
             "restarted)",
             hex, open->service, n->address);
    refuse(n, s, open, why);
    ckt_fragment_free(open);
    return;
  }
  c = circuit_new(n);
  if (!c) {
    refuse(n, s, open, "out of memory");
    ckt_fragment_free(open);
    return;
  }
  memcpy(c->id, open->circuit, CKT_PEER_ID_LEN);
  ckt_peer_id_to_hex(c->id, c->id_hex);
  memcpy(c->remote_id, open->from_peer, CKT_PEER_ID_LEN);
  memset(&u, 0, sizeof(u));
  snprintf(u.host_port, sizeof(u.host_port), "%s", pc->name);
  snprintf(u.service, sizeof(u.service), "%s",
           from_service ? from_service : "");
  memcpy(u.peer_id, c->remote_id, CKT_PEER_ID_LEN);
  if (!(c->name = strdup(open->subject ? open->subject : "")) ||
      circuit_set_url(c, &u) != CKT_OK) {
    refuse(n, s, open, "out of memory");
    ckt_fragment_free(open);
    ckt_buf_free(&c->pending);
    circuit_free(c);
    return;
  }
  c->stream = s;
  circuit_link(c, p, pc);
  ckt_stream_set_user(s, c);
  ckt_stream_set_manual_credit(s, 1);
  (void)open_bytes; /* the node credits the whole first chunk */
  if (p->svc.circuit_new) {
    int refused;
    c->accepting = 1;
    refused = p->svc.circuit_new(p, c, open, p->user);
    c->accepting = 0;
    if (c->ended) {
      circuit_free(c); /* the callback closed it (or stopped its peer) */
    } else if (refused) {
      circuit_unlink(c);
      c->stream = NULL;
      ckt_stream_set_manual_credit(s, 0);
      refuse(n, s, open, "the peer refused the circuit");
      ckt_buf_free(&c->pending);
      circuit_free(c);
    }
  }
  ckt_fragment_free(open);
}

/* ---- circuits: traffic --------------------------------------------------- */

int circuit_on_frame(ckt_stream *s, rxstate *rx, uint8_t type, ckt_buf *body) {
  ckt_circuit *c = (ckt_circuit *)rx;
  ckt_peer *p = c->p;
  ckt_node *n = p->n;
  ckt_conn *conn = c->pc->conn;
  ckt_fragment *f = NULL;
  int rv = type == CKT_FRAME_FRAGMENT
               ? ckt_fragment_decode(body->data, body->len, &n->flim, &f)
               : CKT_ERR_FORMAT;
  ckt_buf_free(body);
  node_rx_credit(conn, rx);
  if (rv != CKT_OK || memcmp(f->circuit, c->id, CKT_PEER_ID_LEN) != 0) {
    char why[128];
    snprintf(why, sizeof(why), "malformed fragment from the remote end (%s)",
             ckt_strerror(rv != CKT_OK ? rv : CKT_ERR_FORMAT));
    ckt_fragment_free(f);
    circuit_end(c, why, 1);
    return 0x11;
  }
  if (memcmp(c->remote_id, zero_id, CKT_PEER_ID_LEN) == 0 &&
      memcmp(f->from_peer, zero_id, CKT_PEER_ID_LEN) != 0) {
    /* A prefer-extant circuit learns which instance answered. */
    ckt_url u;
    memcpy(c->remote_id, f->from_peer, CKT_PEER_ID_LEN);
    if (ckt_url_parse(c->remote_url, &u) == CKT_OK) {
      memcpy(u.peer_id, c->remote_id, CKT_PEER_ID_LEN);
      (void)circuit_set_url(c, &u); /* out of memory: the old URL stays */
    }
  }
  switch (f->type) {
  case CKT_FRAG_DATA:
  case CKT_FRAG_ERROR: {
    ckt_fragment *outer = n->rx_frag;
    n->rx_frag = f;
    if (f->type == CKT_FRAG_DATA && p->svc.fragment) {
      p->svc.fragment(p, c, f, p->user);
    } else if (f->type == CKT_FRAG_ERROR && p->svc.error) {
      p->svc.error(p, c, f, p->user);
    }
    if (n->rx_frag != f) {
      f = NULL; /* taken */
    }
    n->rx_frag = outer;
    break;
  }
  case CKT_FRAG_CLOSE:
  case CKT_FRAG_REFUSE: {
    char why[CKT_MESSAGE_ERR_MAX + 64];
    if (f->type == CKT_FRAG_REFUSE) {
      snprintf(why, sizeof(why), "refused: %s", f->err);
    } else {
      snprintf(why, sizeof(why), "%s", f->err[0] ? f->err : "closed");
    }
    ckt_stream_write(s, NULL, 0, 1); /* our half ends too */
    circuit_end(c, why, 1);
    break;
  }
  default:
    ckt_fragment_free(f);
    circuit_end(c, "the remote end sent an unexpected fragment", 1);
    return 0x11;
  }
  ckt_fragment_free(f);
  return 0;
}

void circuit_on_stream_closed(rxstate *rx, uint64_t app_error) {
  ckt_circuit *c = (ckt_circuit *)rx;
  char why[96];
  c->stream = NULL;
  snprintf(why, sizeof(why), "the remote end went away (code 0x%llx)",
           (unsigned long long)app_error);
  circuit_end(c, why, 1);
}

ckt_fragment *node_take_rx_fragment(ckt_node *n, const ckt_fragment *f) {
  ckt_fragment *own = n->rx_frag;
  if (!own || own != f) {
    return NULL;
  }
  n->rx_frag = NULL;
  return own;
}

void circuit_conn_lost(pconn *pc, const char *why) {
  char reason[600];
  snprintf(reason, sizeof(reason), "connection lost: %s", why);
  while (pc->circuits) {
    /* circuit_end unhooks it from its stream, which the endpoint frees. */
    circuit_end(pc->circuits, reason, 1);
  }
}

void circuit_writable(ckt_stream *s, rxstate *rx) {
  ckt_circuit *c = (ckt_circuit *)rx, *o, *next, *ready = NULL;
  pconn *pc = c->pc;
  ckt_node *n = pc ? pc->n : c->p ? c->p->n : NULL;
  uint64_t half = (n ? n->circuit_queue_max : CKT_CIRCUIT_QUEUE_MAX) / 2;
  (void)s;
  if (!pc) {
    return; /* not on a connection: it waits for one */
  }
  /* Acks on any stream free connection-level room too: every waiting
   * circuit of the connection that now has room hears so.  They are
   * picked first and told after, so that a callback closing another
   * circuit cannot pull the list from under the walk. */
  for (o = pc->wr_waiters; o; o = next) {
    next = o->wr_next;
    if (o->stream && ckt_stream_unacked(o->stream) < half) {
      wr_add(&ready, o);
    }
  }
  while ((o = ready) != NULL) {
    wr_remove(o);
    o->want_writable = 0;
    if (o->p && o->p->svc.writable) {
      o->p->svc.writable(o->p, o, o->p->user);
    }
  }
}

int circuit_send_data(ckt_circuit *c, ckt_fragment *f) {
  if (!c || !f || !c->p) {
    return CKT_ERR_CLOSED;
  }
  f->type = CKT_FRAG_DATA;
  return circuit_write(c, f, 0, 0); /* encodes a copy; f stays as it was */
}

int ckt_circuit_send(ckt_circuit *c, ckt_fragment *f) {
  int rv = circuit_send_data(c, f);
  ckt_fragment_free(f);
  return rv;
}

int ckt_circuit_send_error(ckt_circuit *c, const char *err) {
  ckt_fragment *f = ckt_fragment_new();
  int rv;
  if (!f) {
    return CKT_ERR_NOMEM;
  }
  if (!c || !c->p) {
    ckt_fragment_free(f);
    return CKT_ERR_CLOSED;
  }
  f->type = CKT_FRAG_ERROR;
  rv = ckt_fragment_set_err(f, err ? err : "");
  if (rv == CKT_OK) {
    rv = circuit_write(c, f, 0, 0);
  }
  ckt_fragment_free(f);
  return rv;
}

void ckt_circuit_close(ckt_circuit *c, const char *reason) {
  ckt_fragment *f;
  if (!c || !c->p) {
    return;
  }
  f = ckt_fragment_new();
  if (f) {
    f->type = CKT_FRAG_CLOSE;
    if (reason && ckt_fragment_set_err(f, reason) != CKT_OK) {
      ckt_fragment_set_err(f, "closed");
    }
    if (circuit_write(c, f, 1, 1) != CKT_OK && c->stream) {
      ckt_stream_reset(c->stream, APP_CIRCUIT_GONE); /* still ends it */
    }
    ckt_fragment_free(f);
  }
  circuit_end(c, reason, 0);
}

void *ckt_circuit_user(const ckt_circuit *c) {
  return c->user;
}

void ckt_circuit_set_user(ckt_circuit *c, void *user) {
  c->user = user;
}

const char *ckt_circuit_name(const ckt_circuit *c) {
  return c->name;
}

const char *ckt_circuit_id(const ckt_circuit *c) {
  return c->id_hex;
}

const char *ckt_circuit_remote_url(const ckt_circuit *c) {
  return c->remote_url;
}

ckt_peer *ckt_circuit_peer(const ckt_circuit *c) {
  return c->p;
}

/* ---- stopping ------------------------------------------------------------ */

void ckt_peer_stop(ckt_peer *p) {
  ckt_node *n;
  if (!p || p->stopping) {
    return;
  }
  n = p->n;
  p->stopping = 1;
  if (p->svc.stopping) {
    p->svc.stopping(p, p->user);
  }
  while (p->circuits) {
    ckt_circuit_close(p->circuits, "peer stopped");
  }
  if (p->prev) {
    p->prev->next = p->next;
  } else {
    n->peers = p->next;
  }
  if (p->next) {
    p->next->prev = p->prev;
  }
  free(p);
}

void circuit_stop_peers_of(ckt_node *n, const char *service, const void *user) {
  ckt_peer *p;
  for (p = n->peers; p;) {
    if (!p->stopping && p->user == user && strcmp(p->service, service) == 0) {
      ckt_peer_stop(p); /* frees p and unlinks it: start over */
      p = n->peers;
    } else {
      p = p->next;
    }
  }
}

int circuit_stop_all(ckt_node *n) {
  int had = 0;
  ckt_peer *p;
  for (p = n->peers; p; p = p->next) {
    had |= p->circuits != NULL;
  }
  while (n->peers) {
    ckt_peer_stop(n->peers);
  }
  return had;
}

/* ---- remote peer start (a Message API service) -------------------------- */

#define START_SERVICE "ckt.peer.start"

static int serve_start(ckt_node *n, const ckt_message *req, ckt_message *reply,
                       void *user) {
  const char *service = ckt_message_get_arg(req, "service");
  ckt_peer *p;
  char why[CKT_MESSAGE_SERVICE_MAX + 64];
  int rv;
  (void)user;
  if (!service) {
    ckt_message_set_err(reply, "no service named in the request");
    return -1;
  }
  rv = ckt_node_start_peer(n, service, &p);
  if (rv == CKT_ERR_NO_SERVICE) {
    snprintf(why, sizeof(why), "no peer service '%s' on this node", service);
    ckt_message_set_err(reply, why);
    ckt_message_set_arg(reply, "ckt.status", "no-service");
    return -1;
  }
  if (rv == CKT_ERR_LIMIT) {
    char text[CKT_PEER_URL_MAX + 128];
    snprintf(text, sizeof(text),
             "service '%s' is limited to its running instances here; use %s",
             service, ckt_peer_url(p));
    ckt_message_set_err(reply, text);
    ckt_message_set_arg(reply, "ckt.status", "limit");
    ckt_message_set_arg(reply, "existing", ckt_peer_url(p));
    return -1;
  }
  if (rv != CKT_OK) {
    ckt_message_set_err(reply, ckt_strerror(rv));
    return -1;
  }
  ckt_message_set_arg(reply, "id", ckt_peer_id(p));
  return 0;
}

void circuit_register_builtin(ckt_node *n) {
  ckt_node_register_call(n, START_SERVICE, serve_start, NULL);
}

typedef struct start_job {
  ckt_peer_started_fn done;
  void *user;
  char host_port[CKT_MESSAGE_ADDR_MAX + 1];
  char service[CKT_MESSAGE_SERVICE_MAX + 1];
} start_job;

static void start_done(ckt_node *n, int err, const ckt_message *reply,
                       void *user) {
  start_job *j = user;
  const char *id = ckt_message_get_arg(reply, "id");
  ckt_url u;
  char url[CKT_PEER_URL_MAX];
  memset(&u, 0, sizeof(u));
  if (err == CKT_OK && (!id || ckt_peer_id_from_hex(id, u.peer_id) != CKT_OK)) {
    err = CKT_ERR_FORMAT;
  }
  if (err == CKT_OK) {
    snprintf(u.host_port, sizeof(u.host_port), "%s", j->host_port);
    snprintf(u.service, sizeof(u.service), "%s", j->service);
    err = ckt_url_format(&u, url, sizeof(url));
  }
  j->done(n, err, err == CKT_OK ? url : NULL,
          err == CKT_OK ? NULL : (reply->err ? reply->err : ckt_strerror(err)),
          j->user);
  free(j);
}

int ckt_node_start_remote_peer(ckt_node *n, const char *host_port,
                               const char *service, ckt_peer_started_fn done,
                               void *user) {
  ckt_message *m;
  start_job *j;
  if (!n || !host_port || !service || !done ||
      strlen(host_port) > CKT_MESSAGE_ADDR_MAX ||
      strlen(service) > CKT_MESSAGE_SERVICE_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  j = calloc(1, sizeof(*j));
  m = ckt_message_new();
  if (!j || !m || ckt_message_set_service(m, START_SERVICE) != CKT_OK ||
      ckt_message_set_arg(m, "service", service) != CKT_OK) {
    free(j);
    ckt_message_free(m);
    return CKT_ERR_NOMEM;
  }
  j->done = done;
  j->user = user;
  snprintf(j->host_port, sizeof(j->host_port), "%s", host_port);
  snprintf(j->service, sizeof(j->service), "%s", service);
  {
    int rv = ckt_node_call_async(n, host_port, m, 0, start_done, j);
    if (rv != CKT_OK) {
      free(j); /* done will not run */
    }
    return rv;
  }
}

/* ---- stream credit ------------------------------------------------------- */

/* Bytes arrived on c's stream: give them back to the stream's window at
 * once, unless c's reader has fallen behind (then they are owed until it
 * catches up, and QUIC holds back this circuit only). */
void circuit_received(rxstate *rx, uint64_t n) {
  ckt_circuit *c = (ckt_circuit *)rx;
  if (c->stalled) {
    c->owed += n;
  } else if (c->stream) {
    ckt_stream_credit(c->stream, n);
  }
}

void circuit_set_stalled(ckt_circuit *c, int on) {
  c->stalled = on;
  if (!on && c->owed) {
    if (c->stream) {
      ckt_stream_credit(c->stream, c->owed);
    }
    c->owed = 0;
  }
}
