/*
 * jsync_wire.h — jsync's messages, as fragment payloads.
 *
 * Every jsync message is one fragment: `op` says which message (JSYNC_OP_*)
 * and the payload holds its fields in a compact binary form (LEB128
 * varints, length-prefixed strings, 16- or 32-byte hashes).  Messages that
 * carry lists (entries, requests, groups, chunks, results) are batches read
 * with an iterator, item by item, so decoding allocates nothing and every
 * count is bounded by the bytes that are really there.
 *
 * Decoding never trusts a length: each one is checked against what is left
 * of the payload and against the field's limit below; a bad message sets
 * the reader's error and every later read returns zeros.
 *
 * docs/wire.md describes the protocol these messages make up.
 *
 * Threading: pure functions on caller-owned buffers; any thread.
 */
#ifndef JSYNC_WIRE_H
#define JSYNC_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define JSYNC_PROTO_VERSION 1
/* The peer service and circuit names. */
#define JSYNC_SERVICE "jsync"
#define JSYNC_CTRL_NAME "jsync-ctrl"
#define JSYNC_DATA_NAME "jsync-data"

/* Limits on what a message may carry. */
#define JSYNC_WIRE_PATH_MAX 4095 /* bytes of a path or symlink target */
#define JSYNC_WIRE_PATHS_MAX 1024
#define JSYNC_WIRE_EXCLUDES_MAX 1024
#define JSYNC_WIRE_TEXT_MAX 1024 /* error texts */
#define JSYNC_WIRE_CIRCUITS_MAX 16
/* Entries one session may list: what a receiver remembers per entry
 * (for --delete and directory metadata) stays bounded. */
#define JSYNC_WIRE_ENTRIES_MAX (16u * 1024 * 1024)
#define JSYNC_WIRE_LIST_BYTES_MAX (1024u * 1024 * 1024) /* of their paths */
/* Whole-file hashes are 32 bytes on the wire: BLAKE2b-256, or XXH3-128
 * followed by zeros. */
#define JSYNC_HASH_LEN 32

enum {
  JSYNC_OP_HELLO = 1,      /* client -> server, first on the control */
  JSYNC_OP_WELCOME = 2,    /* server -> client: the session is on */
  JSYNC_OP_JOIN = 3,       /* client -> server, first on a data circuit */
  JSYNC_OP_LIST_BEGIN = 4, /* sender -> receiver, control */
  JSYNC_OP_ENTRIES = 5,    /* sender -> receiver, control: a batch */
  JSYNC_OP_LIST_END = 6,   /* sender -> receiver, control */
  JSYNC_OP_REQ = 7,        /* receiver -> sender, data: a batch */
  JSYNC_OP_GROUPS = 8,     /* sender -> receiver, data */
  JSYNC_OP_CHUNKS = 9,     /* sender -> receiver, data */
  JSYNC_OP_DATA = 10,      /* sender -> receiver, data */
  JSYNC_OP_FILE_END = 11,  /* sender -> receiver, data */
  JSYNC_OP_RESULTS = 12,   /* receiver -> sender, control: a batch */
  JSYNC_OP_DONE = 13,      /* receiver -> sender, control: the end */
  JSYNC_OP_BUNDLE = 14,    /* several small messages: (op, length, bytes)* */
  JSYNC_OP_ENTRIES_Z = 15, /* ENTRIES, zstd-compressed */
  JSYNC_OP_MAX = 15
};

/* A BUNDLE holds messages of at most JSYNC_BUNDLE_ITEM_MAX bytes each
 * (never another bundle), JSYNC_BUNDLE_MAX bytes in all. */
#define JSYNC_BUNDLE_ITEM_MAX (64u * 1024)
#define JSYNC_BUNDLE_MAX (256u * 1024 + 64)

/* Reads the next message of a bundle: 1 (op, p, len set), 0 at the end,
 * -1 malformed. */
struct jsync_rbuf;
int jsync_bundle_next(struct jsync_rbuf *r, int64_t *op, const uint8_t **p,
                      size_t *len);

/* Session modes: who sends the files. */
enum { JSYNC_PUSH = 1, JSYNC_PULL = 2 };

