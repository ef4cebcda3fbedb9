/*
 * quic_endpoint.c — ngtcp2 connections in both roles behind one UDP port.
 */
#include "quic_endpoint.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <string.h>

#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>

#include "ckt/error.h"
#include "core_util.h"
#include "quic_cidmap.h"
#include "tls_quic.h"

#define TX_BUF (64 * 1500)
/* Loopback carries datagrams up to 64 KiB without fragmentation, so a
 * connection to a loopback address uses big packets: far fewer packets,
 * AEAD calls and system calls per byte (the loopback MTU is 65536). */
#define LOOPBACK_UDP_PAYLOAD 65000
#define MAX_GSO_PKTS 64
#define MAX_VECS 16
/* Stateless resets: at most this many per second (token bucket). */
#define RESET_RATE 100.0
/* Datagrams for no connection checked a second for being a peer's
 * stateless reset (each check scans the connections). */
#define RESET_SCAN_RATE 1000.0
/* The share of the loop's time that Initials for no connection may take,
 * and the most they may take at once (about 300 handshakes' worth); those
 * with a Retry token have a share of their own.  Every such Initial pays,
 * real clients' too: under a flood of junk, new clients wait (they resend)
 * while the connections we have keep going.
 * Accepting, refusing or answering one with a Retry derives its keys,
 * ~30 us with our patched wolfSSL 5.5.4 (~150 us without the HKDF patch
 * in scripts/patches): a flood of junk Initials would otherwise
 * keep the loop busy while the kernel drops the datagrams of the
 * connections we have.  Beyond the budget they are dropped unread; a real
 * client sends its Initial again. */
#define ACCEPT_SHARE 0.1
#define ACCEPT_BURST_NS 50e6
#define RETRY_TOKEN_TIMEOUT (10ull * NGTCP2_SECONDS)

typedef struct chunk {
  struct chunk *next;
  size_t len;
  uint8_t data[];
} chunk;

struct ckt_stream {
  ckt_conn *conn;
  int64_t id;
  void *user;
  chunk *head, *tail;
  uint64_t head_off;   /* stream offset of head->data[0] */
  chunk *cur;          /* cache: the chunk holding sent_off, or NULL */
  uint64_t cur_off;    /* stream offset of cur->data[0] */
  uint64_t sent_off;   /* bytes handed to ngtcp2 */
  uint64_t queued_off; /* bytes queued by the caller */
  uint64_t acked_off;  /* bytes the peer acknowledged */
  unsigned fin_queued : 1, fin_sent : 1, in_pending : 1, write_closed : 1,
      manual_credit : 1;
  ckt_stream *pend_next, *pend_prev;
  ckt_stream *next, *prev; /* every stream of the connection */
};

struct ckt_conn {
  ckt_endpoint *ep;
  ngtcp2_conn *q;
  ckt_tls_link link;
  WOLFSSL *ssl;
  ckt_addr peer;
  ckt_timer *timer;
  void *user;
  uint64_t serial;
  int client, ready, dead, notified;
  int validated;    /* server: the client's address is proven (Retry token) */
  int confirmed;    /* the handshake is confirmed: no more padded packets */
  int loopback;     /* the peer is on this host: big packets, no pacing */
  uint64_t unacked; /* bytes written on its streams, not yet acknowledged */
  ngtcp2_cid odcid; /* server: the client's first DCID, filed in the map */
  ckt_stream *pend_head, *pend_tail;
  ckt_stream *streams;
  ckt_conn *next, *prev; /* endpoint's list */
  ckt_conn *dirty_next;  /* endpoint's to-write list */
  int dirty;
  ckt_conn *grave_next;
};

struct ckt_endpoint {
  ckt_runtime *rt;
  ckt_addr local;
  ckt_endpoint_config cfg;
  ckt_cidmap map;
  ckt_conn *conns;
  size_t nconns, naccepted, ndialed;
  size_t handshaking; /* accepted connections whose handshake is not done */
  ckt_conn *dirty_head;
  ckt_conn *graveyard;
  int flush_posted;
  int depth; /* > 0 while inside an entry point: reaping waits */
  uint64_t next_serial;
  ckt_endpoint_stats stats;
  double reset_tokens;
  uint64_t reset_ts;
  double scan_tokens;
  uint64_t scan_ts;
  double accept_credit; /* ns that Initials for no connection may take */
  double token_credit;  /* the same for those carrying a Retry token */
  uint64_t accept_ts[2];
  double hs_tokens; /* new handshakes allowed now without a Retry */
  uint64_t hs_ts;
  uint8_t tx[TX_BUF];
};

/* ---- helpers ------------------------------------------------------------ */

static uint64_t now(ckt_endpoint *ep) {
  return ep->rt->ops->now(ep->rt);
}

