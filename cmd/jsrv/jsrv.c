/*
 * jsrv — the jsync server: serves pushes into, and pulls from, the tree
 * beneath its root to jcp clients over ckt (QUIC, mutual Ed25519 TLS).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ckt/ckt.h"
#include "cmdline.h"
#include "jsync.h"

typedef struct jsrv {
  const char *addr, *root;
  int ro, quiet;
  unsigned long max_sessions;
  cmd_node_opts node;
} jsrv;

static void log_line(void *user, const char *line) {
  char ts[32];
  time_t now = time(NULL);
  struct tm tm;
  (void)user;
  gmtime_r(&now, &tm);
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
  printf("%s jsrv: %s\n", ts, line);
  fflush(stdout);
}

int main(int argc, char **argv) {
  static char default_addr[32];
  jsrv s;
  cmd_flag flags[16];
  size_t nf = 0;
  ckt_node_config cfg;
  ckt_node *n = NULL;
  jsync_server *js = NULL;
  jsync_server_opts so;
  char addr[128], why[512];
  struct stat st;
  int rv;

  cmd_tune_malloc();

  memset(&s, 0, sizeof(s));
  snprintf(default_addr, sizeof(default_addr), "0.0.0.0:%d",
           JSYNC_DEFAULT_PORT);
  s.addr = default_addr;
  s.root = ".";
  flags[nf++] = (cmd_flag){"addr",
                           CMD_STRING,
                           &s.addr,
                           0,
                           0,
                           "IP:PORT",
                           "UDP address to serve on (default 0.0.0.0:8425)"};
  flags[nf++] = (cmd_flag){"root",
                           CMD_STRING,
                           &s.root,
                           0,
                           0,
                           "DIR",
                           "serve only beneath DIR (default: the working\n"
                           "directory)"};
  flags[nf++] =
      (cmd_flag){"ro", CMD_BOOL, &s.ro, 0, 0, NULL, "read-only: refuse pushes"};
  flags[nf++] = (cmd_flag){"max-sessions",
                           CMD_UINT,
                           &s.max_sessions,
                           1,
                           100000ul,
                           "N",
                           "sessions at once (default 64)"};
  flags[nf++] = (cmd_flag){
      "q", CMD_BOOL, &s.quiet, 0, 0, NULL, "no log line per transfer"};
  nf += cmd_node_flags(&s.node, "server identity (default: node)", flags + nf);
  {
    const cmd_spec spec = {
        "jsrv",
        "[options]",
        "Serve jsync: jcp clients push files and trees into, or pull them\n"
        "from, the tree beneath -root.  Client paths are relative to the\n"
        "root; '..', absolute paths and symlinks leading outside it are\n"
        "refused.  One log line per transfer; SIGINT/SIGTERM stop cleanly\n"
        "(interrupted transfers keep what arrived for the next run).",
        flags,
        nf,
        "\nExit status: 0 stopped by a signal, 2 usage, 3 authentication "
        "(identity,\npassphrase), 4 network (address in use), 5 files "
        "(root or identity\nunusable).\n"};
    int first = cmd_parse(&spec, argc, argv);
    if (first < argc) {
      cmd_usage_error("jsrv", "unexpected argument '%s'.", argv[first]);
    }
  }
  if (stat(s.root, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "jsrv: the root %s is not a directory.\n", s.root);
    return CMD_EXIT_IO;
  }
  ckt_node_config_init(&cfg);
  cmd_node_config(&s.node, "jsrv", &cfg);
  cfg.listen = s.addr;
  cfg.serve = 1;
  cfg.server_name = s.node.identity;
  rv = ckt_node_new(&cfg, &n);
  if (rv == CKT_ERR_IO) {
    fprintf(stderr, "jsrv: cannot serve on %s (see above).\n", s.addr);
    return CMD_EXIT_NET;
  }
  if (rv != CKT_OK) {
    fprintf(stderr, "jsrv: cannot start: %s.\n", ckt_strerror(rv));
    return cmd_exit_code(rv);
  }
  cmd_block_signals();
  if ((rv = ckt_node_start(n)) != CKT_OK) {
    fprintf(stderr, "jsrv: cannot serve on %s: %s.\n", s.addr,
            ckt_strerror(rv));
    ckt_node_free(n);
    return rv == CKT_ERR_IO ? CMD_EXIT_NET : cmd_exit_code(rv);
  }
  memset(&so, 0, sizeof(so));
  so.root = s.root;
  so.read_only = s.ro;
  so.max_sessions = (unsigned)s.max_sessions;
  so.log = s.quiet ? NULL : log_line;
  rv = jsync_server_start(n, &so, &js, why, sizeof(why));
  if (rv != CKT_OK) {
    fprintf(stderr, "jsrv: %s.\n", why);
    ckt_node_free(n);
    return rv == JSYNC_ERR_LOCAL ? CMD_EXIT_IO : cmd_exit_code(rv);
  }
  ckt_node_address(n, addr, sizeof(addr));
  printf("jsrv: listening on %s, root %s%s\n", addr, s.root,
         s.ro ? " (read-only)" : "");
  fflush(stdout);
  cmd_wait_signal(0);
  printf("jsrv: stopping\n");
  fflush(stdout);
  jsync_server_stop(js);
  ckt_node_free(n);
  return 0;
}
