/*
 * test_known.c — known keys (trust on first use / lockdown): the file
 * format's parser and formatter, the store on real files, and nodes over
 * real UDP on loopback that record, accept and refuse peers by their keys.
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckt/ckt.h"
#include "ckt/sim.h"
#include "test_logbuf.h"
#include "tls_known.h"
#include "tls_quic.h"

/* ---- fixtures: CA "a" (node, client, stranger), CA "b" (node, client),
 * and "d" (node, client) for the default file locations ----------------- */

static char root[] = "/tmp/ckt-test-known-XXXXXX";

static void make_pki(const char *name, const char *const *ids) {
  char certs[400], priv[400], email[64];
  ckt_identity_options io;
  snprintf(certs, sizeof(certs), "%s/%s/certs", root, name);
  snprintf(priv, sizeof(priv), "%s/%s/private", root, name);
  for (; *ids; ++ids) {
    /* Emails say whose job a connection is: recorded with the key. */
    memset(&io, 0, sizeof(io));
    snprintf(email, sizeof(email), "%s@%s.example.org", *ids, name);
    io.cert.email = email;
    if (ckt_identity_make(certs, *ids, priv, &io, NULL) != CKT_OK) {
      fprintf(stderr, "test_known: cannot make %s in %s\n", *ids, certs);
      exit(1);
    }
  }
}

ReportHook(PRE_ALL)(struct criterion_test_set *set) {
  static const char *const abc[] = {"node", "client", "stranger", NULL};
  static const char *const two[] = {"node", "client", NULL};
  (void)set;
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    exit(1);
  }
  make_pki("a", abc);
  make_pki("b", two);
  make_pki("d", two);
  setenv("CKT_TEST_KNOWN_ROOT", root, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
  char cmd[400];
  (void)stats;
  snprintf(cmd, sizeof(cmd), "chmod -R u+w '%s'; rm -rf '%s'", root, root);
  if (system(cmd) != 0) {
    fprintf(stderr, "test_known: cannot remove %s\n", root);
  }
}

/* ---- helpers ------------------------------------------------------------- */

/* root/<rel>, with the root the parent process made (tests run forked). */
static const char *path_of(const char *rel, char *buf, size_t size) {
  snprintf(buf, size, "%s/%s", getenv("CKT_TEST_KNOWN_ROOT"), rel);
  return buf;
}

static void certs_of(const char *pki, char *buf, size_t size) {
  char rel[64];
  snprintf(rel, sizeof(rel), "%s/certs", pki);
  path_of(rel, buf, size);
}

/* The Ed25519 key (hex) and email of identity `name` of pki. */
static void identity_key(const char *pki, const char *name, char hex[65],
                         char *email, size_t email_sz) {
  char rel[128], path[400], *pem;
  ckt_cert_info info;
  size_t len;
  snprintf(rel, sizeof(rel), "%s/certs/%s.crt", pki, name);
  cr_assert_eq(ckt_pem_file_read(path_of(rel, path, sizeof(path)), &pem, &len),
               CKT_OK);
  cr_assert_eq(ckt_cert_describe(pem, len, &info), CKT_OK);
  ckt_hex_format(hex, 65, info.public_key, 32, 0);
  if (email) {
    snprintf(email, email_sz, "%s", info.email);
  }
  ckt_free(pem);
}

static void write_file(const char *path, const char *text, mode_t mode) {
  FILE *f;
  chmod(path, 0600); /* a rewrite in a test, never by the library */
  f = fopen(path, "w");
  cr_assert_not_null(f, "%s: %s", path, strerror(errno));
  fputs(text, f);
  cr_assert_eq(fclose(f), 0);
  cr_assert_eq(chmod(path, mode), 0);
}

static char *read_text(const char *path) {
  static char buf[65536];
  FILE *f = fopen(path, "r");
  size_t n;
  cr_assert_not_null(f, "%s: %s", path, strerror(errno));
  n = fread(buf, 1, sizeof(buf) - 1, f);
  buf[n] = 0;
  fclose(f);
  return buf;
}