static void logf_(ckt_endpoint *ep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void logf_(ckt_endpoint *ep, const char *fmt, ...) {
  char line[512];
  va_list ap;
  if (!ep->cfg.log) {
    return;
  }
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  ep->cfg.log(ep->cfg.user, line);
}

static void random_bytes(ckt_endpoint *ep, uint8_t *p, size_t n) {
  ep->rt->ops->random(ep->rt, p, n);
}

static void new_cid(ckt_endpoint *ep, ngtcp2_cid *cid, size_t len) {
  cid->datalen = len;
  random_bytes(ep, cid->data, len);
}

static int reset_token(ckt_endpoint *ep, uint8_t *token,
                       const ngtcp2_cid *cid) {
  return ngtcp2_crypto_generate_stateless_reset_token(
      token, ep->cfg.static_secret, sizeof(ep->cfg.static_secret), cid);
}

static void send_raw(ckt_endpoint *ep, const ckt_addr *to, const uint8_t *p,
                     size_t len, size_t segment) {
  (void)ep->rt->ops->send(ep->rt, to, p, len, segment);
}

static void peer_name(const ckt_conn *c, char *out, size_t n) {
  ckt_addr_format(&c->peer, out, n);
}

/* ---- streams ------------------------------------------------------------ */

static void pending_add(ckt_stream *s) {
  ckt_conn *c = s->conn;
  if (s->in_pending) {
    return;
  }
  s->in_pending = 1;
  s->pend_next = NULL;
  s->pend_prev = c->pend_tail;
  if (c->pend_tail) {
    c->pend_tail->pend_next = s;
  } else {
    c->pend_head = s;
  }
  c->pend_tail = s;
}

static void pending_remove(ckt_stream *s) {
  ckt_conn *c = s->conn;
  if (!s->in_pending) {
    return;
  }
  if (s->pend_prev) {
    s->pend_prev->pend_next = s->pend_next;
  } else {
    c->pend_head = s->pend_next;
  }
  if (s->pend_next) {
    s->pend_next->pend_prev = s->pend_prev;
  } else {
    c->pend_tail = s->pend_prev;
  }
  s->in_pending = 0;
  s->pend_next = s->pend_prev = NULL;
}

static int stream_has_output(const ckt_stream *s) {
  return s->sent_off < s->queued_off || (s->fin_queued && !s->fin_sent);
}

static ckt_stream *stream_new(ckt_conn *c, int64_t id, void *user) {
  ckt_stream *s = calloc(1, sizeof(*s));
  if (!s) {
    return NULL;
  }
  s->conn = c;
  s->id = id;
  s->user = user;
  s->next = c->streams;
  if (c->streams) {
    c->streams->prev = s;
  }
  c->streams = s;
  return s;
}

static void stream_free(ckt_stream *s) {
  ckt_conn *c = s->conn;
  chunk *k = s->head;
  c->unacked -= s->queued_off - s->acked_off;
  pending_remove(s);
  while (k) {
    chunk *next = k->next;
    free(k);
    k = next;
  }
  if (s->prev) {
    s->prev->next = s->next;
  } else {
    c->streams = s->next;
  }
  if (s->next) {
    s->next->prev = s->prev;
  }
  free(s);
}

/* The unsent bytes of s as iovecs, starting at sent_off. */
/* The unsent bytes of s as iovecs, starting at sent_off.  The walk starts
 * at the cached chunk holding sent_off, not at the head: acknowledged-later
 * chunks in flight are not rescanned for every packet. */
static size_t stream_vecs(ckt_stream *s, ngtcp2_vec *v, size_t max) {
  chunk *k = s->cur ? s->cur : s->head;
  uint64_t off = s->cur ? s->cur_off : s->head_off;
  size_t n = 0;
  while (k && off + k->len <= s->sent_off) {
    off += k->len;
    k = k->next;
  }
  s->cur = k;
  s->cur_off = off;
  while (k && n < max) {
    size_t skip = s->sent_off > off ? (size_t)(s->sent_off - off) : 0;
    v[n].base = (uint8_t *)(uintptr_t)(k->data + skip);
    v[n].len = k->len - skip;
    n++;
    off += k->len;
    k = k->next;
  }
  return n;
}

static void stream_acked(ckt_stream *s, uint64_t end) {
  if (end > s->acked_off) {
    s->conn->unacked -= end - s->acked_off;
    s->acked_off = end;
  }
  while (s->head && s->head_off + s->head->len <= s->acked_off) {
    chunk *k = s->head;
    if (s->cur == k) {
      s->cur = NULL; /* freed below: the next walk starts at the head */
    }
    s->head_off += k->len;
    s->head = k->next;
    if (!s->head) {
      s->tail = NULL;
    }
    free(k);
  }
}

/* ---- connection lifetime ----------------------------------------------- */

static void schedule_flush(ckt_conn *c);

static void conn_notify_closed(ckt_conn *c, int err, const char *why) {
  ckt_endpoint *ep = c->ep;
  char who[CKT_ADDR_STRLEN];
  if (c->notified) {
    return;
  }
  c->notified = 1;
  peer_name(c, who, sizeof(who));
  /* A server-side connection that never finished its handshake is mostly
   * junk (a stray or forged Initial): only refusals are worth a line. */
  if (err != CKT_OK && (c->client || c->ready || err == CKT_ERR_TLS)) {
    logf_(ep, "connection %s %s: %s", c->client ? "to" : "from", who, why);
  }
  if (ep->cfg.cb.conn_closed) {
    ep->cfg.cb.conn_closed(c, err, why, ep->cfg.user);
  }
}

/* Unlinks c and queues it for freeing at a safe point. */
static void conn_bury(ckt_conn *c) {
  ckt_endpoint *ep = c->ep;
  ngtcp2_cid scids[16];
  size_t i, n;
  ckt_stream *s;
  if (c->dead) {
    return;
  }
  c->dead = 1;
  /* Streams die with the connection: owners that still hold state on one
   * hear of it once, so they can free it. */
  for (s = c->streams; s; s = s->next) {
    if (s->user && ep->cfg.cb.stream_closed) {
      ep->cfg.cb.stream_closed(c, s, 0, ep->cfg.user);
    }
    s->user = NULL;
  }
  if (c->q) {
    n = ngtcp2_conn_get_num_scid(c->q);
    if (n <= sizeof(scids) / sizeof(scids[0])) {
      n = ngtcp2_conn_get_scid(c->q, scids);
      for (i = 0; i < n; ++i) {
        if (ckt_cidmap_get(&ep->map, scids[i].data, scids[i].datalen) == c) {
          ckt_cidmap_del(&ep->map, scids[i].data, scids[i].datalen);
        }
      }
    } else {
      ckt_cidmap_del_value(&ep->map, c);
    }
  }
  if (c->odcid.datalen &&
      ckt_cidmap_get(&ep->map, c->odcid.data, c->odcid.datalen) == c) {
    ckt_cidmap_del(&ep->map, c->odcid.data, c->odcid.datalen);
  }
  if (c->dirty) { /* it must not be written after it is freed */
    ckt_conn **p = &ep->dirty_head;
    while (*p && *p != c) {
      p = &(*p)->dirty_next;
    }
    if (*p) {
      *p = c->dirty_next;
    }
    c->dirty = 0;
  }
  if (c->prev) {
    c->prev->next = c->next;
  } else {
    ep->conns = c->next;
  }
  if (c->next) {
    c->next->prev = c->prev;
  }
  ep->nconns--;
  if (c->client) {
    ep->ndialed--;
  } else {
    ep->naccepted--;
    if (!c->ready) {
      ep->handshaking--;
    }
  }
  __atomic_store_n(&ep->stats.connections_open, ep->nconns, __ATOMIC_RELAXED);
  ep->rt->ops->timer_arm(ep->rt, c->timer, CKT_TIME_NEVER);
  c->grave_next = ep->graveyard;
  ep->graveyard = c;
}

static void conn_free(ckt_conn *c) {
  ckt_endpoint *ep = c->ep;
  while (c->streams) {
    stream_free(c->streams);
  }
  if (c->q) {
    ngtcp2_conn_del(c->q);
  }
  if (c->ssl) {
    wolfSSL_free(c->ssl);
  }
  if (c->timer) {
    ep->rt->ops->timer_free(ep->rt, c->timer);
  }
  free(c);
}

static void reap(ckt_endpoint *ep) {
  ckt_conn *c;
  if (ep->depth > 0) {
    return;
  }
  while ((c = ep->graveyard) != NULL) {
    ep->graveyard = c->grave_next;
    conn_free(c);
  }
}

/* Sends CONNECTION_CLOSE carrying ccerr, then drops the connection. */
static void conn_close_with(ckt_conn *c,
                            const ngtcp2_connection_close_error *ccerr) {
  ckt_endpoint *ep = c->ep;
  ngtcp2_path_storage ps;
  ngtcp2_pkt_info pi;
  ngtcp2_ssize n;
  if (!c->q || ngtcp2_conn_is_in_closing_period(c->q) ||
      ngtcp2_conn_is_in_draining_period(c->q)) {
    return;
  }
  ngtcp2_path_storage_zero(&ps);
  n = ngtcp2_conn_write_connection_close(c->q, &ps.path, &pi, ep->tx,
                                         sizeof(ep->tx), ccerr, now(ep));
  if (n > 0) {
    send_raw(ep, &c->peer, ep->tx, (size_t)n, 0);
  }
}

/* A local failure (library error, refused certificate): tell the peer
 * why, tell our user why, drop the connection. */
static void conn_fail(ckt_conn *c, int liberr) {
  ngtcp2_connection_close_error ccerr;
  char why[256], who[CKT_ADDR_STRLEN];
  int err = CKT_ERR_CONNECTION;

  peer_name(c, who, sizeof(who));
  ngtcp2_connection_close_error_default(&ccerr);
  if (liberr == NGTCP2_ERR_CRYPTO || c->link.verify_error) {
    uint8_t alert = liberr == NGTCP2_ERR_CRYPTO
                        ? ngtcp2_conn_get_tls_alert(c->q)
                        : 120 /* no_application_protocol */;
    const char *reason =
        c->link.why[0] ? c->link.why : ckt_tls_refusal_text(alert, !c->client);
    ngtcp2_connection_close_error_set_transport_error_tls_alert(
        &ccerr, alert, (const uint8_t *)reason, strlen(reason));
    snprintf(why, sizeof(why), "TLS handshake with %s refused here: %s", who,
             reason);
    err = CKT_ERR_TLS;
  } else if (liberr == NGTCP2_ERR_HANDSHAKE_TIMEOUT) {
    snprintf(why, sizeof(why), "TLS handshake with %s timed out", who);
    err = CKT_ERR_TIMEOUT;
  } else {
    ngtcp2_connection_close_error_set_transport_error_liberr(&ccerr, liberr,
                                                             NULL, 0);
    snprintf(why, sizeof(why), "connection with %s failed: %s", who,
             ngtcp2_strerror(liberr));
  }
  conn_close_with(c, &ccerr);
  conn_notify_closed(c, err, why);
  conn_bury(c);
}

/* The peer closed the connection (we are draining). */
static void conn_drained(ckt_conn *c) {
  ngtcp2_connection_close_error ccerr;
  char why[512], who[CKT_ADDR_STRLEN], reason[256];
  size_t rlen;
  int err;

  peer_name(c, who, sizeof(who));
  ngtcp2_conn_get_connection_close_error(c->q, &ccerr);
  rlen = ccerr.reasonlen < sizeof(reason) - 1 ? ccerr.reasonlen
                                              : sizeof(reason) - 1;
  if (rlen) {
    memcpy(reason, ccerr.reason, rlen);
  }
  reason[rlen] = 0;
  if (ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT &&
      (ccerr.error_code & ~0xffull) == NGTCP2_CRYPTO_ERROR) {
    snprintf(why, sizeof(why), "%s refused the TLS handshake: %s", who,
             rlen ? reason
                  : ckt_tls_alert_text((uint8_t)(ccerr.error_code & 0xff)));
    err = CKT_ERR_TLS;
  } else if (ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT &&
             ccerr.error_code == NGTCP2_CONNECTION_REFUSED) {
    snprintf(why, sizeof(why),
             "%s refused the connection: it is at one of its limits "
             "(connections, handshakes in progress, or connections from "
             "our address), or our address token was not valid",
             who);
    err = CKT_ERR_CONNECTION;
  } else if (ccerr.type ==
                 NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION &&
             ccerr.error_code == 0) {
    snprintf(why, sizeof(why), "%s closed the connection%s%s", who,
             rlen ? ": " : "", reason);
    err = CKT_OK;
  } else {
    snprintf(why, sizeof(why),
             "%s closed the connection with error 0x%" PRIx64 "%s%s", who,
             ccerr.error_code, rlen ? ": " : "", reason);
    err = CKT_ERR_CONNECTION;
  }
  conn_notify_closed(c, err, why);
  conn_bury(c);
}

/* Handles a negative return of ngtcp2_conn_read_pkt/handle_expiry. */
static void conn_error(ckt_conn *c, int liberr) {
  char why[256], who[CKT_ADDR_STRLEN];
  switch (liberr) {
  case NGTCP2_ERR_DRAINING:
    conn_drained(c);
    return;
  case NGTCP2_ERR_DROP_CONN:
    peer_name(c, who, sizeof(who));
    snprintf(why, sizeof(why), "connection with %s dropped", who);
    conn_notify_closed(c, CKT_ERR_CONNECTION, why);
    conn_bury(c);
    return;
  case NGTCP2_ERR_IDLE_CLOSE:
    peer_name(c, who, sizeof(who));
    snprintf(why, sizeof(why),
             "%s stopped answering (nothing heard for %.1f s)", who,
             (double)c->ep->cfg.idle_timeout / 1e9);
    conn_notify_closed(c, CKT_ERR_TIMEOUT, why);
    conn_bury(c);
    return;
  default:
    conn_fail(c, liberr);
  }
}

/* ---- writing ------------------------------------------------------------ */

static void arm_timer(ckt_conn *c) {
  ckt_endpoint *ep = c->ep;
  ngtcp2_tstamp expiry = ngtcp2_conn_get_expiry(c->q);
  ep->rt->ops->timer_arm(ep->rt, c->timer,
                         expiry == UINT64_MAX ? CKT_TIME_NEVER : expiry);
}

/* Whether sent_off lies inside a chunk (a caller's write, which the layers
 * above make whole frames) rather than at its end. */
static int stream_mid_chunk(const ckt_stream *s) {
  const chunk *k = s->cur ? s->cur : s->head;
  uint64_t off = s->cur ? s->cur_off : s->head_off;
  while (k && off + k->len <= s->sent_off) {
    off += k->len;
    k = k->next;
  }
  return k && off < s->sent_off;
}

/* Streams take turns a write at a time, not a packet at a time.  The
 * receiver gives connection credit back only for whole frames; turns
 * per packet would leave a partial frame on every busy stream, and
 * enough of them fill the connection's window with nothing the receiver
 * can finish: both ends then wait forever.  Finishing each write first
 * leaves at most one partially sent frame, and the window (at least two
 * of the largest frame) always has room to complete it. */
static void stream_sent(ckt_stream *s, ngtcp2_ssize n, int fin) {
  uint64_t total = s->queued_off - s->sent_off;
  if (n > 0) {
    s->sent_off += (uint64_t)n;
  }
  if (fin && (uint64_t)(n > 0 ? n : 0) == total) {
    s->fin_sent = 1;
  }
  if (s->in_pending && stream_has_output(s) && stream_mid_chunk(s)) {
    return; /* keeps its turn */
  }
  pending_remove(s);
  if (stream_has_output(s)) {
    pending_add(s); /* to the tail: streams take turns */
  }
}

static void conn_write(ckt_conn *c) {
  ckt_endpoint *ep = c->ep;
  size_t pkt, max_pkts, npkts = 0, off = 0, budget;
  ngtcp2_path_storage ps;
  ngtcp2_pkt_info pi;
  ngtcp2_tstamp ts = now(ep);

  if (c->dead) {
    return;
  }
  pkt = ngtcp2_conn_get_path_max_tx_udp_payload_size(c->q);
  /* Handshake packets are padded to the buffer they are written into:
   * keep them at the usual size even where big packets are allowed. */
  if (pkt > NGTCP2_MAX_PMTUD_UDP_PAYLOAD_SIZE && !c->confirmed) {
    pkt = NGTCP2_MAX_PMTUD_UDP_PAYLOAD_SIZE;
  }
  max_pkts = ngtcp2_conn_get_send_quantum(c->q) / pkt;
  if (max_pkts == 0) {
    max_pkts = 1;
  }
  /* Packets this call may write: one send quantum, then pacing.  On
   * loopback there is no router queue to spare: a burst of up to 1 MiB
   * (the congestion window still bounds it) instead of a quantum and a
   * timer, whose millisecond granularity would cap the rate. */
  budget = c->loopback && c->confirmed ? (1u << 20) / pkt + 1 : max_pkts;
  if (max_pkts > MAX_GSO_PKTS) {
    max_pkts = MAX_GSO_PKTS;
  }
  if (max_pkts > TX_BUF / pkt) {
    max_pkts = TX_BUF / pkt;
  }
  if (max_pkts == 0) {
    max_pkts = 1;
  }
  ngtcp2_path_storage_zero(&ps);
  for (;;) {
    ckt_stream *s = c->pend_head;
    ngtcp2_vec vec[MAX_VECS];
    size_t nvec = 0;
    int fin = 0;
    int64_t sid = -1;
    uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE;
    ngtcp2_ssize nwrite, ndata = -1;

    if (s && !stream_has_output(s)) {
      pending_remove(s);
      continue;
    }
    if (s) {
      sid = s->id;
      nvec = stream_vecs(s, vec, MAX_VECS);
      if (s->fin_queued && !s->fin_sent) {
        size_t i, sum = 0;
        for (i = 0; i < nvec; ++i) {
          sum += vec[i].len;
        }
        if (sum == s->queued_off - s->sent_off) {
          fin = 1;
          flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
        }
      }
    }
    nwrite = ngtcp2_conn_writev_stream(c->q, &ps.path, &pi, ep->tx + off, pkt,
                                       &ndata, flags, sid, vec, nvec, ts);
    if (nwrite < 0) {
      switch (nwrite) {
      case NGTCP2_ERR_STREAM_DATA_BLOCKED:
      case NGTCP2_ERR_STREAM_SHUT_WR:
      case NGTCP2_ERR_STREAM_NOT_FOUND:
        /* Flow control (extend_max_stream_data brings it back) or a
         * stream the peer stopped: skip it. */
        pending_remove(s);
        continue;
      case NGTCP2_ERR_WRITE_MORE:
        stream_sent(s, ndata, fin);
        continue;
      default:
        if (off) {
          send_raw(ep, &c->peer, ep->tx, off, pkt);
        }
        conn_fail(c, (int)nwrite);
        return;
      }
    }
    if (s && ndata >= 0) {
      stream_sent(s, ndata, fin);
    }
    if (nwrite == 0) {
      break;
    }
    if (ps.path.remote.addrlen > 0 &&
        (ps.path.remote.addrlen != c->peer.len ||
         memcmp(ps.path.remote.addr, &c->peer.ss, c->peer.len) != 0)) {
      /* ngtcp2 moved to another path (the peer's NAT rebound): what is
       * batched goes to the old address, the rest to the new one. */
      if (off) {
        send_raw(ep, &c->peer, ep->tx, off, pkt);
        memmove(ep->tx, ep->tx + off, (size_t)nwrite);
        off = 0;
        npkts = 0;
      }
      memcpy(&c->peer.ss, ps.path.remote.addr, ps.path.remote.addrlen);
      c->peer.len = (socklen_t)ps.path.remote.addrlen;
    }
    off += (size_t)nwrite;
    npkts++;
    /* A GSO batch holds equal-sized packets; a short one ends it. */
    budget--;
    if ((size_t)nwrite < pkt || npkts == max_pkts || budget == 0) {
      send_raw(ep, &c->peer, ep->tx, off, pkt);
      off = 0;
      npkts = 0;
      if (budget == 0) {
        break; /* send quantum used: pacing resumes at the next expiry */
      }
    }
  }
  if (off) {
    send_raw(ep, &c->peer, ep->tx, off, pkt);
  }
  if (!c->loopback) {
    ngtcp2_conn_update_pkt_tx_time(c->q, ts); /* pacing */
  }
  arm_timer(c);
}

static void flush_dirty(ckt_endpoint *ep) {
  ckt_conn *c;
  while ((c = ep->dirty_head) != NULL) {
    ep->dirty_head = c->dirty_next;
    c->dirty = 0;
    if (!c->dead) {
      conn_write(c);
    }
  }
}

/* Ends an entry point: at the outermost level, writes what became due
 * during it and frees the connections that died in it. */
static void leave(ckt_endpoint *ep) {
  if (ep->depth == 1) {
    flush_dirty(ep);
  }
  ep->depth--;
  reap(ep);
}

static void flush_posted(void *arg) {
  ckt_endpoint *ep = arg;
  ep->flush_posted = 0;
  ep->depth++;
  leave(ep);
}

static void schedule_flush(ckt_conn *c) {
  ckt_endpoint *ep = c->ep;
  if (c->dead || c->notified || c->dirty) {
    return;
  }
  c->dirty = 1;
  c->dirty_next = ep->dirty_head;
  ep->dirty_head = c;
  if (ep->depth == 0 && !ep->flush_posted) {
    /* Outside an entry point (a timer or a user call): write soon, after
     * the caller has queued everything it wants to. */
    if (ep->rt->ops->post(ep->rt, flush_posted, ep) == CKT_OK) {
      ep->flush_posted = 1;
    }
  }
}

/* ---- ngtcp2 callbacks --------------------------------------------------- */

static int cb_handshake_completed(ngtcp2_conn *q, void *user) {
  ckt_conn *c = user;
  ckt_endpoint *ep = c->ep;
  (void)q;
  /* Known keys are recorded only now that the peer proved it holds its
   * key (its CertificateVerify checked). */
  if (ckt_tls_handshake_done(c->ssl, &c->link) != CKT_OK) {
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  if (!c->client) {
    /* RFC 9001 8.1: a QUIC handshake without ALPN is refused. */
    if (ckt_tls_alpn(c->ssl) == 0) {
      c->link.verify_error = CKT_ERR_TLS;
      snprintf(c->link.why, sizeof(c->link.why),
               "the client offered no application protocol (ALPN %s)",
               CKT_ALPN);
      return NGTCP2_ERR_CALLBACK_FAILURE;
    }
    ep->handshaking--;
  }
  c->ready = 1;
  if (ep->cfg.cb.conn_ready && ep->cfg.cb.conn_ready(c, ep->cfg.user) != 0) {
    c->link.verify_error = CKT_ERR_TLS;
    if (!c->link.why[0]) {
      snprintf(c->link.why, sizeof(c->link.why),
               "the connection could not be set up after its handshake");
    }
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  /* Exported keying material is taken in conn_ready, if at all: the
   * handshake secrets kept for it go now. */
  wolfSSL_FreeArrays(c->ssl);
  return 0;
}

static int cb_recv_stream_data(ngtcp2_conn *q, uint32_t flags, int64_t sid,
                               uint64_t offset, const uint8_t *data, size_t len,
                               void *user, void *stream_user) {
  ckt_conn *c = user;
  ckt_endpoint *ep = c->ep;
  ckt_stream *s = stream_user;
  int fin = (flags & NGTCP2_STREAM_DATA_FLAG_FIN) != 0;
  (void)offset;
  if (!s) {
    return 0; /* a stream we already let go of */
  }
  if (ep->cfg.cb.stream_data) {
    int code = ep->cfg.cb.stream_data(c, s, data, len, fin, ep->cfg.user);
    if (code != 0) {
      ngtcp2_conn_shutdown_stream(q, sid, (uint64_t)(code > 0 ? code : 1));
      schedule_flush(c);
    }
  }
  if (!s->manual_credit) {
    ngtcp2_conn_extend_max_stream_offset(q, sid, len);
  }
  if (!ep->cfg.manual_conn_credit) {
    ngtcp2_conn_extend_max_offset(q, len);
  }
  return 0;
}

static int cb_acked(ngtcp2_conn *q, int64_t sid, uint64_t offset, uint64_t len,
                    void *user, void *stream_user) {
  ckt_stream *s = stream_user;
  ckt_conn *c = user;
  (void)q, (void)sid;
  if (s) {
    stream_acked(s, offset + len);
    if (s->user && c->ep->cfg.cb.stream_acked) {
      c->ep->cfg.cb.stream_acked(c, s, c->ep->cfg.user);
    }
  }
  return 0;
}

static int cb_stream_open(ngtcp2_conn *q, int64_t sid, void *user) {
  ckt_conn *c = user;
  ckt_endpoint *ep = c->ep;
  ckt_stream *s = stream_new(c, sid, NULL);
  if (!s) {
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  ngtcp2_conn_set_stream_user_data(q, sid, s);
  if (!ngtcp2_is_bidi_stream(sid)) {
    s->write_closed = 1; /* a peer's unidirectional stream: receive only */
  }
  if (!ep->cfg.cb.stream_opened ||
      ep->cfg.cb.stream_opened(c, s, ep->cfg.user) != 0) {
    ngtcp2_conn_shutdown_stream(q, sid, 1);
  }
  return 0;
}

static int cb_stream_close(ngtcp2_conn *q, uint32_t flags, int64_t sid,
                           uint64_t app_error, void *user, void *stream_user) {
  ckt_conn *c = user;
  ckt_endpoint *ep = c->ep;
  ckt_stream *s = stream_user;
  if (!(flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET)) {
    app_error = 0;
  }
  if (!ngtcp2_conn_is_local_stream(q, sid)) {
    if (ngtcp2_is_bidi_stream(sid)) {
      ngtcp2_conn_extend_max_streams_bidi(q, 1);
    } else {
      ngtcp2_conn_extend_max_streams_uni(q, 1);
    }
  }
  if (s) {
    if (ep->cfg.cb.stream_closed && !c->notified) {
      ep->cfg.cb.stream_closed(c, s, app_error, ep->cfg.user);
    }
    stream_free(s);
  }
  return 0;
}

static int cb_stream_reset(ngtcp2_conn *q, int64_t sid, uint64_t final_size,
                           uint64_t app_error, void *user, void *stream_user) {
  ckt_stream *s = stream_user;
  (void)final_size;
  if (s && s->fin_sent) {
    /* Our side is complete: the stream closes once it is acknowledged,
     * and what we sent (a final answer) still arrives. */
    return 0;
  }
  /* The peer abandoned its side: abandon ours, so the stream closes (and
   * nothing more of ours is written to it). */
  if (s) {
    s->write_closed = 1;
    pending_remove(s);
  }
  ngtcp2_conn_shutdown_stream(q, sid, app_error);
  schedule_flush(user);
  return 0;
}

static int cb_stop_sending(ngtcp2_conn *q, int64_t sid, uint64_t app_error,
                           void *user, void *stream_user) {
  ckt_stream *s = stream_user;
  if (s) {
    s->write_closed = 1;
    pending_remove(s);
  }
  ngtcp2_conn_shutdown_stream(q, sid, app_error);
  schedule_flush(user);
  return 0;
}

static int cb_extend_stream_data(ngtcp2_conn *q, int64_t sid, uint64_t max_data,
                                 void *user, void *stream_user) {
  ckt_stream *s = stream_user;
  (void)q, (void)sid, (void)max_data;
  if (s && stream_has_output(s)) {
    pending_add(s);
    schedule_flush(user);
  }
  return 0;
}

static int cb_extend_local_streams(ngtcp2_conn *q, uint64_t max, void *user) {
  ckt_conn *c = user;
  ckt_endpoint *ep = c->ep;
  (void)q, (void)max;
  if (c->ready && ep->cfg.cb.streams_available) {
    ep->cfg.cb.streams_available(c, ep->cfg.user);
  }
  return 0;
}

static void cb_rand(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *ctx) {
  ckt_endpoint *ep = ctx->native_handle;
  random_bytes(ep, dest, len);
}

static int cb_new_cid(ngtcp2_conn *q, ngtcp2_cid *cid, uint8_t *token,
                      size_t len, void *user) {
  ckt_conn *c = user;
  ckt_endpoint *ep = c->ep;
  (void)q;
  do {
    new_cid(ep, cid, len);
  } while (ckt_cidmap_get(&ep->map, cid->data, cid->datalen));
  if (reset_token(ep, token, cid) != 0 ||
      ckt_cidmap_put(&ep->map, cid->data, cid->datalen, c) != CKT_OK) {
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  return 0;
}

static int cb_remove_cid(ngtcp2_conn *q, const ngtcp2_cid *cid, void *user) {
  ckt_conn *c = user;
  (void)q;
  if (ckt_cidmap_get(&c->ep->map, cid->data, cid->datalen) == c) {
    ckt_cidmap_del(&c->ep->map, cid->data, cid->datalen);
  }
  return 0;
}

static int cb_handshake_confirmed(ngtcp2_conn *q, void *user) {
  ckt_conn *c = user;
  (void)q;
  c->confirmed = 1;
  return 0;
}

static const ngtcp2_callbacks callbacks = {
    .client_initial = ngtcp2_crypto_client_initial_cb,
    .recv_client_initial = ngtcp2_crypto_recv_client_initial_cb,
    .recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb,
    .handshake_completed = cb_handshake_completed,
    .handshake_confirmed = cb_handshake_confirmed,
    .encrypt = ngtcp2_crypto_encrypt_cb,
    .decrypt = ngtcp2_crypto_decrypt_cb,
    .hp_mask = ngtcp2_crypto_hp_mask_cb,
    .recv_stream_data = cb_recv_stream_data,
    .acked_stream_data_offset = cb_acked,
    .stream_open = cb_stream_open,
    .stream_close = cb_stream_close,
    .recv_retry = ngtcp2_crypto_recv_retry_cb,
    .extend_max_local_streams_bidi = cb_extend_local_streams,
    .extend_max_local_streams_uni = cb_extend_local_streams,
    .rand = cb_rand,
    .get_new_connection_id = cb_new_cid,
    .remove_connection_id = cb_remove_cid,
    .update_key = ngtcp2_crypto_update_key_cb,
    .stream_reset = cb_stream_reset,
    .extend_max_stream_data = cb_extend_stream_data,
    .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
    .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
    .get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb,
    .stream_stop_sending = cb_stop_sending,
    .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
};

static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref) {
  ckt_conn *c = ref->user_data;
  return c->q;
}

/* ---- creating connections ---------------------------------------------- */

static void conn_timer(void *arg);

static int is_loopback(const ckt_endpoint *ep, const ckt_addr *a) {
  if (ep->cfg.no_loopback_shortcuts) {
    return 0;
  }
  if (a->ss.ss_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->ss;
    return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
  }
  if (a->ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0,    0,
                                         0, 0, 0, 0, 0xff, 0xff};
    return IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr) ||
           (memcmp(s6->sin6_addr.s6_addr, v4mapped, 12) == 0 &&
            s6->sin6_addr.s6_addr[12] == 127);
  }
  return 0;
}

static ckt_conn *conn_alloc(ckt_endpoint *ep, const ckt_addr *peer, int client,
                            void *user) {
  ckt_conn *c = calloc(1, sizeof(*c));
  if (!c) {
    return NULL;
  }
  c->ep = ep;
  c->peer = *peer;
  c->loopback = is_loopback(ep, peer);
  c->client = client;
  c->user = user;
  c->serial = ++ep->next_serial;
  c->link.ref.get_conn = get_conn;
  c->link.ref.user_data = c;
  c->timer = ep->rt->ops->timer_new(ep->rt, conn_timer, c);
  if (!c->timer ||
      ckt_tls_session_new(client ? ep->cfg.client_tls : ep->cfg.server_tls,
                          !client, &c->link, &c->ssl) != CKT_OK) {
    if (c->timer) {
      ep->rt->ops->timer_free(ep->rt, c->timer);
    }
    free(c);
    return NULL;
  }
  return c;
}

static void conn_link(ckt_conn *c) {
  ckt_endpoint *ep = c->ep;
  c->next = ep->conns;
  if (ep->conns) {
    ep->conns->prev = c;
  }
  ep->conns = c;
  ep->nconns++;
  __atomic_store_n(&ep->stats.connections_open, ep->nconns, __ATOMIC_RELAXED);
}

static void settings_for(ckt_endpoint *ep, ngtcp2_settings *s,
                         ngtcp2_transport_params *p, const ckt_addr *peer) {
  ngtcp2_settings_default(s);
  if (is_loopback(ep, peer)) {
    s->max_tx_udp_payload_size = LOOPBACK_UDP_PAYLOAD;
    s->no_tx_udp_payload_size_shaping = 1;
  }
  s->initial_ts = now(ep);
  s->handshake_timeout = ep->cfg.handshake_timeout;
  s->rand_ctx.native_handle = ep;
  s->cc_algo = NGTCP2_CC_ALGO_CUBIC;
  /* With manual credit the window is a memory bound: no auto-tuning. */
  s->max_window = ep->cfg.manual_conn_credit ? ep->cfg.conn_window
                                             : 6 * ep->cfg.conn_window;
  s->max_stream_window = 6 * ep->cfg.stream_window;
  ngtcp2_transport_params_default(p);
  p->initial_max_stream_data_bidi_local = ep->cfg.stream_window;
  p->initial_max_stream_data_bidi_remote = ep->cfg.stream_window;
  p->initial_max_stream_data_uni = ep->cfg.stream_window;
  p->initial_max_data = ep->cfg.conn_window;
  p->initial_max_streams_bidi = ep->cfg.max_streams;
  p->initial_max_streams_uni = ep->cfg.max_streams;
  p->max_idle_timeout = ep->cfg.idle_timeout;
  p->active_connection_id_limit = 7;
}

static void conn_start(ckt_conn *c) {
  ngtcp2_conn_set_tls_native_handle(c->q, c->ssl);
  if (c->ep->cfg.keepalive) {
    ngtcp2_conn_set_keep_alive_timeout(c->q, c->ep->cfg.keepalive);
  }
}

int ckt_endpoint_connect(ckt_endpoint *ep, const ckt_addr *to, void *user,
                         ckt_conn **out) {
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  ngtcp2_cid dcid, scid;
  ngtcp2_path path;
  ckt_conn *c;
  int rv;

  if (!ep->cfg.client_tls || !to) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  /* Dialing has a budget of its own: strangers filling the accept side
   * cannot keep this node from making its own connections. */
  if (ep->ndialed >= ep->cfg.max_connections) {
    return CKT_ERR_AGAIN;
  }
  c = conn_alloc(ep, to, 1, user);
  if (!c) {
    return CKT_ERR_NOMEM;
  }
  new_cid(ep, &dcid, CKT_SCID_LEN);
  do {
    new_cid(ep, &scid, CKT_SCID_LEN);
  } while (ckt_cidmap_get(&ep->map, scid.data, scid.datalen));
  settings_for(ep, &settings, &params, to);
  path.local.addr = (ngtcp2_sockaddr *)&ep->local.ss;
  path.local.addrlen = ep->local.len;
  path.remote.addr = (ngtcp2_sockaddr *)&c->peer.ss;
  path.remote.addrlen = c->peer.len;
  path.user_data = NULL;
  rv = ngtcp2_conn_client_new(&c->q, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1,
                              &callbacks, &settings, &params, NULL, c);
  if (rv != 0 ||
      ckt_cidmap_put(&ep->map, scid.data, scid.datalen, c) != CKT_OK) {
    conn_free(c);
    return rv != 0 ? CKT_ERR_CRYPTO : CKT_ERR_NOMEM;
  }
  conn_start(c);
  conn_link(c);
  ep->ndialed++;
  CKT_COUNTER_ADD(ep->stats.connections_dialed, 1);
  schedule_flush(c);
  if (out) {
    *out = c;
  }
  return CKT_OK;
}

static void send_retry(ckt_endpoint *ep, const ckt_addr *from,
                       const ngtcp2_pkt_hd *hd) {
  uint8_t token[NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN];
  ngtcp2_cid scid;
  ngtcp2_ssize tlen, n;
  new_cid(ep, &scid, CKT_SCID_LEN);
  tlen = ngtcp2_crypto_generate_retry_token(
      token, ep->cfg.static_secret, sizeof(ep->cfg.static_secret), hd->version,
      (const ngtcp2_sockaddr *)&from->ss, from->len, &scid, &hd->dcid, now(ep));
  if (tlen < 0) {
    return;
  }
  n = ngtcp2_crypto_write_retry(ep->tx, sizeof(ep->tx), hd->version, &hd->scid,
                                &scid, &hd->dcid, token, (size_t)tlen);
  if (n > 0) {
    send_raw(ep, from, ep->tx, (size_t)n, 0);
    CKT_COUNTER_ADD(ep->stats.retries_sent, 1);
  }
}

static void refuse(ckt_endpoint *ep, const ckt_addr *from,
                   const ngtcp2_pkt_hd *hd) {
  ngtcp2_ssize n = ngtcp2_crypto_write_connection_close(
      ep->tx, sizeof(ep->tx), hd->version, &hd->scid, &hd->dcid,
      NGTCP2_CONNECTION_REFUSED, NULL, 0);
  if (n > 0) {
    send_raw(ep, from, ep->tx, (size_t)n, 0);
  }
}

static int same_ip(const ckt_addr *a, const ckt_addr *b) {
  if (a->ss.ss_family != b->ss.ss_family) {
    return 0;
  }
  if (a->ss.ss_family == AF_INET) {
    return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)&b->ss)->sin_addr.s_addr;
  }
  return memcmp(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr,
                &((const struct sockaddr_in6 *)&b->ss)->sin6_addr, 16) == 0;
}

