/* jsync_index.c — two-level chunk lists and what differs between them. */
#include "jsync_index.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

typedef struct builder {
  jsync_index *ix;
  size_t cap;
  XXH3_state_t *whole;
} builder;

static int add_chunk(builder *b, uint64_t off, const uint8_t *p, size_t len) {
  jsync_index *ix = b->ix;
  if (ix->nchunks == b->cap) {
    size_t ncap = b->cap ? b->cap * 2 : 256;
    jsync_chunk_ref *n = realloc(ix->chunks, ncap * sizeof(*n));
    if (!n) {
      return -1;
    }
    ix->chunks = n;
    b->cap = ncap;
  }
  ix->chunks[ix->nchunks].off = off;
  ix->chunks[ix->nchunks].len = (uint32_t)len;
  ix->chunks[ix->nchunks].id = jsync_chunk_id_of(p, len);
  ix->nchunks++;
  return 0;
}

/* Group IDs hash the chunk IDs of each group; groups end where a chunk ID
 * says so (see JSYNC_GROUP_BITS) or at JSYNC_GROUP_MAX chunks. */
static int make_groups(jsync_index *ix) {
  XXH3_state_t *st = XXH3_createState();
  size_t i, n = 0, start = 0;
  /* At most one group per chunk, plus the sentinel. */
  ix->groups = malloc((ix->nchunks ? ix->nchunks : 1) * sizeof(*ix->groups));
  ix->group_start = malloc((ix->nchunks + 1) * sizeof(*ix->group_start));
  if (!ix->groups || !ix->group_start || !st) {
    XXH3_freeState(st);
    return -1;
  }
  XXH3_128bits_reset(st);
  for (i = 0; i < ix->nchunks; ++i) {
    uint64_t w[2] = {ix->chunks[i].id.hi, ix->chunks[i].id.lo};
    XXH3_128bits_update(st, w, sizeof(w));
    if ((ix->chunks[i].id.lo & (JSYNC_GROUP - 1)) == JSYNC_GROUP - 1 ||
        i + 1 - start == JSYNC_GROUP_MAX || i + 1 == ix->nchunks) {
      XXH128_hash_t h = XXH3_128bits_digest(st);
      ix->groups[n].hi = h.high64;
      ix->groups[n].lo = h.low64;
      ix->group_start[n++] = start;
      start = i + 1;
      XXH3_128bits_reset(st);
    }
  }
  ix->group_start[n] = ix->nchunks;
  ix->ngroups = n;
  XXH3_freeState(st);
  return 0;
}

static int begin(builder *b, jsync_index *ix, uint64_t size,
                 const jsync_chunk_params *p) {
  memset(ix, 0, sizeof(*ix));
  memset(b, 0, sizeof(*b));
  b->ix = ix;
  ix->size = size;
  if (p) {
    ix->params = *p;
  } else {
    jsync_chunk_params_for_size(&ix->params, size);
  }
  b->whole = XXH3_createState();
  if (!b->whole) {
    return -1;
  }
  XXH3_128bits_reset(b->whole);
  return 0;
}

static int finish(builder *b, int rv) {
  if (rv == 0) {
    XXH128_hash_t h = XXH3_128bits_digest(b->whole);
    b->ix->whole.hi = h.high64;
    b->ix->whole.lo = h.low64;
    rv = make_groups(b->ix);
  }
  XXH3_freeState(b->whole);
  if (rv != 0) {
    int saved = errno;
    jsync_index_free(b->ix);
    errno = saved;
  }
  return rv;
}

int jsync_index_buffer(const uint8_t *data, size_t len, jsync_index *out) {
  builder b;
  size_t off = 0;
  int rv = begin(&b, out, len, NULL);
  while (rv == 0 && off < len) {
    size_t n = jsync_chunk_next(&out->params, data + off, len - off, 1);
    rv = add_chunk(&b, off, data + off, n);
    off += n;
  }
  if (rv == 0) {
    XXH3_128bits_update(b.whole, data, len);
  }
  return finish(&b, rv);
}

