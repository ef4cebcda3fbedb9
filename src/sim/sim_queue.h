/*
 * sim_queue.h — the simulation's event queue: an indexed binary min-heap
 * ordered by (time, seq).
 *
 * Items embed a sim_qnode that remembers where in the heap it sits, so an
 * item can be removed or moved (a timer re-armed) in O(log n) without
 * leaving stale entries behind.  The heap's entries carry copies of the
 * keys, so sifting compares without touching the items.
 *
 * Space is reserved ahead (sim_queue_reserve) so that pushing never
 * fails: the simulation reserves room for every item it has allocated,
 * and an item is in the heap at most once.
 */
#ifndef CKT_SIM_QUEUE_H
#define CKT_SIM_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#define SIM_QUEUE_NONE UINT32_MAX /* sim_qnode.idx: not queued */

typedef struct sim_qnode {
  uint64_t time;
  uint64_t seq;
  uint32_t idx; /* position in the heap, or SIM_QUEUE_NONE */
} sim_qnode;

__extension__ typedef unsigned __int128 sim_qkey;

/* (time, seq) as one 128-bit key: one comparison, no branches. */
typedef struct sim_qent {
  sim_qkey key;
  sim_qnode *node;
} sim_qent;

typedef struct sim_queue {
  sim_qent *ents;
  uint32_t n, cap;
} sim_queue;

void sim_queue_init(sim_queue *q);
void sim_queue_free(sim_queue *q);
/* Makes room for `cap` items in all.  CKT_OK, CKT_ERR_NOMEM,
 * CKT_ERR_LIMIT (more than 2^31 items). */
int sim_queue_reserve(sim_queue *q, size_t cap);
/* Queues x (not queued) at (time, seq); room must have been reserved. */
void sim_queue_push(sim_queue *q, sim_qnode *x, uint64_t time, uint64_t seq);
/* Removes x if it is queued. */
void sim_queue_remove(sim_queue *q, sim_qnode *x);
/* Moves a queued x to (time, seq). */
void sim_queue_update(sim_queue *q, sim_qnode *x, uint64_t time, uint64_t seq);
/* Removes and returns the first item, NULL when empty. */
sim_qnode *sim_queue_pop(sim_queue *q);

static inline sim_qnode *sim_queue_peek(const sim_queue *q) {
  return q->n ? q->ents[0].node : NULL;
}

static inline int sim_qnode_queued(const sim_qnode *x) {
  return x->idx != SIM_QUEUE_NONE;
}

#endif