/* Connections we accepted from from's IP address (any port) whose
 * address is proven: handshakes done, or begun with a Retry token.  (A
 * handshake still in progress from an unproven address may be spoofed:
 * counting it would let strangers lock an address out.) */
static size_t accepted_from(const ckt_endpoint *ep, const ckt_addr *from) {
  const ckt_conn *c;
  size_t n = 0;
  for (c = ep->conns; c; c = c->next) {
    n += !c->client && !c->dead && (c->ready || c->validated) &&
         same_ip(&c->peer, from);
  }
  return n;
}

/* Token bucket of new handshakes: 1 while fewer than handshake_rate a
 * second were accepted; past it, clients must prove their address with
 * a Retry first (a Retry costs us no state). */
static int handshake_rate_ok(ckt_endpoint *ep) {
  uint64_t t = now(ep);
  double rate = ep->cfg.handshake_rate;
  ep->hs_tokens += (double)(t - ep->hs_ts) / 1e9 * rate;
  if (ep->hs_tokens > rate) {
    ep->hs_tokens = rate;
  }
  ep->hs_ts = t;
  return ep->hs_tokens >= 1.0;
}

/* An Initial packet for no known connection: maybe a new client. */
/* hd: the Initial's header, decoded by ngtcp2_accept(). */
static void accept_conn(ckt_endpoint *ep, const ckt_addr *from,
                        const uint8_t *data, size_t len, ngtcp2_pkt_hd hd) {
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  ngtcp2_cid scid, odcid;
  ngtcp2_path path;
  ngtcp2_pkt_info pi = {0};
  ckt_conn *c;
  int rv;

  if (ep->naccepted >= ep->cfg.max_connections ||
      ep->handshaking >= ep->cfg.max_handshakes ||
      accepted_from(ep, from) >= ep->cfg.max_per_address) {
    refuse(ep, from, &hd);
    CKT_COUNTER_ADD(ep->stats.packets_dropped, 1);
    return;
  }
  settings_for(ep, &settings, &params, from);
  odcid = hd.dcid;
  /* Address validation: always when configured, and by itself once many
   * handshakes are pending (spoofed Initials then cost us no state). */
  if (ep->cfg.retry || hd.token.len > 0 ||
      ep->handshaking >= ep->cfg.max_handshakes / 4 || !handshake_rate_ok(ep)) {
    if (hd.token.len == 0) {
      send_retry(ep, from, &hd);
      return;
    }
    if (ngtcp2_crypto_verify_retry_token(
            &odcid, hd.token.base, hd.token.len, ep->cfg.static_secret,
            sizeof(ep->cfg.static_secret), hd.version,
            (const ngtcp2_sockaddr *)&from->ss, from->len, &hd.dcid,
            RETRY_TOKEN_TIMEOUT, now(ep)) != 0) {
      refuse(ep, from, &hd);
      CKT_COUNTER_ADD(ep->stats.packets_dropped, 1);
      return;
    }
    params.retry_scid = hd.dcid;
    params.retry_scid_present = 1;
    settings.token = hd.token;
  }
  params.original_dcid = odcid;
  c = conn_alloc(ep, from, 0, NULL);
  if (!c) {
    return;
  }
  c->validated = params.retry_scid_present;
  do {
    new_cid(ep, &scid, CKT_SCID_LEN);
  } while (ckt_cidmap_get(&ep->map, scid.data, scid.datalen));
  if (reset_token(ep, params.stateless_reset_token, &scid) != 0) {
    conn_free(c);
    return;
  }
  params.stateless_reset_token_present = 1;
  path.local.addr = (ngtcp2_sockaddr *)&ep->local.ss;
  path.local.addrlen = ep->local.len;
  path.remote.addr = (ngtcp2_sockaddr *)&c->peer.ss;
  path.remote.addrlen = c->peer.len;
  path.user_data = NULL;
  rv = ngtcp2_conn_server_new(&c->q, &hd.scid, &scid, &path, hd.version,
                              &callbacks, &settings, &params, NULL, c);
  if (rv != 0 ||
      ckt_cidmap_put(&ep->map, scid.data, scid.datalen, c) != CKT_OK ||
      ckt_cidmap_put(&ep->map, hd.dcid.data, hd.dcid.datalen, c) != CKT_OK) {
    ckt_cidmap_del(&ep->map, scid.data, scid.datalen);
    conn_free(c);
    return;
  }
  c->odcid = hd.dcid;
  conn_start(c);
  conn_link(c);
  ep->naccepted++;
  ep->handshaking++;
  if (ep->hs_tokens >= 1.0) {
    ep->hs_tokens -= 1.0;
  }
  CKT_COUNTER_ADD(ep->stats.connections_accepted, 1);
  rv = ngtcp2_conn_read_pkt(c->q, &path, &pi, data, len, now(ep));
  if (rv == NGTCP2_ERR_CRYPTO) {
    /* A real ClientHello we refuse (no common suite, ...): say why. */
    conn_fail(c, rv);
    return;
  }
  if (rv != 0) {
    /* The very first packet did not hold up: forget it without a word. */
    CKT_COUNTER_ADD(ep->stats.packets_dropped, 1);
    c->notified = 1;
    conn_bury(c);
    return;
  }
  schedule_flush(c);
}

