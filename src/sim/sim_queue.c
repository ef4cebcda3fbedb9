/* sim_queue.c — indexed binary min-heap on (time, seq). */
#include "sim_queue.h"

#include <stdlib.h>

#include "ckt/error.h"

static sim_qkey key_of(uint64_t time, uint64_t seq) {
  return (sim_qkey)time << 64 | seq;
}

static int before(const sim_qent *a, const sim_qent *b) {
  return a->key < b->key;
}

static void put(sim_queue *q, uint32_t i, sim_qent e) {
  q->ents[i] = e;
  e.node->idx = i;
}

/* Moves e up from the hole at i to where it belongs. */
static void sift_up(sim_queue *q, uint32_t i, sim_qent e) {
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (!before(&e, &q->ents[parent])) {
      break;
    }
    put(q, i, q->ents[parent]);
    i = parent;
  }
  put(q, i, e);
}

/* Moves e down from the hole at i to where it belongs. */
static void sift_down(sim_queue *q, uint32_t i, sim_qent e) {
  uint32_t n = q->n;
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= n) {
      break;
    }
    if (c + 1 < n && before(&q->ents[c + 1], &q->ents[c])) {
      ++c;
    }
    if (!before(&q->ents[c], &e)) {
      break;
    }
    put(q, i, q->ents[c]);
    i = c;
  }
  put(q, i, e);
}

/* Puts e into the hole at i, whichever way it has to go. */
static void place(sim_queue *q, uint32_t i, sim_qent e) {
  if (i > 0 && before(&e, &q->ents[(i - 1) / 2])) {
    sift_up(q, i, e);
  } else {
    sift_down(q, i, e);
  }
}

void sim_queue_init(sim_queue *q) {
  q->ents = NULL;
  q->n = q->cap = 0;
}

void sim_queue_free(sim_queue *q) {
  free(q->ents);
  sim_queue_init(q);
}

int sim_queue_reserve(sim_queue *q, size_t cap) {
  sim_qent *p;
  if (cap <= q->cap) {
    return CKT_OK;
  }
  if (cap > (size_t)INT32_MAX) {
    return CKT_ERR_LIMIT;
  }
  p = realloc(q->ents, cap * sizeof(*p));
  if (!p) {
    return CKT_ERR_NOMEM;
  }
  q->ents = p;
  q->cap = (uint32_t)cap;
  return CKT_OK;
}

/* The keys come in registers: reading back what the caller just stored
 * would stall on store forwarding. */
void sim_queue_push(sim_queue *q, sim_qnode *x, uint64_t time, uint64_t seq) {
  sim_qent e = {key_of(time, seq), x};
  x->time = time;
  x->seq = seq;
  sift_up(q, q->n++, e);
}

void sim_queue_remove(sim_queue *q, sim_qnode *x) {
  uint32_t i = x->idx;
  sim_qent last;
  if (i == SIM_QUEUE_NONE) {
    return;
  }
  x->idx = SIM_QUEUE_NONE;
  last = q->ents[--q->n];
  if (i < q->n) {
    place(q, i, last);
  }
}

void sim_queue_update(sim_queue *q, sim_qnode *x, uint64_t time, uint64_t seq) {
  sim_qent e = {key_of(time, seq), x};
  x->time = time;
  x->seq = seq;
  place(q, x->idx, e);
}

/* Bottom-up: the hole left by the first entry goes down along the
 * smaller children to a leaf (one comparison a level, no branch on its
 * outcome), then the last entry, which belongs near the bottom anyway,
 * goes up from there.  About half the comparisons of a plain sift-down,
 * and none of its mispredicted "stop here?" branches. */
sim_qnode *sim_queue_pop(sim_queue *q) {
  sim_qnode *top;
  sim_qent last;
  uint32_t i = 0, c, n;
  if (q->n == 0) {
    return NULL;
  }
  top = q->ents[0].node;
  top->idx = SIM_QUEUE_NONE;
  n = --q->n;
  last = q->ents[n];
  if (n == 0) {
    return top;
  }
  while ((c = 2 * i + 1) + 1 < n) {
    c += (uint32_t)before(&q->ents[c + 1], &q->ents[c]);
    put(q, i, q->ents[c]);
    i = c;
  }
  if (c < n) { /* a last, only child */
    put(q, i, q->ents[c]);
    i = c;
  }
  sift_up(q, i, last);
  return top;
}
