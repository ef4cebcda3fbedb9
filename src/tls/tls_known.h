/*
 * tls_known.h — known keys: trust on first use, or lockdown.
 *
 * A node may keep a file of the peer keys it has seen: known_client_keys
 * (checked when it accepts a connection) and known_server_keys (checked
 * when it dials).  What the file's state at the moment of a handshake
 * means:
 *
 *   absent      nothing is checked or recorded;
 *   writable    (any write bit set) trust on first use: a new key that
 *               passed the CA check is appended, and accepted;
 *   read-only   (no write bit for anyone: mode & 0222 == 0) lockdown: a
 *               key the file does not list is refused during the
 *               handshake.
 *
 * The decision reads the permission bits, not access(W_OK): root may write
 * any file, and lockdown must hold for root too.  The file is stat()ed at
 * every check, so `chmod a-w` locks down a running node, and re-read when
 * its identity, size or mtime changed (another process appended).
 *
 * Format (one entry a line, fields separated by spaces or tabs; '#' starts
 * a comment line; docs/identity.md):
 *
 *   KEY HOST EMAIL FIRST-SEEN
 *   3f2a...(64 hex digits) 127.0.0.1:40123 alice@example.org
 * 2025-01-02T03:04:05Z
 *
 * Only KEY, the peer's raw Ed25519 public key, is required and decides;
 * the others are for people ('-' when unknown).  Bounded: CKT_KNOWN_MAX_FILE
 * bytes, CKT_KNOWN_MAX_LINE bytes a line, CKT_KNOWN_MAX_ENTRIES keys.
 *
 * The parser and the formatter do no I/O (fuzzed by
 * tests/fuzz/fuzz_known_keys.c); the store does the file work.
 */
#ifndef CKT_TLS_KNOWN_H
#define CKT_TLS_KNOWN_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "ckt/identity.h"

#define CKT_KNOWN_MAX_FILE (16u * 1024 * 1024)
#define CKT_KNOWN_MAX_LINE 1024
#define CKT_KNOWN_MAX_ENTRIES 100000
/* Longest HOST or EMAIL field. */
#define CKT_KNOWN_FIELD_MAX 255
/* "2025-01-02T03:04:05Z" and its NUL. */
#define CKT_KNOWN_TIME_LEN 21

/* One line of the file.  Empty strings stand for '-' (unknown). */
typedef struct ckt_known_entry {
  uint8_t key[CKT_ED25519_KEY_LEN];
  char host[CKT_KNOWN_FIELD_MAX + 1];
  char email[CKT_KNOWN_FIELD_MAX + 1];
  char seen[CKT_KNOWN_TIME_LEN]; /* first seen, RFC 3339 UTC */
} ckt_known_entry;

/* Where and why parsing stopped. */
typedef struct ckt_known_error {
  size_t line; /* 1-based; 0 when the whole input is at fault */
  char what[160];
} ckt_known_error;

/* Called for each entry, in file order (duplicates included); a nonzero
 * return stops the parse and is returned. */
typedef int (*ckt_known_entry_cb)(void *user, const ckt_known_entry *e);

/* Parses a whole file's text.  CKT_OK; CKT_ERR_FORMAT (a bad line: err
 * says which and why); CKT_ERR_TOO_LARGE (len > CKT_KNOWN_MAX_FILE, a line
 * longer than CKT_KNOWN_MAX_LINE, more than CKT_KNOWN_MAX_ENTRIES
 * entries); or the callback's return value.  err may be NULL. */
int ckt_known_parse(const char *text, size_t len, ckt_known_entry_cb cb,
                    void *user, ckt_known_error *err);

/* Writes e as one line, "\n" included, and a NUL.  Returns the line's
 * length, or CKT_ERR_INVALID_ARGUMENT (a field the parser would refuse),
 * CKT_ERR_TOO_LARGE (outsz too small; CKT_KNOWN_MAX_LINE + 2 is always
 * enough). */
int ckt_known_format(const ckt_known_entry *e, char *out, size_t outsz);

/* t as "2025-01-02T03:04:05Z".  CKT_OK, CKT_ERR_INVALID_ARGUMENT (a time
 * gmtime cannot express in four digits). */
int ckt_known_time(time_t t, char out[CKT_KNOWN_TIME_LEN]);

/* ---- the store: one file, checked at each handshake -------------------- */

typedef struct ckt_known ckt_known;

typedef struct ckt_known_config {
  const char *path;
  int clients; /* 1: the file holds client keys (we serve); 0: server keys */
  /* Refusals, recordings and file errors, one line each; NULL: stderr. */
  void (*log)(void *user, const char *line);
  void *log_user;
} ckt_known_config;

/* Opens the store and reads the file if it exists (a missing file is not
 * an error: the check is off until it appears).  Refuses what would make a
 * node useless or a trust file ignored:
 * CKT_OK; CKT_ERR_FORMAT, CKT_ERR_TOO_LARGE (the file: logged with its
 * line number); CKT_ERR_LOCKED_OUT (read-only with no key: no peer could
 * ever be accepted); CKT_ERR_IO (errno set: cannot stat or read it, or it
 * is not a regular file); CKT_ERR_INVALID_ARGUMENT; CKT_ERR_NOMEM.  Every
 * error is logged with the file's name. */
int ckt_known_open(const ckt_known_config *cfg, ckt_known **out);
void ckt_known_free(ckt_known *k);

/* The peer of one handshake, after the CA check. */
typedef struct ckt_known_peer {
  const uint8_t *key; /* CKT_ED25519_KEY_LEN bytes */
  const char *host;   /* "ip:port" as seen; NULL: unknown */
  const char *email;  /* from the certificate; NULL or "": none */
  /* 0 in skip-verify mode: the key was not checked against the CA, so it
   * is compared but never recorded. */
  int verified;
  /* 1: a new key in a writable file is accepted but not recorded yet.
   * The TLS layer decides in the certificate callback, before the peer's
   * CertificateVerify proved it holds the private key, and calls again
   * with 0 once the handshake is complete: only then is a key recorded. */
  int defer_record;
} ckt_known_peer;

/* Decides whether the peer may pass, recording its key when the file is
 * writable and the key new.  CKT_OK: accepted.  CKT_ERR_TLS: refused (not
 * listed in lockdown, or the file is unreadable, corrupt, full or cannot
 * be appended to: failing closed); `why` gets one sentence for the peer
 * (no path, no key), and the details are logged.  Thread-safe (a mutex per
 * store; appends take flock(LOCK_EX), reads LOCK_SH). */
int ckt_known_check(ckt_known *k, const ckt_known_peer *p, char *why,
                    size_t whysz);

/* Number of distinct keys as of the last read (for tests and logs). */
size_t ckt_known_count(ckt_known *k);

#endif