/* Session flags (HELLO). */
enum {
  JSYNC_F_CHECKSUM = 1 << 0, /* compare contents, not size + mtime */
  JSYNC_F_DELETE = 1 << 1,   /* remove what the source lacks */
  JSYNC_F_DRY_RUN = 1 << 2,  /* decide and report, change nothing */
  JSYNC_F_FSYNC = 1 << 3,    /* fsync files before they replace others */
  JSYNC_F_BLAKE2B = 1 << 4,  /* whole-file check with BLAKE2b-256 */
  JSYNC_F_NO_COMPRESS = 1 << 5,
  JSYNC_F_WHOLE = 1 << 6, /* no deltas: changed files travel whole */
  JSYNC_F_ALL = (1 << 7) - 1
};

/* ---- buffers ------------------------------------------------------------- */

typedef struct jsync_wbuf {
  uint8_t *p;
  size_t len, cap;
  int err; /* out of memory: the buffer is unusable */
} jsync_wbuf;

typedef struct jsync_rbuf {
  const uint8_t *p;
  size_t len, off;
  int err; /* the message is malformed */
} jsync_rbuf;

void jsync_wbuf_init(jsync_wbuf *w);
void jsync_wbuf_free(jsync_wbuf *w);
/* Hands the bytes over (the caller frees them) and resets w. */
uint8_t *jsync_wbuf_take(jsync_wbuf *w, size_t *len);
void jsync_w_u8(jsync_wbuf *w, uint8_t v);
void jsync_w_varint(jsync_wbuf *w, uint64_t v);
void jsync_w_svarint(jsync_wbuf *w, int64_t v);
void jsync_w_bytes(jsync_wbuf *w, const void *p, size_t n); /* raw */
void jsync_w_str(jsync_wbuf *w, const char *s);             /* length + bytes */

void jsync_rbuf_init(jsync_rbuf *r, const void *p, size_t len);
uint8_t jsync_r_u8(jsync_rbuf *r);
uint64_t jsync_r_varint(jsync_rbuf *r);
/* A varint that must be <= max. */
uint64_t jsync_r_varint_max(jsync_rbuf *r, uint64_t max);
int64_t jsync_r_svarint(jsync_rbuf *r);
void jsync_r_bytes(jsync_rbuf *r, void *out, size_t n);
/* A string of at most max bytes with no NUL inside, copied to out
 * (out_sz > max) and NUL-terminated. */
void jsync_r_str(jsync_rbuf *r, char *out, size_t out_sz, size_t max);
/* A count of items each at least min_item bytes long: fails when the
 * payload cannot hold that many, so a count never drives a large
 * allocation by itself. */
uint64_t jsync_r_count(jsync_rbuf *r, size_t min_item, uint64_t max);
/* 1 when the whole payload was read without error. */
int jsync_r_done(const jsync_rbuf *r);

/* ---- HELLO / WELCOME / JOIN ---------------------------------------------- */

typedef struct jsync_hello {
  uint32_t version;
  uint8_t mode; /* JSYNC_PUSH or JSYNC_PULL */
  uint32_t flags;
  uint32_t ncircuits; /* data circuits the client opens, 1..16 */
  uint8_t session[16];
  /* Paths on the server: PUSH: one, the destination; PULL: the sources.
   * Excludes: patterns.  Owned (malloc) after decoding. */
  char **paths;
  size_t npaths;
  char **excludes;
  size_t nexcludes;
} jsync_hello;

void jsync_hello_encode(jsync_wbuf *w, const jsync_hello *h);
/* 0, or -1 (malformed; *h is then empty).  Free with jsync_hello_free. */
int jsync_hello_decode(const void *p, size_t len, jsync_hello *h);
void jsync_hello_free(jsync_hello *h);

typedef struct jsync_join {
  uint8_t session[16];
  uint32_t index;
} jsync_join;

void jsync_join_encode(jsync_wbuf *w, const jsync_join *j);
int jsync_join_decode(const void *p, size_t len, jsync_join *j);

/* ---- the file list (sender -> receiver) ---------------------------------- */

/* LIST_BEGIN: how many sources, and for a single directory source whether
 * its contents (source written with a trailing '/') rather than itself. */
enum { JSYNC_LIST_CONTENTS = 1 };
typedef struct jsync_list_begin {
  uint32_t nsources;
  uint32_t flags;
} jsync_list_begin;
void jsync_list_begin_encode(jsync_wbuf *w, const jsync_list_begin *b);
int jsync_list_begin_decode(const void *p, size_t len, jsync_list_begin *b);

