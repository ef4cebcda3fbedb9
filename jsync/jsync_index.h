/*
 * jsync_index.h — a file's chunk list, in two levels so that comparing
 * two versions costs little: group IDs first (one per JSYNC_GROUP chunks),
 * then chunk IDs only inside the groups that differ.
 *
 * Threading: pure functions on caller-owned data; any thread.
 */
#ifndef JSYNC_INDEX_H
#define JSYNC_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "jsync_chunk.h"

/* Groups are content-defined too: a group ends after a chunk whose ID has
 * its low JSYNC_GROUP_BITS bits all set (on average every JSYNC_GROUP
 * chunks), or after JSYNC_GROUP_MAX chunks.  So an insertion changes the
 * groups around it only, and the groups after it are found again. */
#define JSYNC_GROUP_BITS 6
#define JSYNC_GROUP (1u << JSYNC_GROUP_BITS)
#define JSYNC_GROUP_MAX (4 * JSYNC_GROUP)

typedef struct jsync_chunk_ref {
  uint64_t off;
  uint32_t len;
  jsync_chunk_id id;
} jsync_chunk_ref;

typedef struct jsync_index {
  jsync_chunk_params params;
  uint64_t size;
  jsync_chunk_ref *chunks;
  size_t nchunks;
  jsync_chunk_id *groups; /* XXH3-128 of each group's chunk IDs */
  size_t *group_start;    /* ngroups + 1 chunk indexes: group g is
                             chunks [group_start[g], group_start[g+1]) */
  size_t ngroups;
  jsync_chunk_id whole; /* XXH3-128 of the whole content */
} jsync_index;

/* Indexes a buffer with params sized to it.  0, or -1 when out of
 * memory. */
int jsync_index_buffer(const uint8_t *data, size_t len, jsync_index *out);
/* Indexes an open file (read from its current position to the end) of
 * the given size, streaming through a bounded buffer.  0; -1 with errno
 * set on a read error; -1 with ENOMEM. */
int jsync_index_fd(int fd, uint64_t size, jsync_index *out);
/* The same with given chunking parameters: a receiver indexes its old
 * version with the parameters the sender chose for the new one, so the
 * two cut alike whatever their sizes. */
int jsync_index_fd_with(int fd, uint64_t size, const jsync_chunk_params *p,
                        jsync_index *out);
void jsync_index_free(jsync_index *ix);

/* The chunks of `want` whose IDs `have` lacks (what must travel), as
 * indexes into want->chunks, written to *missing (malloc()ed; free()).
 * Compares group IDs first and looks at chunk IDs only in groups that
 * differ.  0, or -1 when out of memory. */
int jsync_index_missing(const jsync_index *have, const jsync_index *want,
                        size_t **missing, size_t *nmissing);

#endif
