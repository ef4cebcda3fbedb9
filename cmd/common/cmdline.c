/* cmdline.c — flags, help and passphrases for ckt's tools. */
#include "cmdline.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "ckt/error.h"
#include "ckt/node.h"

void cmd_usage_error(const char *prog, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: ", prog);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nRun '%s -h' for help.\n", prog);
  exit(CMD_EXIT_USAGE);
}

static void print_help(const cmd_spec *spec) {
  size_t i;
  printf("usage: %s %s\n\n%s\n\n", spec->prog, spec->synopsis,
         spec->description);
  for (i = 0; i < spec->nflags; ++i) {
    const cmd_flag *f = &spec->flags[i];
    char left[64];
    const char *h = f->help;
    snprintf(left, sizeof(left), "-%s%s%s", f->name, f->arg ? " " : "",
             f->arg ? f->arg : "");
    if (strlen(left) > 18) { /* too wide: the help starts a line below */
      printf("  %s\n", left);
      printf("  %-18s ", "");
    } else {
      printf("  %-18s ", left);
    }
    /* Continuation lines of the help text line up under the first. */
    while (*h) {
      const char *nl = strchr(h, '\n');
      size_t len = nl ? (size_t)(nl - h) : strlen(h);
      printf("%.*s\n", (int)len, h);
      if (!nl) {
        break;
      }
      h = nl + 1;
      printf("  %-18s ", "");
    }
  }
  printf("  %-18s show this help\n", "-h, -help");
  printf("\nEvery option also works with two dashes and as -name=value.\n");
  if (spec->footer) {
    printf("%s", spec->footer);
  }
}

static const cmd_flag *find_flag(const cmd_spec *spec, const char *name,
                                 size_t len) {
  size_t i;
  for (i = 0; i < spec->nflags; ++i) {
    if (strlen(spec->flags[i].name) == len &&
        strncmp(spec->flags[i].name, name, len) == 0) {
      return &spec->flags[i];
    }
  }
  return NULL;
}

int cmd_parse(const cmd_spec *spec, int argc, char **argv) {
  int i;
  for (i = 1; i < argc; ++i) {
    const char *a = argv[i], *name, *eq, *value;
    const cmd_flag *f;
    size_t len;
    if (a[0] != '-' || a[1] == 0) {
      return i; /* the first positional argument */
    }
    if (strcmp(a, "--") == 0) {
      return i + 1;
    }
    name = a + (a[1] == '-' ? 2 : 1);
    eq = strchr(name, '=');
    len = eq ? (size_t)(eq - name) : strlen(name);
    if ((len == 1 && name[0] == 'h') ||
        (len == 4 && strncmp(name, "help", 4) == 0)) {
      print_help(spec);
      exit(0);
    }
    f = find_flag(spec, name, len);
    if (!f) {
      cmd_usage_error(spec->prog, "unknown option '%s'.", a);
    }
    if (f->kind == CMD_BOOL) {
      if (eq) {
        cmd_usage_error(spec->prog, "option '-%s' takes no value.", f->name);
      }
      *(int *)f->dest = 1;
      continue;
    }
    if (eq) {
      value = eq + 1;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      cmd_usage_error(spec->prog, "option '-%s' needs a value.", f->name);
    }
    if (!*value) {
      cmd_usage_error(spec->prog, "option '-%s' needs a non-empty value.",
                      f->name);
    }
    if (f->kind == CMD_STRING) {
      *(const char **)f->dest = value;
    } else {
      char *end;
      unsigned long v;
      errno = 0;
      v = strtoul(value, &end, 10);
      if (errno || *end || value[0] == '-' || value[0] == '+' || v < f->min ||
          v > f->max) {
        cmd_usage_error(spec->prog,
                        "option '-%s' takes a whole number from %lu to %lu, "
                        "not '%s'.",
                        f->name, f->min, f->max, value);
      }
      *(unsigned long *)f->dest = v;
    }
  }
  return argc;
}

/* ---- passphrases -------------------------------------------------------- */

static int strip_newline(char *buf) {
  size_t n = strlen(buf);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) {
    buf[--n] = 0;
  }
  return (int)n;
}

