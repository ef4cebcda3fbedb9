/*
 * jsync_recv.c — the receiving role: takes the file list on the control
 * circuit, decides what it lacks, and spreads the files over the data
 * circuits, each run by its own thread that asks for what it needs and
 * assembles new versions beside the old ones.
 *
 * A changed file is rebuilt from three sources: the groups and chunks the
 * receiver already has (in the old version, or in a temporary file an
 * interrupted run left), and the bytes the sender sends.  Only after the
 * result's whole-file hash equals the sender's is it renamed into place.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "jsync_index.h"
#include "jsync_int.h"

/* Files in flight per data circuit. */
#define WINDOW 32
/* Old versions and leftovers a file may be rebuilt from. */
#define MAX_BASES 4

/* ---- a set of strings (the paths the sender listed, for --delete) -------- */

typedef struct strset {
  char **slots;
  size_t cap, n;
} strset;

static int strset_add(strset *s, const char *k) {
  size_t i;
  if (s->n * 2 >= s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 1024, j;
    char **n = calloc(cap, sizeof(*n));
    if (!n) {
      return -1;
    }
    for (j = 0; j < s->cap; ++j) {
      if (s->slots[j]) {
        i = XXH3_64bits(s->slots[j], strlen(s->slots[j])) & (cap - 1);
        while (n[i]) {
          i = (i + 1) & (cap - 1);
        }
        n[i] = s->slots[j];
      }
    }
    free(s->slots);
    s->slots = n;
    s->cap = cap;
  }
  i = XXH3_64bits(k, strlen(k)) & (s->cap - 1);
  while (s->slots[i]) {
    if (strcmp(s->slots[i], k) == 0) {
      return 0;
    }
    i = (i + 1) & (s->cap - 1);
  }
  if (!(s->slots[i] = strdup(k))) {
    return -1;
  }
  s->n++;
  return 0;
}

static int strset_has(const strset *s, const char *k) {
  size_t i;
  if (!s->cap) {
    return 0;
  }
  i = XXH3_64bits(k, strlen(k)) & (s->cap - 1);
  while (s->slots[i]) {
    if (strcmp(s->slots[i], k) == 0) {
      return 1;
    }
    i = (i + 1) & (s->cap - 1);
  }
  return 0;
}

static void strset_free(strset *s) {
  size_t i;
  for (i = 0; i < s->cap; ++i) {
    free(s->slots[i]);
  }
  free(s->slots);
  memset(s, 0, sizeof(*s));
}

/* ---- where old bytes are (hash -> base, offset) -------------------------- */

typedef struct where {
  uint8_t hash[16];
  uint64_t off, len;
  int base; /* -1: empty slot */
} where;

typedef struct wmap {
  where *slots;
  size_t mask;
} wmap;

static uint64_t hkey(const uint8_t h[16]) {
  uint64_t k;
  memcpy(&k, h + 8, sizeof(k));
  return k;
}

static int wmap_init(wmap *m, size_t n) {
  size_t cap = 64, i;
  while (cap < n * 2) {
    cap <<= 1;
  }
  m->slots = malloc(cap * sizeof(*m->slots));
  if (!m->slots) {
    return -1;
  }
  for (i = 0; i < cap; ++i) {
    m->slots[i].base = -1;
  }
  m->mask = cap - 1;
  return 0;
}

static void wmap_put(wmap *m, const uint8_t h[16], int base, uint64_t off,
                     uint64_t len) {
  size_t i = hkey(h) & m->mask;
  while (m->slots[i].base >= 0) {
    if (memcmp(m->slots[i].hash, h, 16) == 0) {
      return; /* the first one is as good as any */
    }
    i = (i + 1) & m->mask;
  }
  memcpy(m->slots[i].hash, h, 16);
  m->slots[i].base = base;
  m->slots[i].off = off;
  m->slots[i].len = len;
}

static const where *wmap_get(const wmap *m, const uint8_t h[16]) {
  size_t i = hkey(h) & m->mask;
  while (m->slots[i].base >= 0) {
    if (memcmp(m->slots[i].hash, h, 16) == 0) {
      return &m->slots[i];
    }
    i = (i + 1) & m->mask;
  }
  return NULL;
}

static void wmap_free(wmap *m) {
  free(m->slots);
  m->slots = NULL;
}

/* ---- jobs: one file each ------------------------------------------------- */

enum { J_WHOLE = 1, J_GROUPS, J_CHUNKS, J_DATA };

typedef struct range {
  uint64_t off, len;
} range;

typedef struct rjob {
  struct rjob *next;
  uint64_t id;
  char *lpath; /* beneath dst_fd */
  jsync_meta meta;
  int state, existed, retried;
  int err;     /* the temporary file could not be made (errno) */
  int inorder; /* J_DATA: h follows the data, which comes in order */
  int started; /* its first request went out */
  jsync_tmp tmp;
  int have_tmp;
  whole_hash *h;
  uint64_t next_off;
  /* bases: [0] the old version when there is one, then leftovers */
  int nbases, base_fd[MAX_BASES + 1], nstale, stale_fd[MAX_BASES];
  int indexed;
  jsync_index base_ix[MAX_BASES + 1];
  /* the sender's groups */
  uint64_t size;
  uint8_t whole[JSYNC_HASH_LEN];
  uint64_t ngroups, pending;
  uint64_t *goff;
  uint8_t *gneed;
  wmap chunks;
  range *miss;
  size_t nmiss, miss_cap;
  uint64_t literal, matched;
} rjob;

typedef struct rchan {
  jsync_sess *s;
  ckt_tcircuit *tc;
  pthread_t th;
  rjob *qhead, *qtail; /* waiting to start (under s->mu) */
  unsigned load;       /* queued + active (under s->mu) */
  rjob *active;        /* this thread's */
  unsigned nactive;
  ZSTD_DCtx *zd;
  uint8_t *buf;
} rchan;

typedef struct recv_state {
  rchan *ch;
  unsigned nch;
  int list_done;
  strset paths; /* local paths listed (for --delete) */
  /* Directories looked at for leftovers of interrupted runs, and those
   * that have some: one readdir per directory, not one per file. */
  strset scanned, leftovers;
  /* Recently used destination directories (the control thread's lstat
   * of every listed entry opens its directory once, not once per entry);
   * emptied whenever something is removed. */
  struct dslot {
    char *path;
    int fd;
    unsigned long used;
  } dcache[8];
  unsigned long dclock;
  struct dirent_meta {
    char *lpath;
    jsync_meta meta;
  } * dirs;
  size_t ndirs, dirs_cap;
  jsync_wentry *e;
  jsync_entry_ctx ctx;
  uint8_t *list_raw;   /* a decompressed ENTRIES_Z */
  int incomplete;      /* the sender could not list everything */
  uint64_t path_bytes; /* remembered per entry, bounded */
} recv_state;

static int blake(const jsync_sess *s) {
  return !!(s->flags & JSYNC_F_BLAKE2B);
}

static void job_free(rjob *j) {
  int k;
  if (!j) {
    return;
  }
  if (j->have_tmp) {
    jsync_tmp_abort(&j->tmp);
  }
  for (k = 0; k < j->nbases; ++k) {
    if (k < j->nbases - j->nstale && j->base_fd[k] >= 0) {
      close(j->base_fd[k]);
    }
    jsync_index_free(&j->base_ix[k]);
  }
  for (k = 0; k < j->nstale; ++k) {
    close(j->stale_fd[k]);
  }
  whole_free(j->h);
  wmap_free(&j->chunks);
  free(j->goff);
  free(j->gneed);
  free(j->miss);
  free(j->lpath);
  free(j);
}

/* Keeps what a failed session wrote so a later run can reuse it: the
 * temporary file stays, unlocked. */
static void job_keep(rjob *j) {
  if (j->have_tmp) {
    if (j->tmp.fd >= 0) {
      close(j->tmp.fd);
    }
    if (j->tmp.dirfd >= 0) {
      close(j->tmp.dirfd);
    }
    j->have_tmp = 0;
  }
}

