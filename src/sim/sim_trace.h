/*
 * sim_trace.h — the 64-bit hash that folds every event of a run, so two
 * runs can be compared by one number.
 *
 * Not a cryptographic hash: it only has to make an accidental difference
 * (one datagram more, one byte changed, two events swapped) show.  Bytes
 * are read little-endian whatever the machine.
 */
#ifndef CKT_SIM_TRACE_H
#define CKT_SIM_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define SIM_TRACE_INIT 0x6A09E667F3BCC908ull

/* Folds one 64-bit value into h (order matters). */
static inline uint64_t sim_trace_fold(uint64_t h, uint64_t v) {
  h ^= v;
  h *= 0x9E3779B97F4A7C15ull;
  return h ^ (h >> 31);
}

/* Folds len bytes into h, 8 bytes at a time: 64-byte blocks over four
 * independent lanes (their multiplications overlap), then 16-byte steps,
 * then the tail. */
uint64_t sim_trace_bytes(uint64_t h, const uint8_t *p, size_t len);

#endif
