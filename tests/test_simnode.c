/*
 * test_simnode.c — real ckt nodes on the deterministic simulator, through
 * the public API only: replay from a seed, and how peers and circuits
 * behave under partitions, connection loss, crashes and clock skew.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckt/ckt.h"

#define PORT 7100
#define NMAX 4

typedef struct side {
  struct world *w;
  int idx;
  uint64_t got;            /* data fragments received */
  uint64_t next_seq[NMAX]; /* per sender: the sequence due next */
  int misordered;
  int closed, closed_remote;
  char reason[256];
  ckt_circuit *accepted[16]; /* the first circuits remote peers opened */
  int naccepted;
} side;

typedef struct world {
  ckt_sim *sim;
  int n;
  ckt_sim_host *h[NMAX];
  ckt_node *node[NMAX];
  ckt_peer *peer[NMAX];
  side s[NMAX];
  char addr[NMAX][64];
  uint32_t idle_ms;
  int quiet_logs;
} world;

static int on_new(ckt_peer *p, ckt_circuit *c, const ckt_fragment *open,
                  void *user) {
  side *sd = user;
  (void)p;
  (void)open;
  ckt_circuit_set_user(c, user);
  if (sd->naccepted < 16) {
    sd->accepted[sd->naccepted++] = c;
  }
  return 0;
}

static void on_fragment(ckt_peer *p, ckt_circuit *c, const ckt_fragment *f,
                        void *user) {
  side *sd = user;
  (void)p;
  (void)c;
  /* part = sender << 32 | sequence */
  uint64_t from = (uint64_t)f->part >> 32, seq = (uint64_t)f->part & 0xffffffff;
  if (from >= NMAX || seq != sd->next_seq[from]) {
    sd->misordered++;
  } else {
    sd->next_seq[from] = seq + 1;
  }
  sd->got++;
}

static void on_closed(ckt_peer *p, ckt_circuit *c, const char *reason,
                      int remote, void *user) {
  side *sd = user;
  (void)p;
  (void)c;
  sd->closed++;
  sd->closed_remote += remote;
  snprintf(sd->reason, sizeof(sd->reason), "%s", reason ? reason : "");
}

/* SIMNODE_LOG=1 shows the nodes' log lines when a test needs looking at. */
static void quiet_log(void *user, const char *line) {
  (void)user;
  if (getenv("SIMNODE_LOG")) {
    fprintf(stderr, "log: %s\n", line);
  }
}

static void node_start(world *w, int i) {
  static const ckt_peer_service svc = {
      .circuit_new = on_new,
      .fragment = on_fragment,
      .circuit_closed = on_closed,
  };
  ckt_node_config cfg;
  ckt_node_config_init(&cfg);
  cfg.serve = 1;
  cfg.idle_timeout_ms = w->idle_ms;
  cfg.handshake_timeout_ms = 2000;
  cfg.log = quiet_log;
  cr_assert_eq(ckt_sim_node_new(w->h[i], PORT, &cfg, &w->node[i]), CKT_OK);
  cr_assert_eq(ckt_node_register_peer_service(w->node[i], "t", &svc, &w->s[i]),
               CKT_OK);
  cr_assert_eq(ckt_node_start_peer(w->node[i], "t", &w->peer[i]), CKT_OK);
}

static void world_init(world *w, uint64_t seed, int n, const ckt_sim_link *link,
                       uint32_t idle_ms) {
  memset(w, 0, sizeof(*w));
  w->n = n;
  w->idle_ms = idle_ms;
  cr_assert_eq(ckt_sim_new(seed, link, &w->sim), CKT_OK);
  for (int i = 0; i < n; i++) {
    w->s[i].w = w;
    w->s[i].idx = i;
    cr_assert_eq(ckt_sim_host_new(w->sim, &w->h[i]), CKT_OK);
    snprintf(w->addr[i], sizeof(w->addr[i]), "%s:%d", ckt_sim_host_ip(w->h[i]),
             PORT);
    node_start(w, i);
  }
}

static void world_free(world *w) {
  for (int i = 0; i < w->n; i++) {
    ckt_node_free(w->node[i]);
  }
  ckt_sim_free(w->sim);
}