/* accept_conn() within its budget: the time it takes is paid for from a
 * credit that grows by ACCEPT_SHARE of the time that passes. */
static void accept_budgeted(ckt_endpoint *ep, const ckt_addr *from,
                            const uint8_t *data, size_t len) {
  uint64_t t = now(ep);
  ngtcp2_pkt_hd hd;
  int tok;
  double *credit;
  if (!ep->cfg.server_tls || ngtcp2_accept(&hd, data, len) != 0) {
    CKT_COUNTER_ADD(ep->stats.packets_dropped, 1);
    return;
  }
  /* Initials that carry a token (clients answering our Retry) draw from a
   * budget of their own: a flood of tokenless junk cannot starve them. */
  tok = hd.token.len > 0;
  credit = tok ? &ep->token_credit : &ep->accept_credit;
  *credit += (double)(t - ep->accept_ts[tok]) * ACCEPT_SHARE;
  if (*credit > ACCEPT_BURST_NS) {
    *credit = ACCEPT_BURST_NS;
  }
  ep->accept_ts[tok] = t;
  if (*credit <= 0) {
    CKT_COUNTER_ADD(ep->stats.packets_dropped, 1);
    return;
  }
  accept_conn(ep, from, data, len, hd);
  *credit -= (double)(now(ep) - t);
}