static int read_tty_line(FILE *tty, const char *prompt, char *buf,
                         size_t bufsize) {
  struct termios old, quiet;
  int fd = fileno(tty), have_termios, n;
  char *got;

  /* Echo goes off before the prompt appears, so that an answer typed the
   * moment the prompt shows is neither echoed nor lost (TCSAFLUSH would
   * drop it). */
  have_termios = tcgetattr(fd, &old) == 0;
  if (have_termios) {
    quiet = old;
    quiet.c_lflag &= (tcflag_t) ~(ECHO | ECHONL);
    quiet.c_lflag |= ICANON;
    tcsetattr(fd, TCSANOW, &quiet);
  }
  fprintf(tty, "%s", prompt);
  fflush(tty);
  got = fgets(buf, (int)bufsize, tty);
  if (have_termios) {
    tcsetattr(fd, TCSANOW, &old);
  }
  fprintf(tty, "\n");
  if (!got) {
    return CKT_ERR_CANCELED;
  }
  n = strip_newline(buf);
  return n;
}

int cmd_passphrase(void *user, const char *what, int confirm, char *buf,
                   size_t bufsize) {
  cmd_pass_source *src = user;
  const char *env = getenv("CKT_PASSPHRASE");
  char again[1024], prompt[PATH_MAX + 64];
  FILE *tty;
  int n, tries;

  if (src->passfile) {
    FILE *f = fopen(src->passfile, "r");
    if (!f) {
      fprintf(stderr, "%s: cannot read the passphrase file %s: %s.\n",
              src->prog, src->passfile, strerror(errno));
      return CKT_ERR_CANCELED;
    }
    buf[0] = 0;
    if (!fgets(buf, (int)bufsize, f)) {
      buf[0] = 0;
    }
    fclose(f);
    n = strip_newline(buf);
    if (n == 0) {
      fprintf(stderr, "%s: the passphrase file %s is empty.\n", src->prog,
              src->passfile);
      return CKT_ERR_CANCELED;
    }
    return n;
  }
  if (env && *env) {
    n = snprintf(buf, bufsize, "%s", env);
    return n >= 0 && (size_t)n < bufsize ? n : CKT_ERR_INVALID_ARGUMENT;
  }
  tty = fopen("/dev/tty", "r+");
  if (!tty) {
    fprintf(stderr,
            "%s: no terminal to ask for the passphrase of %s; set "
            "CKT_PASSPHRASE or use -passfile FILE.\n",
            src->prog, what);
    return CKT_ERR_CANCELED;
  }
  for (tries = 0; tries < 3; ++tries) {
    snprintf(prompt, sizeof(prompt),
             "%s for %s: ", confirm ? "New passphrase" : "Passphrase", what);
    n = read_tty_line(tty, prompt, buf, bufsize);
    if (n < 0) {
      break;
    }
    if (n == 0) {
      fprintf(tty, "An empty passphrase is not allowed (use -nopass for a "
                   "plain key).\n");
      continue;
    }
    if (!confirm) {
      fclose(tty);
      return n;
    }
    if (read_tty_line(tty, "Repeat it: ", again, sizeof(again)) < 0) {
      n = CKT_ERR_CANCELED;
      break;
    }
    if (strcmp(again, buf) == 0) {
      memset(again, 0, sizeof(again));
      fclose(tty);
      return n;
    }
    fprintf(tty, "The passphrases differ; try again.\n");
  }
  memset(again, 0, sizeof(again));
  fclose(tty);
  return CKT_ERR_CANCELED;
}

/* ---- reporting -------------------------------------------------------- */

/* One sentence saying what went wrong with `path` and what to do. */

/* ---- signals and node options ------------------------------------------- */

static void stop_signals(sigset_t *set) {
  sigemptyset(set);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGTERM);
}