static int count_lines_with(const char *path, const char *needle) {
  const char *p = read_text(path);
  int n = 0;
  while ((p = strstr(p, needle)) != NULL) {
    ++n;
    p += strlen(needle);
  }
  return n;
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

typedef struct node_opts {
  const char *pki;      /* "a" (default), "b", "d" */
  const char *identity; /* client identity; NULL: "client" */
  int serve, skip_verify;
  const char *known_clients, *known_servers;
  logbuf *log;
} node_opts;

static int new_node(const node_opts *o, ckt_node **out) {
  char certs[400];
  ckt_node_config cfg;
  certs_of(o->pki ? o->pki : "a", certs, sizeof(certs));
  ckt_node_config_init(&cfg);
  cfg.listen = "127.0.0.1:0";
  cfg.serve = o->serve;
  cfg.cert_dir = certs;
  cfg.client_name = o->identity;
  cfg.insecure_skip_verify = o->skip_verify;
  cfg.known_client_keys = o->known_clients;
  cfg.known_server_keys = o->known_servers;
  cfg.call_timeout_ms = 5000;
  if (o->log) {
    cfg.log = log_line;
    cfg.log_user = o->log;
  }
  return ckt_node_new(&cfg, out);
}

static ckt_node *start_node(const node_opts *o, char *addr, size_t addr_sz) {
  ckt_node *n;
  int rv = new_node(o, &n);
  cr_assert_eq(rv, CKT_OK, "ckt_node_new: %s", ckt_strerror(rv));
  cr_assert_eq(ckt_node_start(n), CKT_OK);
  if (addr) {
    ckt_node_address(n, addr, addr_sz);
  }
  return n;
}

static int echo(ckt_node *n, const ckt_message *req, ckt_message *reply,
                void *user) {
  (void)n, (void)user;
  return ckt_message_set_payload(reply, req->payload, req->payload_len) ==
                 CKT_OK
             ? 0
             : -1;
}

static ckt_node *start_server(const node_opts *o, char *addr, size_t sz) {
  ckt_node *n = start_node(o, addr, sz);
  cr_assert_eq(ckt_node_register_call(n, "echo", echo, NULL), CKT_OK);
  return n;
}

/* One call from a fresh client node (a new connection each time).
 * Returns the call's code; why gets the reply's error text. */
static int call_from(const node_opts *co, const char *saddr, char *why,
                     size_t why_sz) {
  ckt_node *cli = start_node(co, NULL, 0);
  ckt_message *req = ckt_message_new(), *reply = NULL;
  int rv;
  cr_assert_not_null(req);
  cr_assert_eq(ckt_message_set_service(req, "echo"), CKT_OK);
  cr_assert_eq(ckt_message_set_payload(req, "hi", 2), CKT_OK);
  rv = ckt_node_call(cli, saddr, req, 5000, &reply);
  if (why) {
    snprintf(why, why_sz, "%s", reply && reply->err ? reply->err : "");
  }
  ckt_message_free(reply);
  ckt_node_free(cli);
  return rv;
}

/* ---- the format ---------------------------------------------------------- */

#define KEY_A "3f2a000000000000000000000000000000000000000000000000000000000001"
#define KEY_B "3F2A0000000000000000000000000000000000000000000000000000000000FF"

typedef struct entries {
  ckt_known_entry e[16];
  int n;
} entries;

static int collect(void *user, const ckt_known_entry *e) {
  entries *l = user;
  cr_assert_lt(l->n, 16);
  l->e[l->n++] = *e;
  return 0;
}

Test(known, parse_format_round_trip) {
  const char *text = "# ckt known client keys\n"
                     "\n"
                     "   # an indented comment: anything goes \x01\xff\n" KEY_A
                     " 127.0.0.1:5555 alice@example.org 2025-01-02T03:04:05Z\n"
                     "\t" KEY_B "\r\n" /* key only, upper case, CRLF */
      KEY_A "  [::1]:7100\t-   -  \n" KEY_B
                     " - bob@x 1999-12-31T23:59:60Z"; /* no final newline */
  entries a = {.n = 0}, b = {.n = 0};
  char out[(CKT_KNOWN_MAX_LINE + 2) * 16], *p = out;
  ckt_known_error err;

  cr_assert_eq(ckt_known_parse(text, strlen(text), collect, &a, &err), CKT_OK,
               "line %zu: %s", err.line, err.what);
  cr_assert_eq(a.n, 4);
  cr_assert_eq(a.e[0].key[0], 0x3f);
  cr_assert_eq(a.e[0].key[31], 0x01);
  cr_assert_str_eq(a.e[0].host, "127.0.0.1:5555");
  cr_assert_str_eq(a.e[0].email, "alice@example.org");
  cr_assert_str_eq(a.e[0].seen, "2025-01-02T03:04:05Z");
  cr_assert_eq(a.e[1].key[31], 0xff);
  cr_assert_str_eq(a.e[1].host, "");
  cr_assert_str_eq(a.e[1].seen, "");
  cr_assert_str_eq(a.e[2].host, "[::1]:7100");
  cr_assert_str_eq(a.e[2].email, "");
  cr_assert_str_eq(a.e[3].email, "bob@x");

  for (int i = 0; i < a.n; ++i) {
    int n = ckt_known_format(&a.e[i], p, sizeof(out) - (size_t)(p - out));
    cr_assert_gt(n, 0);
    p += n;
  }
  cr_assert(strstr(out, KEY_A " 127.0.0.1:5555 alice@example.org "
                              "2025-01-02T03:04:05Z\n"),
            "%s", out);
  cr_assert(strstr(out, "3f2a0000000000000000000000000000000000000000000000000"
                        "000000000ff - - -\n"),
            "lower-case key, '-' for unknown fields: %s", out);
  cr_assert_eq(ckt_known_parse(out, strlen(out), collect, &b, NULL), CKT_OK);
  cr_assert_eq(b.n, a.n);
  cr_assert_eq(memcmp(a.e, b.e, sizeof(a.e[0]) * (size_t)a.n), 0);
}

static void expect_bad(const char *text, int code, size_t line,
                       const char *what) {
  ckt_known_error err;
  int rv = ckt_known_parse(text, strlen(text), NULL, NULL, &err);
  cr_assert_eq(rv, code, "%s: got %d (%s)", text, rv, err.what);
  cr_assert_eq(err.line, line, "%s: line %zu", text, err.line);
  cr_assert(strstr(err.what, what), "%s: '%s' lacks '%s'", text, err.what,
            what);
}

Test(known, bad_lines_are_named) {
  static const char nul[] = KEY_A "\0 x\n";
  ckt_known_error err;
  expect_bad("# ok\n3f2a\n", CKT_ERR_FORMAT, 2, "64 hex digits");
  expect_bad(KEY_A "0\n", CKT_ERR_FORMAT, 1, "64 hex digits");
  expect_bad("\n\n" KEY_A "\n3f2a00000000000000000000000000000000000000000000"
             "000000000000000g\n",
             CKT_ERR_FORMAT, 4, "64 hex digits");
  expect_bad(KEY_A " h e 2025-01-02T03:04:05Z extra\n", CKT_ERR_FORMAT, 1,
             "more than four fields");
  expect_bad(KEY_A " h e 2025-13-02T03:04:05Z\n", CKT_ERR_FORMAT, 1,
             "first-seen time");
  expect_bad(KEY_A " h e 2025-01-02 03:04:05\n", CKT_ERR_FORMAT, 1,
             "more than four fields");
  expect_bad(KEY_A " h e yesterday\n", CKT_ERR_FORMAT, 1, "first-seen time");
  expect_bad(KEY_A " h\x7f e\n", CKT_ERR_FORMAT, 1, "not printable ASCII");
  expect_bad(KEY_A " h\re\n", CKT_ERR_FORMAT, 1, "not printable ASCII");
  expect_bad(KEY_A " h\xc3\xa9 e\n", CKT_ERR_FORMAT, 1, "not printable ASCII");
  cr_assert_eq(ckt_known_parse(nul, sizeof(nul) - 1, NULL, NULL, &err),
               CKT_ERR_FORMAT);
  cr_assert_eq(err.line, 1);
  cr_assert(strstr(err.what, "NUL byte"), "%s", err.what);
  {
    char line[600];
    char host[CKT_KNOWN_FIELD_MAX + 2];
    memset(host, 'h', sizeof(host) - 1);
    host[sizeof(host) - 1] = 0; /* one byte too many */
    snprintf(line, sizeof(line), "%s %s\n", KEY_A, host);
    expect_bad(line, CKT_ERR_FORMAT, 1, "host field is longer than 255");
    host[sizeof(host) - 2] = 0; /* exactly the limit */
    snprintf(line, sizeof(line), "%s - %s\n", KEY_A, host);
    cr_assert_eq(ckt_known_parse(line, strlen(line), NULL, NULL, NULL), CKT_OK);
  }
}

Test(known, limits_bound_the_parser) {
  size_t big = CKT_KNOWN_MAX_FILE + 1, i;
  char *text = malloc(big), line[CKT_KNOWN_MAX_LINE + 8];
  ckt_known_error err;
  size_t n;
  int rv;
  cr_assert_not_null(text);
  /* The whole file. */
  memset(text, '\n', big);
  cr_assert_eq(ckt_known_parse(text, big, NULL, NULL, &err), CKT_ERR_TOO_LARGE);
  cr_assert(strstr(err.what, "16 MiB"), "%s", err.what);
  /* One line: exactly the limit passes (a comment), one more byte fails. */
  memset(line, ' ', sizeof(line));
  line[0] = '#';
  cr_assert_eq(ckt_known_parse(line, CKT_KNOWN_MAX_LINE, NULL, NULL, &err),
               CKT_OK);
  memcpy(text, "#\n", 2);
  memcpy(text + 2, line, CKT_KNOWN_MAX_LINE + 1);
  cr_assert_eq(
      ckt_known_parse(text, 2 + CKT_KNOWN_MAX_LINE + 1, NULL, NULL, &err),
      CKT_ERR_TOO_LARGE);
  cr_assert_eq(err.line, 2);
  cr_assert(strstr(err.what, "longer than 1024 bytes"), "%s", err.what);
  /* Entries: CKT_KNOWN_MAX_ENTRIES pass, one more fails on its line. */
  for (i = 0, n = 0; i <= CKT_KNOWN_MAX_ENTRIES; ++i) {
    n += (size_t)snprintf(text + n, big - n, "%064zx\n", i);
  }
  rv = ckt_known_parse(text, n - 65, NULL, NULL, &err);
  cr_assert_eq(rv, CKT_OK, "%s", err.what);
  rv = ckt_known_parse(text, n, NULL, NULL, &err);
  cr_assert_eq(rv, CKT_ERR_TOO_LARGE);
  cr_assert_eq(err.line, CKT_KNOWN_MAX_ENTRIES + 1);
  cr_assert(strstr(err.what, "more than 100000 keys"), "%s", err.what);
  free(text);
}

Test(known, format_refuses_what_the_parser_would) {
  ckt_known_entry e;
  char out[CKT_KNOWN_MAX_LINE + 2], t[CKT_KNOWN_TIME_LEN];
  memset(&e, 0, sizeof(e));
  cr_assert_eq(ckt_known_format(&e, out, sizeof(out)), 64 + 7);
  cr_assert_eq(ckt_known_format(&e, out, 20), CKT_ERR_TOO_LARGE);
  snprintf(e.host, sizeof(e.host), "a b");
  cr_assert_eq(ckt_known_format(&e, out, sizeof(out)),
               CKT_ERR_INVALID_ARGUMENT);
  e.host[0] = 0;
  snprintf(e.email, sizeof(e.email), "x\ny");
  cr_assert_eq(ckt_known_format(&e, out, sizeof(out)),
               CKT_ERR_INVALID_ARGUMENT);
  e.email[0] = 0;
  snprintf(e.seen, sizeof(e.seen), "2025-01-02T03:04:05");
  cr_assert_eq(ckt_known_format(&e, out, sizeof(out)),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_known_time(0, t), CKT_OK);
  cr_assert_str_eq(t, "1970-01-01T00:00:00Z");
  cr_assert_eq(ckt_known_time(1735787045, t), CKT_OK);
  cr_assert_str_eq(t, "2025-01-02T03:04:05Z");
  cr_assert_str_eq(ckt_strerror(CKT_ERR_LOCKED_OUT),
                   "the known-keys file is read-only and lists no key: no "
                   "peer could ever be accepted");
}

Test(known, refusal_alert_has_its_own_sentences) {
  /* What a peer shows when a refusal arrives without a reason. */
  cr_assert_str_eq(ckt_tls_alert_text(CKT_TLS_ALERT_ACCESS_DENIED),
                   "the peer refused our key: it is not among its known keys "
                   "(lockdown)");
  cr_assert_str_eq(ckt_tls_refusal_text(CKT_TLS_ALERT_ACCESS_DENIED, 1),
                   "the client's key is not among our known keys");
  cr_assert_str_eq(ckt_tls_refusal_text(CKT_TLS_ALERT_ACCESS_DENIED, 0),
                   "the server's key is not among our known keys");
}

/* ---- the store on real files -------------------------------------------- */

static ckt_known *store_open(const char *path, logbuf *log, int *rv) {
  ckt_known_config kc;
  ckt_known *k = NULL;
  memset(&kc, 0, sizeof(kc));
  kc.path = path;
  kc.clients = 1;
  kc.log = log_line;
  kc.log_user = log;
  *rv = ckt_known_open(&kc, &k);
  return k;
}

Test(known, store_follows_the_file) {
  char path[400], why[192];
  uint8_t key1[32] = {1}, key2[32] = {2};
  ckt_known_peer p1 = {key1, "127.0.0.1:1", "one@x", 1, 0};
  ckt_known_peer p2 = {key2, "127.0.0.1:2", "", 1, 0};
  logbuf log;
  ckt_known *k;
  int rv;
  logbuf_init(&log);
  path_of("store_known", path, sizeof(path));

  /* Absent: everyone passes, nothing is created. */
  k = store_open(path, &log, &rv);
  cr_assert_eq(rv, CKT_OK);
  cr_assert_eq(ckt_known_check(k, &p1, why, sizeof(why)), CKT_OK);
  cr_assert(!file_exists(path));

  /* Appears, hand-written, without a final newline: TOFU appends below,
   * but not while the decision is deferred (the TLS layer decides before
   * the peer proved it holds the key, and records after). */
  write_file(path, "# mine\n" KEY_A, 0644);
  p1.defer_record = 1;
  cr_assert_eq(ckt_known_check(k, &p1, why, sizeof(why)), CKT_OK);
  cr_assert_eq(ckt_known_count(k), 1, "deferred: nothing recorded yet");
  cr_assert_eq(count_lines_with(path, "one@x"), 0);
  p1.defer_record = 0;
  cr_assert_eq(ckt_known_check(k, &p1, why, sizeof(why)), CKT_OK);
  cr_assert_eq(ckt_known_count(k), 2);
  cr_assert_eq(ckt_known_check(k, &p1, why, sizeof(why)), CKT_OK);
  cr_assert(strstr(read_text(path), KEY_A "\n0100000000"), "%s",
            read_text(path));
  cr_assert_eq(count_lines_with(path, " 127.0.0.1:1 one@x "), 1);

  /* Skip-verify: compared, never recorded. */
  p2.verified = 0;
  cr_assert_eq(ckt_known_check(k, &p2, why, sizeof(why)), CKT_OK);
  cr_assert_eq(ckt_known_count(k), 2);
  cr_assert(log_has(&log, "without recording it"), "%s", log.text);

  /* Read-only: lockdown, for root too. */
  cr_assert_eq(chmod(path, 0444), 0);
  cr_assert_eq(ckt_known_check(k, &p2, why, sizeof(why)), CKT_ERR_TLS);
  cr_assert(strstr(why, "not among our known keys (lockdown"), "%s", why);
  cr_assert_eq(ckt_known_check(k, &p1, why, sizeof(why)), CKT_OK);

  /* Another process adds p2 (the file changes size): reread. */
  {
    char hex[65], line[80];
    ckt_hex_format(hex, sizeof(hex), key2, 32, 0);
    snprintf(line, sizeof(line), "%s - - -\n", hex);
    write_file(path, line, 0444);
  }
  cr_assert_eq(ckt_known_check(k, &p2, why, sizeof(why)), CKT_OK);
  cr_assert_eq(ckt_known_check(k, &p1, why, sizeof(why)), CKT_ERR_TLS);

  /* Turned corrupt under a running node: fail closed, say where. */
  write_file(path, KEY_A "\nnot a key\n", 0644);
  cr_assert_eq(ckt_known_check(k, &p1, why, sizeof(why)), CKT_ERR_TLS);
  cr_assert(strstr(why, "could not be checked"), "%s", why);
  cr_assert(log_has(&log, "store_known, line 2: the key must be 64 hex"), "%s",
            log.text);
  ckt_known_free(k);
}

Test(known, store_refuses_to_open_useless_or_corrupt_files) {
  char path[400];
  logbuf log;
  int rv;
  logbuf_init(&log);
  path_of("store_open", path, sizeof(path));

  write_file(path, "# nothing yet\n\n", 0444);
  cr_assert_null(store_open(path, &log, &rv));
  cr_assert_eq(rv, CKT_ERR_LOCKED_OUT);
  cr_assert(log_has(&log, "store_open is read-only and empty: no client could "
                          "ever be accepted; add keys or make it writable"),
            "%s", log.text);

  write_file(path, "# ok\n" KEY_A "\n" KEY_A " h e 2025-01-02T03:04:05\n",
             0644);
  cr_assert_null(store_open(path, &log, &rv));
  cr_assert_eq(rv, CKT_ERR_FORMAT);
  cr_assert(log_has(&log, "store_open, line 3: the first-seen time"), "%s",
            log.text);

  cr_assert_eq(unlink(path), 0);
  cr_assert_eq(mkdir(path, 0700), 0);
  cr_assert_null(store_open(path, &log, &rv));
  cr_assert_eq(rv, CKT_ERR_IO);
  cr_assert(log_has(&log, "store_open is not a regular file"), "%s", log.text);
}

/* ---- nodes on loopback ----------------------------------------------------
 */

Test(known, absent_file_records_nothing) {
  char saddr[80], kc[400], ks[400], dflt[400];
  node_opts so = {.serve = 1}, co = {0};
  ckt_node *srv;
  so.known_clients = path_of("absent_clients", kc, sizeof(kc));
  co.known_servers = path_of("absent_servers", ks, sizeof(ks));
  srv = start_server(&so, saddr, sizeof(saddr));
  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);
  ckt_node_free(srv);
  cr_assert(!file_exists(kc));
  cr_assert(!file_exists(ks));
  /* The default locations, unused until created. */
  cr_assert(
      !file_exists(path_of("a/certs/known_client_keys", dflt, sizeof(dflt))));
  cr_assert(
      !file_exists(path_of("a/certs/known_server_keys", dflt, sizeof(dflt))));
}