/* ---- receiving ---------------------------------------------------------- */

static void send_version_negotiation(ckt_endpoint *ep, const ckt_addr *from,
                                     const ngtcp2_version_cid *vc, size_t len) {
  static const uint32_t versions[] = {NGTCP2_PROTO_VER_V1};
  uint8_t unused;
  ngtcp2_ssize n;
  /* Only for packets as large as a real Initial: no amplification. */
  if (len < NGTCP2_MAX_UDP_PAYLOAD_SIZE) {
    return;
  }
  random_bytes(ep, &unused, 1);
  n = ngtcp2_pkt_write_version_negotiation(
      ep->tx, sizeof(ep->tx), unused, vc->scid, vc->scidlen, vc->dcid,
      vc->dcidlen, versions, sizeof(versions) / sizeof(versions[0]));
  if (n > 0) {
    send_raw(ep, from, ep->tx, (size_t)n, 0);
    CKT_COUNTER_ADD(ep->stats.version_negotiations_sent, 1);
  }
}

/* A datagram for no connection may be a stateless reset from a peer that
 * lost our connection (it restarted): its last 16 bytes are then the token
 * the peer gave for one of the connection IDs we send to.  Such a
 * connection is over at once, instead of at its idle timeout; 1 if the
 * datagram was one. */
