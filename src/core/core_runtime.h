/*
 * core_runtime.h — what the protocol core asks of the world.
 *
 * The QUIC endpoint and everything above it do no I/O of their own: they
 * read the clock, arm timers, send datagrams and post work through this
 * interface, and are handed received datagrams by whoever implements it.
 * Two implementations exist (or will): libev + UDP sockets for production
 * (src/quic/quic_ev.c) and the deterministic simulator (src/sim), which is
 * why this lives in core, below both.
 *
 * Threading: every function except post() is called on the loop thread
 * only.  post() may be called from any thread; fn then runs on the loop.
 */
#ifndef CKT_CORE_RUNTIME_H
#define CKT_CORE_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "core_addr.h"

typedef struct ckt_runtime ckt_runtime;
typedef struct ckt_timer ckt_timer; /* owned by the runtime */
typedef void (*ckt_timer_fn)(void *arg);
typedef void (*ckt_post_fn)(void *arg);

#define CKT_TIME_NEVER UINT64_MAX

typedef struct ckt_runtime_ops {
  /* Monotonic time in nanoseconds. */
  uint64_t (*now)(ckt_runtime *rt);
  /* Wall-clock time as Unix nanoseconds (messages' created/deadline). */
  int64_t (*wall)(ckt_runtime *rt);
  /* A timer that calls fn(arg) on the loop when its deadline passes. NULL
   * when out of memory. */
  ckt_timer *(*timer_new)(ckt_runtime *rt, ckt_timer_fn fn, void *arg);
  /* (Re)arms for an absolute monotonic deadline; CKT_TIME_NEVER stops. */
  void (*timer_arm)(ckt_runtime *rt, ckt_timer *t, uint64_t deadline);
  void (*timer_free)(ckt_runtime *rt, ckt_timer *t);
  /* Sends len bytes made of datagrams of `segment` bytes (the last may be
   * shorter; 0 means one datagram).  CKT_OK; CKT_ERR_AGAIN when the
   * socket is full (the datagrams are dropped: QUIC's loss recovery
   * resends); CKT_ERR_IO. */
  int (*send)(ckt_runtime *rt, const ckt_addr *to, const uint8_t *data,
              size_t len, size_t segment);
  /* Runs fn(arg) on the loop thread soon.  Thread-safe.  CKT_OK or
   * CKT_ERR_NOMEM. */
  int (*post)(ckt_runtime *rt, ckt_post_fn fn, void *arg);
  /* Fills buf with random bytes (connection IDs, tokens); the simulator
   * makes them reproducible. */
  void (*random)(ckt_runtime *rt, uint8_t *buf, size_t len);
} ckt_runtime_ops;

struct ckt_runtime {
  const ckt_runtime_ops *ops;
  void *impl;
};

#endif