static void job_result(jsync_sess *s, rjob *j, int what, const char *text) {
  jsync_result *r = calloc(1, sizeof(*r));
  if (!r) {
    sess_fail(s, FAIL_NOMEM, "out of memory");
    return;
  }
  r->what = (uint8_t)what;
  r->id = j ? j->id : 0;
  r->literal = j ? j->literal : 0;
  r->matched = j ? j->matched : 0;
  snprintf(r->path, sizeof(r->path), "%s", j ? j->lpath : "");
  snprintf(r->text, sizeof(r->text), "%s", text ? text : "");
  sess_result(s, r);
  free(r);
}

static void path_result(jsync_sess *s, int what, const char *path,
                        const char *text) {
  jsync_result *r = calloc(1, sizeof(*r));
  if (!r) {
    sess_fail(s, FAIL_NOMEM, "out of memory");
    return;
  }
  r->what = (uint8_t)what;
  snprintf(r->path, sizeof(r->path), "%s", path[0] ? path : ".");
  snprintf(r->text, sizeof(r->text), "%s", text ? text : "");
  sess_result(s, r);
  free(r);
}

static void file_done(jsync_sess *s) {
  if (s->opts && s->opts->live) {
    live_add(&s->opts->live->files_done, 1);
  }
}

/* ---- sending requests ---------------------------------------------------- */

static int send_req(rchan *c, const jsync_req *q, const uint64_t *groups,
                    const range *ranges) {
  jsync_wbuf w;
  uint64_t i;
  jsync_wbuf_init(&w);
  jsync_req_put(&w, q);
  for (i = 0; i < q->nitems; ++i) {
    if (q->kind == JSYNC_REQ_CHUNKS) {
      jsync_req_put_group(&w, groups[i]);
    } else {
      jsync_req_put_range(&w, ranges[i].off, ranges[i].len);
    }
  }
  return sess_send(c->s, c->tc, JSYNC_OP_REQ, &w);
}

/* ---- finishing a file ---------------------------------------------------- */

static void job_finish(rchan *c, rjob *j) {
  rjob **pp;
  for (pp = &c->active; *pp; pp = &(*pp)->next) {
    if (*pp == j) {
      *pp = j->next;
      break;
    }
  }
  c->nactive--;
  file_done(c->s);
  job_free(j);
  pthread_mutex_lock(&c->s->mu);
  c->load--;
  pthread_cond_broadcast(&c->s->cv);
  pthread_mutex_unlock(&c->s->mu);
}

static void job_failed(rchan *c, rjob *j, const char *what, int err) {
  char text[512];
  if (j->state == J_GROUPS || j->state == J_CHUNKS) {
    /* the sender keeps this file's index until told */
    jsync_req q = {JSYNC_REQ_CANCEL, j->id, 0};
    jsync_wbuf w;
    jsync_wbuf_init(&w);
    jsync_req_put(&w, &q);
    sess_send(c->s, c->tc, JSYNC_OP_REQ, &w);
  }
  if (err) {
    snprintf(text, sizeof(text), "%s: %s", what, strerror(err));
  } else {
    snprintf(text, sizeof(text), "%s", what);
  }
  job_result(c->s, j, JSYNC_R_FAILED, text);
  job_finish(c, j);
}

static int start_tmp(rjob *j, int dst_fd) {
  int rv;
  if (j->have_tmp) {
    return 0;
  }
  rv = jsync_tmp_create(dst_fd, j->lpath, &j->tmp);
  if (rv == 0) {
    j->have_tmp = 1;
  }
  return rv;
}

/* Renames the finished file into place and reports it. */
static void job_commit(rchan *c, rjob *j) {
  jsync_sess *s = c->s;
  int rv;
  j->meta.size = j->size;
  rv = jsync_tmp_commit(&j->tmp, &j->meta, !!(s->flags & JSYNC_F_FSYNC));
  j->have_tmp = 0;
  if (rv != 0) {
    job_failed(c, j, "cannot put the new version in place", -rv);
    return;
  }
  if (j->nstale > 0) {
    int k, more = j->nstale == MAX_BASES, fds[MAX_BASES], n, round;
    jsync_stale_remove(s->dst_fd, j->lpath, j->stale_fd, j->nstale);
    /* the leftovers' indexes go with them (job_free sees nbases only) */
    for (k = j->nbases - j->nstale; k < j->nbases; ++k) {
      jsync_index_free(&j->base_ix[k]);
    }
    j->nbases -= j->nstale;
    j->nstale = 0;
    /* More interrupted runs than a file takes bases from left more
     * leftovers: the new version makes them useless too (those a running
     * session holds are locked, so not taken). */
    for (round = 0; more && round < 16; ++round) {
      n = jsync_stale_open(s->dst_fd, j->lpath, fds, MAX_BASES);
      if (n <= 0) {
        break;
      }
      jsync_stale_remove(s->dst_fd, j->lpath, fds, n);
      more = n == MAX_BASES;
    }
  }
  job_result(s, j, j->existed ? JSYNC_R_UPDATED : JSYNC_R_CREATED, NULL);
  job_finish(c, j);
}

/* The hash of what the temporary file holds. */
static int hash_tmp(rchan *c, rjob *j, uint8_t out[JSYNC_HASH_LEN]) {
  whole_hash *h = whole_new(blake(c->s));
  uint64_t off = 0;
  if (!h) {
    return -ENOMEM;
  }
  while (off < j->size) {
    size_t want = j->size - off > JSYNC_DATA_MAX ? JSYNC_DATA_MAX
                                                 : (size_t)(j->size - off);
    ssize_t n = pread(j->tmp.fd, c->buf, want, (off_t)off);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      whole_free(h);
      return -errno;
    }
    if (n == 0) {
      whole_zeros(h, j->size - off); /* the tail is a hole not yet sized */
      break;
    }
    whole_update(h, c->buf, (size_t)n);
    off += (uint64_t)n;
  }
  whole_final(h, out);
  whole_free(h);
  return 0;
}

static int request_whole(rchan *c, rjob *j) {
  jsync_req q = {JSYNC_REQ_WHOLE, j->id, 0};
  j->state = J_WHOLE;
  j->next_off = 0;
  j->literal = j->matched = 0;
  whole_free(j->h);
  j->h = whole_new(blake(c->s));
  if (!j->h) {
    return sess_fail(c->s, FAIL_NOMEM, "out of memory");
  }
  return send_req(c, &q, NULL, NULL);
}

/* ---- bases --------------------------------------------------------------- */

/* Opens the old version (if it is a regular file) and leftovers. */
/* 1 if lpath's directory holds temporary files of jsync (".*.jsync-*"),
 * so leftovers for lpath may be there. */
static int may_have_leftovers(jsync_sess *s, const char *lpath) {
  recv_state *rs = s->recv;
  char dir[JSYNC_WIRE_PATH_MAX + 300];
  const char *slash = strrchr(lpath, '/');
  size_t dl = slash ? (size_t)(slash - lpath) : 0;
  DIR *d;
  struct dirent *de;
  int fd, found = 0;
  memcpy(dir, lpath, dl);
  dir[dl] = '\0';
  if (strset_has(&rs->scanned, dir)) {
    return strset_has(&rs->leftovers, dir);
  }
  fd = jsync_open_beneath(s->dst_fd, dir, O_RDONLY | O_DIRECTORY, 0);
  d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d && fd >= 0) {
    close(fd);
  }
  while (d && (de = readdir(d)) != NULL && !found) {
    found = jsync_is_tmp_name(de->d_name);
  }
  if (d) {
    closedir(d);
  }
  if (strset_add(&rs->scanned, dir) != 0 ||
      (found && strset_add(&rs->leftovers, dir) != 0)) {
    return 1; /* out of memory: just look */
  }
  return found;
}

/* Opens the old version (when lstat saw a regular file there: old_file)
 * and leftovers of interrupted runs as the job's bases. */
