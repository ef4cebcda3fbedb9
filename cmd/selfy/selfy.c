/*
 * selfy — make a CA, Ed25519 identities and pre-shared keys; view and
 * verify certificates.  A thin command line over ckt/identity.h.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ckt/ckt.h"
#include "cmdline.h"

typedef struct selfy {
  int make_ca;
  const char *key_name;
  const char *email;
  const char *out_dir;
  const char *private_dir;
  const char *view;
  const char *verify;
  const char *gensym;
  const char *passfile;
  int nopass;
  int version;
  unsigned long days;
  char config_dir[PATH_MAX];
  char default_out[PATH_MAX];
  char default_private[PATH_MAX];
} selfy;

/* snprintf that treats truncation as the fatal error it would be. */
static void format_path(char *out, size_t outsz, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void format_path(char *out, size_t outsz, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(out, outsz, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= outsz) {
    fprintf(stderr, "selfy: a path is longer than %zu bytes.\n", outsz - 1);
    exit(1);
  }
}

/* ---- configuration directory ----------------------------------------- */

static void config_dirs(selfy *s) {
  if (ckt_config_dir(s->config_dir, sizeof(s->config_dir)) != CKT_OK) {
    fprintf(stderr, "selfy: the configuration directory path is too long.\n");
    exit(1);
  }
  format_path(s->default_out, sizeof(s->default_out), "%s/certs",
              s->config_dir);
  format_path(s->default_private, sizeof(s->default_private),
              "%s/my-keep-private-dir", s->config_dir);
}

/* ---- passphrases ------------------------------------------------------ */

/* ---- reporting -------------------------------------------------------- */

/* One sentence saying what went wrong with `path` and what to do. */
static void report(const char *action, const char *path, int rv) {
  switch (rv) {
  case CKT_ERR_EXISTS:
    fprintf(stderr,
            "selfy: %s: %s already exists; selfy never overwrites it (move "
            "it away first).\n",
            action, path);
    break;
  case CKT_ERR_IO:
    fprintf(stderr, "selfy: %s: %s: %s.\n", action, path, strerror(errno));
    break;
  case CKT_ERR_NOT_FOUND:
    fprintf(stderr, "selfy: %s: %s does not exist.\n", action, path);
    break;
  case CKT_ERR_CANCELED:
    fprintf(stderr, "selfy: %s: no passphrase given; nothing was written.\n",
            action);
    break;
  case CKT_ERR_PASSPHRASE:
    fprintf(stderr,
            "selfy: %s: wrong passphrase for %s (or the key file was "
            "altered).\n",
            action, path);
    break;
  case CKT_ERR_PASSPHRASE_REQUIRED:
    fprintf(stderr,
            "selfy: %s: %s is encrypted; drop -nopass so that selfy asks for "
            "its passphrase.\n",
            action, path);
    break;
  default:
    fprintf(stderr, "selfy: %s: %s: %s.\n", action, path, ckt_strerror(rv));
  }
}

static void default_email(const char *name, char *out, size_t outsz) {
  char host[256];
  out[0] = 0;
  if (gethostname(host, sizeof(host)) != 0) {
    snprintf(host, sizeof(host), "localhost");
  }
  host[sizeof(host) - 1] = 0;
  /* Certificate name fields hold at most 63 characters: skip a default
   * that does not fit rather than fail. */
  if (strlen(name) + 1 + strlen(host) < outsz) {
    format_path(out, outsz, "%s@%s", name, host);
  }
}

static void print_time(const char *label, int64_t t) {
  char buf[64];
  time_t tt = (time_t)t;
  struct tm tm;
  if (t && gmtime_r(&tt, &tm)) {
    strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  } else {
    snprintf(buf, sizeof(buf), "(unreadable)");
  }
  printf("  %-12s %s\n", label, buf);
}

static int do_view(const char *path) {
  ckt_cert_info info;
  char *pem;
  size_t len;
  char hex[3 * 32 + 1];
  int rv;
  time_t now = time(NULL);

  rv = ckt_pem_file_read(path, &pem, &len);
  if (rv == CKT_OK) {
    rv = ckt_cert_describe(pem, len, &info);
    ckt_free(pem);
  }
  if (rv != CKT_OK) {
    report("view", path, rv);
    return 1;
  }
  printf("certificate: %s\n", path);
  printf("  %-12s %s\n", "subject:", info.subject);
  printf("  %-12s %s\n", "issuer:", info.issuer);
  printf("  %-12s %s\n", "serial:", info.serial);
  print_time("not before:", info.not_before);
  print_time("not after:", info.not_after);
  printf("  %-12s %s\n", "status:",
         now < info.not_before  ? "not valid yet"
         : now > info.not_after ? "EXPIRED"
                                : "within its validity period");
  printf("  %-12s %s%s\n", "key type:", info.key_type,
         info.is_ed25519 ? "" : " (ckt accepts only Ed25519)");
  if (info.is_ed25519) {
    ckt_hex_format(hex, sizeof(hex), info.public_key, CKT_ED25519_KEY_LEN, 0);
    printf("  %-12s %s\n", "public key:", hex);
  }
  printf("  %-12s %s\n", "CA:", info.is_ca ? "yes" : "no");
  printf("  %-12s %s\n", "SANs:", info.sans[0] ? info.sans : "(none)");
  printf("  %-12s %s\n", "email:", info.email[0] ? info.email : "(none)");
  ckt_hex_format(hex, sizeof(hex), info.sha256, sizeof(info.sha256), ':');
  printf("  %-12s %s\n", "SHA-256:", hex);
  return 0;
}

static int do_verify(const selfy *s, const char *path) {
  char ca_path[PATH_MAX];
  char *ca = NULL, *pem = NULL;
  size_t ca_len = 0, len = 0;
  int rv;

  format_path(ca_path, sizeof(ca_path), "%s/ca.crt", s->private_dir);
  rv = ckt_pem_file_read(ca_path, &ca, &ca_len);
  if (rv == CKT_ERR_NOT_FOUND) {
    fprintf(stderr,
            "selfy: verify: no CA certificate at %s; point -p at the CA's "
            "directory.\n",
            ca_path);
    return 1;
  }
  if (rv != CKT_OK) {
    report("verify", ca_path, rv);
    return 1;
  }
  rv = ckt_pem_file_read(path, &pem, &len);
  if (rv != CKT_OK) {
    report("verify", path, rv);
    ckt_free(ca);
    return 1;
  }
  rv = ckt_cert_verify(ca, ca_len, pem, len);
  ckt_free(ca);
  ckt_free(pem);
  switch (rv) {
  case CKT_OK:
    printf("%s: OK, signed by the CA in %s\n", path, ca_path);
    return 0;
  case CKT_ERR_CERT_UNTRUSTED:
    fprintf(stderr, "selfy: verify: %s was NOT signed by the CA in %s.\n", path,
            ca_path);
    return 1;
  case CKT_ERR_CERT_NOT_CA:
    fprintf(stderr, "selfy: verify: %s is not a CA certificate.\n", ca_path);
    return 1;
  default:
    report("verify", path, rv);
    return 1;
  }
}

static int do_gensym(const selfy *s) {
  char path[PATH_MAX];
  int rv;
  if (strchr(s->gensym, '/')) {
    format_path(path, sizeof(path), "%s", s->gensym);
  } else {
    format_path(path, sizeof(path), "%s/%s", s->private_dir, s->gensym);
  }
  rv = ckt_psk_create(path);
  if (rv != CKT_OK) {
    report("gensym", path, rv);
    return 1;
  }
  printf("wrote a new %d-byte pre-shared key to %s\n", CKT_PSK_LEN, path);
  return 0;
}

static void fill_options(const selfy *s, ckt_identity_options *o,
                         cmd_pass_source *src) {
  memset(o, 0, sizeof(*o));
  o->cert.valid_days = (uint32_t)s->days;
  o->cert.email = s->email;
  src->prog = "selfy";
  src->passfile = s->passfile;
  if (!s->nopass) {
    o->passphrase = cmd_passphrase;
    o->passphrase_user = src;
  }
}

static int do_ca(const selfy *s) {
  ckt_identity_options o;
  cmd_pass_source src;
  int rv;
  fill_options(s, &o, &src);
  rv = ckt_identity_make_ca(s->private_dir, &o);
  if (rv != CKT_OK) {
    report("create CA", s->private_dir, rv);
    return 1;
  }
  printf("created CA %s/ca.crt and its key %s/ca.key%s; keep that "
         "directory private\n",
         s->private_dir, s->private_dir, s->nopass ? " (unencrypted)" : "");
  return 0;
}

static int do_key(const selfy *s) {
  ckt_identity_options o;
  cmd_pass_source src;
  char email[64];
  int rv, ca_created = 0;

  fill_options(s, &o, &src);
  if (!s->email) {
    default_email(s->key_name, email, sizeof(email));
    o.cert.email = email[0] ? email : NULL;
  }
  rv = ckt_identity_make(s->out_dir, s->key_name, s->private_dir, &o,
                         &ca_created);
  if (ca_created) {
    printf("created CA %s/ca.crt (no CA was there); keep that directory "
           "private\n",
           s->private_dir);
  }
  if (rv != CKT_OK) {
    char what[PATH_MAX];
    format_path(what, sizeof(what), "%s/%s.{crt,key}", s->out_dir, s->key_name);
    if (rv == CKT_ERR_PASSPHRASE || rv == CKT_ERR_PASSPHRASE_REQUIRED) {
      format_path(what, sizeof(what), "%s/ca.key", s->private_dir);
    }
    report("create identity", what, rv);
    return 1;
  }
  printf("created %s/%s.crt and %s/%s.key%s\n", s->out_dir, s->key_name,
         s->out_dir, s->key_name, s->nopass ? " (unencrypted)" : "");
  return 0;
}

/* ---- command line ------------------------------------------------------ */

static const char description[] =
    "Make Ed25519 certificates for ckt, view and verify them.";

static const char footer[] =
    "\nCONFIG is $CKT_CONFIG_DIR, else $XDG_CONFIG_HOME/ckt, else "
    "~/.config/ckt.\n"
    "Private keys are encrypted with a passphrase (Argon2id + "
    "XChaCha20-Poly1305)\nread from the terminal, from -passfile, or from "
    "$CKT_PASSPHRASE.\nselfy never overwrites an existing CA, key or file.\n";

static void parse_args(selfy *s, int argc, char **argv) {
  const cmd_flag flags[] = {
      {"ca", CMD_BOOL, &s->make_ca, 0, 0, NULL,
       "create a new self-signed CA (ca.crt, ca.key) in the -p directory"},
      {"k", CMD_STRING, &s->key_name, 0, 0, "NAME",
       "create the identity NAME (NAME.crt, NAME.key) in the -o\n"
       "directory, signed by the CA; the CA is created first when\n"
       "the -p directory has none"},
      {"e", CMD_STRING, &s->email, 0, 0, "EMAIL",
       "email to write into the certificate (default for -k:\n"
       "NAME@host)"},
      {"o", CMD_STRING, &s->out_dir, 0, 0, "DIR",
       "where identities go (default: CONFIG/certs)"},
      {"p", CMD_STRING, &s->private_dir, 0, 0, "DIR",
       "where the CA lives (default: CONFIG/my-keep-private-dir)"},
      {"days", CMD_UINT, &s->days, 1, CKT_CERT_MAX_DAYS, "N",
       "validity of new certificates in days (default 3650)"},
      {"nopass", CMD_BOOL, &s->nopass, 0, 0, NULL,
       "write private keys unencrypted (not recommended)"},
      {"passfile", CMD_STRING, &s->passfile, 0, 0, "FILE",
       "read the passphrase from the first line of FILE"},
      {"v", CMD_STRING, &s->view, 0, 0, "CRT",
       "print the fields of a certificate"},
      {"verify", CMD_STRING, &s->verify, 0, 0, "CRT",
       "exit 0 if the CA in -p signed CRT and it is valid now"},
      {"gensym", CMD_STRING, &s->gensym, 0, 0, "FILE",
       "write a new 32-byte random pre-shared key to FILE (a bare\n"
       "name goes into the -p directory)"},
      {"version", CMD_BOOL, &s->version, 0, 0, NULL, "print the version"},
  };
  const cmd_spec spec = {"selfy",
                         "[options]",
                         description,
                         flags,
                         sizeof(flags) / sizeof(flags[0]),
                         footer};
  int first = cmd_parse(&spec, argc, argv);
  if (first < argc) {
    cmd_usage_error("selfy", "unexpected argument '%s'.", argv[first]);
  }
}

int main(int argc, char **argv) {
  selfy s;
  int failed = 0;

  memset(&s, 0, sizeof(s));
  config_dirs(&s);
  parse_args(&s, argc, argv);
  if (s.version) {
    printf("selfy (ckt) %s\n", CKT_VERSION_STRING);
    return 0;
  }
  if (!s.out_dir) {
    s.out_dir = s.default_out;
  }
  if (!s.private_dir) {
    s.private_dir = s.default_private;
  }
  if (!s.make_ca && !s.key_name && !s.view && !s.verify && !s.gensym) {
    cmd_usage_error("selfy",
                    "nothing to do: give -ca, -k NAME, -v CRT, -verify CRT or "
                    "-gensym FILE.");
  }
  if (s.nopass && s.passfile) {
    cmd_usage_error("selfy", "-nopass and -passfile contradict each other.");
  }
  /* Each action runs in a fixed order; the first failure stops the rest. */
  if (s.make_ca) {
    failed = do_ca(&s);
  }
  if (!failed && s.key_name) {
    failed = do_key(&s);
  }
  if (!failed && s.gensym) {
    failed = do_gensym(&s);
  }
  if (!failed && s.view) {
    failed = do_view(s.view);
  }
  if (!failed && s.verify) {
    failed = do_verify(&s, s.verify);
  }
  return failed ? 1 : 0;
}
