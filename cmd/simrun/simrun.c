/*
 * simrun — ckt's real stack on the deterministic simulator.
 *
 *   simrun --nodes 7 --fragments 1000000 --seed 1
 *   simrun --nodes 4 --fragments 5000 --seed 9 --faults chaos
 *   simrun --swarm 1000 --faults random
 *
 * N simulated nodes each run the peer service "sim".  Every node sends
 * fragments to every other one, one flow per ordered pair, each over a
 * circuit; the fragments carry (flow, circuit generation, sequence) and a
 * body derived from them.  The receiver checks that each fragment of a
 * circuit arrives exactly once, in order and intact.  When a fault closes
 * a circuit, the sender opens a new one (a new generation) and goes on;
 * the fragments the closed circuit did not deliver are counted as lost
 * with it.  At the end every fragment must be delivered, or lost on a
 * circuit a fault closed: a fragment missing from a circuit that stayed
 * open is a failure, and so is a run that has not finished long after
 * the last fault healed.
 *
 * The last line is
 *   SIM seed=S nodes=N fragments=M delivered=D trace=<16 hex> sim_s=F wall_s=F
 * and the same seed (with the same flags) always gives the same trace.
 * See docs/dst.md.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckt/ckt.h"
#include "cmdline.h"

#define SERVICE "sim"
#define PORT 7100
#define HDR_LEN 16 /* flow (4) + generation (4) + sequence (8) */
#define TICK_NS (10 * CKT_SIM_MS)
#define CHECK_NS (50 * CKT_SIM_MS)
#define REOPEN_NS (250 * CKT_SIM_MS)
#define IDLE_MS 5000
#define HANDSHAKE_MS 3000
/* After the last fault heals, the run must finish within this. */
#define SETTLE_NS (120 * CKT_SIM_S)

enum { P_NONE, P_FLAKY, P_PARTITION, P_CHAOS, P_RANDOM };
static const char *const profile_names[] = {"none", "flaky", "partition",
                                            "chaos", "random"};

typedef struct opts {
  unsigned long nodes, fragments, payload, swarm, sabotage;
  unsigned long seed;
  const char *faults;
  const char *spread_s, *span_s;
  int verbose, events, twice, quiet;
} opts;

/* One circuit generation of a flow, as the sender made it. */
typedef struct gen_rec {
  uint64_t first_seq; /* sequence of its first fragment */
  uint64_t sent, delivered;
  int closed; /* the sender saw it close */
} gen_rec;

typedef struct flow {
  struct run *r;
  int from, to;
  uint64_t total;    /* fragments this flow sends */
  uint64_t next_seq; /* the next one to send */
  uint64_t allowed;  /* paced: sequences below this may go */
  gen_rec *gens;
  uint32_t ngens, cap;
  ckt_circuit *c; /* the open circuit, NULL between generations */
  int reopen_due; /* a reopen is scheduled */
} flow;

typedef struct simnode {
  struct run *r;
  int idx;
  ckt_sim_host *host;
  ckt_node *n;
  ckt_peer *peer;
  char addr[64];
} simnode;

typedef struct faultcfg {
  ckt_sim_link link;
  int partitions, isolations, restarts, flaky_hosts, skew;
  uint64_t min_gap_ns, max_gap_ns; /* between fault events */
  uint64_t max_cut_ns;             /* longest cut / isolation / downtime */
} faultcfg;

struct call_ctx;

typedef struct run {
  const opts *o;
  uint64_t seed;
  int profile;
  ckt_sim *sim;
  simnode *nodes;
  int nnodes;
  flow *flows;
  int nflows;
  faultcfg fc;
  uint64_t span_ns, spread_ns, deadline_ns;
  uint64_t sent, delivered, closes, faults_injected, restarts_done, seen;
  uint64_t calls, calls_done, calls_ok;
  uint64_t calls_until_ns, call_every_ns;
  struct call_ctx **calls_ctx;
  size_t ncalls_ctx, cap_calls_ctx;
  int failed, finished, tearing_down;
} run;