static int stateless_reset_received(ckt_endpoint *ep, const ckt_addr *from,
                                    const uint8_t *data, size_t len) {
  const uint8_t *tok;
  ngtcp2_cid_token ids[8];
  ckt_conn *c;
  uint64_t t = now(ep);

  if (len < 1 + NGTCP2_MIN_STATELESS_RESET_RANDLEN +
                NGTCP2_STATELESS_RESET_TOKENLEN) {
    return 0;
  }
  /* The scan visits every connection: a flood of junk gets at most
   * RESET_SCAN_RATE of them a second (a real reset missed then is found
   * out by the idle timeout, as before). */
  ep->scan_tokens += (double)(t - ep->scan_ts) / 1e9 * RESET_SCAN_RATE;
  if (ep->scan_tokens > RESET_SCAN_RATE) {
    ep->scan_tokens = RESET_SCAN_RATE;
  }
  ep->scan_ts = t;
  if (ep->scan_tokens < 1.0) {
    return 0;
  }
  ep->scan_tokens -= 1.0;
  tok = data + len - NGTCP2_STATELESS_RESET_TOKENLEN;
  for (c = ep->conns; c; c = c->next) {
    size_t n;
    if (c->dead || !ckt_addr_equal(&c->peer, from) ||
        ngtcp2_conn_get_num_active_dcid(c->q) > 8) {
      continue;
    }
    n = ngtcp2_conn_get_active_dcid(c->q, ids);
    for (size_t i = 0; i < n; i++) {
      uint8_t diff = 0;
      for (size_t k = 0; k < NGTCP2_STATELESS_RESET_TOKENLEN; k++) {
        diff |= (uint8_t)(ids[i].token[k] ^ tok[k]);
      }
      if (ids[i].token_present && diff == 0) {
        char why[256], who[CKT_ADDR_STRLEN];
        peer_name(c, who, sizeof(who));
        snprintf(why, sizeof(why),
                 "%s reset the connection (it restarted, or lost it)", who);
        conn_notify_closed(c, CKT_ERR_CONNECTION, why);
        conn_bury(c);
        return 1;
      }
    }
  }
  return 0;
}

