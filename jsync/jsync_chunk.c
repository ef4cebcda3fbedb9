/* jsync_chunk.c — FastCDC with normalized chunking; XXH3-128 chunk IDs. */
#include "jsync_chunk.h"

#include <math.h>
#include <pthread.h>
#include <xxhash.h>

/* The gear table: 256 fixed pseudo-random words.  Fixed forever: every
 * jsync must cut the same bytes at the same places. */
static uint64_t gear[256];
static pthread_once_t gear_once = PTHREAD_ONCE_INIT;

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void gear_init(void) {
  uint64_t state = 0x6a736e63ull; /* "jsnc": the table's one seed */
  int i;
  for (i = 0; i < 256; ++i) {
    gear[i] = splitmix64(&state);
  }
}

static unsigned log2_floor(uint32_t v) {
  unsigned n = 0;
  while (v >>= 1) {
    n++;
  }
  return n;
}

/* `bits` one bits at the top: with (fp << 1) + gear[b] the top bits carry
 * the most history (the last 64 bytes). */
static uint64_t top_mask(unsigned bits) {
  return bits == 0 ? 0 : ~0ull << (64 - bits);
}

void jsync_chunk_params_init(jsync_chunk_params *p, uint32_t avg) {
  unsigned bits;
  if (avg < JSYNC_CHUNK_AVG_MIN) {
    avg = JSYNC_CHUNK_AVG_MIN;
  }
  if (avg > JSYNC_CHUNK_AVG_MAX) {
    avg = JSYNC_CHUNK_AVG_MAX;
  }
  bits = log2_floor(avg);
  p->avg = 1u << bits;
  p->min = p->avg / 4;
  p->max = p->avg * 4;
  /* Normalization level 2 (FastCDC): two more bits before the normal
   * size, two fewer after, which narrows the size distribution. */
  p->mask_small = top_mask(bits + 2);
  p->mask_large = top_mask(bits - 2);
}

void jsync_chunk_params_for_size(jsync_chunk_params *p, uint64_t file_size) {
  double root = sqrt((double)file_size);
  uint32_t avg = JSYNC_CHUNK_AVG_MIN;
  while (avg < JSYNC_CHUNK_AVG_MAX && (double)avg < root) {
    avg <<= 1;
  }
  jsync_chunk_params_init(p, avg);
}

size_t jsync_chunk_next(const jsync_chunk_params *p, const uint8_t *data,
                        size_t len, int at_end) {
  size_t i, normal, end;
  uint64_t fp = 0;
  pthread_once(&gear_once, gear_init);
  if (len <= p->min) {
    return at_end ? len : 0;
  }
  end = len < p->max ? len : p->max;
  normal = p->avg < end ? p->avg : end;
  for (i = p->min; i < normal; ++i) {
    fp = (fp << 1) + gear[data[i]];
    if (!(fp & p->mask_small)) {
      return i + 1;
    }
  }
  for (; i < end; ++i) {
    fp = (fp << 1) + gear[data[i]];
    if (!(fp & p->mask_large)) {
      return i + 1;
    }
  }
  if (end == p->max) {
    return end; /* the hard ceiling */
  }
  return at_end ? len : 0; /* no cut yet: more bytes may bring one */
}

jsync_chunk_id jsync_chunk_id_of(const uint8_t *data, size_t len) {
  XXH128_hash_t h = XXH3_128bits(data, len);
  jsync_chunk_id id = {h.high64, h.low64};
  return id;
}

int jsync_chunk_id_equal(jsync_chunk_id a, jsync_chunk_id b) {
  return a.hi == b.hi && a.lo == b.lo;
}
