/*
 * jsync.h — sync files and trees between two ckt nodes: what jcp and jsrv
 * are made of.
 *
 * One symmetric peer service, "jsync": the same code sends or receives,
 * whichever side dialed.  A session is a control circuit (the file list,
 * per-file results, the end) and 1..16 data circuits (requests and file
 * data), all between the client's peer and the server's one.  The
 * receiver decides what it lacks: new files travel whole; changed files
 * travel as the chunks the receiver has nowhere (docs/architecture.md,
 * "jsync"); every file is written beside its destination and renamed over
 * it only after its whole-file hash matched.
 *
 * Threading: every function here blocks and must not be called on the
 * node's loop thread.  A session uses its own threads (one per data
 * circuit) and calls the callbacks in jsync_opts from any of them, one
 * call at a time.
 */
#ifndef JSYNC_H
#define JSYNC_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/node.h"

/* Session results, besides ckt's own codes (CKT_ERR_CONNECTION,
 * CKT_ERR_TLS, CKT_ERR_TIMEOUT, CKT_ERR_NOMEM, ...). */
enum {
  JSYNC_ERR_FILES = -100,   /* the session ran but some files failed */
  JSYNC_ERR_REFUSED = -101, /* the other side refused the session (bad
                               path, read-only server, limits): why says */
  JSYNC_ERR_LOCAL = -102,   /* a local path could not be used */
  JSYNC_ERR_PROTOCOL = -103 /* the other side broke the protocol */
};

/* The default UDP port of jsrv (and jcp's -p). */
#define JSYNC_DEFAULT_PORT 8425

/* Live counters for a progress display: written by the session with
 * relaxed atomics, readable from any thread while it runs. */
typedef struct jsync_live {
  uint64_t files_total; /* entries in the file list so far */
  uint64_t files_done;  /* regular files finished (changed or not) */
  uint64_t bytes_total; /* bytes of the files that travel (receiver) */
  uint64_t bytes_done;  /* bytes written or read for them so far */
  int list_done;        /* the file list is complete */
} jsync_live;

typedef struct jsync_opts {
  uint32_t flags;    /* JSYNC_F_* from jsync_wire.h */
  unsigned circuits; /* data circuits (1..16; 0: 4) */
  int zstd_level;    /* compression of data that travels; 0: 1 */
  const char *const *excludes;
  size_t nexcludes;
  /* Each changed path, one line ("created a/b", "deleting c", ...), when
   * set; for -v.  Runs on the client's side only. */
  void (*log)(void *user, const char *line);
  /* Warnings (files that failed, skipped special files). */
  void (*warn)(void *user, const char *line);
  void *user;
  jsync_live *live; /* may be NULL */
  int timeout_ms;   /* waiting for the server to answer; 0: 15 s */
} jsync_opts;

typedef struct jsync_stats {
  uint64_t files;       /* entries in the source list */
  uint64_t transferred; /* regular files whose contents were written */
  uint64_t literal;     /* bytes that travelled as file data */
  uint64_t matched;     /* bytes reused from the receiver's old files */
  uint64_t deleted;
  uint64_t failed; /* files that could not be synced */
  double elapsed_s;
} jsync_stats;

/* Pushes local sources to `dst` on the jsync server at host_port, or
 * pulls the server's sources into local `dst`.  A source ending in '/'
 * stands for its contents; otherwise it goes under dst when dst is an
 * existing directory (or several sources are given, or dst ends in '/'),
 * else it becomes dst.  Returns CKT_OK; JSYNC_ERR_FILES (stats say how
 * many failed; warn said which); JSYNC_ERR_REFUSED, JSYNC_ERR_LOCAL,
 * JSYNC_ERR_PROTOCOL; CKT_ERR_TLS (authentication); CKT_ERR_CONNECTION,
 * CKT_ERR_TIMEOUT, CKT_ERR_CLOSED (network); CKT_ERR_NOMEM.  why gets one
 * sentence for every error. */
int jsync_push(ckt_node *n, const char *host_port, const char *const *srcs,
               size_t nsrcs, const char *dst, const jsync_opts *o,
               jsync_stats *st, char *why, size_t why_sz);
int jsync_pull(ckt_node *n, const char *host_port, const char *const *srcs,
               size_t nsrcs, const char *dst, const jsync_opts *o,
               jsync_stats *st, char *why, size_t why_sz);

/* The server side: serves sessions beneath `root` (paths from clients are
 * relative to it; nothing outside it can be read or written, symlinks
 * included).  read_only refuses pushes.  log gets one line per session.
 * The node must be started and serving. */
typedef struct jsync_server jsync_server;
typedef struct jsync_server_opts {
  const char *root;
  int read_only;
  unsigned max_sessions; /* 0: 64 */
  void (*log)(void *user, const char *line);
  void *user;
} jsync_server_opts;

/* CKT_OK, JSYNC_ERR_LOCAL (root unusable; why says), CKT_ERR_NOMEM, or
 * the codes of ckt_tpeer_start(). */
int jsync_server_start(ckt_node *n, const jsync_server_opts *o,
                       jsync_server **out, char *why, size_t why_sz);
/* Ends running sessions (their circuits close, receivers keep what
 * arrived for a later run) and frees the server. */
void jsync_server_stop(jsync_server *s);

#endif