void cmd_block_signals(void) {
  sigset_t set;
  stop_signals(&set);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int cmd_wait_signal(unsigned long timeout_ms) {
  sigset_t set;
  struct timespec ts;
  int sig;
  stop_signals(&set);
  if (timeout_ms == 0) {
    return sigwait(&set, &sig) == 0;
  }
  ts.tv_sec = (time_t)(timeout_ms / 1000);
  ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
  do {
    sig = sigtimedwait(&set, NULL, &ts);
  } while (sig < 0 && errno == EINTR);
  return sig > 0;
}

size_t cmd_node_flags(cmd_node_opts *o, const char *identity_help,
                      cmd_flag *out) {
  const cmd_flag flags[CMD_NODE_NFLAGS] = {
      {"certs", CMD_STRING, &o->certs, 0, 0, "DIR",
       "identities in selfy's layout (default: CONFIG/certs)"},
      {"k", CMD_STRING, &o->identity, 0, 0, "NAME", identity_help},
      {"ca", CMD_STRING, &o->ca, 0, 0, "FILE",
       "CA certificate peers must be signed by (default:\nDIR/ca.crt)"},
      {"known-clients", CMD_STRING, &o->known_clients, 0, 0, "FILE",
       "known client keys, checked when accepting (default:\n"
       "DIR/known_client_keys): absent: off; writable: new\n"
       "keys are recorded; read-only: only listed keys pass"},
      {"known-servers", CMD_STRING, &o->known_servers, 0, 0, "FILE",
       "known server keys, checked when dialing (default:\n"
       "DIR/known_server_keys), the same rules"},
      {"psk", CMD_STRING, &o->psk, 0, 0, "FILE",
       "pre-shared key (selfy -gensym): peers must hold the\n"
       "same file; every frame is sealed with it"},
      {"passfile", CMD_STRING, &o->passfile, 0, 0, "FILE",
       "passphrase of an encrypted key (else $CKT_PASSPHRASE\nor the "
       "terminal)"},
      {"aes", CMD_BOOL, &o->aes, 0, 0, NULL,
       "TLS_AES_128_GCM_SHA256 instead of ChaCha20-Poly1305"},
      {"skip-verify", CMD_BOOL, &o->skip_verify, 0, 0, NULL,
       "INSECURE: do not check peers' certificates against\nthe CA"},
      {"idle", CMD_UINT, &o->idle_ms, 100, 86400000ul, "MS",
       "declare a silent peer dead after MS ms (default 30000)"},
      {"max-msg", CMD_UINT, &o->max_msg, 1, 1024ul * 1024 * 1024, "BYTES",
       "largest message payload (default 16 MiB)"},
  };
  memcpy(out, flags, sizeof(flags));
  return CMD_NODE_NFLAGS;
}

void cmd_node_config(cmd_node_opts *o, const char *prog,
                     struct ckt_node_config *cfg) {
  cfg->cert_dir = o->certs;
  cfg->ca_file = o->ca;
  cfg->known_client_keys = o->known_clients;
  cfg->known_server_keys = o->known_servers;
  cfg->psk_file = o->psk;
  cfg->aes_gcm = o->aes;
  cfg->insecure_skip_verify = o->skip_verify;
  cfg->idle_timeout_ms = (uint32_t)o->idle_ms;
  cfg->max_message_size = o->max_msg;
  o->pass.prog = prog;
  o->pass.passfile = o->passfile;
  cfg->passphrase = cmd_passphrase;
  cfg->passphrase_user = &o->pass;
}

void cmd_tune_malloc(void) {
  (void)mallopt(M_MMAP_THRESHOLD, 8 * 1024 * 1024);
  (void)mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
}

int cmd_exit_code(int err) {
  switch (err) {
  case CKT_OK:
    return 0;
  case CKT_ERR_TLS:
  case CKT_ERR_PASSPHRASE:
  case CKT_ERR_PASSPHRASE_REQUIRED:
  case CKT_ERR_KEY_TYPE:
  case CKT_ERR_KEY_MISMATCH:
  case CKT_ERR_CERT_UNTRUSTED:
  case CKT_ERR_CERT_EXPIRED:
  case CKT_ERR_CERT_NOT_YET_VALID:
  case CKT_ERR_CERT_NOT_CA:
  case CKT_ERR_LOCKED_OUT: /* a read-only, empty known-keys file */
  case CKT_ERR_CANCELED:   /* no passphrase for a sealed key */
    return CMD_EXIT_AUTH;
  case CKT_ERR_IO:
  case CKT_ERR_NOT_FOUND:
  case CKT_ERR_FORMAT:
    return CMD_EXIT_IO;
  case CKT_ERR_CONNECTION:
  case CKT_ERR_TIMEOUT:
  case CKT_ERR_CLOSED:
    return CMD_EXIT_NET;
  default:
    return CMD_EXIT_FAIL;
  }
}

int cmd_write_all(int fd, const void *buf, size_t len) {
  const unsigned char *p = buf;
  while (len > 0) {
    ssize_t k = write(fd, p, len);
    if (k < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }
    p += k;
    len -= (size_t)k;
  }
  return 0;
}