static void open_bases(jsync_sess *s, rjob *j, int old_file) {
  int fd;
  if (s->dst_fd < 0) {
    return;
  }
  /* O_NONBLOCK: a FIFO may have taken the file's place since the lstat */
  fd = old_file
           ? jsync_open_beneath(s->dst_fd, j->lpath,
                                O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                                0)
           : -ENOENT;
  if (fd >= 0) {
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
      j->base_fd[j->nbases++] = fd;
    } else {
      close(fd);
    }
  }
  j->nstale =
      may_have_leftovers(s, j->lpath)
          ? jsync_stale_open(s->dst_fd, j->lpath, j->stale_fd, MAX_BASES)
          : 0;
  if (j->nstale < 0) {
    j->nstale = 0;
  }
  for (fd = 0; fd < j->nstale; ++fd) {
    j->base_fd[j->nbases++] = j->stale_fd[fd];
  }
}

static int index_bases(rjob *j, uint32_t avg) {
  jsync_chunk_params p;
  int k;
  jsync_chunk_params_init(&p, avg);
  for (k = 0; k < j->nbases; ++k) {
    struct stat st;
    if (j->indexed && j->base_ix[k].params.avg == avg) {
      continue;
    }
    jsync_index_free(&j->base_ix[k]);
    if (fstat(j->base_fd[k], &st) != 0 ||
        lseek(j->base_fd[k], 0, SEEK_SET) != 0 ||
        jsync_index_fd_with(j->base_fd[k], (uint64_t)st.st_size, &p,
                            &j->base_ix[k]) != 0) {
      memset(&j->base_ix[k], 0, sizeof(j->base_ix[k]));
    }
  }
  j->indexed = 1;
  return 0;
}

/* ---- answers ------------------------------------------------------------- */

static int copy_from(rchan *c, rjob *j, const where *w, uint64_t to) {
  int rv = jsync_tmp_copy(&j->tmp, to, j->base_fd[w->base], w->off, w->len);
  if (rv != 0) {
    job_failed(c, j, "cannot reuse old data", -rv);
    return 1;
  }
  j->matched += w->len;
  if (c->s->opts && c->s->opts->live) {
    live_add(&c->s->opts->live->bytes_done, w->len);
  }
  return 0;
}

static int add_miss(rjob *j, uint64_t off, uint64_t len) {
  if (j->nmiss > 0 &&
      j->miss[j->nmiss - 1].off + j->miss[j->nmiss - 1].len == off) {
    j->miss[j->nmiss - 1].len += len;
    return 0;
  }
  if (j->nmiss == j->miss_cap) {
    size_t cap = j->miss_cap ? j->miss_cap * 2 : 16;
    range *n = realloc(j->miss, cap * sizeof(*n));
    if (!n) {
      return -1;
    }
    j->miss = n;
    j->miss_cap = cap;
  }
  j->miss[j->nmiss].off = off;
  j->miss[j->nmiss].len = len;
  j->nmiss++;
  return 0;
}

static int request_data(rchan *c, rjob *j) {
  jsync_req q = {JSYNC_REQ_DATA, j->id, j->nmiss};
  j->state = J_DATA;
  /* Nothing reused: the data will arrive in order from offset 0, so the
   * whole-file hash can follow it instead of reading the file back. */
  whole_free(j->h);
  j->h = NULL;
  j->inorder = j->matched == 0;
  j->next_off = 0;
  if (j->inorder && !(j->h = whole_new(blake(c->s)))) {
    return sess_fail(c->s, FAIL_NOMEM, "out of memory");
  }
  return send_req(c, &q, NULL, j->miss);
}