static ckt_fragment *frag(int from, uint64_t seq) {
  ckt_fragment *f = ckt_fragment_new();
  uint8_t body[100];
  cr_assert_not_null(f);
  memset(body, (int)(seq & 0xff), sizeof(body));
  f->type = CKT_FRAG_DATA;
  f->part = (int64_t)(((uint64_t)from << 32) | seq);
  cr_assert_eq(ckt_fragment_set_payload(f, body, sizeof(body)), CKT_OK);
  return f;
}

static ckt_circuit *open_to(world *w, int from, int to) {
  ckt_circuit *c = NULL;
  cr_assert_eq(ckt_peer_open_circuit_extant(w->peer[from], w->addr[to], "t",
                                            "c", NULL, &w->s[from], &c),
               CKT_OK);
  return c;
}

/* Sends n fragments on c, an opener's circuit of node `from`. */
static void send_n(ckt_circuit *c, uint64_t first, uint64_t n) {
  side *sd = ckt_circuit_user(c);
  for (uint64_t i = 0; i < n; i++) {
    cr_assert_eq(ckt_circuit_send(c, frag(sd->idx, first + i)), CKT_OK);
  }
}

static uint64_t run_for(world *w, uint64_t ns) {
  return ckt_sim_run(w->sim, ckt_sim_now(w->sim) + ns);
}

/* Three nodes on a lossy, duplicating, reordering network: every node
 * opens a circuit to every other and sends 40 fragments. */
static uint64_t scenario(uint64_t seed, uint64_t *delivered) {
  ckt_sim_link l = {.latency_ns = 3 * CKT_SIM_MS,
                    .jitter_ns = 2 * CKT_SIM_MS,
                    .loss_ppm = 20000,
                    .dup_ppm = 10000,
                    .reorder_ppm = 30000,
                    .reorder_ns = 10 * CKT_SIM_MS};
  world w;
  uint64_t trace;
  world_init(&w, seed, 3, &l, 5000);
  for (int a = 0; a < 3; a++) {
    for (int b = 0; b < 3; b++) {
      if (a != b) {
        send_n(open_to(&w, a, b), 0, 40);
      }
    }
  }
  run_for(&w, 4 * CKT_SIM_S);
  *delivered = 0;
  for (int i = 0; i < 3; i++) {
    *delivered += w.s[i].got;
    cr_assert_eq(w.s[i].misordered, 0, "node %d got fragments out of order", i);
  }
  trace = ckt_sim_trace(w.sim);
  world_free(&w);
  return trace;
}

Test(simnode, same_seed_same_trace) {
  for (uint64_t seed = 1; seed <= 24; seed++) {
    uint64_t d1, d2;
    uint64_t t1 = scenario(seed, &d1), t2 = scenario(seed, &d2);
    cr_assert_eq(t1, t2,
                 "seed %" PRIu64 ": trace %016" PRIx64 " then %016" PRIx64,
                 seed, t1, t2);
    /* Each node receives 40 from each of the two others (exactly once). */
    cr_assert_eq(d1, 240, "seed %" PRIu64 ": %" PRIu64 " delivered", seed, d1);
    cr_assert_eq(d2, d1);
  }
}

Test(simnode, different_seeds_different_traces) {
  uint64_t t[12], d;
  for (int i = 0; i < 12; i++) {
    t[i] = scenario(1000 + (uint64_t)i, &d);
    for (int j = 0; j < i; j++) {
      cr_assert_neq(t[i], t[j], "seeds %d and %d share a trace", 1000 + i,
                    1000 + j);
    }
  }
}

Test(simnode, partition_shorter_than_idle_timeout_loses_nothing) {
  world w;
  ckt_circuit *c;
  world_init(&w, 7, 2, NULL, 5000);
  c = open_to(&w, 0, 1);
  send_n(c, 0, 10);
  run_for(&w, 1 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 10);
  ckt_sim_partition(w.sim, w.h[0], w.h[1], 0);
  send_n(c, 10, 10);
  run_for(&w, 3 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 10, "nothing crosses a partition");
  ckt_sim_heal(w.sim, w.h[0], w.h[1]);
  run_for(&w, 5 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 20);
  cr_assert_eq(w.s[1].misordered, 0);
  cr_assert_eq(w.s[0].closed + w.s[1].closed, 0, "a circuit closed: %s%s",
               w.s[0].reason, w.s[1].reason);
  world_free(&w);
}

