/*
 * sim_rand.h — the simulation's random streams: xoshiro256** seeded
 * through splitmix64.
 *
 * Every stream is derived from (seed, domain, a, b), so streams for
 * different purposes (the network, the scenario, each host and each of
 * its binds) are independent: drawing from one never shifts another.
 * Integer arithmetic only, so every machine draws the same numbers.
 */
#ifndef CKT_SIM_RAND_H
#define CKT_SIM_RAND_H

#include <stddef.h>
#include <stdint.h>

/* Domains keep streams apart even when (a, b) coincide. */
enum {
  SIM_RAND_NET = 1,
  SIM_RAND_SCENARIO = 2,
  SIM_RAND_MISC = 3,
  SIM_RAND_HOST = 4,
  SIM_RAND_SECRET = 5
};

typedef struct sim_rand {
  uint64_t s[4];
} sim_rand;

void sim_rand_seed(sim_rand *r, uint64_t seed, uint64_t domain, uint64_t a,
                   uint64_t b);
/* Uniform in [0, n), unbiased (Lemire's multiply-and-reject); 0 for n 0. */
uint64_t sim_rand_below(sim_rand *r, uint64_t n);
/* Fills buf; 8 bytes per draw, little-endian, the tail from one more. */
void sim_rand_fill(sim_rand *r, uint8_t *buf, size_t len);

static inline uint64_t sim_rand_rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static inline uint64_t sim_rand_next(sim_rand *r) {
  uint64_t *s = r->s;
  uint64_t out = sim_rand_rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = sim_rand_rotl(s[3], 45);
  return out;
}

/* 1 with probability ppm / 1000000; draws nothing when ppm is 0 (so a
 * fault that is off costs no draw and shifts nothing). */
static inline int sim_rand_ppm(sim_rand *r, uint32_t ppm) {
  return ppm != 0 && sim_rand_below(r, 1000000u) < ppm;
}

#endif