Test(known, writable_file_records_the_first_client_once) {
  char saddr[80], kc[400], hex[65], email[128], want[256];
  logbuf slog;
  node_opts so = {.serve = 1, .log = &slog}, co = {0};
  const char *text;
  ckt_node *srv;
  logbuf_init(&slog);
  so.known_clients = path_of("tofu_clients", kc, sizeof(kc));
  write_file(kc, "", 0644);
  identity_key("a", "client", hex, email, sizeof(email));
  cr_assert_str_eq(email, "client@a.example.org");
  srv = start_server(&so, saddr, sizeof(saddr));
  cr_assert(log_has(&slog, "0 keys, trust on first use"), "%s", slog.text);

  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);
  text = read_text(kc);
  /* KEY HOST EMAIL FIRST-SEEN, the host as the server saw it. */
  snprintf(want, sizeof(want), "%s 127.0.0.1:", hex);
  cr_assert_eq(strncmp(text, want, strlen(want)), 0, "%s", text);
  snprintf(want, sizeof(want), " %s 20", email);
  cr_assert(strstr(text, want), "%s lacks '%s'", text, want);
  cr_assert_eq(strchr(text, '\n'), text + strlen(text) - 1, "one line: %s",
               text);
  snprintf(want, sizeof(want),
           "recorded new client key %s from 127.0.0.1:", hex);
  cr_assert(log_has(&slog, want), "%s", slog.text);

  /* A second connection with the same key: accepted, not appended. */
  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);
  cr_assert_eq(count_lines_with(kc, hex), 1, "%s", read_text(kc));
  ckt_node_free(srv);
  /* A restarted node reads what it recorded. */
  srv = start_server(&so, saddr, sizeof(saddr));
  cr_assert(log_has(&slog, "1 key, trust on first use"), "%s", slog.text);
  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);
  cr_assert_eq(count_lines_with(kc, hex), 1, "%s", read_text(kc));
  ckt_node_free(srv);
}

