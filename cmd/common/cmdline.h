/*
 * cmdline.h — what ckt's command-line tools share: table-driven flags
 * (every flag works as -name, --name, -name=value and --name value), help
 * text made from the same table, and passphrases from a file, the
 * environment or the terminal.
 */
#ifndef CKT_CMDLINE_H
#define CKT_CMDLINE_H

#include <stddef.h>

enum { CMD_EXIT_USAGE = 2 };

typedef enum { CMD_BOOL, CMD_STRING, CMD_UINT } cmd_kind;

typedef struct cmd_flag {
  const char *name; /* without dashes */
  cmd_kind kind;
  void *dest;             /* int * (CMD_BOOL), const char ** (CMD_STRING),
                             unsigned long * (CMD_UINT) */
  unsigned long min, max; /* accepted range of a CMD_UINT */
  const char *arg;        /* placeholder in the help: "N", "DIR" */
  const char *help;       /* one line; "\n" continues on the next */
} cmd_flag;

typedef struct cmd_spec {
  const char *prog;
  const char *synopsis;    /* "[options]" */
  const char *description; /* printed under the usage line */
  const cmd_flag *flags;
  size_t nflags;
  const char *footer; /* printed after the flags; may be NULL */
} cmd_spec;

/* Parses argv; exits 0 after printing help for -h/-help, and exits
 * CMD_EXIT_USAGE with one sentence for anything it cannot accept.
 * Returns the index of the first positional argument (argc if none);
 * positional arguments must come after the flags. */
int cmd_parse(const cmd_spec *spec, int argc, char **argv);

/* Prints "PROG: <message>" and a pointer to -h, exits CMD_EXIT_USAGE. */
void cmd_usage_error(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/* A ckt_passphrase_cb: the first line of `passfile` if set, else
 * $CKT_PASSPHRASE, else the terminal (echo off; a new passphrase is asked
 * twice).  With none of them it says so in one sentence. */
typedef struct cmd_pass_source {
  const char *prog;
  const char *passfile;
} cmd_pass_source;

int cmd_passphrase(void *user, const char *what, int confirm, char *buf,
                   size_t bufsize);

/* Blocks SIGINT and SIGTERM in the calling thread and in the threads it
 * starts afterwards; call before starting a node. */
void cmd_block_signals(void);
/* Waits for SIGINT/SIGTERM (blocked by cmd_block_signals()) for at most
 * timeout_ms (0: forever).  Returns 1 if a signal came, 0 on timeout. */
int cmd_wait_signal(unsigned long timeout_ms);

/* Node options every networked tool takes, filled by cmd_node_flags() and
 * turned into a ckt_node_config by cmd_node_config(). */
typedef struct cmd_node_opts {
  const char *certs, *identity, *ca, *passfile, *known_clients, *known_servers;
  const char *psk;
  int aes, skip_verify;
  unsigned long idle_ms, max_msg;
  cmd_pass_source pass;
} cmd_node_opts;

/* Writes the node flags (-certs, -k, -ca, -known-clients, -known-servers,
 * -psk, -passfile, -aes, -skip-verify, -idle, -max-msg) bound to o into out
 * (room for CMD_NODE_NFLAGS) and returns their count.  identity_help names
 * the default identity. */
#define CMD_NODE_NFLAGS 11
size_t cmd_node_flags(cmd_node_opts *o, const char *identity_help,
                      cmd_flag *out);

struct ckt_node_config;
void cmd_node_config(cmd_node_opts *o, const char *prog,
                     struct ckt_node_config *cfg);

/* Keeps the buffers of bulk transfers (256 KiB .. 1 MiB, allocated and
 * freed at a high rate by several threads) in malloc's arenas: glibc's
 * defaults map and unmap each one (a page fault per 4 KiB, on both sides,
 * until its dynamic threshold catches up) and hand freed memory back to
 * the kernel at once.  Call first thing in main(). */
void cmd_tune_malloc(void);

/* Writes all of buf (retrying short writes and EINTR), or returns -1
 * with errno set. */
int cmd_write_all(int fd, const void *buf, size_t len);

/* Exit codes shared by the networked tools. */
enum {
  CMD_EXIT_FAIL = 1,
  CMD_EXIT_AUTH = 3,
  CMD_EXIT_NET = 4,
  CMD_EXIT_IO = 5
};
/* Maps a ckt error to one of those exit codes. */
int cmd_exit_code(int err);

#endif