Test(simnode, one_way_partition_heals) {
  world w;
  ckt_circuit *c;
  world_init(&w, 8, 2, NULL, 5000);
  c = open_to(&w, 0, 1);
  send_n(c, 0, 5);
  run_for(&w, 1 * CKT_SIM_S);
  ckt_sim_partition(w.sim, w.h[0], w.h[1], 1); /* 0 -> 1 only */
  send_n(c, 5, 5);
  run_for(&w, 2 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 5);
  ckt_sim_heal(w.sim, w.h[0], w.h[1]);
  run_for(&w, 3 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 10);
  cr_assert_eq(w.s[0].closed + w.s[1].closed, 0);
  world_free(&w);
}

Test(simnode, connection_loss_closes_circuits_on_both_sides) {
  world w;
  ckt_node_stats st;
  world_init(&w, 9, 2, NULL, 2000);
  send_n(open_to(&w, 0, 1), 0, 3);
  run_for(&w, 1 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 3);
  ckt_sim_partition(w.sim, w.h[0], w.h[1], 0);
  run_for(&w, 10 * CKT_SIM_S);
  cr_assert_eq(w.s[0].closed, 1, "the opener's circuit closed");
  cr_assert_eq(w.s[1].closed, 1, "the acceptor's circuit closed");
  cr_assert(strstr(w.s[0].reason, "connection lost") != NULL, "reason: %s",
            w.s[0].reason);
  cr_assert(strstr(w.s[1].reason, "connection lost") != NULL, "reason: %s",
            w.s[1].reason);
  ckt_node_get_stats(w.node[0], &st);
  cr_assert_eq(st.connections_open, 0);
  world_free(&w);
}

Test(simnode, crash_and_restart_is_noticed_before_the_idle_timeout) {
  world w;
  ckt_circuit *c;
  uint64_t t0;
  world_init(&w, 10, 2, NULL, 30000);
  c = open_to(&w, 0, 1);
  send_n(c, 0, 3);
  run_for(&w, 1 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 3);
  /* Node 1 crashes: its goodbyes are lost, then it comes back. */
  ckt_sim_host_down(w.h[1]);
  ckt_node_free(w.node[1]);
  w.node[1] = NULL;
  run_for(&w, 1 * CKT_SIM_S);
  ckt_sim_host_up(w.h[1]);
  memset(&w.s[1], 0, sizeof(w.s[1]));
  w.s[1].w = &w;
  w.s[1].idx = 1;
  node_start(&w, 1);
  cr_assert_eq(w.s[0].closed, 0, "node 0 cannot know yet");
  t0 = ckt_sim_now(w.sim);
  send_n(c, 3, 1);
  while (!w.s[0].closed && ckt_sim_now(w.sim) - t0 < 10 * CKT_SIM_S) {
    run_for(&w, 10 * CKT_SIM_MS);
  }
  cr_assert_eq(w.s[0].closed, 1, "the stale circuit closed");
  cr_assert_lt(ckt_sim_now(w.sim) - t0, 2 * CKT_SIM_S,
               "a stateless reset, not the 30 s idle timeout, ended it");
  /* A new circuit reaches the restarted node's new peer. */
  send_n(open_to(&w, 0, 1), 0, 4);
  run_for(&w, 1 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 4);
  world_free(&w);
}

typedef struct call_box {
  int done, err;
  int64_t created_seen;
  char why[200];
} call_box;

static int handler(ckt_node *n, const ckt_message *req, ckt_message *reply,
                   void *user) {
  call_box *b = user;
  (void)n;
  b->created_seen = req->created_ns;
  return ckt_message_set_payload(reply, req->payload, req->payload_len);
}

static void call_done(ckt_node *n, int err, const ckt_message *reply,
                      void *user) {
  call_box *b = user;
  (void)n;
  b->done = 1;
  b->err = err;
  snprintf(b->why, sizeof(b->why), "%s", reply->err ? reply->err : "");
}