Test(known, read_only_file_with_the_key_accepts) {
  char saddr[80], kc[400], hex[65], line[128], before[4096];
  node_opts so = {.serve = 1}, co = {0};
  ckt_node *srv;
  so.known_clients = path_of("locked_with", kc, sizeof(kc));
  identity_key("a", "client", hex, NULL, 0);
  snprintf(line, sizeof(line), "# the one client\n%s\n", hex);
  write_file(kc, line, 0444);
  snprintf(before, sizeof(before), "%s", read_text(kc));
  srv = start_server(&so, saddr, sizeof(saddr));
  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);
  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);
  ckt_node_free(srv);
  cr_assert_str_eq(read_text(kc), before);
}

Test(known, read_only_file_without_the_key_refuses_in_the_handshake) {
  char saddr[80], kc[400], hex[65], other[65], line[128], before[4096],
      why[512], want[1200];
  logbuf slog;
  node_opts so = {.serve = 1, .log = &slog}, co = {0};
  ckt_node_stats st;
  ckt_node *srv;
  logbuf_init(&slog);
  so.known_clients = path_of("locked_without", kc, sizeof(kc));
  identity_key("a", "client", hex, NULL, 0);
  identity_key("a", "stranger", other, NULL, 0);
  snprintf(line, sizeof(line), "%s - - -\n", other);
  write_file(kc, line, 0444);
  snprintf(before, sizeof(before), "%s", read_text(kc));
  srv = start_server(&so, saddr, sizeof(saddr));
  cr_assert(log_has(&slog, "1 key, lockdown"), "%s", slog.text);

  cr_assert_eq(call_from(&co, saddr, why, sizeof(why)), CKT_ERR_TLS);
  /* The client hears why from the server... */
  cr_assert(strstr(why, "refused the TLS handshake: the client's key is not "
                        "among our known keys (lockdown"),
            "%s", why);
  /* ...the server's log names the key, the peer and the file... */
  snprintf(want, sizeof(want), "refused client key %s from 127.0.0.1:", hex);
  cr_assert(log_has(&slog, want), "%s", slog.text);
  snprintf(want, sizeof(want), "not in %s (locked down: the file is read-only)",
           kc);
  cr_assert(log_has(&slog, want), "%s", slog.text);
  /* ...no connection was ever up, and nothing was appended. */
  ckt_node_get_stats(srv, &st);
  cr_assert_eq(st.calls_served, 0);
  ckt_node_free(srv);
  cr_assert_str_eq(read_text(kc), before);
}

