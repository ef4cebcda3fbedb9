/*
 * peerecho — the example peer service: "echo", registered the same way on
 * a server-role node and a client-role node; either side opens circuits.
 *
 *   peerecho -serve -addr 127.0.0.1:7300
 *   peerecho -to 127.0.0.1:7300 -n 100000 -circuits 100
 *
 * The client opens circuits to the server's running echo peer (starting
 * one if none runs), sends fragments round-robin and counts the echoes
 * (fragments/s); then it asks the server's peer to call back, and the
 * server opens a circuit of its own to the client's peer.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckt/ckt.h"
#include "cmdline.h"

typedef struct app {
  const char *addr, *to;
  int serve, quiet;
  unsigned long count, circuits, size, window;
  cmd_node_opts node;
  ckt_node *n;
  ckt_peer *peer;
  ckt_circuit **circ;
  unsigned long sent, echoed, next;
  int called_back;
  uint64_t t0, t1;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
} app;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void finish(app *a) {
  pthread_mutex_lock(&a->mu);
  a->done = 1;
  pthread_cond_broadcast(&a->cv);
  pthread_mutex_unlock(&a->mu);
}

static ckt_fragment *payload_fragment(const app *a, const char *tag) {
  ckt_fragment *f = ckt_fragment_new();
  if (f && tag) {
    ckt_fragment_set_subject(f, tag);
  }
  if (f && a->size) {
    uint8_t *p = calloc(1, a->size);
    if (!p || ckt_fragment_set_payload(f, p, a->size) != CKT_OK) {
      ckt_fragment_free(f);
      f = NULL;
    }
    free(p);
  }
  return f;
}

/* Keeps `window` fragments in flight, spread round-robin over the
 * circuits (loop thread). */
static void send_more(app *a) {
  while (a->sent < a->count && a->sent - a->echoed < a->window) {
    ckt_fragment *f = payload_fragment(a, "ping");
    ckt_circuit *c = a->circ[a->next++ % a->circuits];
    int rv;
    if (!f) {
      return;
    }
    rv = ckt_circuit_send(c, f);
    if (rv == CKT_ERR_AGAIN) {
      return; /* writable brings us back */
    }
    if (rv != CKT_OK) {
      fprintf(stderr, "peerecho: send: %s\n", ckt_strerror(rv));
      return;
    }
    a->sent++;
  }
}

/* ---- the service: the same on both sides --------------------------------- */

static int echo_new(ckt_peer *p, ckt_circuit *c, const ckt_fragment *open,
                    void *user) {
  app *a = user;
  (void)p;
  if (!a->serve && !a->quiet) {
    printf("peerecho: the server opened circuit '%s' to us from %s\n",
           open->subject, ckt_circuit_remote_url(c));
    fflush(stdout);
  }
  return 0;
}

static void echo_fragment(ckt_peer *p, ckt_circuit *c, const ckt_fragment *f,
                          void *user) {
  app *a = user;
  if (strcmp(f->subject, "ping") == 0) {
    ckt_fragment *back = NULL;
    if (ckt_fragment_copy(f, &back) == CKT_OK) {
      ckt_fragment_set_subject(back, "pong");
      ckt_circuit_send(c, back);
    }
  } else if (strcmp(f->subject, "pong") == 0) {
    a->echoed++;
    if (a->echoed == a->count) {
      a->t1 = mono_ns();
      finish(a);
    } else {
      send_more(a);
    }
  } else if (strcmp(f->subject, "call me back") == 0) {
    /* Either side initiates: the server opens a circuit of its own to
     * the client's peer, over the connection the client made. */
    ckt_circuit *back;
    ckt_fragment *hello = ckt_fragment_new();
    if (hello) {
      ckt_fragment_set_subject(hello, "hello from the server");
    }
    if (ckt_circuit_open_sibling(c, "callback", hello, NULL, &back) == CKT_OK) {
      (void)back;
    }
    (void)p;
  } else if (strcmp(f->subject, "hello from the server") == 0) {
    a->called_back = 1;
    finish(a);
  }
}

static void echo_closed(ckt_peer *p, ckt_circuit *c, const char *reason,
                        int remote, void *user) {
  app *a = user;
  (void)p, (void)c;
  if (remote && !a->serve && !a->done && !a->quiet) {
    fprintf(stderr, "peerecho: circuit closed: %s\n", reason);
  }
}

static void echo_writable(ckt_peer *p, ckt_circuit *c, void *user) {
  app *a = user;
  (void)p, (void)c;
  if (!a->serve) {
    send_more(a);
  }
}

static const ckt_peer_service echo_service = {
    .circuit_new = echo_new,
    .fragment = echo_fragment,
    .circuit_closed = echo_closed,
    .writable = echo_writable,
};

/* ---- the client's run (on the loop) -------------------------------------- */

static void client_start(void *arg) {
  app *a = arg;
  unsigned long i;
  int rv = ckt_node_start_peer(a->n, "echo", &a->peer);
  if (rv != CKT_OK) {
    fprintf(stderr, "peerecho: cannot start a peer: %s\n", ckt_strerror(rv));
    finish(a);
    return;
  }
  a->t0 = mono_ns();
  for (i = 0; i < a->circuits; ++i) {
    rv = ckt_peer_open_circuit_extant(a->peer, a->to, "echo", "bench", NULL,
                                      NULL, &a->circ[i]);
    if (rv != CKT_OK) {
      fprintf(stderr, "peerecho: open: %s\n", ckt_strerror(rv));
      finish(a);
      return;
    }
  }
  send_more(a);
}

