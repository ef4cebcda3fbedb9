/*
 * srv — a ckt server: echo, one-way and push services on one UDP port.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/ckt.h"
#include "cmdline.h"

typedef struct srv {
  const char *addr;
  int quiet, retry;
  cmd_node_opts node;
  unsigned long oneways;
} srv;

/* echo: the reply carries the request's payload, args and subject. */
static int echo(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  size_t i;
  (void)n, (void)user;
  if (ckt_message_set_payload(reply, req->payload, req->payload_len) !=
          CKT_OK ||
      ckt_message_set_subject(reply, req->subject) != CKT_OK) {
    ckt_message_set_err(reply, "out of memory");
    return -1;
  }
  for (i = 0; i < req->nargs; ++i) {
    ckt_message_set_arg(reply, req->args[i].key, req->args[i].value);
  }
  return 0;
}

static void oneway(ckt_node *n, const ckt_message *msg, void *user) {
  srv *s = user;
  (void)n;
  s->oneways++;
  if (!s->quiet) {
    printf("srv: one-way message %lu from %s (%zu bytes, subject '%s')\n",
           s->oneways, msg->from, msg->payload_len, msg->subject);
    fflush(stdout);
  }
}

/* push: answers at once, then pushes args["count"] messages (the request's
 * payload each) to the caller over the caller's own connection. */
static int push(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  const char *count = ckt_message_get_arg(req, "count");
  unsigned long i, k = count ? strtoul(count, NULL, 10) : 1;
  srv *s = user;
  if (k > 1000000) {
    ckt_message_set_err(reply, "count must be at most 1000000");
    return -1;
  }
  for (i = 0; i < k; ++i) {
    ckt_message *m = ckt_message_new();
    char seq[32];
    if (!m) {
      break;
    }
    snprintf(seq, sizeof(seq), "%lu", i);
    ckt_message_set_service(m, "push");
    ckt_message_set_arg(m, "seq", seq);
    ckt_message_set_payload(m, req->payload, req->payload_len);
    if (ckt_node_push(n, req->from, m) != CKT_OK) {
      break;
    }
  }
  if (!s->quiet) {
    printf("srv: pushed %lu messages to %s\n", i, req->from);
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char **argv) {
  srv s;
  ckt_node_config cfg;
  ckt_node *n;
  cmd_flag flags[4 + CMD_NODE_NFLAGS];
  size_t nf = 0;
  char addr[80];
  int rv;

  cmd_tune_malloc();

  memset(&s, 0, sizeof(s));
  s.addr = "0.0.0.0:7100";
  flags[nf++] = (cmd_flag){"addr",
                           CMD_STRING,
                           &s.addr,
                           0,
                           0,
                           "HOST:PORT",
                           "listen here (default 0.0.0.0:7100)"};
  flags[nf++] = (cmd_flag){"retry",
                           CMD_BOOL,
                           &s.retry,
                           0,
                           0,
                           NULL,
                           "validate client addresses with a Retry"};
  flags[nf++] = (cmd_flag){
      "q", CMD_BOOL, &s.quiet, 0, 0, NULL, "print nothing per message"};
  nf += cmd_node_flags(&s.node, "server identity (default: node)", flags + nf);
  {
    const cmd_spec spec = {
        "srv",
        "[options]",
        "Serve ckt's example services on one UDP port: 'echo' (two-way,\n"
        "replies with the request), 'oneway' (counts one-way messages) and\n"
        "'push' (replies, then pushes args[count] messages to the caller).",
        flags,
        nf,
        NULL};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("srv", "unexpected argument '%s'.", argv[first]);
    }
  }
  ckt_node_config_init(&cfg);
  cmd_node_config(&s.node, "srv", &cfg);
  cfg.listen = s.addr;
  cfg.serve = 1;
  cfg.retry = s.retry;
  cfg.server_name = s.node.identity;
  rv = ckt_node_new(&cfg, &n);
  if (rv != CKT_OK) {
    fprintf(stderr, "srv: cannot start: %s.\n", ckt_strerror(rv));
    return cmd_exit_code(rv);
  }
  if (ckt_node_register_call(n, "echo", echo, &s) != CKT_OK ||
      ckt_node_register_oneway(n, "oneway", oneway, &s) != CKT_OK ||
      ckt_node_register_call(n, "push", push, &s) != CKT_OK) {
    fprintf(stderr, "srv: out of memory.\n");
    ckt_node_free(n);
    return 1;
  }
  cmd_block_signals();
  if ((rv = ckt_node_start(n)) != CKT_OK) {
    fprintf(stderr, "srv: cannot start the loop: %s.\n", ckt_strerror(rv));
    ckt_node_free(n);
    return 1;
  }
  ckt_node_address(n, addr, sizeof(addr));
  printf("srv: listening on %s (%s)\n", addr,
         s.node.aes ? "TLS_AES_128_GCM_SHA256"
                    : "TLS_CHACHA20_POLY1305_SHA256");
  fflush(stdout);
  cmd_wait_signal(0);
  printf("srv: stopping\n");
  ckt_node_free(n);
  return 0;
}