Test(known, chmod_a_minus_w_locks_down_a_running_node) {
  char saddr[80], kc[400], hex[65], other[65], why[512];
  logbuf slog;
  node_opts so = {.serve = 1, .log = &slog}, co = {0},
            stranger = {.identity = "stranger"};
  ckt_node *srv;
  logbuf_init(&slog);
  so.known_clients = path_of("tofu_then_locked", kc, sizeof(kc));
  write_file(kc, "# recorded by ckt\n", 0644);
  identity_key("a", "client", hex, NULL, 0);
  identity_key("a", "stranger", other, NULL, 0);
  srv = start_server(&so, saddr, sizeof(saddr));
  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);
  cr_assert_eq(count_lines_with(kc, hex), 1);

  cr_assert_eq(chmod(kc, 0444), 0);
  cr_assert_eq(call_from(&stranger, saddr, why, sizeof(why)), CKT_ERR_TLS);
  cr_assert(strstr(why, "lockdown"), "%s", why);
  cr_assert_eq(count_lines_with(kc, other), 0);
  /* The recorded client still gets in. */
  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);

  /* Writable again: the stranger is recorded and welcome. */
  cr_assert_eq(chmod(kc, 0600), 0);
  cr_assert_eq(call_from(&stranger, saddr, NULL, 0), CKT_OK);
  cr_assert_eq(count_lines_with(kc, other), 1);
  ckt_node_free(srv);
}

