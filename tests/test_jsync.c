/* test_jsync.c — jsync: content-defined chunking and chunk IDs. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "jsync_chunk.h"

#define SIZE (8u * 1024 * 1024)

static uint8_t *random_data(size_t n, uint64_t seed) {
  uint8_t *p = malloc(n);
  size_t i;
  cr_assert_not_null(p);
  for (i = 0; i < n; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = (uint8_t)(seed >> 56);
  }
  return p;
}

/* Cuts the whole buffer; returns the number of chunks, lengths in lens. */
static size_t chunk_all(const jsync_chunk_params *p, const uint8_t *d, size_t n,
                        size_t *lens, size_t max_chunks) {
  size_t off = 0, k = 0;
  while (off < n) {
    size_t len = jsync_chunk_next(p, d + off, n - off, 1);
    cr_assert_gt(len, 0);
    cr_assert_lt(k, max_chunks);
    lens[k++] = len;
    off += len;
  }
  return k;
}

Test(jsync, params_scale_with_the_file_size) {
  jsync_chunk_params p;
  jsync_chunk_params_for_size(&p, 0);
  cr_assert_eq(p.avg, JSYNC_CHUNK_AVG_MIN);
  jsync_chunk_params_for_size(&p, 1ull << 30);
  cr_assert_eq(p.avg, 32u * 1024);
  jsync_chunk_params_for_size(&p, 1ull << 40);
  cr_assert_eq(p.avg, JSYNC_CHUNK_AVG_MAX);
  jsync_chunk_params_init(&p, 20000);
  cr_assert_eq(p.avg, 16384, "rounded down to a power of two");
  cr_assert_eq(p.min, p.avg / 4);
  cr_assert_eq(p.max, p.avg * 4);
}

Test(jsync, chunks_respect_the_bounds_and_the_average) {
  static size_t lens[SIZE / 1024];
  jsync_chunk_params p;
  uint8_t *d = random_data(SIZE, 1);
  size_t k, i, sum = 0;
  jsync_chunk_params_init(&p, 16384);
  k = chunk_all(&p, d, SIZE, lens, sizeof(lens) / sizeof(lens[0]));
  for (i = 0; i < k; ++i) {
    if (i + 1 < k) {
      cr_assert_geq(lens[i], p.min);
    }
    cr_assert_leq(lens[i], p.max);
    sum += lens[i];
  }
  cr_assert_eq(sum, SIZE);
  /* Normalized chunking keeps the mean near the target. */
  cr_assert_geq(SIZE / k, p.avg / 2, "mean %zu", SIZE / k);
  cr_assert_leq(SIZE / k, p.avg * 2, "mean %zu", SIZE / k);
  free(d);
}

Test(jsync, streaming_in_pieces_cuts_where_the_whole_buffer_does) {
  static size_t whole[SIZE / 1024];
  jsync_chunk_params p;
  uint8_t *d = random_data(SIZE, 2);
  size_t k, off = 0, have = 0, j = 0;
  jsync_chunk_params_init(&p, 8192);
  k = chunk_all(&p, d, SIZE, whole, sizeof(whole) / sizeof(whole[0]));
  /* Feed 1000 bytes at a time, as a reader of a file would. */
  while (off < SIZE) {
    size_t len;
    if (have < SIZE) {
      have = have + 1000 < SIZE ? have + 1000 : SIZE;
    }
    len = jsync_chunk_next(&p, d + off, have - off, have == SIZE);
    if (len == 0) {
      continue; /* needs more bytes */
    }
    cr_assert_lt(j, k);
    cr_assert_eq(len, whole[j], "chunk %zu", j);
    j++;
    off += len;
  }
  cr_assert_eq(j, k);
  free(d);
}

static int has_id(const jsync_chunk_id *ids, size_t n, jsync_chunk_id id) {
  size_t i;
  for (i = 0; i < n; ++i) {
    if (jsync_chunk_id_equal(ids[i], id)) {
      return 1;
    }
  }
  return 0;
}

Test(jsync, an_insertion_changes_only_the_chunks_near_it) {
  static size_t la[SIZE / 1024], lb[SIZE / 1024];
  static jsync_chunk_id ia[SIZE / 1024];
  jsync_chunk_params p;
  uint8_t *a = random_data(SIZE, 3), *b = malloc(SIZE + 1);
  size_t ka, kb, i, off, shared = 0;
  const size_t at = 1234567; /* an unaligned offset */
  memcpy(b, a, at);
  b[at] = 0x5a;
  memcpy(b + at + 1, a + at, SIZE - at);
  jsync_chunk_params_init(&p, 16384);
  ka = chunk_all(&p, a, SIZE, la, sizeof(la) / sizeof(la[0]));
  kb = chunk_all(&p, b, SIZE + 1, lb, sizeof(lb) / sizeof(lb[0]));
  for (i = 0, off = 0; i < ka; off += la[i], ++i) {
    ia[i] = jsync_chunk_id_of(a + off, la[i]);
  }
  for (i = 0, off = 0; i < kb; off += lb[i], ++i) {
    shared += has_id(ia, ka, jsync_chunk_id_of(b + off, lb[i]));
  }
  /* All but the one or two chunks around the insertion are found again. */
  cr_assert_geq(shared + 3, kb, "shared %zu of %zu", shared, kb);
  free(a);
  free(b);
}

Test(jsync, chunk_ids_tell_contents_apart) {
  uint8_t *d = random_data(4096, 4);
  jsync_chunk_id x = jsync_chunk_id_of(d, 4096), y;
  y = jsync_chunk_id_of(d, 4096);
  cr_assert(jsync_chunk_id_equal(x, y));
  d[100] ^= 1;
  y = jsync_chunk_id_of(d, 4096);
  cr_assert_not(jsync_chunk_id_equal(x, y));
  y = jsync_chunk_id_of(d, 4095);
  cr_assert_not(jsync_chunk_id_equal(x, y));
  free(d);
}

Test(jsync, tiny_and_empty_inputs) {
  jsync_chunk_params p;
  uint8_t d[10] = {0};
  jsync_chunk_params_init(&p, 8192);
  cr_assert_eq(jsync_chunk_next(&p, d, 0, 1), 0);
  cr_assert_eq(jsync_chunk_next(&p, d, 10, 1), 10);
  cr_assert_eq(jsync_chunk_next(&p, d, 10, 0), 0, "needs more bytes");
}