static void call(world *w, call_box *b) {
  ckt_message *m = ckt_message_new();
  cr_assert_not_null(m);
  ckt_message_set_service(m, "echo");
  ckt_message_set_payload(m, "hi", 2);
  cr_assert_eq(
      ckt_node_call_async(w->node[0], w->addr[1], m, 2000, call_done, b),
      CKT_OK);
  run_for(w, 3 * CKT_SIM_S);
  cr_assert(b->done);
}

Test(simnode, calls_see_skewed_wall_clocks) {
  world w;
  call_box b;
  memset(&b, 0, sizeof(b));
  world_init(&w, 11, 2, NULL, 5000);
  cr_assert_eq(ckt_node_register_call(w.node[1], "echo", handler, &b), CKT_OK);
  ckt_sim_host_set_skew(w.h[0], 5 * (int64_t)CKT_SIM_S);
  call(&w, &b);
  cr_assert_eq(b.err, CKT_OK, "%s", b.why);
  /* The caller stamped the request with its own (skewed) wall clock. */
  cr_assert_geq(b.created_seen, CKT_SIM_WALL_EPOCH + 5 * (int64_t)CKT_SIM_S);
  cr_assert_lt(b.created_seen, CKT_SIM_WALL_EPOCH + 6 * (int64_t)CKT_SIM_S);
  /* A server whose clock runs 10 s ahead sees a 2 s deadline as passed. */
  memset(&b, 0, sizeof(b));
  ckt_sim_host_set_skew(w.h[0], 0);
  ckt_sim_host_set_skew(w.h[1], 10 * (int64_t)CKT_SIM_S);
  call(&w, &b);
  cr_assert_eq(b.err, CKT_ERR_TIMEOUT, "err %d: %s", b.err, b.why);
  cr_assert(strstr(b.why, "deadline") != NULL, "%s", b.why);
  world_free(&w);
}