Test(known, read_only_empty_file_stops_the_node) {
  char kc[400], ks[400];
  logbuf log;
  node_opts so = {.serve = 1, .log = &log}, co = {.log = &log};
  ckt_node *n = NULL;
  logbuf_init(&log);
  so.known_clients = path_of("locked_empty", kc, sizeof(kc));
  write_file(kc, "# nobody\n", 0444);
  cr_assert_eq(new_node(&so, &n), CKT_ERR_LOCKED_OUT);
  cr_assert_null(n);
  cr_assert(log_has(&log, "is read-only and empty: no client could ever be "
                          "accepted; add keys or make it writable"),
            "%s", log.text);
  /* The same for a dialing node's server keys. */
  co.known_servers = path_of("locked_empty_servers", ks, sizeof(ks));
  write_file(ks, "", 0444);
  cr_assert_eq(new_node(&co, &n), CKT_ERR_LOCKED_OUT);
  cr_assert(log_has(&log, "no server could ever be accepted"), "%s", log.text);
}

Test(known, corrupt_file_stops_the_node_naming_file_and_line) {
  char kc[400], want[1200];
  logbuf log;
  node_opts so = {.serve = 1, .log = &log};
  ckt_node *n = NULL;
  logbuf_init(&log);
  so.known_clients = path_of("corrupt", kc, sizeof(kc));
  write_file(kc, "# fine\n" KEY_A " h e -\n" KEY_A "x\n", 0644);
  cr_assert_eq(new_node(&so, &n), CKT_ERR_FORMAT);
  snprintf(want, sizeof(want), "%s, line 3: the key must be 64 hex digits", kc);
  cr_assert(log_has(&log, want), "%s", log.text);
}