static int on_groups(rchan *c, rjob *j, jsync_rbuf *r,
                     const jsync_groups_head *gh) {
  jsync_sess *s = c->s;
  wmap groups;
  uint64_t g, off = 0, *need = NULL, nneed = 0;
  size_t total = 0;
  int k, rv;
  if (j->state != J_GROUPS) {
    return sess_fail(s, FAIL_PROTOCOL, "unexpected group list");
  }
  j->size = gh->size;
  memcpy(j->whole, gh->whole, JSYNC_HASH_LEN);
  index_bases(j, gh->avg);
  /* Identical already (a --checksum run, or only the mtime moved)? */
  if (j->nbases > j->nstale && j->base_ix[0].size == gh->size && !blake(s)) {
    uint8_t mine[16];
    jsync_id_bytes(j->base_ix[0].whole, mine);
    if (memcmp(mine, gh->whole, 16) == 0) {
      jsync_req q = {JSYNC_REQ_CANCEL, j->id, 0};
      int changed;
      struct stat st;
      if (send_req(c, &q, NULL, NULL) != 0) {
        return -1;
      }
      changed = fstat(j->base_fd[0], &st) != 0 ||
                (uint32_t)(st.st_mode & 07777) != j->meta.mode ||
                st.st_mtim.tv_sec != j->meta.mtime_sec ||
                (uint32_t)st.st_mtim.tv_nsec != j->meta.mtime_nsec;
      if (changed) {
        rv = jsync_meta_apply(s->dst_fd, j->lpath, &j->meta);
        if (rv != 0) {
          job_failed(c, j, "cannot set metadata", -rv);
          return 0;
        }
        job_result(s, j, JSYNC_R_META, NULL);
      }
      job_finish(c, j);
      return 0;
    }
  }
  for (k = 0; k < j->nbases; ++k) {
    total += j->base_ix[k].nchunks;
  }
  j->ngroups = gh->ngroups;
  j->goff = calloc(gh->ngroups + 1, sizeof(*j->goff));
  j->gneed = calloc(gh->ngroups + 1, 1);
  need = calloc(gh->ngroups + 1, sizeof(*need));
  groups.slots = NULL;
  if (!j->goff || !j->gneed || !need || wmap_init(&groups, total) != 0 ||
      wmap_init(&j->chunks, total) != 0) {
    wmap_free(&groups);
    free(need);
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  for (k = 0; k < j->nbases; ++k) {
    const jsync_index *ix = &j->base_ix[k];
    size_t i, gi;
    for (i = 0; i < ix->nchunks; ++i) {
      uint8_t h[16];
      jsync_id_bytes(ix->chunks[i].id, h);
      wmap_put(&j->chunks, h, k, ix->chunks[i].off, ix->chunks[i].len);
    }
    for (gi = 0; gi < ix->ngroups; ++gi) {
      uint8_t h[16];
      const jsync_chunk_ref *a = &ix->chunks[ix->group_start[gi]];
      const jsync_chunk_ref *b = &ix->chunks[ix->group_start[gi + 1] - 1];
      jsync_id_bytes(ix->groups[gi], h);
      wmap_put(&groups, h, k, a->off, b->off + b->len - a->off);
    }
  }
  rv = start_tmp(j, s->dst_fd);
  if (rv != 0) {
    wmap_free(&groups);
    free(need);
    job_failed(c, j, "cannot create a temporary file", -rv);
    return 0;
  }
  for (g = 0; g < gh->ngroups; ++g) {
    jsync_wgroup wg;
    const where *w;
    if (jsync_group_get(r, &wg) != 0 || off + wg.bytes > gh->size) {
      wmap_free(&groups);
      free(need);
      return sess_fail(s, FAIL_PROTOCOL, "malformed group list");
    }
    j->goff[g] = off;
    w = wmap_get(&groups, wg.hash);
    if (w && w->len == wg.bytes) {
      if (copy_from(c, j, w, off)) {
        wmap_free(&groups);
        free(need);
        return 0;
      }
    } else {
      j->gneed[g] = 1;
      need[nneed++] = g;
    }
    off += wg.bytes;
  }
  j->goff[gh->ngroups] = off;
  wmap_free(&groups);
  if (off != gh->size || !jsync_r_done(r)) {
    free(need);
    return sess_fail(s, FAIL_PROTOCOL, "malformed group list");
  }
  if (nneed == 0) {
    free(need);
    return request_data(c, j);
  }
  {
    jsync_req q = {JSYNC_REQ_CHUNKS, j->id, nneed};
    j->state = J_CHUNKS;
    j->pending = nneed;
    rv = send_req(c, &q, need, NULL);
  }
  free(need);
  return rv;
}

static int on_chunks(rchan *c, rjob *j, jsync_rbuf *r,
                     const jsync_chunks_head *ch) {
  jsync_sess *s = c->s;
  uint64_t off, end;
  uint32_t i;
  if (j->state != J_CHUNKS || ch->group >= j->ngroups || !j->gneed[ch->group]) {
    return sess_fail(s, FAIL_PROTOCOL, "unexpected chunk list");
  }
  j->gneed[ch->group] = 0;
  off = j->goff[ch->group];
  end = j->goff[ch->group + 1];
  for (i = 0; i < ch->nchunks; ++i) {
    jsync_wchunk wc;
    const where *w;
    if (jsync_chunk_get(r, &wc) != 0 || off + wc.len > end) {
      return sess_fail(s, FAIL_PROTOCOL, "malformed chunk list");
    }
    w = wmap_get(&j->chunks, wc.hash);
    if (w && w->len == wc.len) {
      if (copy_from(c, j, w, off)) {
        return 0;
      }
    } else if (add_miss(j, off, wc.len) != 0) {
      return sess_fail(s, FAIL_NOMEM, "out of memory");
    }
    off += wc.len;
  }
  if (off != end || !jsync_r_done(r)) {
    return sess_fail(s, FAIL_PROTOCOL, "malformed chunk list");
  }
  if (--j->pending == 0) {
    return request_data(c, j);
  }
  return 0;
}

static int on_data(rchan *c, rjob *j, jsync_rbuf *r, const jsync_data_head *d) {
  jsync_sess *s = c->s;
  const uint8_t *p = r->p + r->off;
  size_t n = r->len - r->off;
  int rv = 0;
  if (j->state != J_WHOLE && j->state != J_DATA) {
    return sess_fail(s, FAIL_PROTOCOL, "unexpected file data");
  }
  if (j->state == J_WHOLE && d->off != j->next_off) {
    return sess_fail(s, FAIL_PROTOCOL, "file data out of order");
  }
  if (j->state == J_DATA && j->inorder && d->off != j->next_off) {
    j->inorder = 0; /* hash the file afterwards instead */
    whole_free(j->h);
    j->h = NULL;
  }
  if (j->state == J_DATA && d->off + d->raw_len > j->size) {
    return sess_fail(s, FAIL_PROTOCOL, "file data past the end");
  }
  if (d->codec == JSYNC_CODEC_ZSTD) {
    size_t got = ZSTD_decompressDCtx(c->zd, c->buf, JSYNC_DATA_MAX, p, n);
    if (ZSTD_isError(got) || got != d->raw_len) {
      return sess_fail(s, FAIL_PROTOCOL, "corrupt compressed data");
    }
    p = c->buf;
    n = got;
  }
  if (d->codec != JSYNC_CODEC_ZERO) {
    rv = jsync_tmp_write(&j->tmp, d->off, p, n);
    if (j->h) {
      whole_update(j->h, p, n);
    }
  } else if (j->h) {
    whole_zeros(j->h, d->raw_len);
  }
  if (rv != 0) {
    /* Tell the sender to stop; its remaining data is skipped. */
    jsync_req q = {JSYNC_REQ_CANCEL, j->id, 0};
    job_failed(c, j, "cannot write", -rv);
    return send_req(c, &q, NULL, NULL);
  }
  j->next_off = d->off + d->raw_len;
  j->literal += d->raw_len;
  if (s->opts && s->opts->live) {
    live_add(&s->opts->live->bytes_done, d->raw_len);
  }
  return 0;
}

static int on_file_end(rchan *c, rjob *j, const jsync_file_end *e) {
  jsync_sess *s = c->s;
  uint8_t got[JSYNC_HASH_LEN];
  if (j->state != J_WHOLE && j->state != J_DATA && j->state != J_GROUPS) {
    return sess_fail(s, FAIL_PROTOCOL, "unexpected end of file");
  }
  if (e->status != 0) {
    job_result(s, j, JSYNC_R_FAILED, e->text);
    job_finish(c, j);
    return 0;
  }
  if (j->state == J_GROUPS) {
    return sess_fail(s, FAIL_PROTOCOL, "unexpected end of file");
  }
  if (j->state == J_WHOLE) {
    if (e->size != j->next_off) {
      return sess_fail(s, FAIL_PROTOCOL, "file size does not match its data");
    }
    j->size = e->size;
    whole_final(j->h, got);
    if (memcmp(got, e->whole, JSYNC_HASH_LEN) != 0) {
      job_failed(c, j, "the whole-file hash does not match", 0);
      return 0;
    }
    job_commit(c, j);
    return 0;
  }
  /* J_DATA: every byte is in; check the whole before it counts. */
  if (j->inorder && j->h && j->next_off == j->size) {
    whole_final(j->h, got);
  } else {
    int rv = hash_tmp(c, j, got);
    if (rv != 0) {
      job_failed(c, j, "cannot read back the new version", -rv);
      return 0;
    }
  }
  if (memcmp(got, j->whole, JSYNC_HASH_LEN) != 0) {
    if (j->retried) {
      job_failed(c, j, "the whole-file hash does not match", 0);
      return 0;
    }
    /* The file changed while we worked, or old data lied: once more,
     * whole. */
    j->retried = 1;
    jsync_tmp_abort(&j->tmp);
    j->have_tmp = 0;
    if (start_tmp(j, s->dst_fd) != 0) {
      job_failed(c, j, "cannot create a temporary file", EIO);
      return 0;
    }
    return request_whole(c, j);
  }
  job_commit(c, j);
  return 0;
}

static rjob *find_job(rchan *c, uint64_t id) {
  rjob *j;
  for (j = c->active; j; j = j->next) {
    if (j->id == id) {
      return j;
    }
  }
  return NULL;
}

/* Handles one answer; a finished or failed file may already be gone, and
 * answers for it (sent before our CANCEL arrived) are skipped. */
static int on_msg(rchan *c, int64_t op, const uint8_t *p, size_t len) {
  jsync_sess *s = c->s;
  jsync_rbuf r;
  rjob *j;
  jsync_rbuf_init(&r, p, len);
  switch (op) {
  case JSYNC_OP_GROUPS: {
    jsync_groups_head gh;
    if (jsync_groups_head_get(&r, &gh) != 0) {
      break;
    }
    j = find_job(c, gh.id);
    return j ? on_groups(c, j, &r, &gh) : 0;
  }
  case JSYNC_OP_CHUNKS: {
    jsync_chunks_head ch;
    if (jsync_chunks_head_get(&r, &ch) != 0) {
      break;
    }
    j = find_job(c, ch.id);
    return j ? on_chunks(c, j, &r, &ch) : 0;
  }
  case JSYNC_OP_DATA: {
    jsync_data_head d;
    if (jsync_data_head_get(&r, &d) != 0) {
      break;
    }
    j = find_job(c, d.id);
    return j ? on_data(c, j, &r, &d) : 0;
  }
  case JSYNC_OP_FILE_END: {
    jsync_file_end *e = malloc(sizeof(*e));
    int rv = 0;
    if (!e) {
      return sess_fail(s, FAIL_NOMEM, "out of memory");
    }
    if (jsync_file_end_decode(p, len, e) != 0) {
      free(e);
      break;
    }
    j = find_job(c, e->id);
    if (j) {
      rv = on_file_end(c, j, e);
    }
    free(e);
    return rv;
  }
  default:
    return sess_fail(s, FAIL_PROTOCOL, "unexpected message %lld",
                     (long long)op);
  }
  return sess_fail(s, FAIL_PROTOCOL, "malformed message %lld", (long long)op);
}

static int on_answer(rchan *c, const ckt_fragment *f) {
  jsync_rbuf r;
  int64_t op;
  const uint8_t *p;
  size_t len;
  int rv;
  if (f->op != JSYNC_OP_BUNDLE) {
    return on_msg(c, f->op, f->payload, f->payload_len);
  }
  jsync_rbuf_init(&r, f->payload, f->payload_len);
  while ((rv = jsync_bundle_next(&r, &op, &p, &len)) == 1) {
    if (on_msg(c, op, p, len) != 0) {
      return -1;
    }
  }
  return rv < 0 ? sess_fail(c->s, FAIL_PROTOCOL, "malformed bundle") : 0;
}

/* Starts the jobs taken from the queue: one REQ batch for all of them,
 * then the old versions are indexed while the sender works. */
static int start_jobs(rchan *c, rjob *batch) {
  jsync_sess *s = c->s;
  jsync_wbuf w;
  rjob *j, *next;
  /* Active first: whatever fails below, the leaving path sees them all. */
  for (j = batch; j; j = next) {
    next = j->next;
    j->next = c->active;
    c->active = j;
    c->nactive++;
  }
  jsync_wbuf_init(&w);
  for (j = c->active; j; j = j->next) {
    jsync_req q = {
        (uint8_t)(j->state == J_WHOLE ? JSYNC_REQ_WHOLE : JSYNC_REQ_GROUPS),
        j->id, 0};
    if (j->started) {
      continue;
    }
    if (j->state == J_WHOLE) {
      int rv = start_tmp(j, s->dst_fd);
      j->h = whole_new(blake(s));
      if (!j->h) {
        jsync_wbuf_free(&w);
        return sess_fail(s, FAIL_NOMEM, "out of memory");
      }
      if (rv != 0) {
        q.kind = JSYNC_REQ_CANCEL; /* keeps the batch simple */
        j->err = -rv;
      }
    }
    jsync_req_put(&w, &q);
  }
  if (sess_send(s, c->tc, JSYNC_OP_REQ, &w) != 0) {
    return -1;
  }
  for (j = c->active; j; j = next) {
    next = j->next;
    if (j->started) {
      continue;
    }
    j->started = 1;
    if (j->err) {
      job_failed(c, j, "cannot create a temporary file", j->err);
    } else if (j->state == J_GROUPS) {
      jsync_chunk_params p;
      jsync_chunk_params_for_size(&p, j->meta.size);
      index_bases(j, p.avg);
    }
  }
  return 0;
}

static void *rchan_main(void *arg) {
  rchan *c = arg;
  jsync_sess *s = c->s;
  recv_state *rs = s->recv;
  for (;;) {
    rjob *batch = NULL, **tail = &batch;
    ckt_fragment *f = NULL;
    int rv, done = 0;
    pthread_mutex_lock(&s->mu);
    while (!s->fail && !s->stop && !c->qhead && c->nactive == 0 &&
           !rs->list_done) {
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_nsec += POLL_MS * 1000000L;
      if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&s->cv, &s->mu, &until);
    }
    if (s->fail || s->stop) {
      done = 1;
    } else if (!c->qhead && c->nactive == 0 && rs->list_done) {
      done = 1;
    } else {
      unsigned room = WINDOW - c->nactive;
      while (c->qhead && room-- > 0) {
        rjob *j = c->qhead;
        c->qhead = j->next;
        if (!c->qhead) {
          c->qtail = NULL;
        }
        j->next = NULL;
        *tail = j;
        tail = &j->next;
      }
    }
    pthread_mutex_unlock(&s->mu);
    if (done) {
      break;
    }
    if (batch && start_jobs(c, batch) != 0) {
      break;
    }
    if (c->nactive == 0) {
      continue;
    }
    /* Short waits while more files may come, so they start promptly. */
    rv = ckt_tcircuit_recv(
        c->tc, rs->list_done || c->nactive >= WINDOW ? POLL_MS : 2, &f);
    if (rv == CKT_ERR_TIMEOUT) {
      continue;
    }
    if (rv != CKT_OK || f->type != CKT_FRAG_DATA) {
      sess_fail_circuit(s, c->tc, rv, rv == CKT_OK ? f : NULL);
      ckt_fragment_free(f);
      break;
    }
    rv = on_answer(c, f);
    ckt_fragment_free(f);
    if (rv != 0) {
      break;
    }
  }
  /* Leaving early: keep what arrived for the next run. */
  while (c->active) {
    rjob *j = c->active;
    c->active = j->next;
    job_keep(j);
    job_free(j);
  }
  pthread_mutex_lock(&s->mu);
  while (c->qhead) {
    rjob *j = c->qhead;
    c->qhead = j->next;
    job_free(j);
  }
  c->load = 0;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* Hands a job to the least loaded circuit, waiting while all are full. */
static int dispatch(jsync_sess *s, rjob *j) {
  recv_state *rs = s->recv;
  rchan *best;
  unsigned k;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    best = &rs->ch[0];
    for (k = 1; k < rs->nch; ++k) {
      if (rs->ch[k].load < best->load) {
        best = &rs->ch[k];
      }
    }
    if (s->fail || s->stop || best->load < WINDOW * 2) {
      break;
    }
    pthread_cond_wait(&s->cv, &s->mu);
  }
  if (s->fail || s->stop) {
    pthread_mutex_unlock(&s->mu);
    job_free(j);
    return -1;
  }
  j->next = NULL;
  if (best->qtail) {
    best->qtail->next = j;
  } else {
    best->qhead = j;
  }
  best->qtail = j;
  best->load++;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return 0;
}

