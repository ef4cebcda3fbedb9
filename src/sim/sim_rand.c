/* sim_rand.c — xoshiro256** streams seeded through splitmix64. */
#include "sim_rand.h"

#include <string.h>

__extension__ typedef unsigned __int128 sim_u128;

/* splitmix64's step: the standard way to spread a 64-bit seed over
 * xoshiro's 256-bit state (never all zero). */
static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void sim_rand_seed(sim_rand *r, uint64_t seed, uint64_t domain, uint64_t a,
                   uint64_t b) {
  /* Each input goes through a full splitmix round before the next is
   * mixed in, so (seed, domain, a, b) tuples that differ anywhere give
   * unrelated states. */
  uint64_t x = seed;
  uint64_t h = splitmix64(&x);
  x = h ^ domain;
  h = splitmix64(&x);
  x = h ^ a;
  h = splitmix64(&x);
  x = h ^ b;
  r->s[0] = splitmix64(&x);
  r->s[1] = splitmix64(&x);
  r->s[2] = splitmix64(&x);
  r->s[3] = splitmix64(&x);
}

uint64_t sim_rand_below(sim_rand *r, uint64_t n) {
  sim_u128 m;
  uint64_t lo;
  if (n == 0) {
    return 0;
  }
  m = (sim_u128)sim_rand_next(r) * n;
  lo = (uint64_t)m;
  if (lo < n) {
    uint64_t threshold = (0 - n) % n; /* 2^64 mod n */
    while (lo < threshold) {
      m = (sim_u128)sim_rand_next(r) * n;
      lo = (uint64_t)m;
    }
  }
  return (uint64_t)(m >> 64);
}

static void store_le64(uint8_t *p, uint64_t v) {
  int i;
  for (i = 0; i < 8; ++i) {
    p[i] = (uint8_t)(v >> (8 * i));
  }
}

void sim_rand_fill(sim_rand *r, uint8_t *buf, size_t len) {
  uint8_t tail[8];
  while (len >= 8) {
    store_le64(buf, sim_rand_next(r));
    buf += 8;
    len -= 8;
  }
  if (len > 0) {
    store_le64(tail, sim_rand_next(r));
    memcpy(buf, tail, len);
  }
}
