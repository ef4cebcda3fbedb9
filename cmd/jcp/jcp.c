/*
 * jcp — copy files and trees to or from a jsrv server, rsync style: only
 * what differs travels, over ckt (QUIC, mutual Ed25519 TLS).
 *
 *   jcp [options] SRC... HOST:DST     push
 *   jcp [options] HOST:SRC... DST     pull
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ckt/ckt.h"
#include "cmdline.h"
#include "jsync.h"
#include "jsync_wire.h"

typedef struct jcp {
  unsigned long port, circuits, zlevel, timeout_ms;
  int recursive, verbose, quiet, progress, stats, checksum, del, dry, whole,
      fsync, blake2b, no_compress;
  cmd_node_opts node;
  const char *excludes[JSYNC_WIRE_EXCLUDES_MAX];
  size_t nexcludes;
  /* progress */
  jsync_live live;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, bar_shown;
  double t0;
} jcp;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rd(uint64_t *p) {
  return atomic_load_explicit((_Atomic uint64_t *)p, memory_order_relaxed);
}

static void human(double v, char *out, size_t n) {
  const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (v >= 1024 && i < 4) {
    v /= 1024;
    i++;
  }
  snprintf(out, n, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

static void clear_bar(jcp *c) {
  if (c->bar_shown) {
    fprintf(stderr, "\r\033[K");
    c->bar_shown = 0;
  }
}

static void draw_bar(jcp *c) {
  double el = now_s() - c->t0;
  uint64_t done = rd(&c->live.bytes_done), total = rd(&c->live.bytes_total);
  char d[32], t[32], r[32], eta[32] = "";
  double rate = el > 0 ? (double)done / el : 0;
  human((double)done, d, sizeof(d));
  human((double)total, t, sizeof(t));
  human(rate, r, sizeof(r));
  if (c->live.list_done && rate > 0 && total > done) {
    double s = (double)(total - done) / rate;
    snprintf(eta, sizeof(eta), "  ETA %d:%02d", (int)(s / 60),
             (int)fmod(s, 60));
  }
  fprintf(stderr, "\r\033[K%s / %s  %s/s  files %llu/%llu%s", d, t, r,
          (unsigned long long)rd(&c->live.files_done),
          (unsigned long long)rd(&c->live.files_total), eta);
  c->bar_shown = 1;
}

static void *progress_main(void *arg) {
  jcp *c = arg;
  pthread_mutex_lock(&c->mu);
  while (!c->done) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 250000000L;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&c->cv, &c->mu, &until);
    if (!c->done) {
      draw_bar(c);
    }
  }
  clear_bar(c);
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

/* -v lines and warnings: the bar steps aside. */
static void on_log(void *user, const char *line) {
  jcp *c = user;
  pthread_mutex_lock(&c->mu);
  clear_bar(c);
  printf("%s\n", line);
  fflush(stdout);
  pthread_mutex_unlock(&c->mu);
}

static void on_warn(void *user, const char *line) {
  jcp *c = user;
  pthread_mutex_lock(&c->mu);
  clear_bar(c);
  fprintf(stderr, "jcp: %s\n", line);
  pthread_mutex_unlock(&c->mu);
}

static void on_node_log(void *user, const char *line) {
  jcp *c = user;
  if (c->verbose) {
    on_warn(user, line);
  }
}

/* "host:path" (no '/' before the ':'; "[v6]:path" too) splits into host and
 * path; anything else is local. */
static int split_remote(const char *arg, char *host, size_t hsz,
                        const char **path) {
  const char *colon;
  if (arg[0] == '[') {
    const char *end = strchr(arg, ']');
    if (!end || end[1] != ':') {
      return 0;
    }
    colon = end + 1;
  } else {
    colon = strchr(arg, ':');
    if (!colon || memchr(arg, '/', (size_t)(colon - arg)) || colon == arg) {
      return 0;
    }
  }
  if ((size_t)(colon - arg) >= hsz) {
    return 0;
  }
  memcpy(host, arg, (size_t)(colon - arg));
  host[colon - arg] = '\0';
  *path = colon + 1;
  return 1;
}

/* Options may come anywhere (rsync style): move them before the operands
 * for cmd_parse, collecting the repeatable --exclude on the way. */
static char **reorder(jcp *c, const cmd_flag *flags, size_t nf, int argc,
                      char **argv, int *outc) {
  char **out = calloc((size_t)argc + 1, sizeof(*out)), **ops;
  int i, n = 1, nops = 0, only_ops = 0;
  ops = calloc((size_t)argc + 1, sizeof(*ops));
  if (!out || !ops) {
    fprintf(stderr, "jcp: out of memory.\n");
    exit(1);
  }
  out[0] = argv[0];
  for (i = 1; i < argc; ++i) {
    const char *a = argv[i], *name, *eq;
    size_t k, len;
    if (only_ops || a[0] != '-' || a[1] == '\0') {
      ops[nops++] = argv[i];
      continue;
    }
    if (strcmp(a, "--") == 0) {
      only_ops = 1;
      continue;
    }
    name = a + (a[1] == '-' ? 2 : 1);
    eq = strchr(name, '=');
    len = eq ? (size_t)(eq - name) : strlen(name);
    if (len == 7 && strncmp(name, "exclude", 7) == 0) {
      const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
      if (!v) {
        cmd_usage_error("jcp", "--exclude needs a pattern.");
      }
      if (c->nexcludes == JSYNC_WIRE_EXCLUDES_MAX) {
        cmd_usage_error("jcp", "too many --exclude patterns.");
      }
      c->excludes[c->nexcludes++] = v;
      continue;
    }
    out[n++] = argv[i];
    for (k = 0; k < nf; ++k) {
      if (strlen(flags[k].name) == len &&
          strncmp(flags[k].name, name, len) == 0) {
        if (flags[k].kind != CMD_BOOL && !eq && i + 1 < argc) {
          out[n++] = argv[++i];
        }
        break;
      }
    }
  }
  for (i = 0; i < nops; ++i) {
    out[n++] = ops[i];
  }
  free(ops);
  *outc = n;
  return out;
}

static int exit_code(int rv) {
  switch (rv) {
  case JSYNC_ERR_FILES:
  case JSYNC_ERR_LOCAL:
  case JSYNC_ERR_REFUSED:
    return CMD_EXIT_IO;
  case JSYNC_ERR_PROTOCOL:
    return CMD_EXIT_FAIL;
  }
  return cmd_exit_code(rv);
}

int main(int argc, char **argv) {
  static jcp c;
  cmd_flag flags[40];
  size_t nf = 0, i, nsrc;
  int first, nargc, push, rv, bar;
  char **args, host[300], host_port[330], why[700];
  const char **srcs, *dst;
  ckt_node_config cfg;
  ckt_node *n = NULL;
  jsync_opts o;
  jsync_stats st;
  pthread_t bar_th;

  cmd_tune_malloc();

  c.port = JSYNC_DEFAULT_PORT;
  c.circuits = 4;
  c.zlevel = 1;
  c.timeout_ms = 10000;
  pthread_mutex_init(&c.mu, NULL);
  pthread_cond_init(&c.cv, NULL);
  flags[nf++] = (cmd_flag){"p",
                           CMD_UINT,
                           &c.port,
                           1,
                           65535,
                           "PORT",
                           "the server's UDP port (default 8425)"};
  flags[nf++] = (cmd_flag){"r",
                           CMD_BOOL,
                           &c.recursive,
                           0,
                           0,
                           NULL,
                           "accepted; directories are always recursive"};
  flags[nf++] = (cmd_flag){"c",
                           CMD_BOOL,
                           &c.checksum,
                           0,
                           0,
                           NULL,
                           "compare contents, not size and mtime"};
  flags[nf++] = (cmd_flag){"checksum", CMD_BOOL, &c.checksum,     0,
                           0,          NULL,     "the same as -c"};
  flags[nf++] = (cmd_flag){"delete",
                           CMD_BOOL,
                           &c.del,
                           0,
                           0,
                           NULL,
                           "remove destination files the source lacks"};
  flags[nf++] = (cmd_flag){"n",
                           CMD_BOOL,
                           &c.dry,
                           0,
                           0,
                           NULL,
                           "dry run: show what would change, change nothing"};
  flags[nf++] =
      (cmd_flag){"dry-run", CMD_BOOL, &c.dry, 0, 0, NULL, "the same as -n"};
  flags[nf++] = (cmd_flag){
      "v", CMD_BOOL, &c.verbose, 0, 0, NULL, "list each changed path"};
  flags[nf++] = (cmd_flag){
      "q", CMD_BOOL, &c.quiet, 0, 0, NULL, "no progress bar, only errors"};
  flags[nf++] = (cmd_flag){"progress",
                           CMD_BOOL,
                           &c.progress,
                           0,
                           0,
                           NULL,
                           "show the progress bar even when stderr is not a\n"
                           "terminal"};
  flags[nf++] = (cmd_flag){
      "stats", CMD_BOOL, &c.stats, 0, 0, NULL, "print a jcp-stats line last"};
  flags[nf++] = (cmd_flag){
      "W", CMD_BOOL, &c.whole, 0, 0, NULL, "whole files: no delta transfer"};
  flags[nf++] = (cmd_flag){"whole-file", CMD_BOOL,        &c.whole, 0, 0,
                           NULL,         "the same as -W"};
  flags[nf++] = (cmd_flag){"fsync",
                           CMD_BOOL,
                           &c.fsync,
                           0,
                           0,
                           NULL,
                           "fsync each file before it replaces the old one"};
  flags[nf++] = (cmd_flag){"blake2b",
                           CMD_BOOL,
                           &c.blake2b,
                           0,
                           0,
                           NULL,
                           "check whole files with BLAKE2b-256 (default\n"
                           "XXH3-128)"};
  flags[nf++] = (cmd_flag){"no-compress",
                           CMD_BOOL,
                           &c.no_compress,
                           0,
                           0,
                           NULL,
                           "send file data uncompressed"};
  flags[nf++] = (cmd_flag){"compress-level",
                           CMD_UINT,
                           &c.zlevel,
                           1,
                           19,
                           "N",
                           "zstd level for data that compresses (default 1)"};
  flags[nf++] = (cmd_flag){"timeout",
                           CMD_UINT,
                           &c.timeout_ms,
                           100,
                           3600000ul,
                           "MS",
                           "give up on a server that does not answer within\n"
                           "MS milliseconds (default 10000)"};
  flags[nf++] = (cmd_flag){"circuits",
                           CMD_UINT,
                           &c.circuits,
                           1,
                           JSYNC_WIRE_CIRCUITS_MAX,
                           "N",
                           "files in flight on N circuits (default 4)"};
  nf +=
      cmd_node_flags(&c.node, "client identity (default: client)", flags + nf);
  args = reorder(&c, flags, nf, argc, argv, &nargc);
  {
    const cmd_spec spec = {
        "jcp",
        "[options] SRC... [HOST:]DST  |  [options] HOST:SRC... DST",
        "Copy files and trees to (push) or from (pull) a jsrv server; only\n"
        "what differs travels.  Exactly one side is remote, written\n"
        "HOST:PATH (paths are relative to the server's root).  A source\n"
        "ending in '/' stands for its contents.  Options may come anywhere;\n"
        "--exclude PATTERN may repeat (a pattern without '/' matches names\n"
        "at any depth; one with '/' matches from the top; a trailing '/'\n"
        "matches directories only).",
        flags,
        nf,
        "\nExit status: 0 success, 1 protocol failure, 2 usage, 3 "
        "authentication\n(TLS, passphrase), 4 network (unreachable, lost), 5 "
        "files (missing,\nunreadable, refused by the server, or some files "
        "failed).\n"};
    first = cmd_parse(&spec, nargc, args);
  }
  if (nargc - first < 2) {
    cmd_usage_error("jcp", "need at least one source and a destination.");
  }
  nsrc = (size_t)(nargc - first - 1);
  srcs = calloc(nsrc, sizeof(*srcs));
  if (!srcs) {
    fprintf(stderr, "jcp: out of memory.\n");
    return 1;
  }
  push = split_remote(args[nargc - 1], host, sizeof(host), &dst);
  if (!push) {
    char h2[300];
    dst = args[nargc - 1];
    for (i = 0; i < nsrc; ++i) {
      if (!split_remote(args[first + (int)i], i ? h2 : host,
                        i ? sizeof(h2) : sizeof(host), &srcs[i])) {
        cmd_usage_error("jcp",
                        "exactly one side must be remote (HOST:PATH); '%s' "
                        "and '%s' are both local.",
                        args[first + (int)i], dst);
      }
      if (i && strcmp(h2, host) != 0) {
        cmd_usage_error("jcp", "all remote sources must be on one host.");
      }
    }
  } else {
    for (i = 0; i < nsrc; ++i) {
      const char *ignored;
      if (split_remote(args[first + (int)i], why, sizeof(why), &ignored)) {
        cmd_usage_error("jcp",
                        "exactly one side must be remote; '%s' and '%s' are "
                        "both remote.",
                        args[first + (int)i], args[nargc - 1]);
      }
      srcs[i] = args[first + (int)i];
    }
  }
  if (strchr(host, ':') && host[0] == '[') {
    snprintf(host_port, sizeof(host_port), "%s:%lu", host, c.port);
  } else if (strchr(host, ':')) {
    snprintf(host_port, sizeof(host_port), "[%s]:%lu", host, c.port);
  } else {
    snprintf(host_port, sizeof(host_port), "%s:%lu", host, c.port);
  }

  ckt_node_config_init(&cfg);
  cmd_node_config(&c.node, "jcp", &cfg);
  cfg.client_name = c.node.identity;
  cfg.listen = strchr(host_port, '[') ? "[::]:0" : "0.0.0.0:0";
  cfg.handshake_timeout_ms = (uint32_t)c.timeout_ms;
  /* jcp says what went wrong in one sentence of its own; the library's
   * log lines are details for -v. */
  cfg.log = on_node_log;
  cfg.log_user = &c;
  rv = ckt_node_new(&cfg, &n);
  if (rv != CKT_OK) {
    fprintf(stderr, "jcp: cannot start: %s.\n", ckt_strerror(rv));
    return cmd_exit_code(rv);
  }
  if ((rv = ckt_node_start(n)) != CKT_OK) {
    fprintf(stderr, "jcp: cannot start: %s.\n", ckt_strerror(rv));
    ckt_node_free(n);
    return cmd_exit_code(rv);
  }

  memset(&o, 0, sizeof(o));
  o.flags = (c.checksum ? JSYNC_F_CHECKSUM : 0) | (c.del ? JSYNC_F_DELETE : 0) |
            (c.dry ? JSYNC_F_DRY_RUN : 0) | (c.fsync ? JSYNC_F_FSYNC : 0) |
            (c.blake2b ? JSYNC_F_BLAKE2B : 0) |
            (c.no_compress ? JSYNC_F_NO_COMPRESS : 0) |
            (c.whole ? JSYNC_F_WHOLE : 0);
  o.circuits = (unsigned)c.circuits;
  o.timeout_ms = (int)c.timeout_ms;
  o.zstd_level = (int)c.zlevel;
  o.excludes = c.excludes;
  o.nexcludes = c.nexcludes;
  o.log = c.verbose || c.dry ? on_log : NULL;
  o.warn = on_warn;
  o.user = &c;
  o.live = &c.live;
  c.t0 = now_s();
  bar = !c.quiet && (c.progress || isatty(2));
  if (bar && pthread_create(&bar_th, NULL, progress_main, &c) != 0) {
    bar = 0;
  }
  rv = push ? jsync_push(n, host_port, srcs, nsrc, dst, &o, &st, why,
                         sizeof(why))
            : jsync_pull(n, host_port, srcs, nsrc, dst, &o, &st, why,
                         sizeof(why));
  if (bar) {
    pthread_mutex_lock(&c.mu);
    c.done = 1;
    pthread_cond_broadcast(&c.cv);
    pthread_mutex_unlock(&c.mu);
    pthread_join(bar_th, NULL);
  }
  if (rv != CKT_OK) {
    fprintf(stderr, "jcp: %s.\n", why);
  }
  if (c.stats) {
    ckt_node_stats ns;
    ckt_node_get_stats(n, &ns);
    printf("jcp-stats files=%llu transferred=%llu bytes_sent=%llu "
           "bytes_received=%llu literal_bytes=%llu matched_bytes=%llu "
           "elapsed_s=%.3f\n",
           (unsigned long long)st.files, (unsigned long long)st.transferred,
           (unsigned long long)ns.bytes_sent,
           (unsigned long long)ns.bytes_received,
           (unsigned long long)st.literal, (unsigned long long)st.matched,
           st.elapsed_s);
    fflush(stdout);
  }
  ckt_node_free(n);
  free(srcs);
  free(args);
  return exit_code(rv);
}