/* ---- the destination ----------------------------------------------------- */

static int mkdirs_local(char *path) {
  char *p;
  for (p = path + 1; *p; ++p) {
    if (*p == '/') {
      *p = '\0';
      if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        *p = '/';
        return -1;
      }
      *p = '/';
    }
  }
  return mkdir(path, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* Decides where entries go (see jsync.h) and opens it. */
static int setup_dst(jsync_sess *s, const jsync_list_begin *b) {
  char d[JSYNC_PATH_MAX + 2];
  size_t len;
  int want_dir, is_dir = 0, exists = 0, dry = !!(s->flags & JSYNC_F_DRY_RUN);
  struct stat st;
  snprintf(d, sizeof(d), "%s", s->dst ? s->dst : "");
  len = strlen(d);
  want_dir = (len > 0 && d[len - 1] == '/') || b->nsources > 1 ||
             (b->flags & JSYNC_LIST_CONTENTS);
  while (len > 1 && d[len - 1] == '/') {
    d[--len] = '\0';
  }
  if (s->dst_beneath) {
    int rv;
    if (strcmp(d, ".") == 0 || strcmp(d, "/") == 0) {
      d[0] = '\0';
    }
    rv = jsync_lstat_beneath(s->root_fd, d, &st);
    exists = rv == 0;
    is_dir = exists && S_ISDIR(st.st_mode);
    if (rv != 0 && rv != -ENOENT) {
      return sess_fail(s, FAIL_REFUSED, "%s: %s", d[0] ? d : ".",
                       rv == -EXDEV ? "outside the server's root"
                                    : strerror(-rv));
    }
    if (is_dir || want_dir) {
      if (!exists && !dry && (rv = jsync_mkdirs(s->root_fd, d, 0755)) != 0) {
        return sess_fail(s, FAIL_REFUSED, "%s: %s", d, strerror(-rv));
      }
      if (exists && !is_dir) {
        return sess_fail(s, FAIL_REFUSED, "%s: not a directory", d);
      }
      s->dst_fd = exists || !dry ? jsync_open_beneath(s->root_fd, d,
                                                      O_RDONLY | O_DIRECTORY, 0)
                                 : -1;
    } else {
      const char *leaf;
      char *slash = strrchr(d, '/');
      if (slash && !dry) {
        *slash = '\0';
        rv = jsync_mkdirs(s->root_fd, d, 0755);
        *slash = '/';
        if (rv != 0) {
          return sess_fail(s, FAIL_REFUSED, "%s: %s", d, strerror(-rv));
        }
      }
      s->dst_fd = jsync_open_parent(s->root_fd, d, &leaf);
      s->rename_top = 1;
      snprintf(s->top_to, sizeof(s->top_to), "%s", leaf);
      if (s->dst_fd < 0 && dry) {
        s->dst_fd = -1;
        return 0;
      }
    }
    if (s->dst_fd < 0 && !(dry && !exists)) {
      return sess_fail(s, FAIL_REFUSED, "%s: %s", d[0] ? d : ".",
                       strerror(-s->dst_fd));
    }
    if (s->dst_fd < 0) {
      s->dst_fd = -1;
    }
    return 0;
  }
  /* local */
  if (len == 0) {
    snprintf(d, sizeof(d), ".");
  }
  exists = stat(d, &st) == 0;
  is_dir = exists && S_ISDIR(st.st_mode);
  if (is_dir || want_dir) {
    if (exists && !is_dir) {
      return sess_fail(s, FAIL_LOCAL, "%s: not a directory", d);
    }
    if (!exists && !dry && mkdirs_local(d) != 0) {
      return sess_fail(s, FAIL_LOCAL, "%s: %s", d, strerror(errno));
    }
    s->dst_fd =
        exists || !dry ? open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
  } else {
    char *slash = strrchr(d, '/');
    const char *leaf = d;
    if (slash) {
      leaf = slash + 1;
      *slash = '\0';
      if (!dry && slash != d && mkdirs_local(d) != 0) {
        return sess_fail(s, FAIL_LOCAL, "%s: %s", d, strerror(errno));
      }
      s->dst_fd =
          open(slash == d ? "/" : d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } else {
      s->dst_fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    s->rename_top = 1;
    snprintf(s->top_to, sizeof(s->top_to), "%s", leaf);
  }
  if (s->dst_fd < 0 && !(dry && !exists)) {
    return sess_fail(s, FAIL_LOCAL, "%s: %s", d, strerror(errno));
  }
  return 0;
}

/* The local path of a wire path, or -1 if the sender had no business
 * naming it. */
static int map_path(jsync_sess *s, const char *wire, char *out, size_t outsz) {
  if (wire[0] == '\0') {
    if (s->rename_top) {
      return -1;
    }
    out[0] = '\0';
    return 0;
  }
  if (!jsync_path_valid(wire)) {
    return -1;
  }
  if (s->rename_top) {
    size_t tl;
    const char *slash = strchr(wire, '/');
    tl = slash ? (size_t)(slash - wire) : strlen(wire);
    if (s->top_from[0] == '\0') {
      if (tl >= sizeof(s->top_from)) {
        return -1;
      }
      memcpy(s->top_from, wire, tl);
      s->top_from[tl] = '\0';
    }
    if (tl != strlen(s->top_from) || memcmp(wire, s->top_from, tl) != 0) {
      return -1;
    }
    if ((size_t)snprintf(out, outsz, "%s%s", s->top_to, wire + tl) >= outsz) {
      return -1;
    }
    return 0;
  }
  if ((size_t)snprintf(out, outsz, "%s", wire) >= outsz) {
    return -1;
  }
  return 0;
}

/* ---- entries ------------------------------------------------------------- */

static void meta_of(const jsync_wentry *e, jsync_meta *m) {
  memset(m, 0, sizeof(*m));
  m->type = e->type == JSYNC_E_DIR       ? JSYNC_DIR
            : e->type == JSYNC_E_SYMLINK ? JSYNC_SYMLINK
                                         : JSYNC_FILE;
  m->mode = e->mode;
  m->uid = e->uid;
  m->gid = e->gid;
  m->size = e->size;
  m->mtime_sec = e->mtime_sec;
  m->mtime_nsec = e->mtime_nsec;
}

static void dcache_clear(recv_state *rs) {
  size_t i;
  for (i = 0; i < sizeof(rs->dcache) / sizeof(rs->dcache[0]); ++i) {
    if (rs->dcache[i].path) {
      close(rs->dcache[i].fd);
      free(rs->dcache[i].path);
      rs->dcache[i].path = NULL;
    }
  }
}

/* An open descriptor of directory `dir` beneath the destination (owned
 * by the cache), or -errno. */
static int dcache_get(jsync_sess *s, const char *dir) {
  recv_state *rs = s->recv;
  struct dslot *victim = &rs->dcache[0];
  size_t i;
  int fd;
  for (i = 0; i < sizeof(rs->dcache) / sizeof(rs->dcache[0]); ++i) {
    struct dslot *d = &rs->dcache[i];
    if (d->path && strcmp(d->path, dir) == 0) {
      d->used = ++rs->dclock;
      return d->fd;
    }
    if (!d->path || d->used < victim->used) {
      victim = d;
    }
  }
  fd = jsync_open_beneath(s->dst_fd, dir, O_RDONLY | O_DIRECTORY, 0);
  if (fd < 0) {
    return fd;
  }
  if (victim->path) {
    close(victim->fd);
    free(victim->path);
  }
  victim->path = strdup(dir);
  if (!victim->path) {
    close(fd);
    return -ENOMEM;
  }
  victim->fd = fd;
  victim->used = ++rs->dclock;
  return fd;
}

/* Removes lpath (whatever it is) beneath the destination. */
static int remove_dst(jsync_sess *s, const char *lpath) {
  dcache_clear(s->recv);
  return jsync_remove(s->dst_fd, lpath);
}

static int lstat_dst(jsync_sess *s, const char *lpath, struct stat *st) {
  char dir[JSYNC_WIRE_PATH_MAX + 300];
  const char *slash;
  size_t dl;
  int dfd;
  if (s->dst_fd < 0) {
    return -ENOENT;
  }
  if (lpath[0] == '\0') {
    return fstat(s->dst_fd, st) == 0 ? 0 : -errno;
  }
  slash = strrchr(lpath, '/');
  dl = slash ? (size_t)(slash - lpath) : 0;
  if (dl >= sizeof(dir)) {
    return -ENAMETOOLONG;
  }
  memcpy(dir, lpath, dl);
  dir[dl] = '\0';
  dfd = dcache_get(s, dir);
  if (dfd < 0) {
    return dfd == -ENOMEM ? jsync_lstat_beneath(s->dst_fd, lpath, st) : dfd;
  }
  /* one component under a directory opened beneath the root, not
   * followed: cannot leave the root */
  return fstatat(dfd, slash ? slash + 1 : lpath, st, AT_SYMLINK_NOFOLLOW) == 0
             ? 0
             : -errno;
}

static int remember_dir(recv_state *rs, const char *lpath,
                        const jsync_meta *m) {
  if (rs->ndirs == rs->dirs_cap) {
    size_t cap = rs->dirs_cap ? rs->dirs_cap * 2 : 256;
    struct dirent_meta *n = realloc(rs->dirs, cap * sizeof(*n));
    if (!n) {
      return -1;
    }
    rs->dirs = n;
    rs->dirs_cap = cap;
  }
  if (!(rs->dirs[rs->ndirs].lpath = strdup(lpath))) {
    return -1;
  }
  rs->dirs[rs->ndirs].meta = *m;
  rs->ndirs++;
  return 0;
}

static int owner_differs(const struct stat *st, const jsync_meta *m) {
  static int root = -1; /* the effective uid does not change under us */
  if (root < 0) {
    root = geteuid() == 0;
  }
  return root && (st->st_uid != m->uid || st->st_gid != m->gid);
}

static int same_mtime(const struct stat *st, const jsync_meta *m) {
  return st->st_mtim.tv_sec == m->mtime_sec &&
         (uint32_t)st->st_mtim.tv_nsec == m->mtime_nsec;
}

static int on_dir(jsync_sess *s, const char *lpath, const jsync_meta *m) {
  recv_state *rs = s->recv;
  struct stat st;
  int rv = lstat_dst(s, lpath, &st), dry = !!(s->flags & JSYNC_F_DRY_RUN);
  if (rv == 0 && S_ISDIR(st.st_mode)) {
    return dry ? 0 : remember_dir(rs, lpath, m);
  }
  if (!dry) {
    if (rv == 0 && (rv = remove_dst(s, lpath)) != 0) {
      path_result(s, JSYNC_R_FAILED, lpath, strerror(-rv));
      return 0;
    }
    if ((rv = jsync_mkdirs(s->dst_fd, lpath, 0700)) != 0) {
      path_result(s, JSYNC_R_FAILED, lpath, strerror(-rv));
      return 0;
    }
    if (remember_dir(rs, lpath, m) != 0) {
      return -1;
    }
  }
  {
    char shown[JSYNC_WIRE_PATH_MAX + 2];
    snprintf(shown, sizeof(shown), "%s/", lpath);
    path_result(s, JSYNC_R_CREATED, shown, NULL);
  }
  return 0;
}

static int on_symlink(jsync_sess *s, const char *lpath, const jsync_meta *m,
                      const char *target) {
  struct stat st;
  int rv = lstat_dst(s, lpath, &st), dry = !!(s->flags & JSYNC_F_DRY_RUN);
  int what = rv == 0 ? JSYNC_R_UPDATED : JSYNC_R_CREATED;
  if (rv == 0 && S_ISLNK(st.st_mode)) {
    char cur[JSYNC_WIRE_PATH_MAX + 1];
    const char *leaf;
    int dfd = jsync_open_parent(s->dst_fd, lpath, &leaf);
    ssize_t n = dfd >= 0 ? readlinkat(dfd, leaf, cur, sizeof(cur) - 1) : -1;
    if (dfd >= 0) {
      close(dfd);
    }
    if (n >= 0) {
      cur[n] = '\0';
      if (strcmp(cur, target) == 0) {
        if (!same_mtime(&st, m) || owner_differs(&st, m)) {
          if (!dry && (rv = jsync_meta_apply(s->dst_fd, lpath, m)) != 0) {
            path_result(s, JSYNC_R_FAILED, lpath, strerror(-rv));
          }
        }
        return 0;
      }
    }
  }
  if (!dry) {
    if (rv == 0 && S_ISDIR(st.st_mode) && (rv = remove_dst(s, lpath)) != 0) {
      path_result(s, JSYNC_R_FAILED, lpath, strerror(-rv));
      return 0;
    }
    if ((rv = jsync_symlink_put(s->dst_fd, lpath, target, m)) != 0) {
      path_result(s, JSYNC_R_FAILED, lpath, strerror(-rv));
      return 0;
    }
  }
  {
    char shown[2 * JSYNC_WIRE_PATH_MAX + 8];
    snprintf(shown, sizeof(shown), "%s -> %s", lpath, target);
    path_result(s, what, shown, NULL);
  }
  return 0;
}

static int on_file(jsync_sess *s, const jsync_wentry *e, const char *lpath,
                   const jsync_meta *m) {
  struct stat st;
  int rv = lstat_dst(s, lpath, &st), dry = !!(s->flags & JSYNC_F_DRY_RUN);
  rjob *j;
  if (rv == 0 && S_ISREG(st.st_mode) && !(s->flags & JSYNC_F_CHECKSUM) &&
      (uint64_t)st.st_size == m->size && same_mtime(&st, m)) {
    /* up to date; perhaps the mode or owner moved */
    if ((uint32_t)(st.st_mode & 07777) != m->mode || owner_differs(&st, m)) {
      if (!dry && (rv = jsync_meta_apply(s->dst_fd, lpath, m)) != 0) {
        path_result(s, JSYNC_R_FAILED, lpath, strerror(-rv));
        return 0;
      }
      path_result(s, JSYNC_R_META, lpath, NULL);
    }
    file_done(s);
    return 0;
  }
  if (dry) {
    path_result(s, rv == 0 ? JSYNC_R_UPDATED : JSYNC_R_CREATED, lpath, NULL);
    file_done(s);
    return 0;
  }
  if (rv == 0 && S_ISDIR(st.st_mode) && (rv = remove_dst(s, lpath)) != 0) {
    path_result(s, JSYNC_R_FAILED, lpath, strerror(-rv));
    return 0;
  }
  j = calloc(1, sizeof(*j));
  if (!j || !(j->lpath = strdup(lpath))) {
    free(j);
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  j->id = e->id;
  j->meta = *m;
  j->size = m->size;
  j->existed = rv == 0; /* reported as updated, whatever was there */
  j->tmp.fd = j->tmp.dirfd = -1;
  open_bases(s, j, rv == 0 && S_ISREG(st.st_mode));
  j->state = j->nbases > 0 && !(s->flags & JSYNC_F_WHOLE) && m->size > 0
                 ? J_GROUPS
                 : J_WHOLE;
  if (s->opts && s->opts->live) {
    live_add(&s->opts->live->bytes_total, m->size);
  }
  return dispatch(s, j);
}

static int on_entries(jsync_sess *s, const ckt_fragment *f) {
  recv_state *rs = s->recv;
  jsync_wentry *e = rs->e;
  char lpath[JSYNC_WIRE_PATH_MAX + 300];
  jsync_rbuf r;
  int rv;
  if (f->op == JSYNC_OP_ENTRIES_Z) {
    size_t n;
    if (!rs->list_raw && !(rs->list_raw = malloc(JSYNC_LIST_RAW_MAX))) {
      return sess_fail(s, FAIL_NOMEM, "out of memory");
    }
    if (jsync_entries_z_unpack(f->payload, f->payload_len, rs->list_raw,
                               JSYNC_LIST_RAW_MAX, &n) != 0) {
      return sess_fail(s, FAIL_PROTOCOL, "malformed compressed file list");
    }
    jsync_rbuf_init(&r, rs->list_raw, n);
  } else {
    jsync_rbuf_init(&r, f->payload, f->payload_len);
  }
  {
    /* paths start afresh in each batch; ids keep growing across them */
    uint64_t next_id = rs->ctx.next_id;
    jsync_entry_ctx_init(&rs->ctx);
    rs->ctx.next_id = next_id;
  }
  while ((rv = jsync_entry_next(&r, &rs->ctx, e)) == 1) {
    jsync_meta m;
    if (map_path(s, e->path, lpath, sizeof(lpath)) != 0 ||
        (e->path[0] == '\0' && e->type != JSYNC_E_DIR)) {
      return sess_fail(s, FAIL_PROTOCOL,
                       "the sender named '%s', outside what it announced",
                       e->path);
    }
    pthread_mutex_lock(&s->mu);
    s->st.files++;
    rv = s->st.files > JSYNC_WIRE_ENTRIES_MAX;
    pthread_mutex_unlock(&s->mu);
    if (rv) {
      return sess_fail(s, FAIL_PROTOCOL, "more than %u entries in one session",
                       JSYNC_WIRE_ENTRIES_MAX);
    }
    rs->path_bytes += strlen(lpath) + 1;
    if (rs->path_bytes > JSYNC_WIRE_LIST_BYTES_MAX) {
      return sess_fail(s, FAIL_PROTOCOL,
                       "the file list's paths exceed %u bytes in one session",
                       JSYNC_WIRE_LIST_BYTES_MAX);
    }
    if (s->opts && s->opts->live) {
      live_add(&s->opts->live->files_total, 1);
    }
    if ((s->flags & JSYNC_F_DELETE) && strset_add(&rs->paths, lpath) != 0) {
      return sess_fail(s, FAIL_NOMEM, "out of memory");
    }
    meta_of(e, &m);
    switch (e->type) {
    case JSYNC_E_DIR:
      rv = on_dir(s, lpath, &m);
      break;
    case JSYNC_E_SYMLINK:
      rv = on_symlink(s, lpath, &m, e->link);
      break;
    default:
      rv = on_file(s, e, lpath, &m);
    }
    if (rv != 0) {
      return -1;
    }
  }
  return rv < 0 ? sess_fail(s, FAIL_PROTOCOL, "malformed file list") : 0;
}

/* ---- the end: --delete and directory metadata ---------------------------- */

typedef struct deleter {
  jsync_sess *s;
  char **victims;
  size_t n, cap;
  /* A victim or an excluded directory whose subtree is being walked: all
   * of it goes with the victim, or stays with the excluded one. */
  char skip[JSYNC_WIRE_PATH_MAX + 300];
} deleter;

static int is_temp_name(const char *path) {
  const char *leaf = strrchr(path, '/');
  leaf = leaf ? leaf + 1 : path;
  return jsync_is_tmp_name(leaf);
}

static int on_existing(const char *path, const jsync_meta *m, const char *link,
                       void *user) {
  deleter *d = user;
  jsync_sess *s = d->s;
  recv_state *rs = s->recv;
  char wire[JSYNC_WIRE_PATH_MAX + 300];
  size_t sl;
  (void)link;
  if (path[0] == '\0' || strset_has(&rs->paths, path) || is_temp_name(path)) {
    return 0;
  }
  sl = strlen(d->skip);
  if (sl > 0 && strncmp(path, d->skip, sl) == 0 && path[sl] == '/') {
    return 0;
  }
  /* excludes speak the sender's paths */
  if (s->rename_top && s->top_from[0]) {
    snprintf(wire, sizeof(wire), "%s%s", s->top_from, path + strlen(s->top_to));
  } else {
    snprintf(wire, sizeof(wire), "%s", path);
  }
  if (jsync_excluded(s->ex, wire, m->type == JSYNC_DIR)) {
    if (m->type == JSYNC_DIR) {
      snprintf(d->skip, sizeof(d->skip), "%s", path);
    }
    return 0;
  }
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 64;
    char **n = realloc(d->victims, cap * sizeof(*n));
    if (!n) {
      return -1;
    }
    d->victims = n;
    d->cap = cap;
  }
  if (!(d->victims[d->n] = strdup(path))) {
    return -1;
  }
  snprintf(d->skip, sizeof(d->skip), "%s", path);
  d->n++;
  return 0;
}

static int delete_extraneous(jsync_sess *s) {
  deleter d;
  size_t i;
  int rv;
  const char *top = "";
  if (s->dst_fd < 0) {
    return 0;
  }
  if (((recv_state *)s->recv)->incomplete) {
    /* what the sender could not list would look extraneous */
    path_result(s, JSYNC_R_FAILED, "",
                "not deleting: the sender could not list everything");
    return 0;
  }
  if (s->rename_top) {
    struct stat st;
    /* only a directory that stood for the single source */
    if (jsync_lstat_beneath(s->dst_fd, s->top_to, &st) != 0 ||
        !S_ISDIR(st.st_mode) || !s->top_from[0]) {
      return 0;
    }
    top = s->top_to;
  }
  memset(&d, 0, sizeof(d));
  d.s = s;
  rv = jsync_walk(s->dst_fd, top, NULL, on_existing, NULL, &d);
  for (i = 0; i < d.n; ++i) {
    int r = 0;
    if (rv == 0 && !(s->flags & JSYNC_F_DRY_RUN)) {
      dcache_clear(s->recv);
      r = jsync_remove(s->dst_fd, d.victims[i]);
    }
    if (rv == 0) {
      path_result(s, r == 0 ? JSYNC_R_DELETED : JSYNC_R_FAILED, d.victims[i],
                  r == 0 ? NULL : strerror(-r));
    }
    free(d.victims[i]);
  }
  free(d.victims);
  if (rv != 0) {
    return sess_fail(s, FAIL_LOCAL, "cannot list the destination for --delete");
  }
  return 0;
}

static void finish_dirs(jsync_sess *s) {
  recv_state *rs = s->recv;
  size_t i = rs->ndirs;
  /* children before parents: their changes moved the parents' mtimes */
  while (i-- > 0) {
    const char *p = rs->dirs[i].lpath;
    const jsync_meta *m = &rs->dirs[i].meta;
    int rv;
    if (p[0] == '\0') {
      struct timespec ts[2] = {{0, UTIME_OMIT}, {m->mtime_sec, m->mtime_nsec}};
      rv = fchmod(s->dst_fd, m->mode) == 0 && futimens(s->dst_fd, ts) == 0
               ? 0
               : -errno;
    } else {
      rv = jsync_meta_apply(s->dst_fd, p, m);
    }
    if (rv != 0) {
      path_result(s, JSYNC_R_FAILED, p, strerror(-rv));
    }
  }
}

/* ---- the role ------------------------------------------------------------ */

int receiver_run(jsync_sess *s) {
  recv_state rs;
  ckt_fragment *f;
  unsigned k, started = 0;
  int rv = 0, begun = 0;
  size_t i;
  memset(&rs, 0, sizeof(rs));
  s->recv = &rs;
  rs.nch = s->ndata;
  rs.ch = calloc(rs.nch, sizeof(*rs.ch));
  rs.e = malloc(sizeof(*rs.e));
  if (!rs.ch || !rs.e) {
    rv = sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  for (k = 0; rv == 0 && k < rs.nch; ++k) {
    rchan *c = &rs.ch[k];
    c->s = s;
    c->tc = s->data[k];
    c->zd = ZSTD_createDCtx();
    c->buf = malloc(JSYNC_DATA_MAX);
    if (!c->zd || !c->buf) {
      rv = sess_fail(s, FAIL_NOMEM, "out of memory");
      break;
    }
    if (pthread_create(&c->th, NULL, rchan_main, c) != 0) {
      rv = sess_fail(s, FAIL_NOMEM, "cannot start a thread");
      break;
    }
    started++;
  }
  while (rv == 0 && (f = sess_recv(s, s->ctrl)) != NULL) {
    if (f->op == JSYNC_OP_LIST_BEGIN && !begun) {
      jsync_list_begin b;
      begun = 1;
      rv = jsync_list_begin_decode(f->payload, f->payload_len, &b) != 0
               ? sess_fail(s, FAIL_PROTOCOL, "malformed LIST_BEGIN")
               : setup_dst(s, &b);
    } else if ((f->op == JSYNC_OP_ENTRIES || f->op == JSYNC_OP_ENTRIES_Z) &&
               begun) {
      rv = on_entries(s, f);
    } else if (f->op == JSYNC_OP_LIST_END && begun) {
      uint64_t count;
      uint32_t flags;
      if (jsync_list_end_decode(f->payload, f->payload_len, &count, &flags) !=
              0 ||
          count != s->st.files) {
        rv = sess_fail(s, FAIL_PROTOCOL, "the file list does not add up");
      }
      rs.incomplete = rv == 0 && (flags & JSYNC_LIST_INCOMPLETE);
      ckt_fragment_free(f);
      break;
    } else {
      rv = sess_fail(s, FAIL_PROTOCOL, "unexpected message %lld on the control",
                     (long long)f->op);
    }
    ckt_fragment_free(f);
  }
  if (s->opts && s->opts->live) {
    s->opts->live->list_done = 1;
  }
  /* every file finished (or the session failed) */
  pthread_mutex_lock(&s->mu);
  rs.list_done = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  for (k = 0; k < started; ++k) {
    pthread_join(rs.ch[k].th, NULL);
  }
  if (!sess_failed(s)) {
    if (s->flags & JSYNC_F_DELETE) {
      delete_extraneous(s);
    }
    if (!(s->flags & JSYNC_F_DRY_RUN)) {
      finish_dirs(s);
    }
  }
  /* The sender's circuit threads may go. */
  for (k = 0; k < rs.nch && !sess_failed(s); ++k) {
    jsync_req q = {JSYNC_REQ_END, 0, 0};
    jsync_wbuf w;
    jsync_wbuf_init(&w);
    jsync_req_put(&w, &q);
    sess_send(s, rs.ch[k].tc, JSYNC_OP_REQ, &w);
  }
  if (!sess_failed(s) && sess_flush_results(s) == 0) {
    jsync_done d;
    jsync_wbuf w;
    memset(&d, 0, sizeof(d));
    pthread_mutex_lock(&s->mu);
    d.status = (uint32_t)s->st.failed;
    d.files = s->st.files;
    d.transferred = s->st.transferred;
    d.literal = s->st.literal;
    d.matched = s->st.matched;
    d.deleted = s->st.deleted;
    pthread_mutex_unlock(&s->mu);
    jsync_wbuf_init(&w);
    jsync_done_encode(&w, &d);
    sess_send(s, s->ctrl, JSYNC_OP_DONE, &w);
  }
  for (k = 0; k < rs.nch && rs.ch; ++k) {
    ZSTD_freeDCtx(rs.ch[k].zd);
    free(rs.ch[k].buf);
  }
  free(rs.ch);
  free(rs.e);
  free(rs.list_raw);
  strset_free(&rs.paths);
  dcache_clear(&rs);
  strset_free(&rs.scanned);
  strset_free(&rs.leftovers);
  for (i = 0; i < rs.ndirs; ++i) {
    free(rs.dirs[i].lpath);
  }
  free(rs.dirs);
  s->recv = NULL;
  return sess_failed(s) ? -1 : 0;
}