Test(simnode, simulated_nodes_have_no_threads) {
  world w;
  ckt_tpeer *tp = NULL;
  world_init(&w, 12, 2, NULL, 5000);
  cr_assert_eq(ckt_node_start(w.node[0]), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_tpeer_start(w.node[0], "x", &tp), CKT_ERR_INVALID_ARGUMENT);
  /* Names would go to the resolver, out of the simulation. */
  cr_assert_eq(ckt_peer_open_circuit_extant(w.peer[0], "localhost:7100", "t",
                                            "c", NULL, NULL,
                                            &(ckt_circuit *){0}),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(
      ckt_sim_node_new(w.h[0], PORT, &(ckt_node_config){0}, &w.node[2]),
      CKT_ERR_INVALID_ARGUMENT, "one node per host");
  world_free(&w);
}

Test(simnode, idle_connections_cost_little) {
  world w;
  ckt_node_stats st;
  uint64_t events;
  world_init(&w, 13, 2, NULL, 30000);
  send_n(open_to(&w, 0, 1), 0, 1);
  run_for(&w, 1 * CKT_SIM_S);
  /* An hour of keepalives on an idle connection: it stays up, and the
   * simulation skips the silence between them. */
  events = run_for(&w, 3600 * CKT_SIM_S);
  ckt_node_get_stats(w.node[0], &st);
  cr_assert_eq(st.connections_open, 1);
  cr_assert_eq(w.s[0].closed + w.s[1].closed, 0);
  cr_assert_lt(events, 40000, "%" PRIu64 " events for an idle hour", events);
  world_free(&w);
}

static const char *at_most_five(ckt_sim *s, void *user) {
  const side *sd = user;
  (void)s;
  return sd->got > 5 ? "node 1 got more than 5 fragments" : NULL;
}

Test(simnode, a_failed_invariant_stops_the_run) {
  world w;
  uint64_t t_fail;
  world_init(&w, 14, 2, NULL, 5000);
  cr_assert_eq(ckt_sim_add_invariant(w.sim, at_most_five, &w.s[1]), CKT_OK);
  send_n(open_to(&w, 0, 1), 0, 200);
  run_for(&w, 5 * CKT_SIM_S);
  cr_assert_not_null(ckt_sim_failure(w.sim));
  cr_assert_str_eq(ckt_sim_failure(w.sim),
                   "invariant: node 1 got more than 5 fragments");
  /* It stopped right after the event that broke it, not 5 s later. */
  cr_assert_gt(w.s[1].got, 5);
  cr_assert_lt(w.s[1].got, 200);
  t_fail = ckt_sim_now(w.sim);
  cr_assert_lt(t_fail, 1 * CKT_SIM_S);
  /* A failed simulation runs nothing more, and keeps the first reason. */
  cr_assert_eq(run_for(&w, 5 * CKT_SIM_S), 0);
  cr_assert_eq(ckt_sim_now(w.sim), t_fail);
  ckt_sim_fail(w.sim, "a second reason");
  cr_assert_str_eq(ckt_sim_failure(w.sim),
                   "invariant: node 1 got more than 5 fragments");
  world_free(&w);
}

Test(simnode, graceful_shutdown_tells_the_other_side_at_once) {
  world w;
  world_init(&w, 15, 2, NULL, 30000);
  send_n(open_to(&w, 0, 1), 0, 3);
  run_for(&w, 1 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 3);
  ckt_node_stop(w.node[1]); /* completes as the simulation runs */
  run_for(&w, 1 * CKT_SIM_S);
  cr_assert_eq(w.s[0].closed, 1, "node 0 heard of the stop");
  cr_assert_eq(w.s[0].closed_remote, 1);
  cr_assert(strstr(w.s[0].reason, "peer stopped") != NULL, "reason: %s",
            w.s[0].reason);
  ckt_node_free(w.node[1]);
  w.node[1] = NULL;
  /* The same host runs a new node, and node 0 reaches it. */
  memset(&w.s[1], 0, sizeof(w.s[1]));
  w.s[1].w = &w;
  w.s[1].idx = 1;
  node_start(&w, 1);
  send_n(open_to(&w, 0, 1), 0, 2);
  run_for(&w, 1 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 2);
  world_free(&w);
}

/* A world whose nodes take extra limits. */
static void world_init_cfg(world *w, uint64_t seed, int n,
                           void (*tune)(ckt_node_config *cfg)) {
  static const ckt_peer_service svc = {
      .circuit_new = on_new,
      .fragment = on_fragment,
      .circuit_closed = on_closed,
  };
  memset(w, 0, sizeof(*w));
  w->n = n;
  w->idle_ms = 5000;
  cr_assert_eq(ckt_sim_new(seed, NULL, &w->sim), CKT_OK);
  for (int i = 0; i < n; i++) {
    ckt_node_config cfg;
    ckt_node_config_init(&cfg);
    cfg.serve = 1;
    cfg.idle_timeout_ms = w->idle_ms;
    cfg.log = quiet_log;
    tune(&cfg);
    w->s[i].w = w;
    w->s[i].idx = i;
    cr_assert_eq(ckt_sim_host_new(w->sim, &w->h[i]), CKT_OK);
    snprintf(w->addr[i], sizeof(w->addr[i]), "%s:%d", ckt_sim_host_ip(w->h[i]),
             PORT);
    cr_assert_eq(ckt_sim_node_new(w->h[i], PORT, &cfg, &w->node[i]), CKT_OK);
    cr_assert_eq(
        ckt_node_register_peer_service(w->node[i], "t", &svc, &w->s[i]),
        CKT_OK);
    cr_assert_eq(ckt_node_start_peer(w->node[i], "t", &w->peer[i]), CKT_OK);
  }
}

static void small_circuit_queue(ckt_node_config *cfg) {
  cfg->max_queued_per_circuit = 16 * 1024;
}

static void few_circuits(ckt_node_config *cfg) {
  cfg->max_circuits_per_connection = 4;
}

static int sends_until_again(ckt_circuit *c) {
  side *sd = ckt_circuit_user(c);
  int n = 0;
  while (n < 100000) {
    ckt_fragment *f = frag(sd->idx, (uint64_t)n);
    uint8_t body[1000];
    memset(body, 1, sizeof(body));
    cr_assert_eq(ckt_fragment_set_payload(f, body, sizeof(body)), CKT_OK);
    int rv = ckt_circuit_send(c, f);
    if (rv == CKT_ERR_AGAIN) {
      return n;
    }
    cr_assert_eq(rv, CKT_OK);
    n++;
  }
  return n;
}

Test(simnode, the_circuit_queue_limit_is_configurable) {
  world w;
  int def, small;
  world_init(&w, 16, 2, NULL, 5000);
  def = sends_until_again(open_to(&w, 0, 1));
  world_free(&w);
  world_init_cfg(&w, 16, 2, small_circuit_queue);
  small = sends_until_again(open_to(&w, 0, 1));
  /* Each fragment is a little over 1,000 bytes framed. */
  cr_assert(def >= 900 && def <= (int)(CKT_CIRCUIT_QUEUE_MAX / 1000),
            "default: %d", def);
  cr_assert(small >= 10 && small <= 16, "16 KiB: %d", small);
  world_free(&w);
}

Test(simnode, a_connection_carries_at_most_the_configured_circuits_at_once) {
  world w;
  ckt_circuit *c[10];
  world_init_cfg(&w, 17, 2, few_circuits);
  /* Node 1 lets a peer have 4 streams open at once: of 10 circuits node 0
   * opens, each with a first fragment, 4 reach it; the others wait for
   * streams to come free (none is refused). */
  for (int i = 0; i < 10; i++) {
    c[i] = open_to(&w, 0, 1);
    send_n(c[i], 0, 1);
  }
  run_for(&w, 1 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 4);
  cr_assert_eq(w.s[0].closed, 0);
  cr_assert_eq(w.s[1].naccepted, 4);
  /* Node 1 closes two of them: their streams come free, two more go. */
  ckt_circuit_close(w.s[1].accepted[0], NULL);
  ckt_circuit_close(w.s[1].accepted[1], NULL);
  run_for(&w, 1 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 6, "got %lu", (unsigned long)w.s[1].got);
  cr_assert_eq(w.s[0].closed, 2);
  world_free(&w);
}

static char psk_path[64];

static void with_psk(ckt_node_config *cfg) {
  cfg->psk_file = psk_path;
}

static uint64_t psk_run(uint64_t seed) {
  world w;
  uint64_t trace;
  world_init_cfg(&w, seed, 2, with_psk);
  send_n(open_to(&w, 0, 1), 0, 50);
  send_n(open_to(&w, 1, 0), 0, 20);
  run_for(&w, 2 * CKT_SIM_S);
  cr_assert_eq(w.s[1].got, 50);
  cr_assert_eq(w.s[0].got, 20);
  cr_assert_eq(w.s[0].misordered + w.s[1].misordered, 0);
  cr_assert_eq(w.s[0].closed + w.s[1].closed, 0);
  trace = ckt_sim_trace(w.sim);
  world_free(&w);
  return trace;
}

Test(simnode, circuits_run_sealed_under_a_psk_and_replay) {
  FILE *f;
  snprintf(psk_path, sizeof(psk_path), "/tmp/ckt-simnode-psk-%d", getpid());
  f = fopen(psk_path, "wb");
  cr_assert_not_null(f);
  cr_assert_eq(fwrite("0123456789abcdef0123456789abcdef", 1, 32, f), 32);
  fclose(f);
  cr_assert_eq(psk_run(21), psk_run(21), "the PSK layer draws from the seed");
  unlink(psk_path);
}

/* ---- streaming calls on a lossy network ---------------------------------- */

typedef struct stream_run {
  int up_next, up_total, up_again, up_done, up_err;
  int down_parts, down_bad, down_done, down_err;
  int served_parts, served_bad, cancel_why, cancel_done, cancel_err;
  ckt_call *up;
  ckt_srvcall *dl, *waiting;
  int dl_next;
} stream_run;

static stream_run *the_run;

static void fill8k(uint8_t *p, int k) {
  for (int i = 0; i < 8192; i++) {
    p[i] = (uint8_t)(k * 7 + i);
  }
}

static void up_send_more(stream_run *r) {
  uint8_t p[8192];
  while (r->up_next <= r->up_total) {
    ckt_message *m = ckt_message_new();
    int rv;
    fill8k(p, r->up_next);
    ckt_message_set_payload(m, p, sizeof(p));
    m->codec = (uint8_t)(CKT_CODEC_NONE + r->up_next % 3); /* none, fast, 1 */
    rv = ckt_call_send(r->up, m, r->up_next == r->up_total);
    if (rv == CKT_ERR_AGAIN) {
      ckt_message_free(m);
      r->up_again++;
      return;
    }
    cr_assert_eq(rv, CKT_OK);
    r->up_next++;
  }
}

static void up_writable(ckt_node *n, ckt_call *c, void *user) {
  (void)n, (void)c;
  up_send_more(user);
}

static void up_done(ckt_node *n, int err, const ckt_message *reply,
                    void *user) {
  stream_run *r = user;
  (void)n;
  r->up_done++;
  r->up_err = err;
  if (err != CKT_OK && getenv("SIMNODE_LOG")) {
    fprintf(stderr, "upload: %s\n", reply->err);
  }
}

static void up_serve(ckt_srvcall *sc, const ckt_message *part, int last,
                     void *user) {
  stream_run *r = user;
  uint8_t p[8192];
  if (part->stream_part > 0) {
    fill8k(p, (int)part->stream_part);
    if (part->stream_part != r->served_parts + 1 ||
        part->payload_len != sizeof(p) ||
        memcmp(part->payload, p, sizeof(p)) != 0) {
      r->served_bad++;
    }
    r->served_parts++;
  }
  if (last) {
    ckt_srvcall_reply(sc, NULL);
  }
}

static void dl_send_more(ckt_srvcall *sc, void *user) {
  stream_run *r = user;
  uint8_t p[8192];
  while (r->dl_next <= 300) {
    ckt_message *m = ckt_message_new();
    int rv;
    fill8k(p, r->dl_next);
    ckt_message_set_payload(m, p, sizeof(p));
    rv = ckt_srvcall_send(sc, m, r->dl_next == 300);
    if (rv == CKT_ERR_AGAIN) {
      ckt_message_free(m);
      return;
    }
    cr_assert_eq(rv, CKT_OK);
    r->dl_next++;
  }
  ckt_srvcall_reply(sc, NULL);
}

static void dl_serve(ckt_srvcall *sc, const ckt_message *req, void *user) {
  (void)req;
  ckt_srvcall_on_writable(sc, dl_send_more, user);
  dl_send_more(sc, user);
}

static void dl_part(ckt_node *n, ckt_call *c, const ckt_message *part,
                    void *user) {
  stream_run *r = user;
  uint8_t p[8192];
  (void)n, (void)c;
  r->down_parts++;
  fill8k(p, r->down_parts);
  if (part->stream_part != r->down_parts || part->payload_len != sizeof(p) ||
      memcmp(part->payload, p, sizeof(p)) != 0) {
    r->down_bad++;
  }
}

static void dl_done(ckt_node *n, int err, const ckt_message *reply,
                    void *user) {
  stream_run *r = user;
  (void)n, (void)reply;
  r->down_done++;
  r->down_err = err;
}

static void wait_cancelled(ckt_srvcall *sc, int why, void *user) {
  stream_run *r = user;
  r->cancel_why = why;
  ckt_srvcall_reply(sc, NULL);
}

static void wait_serve(ckt_srvcall *sc, const ckt_message *req, void *user) {
  (void)req;
  ckt_srvcall_on_cancel(sc, wait_cancelled, user);
}

static void cancel_done(ckt_node *n, int err, const ckt_message *reply,
                        void *user) {
  stream_run *r = user;
  (void)n, (void)reply;
  r->cancel_done++;
  r->cancel_err = err;
}

static ckt_call *cancel_me;

static ckt_message *named(const char *service) {
  ckt_message *m = ckt_message_new();
  cr_assert_eq(ckt_message_set_service(m, service), CKT_OK);
  return m;
}

static void cancel_now(ckt_sim *sim, void *arg) {
  (void)sim, (void)arg;
  cr_assert_eq(ckt_call_cancel(cancel_me), CKT_OK);
}

static uint64_t stream_scenario(uint64_t seed, stream_run *r) {
  ckt_sim_link l = {.latency_ns = 2 * CKT_SIM_MS,
                    .jitter_ns = 1 * CKT_SIM_MS,
                    .bandwidth_bps = 200ull * 1000 * 1000,
                    .queue_bytes = 256 * 1024,
                    .loss_ppm = 10000,
                    .dup_ppm = 5000,
                    .reorder_ppm = 20000,
                    .reorder_ns = 5 * CKT_SIM_MS};
  ckt_call_opts o;
  ckt_call *dl = NULL;
  world w;
  uint64_t trace;
  memset(r, 0, sizeof(*r));
  the_run = r;
  world_init(&w, seed, 2, &l, 5000);
  cr_assert_eq(ckt_node_register_upload(w.node[1], "up", up_serve, r), CKT_OK);
  cr_assert_eq(ckt_node_register_download(w.node[1], "down", dl_serve, r),
               CKT_OK);
  cr_assert_eq(ckt_node_register_async(w.node[1], "wait", wait_serve, r),
               CKT_OK);
  memset(&o, 0, sizeof(o));
  o.kind = CKT_CALL_UPLOAD;
  o.done = up_done;
  o.on_writable = up_writable;
  o.user = r;
  r->up_next = 1;
  r->up_total = 400; /* 3.2 MB: several times the 1 MiB queue */
  cr_assert_eq(
      ckt_node_call_start(w.node[0], w.addr[1], named("up"), &o, &r->up),
      CKT_OK);
  up_send_more(r);
  o.kind = CKT_CALL_DOWNLOAD;
  o.done = dl_done;
  o.on_part = dl_part;
  o.on_writable = NULL;
  r->dl_next = 1;
  cr_assert_eq(
      ckt_node_call_start(w.node[0], w.addr[1], named("down"), &o, &dl),
      CKT_OK);
  o.kind = CKT_CALL_UNARY;
  o.done = cancel_done;
  o.on_part = NULL;
  o.timeout_ms = 60000;
  cr_assert_eq(
      ckt_node_call_start(w.node[0], w.addr[1], named("wait"), &o, &cancel_me),
      CKT_OK);
  cr_assert_eq(
      ckt_sim_at(w.sim, ckt_sim_now(w.sim) + CKT_SIM_S, cancel_now, NULL),
      CKT_OK);
  run_for(&w, 30 * CKT_SIM_S);
  trace = ckt_sim_trace(w.sim);
  ckt_call_release(r->up);
  ckt_call_release(dl);
  ckt_call_release(cancel_me);
  world_free(&w);
  return trace;
}

Test(simnode, streaming_calls_survive_loss_and_replay) {
  for (uint64_t seed = 1; seed <= 4; seed++) {
    stream_run a, b;
    uint64_t t1 = stream_scenario(seed, &a), t2 = stream_scenario(seed, &b);
    cr_assert_eq(t1, t2, "seed %" PRIu64 ": traces differ", seed);
    cr_assert_eq(a.up_done, 1);
    cr_assert_eq(a.up_err, CKT_OK, "seed %" PRIu64 ": upload: %s", seed,
                 ckt_strerror(a.up_err));
    cr_assert_eq(a.served_parts, 400);
    cr_assert_eq(a.served_bad, 0);
    cr_assert_gt(a.up_again, 0, "the upload never had to wait");
    cr_assert_eq(a.down_done, 1);
    cr_assert_eq(a.down_err, CKT_OK, "seed %" PRIu64 ": download: %s", seed,
                 ckt_strerror(a.down_err));
    cr_assert_eq(a.down_parts, 300);
    cr_assert_eq(a.down_bad, 0);
    cr_assert_eq(a.cancel_done, 1);
    cr_assert_eq(a.cancel_err, CKT_ERR_CANCEL_SENT);
    cr_assert_eq(a.cancel_why, CKT_ERR_CANCELED);
    cr_assert_eq(memcmp(&a, &b, offsetof(stream_run, up)), 0,
                 "seed %" PRIu64 ": the two runs saw different things", seed);
  }
}