Test(known, client_side_lockdown_refuses_an_unknown_server) {
  char saddr[80], ks[400], hex[65], why[512], want[1200];
  logbuf slog, clog;
  node_opts so = {.serve = 1, .log = &slog}, co = {.log = &clog};
  ckt_node *srv;
  logbuf_init(&slog);
  logbuf_init(&clog);
  co.known_servers = path_of("client_servers", ks, sizeof(ks));
  identity_key("a", "node", hex, NULL, 0);
  srv = start_server(&so, saddr, sizeof(saddr));

  /* Trust on first use on the client side records the server. */
  write_file(ks, "", 0644);
  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);
  cr_assert_eq(count_lines_with(ks, hex), 1, "%s", read_text(ks));
  snprintf(want, sizeof(want), " %s ", saddr);
  cr_assert(strstr(read_text(ks), want), "host is the server's address: %s",
            read_text(ks));

  /* Lockdown on a list without this server: the client refuses it. */
  write_file(ks, KEY_A "\n", 0444);
  cr_assert_eq(call_from(&co, saddr, why, sizeof(why)), CKT_ERR_TLS);
  cr_assert(strstr(why, "the server's key is not among our known keys "
                        "(lockdown"),
            "%s", why);
  snprintf(want, sizeof(want), "refused server key %s from %s: not in %s", hex,
           saddr, ks);
  cr_assert(log_has(&clog, want), "%s", clog.text);
  ckt_node_free(srv);
  /* The server heard the client's refusal. */
  cr_assert(log_has(&slog, "refused the TLS handshake: the server's key is "
                           "not among our known keys"),
            "%s", slog.text);
}

Test(known, skip_verify_compares_but_never_records) {
  char saddr[80], kc[400], hex[65], why[512];
  logbuf slog;
  node_opts so = {.serve = 1, .skip_verify = 1, .log = &slog},
            foreign = {.pki = "b", .skip_verify = 1};
  ckt_node *srv;
  logbuf_init(&slog);
  so.known_clients = path_of("skip_verify", kc, sizeof(kc));
  write_file(kc, "", 0644);
  identity_key("b", "client", hex, NULL, 0);
  srv = start_server(&so, saddr, sizeof(saddr));
  /* A client of another CA passes the INSECURE server, unrecorded. */
  cr_assert_eq(call_from(&foreign, saddr, NULL, 0), CKT_OK);
  cr_assert_eq(count_lines_with(kc, hex), 0);
  cr_assert(log_has(&slog, "without recording it"), "%s", slog.text);
  /* Lockdown still holds in skip-verify mode. */
  write_file(kc, KEY_A "\n", 0444);
  cr_assert_eq(call_from(&foreign, saddr, why, sizeof(why)), CKT_ERR_TLS);
  cr_assert(strstr(why, "lockdown"), "%s", why);
  ckt_node_free(srv);
}

Test(known, default_files_live_in_the_certificate_directory) {
  char saddr[80], kc[400], hex[65];
  node_opts so = {.pki = "d", .serve = 1}, co = {.pki = "d"};
  ckt_node *srv;
  path_of("d/certs/known_client_keys", kc, sizeof(kc));
  write_file(kc, "", 0644);
  identity_key("d", "client", hex, NULL, 0);
  srv = start_server(&so, saddr, sizeof(saddr));
  cr_assert_eq(call_from(&co, saddr, NULL, 0), CKT_OK);
  ckt_node_free(srv);
  cr_assert_eq(count_lines_with(kc, hex), 1, "%s", read_text(kc));
  cr_assert_eq(unlink(kc), 0);
}

