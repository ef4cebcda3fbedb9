/* quic_cidmap.c — chained hash table keyed by connection ID. */
#include "quic_cidmap.h"

#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"

struct ckt_cidmap_entry {
  ckt_cidmap_entry *next;
  void *val;
  uint8_t len;
  uint8_t cid[CKT_CIDMAP_MAX_CIDLEN];
};

/* FNV-1a over a keyed start value: cheap, and the per-endpoint random seed
 * keeps remote peers from choosing colliding IDs on purpose. */
static size_t hash(const ckt_cidmap *m, const uint8_t *cid, size_t len) {
  uint64_t h = 1469598103934665603ull ^ m->seed;
  size_t i;
  for (i = 0; i < len; ++i) {
    h ^= cid[i];
    h *= 1099511628211ull;
  }
  h ^= h >> 29;
  return (size_t)h & (m->nbuckets - 1);
}

int ckt_cidmap_init(ckt_cidmap *m, uint64_t seed) {
  m->nbuckets = 64;
  m->count = 0;
  m->seed = seed;
  m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
  return m->buckets ? CKT_OK : CKT_ERR_NOMEM;
}

void ckt_cidmap_free(ckt_cidmap *m) {
  size_t i;
  for (i = 0; m->buckets && i < m->nbuckets; ++i) {
    ckt_cidmap_entry *e = m->buckets[i];
    while (e) {
      ckt_cidmap_entry *next = e->next;
      free(e);
      e = next;
    }
  }
  free(m->buckets);
  m->buckets = NULL;
  m->count = 0;
}

static void grow(ckt_cidmap *m) {
  size_t n = m->nbuckets * 2, i, old = m->nbuckets;
  ckt_cidmap_entry **nb = calloc(n, sizeof(*nb)), **ob = m->buckets;
  if (!nb) {
    return; /* keep working with longer chains */
  }
  m->buckets = nb;
  m->nbuckets = n;
  for (i = 0; i < old; ++i) {
    ckt_cidmap_entry *e = ob[i];
    while (e) {
      ckt_cidmap_entry *next = e->next;
      size_t h = hash(m, e->cid, e->len);
      e->next = nb[h];
      nb[h] = e;
      e = next;
    }
  }
  free(ob);
}

static ckt_cidmap_entry **find(const ckt_cidmap *m, const uint8_t *cid,
                               size_t len) {
  ckt_cidmap_entry **p = &m->buckets[hash(m, cid, len)];
  while (*p && ((*p)->len != len || memcmp((*p)->cid, cid, len) != 0)) {
    p = &(*p)->next;
  }
  return p;
}

int ckt_cidmap_put(ckt_cidmap *m, const uint8_t *cid, size_t len, void *val) {
  ckt_cidmap_entry **p, *e;
  if (len == 0 || len > CKT_CIDMAP_MAX_CIDLEN) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  p = find(m, cid, len);
  if (*p) {
    (*p)->val = val;
    return CKT_OK;
  }
  e = malloc(sizeof(*e));
  if (!e) {
    return CKT_ERR_NOMEM;
  }
  e->next = NULL;
  e->val = val;
  e->len = (uint8_t)len;
  memcpy(e->cid, cid, len);
  *p = e;
  if (++m->count > m->nbuckets) {
    grow(m);
  }
  return CKT_OK;
}

void *ckt_cidmap_get(const ckt_cidmap *m, const uint8_t *cid, size_t len) {
  ckt_cidmap_entry **p;
  if (len == 0 || len > CKT_CIDMAP_MAX_CIDLEN) {
    return NULL;
  }
  p = find(m, cid, len);
  return *p ? (*p)->val : NULL;
}

void ckt_cidmap_del(ckt_cidmap *m, const uint8_t *cid, size_t len) {
  ckt_cidmap_entry **p, *e;
  if (len == 0 || len > CKT_CIDMAP_MAX_CIDLEN) {
    return;
  }
  p = find(m, cid, len);
  if ((e = *p) != NULL) {
    *p = e->next;
    free(e);
    m->count--;
  }
}

void ckt_cidmap_del_value(ckt_cidmap *m, const void *val) {
  size_t i;
  for (i = 0; i < m->nbuckets; ++i) {
    ckt_cidmap_entry **p = &m->buckets[i];
    while (*p) {
      if ((*p)->val == val) {
        ckt_cidmap_entry *e = *p;
        *p = e->next;
        free(e);
        m->count--;
      } else {
        p = &(*p)->next;
      }
    }
  }
}