static void fail(run *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A check failed: the simulation keeps the first reason and stops. */
static void fail(run *r, const char *fmt, ...) {
  char why[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  r->failed = 1;
  ckt_sim_fail(r->sim, "%s", why);
}

/* Checked after every event: no receiver ever counts more fragments than
 * were sent (a duplicate that slipped past the per-circuit order check
 * would show here first). */
static const char *no_more_than_sent(ckt_sim *s, void *user) {
  const run *r = user;
  (void)s;
  return r->delivered > r->sent ? "more fragments delivered than sent" : NULL;
}

static double sim_seconds(const run *r) {
  return (double)ckt_sim_now(r->sim) / 1e9;
}

static void vlog(run *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void vlog(run *r, const char *fmt, ...) {
  va_list ap;
  if (!r->o->verbose) {
    return;
  }
  printf("[%10.6f] ", sim_seconds(r));
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
}

/* ---- fragments ----------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) {
    p[i] = (uint8_t)(v >> (8 * i));
  }
}

static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) {
    p[i] = (uint8_t)(v >> (8 * i));
  }
}

static uint32_t get32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) {
    v = (v << 8) | p[i];
  }
  return v;
}

static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) {
    v = (v << 8) | p[i];
  }
  return v;
}

/* The body after the header: a function of (flow, seq), checked whole. */
static uint8_t body_byte(uint32_t fi, uint64_t seq, size_t i) {
  return (uint8_t)(seq * 131 + fi * 7 + i * 29);
}

static ckt_fragment *make_fragment(run *r, uint32_t fi, uint32_t gen,
                                   uint64_t seq) {
  uint8_t buf[65536];
  size_t len = r->o->payload;
  ckt_fragment *f = ckt_fragment_new();
  if (!f) {
    return NULL;
  }
  f->type = CKT_FRAG_DATA;
  f->part = (int64_t)seq;
  put32(buf, fi);
  put32(buf + 4, gen);
  put64(buf + 8, seq);
  for (size_t i = HDR_LEN; i < len; i++) {
    buf[i] = body_byte(fi, seq, i);
  }
  if (ckt_fragment_set_payload(f, buf, len) != CKT_OK) {
    ckt_fragment_free(f);
    return NULL;
  }
  return f;
}

/* ---- senders ------------------------------------------------------------- */

static void schedule_reopen(run *r, flow *f);

static uint32_t flow_index(run *r, const flow *f) {
  return (uint32_t)(f - r->flows);
}

/* Sends what pacing allows, until the circuit's queue is full. */
static void pump(run *r, flow *f) {
  while (f->c && f->next_seq < f->allowed) {
    uint32_t gen = f->ngens - 1;
    ckt_fragment *frag = make_fragment(r, flow_index(r, f), gen, f->next_seq);
    int rv;
    if (!frag) {
      fail(r, "out of memory making a fragment");
      return;
    }
    rv = ckt_circuit_send(f->c, frag);
    if (rv == CKT_ERR_AGAIN || rv == CKT_ERR_CLOSED) {
      return; /* `writable`, or circuit_closed, comes next */
    }
    if (rv != CKT_OK) {
      fail(r, "flow %u: sending failed: %s", flow_index(r, f),
           ckt_strerror(rv));
      return;
    }
    f->gens[gen].sent++;
    f->next_seq++;
    r->sent++;
  }
}

static void open_circuit(run *r, flow *f) {
  simnode *from = &r->nodes[f->from];
  char name[48];
  ckt_circuit *c;
  int rv;

  if (!from->n || !from->peer || f->c) {
    return; /* down: the restart reopens it */
  }
  if (f->ngens == f->cap) {
    uint32_t cap = f->cap ? 2 * f->cap : 4;
    gen_rec *g = realloc(f->gens, cap * sizeof(*g));
    if (!g) {
      fail(r, "out of memory");
      return;
    }
    f->gens = g;
    f->cap = cap;
  }
  snprintf(name, sizeof(name), "f%u.g%u", flow_index(r, f), f->ngens);
  rv = ckt_peer_open_circuit_extant(
      from->peer, r->nodes[f->to].addr, SERVICE, name, NULL,
      (void *)(uintptr_t)(flow_index(r, f) + 1), &c);
  if (rv == CKT_ERR_AGAIN) {
    schedule_reopen(r, f);
    return;
  }
  if (rv != CKT_OK) {
    fail(r, "flow %u: opening a circuit failed: %s", flow_index(r, f),
         ckt_strerror(rv));
    return;
  }
  memset(&f->gens[f->ngens], 0, sizeof(f->gens[0]));
  f->gens[f->ngens].first_seq = f->next_seq;
  f->ngens++;
  f->c = c;
  pump(r, f);
}

static void reopen_cb(ckt_sim *s, void *user) {
  flow *f = user;
  (void)s;
  f->reopen_due = 0;
  if (!f->r->finished && !f->r->tearing_down) {
    open_circuit(f->r, f);
  }
}

static void schedule_reopen(run *r, flow *f) {
  if (f->reopen_due || r->tearing_down) {
    return;
  }
  f->reopen_due = 1;
  if (ckt_sim_at(r->sim, ckt_sim_now(r->sim) + REOPEN_NS, reopen_cb, f) !=
      CKT_OK) {
    fail(r, "out of memory scheduling a reopen");
  }
}

/* ---- the service --------------------------------------------------------- */

static flow *sender_flow(run *r, ckt_circuit *c) {
  uintptr_t v = (uintptr_t)ckt_circuit_user(c);
  if (v == 0 || v > (uintptr_t)r->nflows) {
    return NULL; /* a circuit this node accepted */
  }
  return &r->flows[v - 1];
}

/* An accepted circuit remembers the flow and generation its name gives,
 * so that every fragment can be checked against the circuit it came on.
 * (Its user value has bit 62 set: never a sender's flow index.) */
#define ACCEPTED (1ull << 62)

static int on_circuit_new(ckt_peer *p, ckt_circuit *c, const ckt_fragment *open,
                          void *user) {
  simnode *sn = user;
  unsigned fi, gen;
  char end;
  (void)p;
  if (!open->subject ||
      sscanf(open->subject, "f%u.g%u%c", &fi, &gen, &end) != 2 ||
      fi >= (unsigned)sn->r->nflows) {
    fail(sn->r, "node %d: a circuit named '%s'", sn->idx,
         open->subject ? open->subject : "");
    return -1;
  }
  ckt_circuit_set_user(
      c, (void *)(uintptr_t)(ACCEPTED | ((uint64_t)fi << 32) | gen));
  return 0;
}

static void on_fragment(ckt_peer *p, ckt_circuit *c, const ckt_fragment *frag,
                        void *user) {
  simnode *sn = user;
  run *r = sn->r;
  uint32_t fi, gen;
  uint64_t seq, want;
  gen_rec *g;
  (void)p;

  if (frag->payload_len != r->o->payload || frag->payload_len < HDR_LEN) {
    fail(r, "node %d: a fragment of %zu bytes (sent %lu)", sn->idx,
         frag->payload_len, r->o->payload);
    return;
  }
  if (++r->seen == r->o->sabotage) {
    return; /* --sabotage: pretend this one never arrived */
  }
  fi = get32(frag->payload);
  gen = get32(frag->payload + 4);
  seq = get64(frag->payload + 8);
  if (fi >= (uint32_t)r->nflows || r->flows[fi].to != sn->idx ||
      gen >= r->flows[fi].ngens) {
    fail(r, "node %d: a fragment of flow %u generation %u it should not get",
         sn->idx, fi, gen);
    return;
  }
  if ((uint64_t)(uintptr_t)ckt_circuit_user(c) !=
      (ACCEPTED | ((uint64_t)fi << 32) | gen)) {
    fail(r, "node %d: flow %u generation %u's fragment came on circuit %s",
         sn->idx, fi, gen, ckt_circuit_name(c));
    return;
  }
  g = &r->flows[fi].gens[gen];
  want = g->first_seq + g->delivered;
  if (seq != want) {
    fail(r,
         "flow %u (node %d -> %d) circuit %u: fragment %" PRIu64
         " arrived where %" PRIu64 " was due (%s)",
         fi, r->flows[fi].from, sn->idx, gen, seq, want,
         seq < want ? "duplicate or out of order" : "a gap: fragments lost");
    return;
  }
  for (size_t i = HDR_LEN; i < frag->payload_len; i++) {
    if (frag->payload[i] != body_byte(fi, seq, i)) {
      fail(r, "flow %u fragment %" PRIu64 ": byte %zu differs", fi, seq, i);
      return;
    }
  }
  if (g->delivered >= g->sent) {
    fail(r, "flow %u circuit %u: more fragments delivered than sent", fi, gen);
    return;
  }
  g->delivered++;
  r->delivered++;
}

static void on_closed(ckt_peer *p, ckt_circuit *c, const char *reason,
                      int remote, void *user) {
  simnode *sn = user;
  run *r = sn->r;
  flow *f = sender_flow(r, c);
  (void)p;
  if (!f || f->c != c) {
    return;
  }
  f->gens[f->ngens - 1].closed = 1;
  f->c = NULL;
  if (r->tearing_down) {
    return;
  }
  r->closes++;
  vlog(r, "flow %u (node %d -> %d) circuit %u closed%s: %s", flow_index(r, f),
       f->from, f->to, f->ngens - 1, remote ? " by the remote" : "",
       reason ? reason : "");
  if ((r->profile == P_NONE || r->profile == P_FLAKY) && !r->tearing_down) {
    /* Loss, duplication and reordering must never break a connection. */
    fail(r, "flow %u: a circuit closed with no fault that could close it: %s",
         flow_index(r, f), reason ? reason : "");
    return;
  }
  schedule_reopen(r, f);
}

static void on_writable(ckt_peer *p, ckt_circuit *c, void *user) {
  simnode *sn = user;
  flow *f = sender_flow(sn->r, c);
  (void)p;
  if (f && f->c == c) {
    pump(sn->r, f);
  }
}

static void node_log(void *user, const char *line) {
  simnode *sn = user;
  vlog(sn->r, "node %d: %s", sn->idx, line);
}

/* ---- calls --------------------------------------------------------------- */

/* Next to the circuits, nodes call each other's "echo" with the Message
 * API: each call must complete exactly once, with its own payload back
 * or an error (under no faults, never an error).  Calls carry the
 * caller's wall clock, so skewed clocks (chaos) show here: a server far
 * enough ahead sees a deadline that passed. */
#define CALL_EVERY_NS (250 * CKT_SIM_MS) /* at most this often */
#define CALL_ROUNDS 200                  /* and at most this many rounds */
#define CALL_TIMEOUT_MS 2000

typedef struct call_ctx {
  run *r;
  uint64_t id;
  int done;
} call_ctx;

static int echo(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  (void)n;
  (void)user;
  return ckt_message_set_payload(reply, req->payload, req->payload_len);
}

static void call_done(ckt_node *n, int err, const ckt_message *reply,
                      void *user) {
  call_ctx *cc = user;
  run *r = cc->r;
  uint8_t want[8];
  (void)n;
  if (cc->done++) {
    fail(r, "call %" PRIu64 " completed twice", cc->id);
    return;
  }
  r->calls_done++;
  put64(want, cc->id);
  if (err == CKT_OK) {
    if (reply->payload_len != 8 || memcmp(reply->payload, want, 8) != 0) {
      fail(r, "call %" PRIu64 " got another call's reply", cc->id);
      return;
    }
    r->calls_ok++;
  } else if (r->profile == P_NONE && !r->tearing_down) {
    fail(r, "call %" PRIu64 " failed with no fault injected: %s", cc->id,
         reply->err ? reply->err : ckt_strerror(err));
  }
  /* Freed by the run: a late duplicate completion must still be seen. */
}

static void call_cb(ckt_sim *s, void *user) {
  run *r = user;
  for (int i = 0; i < r->nnodes && !r->failed; i++) {
    simnode *from = &r->nodes[i];
    int to = (int)((i + 1 + ckt_sim_rand_below(s, (uint64_t)r->nnodes - 1)) %
                   (uint64_t)r->nnodes);
    ckt_message *m;
    call_ctx *cc;
    uint8_t id[8];
    if (!from->n) {
      continue; /* down */
    }
    cc = calloc(1, sizeof(*cc));
    m = ckt_message_new();
    if (!cc || !m || r->ncalls_ctx == r->cap_calls_ctx) {
      free(cc);
      ckt_message_free(m);
      fail(r, "out of memory for a call");
      return;
    }
    cc->r = r;
    cc->id = r->calls;
    put64(id, cc->id);
    ckt_message_set_service(m, "echo");
    ckt_message_set_payload(m, id, sizeof(id));
    r->calls_ctx[r->ncalls_ctx++] = cc;
    if (ckt_node_call_async(from->n, r->nodes[to].addr, m, CALL_TIMEOUT_MS,
                            call_done, cc) != CKT_OK) {
      cc->done = 1; /* refused at once: done never runs */
      r->calls_done++;
    }
    r->calls++;
  }
  if (ckt_sim_now(s) + r->call_every_ns <= r->calls_until_ns) {
    ckt_sim_at(s, ckt_sim_now(s) + r->call_every_ns, call_cb, r);
  }
}

static int node_up(run *r, simnode *sn) {
  static const ckt_peer_service svc = {
      .circuit_new = on_circuit_new,
      .fragment = on_fragment,
      .circuit_closed = on_closed,
      .writable = on_writable,
  };
  ckt_node_config cfg;
  int rv;

  ckt_node_config_init(&cfg);
  cfg.serve = 1;
  cfg.idle_timeout_ms = IDLE_MS;
  cfg.handshake_timeout_ms = HANDSHAKE_MS;
  cfg.log = node_log;
  cfg.log_user = sn;
  rv = ckt_sim_node_new(sn->host, PORT, &cfg, &sn->n);
  if (rv == CKT_OK) {
    rv = ckt_node_register_peer_service(sn->n, SERVICE, &svc, sn);
  }
  if (rv == CKT_OK) {
    rv = ckt_node_register_call(sn->n, "echo", echo, sn);
  }
  if (rv == CKT_OK) {
    rv = ckt_node_start_peer(sn->n, SERVICE, &sn->peer);
  }
  if (rv != CKT_OK) {
    fail(r, "node %d: cannot start: %s", sn->idx, ckt_strerror(rv));
    return rv;
  }
  return CKT_OK;
}

/* ---- faults -------------------------------------------------------------- */

static uint64_t rand_range(run *r, uint64_t lo, uint64_t hi) {
  return hi > lo ? lo + ckt_sim_rand_below(r->sim, hi - lo) : lo;
}

static void set_profile(run *r) {
  faultcfg *fc = &r->fc;
  memset(fc, 0, sizeof(*fc));
  fc->link.latency_ns = 2 * CKT_SIM_MS;
  fc->min_gap_ns = 200 * CKT_SIM_MS;
  fc->max_gap_ns = 2 * CKT_SIM_S;
  fc->max_cut_ns = 12 * CKT_SIM_S;
  if (r->profile == P_FLAKY || r->profile == P_CHAOS) {
    fc->link.jitter_ns = 1 * CKT_SIM_MS;
    fc->link.loss_ppm = 10000;
    fc->link.dup_ppm = 5000;
    fc->link.reorder_ppm = 20000;
    fc->link.reorder_ns = 5 * CKT_SIM_MS;
  }
  if (r->profile == P_PARTITION || r->profile == P_CHAOS) {
    fc->partitions = 1;
  }
  if (r->profile == P_CHAOS) {
    fc->isolations = fc->restarts = fc->flaky_hosts = fc->skew = 1;
  }
  if (r->profile == P_RANDOM) {
    /* Everything drawn from the seed: the replay needs nothing else. */
    /* One seed in four gets a harsh network: up to 15% loss, 100 ms of
     * latency, links down to 100 kbit/s with short queues. */
    int harsh = ckt_sim_rand_below(r->sim, 4) == 0;
    fc->link.latency_ns =
        rand_range(r, 100000, (harsh ? 100 : 20) * CKT_SIM_MS);
    fc->link.jitter_ns = rand_range(r, 0, 5 * CKT_SIM_MS);
    fc->link.bandwidth_bps =
        ckt_sim_rand_below(r->sim, 2)
            ? rand_range(r, harsh ? 100000 : 1000000, 1000000000)
            : 0;
    if (harsh) {
      fc->link.queue_bytes = rand_range(r, 4096, 256 * 1024);
    }
    fc->link.loss_ppm = (uint32_t)rand_range(r, 0, harsh ? 150000 : 50000);
    fc->link.dup_ppm = (uint32_t)rand_range(r, 0, 20000);
    fc->link.reorder_ppm = (uint32_t)rand_range(r, 0, 50000);
    fc->link.reorder_ns = rand_range(r, 0, 20 * CKT_SIM_MS);
    fc->partitions = (int)ckt_sim_rand_below(r->sim, 2);
    fc->isolations = (int)ckt_sim_rand_below(r->sim, 2);
    fc->restarts = (int)ckt_sim_rand_below(r->sim, 2);
    fc->flaky_hosts = (int)ckt_sim_rand_below(r->sim, 2);
    fc->skew = (int)ckt_sim_rand_below(r->sim, 2);
    fc->min_gap_ns = rand_range(r, 50 * CKT_SIM_MS, 500 * CKT_SIM_MS);
    fc->max_gap_ns = fc->min_gap_ns + rand_range(r, 0, 3 * CKT_SIM_S);
    fc->max_cut_ns = rand_range(r, 100 * CKT_SIM_MS, 15 * CKT_SIM_S);
  }
}

typedef struct fault_ev {
  run *r;
  int kind, a, b, oneway;
} fault_ev;

enum { F_HEAL, F_UNISOLATE, F_RESTART, F_UNFLAKY };

static void crash(run *r, simnode *sn) {
  ckt_sim_host_down(sn->host);
  ckt_node_free(sn->n); /* nothing it says on the way out gets through */
  sn->n = NULL;
  sn->peer = NULL;
  for (int i = 0; i < r->nflows; i++) {
    flow *f = &r->flows[i];
    if (f->from == sn->idx && f->c) {
      f->gens[f->ngens - 1].closed = 1;
      f->c = NULL;
    }
  }
}

static void restart(run *r, simnode *sn) {
  ckt_sim_host_up(sn->host);
  if (node_up(r, sn) != CKT_OK) {
    return;
  }
  r->restarts_done++;
  for (int i = 0; i < r->nflows; i++) {
    if (r->flows[i].from == sn->idx) {
      open_circuit(r, &r->flows[i]);
    }
  }
}

static void fault_end_cb(ckt_sim *s, void *user) {
  fault_ev *e = user;
  run *r = e->r;
  switch (e->kind) {
  case F_HEAL:
    vlog(r, "fault: heal %d <-> %d", e->a, e->b);
    ckt_sim_heal(s, r->nodes[e->a].host, r->nodes[e->b].host);
    break;
  case F_UNISOLATE:
    vlog(r, "fault: node %d rejoins", e->a);
    ckt_sim_isolate(r->nodes[e->a].host, 0);
    break;
  case F_RESTART:
    vlog(r, "fault: node %d restarts", e->a);
    if (!r->finished) {
      restart(r, &r->nodes[e->a]);
    }
    break;
  case F_UNFLAKY:
    ckt_sim_host_flaky(r->nodes[e->a].host, 0, 0);
    break;
  }
  free(e);
}

static void end_later(run *r, int kind, int a, int b, uint64_t after) {
  fault_ev *e = calloc(1, sizeof(*e));
  uint64_t at = ckt_sim_now(r->sim) + after;
  if (!e) {
    fail(r, "out of memory");
    return;
  }
  e->r = r;
  e->kind = kind;
  e->a = a;
  e->b = b;
  /* Every fault ends by the end of the span. */
  if (at > r->span_ns) {
    at = r->span_ns;
  }
  if (ckt_sim_at(r->sim, at, fault_end_cb, e) != CKT_OK) {
    free(e);
    fail(r, "out of memory");
  }
}

static void fault_cb(ckt_sim *s, void *user) {
  run *r = user;
  int kinds[4], nk = 0, a, b;
  uint64_t len;

  if (r->finished || ckt_sim_now(s) >= r->span_ns) {
    return;
  }
  if (r->fc.partitions) {
    kinds[nk++] = 0;
  }
  if (r->fc.isolations) {
    kinds[nk++] = 1;
  }
  if (r->fc.restarts) {
    kinds[nk++] = 2;
  }
  if (r->fc.flaky_hosts) {
    kinds[nk++] = 3;
  }
  a = (int)ckt_sim_rand_below(s, (uint64_t)r->nnodes);
  b = (a + 1 + (int)ckt_sim_rand_below(s, (uint64_t)r->nnodes - 1)) % r->nnodes;
  len = rand_range(r, 50 * CKT_SIM_MS, r->fc.max_cut_ns);
  r->faults_injected++;
  switch (kinds[ckt_sim_rand_below(s, (uint64_t)nk)]) {
  case 0: {
    int oneway = ckt_sim_rand_below(s, 3) == 0;
    vlog(r, "fault: cut %d -> %d%s for %.3f s", a, b, oneway ? "" : " (both)",
         (double)len / 1e9);
    ckt_sim_partition(s, r->nodes[a].host, r->nodes[b].host, oneway);
    end_later(r, F_HEAL, a, b, len);
    break;
  }
  case 1:
    vlog(r, "fault: node %d isolated for %.3f s", a, (double)len / 1e9);
    ckt_sim_isolate(r->nodes[a].host, 1);
    end_later(r, F_UNISOLATE, a, 0, len);
    break;
  case 2:
    if (r->nodes[a].n) {
      vlog(r, "fault: node %d crashes for %.3f s", a, (double)len / 1e9);
      crash(r, &r->nodes[a]);
      end_later(r, F_RESTART, a, 0, len);
    }
    break;
  case 3: {
    uint32_t sp = (uint32_t)rand_range(r, 0, 100000);
    uint32_t rp = (uint32_t)rand_range(r, 0, 100000);
    vlog(r, "fault: node %d flaky (send %u, receive %u ppm) for %.3f s", a, sp,
         rp, (double)len / 1e9);
    ckt_sim_host_flaky(r->nodes[a].host, sp, rp);
    end_later(r, F_UNFLAKY, a, 0, len);
    break;
  }
  }
  ckt_sim_at(s,
             ckt_sim_now(s) + rand_range(r, r->fc.min_gap_ns, r->fc.max_gap_ns),
             fault_cb, r);
}

/* ---- pacing and the end -------------------------------------------------- */

static int flow_done(const flow *f) {
  const gen_rec *g;
  if (f->next_seq < f->total) {
    return 0;
  }
  if (f->ngens == 0) {
    return f->total == 0;
  }
  g = &f->gens[f->ngens - 1];
  return g->closed || g->delivered == g->sent;
}

static void tick_cb(ckt_sim *s, void *user) {
  run *r = user;
  uint64_t now = ckt_sim_now(s);
  int more = 0;
  for (int i = 0; i < r->nflows; i++) {
    flow *f = &r->flows[i];
    uint64_t allowed =
        now >= r->spread_ns
            ? f->total
            : (uint64_t)((double)f->total * (double)now / (double)r->spread_ns);
    if (allowed > f->allowed) {
      f->allowed = allowed;
      pump(r, f);
    }
    more |= f->allowed < f->total;
  }
  if (more) {
    /* Wake when the busiest flow may send its next fragment, at most
     * every TICK_NS: an idle-dominated run costs few events. */
    uint64_t step = TICK_NS, max_total = 1;
    for (int i = 0; i < r->nflows; i++) {
      if (r->flows[i].total > max_total) {
        max_total = r->flows[i].total;
      }
    }
    if (r->spread_ns / max_total > step) {
      step = r->spread_ns / max_total;
    }
    ckt_sim_at(s, now + step, tick_cb, r);
  }
}

static void check_cb(ckt_sim *s, void *user) {
  run *r = user;
  int done = 1;
  for (int i = 0; i < r->nflows && done; i++) {
    done = flow_done(&r->flows[i]);
  }
  if (done && ckt_sim_now(s) >= r->span_ns &&
      ckt_sim_now(s) >= r->calls_until_ns && r->calls_done == r->calls) {
    r->finished = 1;
    ckt_sim_halt(s);
    return;
  }
  if (ckt_sim_now(s) > r->deadline_ns) {
    uint64_t pending = 0;
    for (int i = 0; i < r->nflows; i++) {
      pending += r->flows[i].total - r->flows[i].next_seq;
    }
    fail(r,
         "stalled: %" PRIu64 " of %lu fragments delivered, %" PRIu64
         " not sent, %.0f s after the last fault healed",
         r->delivered, r->o->fragments, pending,
         (double)(ckt_sim_now(s) - r->span_ns) / 1e9);
    return;
  }
  ckt_sim_at(s, ckt_sim_now(s) + CHECK_NS, check_cb, r);
}

/* The final accounting: every fragment delivered, or lost with a circuit
 * a fault closed. */
static uint64_t account(run *r) {
  uint64_t lost = 0, sent = 0, delivered = 0;
  for (int i = 0; i < r->nflows && !r->failed; i++) {
    const flow *f = &r->flows[i];
    for (uint32_t g = 0; g < f->ngens; g++) {
      const gen_rec *gr = &f->gens[g];
      sent += gr->sent;
      delivered += gr->delivered;
      if (gr->delivered < gr->sent) {
        if (!gr->closed) {
          fail(r,
               "flow %d circuit %u: %" PRIu64
               " fragments never arrived on a circuit that stayed open",
               i, g, gr->sent - gr->delivered);
        }
        lost += gr->sent - gr->delivered;
      }
    }
  }
  if (!r->failed && (sent != r->o->fragments || delivered != r->delivered ||
                     delivered + lost != sent)) {
    fail(r,
         "accounting: %" PRIu64 " sent of %lu, %" PRIu64 " delivered + %" PRIu64
         " lost",
         sent, r->o->fragments, delivered, lost);
  }
  if (!r->failed && r->profile == P_NONE && lost) {
    fail(r, "%" PRIu64 " fragments lost with no fault injected", lost);
  }
  return lost;
}

/* ---- one run ------------------------------------------------------------- */

static void observe(void *user, const ckt_sim_event *ev) {
  static const char *const kinds[] = {"?", "datagram", "timer", "post", "call"};
  (void)user;
  printf("EV t=%" PRIu64 " %s host=%d", ev->time_ns,
         kinds[ev->kind >= 1 && ev->kind <= 4 ? ev->kind : 0], ev->host);
  if (ev->kind == CKT_SIM_EV_DATAGRAM) {
    printf(" from=%d len=%zu", ev->from_host, ev->len);
  }
  putchar('\n');
}

static double now_s(clockid_t clk) {
  struct timespec ts;
  clock_gettime(clk, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct result {
  int ok;
  uint64_t trace, delivered, lost;
  double sim_s, wall_s;
  char why[512];
} result;

static void setup_flows(run *r) {
  int n = r->nnodes, k = 0;
  uint64_t per, extra;
  r->nflows = n * (n - 1);
  r->flows = calloc((size_t)r->nflows, sizeof(*r->flows));
  if (!r->flows) {
    return;
  }
  per = r->o->fragments / (uint64_t)r->nflows;
  extra = r->o->fragments % (uint64_t)r->nflows;
  for (int a = 0; a < n; a++) {
    for (int b = 0; b < n; b++) {
      if (a != b) {
        flow *f = &r->flows[k];
        f->r = r;
        f->from = a;
        f->to = b;
        f->total = per + ((uint64_t)k < extra);
        k++;
      }
    }
  }
}

static void teardown(run *r) {
  r->tearing_down = 1;
  for (int i = 0; r->nodes && i < r->nnodes; i++) {
    if (r->nodes[i].n) {
      ckt_node_free(r->nodes[i].n);
      r->nodes[i].n = NULL;
    }
  }
  for (int i = 0; r->flows && i < r->nflows; i++) {
    free(r->flows[i].gens);
  }
  for (size_t i = 0; i < r->ncalls_ctx; i++) {
    free(r->calls_ctx[i]);
  }
  free(r->calls_ctx);
  free(r->flows);
  free(r->nodes);
  ckt_sim_free(r->sim);
}

static uint64_t parse_seconds(const char *s, uint64_t def) {
  char *end;
  double v;
  if (!s) {
    return def;
  }
  v = strtod(s, &end);
  if (*end || v < 0 || v > 1e7) {
    cmd_usage_error("simrun", "'%s' is not a number of seconds.", s);
  }
  return (uint64_t)(v * 1e9);
}

static int run_one(const opts *o, uint64_t seed, int profile, result *res) {
  run r;
  double w0 = now_s(CLOCK_MONOTONIC);
  int rv;

  memset(&r, 0, sizeof(r));
  memset(res, 0, sizeof(*res));
  r.o = o;
  r.seed = seed;
  r.profile = profile;
  r.nnodes = (int)o->nodes;
  if ((rv = ckt_sim_new(seed, NULL, &r.sim)) != CKT_OK) {
    snprintf(res->why, sizeof(res->why), "cannot make the simulation: %s",
             ckt_strerror(rv));
    return rv;
  }
  set_profile(&r);
  ckt_sim_add_invariant(r.sim, no_more_than_sent, &r);
  ckt_sim_link_set_all(r.sim, &r.fc.link);
  r.span_ns = profile == P_NONE ? 0 : parse_seconds(o->span_s, 20 * CKT_SIM_S);
  r.spread_ns = parse_seconds(o->spread_s, profile == P_NONE ? 0 : r.span_ns);
  r.deadline_ns =
      (r.span_ns > r.spread_ns ? r.span_ns : r.spread_ns) + SETTLE_NS;
  /* Calls while the fragments go and faults happen (at least 1 s). */
  r.calls_until_ns = r.span_ns > r.spread_ns ? r.span_ns : r.spread_ns;
  if (r.calls_until_ns < CKT_SIM_S) {
    r.calls_until_ns = CKT_SIM_S;
  }
  /* A long, idle-dominated run stays idle: its rounds spread out. */
  r.call_every_ns = r.calls_until_ns / CALL_ROUNDS > CALL_EVERY_NS
                        ? r.calls_until_ns / CALL_ROUNDS
                        : CALL_EVERY_NS;
  r.cap_calls_ctx =
      (size_t)(r.calls_until_ns / r.call_every_ns + 1) * (size_t)r.nnodes;
  r.calls_ctx = calloc(r.cap_calls_ctx, sizeof(*r.calls_ctx));
  if (!r.calls_ctx) {
    fail(&r, "out of memory");
  }
  if (o->events) {
    ckt_sim_set_observer(r.sim, observe, NULL);
  }
  r.nodes = calloc((size_t)r.nnodes, sizeof(*r.nodes));
  setup_flows(&r);
  if (!r.nodes || !r.flows) {
    fail(&r, "out of memory");
  }
  for (int i = 0; i < r.nnodes && !r.failed; i++) {
    simnode *sn = &r.nodes[i];
    sn->r = &r;
    sn->idx = i;
    if (ckt_sim_host_new(r.sim, &sn->host) != CKT_OK) {
      fail(&r, "cannot add host %d", i);
      break;
    }
    snprintf(sn->addr, sizeof(sn->addr), "%s:%d", ckt_sim_host_ip(sn->host),
             PORT);
    if (r.fc.skew) {
      ckt_sim_host_set_skew(sn->host,
                            (int64_t)rand_range(&r, 0, 10 * CKT_SIM_S) -
                                (int64_t)(5 * CKT_SIM_S));
    }
    node_up(&r, sn);
  }
  for (int i = 0; i < r.nflows && !r.failed; i++) {
    open_circuit(&r, &r.flows[i]);
  }
  if (!r.failed) {
    tick_cb(r.sim, &r);
    ckt_sim_at(r.sim, CHECK_NS, check_cb, &r);
    ckt_sim_at(r.sim, 0, call_cb, &r);
    if (r.fc.partitions || r.fc.isolations || r.fc.restarts ||
        r.fc.flaky_hosts) {
      ckt_sim_at(r.sim, rand_range(&r, r.fc.min_gap_ns, r.fc.max_gap_ns),
                 fault_cb, &r);
    }
    while (!r.failed && !r.finished) {
      uint64_t ran = ckt_sim_run(r.sim, r.deadline_ns + CKT_SIM_S);
      if (ckt_sim_failure(r.sim)) {
        r.failed = 1; /* an invariant, or a check in a callback */
      } else if (ran == 0 && !r.finished) {
        fail(&r, "nothing left to run but the work is not done");
      }
    }
  }
  res->lost = account(&r);
  res->ok = !r.failed;
  res->trace = ckt_sim_trace(r.sim);
  res->delivered = r.delivered;
  res->sim_s = sim_seconds(&r);
  snprintf(res->why, sizeof(res->why), "%s",
           r.failed ? ckt_sim_failure(r.sim) : "");
  if (o->verbose || (!o->quiet && !o->swarm)) {
    ckt_sim_stats st;
    ckt_sim_get_stats(r.sim, &st);
    printf("sim: events=%" PRIu64 " datagrams=%" PRIu64 " delivered=%" PRIu64
           " dropped(loss=%" PRIu64 " cut=%" PRIu64 " fault=%" PRIu64
           " down=%" PRIu64 " queue=%" PRIu64 ") dup=%" PRIu64
           " reordered=%" PRIu64 " circuits_closed=%" PRIu64 " faults=%" PRIu64
           " restarts=%" PRIu64 " lost=%" PRIu64 " calls=%" PRIu64
           " calls_ok=%" PRIu64 "\n",
           st.events, st.datagrams_sent, st.datagrams_delivered,
           st.dropped_loss, st.dropped_partition, st.dropped_fault,
           st.dropped_down, st.dropped_queue, st.duplicated, st.reordered,
           r.closes, r.faults_injected, r.restarts_done, res->lost, r.calls,
           r.calls_ok);
  }
  teardown(&r);
  res->wall_s = now_s(CLOCK_MONOTONIC) - w0;
  return CKT_OK;
}

static void print_replay(const opts *o, uint64_t seed, int profile) {
  printf("replay: simrun --nodes %lu --fragments %lu --payload %lu --seed "
         "%" PRIu64 " --faults %s",
         o->nodes, o->fragments, o->payload, seed, profile_names[profile]);
  if (o->span_s) {
    printf(" --span %s", o->span_s);
  }
  if (o->spread_s) {
    printf(" --spread %s", o->spread_s);
  }
  if (o->sabotage) {
    printf(" --sabotage %lu", o->sabotage);
  }
  if (o->twice) {
    printf(" --twice");
  }
  printf("\n");
}

static int single(const opts *o, int profile) {
  result res, again;
  if (run_one(o, o->seed, profile, &res) != CKT_OK) {
    fprintf(stderr, "simrun: %s\n", res.why);
    return CMD_EXIT_FAIL;
  }
  if (res.ok && o->twice) {
    run_one(o, o->seed, profile, &again);
    if (again.trace != res.trace || again.delivered != res.delivered) {
      res.ok = 0;
      snprintf(res.why, sizeof(res.why),
               "not deterministic: trace %016" PRIx64 " then %016" PRIx64,
               res.trace, again.trace);
    }
  }
  if (!res.ok) {
    printf("FAIL seed=%lu: %s\n", o->seed, res.why);
    print_replay(o, o->seed, profile);
  }
  printf("SIM seed=%lu nodes=%lu fragments=%lu delivered=%" PRIu64
         " trace=%016" PRIx64 " sim_s=%.3f wall_s=%.3f\n",
         o->seed, o->nodes, o->fragments, res.delivered, res.trace, res.sim_s,
         res.wall_s);
  return res.ok ? 0 : CMD_EXIT_FAIL;
}

static int swarm(const opts *o, int profile) {
  double c0 = now_s(CLOCK_PROCESS_CPUTIME_ID), w0 = now_s(CLOCK_MONOTONIC);
  unsigned long failed = 0;
  double cpu;
  for (unsigned long k = 0; k < o->swarm; k++) {
    uint64_t seed = o->seed + k;
    result res, again;
    if (run_one(o, seed, profile, &res) != CKT_OK) {
      fprintf(stderr, "simrun: %s\n", res.why);
      return CMD_EXIT_FAIL;
    }
    if (res.ok && o->twice) {
      run_one(o, seed, profile, &again);
      if (again.trace != res.trace) {
        res.ok = 0;
        snprintf(res.why, sizeof(res.why),
                 "not deterministic: trace %016" PRIx64 " then %016" PRIx64,
                 res.trace, again.trace);
      }
    }
    if (!res.ok) {
      failed++;
      printf("FAIL seed=%" PRIu64 ": %s\n", seed, res.why);
      print_replay(o, seed, profile);
      fflush(stdout);
    }
  }
  cpu = now_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
  printf("SWARM seeds=%lu failed=%lu faults=%s nodes=%lu fragments=%lu "
         "cpu_s=%.3f wall_s=%.3f seeds_per_cpu_min=%.0f\n",
         o->swarm, failed, profile_names[profile], o->nodes, o->fragments, cpu,
         now_s(CLOCK_MONOTONIC) - w0,
         cpu > 0 ? (double)o->swarm * (o->twice ? 2 : 1) * 60.0 / cpu : 0.0);
  return failed ? CMD_EXIT_FAIL : 0;
}

int main(int argc, char **argv) {
  opts o;
  int profile = -1;
  memset(&o, 0, sizeof(o));
  o.nodes = 3;
  o.fragments = 10000;
  o.payload = 64;
  o.seed = 1;
  {
    const cmd_flag flags[] = {
        {"nodes", CMD_UINT, &o.nodes, 2, 64, "N",
         "simulated nodes (default 3); each sends to every other"},
        {"fragments", CMD_UINT, &o.fragments, 0, 1000000000ul, "M",
         "fragments to send in all (default 10000)"},
        {"payload", CMD_UINT, &o.payload, HDR_LEN, 65536, "BYTES",
         "payload of each fragment (default 64)"},
        {"seed", CMD_UINT, &o.seed, 0, ULONG_MAX, "S",
         "the scenario's seed (default 1); with --swarm, the first"},
        {"faults", CMD_STRING, &o.faults, 0, 0, "PROFILE",
         "none (default), flaky (loss, duplication, reordering,\n"
         "jitter), partition (cuts that heal), chaos (everything,\n"
         "node restarts included) or random (drawn from the seed)"},
        {"span", CMD_STRING, &o.span_s, 0, 0, "SECONDS",
         "virtual seconds during which faults happen (default 20)"},
        {"spread", CMD_STRING, &o.spread_s, 0, 0, "SECONDS",
         "send the fragments evenly over this many virtual seconds\n"
         "(default: at once with no faults, else over the span)"},
        {"swarm", CMD_UINT, &o.swarm, 0, 100000000ul, "K",
         "run K seeds (--seed, --seed+1, ...) and print the replay\n"
         "command of each that fails (default faults: random)"},
        {"twice", CMD_BOOL, &o.twice, 0, 0, NULL,
         "run each seed twice and fail unless the traces match"},
        {"sabotage", CMD_UINT, &o.sabotage, 0, ULONG_MAX, "N",
         "(tests the checks) receivers ignore the N-th fragment\n"
         "they get, so the run must fail"},
        {"events", CMD_BOOL, &o.events, 0, 0, NULL,
         "print every event (EV lines: time, kind, host)"},
        {"v", CMD_BOOL, &o.verbose, 0, 0, NULL,
         "log faults, closed circuits and the nodes' messages"},
        {"q", CMD_BOOL, &o.quiet, 0, 0, NULL, "print only the SIM line"},
    };
    const cmd_spec spec = {
        "simrun",
        "[options]",
        "Runs ckt's real QUIC, TLS, peer and circuit code on the\n"
        "deterministic simulator: every node sends fragments to every other\n"
        "over circuits, and every fragment must arrive exactly once and in\n"
        "order, or be lost with a circuit a fault closed.  The same seed\n"
        "always gives the same trace.",
        flags,
        sizeof(flags) / sizeof(flags[0]),
        "Prints, last: SIM seed=S nodes=N fragments=M delivered=D "
        "trace=<16 hex>\nsim_s=F wall_s=F.  Exit status 1 when a check "
        "fails (the replay\ncommand is printed), 2 for bad usage.  See "
        "docs/dst.md."};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("simrun", "unexpected argument '%s'.", argv[first]);
    }
  }
  if (!o.faults) {
    o.faults = o.swarm ? "random" : "none";
  }
  for (int i = 0; i < (int)(sizeof(profile_names) / sizeof(profile_names[0]));
       i++) {
    if (strcmp(o.faults, profile_names[i]) == 0) {
      profile = i;
    }
  }
  if (profile < 0) {
    cmd_usage_error("simrun",
                    "unknown fault profile '%s' (none, flaky, partition, "
                    "chaos, random).",
                    o.faults);
  }
  return o.swarm ? swarm(&o, profile) : single(&o, profile);
}