int jsync_index_fd(int fd, uint64_t size, jsync_index *out) {
  return jsync_index_fd_with(fd, size, NULL, out);
}

int jsync_index_fd_with(int fd, uint64_t size, const jsync_chunk_params *p,
                        jsync_index *out) {
  builder b;
  uint8_t *buf;
  size_t cap, have = 0, used;
  uint64_t base = 0;
  int rv = begin(&b, out, size, p), eof = 0;
  cap = (size_t)out->params.max * 2;
  buf = malloc(cap);
  if (!buf) {
    errno = ENOMEM;
    rv = -1;
  }
  while (rv == 0 && (have > 0 || !eof)) {
    /* Top the buffer up: a chunk decision needs up to `max` bytes. */
    while (!eof && have < cap) {
      ssize_t n = read(fd, buf + have, cap - have);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        rv = -1;
        break;
      }
      if (n == 0) {
        eof = 1;
        break;
      }
      XXH3_128bits_update(b.whole, buf + have, (size_t)n);
      have += (size_t)n;
    }
    used = 0;
    while (rv == 0 && used < have) {
      size_t n = jsync_chunk_next(&out->params, buf + used, have - used, eof);
      if (n == 0) {
        break;
      }
      rv = add_chunk(&b, base + used, buf + used, n);
      used += n;
    }
    memmove(buf, buf + used, have - used);
    have -= used;
    base += used;
  }
  free(buf);
  if (rv == 0) {
    out->size = base; /* what was really read */
  }
  return finish(&b, rv);
}

void jsync_index_free(jsync_index *ix) {
  free(ix->chunks);
  free(ix->groups);
  free(ix->group_start);
  memset(ix, 0, sizeof(*ix));
}

/* ---- comparing ----------------------------------------------------------- */

typedef struct idset {
  jsync_chunk_id *slots;
  unsigned char *used;
  size_t mask;
} idset;

static int idset_init(idset *s, size_t n) {
  size_t cap = 64;
  while (cap < n * 2) {
    cap <<= 1;
  }
  s->slots = malloc(cap * sizeof(*s->slots));
  s->used = calloc(cap, 1);
  s->mask = cap - 1;
  return s->slots && s->used ? 0 : -1;
}

static void idset_free(idset *s) {
  free(s->slots);
  free(s->used);
}

static void idset_add(idset *s, jsync_chunk_id id) {
  size_t i = (size_t)id.lo & s->mask;
  while (s->used[i]) {
    if (jsync_chunk_id_equal(s->slots[i], id)) {
      return;
    }
    i = (i + 1) & s->mask;
  }
  s->used[i] = 1;
  s->slots[i] = id;
}

static int idset_has(const idset *s, jsync_chunk_id id) {
  size_t i = (size_t)id.lo & s->mask;
  while (s->used[i]) {
    if (jsync_chunk_id_equal(s->slots[i], id)) {
      return 1;
    }
    i = (i + 1) & s->mask;
  }
  return 0;
}

int jsync_index_missing(const jsync_index *have, const jsync_index *want,
                        size_t **missing, size_t *nmissing) {
  idset groups, chunks;
  size_t g, i, n = 0;
  size_t *out = malloc((want->nchunks ? want->nchunks : 1) * sizeof(*out));
  if (!out || idset_init(&groups, have->ngroups) != 0 ||
      idset_init(&chunks, have->nchunks) != 0) {
    free(out);
    return -1;
  }
  for (g = 0; g < have->ngroups; ++g) {
    idset_add(&groups, have->groups[g]);
  }
  for (i = 0; i < have->nchunks; ++i) {
    idset_add(&chunks, have->chunks[i].id);
  }
  for (g = 0; g < want->ngroups; ++g) {
    if (idset_has(&groups, want->groups[g])) {
      continue; /* a whole group we have: none of its chunks travel */
    }
    for (i = want->group_start[g]; i < want->group_start[g + 1]; ++i) {
      if (!idset_has(&chunks, want->chunks[i].id)) {
        out[n++] = i;
      }
    }
  }
  idset_free(&groups);
  idset_free(&chunks);
  *missing = out;
  *nmissing = n;
  return 0;
}
