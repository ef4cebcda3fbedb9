/* tls_known.c — known keys: the file format and the store (tls_known.h). */
#include "tls_known.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckt/error.h"
#include "core_buf.h"
#include "core_util.h"

#define KEY_LEN CKT_ED25519_KEY_LEN
#define KEY_HEX_LEN (2 * KEY_LEN)

/* ---- the format: parse and format side by side ------------------------- */

static int is_blank(char c) {
  return c == ' ' || c == '\t';
}

/* Bytes a field may hold: printable ASCII without space. */
static int is_field_char(char c) {
  return (unsigned char)c >= 0x21 && (unsigned char)c <= 0x7e;
}

static int two_digits(const char *s, int *out) {
  if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9') {
    return 0;
  }
  *out = (s[0] - '0') * 10 + (s[1] - '0');
  return 1;
}

/* "YYYY-MM-DDTHH:MM:SSZ", with plausible ranges (leap seconds allowed). */
static int valid_time(const char *s, size_t n) {
  int yh, yl, mo, d, h, mi, sec;
  if (n != CKT_KNOWN_TIME_LEN - 1 || s[4] != '-' || s[7] != '-' ||
      s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != 'Z') {
    return 0;
  }
  return two_digits(s, &yh) && two_digits(s + 2, &yl) &&
         two_digits(s + 5, &mo) && two_digits(s + 8, &d) &&
         two_digits(s + 11, &h) && two_digits(s + 14, &mi) &&
         two_digits(s + 17, &sec) && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 &&
         h <= 23 && mi <= 59 && sec <= 60;
}

/* A HOST or EMAIL field as written: '-', or 1..CKT_KNOWN_FIELD_MAX field
 * characters. */
static int valid_text(const char *s, size_t n) {
  size_t i;
  if (n == 0 || n > CKT_KNOWN_FIELD_MAX) {
    return 0;
  }
  for (i = 0; i < n; ++i) {
    if (!is_field_char(s[i])) {
      return 0;
    }
  }
  return 1;
}

/* Copies a HOST/EMAIL field; '-' becomes "". */
static void take_text(char *dst, const char *s, size_t n) {
  if (n == 1 && s[0] == '-') {
    n = 0;
  }
  memcpy(dst, s, n);
  dst[n] = 0;
}

static int parse_key(const char *s, size_t n, uint8_t key[KEY_LEN]) {
  return n == KEY_HEX_LEN && ckt_hex_decode(key, s, KEY_LEN);
}

/* One line without its end of line.  *has_entry is 0 for blank and
 * comment lines.  On a bad line, returns -1 and names the problem. */
