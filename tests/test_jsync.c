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

/* ---- two-level indexes ----------------------------------------------------
 */

#include <fcntl.h>
#include <unistd.h>

#include "jsync_index.h"

Test(jsync, a_file_indexes_like_the_same_bytes_in_memory) {
  char path[] = "/tmp/ckt-test-jsync-XXXXXX";
  size_t n = 5u * 1024 * 1024 + 123, i;
  uint8_t *d = random_data(n, 5);
  jsync_index a, b;
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, d, n), (ssize_t)n);
  cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
  cr_assert_eq(jsync_index_fd(fd, n, &a), 0);
  close(fd);
  unlink(path);
  cr_assert_eq(jsync_index_buffer(d, n, &b), 0);
  cr_assert_eq(a.size, n);
  cr_assert_eq(a.nchunks, b.nchunks);
  cr_assert_eq(a.ngroups, b.ngroups);
  for (i = 0; i < a.ngroups; ++i) {
    cr_assert(jsync_chunk_id_equal(a.groups[i], b.groups[i]));
    cr_assert_eq(a.group_start[i], b.group_start[i]);
  }
  for (i = 0; i < a.nchunks; ++i) {
    cr_assert_eq(a.chunks[i].off, b.chunks[i].off);
    cr_assert_eq(a.chunks[i].len, b.chunks[i].len);
    cr_assert(jsync_chunk_id_equal(a.chunks[i].id, b.chunks[i].id));
  }
  cr_assert(jsync_chunk_id_equal(a.whole, b.whole));
  jsync_index_free(&a);
  jsync_index_free(&b);
  free(d);
}

Test(jsync, only_chunks_that_changed_are_missing) {
  size_t n = SIZE, *missing, nm;
  uint8_t *old = random_data(n, 6), *cur = malloc(n + 1);
  jsync_index have, want;
  cr_assert_eq(jsync_index_buffer(old, n, &have), 0);

  /* The same content: nothing travels. */
  cr_assert_eq(jsync_index_missing(&have, &have, &missing, &nm), 0);
  cr_assert_eq(nm, 0);
  free(missing);

  /* One byte overwritten in the middle: the chunk holding it travels
   * (and its neighbour when the byte moved a cut point). */
  memcpy(cur, old, n);
  cur[n / 2] ^= 0xff;
  cr_assert_eq(jsync_index_buffer(cur, n, &want), 0);
  cr_assert_eq(jsync_index_missing(&have, &want, &missing, &nm), 0);
  cr_assert(nm >= 1 && nm <= 2, "%zu chunks missing", nm);
  {
    size_t i, covered = 0;
    for (i = 0; i < nm; ++i) {
      const jsync_chunk_ref *c = &want.chunks[missing[i]];
      covered |= c->off <= n / 2 && c->off + c->len > n / 2;
    }
    cr_assert(covered, "the changed byte travels");
  }
  cr_assert_not(jsync_chunk_id_equal(have.whole, want.whole));
  free(missing);
  jsync_index_free(&want);

  /* One byte inserted at an unaligned offset: one or two chunks. */
  memcpy(cur, old, 777777);
  cur[777777] = 1;
  memcpy(cur + 777778, old + 777777, n - 777777);
  cr_assert_eq(jsync_index_buffer(cur, n + 1, &want), 0);
  cr_assert_eq(jsync_index_missing(&have, &want, &missing, &nm), 0);
  cr_assert_geq(nm, 1);
  cr_assert_leq(nm, 2, "%zu chunks missing", nm);
  free(missing);
  jsync_index_free(&want);
  jsync_index_free(&have);
  free(old);
  free(cur);
}

/* Groups are content-defined: an insertion changes the group around it
 * and leaves the groups after it as they were, so comparing group IDs
 * skips everything else; groups stay within their bounds. */
Test(jsync, an_insertion_changes_only_the_groups_around_it) {
  size_t n = 60u * 1024 * 1024, g, differ = 0, sum = 0;
  uint8_t *old = random_data(n, 9), *cur = malloc(n + 1);
  jsync_index a, b;
  cr_assert_not_null(cur);
  memcpy(cur, old, 5000001);
  cur[5000001] = 7;
  memcpy(cur + 5000002, old + 5000001, n - 5000001);
  cr_assert_eq(jsync_index_buffer(old, n, &a), 0);
  cr_assert_eq(jsync_index_buffer(cur, n + 1, &b), 0);
  cr_assert_gt(a.ngroups, 8, "%zu groups", a.ngroups);
  for (g = 0; g < a.ngroups; ++g) {
    size_t len = a.group_start[g + 1] - a.group_start[g];
    cr_assert(len >= 1 && len <= JSYNC_GROUP_MAX);
    sum += len;
  }
  cr_assert_eq(sum, a.nchunks);
  cr_assert_eq(a.group_start[a.ngroups], a.nchunks);
  for (g = 0; g < b.ngroups; ++g) {
    size_t h, found = 0;
    for (h = 0; h < a.ngroups && !found; ++h) {
      found = jsync_chunk_id_equal(a.groups[h], b.groups[g]);
    }
    differ += !found;
  }
  cr_assert(differ >= 1 && differ <= 2, "%zu of %zu groups differ", differ,
            b.ngroups);
  jsync_index_free(&a);
  jsync_index_free(&b);
  free(old);
  free(cur);
}

Test(jsync, an_empty_file_has_no_chunks) {
  jsync_index ix;
  size_t *missing, nm;
  cr_assert_eq(jsync_index_buffer((const uint8_t *)"", 0, &ix), 0);
  cr_assert_eq(ix.nchunks, 0);
  cr_assert_eq(ix.ngroups, 0);
  cr_assert_eq(jsync_index_missing(&ix, &ix, &missing, &nm), 0);
  cr_assert_eq(nm, 0);
  free(missing);
  jsync_index_free(&ix);
}