static void send_stateless_reset(ckt_endpoint *ep, const ckt_addr *from,
                                 const ngtcp2_version_cid *vc, size_t len) {
  uint8_t token[NGTCP2_STATELESS_RESET_TOKENLEN], rnd[64];
  ngtcp2_cid cid;
  size_t randlen;
  uint64_t t = now(ep);
  ngtcp2_ssize n;

  /* Token bucket: a flood of junk costs us at most RESET_RATE answers. */
  ep->reset_tokens += (double)(t - ep->reset_ts) / 1e9 * RESET_RATE;
  if (ep->reset_tokens > RESET_RATE) {
    ep->reset_tokens = RESET_RATE;
  }
  ep->reset_ts = t;
  /* Shorter than the packet that caused it (no reset loops), and no
   * answer to packets too short to be a real short header. */
  if (ep->reset_tokens < 1.0 || vc->dcidlen != CKT_SCID_LEN || len <= 41) {
    return;
  }
  ep->reset_tokens -= 1.0;
  cid.datalen = vc->dcidlen;
  memcpy(cid.data, vc->dcid, vc->dcidlen);
  if (reset_token(ep, token, &cid) != 0) {
    return;
  }
  randlen = len - 1 - NGTCP2_STATELESS_RESET_TOKENLEN;
  if (randlen > sizeof(rnd)) {
    randlen = sizeof(rnd);
  }
  if (randlen < NGTCP2_MIN_STATELESS_RESET_RANDLEN) {
    return;
  }
  random_bytes(ep, rnd, randlen);
  n = ngtcp2_pkt_write_stateless_reset(ep->tx, sizeof(ep->tx), token, rnd,
                                       randlen);
  if (n > 0) {
    send_raw(ep, from, ep->tx, (size_t)n, 0);
    CKT_COUNTER_ADD(ep->stats.stateless_resets_sent, 1);
  }
}

void ckt_endpoint_recv(ckt_endpoint *ep, const ckt_addr *from,
                       const uint8_t *data, size_t len) {
  ngtcp2_version_cid vc;
  ckt_conn *c;
  int rv;

  ep->depth++;
  rv = ngtcp2_pkt_decode_version_cid(&vc, data, len, CKT_SCID_LEN);
  if (rv == NGTCP2_ERR_VERSION_NEGOTIATION) {
    send_version_negotiation(ep, from, &vc, len);
    goto out;
  }
  if (rv != 0) {
    CKT_COUNTER_ADD(ep->stats.packets_dropped, 1);
    goto out;
  }
  c = ckt_cidmap_get(&ep->map, vc.dcid, vc.dcidlen);
  if (!c) {
    if (data[0] & 0x80) {
      accept_budgeted(ep, from, data, len);
    } else if (!stateless_reset_received(ep, from, data, len)) {
      CKT_COUNTER_ADD(ep->stats.packets_dropped, 1);
      send_stateless_reset(ep, from, &vc, len);
    }
    goto out;
  }
  if (!c->dead) {
    ngtcp2_path path;
    ngtcp2_pkt_info pi = {0};
    path.local.addr = (ngtcp2_sockaddr *)&ep->local.ss;
    path.local.addrlen = ep->local.len;
    path.remote.addr = (ngtcp2_sockaddr *)(uintptr_t)&from->ss;
    path.remote.addrlen = from->len;
    path.user_data = NULL;
    rv = ngtcp2_conn_read_pkt(c->q, &path, &pi, data, len, now(ep));
    if (rv != 0) {
      if (rv == NGTCP2_ERR_DISCARD_PKT) {
        CKT_COUNTER_ADD(ep->stats.packets_dropped, 1);
      } else {
        conn_error(c, rv);
      }
      goto out;
    }
    schedule_flush(c);
  }
out:
  ep->depth--;
}

/* Writes what the datagrams just handed in made necessary (ACKs, replies):
 * the runtime calls this after each batch it read. */
void ckt_endpoint_flush(ckt_endpoint *ep) {
  ep->depth++;
  leave(ep);
}

static void conn_timer(void *arg) {
  ckt_conn *c = arg;
  ckt_endpoint *ep = c->ep;
  int rv;
  if (c->dead) {
    return;
  }
  ep->depth++;
  rv = ngtcp2_conn_handle_expiry(c->q, now(ep));
  if (rv != 0) {
    conn_error(c, rv);
  } else {
    conn_write(c);
  }
  leave(ep);
}

/* ---- endpoint ----------------------------------------------------------- */