static void client_callback(void *arg) {
  app *a = arg;
  ckt_fragment *f = ckt_fragment_new();
  if (f) {
    ckt_fragment_set_subject(f, "call me back");
    ckt_circuit_send(a->circ[0], f);
  }
}

static int wait_done(app *a, int seconds) {
  struct timespec until;
  int done;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += seconds;
  pthread_mutex_lock(&a->mu);
  while (!a->done && pthread_cond_timedwait(&a->cv, &a->mu, &until) == 0) {
  }
  done = a->done;
  a->done = 0;
  pthread_mutex_unlock(&a->mu);
  return done;
}

int main(int argc, char **argv) {
  app a;
  ckt_node_config cfg;
  cmd_flag flags[9 + CMD_NODE_NFLAGS];
  size_t nf = 0;
  char addr[80];
  int rv, status = 0;

  cmd_tune_malloc();

  memset(&a, 0, sizeof(a));
  pthread_mutex_init(&a.mu, NULL);
  pthread_cond_init(&a.cv, NULL);
  a.count = 10000;
  a.circuits = 1;
  a.size = 64;
  a.window = 256;
  flags[nf++] = (cmd_flag){"serve",
                           CMD_BOOL,
                           &a.serve,
                           0,
                           0,
                           NULL,
                           "run the server side (accept connections)"};
  flags[nf++] = (cmd_flag){"addr",
                           CMD_STRING,
                           &a.addr,
                           0,
                           0,
                           "HOST:PORT",
                           "bind here (default 127.0.0.1:7300 with -serve,\n"
                           "else 0.0.0.0:0)"};
  flags[nf++] = (cmd_flag){"to",
                           CMD_STRING,
                           &a.to,
                           0,
                           0,
                           "HOST:PORT",
                           "the server to talk to (client side)"};
  flags[nf++] = (cmd_flag){"n",
                           CMD_UINT,
                           &a.count,
                           1,
                           100000000ul,
                           "N",
                           "fragments to send (default 10000)"};
  flags[nf++] = (cmd_flag){"circuits",
                           CMD_UINT,
                           &a.circuits,
                           1,
                           10000ul,
                           "N",
                           "circuits to spread them over (default 1)"};
  flags[nf++] = (cmd_flag){"size",
                           CMD_UINT,
                           &a.size,
                           0,
                           1024ul * 1024,
                           "BYTES",
                           "payload per fragment (default 64)"};
  flags[nf++] = (cmd_flag){"window",
                           CMD_UINT,
                           &a.window,
                           1,
                           1000000ul,
                           "N",
                           "fragments in flight (default 256)"};
  flags[nf++] =
      (cmd_flag){"q", CMD_BOOL, &a.quiet, 0, 0, NULL, "print only the summary"};
  nf += cmd_node_flags(&a.node,
                       "identity (default: node with -serve, else "
                       "client)",
                       flags + nf);
  {
    const cmd_spec spec = {
        "peerecho",
        "[options]",
        "The example peer service 'echo', on a server-role node (-serve) and\n"
        "a client-role node (-to): the client sends fragments over circuits\n"
        "and counts the echoes; then the server opens a circuit back.",
        flags,
        nf,
        NULL};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("peerecho", "unexpected argument '%s'.", argv[first]);
    }
    if (!a.serve && !a.to) {
      cmd_usage_error("peerecho", "give -serve, or -to HOST:PORT.");
    }
  }
  ckt_node_config_init(&cfg);
  cmd_node_config(&a.node, "peerecho", &cfg);
  cfg.serve = a.serve;
  cfg.listen = a.addr ? a.addr : (a.serve ? "127.0.0.1:7300" : "0.0.0.0:0");
  cfg.server_name = a.node.identity;
  cfg.client_name = a.node.identity;
  rv = ckt_node_new(&cfg, &a.n);
  if (rv != CKT_OK) {
    fprintf(stderr, "peerecho: cannot start: %s.\n", ckt_strerror(rv));
    return cmd_exit_code(rv);
  }
  a.circ = calloc(a.circuits, sizeof(*a.circ));
  if (!a.circ || ckt_node_register_peer_service(a.n, "echo", &echo_service,
                                                &a) != CKT_OK) {
    fprintf(stderr, "peerecho: out of memory.\n");
    return 1;
  }
  cmd_block_signals();
  if ((rv = ckt_node_start(a.n)) != CKT_OK) {
    ckt_node_free(a.n);
    return 1;
  }
  ckt_node_address(a.n, addr, sizeof(addr));
  if (a.serve) {
    printf("peerecho: serving peer service 'echo' on %s\n", addr);
    fflush(stdout);
    cmd_wait_signal(0);
  } else if (ckt_node_post(a.n, client_start, &a) == CKT_OK &&
             wait_done(&a, 120) && a.echoed == a.count) {
    double secs = (double)(a.t1 - a.t0) / 1e9;
    printf("peerecho: %lu fragments of %lu bytes echoed over %lu "
           "circuit(s) in %.3f s: %.0f fragments/s each way\n",
           a.count, a.size, a.circuits, secs, (double)a.count / secs);
    if (ckt_node_post(a.n, client_callback, &a) == CKT_OK &&
        wait_done(&a, 10) && a.called_back) {
      printf("peerecho: the server opened a circuit to this client's peer "
             "and said hello\n");
    } else {
      fprintf(stderr, "peerecho: the server did not call back.\n");
      status = 1;
    }
  } else {
    fprintf(stderr, "peerecho: only %lu of %lu fragments came back.\n",
            a.echoed, a.count);
    status = 1;
  }
  ckt_node_free(a.n);
  free(a.circ);
  return status;
}