static int parse_line(const char *s, size_t n, ckt_known_entry *e,
                      int *has_entry, char *what, size_t whatsz) {
  const char *field[5];
  size_t flen[5], nf = 0, i = 0;

  *has_entry = 0;
  if (memchr(s, 0, n)) {
    snprintf(what, whatsz, "the line contains a NUL byte");
    return -1;
  }
  while (i < n && is_blank(s[i])) {
    ++i;
  }
  if (i == n || s[i] == '#') {
    return 0; /* blank or comment: anything goes after '#' */
  }
  while (i < n) {
    size_t start = i;
    while (i < n && !is_blank(s[i])) {
      if (!is_field_char(s[i])) {
        snprintf(what, whatsz,
                 "byte 0x%02x at column %zu is not printable ASCII",
                 (unsigned char)s[i], i + 1);
        return -1;
      }
      ++i;
    }
    if (nf == 4) {
      snprintf(what, whatsz,
               "more than four fields (want: KEY [HOST [EMAIL [FIRST-SEEN]]])");
      return -1;
    }
    field[nf] = s + start;
    flen[nf++] = i - start;
    while (i < n && is_blank(s[i])) {
      ++i;
    }
  }
  memset(e, 0, sizeof(*e));
  if (!parse_key(field[0], flen[0], e->key)) {
    snprintf(what, whatsz,
             "the key must be %d hex digits (a raw Ed25519 public key, as "
             "selfy -v prints it)",
             KEY_HEX_LEN);
    return -1;
  }
  if (nf > 1 && !valid_text(field[1], flen[1])) {
    snprintf(what, whatsz, "the host field is longer than %d bytes",
             CKT_KNOWN_FIELD_MAX);
    return -1;
  }
  if (nf > 2 && !valid_text(field[2], flen[2])) {
    snprintf(what, whatsz, "the email field is longer than %d bytes",
             CKT_KNOWN_FIELD_MAX);
    return -1;
  }
  if (nf > 3 && !(flen[3] == 1 && field[3][0] == '-') &&
      !valid_time(field[3], flen[3])) {
    snprintf(what, whatsz,
             "the first-seen time must be YYYY-MM-DDTHH:MM:SSZ (UTC) or -");
    return -1;
  }
  if (nf > 1) {
    take_text(e->host, field[1], flen[1]);
  }
  if (nf > 2) {
    take_text(e->email, field[2], flen[2]);
  }
  if (nf > 3 && flen[3] != 1) {
    memcpy(e->seen, field[3], flen[3]);
    e->seen[flen[3]] = 0;
  }
  *has_entry = 1;
  return 0;
}