/* ---- simulated nodes ------------------------------------------------------
 */

typedef struct sim_call {
  int done, err;
  char why[512];
} sim_call;

static void sim_done(ckt_node *n, int err, const ckt_message *reply,
                     void *user) {
  sim_call *c = user;
  (void)n;
  c->done = 1;
  c->err = err;
  snprintf(c->why, sizeof(c->why), "%s", reply && reply->err ? reply->err : "");
}

static void quiet(void *user, const char *line) {
  (void)user, (void)line;
}

Test(known, simulated_nodes_use_only_files_named_explicitly) {
  char dir[450], kc[400], cfgdir[400], buf[500], saddr[80];
  ckt_sim *s;
  ckt_sim_host *h0, *h1;
  ckt_node *srv, *cli, *n = NULL;
  ckt_node_config cfg;
  ckt_message *req;
  sim_call c = {0};

  /* A configuration directory whose known keys would stop any node that
   * read them: built-in identities do not. */
  path_of("simcfg", cfgdir, sizeof(cfgdir));
  snprintf(dir, sizeof(dir), "%s/certs", cfgdir);
  cr_assert_eq(mkdir(cfgdir, 0700), 0);
  cr_assert_eq(mkdir(dir, 0700), 0);
  snprintf(buf, sizeof(buf), "%s/known_client_keys", dir);
  write_file(buf, "", 0444);
  setenv("CKT_CONFIG_DIR", cfgdir, 1);

  cr_assert_eq(ckt_sim_new(7, NULL, &s), CKT_OK);
  cr_assert_eq(ckt_sim_host_new(s, &h0), CKT_OK);
  cr_assert_eq(ckt_sim_host_new(s, &h1), CKT_OK);
  ckt_node_config_init(&cfg);
  cfg.serve = 1;
  cfg.log = quiet;
  cr_assert_eq(ckt_sim_node_new(h0, 7100, &cfg, &srv), CKT_OK);
  cr_assert_eq(ckt_node_register_call(srv, "echo", echo, NULL), CKT_OK);
  ckt_node_free(srv);

  /* Named explicitly: consulted (a read-only empty file stops it)... */
  cfg.known_client_keys = buf;
  cr_assert_eq(ckt_sim_node_new(h0, 7100, &cfg, &n), CKT_ERR_LOCKED_OUT);
  /* ...and a writable one records the simulated client. */
  path_of("sim_clients", kc, sizeof(kc));
  write_file(kc, "", 0644);
  cfg.known_client_keys = kc;
  cr_assert_eq(ckt_sim_node_new(h0, 7100, &cfg, &srv), CKT_OK);
  cr_assert_eq(ckt_node_register_call(srv, "echo", echo, NULL), CKT_OK);
  ckt_node_config_init(&cfg);
  cfg.log = quiet;
  cr_assert_eq(ckt_sim_node_new(h1, 7100, &cfg, &cli), CKT_OK);
  snprintf(saddr, sizeof(saddr), "%s:7100", ckt_sim_host_ip(h0));
  req = ckt_message_new();
  cr_assert_eq(ckt_message_set_service(req, "echo"), CKT_OK);
  cr_assert_eq(ckt_node_call_async(cli, saddr, req, 2000, sim_done, &c),
               CKT_OK);
  ckt_sim_run(s, 3ull * 1000 * 1000 * 1000);
  cr_assert(c.done);
  cr_assert_eq(c.err, CKT_OK, "%s", c.why);
  snprintf(buf, sizeof(buf), " %s:", ckt_sim_host_ip(h1));
  cr_assert(strstr(read_text(kc), buf), "%s", read_text(kc));

  /* Locked down on a list without that client: refused in the handshake. */
  write_file(kc, KEY_A "\n", 0444);
  ckt_node_free(cli);
  ckt_node_config_init(&cfg);
  cfg.log = quiet;
  cr_assert_eq(ckt_sim_node_new(h1, 7100, &cfg, &cli), CKT_OK);
  memset(&c, 0, sizeof(c));
  req = ckt_message_new();
  cr_assert_eq(ckt_message_set_service(req, "echo"), CKT_OK);
  cr_assert_eq(ckt_node_call_async(cli, saddr, req, 2000, sim_done, &c),
               CKT_OK);
  ckt_sim_run(s, ckt_sim_now(s) + 3ull * 1000 * 1000 * 1000);
  cr_assert(c.done);
  cr_assert_eq(c.err, CKT_ERR_TLS, "%d %s", c.err, c.why);
  cr_assert(strstr(c.why, "lockdown"), "%s", c.why);
  ckt_node_free(cli);
  ckt_node_free(srv);
  ckt_sim_free(s);
}
