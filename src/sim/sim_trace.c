/* sim_trace.c — the trace hash's byte folding. */
#include "sim_trace.h"

#include <string.h>

__extension__ typedef unsigned __int128 sim_u128;

/* Odd constants with well-mixed bits (the usual 64-bit golden ratio and
 * xxHash's primes), one per lane so that lanes never compute alike. */
static const uint64_t K[4] = {0x9E3779B185EBCA87ull, 0xC2B2AE3D27D4EB4Full,
                              0x165667B19E3779F9ull, 0x27D4EB2F165667C5ull};

static uint64_t load_le64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

/* The full 128-bit product folded to 64 bits: every input bit reaches
 * every output bit, for one multiplication per 16 bytes. */
static uint64_t mum(uint64_t a, uint64_t b) {
  sim_u128 m = (sim_u128)a * b;
  return (uint64_t)m ^ (uint64_t)(m >> 64);
}

/* 64-byte blocks over four lanes; each lane chains through its own state,
 * so blocks cannot be swapped unnoticed, and the four chains overlap. */
static uint64_t blocks(uint64_t h, const uint8_t **pp, size_t *lenp) {
  const uint8_t *p = *pp;
  size_t len = *lenp;
  uint64_t l[4];
  int j;
  for (j = 0; j < 4; ++j) {
    l[j] = h ^ K[j];
  }
  while (len >= 64) {
    for (j = 0; j < 4; ++j) {
      l[j] =
          mum(load_le64(p + 16 * j) ^ K[j], load_le64(p + 16 * j + 8) ^ l[j]);
    }
    p += 64;
    len -= 64;
  }
  *pp = p;
  *lenp = len;
  for (j = 0; j < 4; ++j) {
    h = sim_trace_fold(h, l[j]);
  }
  return h;
}

uint64_t sim_trace_bytes(uint64_t h, const uint8_t *p, size_t len) {
  uint8_t tail[8] = {0};
  if (len >= 64) {
    h = blocks(h, &p, &len);
  }
  while (len >= 16) {
    h = mum(load_le64(p) ^ K[0], load_le64(p + 8) ^ h);
    p += 16;
    len -= 16;
  }
  if (len >= 8) {
    h = sim_trace_fold(h, load_le64(p));
    p += 8;
    len -= 8;
  }
  if (len > 0) {
    memcpy(tail, p, len);
    /* The tail's length goes in too: "ab" and "ab\0" differ. */
    h = sim_trace_fold(h, load_le64(tail) ^ ((uint64_t)len << 59));
  }
  return h;
}
