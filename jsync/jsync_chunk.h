/*
 * jsync_chunk.h — content-defined chunking (FastCDC with normalized
 * chunking) and chunk IDs, the base of jsync's delta transfer.
 *
 * Cut points depend only on the bytes near them, so an insertion or a
 * deletion moves the boundaries of the chunks it touches and no others:
 * the chunks after it are found again by their IDs.
 *
 * Threading: all functions are pure; any thread.
 */
#ifndef JSYNC_CHUNK_H
#define JSYNC_CHUNK_H

#include <stddef.h>
#include <stdint.h>

typedef struct jsync_chunk_params {
  uint32_t min;        /* no cut before this many bytes */
  uint32_t avg;        /* the normal size: a power of two */
  uint32_t max;        /* always cut here */
  uint64_t mask_small; /* before avg: more bits, cuts are rarer */
  uint64_t mask_large; /* after avg: fewer bits, cuts are likelier */
} jsync_chunk_params;

#define JSYNC_CHUNK_AVG_MIN (8u * 1024)
#define JSYNC_CHUNK_AVG_MAX (256u * 1024)

/* Parameters for an average chunk of `avg` bytes (rounded to a power of
 * two within [JSYNC_CHUNK_AVG_MIN, JSYNC_CHUNK_AVG_MAX]); min = avg/4,
 * max = avg*4, normalization level 2. */
void jsync_chunk_params_init(jsync_chunk_params *p, uint32_t avg);

/* Parameters scaled to a file's size: about sqrt(size) per chunk with a
 * floor and a ceiling, so small files get small chunks (fine deltas) and
 * large ones keep their chunk lists short. */
void jsync_chunk_params_for_size(jsync_chunk_params *p, uint64_t file_size);

/* The length of the chunk that starts at data[0], given len bytes
 * available: a cut point found by the rolling hash, else p->max if len
 * allows, else len when `at_end` (the file's last chunk), else 0 (more
 * bytes are needed before a decision). */
size_t jsync_chunk_next(const jsync_chunk_params *p, const uint8_t *data,
                        size_t len, int at_end);

/* A chunk's ID: XXH3-128 of its bytes (fast; collisions are not a
 * security boundary here — the whole file is checked before it replaces
 * the old one). */
typedef struct jsync_chunk_id {
  uint64_t hi, lo;
} jsync_chunk_id;

jsync_chunk_id jsync_chunk_id_of(const uint8_t *data, size_t len);
int jsync_chunk_id_equal(jsync_chunk_id a, jsync_chunk_id b);

#endif