int ckt_endpoint_new(ckt_runtime *rt, const ckt_addr *local,
                     const ckt_endpoint_config *cfg, ckt_endpoint **out) {
  ckt_endpoint *ep;
  uint64_t seed;
  if (!rt || !local || !cfg || !out || (!cfg->server_tls && !cfg->client_tls)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  ep = calloc(1, sizeof(*ep));
  if (!ep) {
    return CKT_ERR_NOMEM;
  }
  ep->rt = rt;
  ep->local = *local;
  ep->cfg = *cfg;
  if (!ep->cfg.max_connections) {
    ep->cfg.max_connections = 4096;
  }
  if (!ep->cfg.max_handshakes) {
    ep->cfg.max_handshakes = 256;
  }
  if (!ep->cfg.max_per_address) {
    /* Room for many clients behind one NAT, yet no single address can
     * take every slot. */
    ep->cfg.max_per_address =
        ep->cfg.max_connections / 4 > 0 ? ep->cfg.max_connections / 4 : 1;
  }
  if (!ep->cfg.handshake_rate) {
    ep->cfg.handshake_rate = 1000;
  }
  if (!ep->cfg.max_queued) {
    ep->cfg.max_queued = 64u * 1024 * 1024;
  }
  if (!ep->cfg.stream_window) {
    ep->cfg.stream_window = 1024 * 1024;
  }
  if (!ep->cfg.conn_window) {
    ep->cfg.conn_window = 8 * 1024 * 1024;
  }
  if (!ep->cfg.max_streams) {
    ep->cfg.max_streams = 1024;
  }
  if (!ep->cfg.idle_timeout) {
    ep->cfg.idle_timeout = 30ull * NGTCP2_SECONDS;
  }
  if (!ep->cfg.handshake_timeout) {
    ep->cfg.handshake_timeout = 10ull * NGTCP2_SECONDS;
  }
  ep->reset_tokens = RESET_RATE;
  ep->reset_ts = now(ep);
  ep->accept_credit = ep->token_credit = ACCEPT_BURST_NS;
  ep->accept_ts[0] = ep->accept_ts[1] = ep->reset_ts;
  ep->hs_tokens = ep->cfg.handshake_rate;
  ep->hs_ts = ep->reset_ts;
  random_bytes(ep, (uint8_t *)&seed, sizeof(seed));
  if (ckt_cidmap_init(&ep->map, seed) != CKT_OK) {
    free(ep);
    return CKT_ERR_NOMEM;
  }
  *out = ep;
  return CKT_OK;
}

void ckt_endpoint_free(ckt_endpoint *ep) {
  if (!ep) {
    return;
  }
  ep->depth++;
  while (ep->conns) {
    ckt_conn *c = ep->conns;
    ngtcp2_connection_close_error ccerr;
    ngtcp2_connection_close_error_default(&ccerr);
    ngtcp2_connection_close_error_set_application_error(
        &ccerr, 0, (const uint8_t *)"node stopping", 13);
    c->notified = 1; /* the owner is going away: no callbacks */
    conn_close_with(c, &ccerr);
    conn_bury(c);
  }
  ep->depth--;
  reap(ep);
  ckt_cidmap_free(&ep->map);
  free(ep);
}

const ckt_endpoint_stats *ckt_endpoint_get_stats(const ckt_endpoint *ep) {
  return &ep->stats;
}

/* ---- connection and stream API ----------------------------------------- */

void *ckt_conn_user(const ckt_conn *c) {
  return c->user;
}

void ckt_conn_set_user(ckt_conn *c, void *user) {
  c->user = user;
}

const ckt_addr *ckt_conn_peer(const ckt_conn *c) {
  return &c->peer;
}

int ckt_conn_is_ready(const ckt_conn *c) {
  return c->ready && !c->dead && !c->notified;
}

int ckt_conn_is_client(const ckt_conn *c) {
  return c->client;
}

uint64_t ckt_conn_serial(const ckt_conn *c) {
  return c->serial;
}

const char *ckt_conn_suite(const ckt_conn *c) {
  return ckt_tls_suite(c->ssl);
}

const char *ckt_conn_peer_key(const ckt_conn *c) {
  return c->link.peer_key;
}

void ckt_conn_set_why(ckt_conn *c, const char *why) {
  snprintf(c->link.why, sizeof(c->link.why), "%s", why);
}

int ckt_conn_export(ckt_conn *c, const char *label, uint8_t *out, size_t len) {
  if (!c->ready || !c->ssl ||
      wolfSSL_export_keying_material(c->ssl, out, len, label, strlen(label),
                                     NULL, 0, 0) != WOLFSSL_SUCCESS) {
    return CKT_ERR_CRYPTO;
  }
  return CKT_OK;
}

void ckt_conn_credit(ckt_conn *c, uint64_t n) {
  if (c->dead || c->notified || n == 0) {
    return;
  }
  ngtcp2_conn_extend_max_offset(c->q, n);
  schedule_flush(c);
}

void ckt_conn_close(ckt_conn *c, uint64_t app_error, const char *why) {
  ckt_endpoint *ep = c->ep;
  ngtcp2_connection_close_error ccerr;
  char text[256], who[CKT_ADDR_STRLEN];
  if (c->dead) {
    return;
  }
  ep->depth++;
  ngtcp2_connection_close_error_default(&ccerr);
  ngtcp2_connection_close_error_set_application_error(
      &ccerr, app_error, (const uint8_t *)(why ? why : ""),
      why ? strlen(why) : 0);
  conn_close_with(c, &ccerr);
  peer_name(c, who, sizeof(who));
  snprintf(text, sizeof(text), "closed the connection with %s%s%s", who,
           why ? ": " : "", why ? why : "");
  conn_notify_closed(c, app_error ? CKT_ERR_CONNECTION : CKT_OK, text);
  conn_bury(c);
  leave(ep);
}

int ckt_conn_open_stream(ckt_conn *c, int bidi, void *user, ckt_stream **out) {
  int64_t sid;
  ckt_stream *s;
  int rv;
  if (c->dead || c->notified) {
    return CKT_ERR_CLOSED;
  }
  if (!c->ready) {
    return CKT_ERR_AGAIN;
  }
  rv = bidi ? ngtcp2_conn_open_bidi_stream(c->q, &sid, NULL)
            : ngtcp2_conn_open_uni_stream(c->q, &sid, NULL);
  if (rv == NGTCP2_ERR_STREAM_ID_BLOCKED) {
    return CKT_ERR_AGAIN;
  }
  if (rv != 0) {
    return CKT_ERR_NOMEM;
  }
  s = stream_new(c, sid, user);
  if (!s) {
    ngtcp2_conn_shutdown_stream(c->q, sid, 1);
    return CKT_ERR_NOMEM;
  }
  ngtcp2_conn_set_stream_user_data(c->q, sid, s);
  *out = s;
  return CKT_OK;
}

int ckt_stream_write(ckt_stream *s, const void *data, size_t len, int fin) {
  ckt_conn *c = s->conn;
  if (c->dead || c->notified || s->write_closed || s->fin_queued) {
    return CKT_ERR_CLOSED;
  }
  if (len > c->ep->cfg.max_queued || c->unacked > c->ep->cfg.max_queued - len) {
    return CKT_ERR_AGAIN; /* the peer is not taking what we already sent */
  }
  if (len) {
    chunk *k = malloc(sizeof(*k) + len);
    if (!k) {
      return CKT_ERR_NOMEM;
    }
    k->next = NULL;
    k->len = len;
    memcpy(k->data, data, len);
    if (s->tail) {
      s->tail->next = k;
    } else {
      s->head = k;
      s->head_off = s->queued_off;
    }
    s->tail = k;
    s->queued_off += len;
    c->unacked += len;
  }
  if (fin) {
    s->fin_queued = 1;
  }
  pending_add(s);
  schedule_flush(c);
  return CKT_OK;
}

void ckt_stream_reset(ckt_stream *s, uint64_t app_error) {
  ckt_conn *c = s->conn;
  if (c->dead || c->notified) {
    return;
  }
  s->write_closed = 1;
  pending_remove(s);
  ngtcp2_conn_shutdown_stream(c->q, s->id, app_error ? app_error : 1);
  schedule_flush(c);
}

void ckt_stream_set_manual_credit(ckt_stream *s, int on) {
  s->manual_credit = on ? 1 : 0;
}

void ckt_stream_credit(ckt_stream *s, uint64_t n) {
  ckt_conn *c = s->conn;
  if (c->dead || c->notified || n == 0) {
    return;
  }
  ngtcp2_conn_extend_max_stream_offset(c->q, s->id, n);
  schedule_flush(c);
}

void *ckt_stream_user(const ckt_stream *s) {
  return s->user;
}

void ckt_stream_set_user(ckt_stream *s, void *user) {
  s->user = user;
}

ckt_conn *ckt_stream_conn(const ckt_stream *s) {
  return s->conn;
}

int64_t ckt_stream_id(const ckt_stream *s) {
  return s->id;
}

uint64_t ckt_stream_unacked(const ckt_stream *s) {
  return s->queued_off - s->acked_off;
}
