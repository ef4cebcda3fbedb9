/*
 * jsync_int.h — what jsync's session files share: the session, its
 * failure state, sending helpers, and the two roles.
 */
#ifndef JSYNC_INT_H
#define JSYNC_INT_H

#include <pthread.h>
#include <stdint.h>

#include "ckt/peer.h"
#include "jsync.h"
#include "jsync_chunk.h"
#include "jsync_fs.h"
#include "jsync_wire.h"

enum { ROLE_SENDER = 1, ROLE_RECEIVER = 2 };

/* How often blocked threads look at the session's state, in ms. */
#define POLL_MS 250

/* How a session failed; decides jcp's exit code. */
enum {
  FAIL_NONE = 0,
  FAIL_NET,      /* a circuit closed under us */
  FAIL_AUTH,     /* the TLS handshake was refused */
  FAIL_REFUSED,  /* the other side refused the session */
  FAIL_PROTOCOL, /* malformed or unexpected messages */
  FAIL_LOCAL,    /* a local path could not be used */
  FAIL_NOMEM,
  FAIL_STOPPED /* the server is stopping */
};

/* One source of a sender: the walk starts at `rel` beneath `fd` ("" for
 * a directory's contents). */
typedef struct jsync_source {
  int fd;
  char *rel;
} jsync_source;

/* The sender's view of an entry it listed. */
typedef struct sent_entry {
  char *path;
  uint32_t src; /* index into sources */
  uint8_t type;
} sent_entry;

typedef struct jsync_sess {
  int role, is_client;
  uint32_t flags;
  int zlevel;
  const jsync_opts *opts; /* client only (callbacks, live counters) */
  jsync_excludes *ex;
  ckt_tcircuit *ctrl;
  ckt_tcircuit *data[JSYNC_WIRE_CIRCUITS_MAX];
  unsigned ndata;
  int stop; /* the server is stopping: give up */

  pthread_mutex_t mu;
  pthread_cond_t cv;
  int fail;
  char why[600];
  jsync_stats st;
  int finished; /* the role is over; threads wind down */

  /* sender */
  jsync_source *src;
  size_t nsrc;
  sent_entry *ents; /* by entry id; grows under mu */
  size_t nents, ents_cap;

  /* receiver: the destination and how wire paths map onto it */
  const char *dst; /* as given (local path or path beneath root) */
  int dst_beneath; /* dst is relative to root_fd (server) */
  int root_fd;     /* server root (dst_beneath) */
  int dst_fd;      /* where entries are put, after LIST_BEGIN */
  int rename_top;  /* the single top entry is renamed to dst's name */
  char top_from[256], top_to[256];
  void *recv; /* the receiver's own state (jsync_recv.c) */

  /* Called by the thread sending on the control circuit while it waits
   * for room there (the sender drains the receiver's results). */
  void (*ctrl_stalled)(struct jsync_sess *s);

  /* results queued for the sender (receiver on the server) */
  jsync_wbuf results;
  size_t nresults;
} jsync_sess;

/* Records the first failure (later ones are ignored) and wakes waiters.
 * Returns -1 for convenience. */
int sess_fail(jsync_sess *s, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int sess_failed(jsync_sess *s);
/* A circuit closed or an error fragment came: record why. */
int sess_fail_circuit(jsync_sess *s, ckt_tcircuit *tc, int rv,
                      const ckt_fragment *f);

/* Sends op with the payload in w (consumed) on tc, waiting while the
 * circuit is full; gives up when the session fails.  0 or -1. */
int sess_send(jsync_sess *s, ckt_tcircuit *tc, int64_t op, jsync_wbuf *w);
/* Sends op with len bytes at p (copied). */
int sess_send_bytes(jsync_sess *s, ckt_tcircuit *tc, int64_t op, const void *p,
                    size_t len);
/* Next fragment on tc; polls the session's state every so often.  Returns
 * the fragment, or NULL when the session failed or finished (a closed
 * circuit or an error fragment fails it). */
ckt_fragment *sess_recv(jsync_sess *s, ckt_tcircuit *tc);

/* Emits a -v line or a warning (client side). */
void sess_log(jsync_sess *s, int warn, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Counts a result and tells whoever shows it: the local log on the
 * client, the sender when the receiver is the server. */
void sess_result(jsync_sess *s, const jsync_result *r);
/* Sends the queued results (the receiver's control thread, at the end). */
int sess_flush_results(jsync_sess *s);

/* The sender on the client takes the receiver's RESULTS. */
void sess_take_results(jsync_sess *s, const ckt_fragment *f);

void live_add(uint64_t *counter, uint64_t v);

/* A chunk or group ID as 16 wire bytes (XXH128 canonical form). */
void jsync_id_bytes(jsync_chunk_id id, uint8_t out[16]);

/* The roles: run on the calling thread (plus one per data circuit) until
 * the session ends.  0, or -1 with the failure recorded. */
int sender_run(jsync_sess *s);
int receiver_run(jsync_sess *s);

/* Hashes for the whole-file check. */
typedef struct whole_hash whole_hash;
whole_hash *whole_new(int blake2b);
void whole_update(whole_hash *h, const void *p, size_t n);
void whole_zeros(whole_hash *h, uint64_t n);
void whole_final(whole_hash *h, uint8_t out[JSYNC_HASH_LEN]);
void whole_free(whole_hash *h);

#endif
