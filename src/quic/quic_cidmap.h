/*
 * quic_cidmap.h — connection IDs to connections, one table for both roles.
 *
 * Every locally chosen connection ID has the same length, so short-header
 * packets demultiplex by a fixed-length lookup whatever role the
 * connection has; a server connection also files the client's original
 * (variable-length) destination ID until the handshake moves on.
 */
#ifndef CKT_QUIC_CIDMAP_H
#define CKT_QUIC_CIDMAP_H

#include <stddef.h>
#include <stdint.h>

#define CKT_CIDMAP_MAX_CIDLEN 20

typedef struct ckt_cidmap_entry ckt_cidmap_entry;

typedef struct ckt_cidmap {
  ckt_cidmap_entry **buckets;
  size_t nbuckets; /* a power of two */
  size_t count;
  uint64_t seed; /* keys the hash so peers cannot aim at one bucket */
} ckt_cidmap;

/* CKT_OK or CKT_ERR_NOMEM. */
int ckt_cidmap_init(ckt_cidmap *m, uint64_t seed);
void ckt_cidmap_free(ckt_cidmap *m);
/* Adds or replaces.  CKT_OK, CKT_ERR_NOMEM, CKT_ERR_INVALID_ARGUMENT (len
 * 0 or > 20). */
int ckt_cidmap_put(ckt_cidmap *m, const uint8_t *cid, size_t len, void *val);
/* NULL when absent. */
void *ckt_cidmap_get(const ckt_cidmap *m, const uint8_t *cid, size_t len);
/* Removes the entry if present. */
void ckt_cidmap_del(ckt_cidmap *m, const uint8_t *cid, size_t len);
/* Removes every entry whose value is val (a closing connection). */
void ckt_cidmap_del_value(ckt_cidmap *m, const void *val);

#endif