static void set_err(ckt_known_error *err, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(ckt_known_error *err, size_t line, const char *fmt, ...) {
  va_list ap;
  if (!err) {
    return;
  }
  err->line = line;
  va_start(ap, fmt);
  vsnprintf(err->what, sizeof(err->what), fmt, ap);
  va_end(ap);
}

int ckt_known_parse(const char *text, size_t len, ckt_known_entry_cb cb,
                    void *user, ckt_known_error *err) {
  size_t pos = 0, line = 0, entries = 0;
  ckt_known_entry e;
  char what[sizeof(((ckt_known_error *)0)->what)];

  if (err) {
    err->line = 0;
    err->what[0] = 0;
  }
  if (len > CKT_KNOWN_MAX_FILE) {
    set_err(err, 0, "larger than %u MiB", CKT_KNOWN_MAX_FILE >> 20);
    return CKT_ERR_TOO_LARGE;
  }
  if (len && !text) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  while (pos < len) {
    const char *nl = memchr(text + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - text) : len, n = end - pos;
    int has_entry, rv;
    ++line;
    if (n > CKT_KNOWN_MAX_LINE) {
      set_err(err, line, "the line is longer than %d bytes",
              CKT_KNOWN_MAX_LINE);
      return CKT_ERR_TOO_LARGE;
    }
    if (n && text[pos + n - 1] == '\r') {
      --n; /* CRLF from an editor elsewhere */
    }
    if (parse_line(text + pos, n, &e, &has_entry, what, sizeof(what)) != 0) {
      set_err(err, line, "%s", what);
      return CKT_ERR_FORMAT;
    }
    if (has_entry) {
      if (++entries > CKT_KNOWN_MAX_ENTRIES) {
        set_err(err, line, "more than %d keys", CKT_KNOWN_MAX_ENTRIES);
        return CKT_ERR_TOO_LARGE;
      }
      if (cb && (rv = cb(user, &e)) != 0) {
        set_err(err, line, "stopped here");
        return rv;
      }
    }
    pos = nl ? end + 1 : len;
  }
  return CKT_OK;
}

int ckt_known_format(const ckt_known_entry *e, char *out, size_t outsz) {
  char hex[KEY_HEX_LEN + 1];
  size_t hl, el;
  int n;

  if (!e || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  hl = strnlen(e->host, sizeof(e->host));
  el = strnlen(e->email, sizeof(e->email));
  if (hl == sizeof(e->host) || el == sizeof(e->email) ||
      (hl && !valid_text(e->host, hl)) || (el && !valid_text(e->email, el)) ||
      (e->seen[0] && !valid_time(e->seen, strnlen(e->seen, sizeof(e->seen))))) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  ckt_hex_encode(hex, e->key, KEY_LEN, 0);
  n = snprintf(out, outsz, "%s %s %s %s\n", hex, hl ? e->host : "-",
               el ? e->email : "-", e->seen[0] ? e->seen : "-");
  if (n < 0 || (size_t)n >= outsz) {
    return CKT_ERR_TOO_LARGE;
  }
  return n;
}

int ckt_known_time(time_t t, char out[CKT_KNOWN_TIME_LEN]) {
  struct tm tm;
  if (!gmtime_r(&t, &tm) || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900 ||
      strftime(out, CKT_KNOWN_TIME_LEN, "%Y-%m-%dT%H:%M:%SZ", &tm) !=
          CKT_KNOWN_TIME_LEN - 1) {
    out[0] = 0;
    return CKT_ERR_INVALID_ARGUMENT;
  }
  return CKT_OK;
}

/* ---- the store ----------------------------------------------------------- */

struct ckt_known {
  pthread_mutex_t mu;
  char *path;
  const char *role; /* "client" or "server": whose keys the file holds */
  void (*log)(void *user, const char *line);
  void *log_user;
  uint8_t *keys; /* nkeys sorted, distinct keys of KEY_LEN bytes */
  size_t nkeys, cap;
  /* The file the keys were read from: reread when any of these change. */
  int loaded;
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime, ctime;
};

enum { FILE_PRESENT = 0, FILE_ABSENT = 1 };

static void klog(ckt_known *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void klog(ckt_known *k, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (k->log) {
    k->log(k->log_user, line);
  } else {
    fprintf(stderr, "ckt: %s\n", line);
  }
}

static int read_only(const struct stat *st) {
  return (st->st_mode & 0222) == 0;
}

static int same_file(const ckt_known *k, const struct stat *st) {
  return k->loaded && k->dev == st->st_dev && k->ino == st->st_ino &&
         k->size == st->st_size && k->mtime.tv_sec == st->st_mtim.tv_sec &&
         k->mtime.tv_nsec == st->st_mtim.tv_nsec &&
         /* ctime too: `cp -p` or an edit within one mtime tick */
         k->ctime.tv_sec == st->st_ctim.tv_sec &&
         k->ctime.tv_nsec == st->st_ctim.tv_nsec;
}

static void remember_file(ckt_known *k, const struct stat *st) {
  k->loaded = 1;
  k->dev = st->st_dev;
  k->ino = st->st_ino;
  k->size = st->st_size;
  k->mtime = st->st_mtim;
  k->ctime = st->st_ctim;
}

static int key_cmp(const void *a, const void *b) {
  return memcmp(a, b, KEY_LEN);
}

/* Index of key in the sorted set, or where it would go (*found = 0). */
static size_t key_find(const ckt_known *k, const uint8_t *key, int *found) {
  size_t lo = 0, hi = k->nkeys;
  *found = 0;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = memcmp(k->keys + mid * KEY_LEN, key, KEY_LEN);
    if (c == 0) {
      *found = 1;
      return mid;
    }
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

static int key_insert(ckt_known *k, const uint8_t *key) {
  int found;
  size_t at = key_find(k, key, &found);
  if (found) {
    return CKT_OK;
  }
  if (k->nkeys == k->cap) {
    size_t cap = k->cap ? 2 * k->cap : 64;
    uint8_t *p;
    if (cap > CKT_KNOWN_MAX_ENTRIES) {
      cap = CKT_KNOWN_MAX_ENTRIES;
    }
    if (cap <= k->nkeys) {
      return CKT_ERR_TOO_LARGE;
    }
    p = realloc(k->keys, cap * KEY_LEN);
    if (!p) {
      return CKT_ERR_NOMEM;
    }
    k->keys = p;
    k->cap = cap;
  }
  memmove(k->keys + (at + 1) * KEY_LEN, k->keys + at * KEY_LEN,
          (k->nkeys - at) * KEY_LEN);
  memcpy(k->keys + at * KEY_LEN, key, KEY_LEN);
  k->nkeys++;
  return CKT_OK;
}

/* Keys collected while a file is parsed; sorted once at the end. */
typedef struct key_list {
  uint8_t *keys;
  size_t n, cap;
} key_list;

static int collect_key(void *user, const ckt_known_entry *e) {
  key_list *l = user;
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 64;
    uint8_t *p;
    if (cap > CKT_KNOWN_MAX_ENTRIES) {
      cap = CKT_KNOWN_MAX_ENTRIES; /* the parser stops before more */
    }
    p = realloc(l->keys, cap * KEY_LEN);
    if (!p) {
      return CKT_ERR_NOMEM;
    }
    l->keys = p;
    l->cap = cap;
  }
  memcpy(l->keys + l->n * KEY_LEN, e->key, KEY_LEN);
  l->n++;
  return 0;
}

/* Tries a lock for about a second: a process that holds it longer must not
 * stall the loop thread forever. */
static int lock_file(int fd, int op) {
  struct timespec pause = {0, 5 * 1000 * 1000};
  int i;
  for (i = 0; i < 200; ++i) {
    if (flock(fd, op | LOCK_NB) == 0) {
      return 0;
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno != EWOULDBLOCK) {
      return -1;
    }
    nanosleep(&pause, NULL);
  }
  errno = EWOULDBLOCK;
  return -1;
}

/* Reads and parses the whole file behind fd (locked by the caller) and
 * replaces the key set.  On errors msg says what, naming the file. */
static int load_fd(ckt_known *k, int fd, char *msg, size_t msgsz) {
  uint8_t chunk[65536];
  key_list l = {NULL, 0, 0};
  ckt_known_error perr;
  struct stat st;
  ckt_buf b;
  off_t off = 0;
  size_t i, j;
  int rv;

  if (fstat(fd, &st) != 0) {
    snprintf(msg, msgsz, "cannot stat %s: %s", k->path, strerror(errno));
    return CKT_ERR_IO;
  }
  if (!S_ISREG(st.st_mode)) {
    snprintf(msg, msgsz, "%s is not a regular file", k->path);
    errno = EINVAL;
    return CKT_ERR_IO;
  }
  if (st.st_size > (off_t)CKT_KNOWN_MAX_FILE) {
    snprintf(msg, msgsz, "%s is larger than %u MiB", k->path,
             CKT_KNOWN_MAX_FILE >> 20);
    return CKT_ERR_TOO_LARGE;
  }
  ckt_buf_init(&b, CKT_KNOWN_MAX_FILE);
  for (;;) {
    ssize_t got = pread(fd, chunk, sizeof(chunk), off);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got < 0) {
      snprintf(msg, msgsz, "cannot read %s: %s", k->path, strerror(errno));
      ckt_buf_free(&b);
      return CKT_ERR_IO;
    }
    if (got == 0) {
      break;
    }
    if ((rv = ckt_buf_append(&b, chunk, (size_t)got)) != CKT_OK) {
      snprintf(msg, msgsz, "%s: %s", k->path,
               rv == CKT_ERR_TOO_LARGE ? "larger than 16 MiB"
                                       : ckt_strerror(rv));
      ckt_buf_free(&b);
      return rv;
    }
    off += got;
  }
  rv = ckt_known_parse((const char *)b.data, b.len, collect_key, &l, &perr);
  ckt_buf_free(&b);
  if (rv != CKT_OK) {
    if (rv == CKT_ERR_NOMEM) {
      snprintf(msg, msgsz, "%s: %s", k->path, ckt_strerror(rv));
    } else if (perr.line) {
      snprintf(msg, msgsz, "%s, line %zu: %s", k->path, perr.line, perr.what);
    } else {
      snprintf(msg, msgsz, "%s: %s", k->path, perr.what);
    }
    free(l.keys);
    return rv;
  }
  if (l.n) {
    qsort(l.keys, l.n, KEY_LEN, key_cmp);
  }
  for (i = j = 0; i < l.n; ++i) { /* drop duplicates */
    if (j == 0 || memcmp(l.keys + (j - 1) * KEY_LEN, l.keys + i * KEY_LEN,
                         KEY_LEN) != 0) {
      memmove(l.keys + j * KEY_LEN, l.keys + i * KEY_LEN, KEY_LEN);
      ++j;
    }
  }
  free(k->keys);
  k->keys = l.keys;
  k->nkeys = j;
  k->cap = l.cap;
  /* Identity as of before the read: a change during it rereads later. */
  remember_file(k, &st);
  return CKT_OK;
}

/* Brings the key set up to date with the file.  FILE_PRESENT (st is the
 * file's state now), FILE_ABSENT, or an error with msg. */
static int refresh(ckt_known *k, struct stat *st, char *msg, size_t msgsz) {
  int fd, rv;
  if (stat(k->path, st) != 0) {
    if (errno == ENOENT) {
      k->loaded = 0;
      return FILE_ABSENT;
    }
    snprintf(msg, msgsz, "cannot stat %s: %s", k->path, strerror(errno));
    return CKT_ERR_IO;
  }
  if (!S_ISREG(st->st_mode)) {
    snprintf(msg, msgsz, "%s is not a regular file", k->path);
    errno = EINVAL;
    return CKT_ERR_IO;
  }
  if (same_file(k, st)) {
    return FILE_PRESENT;
  }
  /* O_NONBLOCK: a FIFO put in its place must not hang the loop. */
  fd = open(k->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) {
      k->loaded = 0;
      return FILE_ABSENT;
    }
    snprintf(msg, msgsz, "cannot open %s: %s", k->path, strerror(errno));
    return CKT_ERR_IO;
  }
  if (lock_file(fd, LOCK_SH) != 0) {
    snprintf(msg, msgsz, "cannot lock %s: %s", k->path, strerror(errno));
    close(fd);
    return CKT_ERR_IO;
  }
  rv = load_fd(k, fd, msg, msgsz);
  close(fd); /* drops the lock */
  return rv == CKT_OK ? FILE_PRESENT : rv;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) {
      continue;
    }
    if (w <= 0) {
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Copies a certificate or address string that will do as a field. */
static void field_or_unknown(char *dst, const char *src) {
  size_t n = src ? strnlen(src, CKT_KNOWN_FIELD_MAX + 1) : 0;
  if (n && valid_text(src, n)) {
    memcpy(dst, src, n);
    dst[n] = 0;
  } else {
    dst[0] = 0;
  }
}

enum { RECORDED = 0, ALREADY_KNOWN = 1, LOCKED_NOW = 2 };

/* Appends the peer's entry under flock(LOCK_EX), unless another writer
 * recorded the key meanwhile or the file became read-only.  RECORDED,
 * ALREADY_KNOWN, LOCKED_NOW, or an error with msg. */
static int record(ckt_known *k, const ckt_known_peer *p, char *msg,
                  size_t msgsz) {
  char line[CKT_KNOWN_MAX_LINE + 2], last = '\n';
  ckt_known_entry e;
  struct stat st;
  int fd, len, found, rv;
  off_t before;

  memset(&e, 0, sizeof(e));
  memcpy(e.key, p->key, KEY_LEN);
  field_or_unknown(e.host, p->host);
  field_or_unknown(e.email, p->email);
  (void)ckt_known_time(time(NULL), e.seen);
  len = ckt_known_format(&e, line, sizeof(line));
  if (len < 0) {
    snprintf(msg, msgsz, "cannot format an entry for %s", k->path);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  fd = open(k->path, O_RDWR | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    snprintf(msg, msgsz, "cannot open %s to record the key: %s", k->path,
             strerror(errno));
    return CKT_ERR_IO;
  }
  if (lock_file(fd, LOCK_EX) != 0 || fstat(fd, &st) != 0) {
    snprintf(msg, msgsz, "cannot lock %s: %s", k->path, strerror(errno));
    rv = CKT_ERR_IO;
    goto done;
  }
  if (!S_ISREG(st.st_mode)) {
    snprintf(msg, msgsz, "%s is not a regular file", k->path);
    rv = CKT_ERR_IO;
    goto done;
  }
  if (read_only(&st)) { /* chmod a-w between our stat and now */
    rv = LOCKED_NOW;
    goto done;
  }
  if (!same_file(k, &st) && (rv = load_fd(k, fd, msg, msgsz)) != CKT_OK) {
    goto done;
  }
  (void)key_find(k, p->key, &found);
  if (found) {
    rv = ALREADY_KNOWN;
    goto done;
  }
  if (k->nkeys >= CKT_KNOWN_MAX_ENTRIES ||
      st.st_size + len + 1 > (off_t)CKT_KNOWN_MAX_FILE) {
    snprintf(msg, msgsz, "%s is full (at most %d keys, %u MiB)", k->path,
             CKT_KNOWN_MAX_ENTRIES, CKT_KNOWN_MAX_FILE >> 20);
    rv = CKT_ERR_TOO_LARGE;
    goto done;
  }
  before = st.st_size;
  if (before > 0 && pread(fd, &last, 1, before - 1) != 1) {
    last = '\n';
  }
  /* A hand-edited last line without its newline gets one first. */
  if ((last != '\n' && write_all(fd, "\n", 1) != 0) ||
      write_all(fd, line, (size_t)len) != 0) {
    int saved = errno;
    /* Take back a partial line (disk full) rather than leave the file
     * unparseable; our lock keeps other ckt writers out meanwhile. */
    if (ftruncate(fd, before) != 0) {
      k->loaded = 0;
    }
    snprintf(msg, msgsz, "cannot append to %s: %s", k->path, strerror(saved));
    rv = CKT_ERR_IO;
    goto done;
  }
  if ((rv = key_insert(k, p->key)) != CKT_OK) {
    snprintf(msg, msgsz, "%s: %s", k->path, ckt_strerror(rv));
    goto done;
  }
  /* Our own append needs no reread; anyone else's does. */
  if (fstat(fd, &st) == 0 &&
      st.st_size == before + (last != '\n') + (off_t)len) {
    remember_file(k, &st);
  } else {
    k->loaded = 0;
  }
  rv = RECORDED;

done:
  close(fd); /* drops the lock */
  return rv;
}

int ckt_known_open(const ckt_known_config *cfg, ckt_known **out) {
  char msg[1024];
  struct stat st;
  ckt_known *k;
  int rv;

  if (!cfg || !cfg->path || !cfg->path[0] || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  k = calloc(1, sizeof(*k));
  if (!k || !(k->path = strdup(cfg->path))) {
    free(k);
    return CKT_ERR_NOMEM;
  }
  pthread_mutex_init(&k->mu, NULL);
  k->role = cfg->clients ? "client" : "server";
  k->log = cfg->log;
  k->log_user = cfg->log_user;
  rv = refresh(k, &st, msg, sizeof(msg));
  if (rv < 0) {
    int saved = errno;
    klog(k, "known %s keys: %s; fix or remove the file", k->role, msg);
    ckt_known_free(k);
    errno = saved;
    return rv;
  }
  if (rv == FILE_PRESENT) {
    if (read_only(&st) && k->nkeys == 0) {
      klog(k,
           "known %s keys: %s is read-only and empty: no %s could ever be "
           "accepted; add keys or make it writable (chmod u+w)",
           k->role, k->path, k->role);
      ckt_known_free(k);
      return CKT_ERR_LOCKED_OUT;
    }
    klog(k, "known %s keys: %s, %zu key%s, %s", k->role, k->path, k->nkeys,
         k->nkeys == 1 ? "" : "s",
         read_only(&st) ? "lockdown (read-only: only these keys are accepted)"
                        : "trust on first use (new keys are recorded)");
  }
  *out = k;
  return CKT_OK;
}

void ckt_known_free(ckt_known *k) {
  if (!k) {
    return;
  }
  pthread_mutex_destroy(&k->mu);
  free(k->keys);
  free(k->path);
  free(k);
}

size_t ckt_known_count(ckt_known *k) {
  size_t n;
  pthread_mutex_lock(&k->mu);
  n = k->nkeys;
  pthread_mutex_unlock(&k->mu);
  return n;
}

/* The decision, under the store's mutex.  Fails closed: a trust file we
 * cannot read or keep up to date is not silently ignored. */
static int check_locked(ckt_known *k, const ckt_known_peer *p, const char *hex,
                        const char *host, char *why, size_t whysz) {
  char msg[1024];
  struct stat st;
  int rv, found;

  rv = refresh(k, &st, msg, sizeof(msg));
  if (rv == FILE_ABSENT) {
    return CKT_OK;
  }
  if (rv < 0) {
    goto unusable;
  }
  (void)key_find(k, p->key, &found);
  if (found) {
    return CKT_OK;
  }
  if (read_only(&st)) {
    goto lockdown;
  }
  if (p->defer_record) {
    return CKT_OK; /* decided again, and recorded, after the handshake */
  }
  if (!p->verified) {
    klog(k,
         "accepted %s key %s from %s without recording it in %s: "
         "skip-verify mode, the key was not checked against the CA",
         k->role, hex, host, k->path);
    return CKT_OK;
  }
  switch ((rv = record(k, p, msg, sizeof(msg)))) {
  case RECORDED: {
    /* The email comes from a certificate: printable characters only. */
    char email[256];
    size_t i;
    snprintf(email, sizeof(email), "%s",
             p->email && p->email[0] ? p->email : "no email");
    for (i = 0; email[i]; i++) {
      if ((unsigned char)email[i] < 0x21 || (unsigned char)email[i] > 0x7e) {
        email[i] = '?';
      }
    }
    klog(k, "recorded new %s key %s from %s (%s) in %s", k->role, hex, host,
         email, k->path);
    return CKT_OK;
  }
  case ALREADY_KNOWN: /* another process recorded it meanwhile */
    return CKT_OK;
  case LOCKED_NOW: /* chmod a-w since our stat */
    goto lockdown;
  default:
    goto unusable;
  }

lockdown:
  klog(k,
       "refused %s key %s from %s: not in %s (locked down: the file is "
       "read-only)",
       k->role, hex, host, k->path);
  snprintf(why, whysz,
           "the %s's key is not among our known keys (lockdown: only known "
           "keys are accepted)",
           k->role);
  return CKT_ERR_TLS;

unusable:
  klog(k, "refused %s key %s from %s: %s", k->role, hex, host, msg);
  snprintf(why, whysz,
           "the %s's key could not be checked against our known keys (see "
           "our log)",
           k->role);
  return CKT_ERR_TLS;
}

int ckt_known_check(ckt_known *k, const ckt_known_peer *p, char *why,
                    size_t whysz) {
  char hex[KEY_HEX_LEN + 1];
  const char *host;
  int rv;

  if (!k || !p || !p->key || !why || !whysz) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  why[0] = 0;
  ckt_hex_encode(hex, p->key, KEY_LEN, 0);
  host = p->host && p->host[0] ? p->host : "an unknown address";
  pthread_mutex_lock(&k->mu);
  rv = check_locked(k, p, hex, host, why, whysz);
  pthread_mutex_unlock(&k->mu);
  return rv;
}
