/*
 * samesame — one process, one UDP port, a server and a client at once.
 *
 * It serves 'echo' on its port and, with -peer, calls another samesame
 * from that very port: run two and each is the other's client and server.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/ckt.h"
#include "cmdline.h"

typedef struct samesame {
  const char *addr, *peer;
  unsigned long calls, wait_ms;
  cmd_node_opts node;
  char me[80];
} samesame;

static int echo(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  samesame *s = user;
  (void)n;
  printf("samesame %s: answered a call from %s\n", s->me, req->from);
  fflush(stdout);
  return ckt_message_set_payload(reply, req->payload, req->payload_len) ==
                 CKT_OK
             ? 0
             : -1;
}

static int call_peer(samesame *s, ckt_node *n) {
  unsigned long i, ok = 0;
  int last = CKT_OK;
  for (i = 0; i < s->calls; ++i) {
    ckt_message *reply = NULL, *m = ckt_message_new();
    char text[128];
    int rv;
    if (!m) {
      return CKT_ERR_NOMEM;
    }
    snprintf(text, sizeof(text), "hello %lu from %s", i, s->me);
    ckt_message_set_service(m, "echo");
    ckt_message_set_payload(m, text, strlen(text));
    rv = ckt_node_call(n, s->peer, m, 0, &reply);
    if (rv == CKT_OK && reply->payload_len == strlen(text) &&
        memcmp(reply->payload, text, strlen(text)) == 0) {
      ok++;
    } else {
      last = rv == CKT_OK ? CKT_ERR_FORMAT : rv;
      fprintf(stderr, "samesame %s: call to %s failed: %s\n", s->me, s->peer,
              reply && reply->err ? reply->err : ckt_strerror(last));
    }
    ckt_message_free(reply);
  }
  printf("samesame %s: %lu of %lu calls to %s answered, sent from this same "
         "port\n",
         s->me, ok, s->calls, s->peer);
  fflush(stdout);
  return ok == s->calls ? CKT_OK : last;
}

int main(int argc, char **argv) {
  samesame s;
  ckt_node_config cfg;
  ckt_node *n;
  cmd_flag flags[4 + CMD_NODE_NFLAGS];
  size_t nf = 0;
  int rv;

  cmd_tune_malloc();

  memset(&s, 0, sizeof(s));
  s.addr = "127.0.0.1:7200";
  s.calls = 3;
  flags[nf++] = (cmd_flag){"addr",
                           CMD_STRING,
                           &s.addr,
                           0,
                           0,
                           "HOST:PORT",
                           "serve and dial from this one port\n"
                           "(default 127.0.0.1:7200)"};
  flags[nf++] = (cmd_flag){"peer",
                           CMD_STRING,
                           &s.peer,
                           0,
                           0,
                           "HOST:PORT",
                           "another samesame to call"};
  flags[nf++] = (cmd_flag){"n",
                           CMD_UINT,
                           &s.calls,
                           1,
                           1000000ul,
                           "N",
                           "calls to make to the peer (default 3)"};
  flags[nf++] =
      (cmd_flag){"wait",
                 CMD_UINT,
                 &s.wait_ms,
                 1,
                 86400000ul,
                 "MS",
                 "keep serving MS ms after the calls (default: until\n"
                 "SIGINT without -peer, else 0)"};
  nf += cmd_node_flags(&s.node, "identity for both roles (default: node)",
                       flags + nf);
  {
    const cmd_spec spec = {
        "samesame",
        "[options]",
        "Serve 'echo' and call another samesame, both over one UDP port.",
        flags,
        nf,
        NULL};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("samesame", "unexpected argument '%s'.", argv[first]);
    }
  }
  ckt_node_config_init(&cfg);
  cmd_node_config(&s.node, "samesame", &cfg);
  cfg.listen = s.addr;
  cfg.serve = 1;
  cfg.server_name = s.node.identity;
  cfg.client_name = s.node.identity ? s.node.identity : "node";
  rv = ckt_node_new(&cfg, &n);
  if (rv != CKT_OK) {
    fprintf(stderr, "samesame: cannot start: %s.\n", ckt_strerror(rv));
    return cmd_exit_code(rv);
  }
  ckt_node_address(n, s.me, sizeof(s.me));
  ckt_node_register_call(n, "echo", echo, &s);
  cmd_block_signals();
  if ((rv = ckt_node_start(n)) != CKT_OK) {
    ckt_node_free(n);
    return 1;
  }
  printf("samesame %s: serving and dialing on this one UDP port\n", s.me);
  fflush(stdout);
  if (s.peer) {
    rv = call_peer(&s, n);
  }
  if (s.wait_ms || !s.peer) {
    cmd_wait_signal(s.wait_ms);
  }
  ckt_node_free(n);
  return cmd_exit_code(rv);
}