enum { JSYNC_E_FILE = 1, JSYNC_E_DIR = 2, JSYNC_E_SYMLINK = 3 };
typedef struct jsync_wentry {
  uint64_t id; /* the sender's number for it: 0, 1, 2... */
  uint8_t type;
  uint32_t mode, uid, gid;
  uint64_t size;
  int64_t mtime_sec;
  uint32_t mtime_nsec;
  char path[JSYNC_WIRE_PATH_MAX + 1]; /* "" only for a contents-of root */
  char link[JSYNC_WIRE_PATH_MAX + 1]; /* symlinks */
} jsync_wentry;

/* ENTRIES: a batch of entries, appended one by one.  Within a batch each
 * entry is written against the one before it: its id as the gap after
 * the previous id (ids only grow), its path as the length it shares with
 * the previous path plus the rest (always the longest shared length, so
 * the encoding stays canonical).  A context carries that state; start
 * each batch with a fresh one. */
typedef struct jsync_entry_ctx {
  uint64_t next_id; /* the previous id + 1 (0 at the start) */
  size_t prev_len;
  char prev[JSYNC_WIRE_PATH_MAX + 1];
} jsync_entry_ctx;
void jsync_entry_ctx_init(jsync_entry_ctx *c);
void jsync_entry_put(jsync_wbuf *w, jsync_entry_ctx *c, const jsync_wentry *e);
/* Reads the next entry; 1 read, 0 at the end, -1 malformed. */
int jsync_entry_next(jsync_rbuf *r, jsync_entry_ctx *c, jsync_wentry *e);

/* ENTRIES_Z: the decoded length (at most JSYNC_LIST_RAW_MAX) and a zstd
 * frame holding an ENTRIES payload.  Unpacks into out (out_cap >=
 * JSYNC_LIST_RAW_MAX); 0 with *out_len set, or -1 (malformed, or not
 * exactly the announced length). */
#define JSYNC_LIST_RAW_MAX (1u << 20)
int jsync_entries_z_unpack(const void *p, size_t len, uint8_t *out,
                           size_t out_cap, size_t *out_len);

/* LIST_END: the number of entries sent. */
/* LIST_END flags: the sender could not list everything (unreadable
 * directories, paths too long): the receiver must not --delete. */
enum { JSYNC_LIST_INCOMPLETE = 1 };
void jsync_list_end_encode(jsync_wbuf *w, uint64_t count, uint32_t flags);
int jsync_list_end_decode(const void *p, size_t len, uint64_t *count,
                          uint32_t *flags);

/* ---- requests (receiver -> sender) --------------------------------------- */

enum {
  JSYNC_REQ_WHOLE = 1,  /* send the whole file: DATA..., FILE_END */
  JSYNC_REQ_GROUPS = 2, /* send its group list: GROUPS */
  JSYNC_REQ_CHUNKS = 3, /* send these groups' chunk lists: CHUNKS each */
  JSYNC_REQ_DATA = 4,   /* send these byte ranges: DATA..., FILE_END */
  JSYNC_REQ_CANCEL = 5, /* the receiver gives the file up: nothing */
  JSYNC_REQ_END = 6     /* no more requests on this circuit */
};
typedef struct jsync_req {
  uint8_t kind;
  uint64_t id;     /* the entry */
  uint64_t nitems; /* CHUNKS: group indexes; DATA: ranges */
} jsync_req;

/* A REQ batch holds requests; CHUNKS and DATA requests are followed by
 * their items.  Writers: jsync_req_put, then nitems times the item. */
void jsync_req_put(jsync_wbuf *w, const jsync_req *q);
void jsync_req_put_group(jsync_wbuf *w, uint64_t group);
void jsync_req_put_range(jsync_wbuf *w, uint64_t off, uint64_t len);
/* 1 read, 0 at the end, -1 malformed.  Then read exactly nitems items. */
int jsync_req_next(jsync_rbuf *r, jsync_req *q);
int jsync_req_group(jsync_rbuf *r, uint64_t *group);
int jsync_req_range(jsync_rbuf *r, uint64_t *off, uint64_t *len);

/* ---- answers (sender -> receiver) ---------------------------------------- */

/* GROUPS: the file's size, chunking, whole-file hash and group list. */
typedef struct jsync_groups_head {
  uint64_t id;
  uint64_t size;
  uint32_t avg; /* chunk parameters: jsync_chunk_params_init(avg) */
  uint8_t whole[JSYNC_HASH_LEN];
  uint64_t ngroups;
} jsync_groups_head;
typedef struct jsync_wgroup {
  uint8_t hash[16];
  uint32_t nchunks;
  uint64_t bytes;
} jsync_wgroup;
void jsync_groups_head_put(jsync_wbuf *w, const jsync_groups_head *g);
void jsync_group_put(jsync_wbuf *w, const jsync_wgroup *g);
int jsync_groups_head_get(jsync_rbuf *r, jsync_groups_head *g);
int jsync_group_get(jsync_rbuf *r, jsync_wgroup *g);

/* CHUNKS: one group's chunk list. */
typedef struct jsync_chunks_head {
  uint64_t id;
  uint64_t group;
  uint32_t nchunks;
} jsync_chunks_head;
typedef struct jsync_wchunk {
  uint32_t len;
  uint8_t hash[16];
} jsync_wchunk;
void jsync_chunks_head_put(jsync_wbuf *w, const jsync_chunks_head *c);
void jsync_chunk_put(jsync_wbuf *w, const jsync_wchunk *c);
int jsync_chunks_head_get(jsync_rbuf *r, jsync_chunks_head *c);
int jsync_chunk_get(jsync_rbuf *r, jsync_wchunk *c);

/* DATA: bytes of a file at an offset, raw, zstd-compressed, or a run of
 * zeros (a hole: no bytes follow).  The header is followed by the bytes
 * up to the end of the payload. */
enum { JSYNC_CODEC_RAW = 0, JSYNC_CODEC_ZSTD = 1, JSYNC_CODEC_ZERO = 2 };
/* Largest decoded DATA: a receiver allocates no more than this. */
#define JSYNC_DATA_MAX (1u << 20)
typedef struct jsync_data_head {
  uint64_t id;
  uint64_t off;
  uint8_t codec;
  uint32_t raw_len; /* decoded length, <= JSYNC_DATA_MAX (ZERO: any) */
} jsync_data_head;
void jsync_data_head_put(jsync_wbuf *w, const jsync_data_head *d);
int jsync_data_head_get(jsync_rbuf *r, jsync_data_head *d);

/* FILE_END: the sender is done with a WHOLE or DATA request.  status 0:
 * all sent, size and hash describe what was sent (WHOLE); otherwise an
 * errno value and text (the file vanished, could not be read...). */
typedef struct jsync_file_end {
  uint64_t id;
  uint32_t status;
  uint64_t size;
  uint8_t whole[JSYNC_HASH_LEN];
  char text[JSYNC_WIRE_TEXT_MAX + 1];
} jsync_file_end;
void jsync_file_end_encode(jsync_wbuf *w, const jsync_file_end *e);
int jsync_file_end_decode(const void *p, size_t len, jsync_file_end *e);

/* ---- results (receiver -> sender) ---------------------------------------- */

enum {
  JSYNC_R_CREATED = 1, /* new at the receiver */
  JSYNC_R_UPDATED = 2, /* contents changed */
  JSYNC_R_META = 3,    /* only metadata changed */
  JSYNC_R_DELETED = 4, /* removed (--delete); path says which */
  JSYNC_R_FAILED = 5   /* text says why */
};
typedef struct jsync_result {
  uint8_t what;
  uint64_t id; /* the entry (not for DELETED) */
  uint64_t literal, matched;
  char path[JSYNC_WIRE_PATH_MAX + 1]; /* DELETED, FAILED: the path */
  char text[JSYNC_WIRE_TEXT_MAX + 1]; /* FAILED */
} jsync_result;
void jsync_result_put(jsync_wbuf *w, const jsync_result *res);
int jsync_result_next(jsync_rbuf *r, jsync_result *res);

typedef struct jsync_done {
  uint32_t status; /* 0, or the number of failures */
  uint64_t files, transferred, literal, matched, deleted;
  char text[JSYNC_WIRE_TEXT_MAX + 1]; /* the first failure */
} jsync_done;
void jsync_done_encode(jsync_wbuf *w, const jsync_done *d);
int jsync_done_decode(const void *p, size_t len, jsync_done *d);

/* Decodes any message fully (batches item by item) for checking: 0 if
 * payload is a well-formed `op`, else -1.  The fuzzer's entry point. */
int jsync_wire_check(int64_t op, const void *p, size_t len);

#endif
