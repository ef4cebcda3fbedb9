/* jsync_fs.c — confined filesystem access beneath a transfer root. */
#include "jsync_fs.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BLOCK 4096
/* Attempts for EAGAIN from openat2 and for temporary name collisions. */
#define RETRIES 16
/* Bytes of the leaf kept in a temporary name: "." + leaf + ".jsync-" +
 * 8 hex digits must fit NAME_MAX. */
#define TMP_LEAF_MAX (NAME_MAX - 16)
#define TMP_TAG ".jsync-"

static atomic_int use_openat2 = 1;

void jsync_fs_use_openat2(int enabled) {
  atomic_store(&use_openat2, enabled != 0);
}

static void close_quietly(int fd) {
  int saved = errno;
  if (fd >= 0) {
    close(fd);
  }
  errno = saved;
}

static int same_file(const struct stat *a, const struct stat *b) {
  return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* ---- paths and metadata -------------------------------------------------- */

int jsync_path_valid(const char *rel) {
  const char *start = rel, *p;
  if (!rel || !*rel || strnlen(rel, JSYNC_PATH_MAX) >= JSYNC_PATH_MAX) {
    return 0;
  }
  for (p = rel;; ++p) {
    if (*p == '/' || *p == '\0') {
      size_t len = (size_t)(p - start);
      if (len == 0 || len > NAME_MAX || (len == 1 && start[0] == '.') ||
          (len == 2 && start[0] == '.' && start[1] == '.')) {
        return 0;
      }
      if (*p == '\0') {
        return 1;
      }
      start = p + 1;
    }
  }
}

int jsync_meta_from_stat(const struct stat *st, jsync_meta *m) {
  memset(m, 0, sizeof(*m));
  switch (st->st_mode & S_IFMT) {
  case S_IFREG:
    m->type = JSYNC_FILE;
    m->size = (uint64_t)st->st_size;
    break;
  case S_IFDIR:
    m->type = JSYNC_DIR;
    break;
  case S_IFLNK:
    m->type = JSYNC_SYMLINK;
    m->size = (uint64_t)st->st_size;
    break;
  default:
    return -EINVAL;
  }
  m->mode = (uint32_t)(st->st_mode & 07777);
  m->uid = (uint32_t)st->st_uid;
  m->gid = (uint32_t)st->st_gid;
  m->mtime_sec = (int64_t)st->st_mtim.tv_sec;
  m->mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
  return 0;
}

/* ---- confined opening ---------------------------------------------------- */

/* An intermediate component that would not open as a directory: a
 * symlink is -ELOOP (the fallback follows none), anything else keeps its
 * error. */
static int component_error(int dirfd, const char *name) {
  int err = errno;
  struct stat st;
  if ((err == ENOTDIR || err == ELOOP) &&
      fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    return S_ISLNK(st.st_mode) ? -ELOOP : -ENOTDIR;
  }
  return -err;
}

/* Without openat2: one openat() per component, none of them following a
 * symlink, and no "..". */
static int open_walk(int rootfd, const char *rel, int flags, mode_t mode) {
  char name[NAME_MAX + 1];
  const char *p = rel;
  int dirfd = rootfd, fd;
  if (*p == '/') {
    return -EXDEV;
  }
  for (;;) {
    size_t len = strcspn(p, "/");
    const char *next = p + len;
    int dir_only = 0;
    while (*next == '/') {
      ++next;
      dir_only = O_DIRECTORY;
    }
    if (len > NAME_MAX) {
      fd = -ENAMETOOLONG;
      break;
    }
    /* len is 0 only for rel "": the root itself. */
    memcpy(name, len ? p : ".", len ? len : 1);
    name[len ? len : 1] = '\0';
    if (strcmp(name, "..") == 0) {
      fd = -EXDEV;
      break;
    }
    if (*next == '\0') {
      fd = openat(dirfd, name, flags | dir_only | O_NOFOLLOW, mode);
      if (fd < 0) {
        fd = -errno;
      }
      break;
    }
    fd = openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      fd = component_error(dirfd, name);
      break;
    }
    if (dirfd != rootfd) {
      close(dirfd);
    }
    dirfd = fd;
    p = next;
  }
  if (dirfd != rootfd) {
    close_quietly(dirfd);
  }
  return fd;
}

int jsync_open_beneath(int rootfd, const char *rel, int flags, mode_t mode) {
  if (strnlen(rel, JSYNC_PATH_MAX) >= JSYNC_PATH_MAX) {
    return -ENAMETOOLONG;
  }
  flags |= O_CLOEXEC;
  if (!(flags & O_PATH)) {
    flags |= O_LARGEFILE; /* 0 on 64-bit; openat2 refuses it with O_PATH */
  }
#ifdef SYS_openat2
  if (atomic_load(&use_openat2)) {
    struct open_how how;
    int tries;
    memset(&how, 0, sizeof(how));
    how.flags = (uint64_t)(unsigned int)flags;
    /* openat2 insists on mode 0 unless a file may be created. */
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
      how.mode = mode & 07777;
    }
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    for (tries = 0; tries < RETRIES; ++tries) {
      long fd =
          syscall(SYS_openat2, rootfd, *rel ? rel : ".", &how, sizeof(how));
      if (fd >= 0) {
        return (int)fd;
      }
      if (errno == ENOSYS) {
        atomic_store(&use_openat2, 0);
        break;
      }
      /* EAGAIN: a rename raced with ".." resolution; try again. */
      if (errno != EAGAIN && errno != EINTR) {
        return -errno;
      }
    }
    if (tries == RETRIES) {
      return -EAGAIN;
    }
  }
#endif
  return open_walk(rootfd, rel, flags, mode);
}

int jsync_open_parent(int rootfd, const char *rel, const char **leaf) {
  char dir[JSYNC_PATH_MAX];
  const char *slash;
  size_t len;
  int fd;
  if (!jsync_path_valid(rel)) {
    return -EINVAL;
  }
  slash = strrchr(rel, '/');
  len = slash ? (size_t)(slash - rel) : 0;
  memcpy(dir, rel, len);
  dir[len] = '\0';
  fd = jsync_open_beneath(rootfd, dir, O_RDONLY | O_DIRECTORY, 0);
  if (fd >= 0) {
    *leaf = slash ? slash + 1 : rel;
  }
  return fd;
}

int jsync_lstat_beneath(int rootfd, const char *rel, struct stat *st) {
  int fd = jsync_open_beneath(rootfd, rel, O_PATH | O_NOFOLLOW, 0), rv = 0;
  if (fd < 0) {
    return fd;
  }
  if (fstat(fd, st) != 0) {
    rv = -errno;
  }
  close(fd);
  return rv;
}

/* ---- directories --------------------------------------------------------- */

int jsync_mkdirs(int rootfd, const char *rel, mode_t mode) {
  char prefix[JSYNC_PATH_MAX];
  const char *p = rel;
  int cur, rv = 0;
  if (!jsync_path_valid(rel)) {
    return -EINVAL;
  }
  cur = jsync_open_beneath(rootfd, rel, O_PATH | O_DIRECTORY, 0);
  if (cur >= 0 || cur != -ENOENT) {
    close_quietly(cur);
    return cur >= 0 ? 0 : cur;
  }
  cur = jsync_open_beneath(rootfd, "", O_PATH | O_DIRECTORY, 0);
  if (cur < 0) {
    return cur;
  }
  for (;;) {
    char name[NAME_MAX + 1];
    size_t len = strcspn(p, "/");
    int next;
    memcpy(name, p, len);
    name[len] = '\0';
    if (mkdirat(cur, name, mode) != 0 && errno != EEXIST) {
      rv = -errno;
      break;
    }
    next = openat(cur, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) {
      rv = component_error(cur, name);
      if (rv != -ELOOP) {
        break;
      }
      /* A symlink: follow it only while it stays beneath the root. */
      len = (size_t)(p + len - rel);
      memcpy(prefix, rel, len);
      prefix[len] = '\0';
      next = jsync_open_beneath(rootfd, prefix, O_PATH | O_DIRECTORY, 0);
      if (next < 0) {
        rv = next;
        break;
      }
      rv = 0;
      len = strcspn(p, "/");
    }
    close(cur);
    cur = next;
    if (p[len] == '\0') {
      break;
    }
    p += len + 1;
  }
  close_quietly(cur);
  return rv;
}

/* A directory's entry names, "." and ".." left out. */
typedef struct name_list {
  char *buf; /* the names, each NUL-terminated */
  size_t len, cap;
  char **v;
  size_t n;
} name_list;

static void names_free(name_list *nl) {
  free(nl->buf);
  free(nl->v);
  memset(nl, 0, sizeof(*nl));
}

static int names_add(name_list *nl, const char *name) {
  size_t n = strlen(name) + 1;
  if (nl->cap - nl->len < n) {
    size_t ncap = nl->cap ? nl->cap * 2 : 4096;
    char *b;
    while (ncap - nl->len < n) {
      ncap *= 2;
    }
    b = realloc(nl->buf, ncap);
    if (!b) {
      return -ENOMEM;
    }
    nl->buf = b;
    nl->cap = ncap;
  }
  memcpy(nl->buf + nl->len, name, n);
  nl->len += n;
  nl->n++;
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads the names of the directory open at fd (fd stays open and usable),
 * sorted when `sort`. */
static int names_read(int fd, name_list *nl, int sort) {
  DIR *d;
  struct dirent *de;
  size_t i, off = 0;
  int rv = 0, dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  memset(nl, 0, sizeof(*nl));
  if (dfd < 0) {
    return -errno;
  }
  d = fdopendir(dfd);
  if (!d) {
    rv = -errno;
    close(dfd);
    return rv;
  }
  rewinddir(d); /* the dup shares fd's offset */
  for (;;) {
    errno = 0;
    de = readdir(d);
    if (!de) {
      rv = errno ? -errno : 0;
      break;
    }
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
      continue;
    }
    rv = names_add(nl, de->d_name);
    if (rv != 0) {
      break;
    }
  }
  closedir(d);
  if (rv == 0 && nl->n > 0) {
    nl->v = malloc(nl->n * sizeof(*nl->v));
    if (!nl->v) {
      rv = -ENOMEM;
    }
  }
  if (rv != 0) {
    names_free(nl);
    return rv;
  }
  for (i = 0; i < nl->n; ++i) {
    nl->v[i] = nl->buf + off;
    off += strlen(nl->v[i]) + 1;
  }
  if (sort && nl->n > 1) {
    qsort(nl->v, nl->n, sizeof(*nl->v), cmp_names);
  }
  return 0;
}

static int remove_at(int dirfd, const char *name, int depth) {
  name_list nl;
  size_t i;
  int fd, rv;
  if (unlinkat(dirfd, name, 0) == 0) {
    return 0;
  }
  if (errno != EISDIR) {
    return -errno;
  }
  if (depth >= JSYNC_MAX_DEPTH) {
    return -ELOOP;
  }
  fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    return -errno;
  }
  /* Read first, then unlink: readdir() while removing may skip entries. */
  rv = names_read(fd, &nl, 0);
  for (i = 0; rv == 0 && i < nl.n; ++i) {
    rv = remove_at(fd, nl.v[i], depth + 1);
    if (rv == -ENOENT) {
      rv = 0; /* gone meanwhile: fine */
    }
  }
  names_free(&nl);
  close(fd);
  if (rv == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) != 0) {
    rv = -errno;
  }
  return rv;
}

int jsync_remove(int rootfd, const char *rel) {
  const char *leaf;
  int dirfd = jsync_open_parent(rootfd, rel, &leaf), rv;
  if (dirfd < 0) {
    return dirfd;
  }
  rv = remove_at(dirfd, leaf, 0);
  close(dirfd);
  return rv;
}

/* ---- excludes ------------------------------------------------------------ */

/* Patterns compile to a token list matched by simulating the NFA over the
 * path (linear in path length times pattern length, no backtracking). */
enum {
  TOK_LIT,      /* one byte */
  TOK_ANY,      /* '?': any byte but '/' */
  TOK_CLASS,    /* [...]: a byte of set, never '/' */
  TOK_STAR,     /* '*': any run without '/' */
  TOK_STARSTAR, /* "**": any run */
  TOK_DIRS,     /* "**" + '/' at a component start: zero or more "x/" */
  TOK_DIRS_MID  /* inside one of TOK_DIRS's directories; always follows it */
};

typedef struct token {
  unsigned char kind, ch;
  unsigned char set[32]; /* TOK_CLASS: bit per byte */
} token;

typedef struct rule {
  token *tok;
  size_t n;
  int anchored, dir_only;
} rule;

struct jsync_excludes {
  rule *rules;
  size_t n, cap;
};

static void set_bit(unsigned char *set, unsigned char c) {
  set[c >> 3] |= (unsigned char)(1u << (c & 7));
}

static int named_class(const char *name, size_t len, int c) {
  static const struct {
    const char *name;
    int (*is)(int);
  } classes[] = {
      {"alnum", isalnum}, {"alpha", isalpha}, {"blank", isblank},
      {"cntrl", iscntrl}, {"digit", isdigit}, {"graph", isgraph},
      {"lower", islower}, {"print", isprint}, {"punct", ispunct},
      {"space", isspace}, {"upper", isupper}, {"xdigit", isxdigit},
  };
  size_t i;
  for (i = 0; i < sizeof(classes) / sizeof(classes[0]); ++i) {
    if (strlen(classes[i].name) == len &&
        memcmp(classes[i].name, name, len) == 0) {
      return classes[i].is(c) != 0;
    }
  }
  return -1;
}

/* Parses the bracket expression at p ('[' already consumed) into t->set;
 * returns the bytes consumed, or 0 if it is not one (then '[' is a
 * literal, as in fnmatch). */
static size_t parse_class(const char *p, token *t) {
  const char *q = p;
  int negate = 0, first = 1, i;
  memset(t->set, 0, sizeof(t->set));
  if (*q == '!' || *q == '^') {
    negate = 1;
    ++q;
  }
  for (;; first = 0) {
    unsigned char lo, hi;
    if (*q == '\0') {
      return 0;
    }
    if (*q == ']' && !first) {
      ++q;
      break;
    }
    if (q[0] == '[' && q[1] == ':') {
      const char *end = strstr(q + 2, ":]");
      size_t len = end ? (size_t)(end - (q + 2)) : 0;
      if (end && named_class(q + 2, len, 'a') >= 0) {
        for (i = 0; i < 256; ++i) {
          if (named_class(q + 2, len, i) == 1) {
            set_bit(t->set, (unsigned char)i);
          }
        }
        q = end + 2;
        continue;
      }
    }
    if (*q == '\\' && q[1]) {
      ++q;
    }
    lo = hi = (unsigned char)*q++;
    if (q[0] == '-' && q[1] && q[1] != ']') {
      ++q;
      if (*q == '\\' && q[1]) {
        ++q;
      }
      hi = (unsigned char)*q++;
    }
    for (i = lo; i <= hi; ++i) {
      set_bit(t->set, (unsigned char)i);
    }
  }
  if (negate) {
    for (i = 0; i < 32; ++i) {
      t->set[i] = (unsigned char)~t->set[i];
    }
  }
  t->kind = TOK_CLASS;
  return (size_t)(q - p);
}

static size_t compile(const char *p, size_t len, token *tok) {
  size_t i = 0, n = 0;
  while (i < len) {
    token *t = &tok[n++];
    unsigned char c = (unsigned char)p[i];
    size_t used;
    memset(t, 0, sizeof(*t));
    if (c == '*') {
      size_t j = i;
      while (j < len && p[j] == '*') {
        ++j;
      }
      if (j - i == 1) {
        t->kind = TOK_STAR;
      } else if ((i == 0 || p[i - 1] == '/') && j < len && p[j] == '/') {
        t->kind = TOK_DIRS;
        memset(&tok[n], 0, sizeof(tok[n]));
        tok[n++].kind = TOK_DIRS_MID;
        ++j; /* the '/' is part of each directory matched */
      } else {
        t->kind = TOK_STARSTAR;
      }
      i = j;
    } else if (c == '?') {
      t->kind = TOK_ANY;
      ++i;
    } else if (c == '[' && (used = parse_class(p + i + 1, t)) > 0) {
      i += 1 + used;
    } else {
      if (c == '\\' && i + 1 < len) {
        c = (unsigned char)p[++i];
      }
      t->kind = TOK_LIT;
      t->ch = c;
      ++i;
    }
  }
  return n;
}

static void closure(const rule *r, unsigned char *on) {
  size_t i;
  for (i = 0; i < r->n; ++i) {
    if (!on[i]) {
      continue;
    }
    if (r->tok[i].kind == TOK_STAR || r->tok[i].kind == TOK_STARSTAR) {
      on[i + 1] = 1;
    } else if (r->tok[i].kind == TOK_DIRS) {
      on[i + 2] = 1;
    }
  }
}

static int rule_match(const rule *r, const char *s) {
  unsigned char a[JSYNC_PATTERN_MAX + 2], b[JSYNC_PATTERN_MAX + 2];
  unsigned char *on = a, *next = b, *tmp;
  size_t i;
  memset(on, 0, r->n + 1);
  on[0] = 1;
  closure(r, on);
  for (; *s; ++s) {
    unsigned char c = (unsigned char)*s;
    int any = 0;
    memset(next, 0, r->n + 1);
    for (i = 0; i < r->n; ++i) {
      const token *t = &r->tok[i];
      size_t to = SIZE_MAX;
      if (!on[i]) {
        continue;
      }
      switch (t->kind) {
      case TOK_LIT:
        to = c == t->ch ? i + 1 : SIZE_MAX;
        break;
      case TOK_ANY:
        to = c != '/' ? i + 1 : SIZE_MAX;
        break;
      case TOK_CLASS:
        to = c != '/' && (t->set[c >> 3] >> (c & 7)) & 1 ? i + 1 : SIZE_MAX;
        break;
      case TOK_STAR:
        to = c != '/' ? i : SIZE_MAX;
        break;
      case TOK_STARSTAR:
        to = i;
        break;
      case TOK_DIRS:
        to = c == '/' ? i : i + 1;
        break;
      case TOK_DIRS_MID:
        to = c == '/' ? i - 1 : i;
        break;
      }
      if (to != SIZE_MAX) {
        next[to] = 1;
        any = 1;
      }
    }
    if (!any) {
      return 0;
    }
    closure(r, next);
    tmp = on;
    on = next;
    next = tmp;
  }
  return on[r->n];
}

jsync_excludes *jsync_excludes_new(void) {
  return calloc(1, sizeof(jsync_excludes));
}

int jsync_excludes_add(jsync_excludes *ex, const char *pattern) {
  size_t len = strnlen(pattern, JSYNC_PATTERN_MAX + 1);
  rule r;
  memset(&r, 0, sizeof(r));
  if (len > JSYNC_PATTERN_MAX) {
    return -ENAMETOOLONG;
  }
  while (len > 0 && pattern[len - 1] == '/') {
    r.dir_only = 1;
    --len;
  }
  while (len > 0 && pattern[0] == '/') {
    r.anchored = 1;
    ++pattern;
    --len;
  }
  if (len == 0) {
    return -EINVAL;
  }
  if (memchr(pattern, '/', len)) {
    r.anchored = 1;
  }
  if (ex->n == ex->cap) {
    size_t ncap = ex->cap ? ex->cap * 2 : 8;
    rule *nr = realloc(ex->rules, ncap * sizeof(*nr));
    if (!nr) {
      return -ENOMEM;
    }
    ex->rules = nr;
    ex->cap = ncap;
  }
  r.tok = malloc(len * sizeof(*r.tok));
  if (!r.tok) {
    return -ENOMEM;
  }
  r.n = compile(pattern, len, r.tok);
  ex->rules[ex->n++] = r;
  return 0;
}

int jsync_excluded(const jsync_excludes *ex, const char *rel, int is_dir) {
  const char *base;
  size_t i;
  if (!ex) {
    return 0;
  }
  base = strrchr(rel, '/');
  base = base ? base + 1 : rel;
  for (i = 0; i < ex->n; ++i) {
    const rule *r = &ex->rules[i];
    if (r->dir_only && !is_dir) {
      continue;
    }
    if (rule_match(r, r->anchored ? rel : base)) {
      return 1;
    }
  }
  return 0;
}

void jsync_excludes_free(jsync_excludes *ex) {
  size_t i;
  if (!ex) {
    return;
  }
  for (i = 0; i < ex->n; ++i) {
    free(ex->rules[i].tok);
  }
  free(ex->rules);
  free(ex);
}

/* ---- walking ------------------------------------------------------------- */

typedef struct walker {
  const jsync_excludes *ex;
  jsync_walk_fn fn;
  jsync_warn_fn warn;
  void *user;
  size_t len; /* of path */
  char path[JSYNC_PATH_MAX];
  char target[JSYNC_PATH_MAX];
} walker;

static void warn_errno(walker *w, const char *what, int err) {
  char why[192];
  if (w->warn) {
    const char *desc = strerrordesc_np(err);
    snprintf(why, sizeof(why), "%s: %s", what, desc ? desc : "unknown error");
    w->warn(w->path, why, w->user);
  }
}

static void warn_other(walker *w) {
  if (w->warn) {
    w->warn(w->path, "not a regular file, directory or symlink", w->user);
  }
}

/* Reads the symlink (dirfd, name) and hands it to fn; problems with it
 * are warnings. */
static int visit_symlink(walker *w, int dirfd, const char *name,
                         const struct stat *st) {
  jsync_meta m;
  ssize_t n = readlinkat(dirfd, name, w->target, sizeof(w->target));
  if (n < 0) {
    warn_errno(w, "cannot read symlink", errno);
    return 0;
  }
  if ((size_t)n >= sizeof(w->target)) {
    warn_errno(w, "symlink target", ENAMETOOLONG);
    return 0;
  }
  w->target[n] = '\0';
  jsync_meta_from_stat(st, &m);
  m.size = (uint64_t)n;
  return w->fn(w->path, &m, w->target, w->user);
}

static int walk_dir(walker *w, int fd, int depth);

/* The directory open (readable) at fd: reported, then its entries.
 * depth 0 is rel itself, whose failures are errors, not warnings. */
static int visit_dir(walker *w, int fd, int depth) {
  struct stat st;
  jsync_meta m;
  int rv;
  if (fstat(fd, &st) != 0) {
    if (depth == 0) {
      return -errno;
    }
    warn_errno(w, "cannot stat", errno);
    return 0;
  }
  jsync_meta_from_stat(&st, &m);
  rv = w->fn(w->path, &m, NULL, w->user);
  return rv != 0 ? rv : walk_dir(w, fd, depth);
}

static int visit_entry(walker *w, int dirfd, const char *name, int depth) {
  struct stat st;
  jsync_meta m;
  int fd, rv;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    warn_errno(w, "cannot stat", errno);
    return 0;
  }
  if (jsync_excluded(w->ex, w->path, S_ISDIR(st.st_mode))) {
    return 0;
  }
  if (jsync_meta_from_stat(&st, &m) != 0) {
    warn_other(w);
    return 0;
  }
  switch (m.type) {
  case JSYNC_FILE:
    return w->fn(w->path, &m, NULL, w->user);
  case JSYNC_SYMLINK:
    return visit_symlink(w, dirfd, name, &st);
  case JSYNC_DIR:
    break;
  }
  if (depth + 1 > JSYNC_MAX_DEPTH) {
    return -ELOOP;
  }
  /* O_NOFOLLOW: if it was swapped for a symlink since fstatat(), this
   * fails rather than leaving the tree. */
  fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    warn_errno(w, "cannot open directory", errno);
    return 0;
  }
  rv = visit_dir(w, fd, depth + 1);
  close(fd);
  return rv;
}

static int walk_dir(walker *w, int fd, int depth) {
  name_list nl;
  size_t i, base = w->len;
  int rv = names_read(fd, &nl, 1);
  if (rv != 0) {
    if (rv == -ENOMEM) {
      return rv;
    }
    warn_errno(w, "cannot read directory", -rv);
    return 0;
  }
  for (i = 0; rv == 0 && i < nl.n; ++i) {
    size_t n = strlen(nl.v[i]), sep = base ? 1 : 0;
    if (base + sep + n >= sizeof(w->path)) {
      warn_errno(w, "an entry below", ENAMETOOLONG);
      continue;
    }
    if (sep) {
      w->path[base] = '/';
    }
    memcpy(w->path + base + sep, nl.v[i], n + 1);
    w->len = base + sep + n;
    rv = visit_entry(w, fd, nl.v[i], depth);
    w->len = base;
    w->path[base] = '\0';
  }
  names_free(&nl);
  return rv;
}

int jsync_walk(int rootfd, const char *rel, const jsync_excludes *ex,
               jsync_walk_fn fn, jsync_warn_fn warn, void *user) {
  walker *w;
  struct stat st;
  int pfd, fd, rv = 0;
  if (*rel && !jsync_path_valid(rel)) {
    return -EINVAL;
  }
  /* Describe and open one object: rel cannot change type in between. */
  pfd = jsync_open_beneath(rootfd, rel, O_PATH | O_NOFOLLOW, 0);
  if (pfd < 0) {
    return pfd;
  }
  w = malloc(sizeof(*w));
  if (!w) {
    close(pfd);
    return -ENOMEM;
  }
  w->ex = ex;
  w->fn = fn;
  w->warn = warn;
  w->user = user;
  w->len = strlen(rel);
  memcpy(w->path, rel, w->len + 1);
  if (fstat(pfd, &st) != 0) {
    rv = -errno;
  } else if (S_ISREG(st.st_mode)) {
    jsync_meta m;
    jsync_meta_from_stat(&st, &m);
    rv = fn(w->path, &m, NULL, user);
  } else if (S_ISLNK(st.st_mode)) {
    rv = visit_symlink(w, pfd, "", &st);
  } else if (S_ISDIR(st.st_mode)) {
    fd = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      rv = -errno;
    } else {
      rv = visit_dir(w, fd, 0);
      close(fd);
    }
  } else {
    warn_other(w);
  }
  close(pfd);
  free(w);
  return rv;
}

/* ---- temporary files ----------------------------------------------------- */

/* ".<leaf cut to TMP_LEAF_MAX>.jsync-": the part of a temporary name
 * before its random digits. */
static void tmp_prefix(const char *leaf, char *out, size_t cap) {
  size_t n = strnlen(leaf, TMP_LEAF_MAX);
  snprintf(out, cap, ".%.*s" TMP_TAG, (int)n, leaf);
}

static int tmp_random_name(const char *leaf, char *out, size_t cap) {
  uint32_t r;
  size_t got = 0;
  while (got < sizeof(r)) {
    ssize_t n = getrandom((char *)&r + got, sizeof(r) - got, 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -errno;
    }
    got += (size_t)n;
  }
  tmp_prefix(leaf, out, cap);
  snprintf(out + strlen(out), cap - strlen(out), "%08x", (unsigned int)r);
  return 0;
}

/* 1 if name is prefix followed by exactly 8 lowercase hex digits. */
static int tmp_name_matches(const char *name, const char *prefix) {
  size_t n = strlen(prefix), i;
  if (strncmp(name, prefix, n) != 0 || strlen(name + n) != 8) {
    return 0;
  }
  for (i = n; i < n + 8; ++i) {
    if (!((name[i] >= '0' && name[i] <= '9') ||
          (name[i] >= 'a' && name[i] <= 'f'))) {
      return 0;
    }
  }
  return 1;
}

int jsync_is_tmp_name(const char *leaf) {
  return leaf[0] == '.' && strstr(leaf, TMP_TAG) != NULL;
}

int jsync_tmp_create(int rootfd, const char *rel, jsync_tmp *t) {
  const char *leaf;
  int dirfd, fd = -1, rv = -EEXIST, tries;
  memset(t, 0, sizeof(*t));
  t->fd = t->dirfd = -1;
  dirfd = jsync_open_parent(rootfd, rel, &leaf);
  if (dirfd < 0) {
    return dirfd;
  }
  for (tries = 0; tries < RETRIES; ++tries) {
    rv = tmp_random_name(leaf, t->name, sizeof(t->name));
    if (rv != 0) {
      break;
    }
    fd = openat(dirfd, t->name,
                O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      rv = -errno;
      if (rv == -EEXIST) {
        continue;
      }
      break;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      rv = 0;
      break;
    }
    rv = -errno;
    close(fd);
    fd = -1;
    /* Another run's jsync_stale_open() took it for a stale file between
     * our create and lock: leave it to that run and pick a new name. */
    if (rv != -EWOULDBLOCK) {
      break;
    }
  }
  if (rv != 0) {
    close_quietly(dirfd);
    t->name[0] = '\0';
    return rv;
  }
  t->dirfd = dirfd;
  t->fd = fd;
  snprintf(t->leaf, sizeof(t->leaf), "%s", leaf);
  return 0;
}

static int pwrite_all(jsync_tmp *t, uint64_t off, const uint8_t *p,
                      size_t len) {
  uint64_t end = off + len;
  while (len > 0) {
    ssize_t n = pwrite(t->fd, p, len, (off_t)off);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -errno;
    }
    if (n == 0) {
      return -EIO;
    }
    p += n;
    off += (uint64_t)n;
    len -= (size_t)n;
  }
  if (end > t->size) {
    t->size = end;
  }
  return 0;
}

/* Makes [off, off + len) read as zeros without allocating: nothing to do
 * at or past t->size, a punched hole below it. */
static int zero_range(jsync_tmp *t, uint64_t off, uint64_t len) {
  static const uint8_t zeros[BLOCK];
  if (off >= t->size || len == 0) {
    return 0;
  }
  if (len > t->size - off) {
    len = t->size - off;
  }
  if (fallocate(t->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                (off_t)len) == 0) {
    return 0;
  }
  if (errno != EOPNOTSUPP && errno != ENOSYS) {
    return -errno;
  }
  while (len > 0) {
    size_t n = len < BLOCK ? (size_t)len : BLOCK;
    int rv = pwrite_all(t, off, zeros, n);
    if (rv != 0) {
      return rv;
    }
    off += n;
    len -= n;
  }
  return 0;
}

static int all_zero(const uint8_t *p, size_t n) {
  return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

static int range_ok(uint64_t off, uint64_t len) {
  return off <= (uint64_t)INT64_MAX && len <= (uint64_t)INT64_MAX - off;
}

int jsync_tmp_write(jsync_tmp *t, uint64_t off, const void *buf, size_t len) {
  const uint8_t *p = buf;
  uint64_t pos = off, end = off + len, data = off;
  int rv = 0;
  if (!range_ok(off, len)) {
    return -EFBIG;
  }
  if (len == 0) {
    return 0;
  }
  /* Whole aligned zero blocks split the range into data runs. */
  while (rv == 0 && pos < end) {
    uint64_t blk_end = (pos / BLOCK + 1) * BLOCK, zero_end;
    if (pos % BLOCK != 0 || blk_end > end ||
        !all_zero(p + (pos - off), BLOCK)) {
      pos = blk_end < end ? blk_end : end;
      continue;
    }
    zero_end = blk_end;
    while (zero_end + BLOCK <= end && all_zero(p + (zero_end - off), BLOCK)) {
      zero_end += BLOCK;
    }
    rv = pwrite_all(t, data, p + (data - off), (size_t)(pos - data));
    if (rv == 0) {
      rv = zero_range(t, pos, zero_end - pos);
    }
    pos = data = zero_end;
  }
  if (rv == 0) {
    rv = pwrite_all(t, data, p + (data - off), (size_t)(end - data));
  }
  if (rv == 0 && end > t->size) {
    t->size = end;
  }
  return rv;
}

/* Copies one data segment of the source. */
static int copy_data(jsync_tmp *t, uint64_t off, int src_fd, uint64_t src_off,
                     uint64_t len, int *use_cfr) {
  const size_t bufsize = 128 * 1024;
  uint8_t *buf = NULL;
  int rv = 0;
  while (rv == 0 && len > 0) {
    ssize_t n;
    if (*use_cfr) {
      loff_t so = (loff_t)src_off, doff = (loff_t)off;
      size_t want = len < (1u << 30) ? (size_t)len : (1u << 30);
      n = copy_file_range(src_fd, &so, t->fd, &doff, want, 0);
      if (n < 0) {
        if (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
            errno == EOPNOTSUPP) {
          *use_cfr = 0;
        } else if (errno != EINTR) {
          rv = -errno;
        }
        continue;
      }
      if (n > 0 && off + (uint64_t)n > t->size) {
        t->size = off + (uint64_t)n;
      }
    } else {
      if (!buf && !(buf = malloc(bufsize))) {
        rv = -ENOMEM;
        break;
      }
      n = pread(src_fd, buf, len < bufsize ? (size_t)len : bufsize,
                (off_t)src_off);
      if (n < 0) {
        if (errno != EINTR) {
          rv = -errno;
        }
        continue;
      }
      if (n > 0) {
        rv = jsync_tmp_write(t, off, buf, (size_t)n);
      }
    }
    if (n == 0) {
      rv = -ENODATA; /* the source ended early */
    }
    if (rv == 0) {
      off += (uint64_t)n;
      src_off += (uint64_t)n;
      len -= (uint64_t)n;
    }
  }
  free(buf);
  return rv;
}

int jsync_tmp_copy(jsync_tmp *t, uint64_t off, int src_fd, uint64_t src_off,
                   uint64_t len) {
  struct stat st;
  uint64_t pos = src_off, end = src_off + len;
  int use_cfr = 1, rv = 0;
  if (!range_ok(off, len) || !range_ok(src_off, len)) {
    return -EFBIG;
  }
  if (len == 0) {
    return 0;
  }
  if (fstat(src_fd, &st) != 0) {
    return -errno;
  }
  if (!S_ISREG(st.st_mode)) {
    return -EINVAL;
  }
  if ((uint64_t)st.st_size < end) {
    return -ENODATA;
  }
  while (rv == 0 && pos < end) {
    off_t d = lseek(src_fd, (off_t)pos, SEEK_DATA), h;
    if (d < 0 && errno == ENXIO) {
      d = (off_t)end; /* only a hole is left */
    } else if (d < 0 && errno == EINVAL) {
      d = (off_t)pos; /* no SEEK_DATA: all data */
    } else if (d < 0) {
      return -errno;
    }
    if ((uint64_t)d > end) {
      d = (off_t)end;
    }
    if ((uint64_t)d > pos) {
      rv = zero_range(t, off + (pos - src_off), (uint64_t)d - pos);
      pos = (uint64_t)d;
      continue;
    }
    h = lseek(src_fd, d, SEEK_HOLE);
    if (h < 0) {
      if (errno != EINVAL && errno != ENXIO) {
        return -errno;
      }
      h = (off_t)end;
    }
    if ((uint64_t)h > end) {
      h = (off_t)end;
    }
    if ((uint64_t)h <= pos) {
      h = (off_t)end; /* cannot happen with a sane lseek; do not spin */
    }
    rv = copy_data(t, off + (pos - src_off), src_fd, pos, (uint64_t)h - pos,
                   &use_cfr);
    pos = (uint64_t)h;
  }
  /* A hole read past a concurrent truncation would pass for zeros. */
  if (rv == 0 && fstat(src_fd, &st) == 0 && (uint64_t)st.st_size < end) {
    rv = -ENODATA;
  }
  if (rv == 0 && off + len > t->size) {
    t->size = off + len;
  }
  return rv;
}

static void set_times(struct timespec ts[2], const jsync_meta *m) {
  ts[0].tv_sec = 0;
  ts[0].tv_nsec = UTIME_OMIT;
  ts[1].tv_sec = (time_t)m->mtime_sec;
  ts[1].tv_nsec = (long)m->mtime_nsec;
}

int jsync_tmp_commit(jsync_tmp *t, const jsync_meta *m, int do_fsync) {
  struct timespec ts[2];
  int rv = 0;
  if (!t->name[0]) {
    return -EBADF;
  }
  if (m->mtime_nsec >= 1000000000u || m->size > (uint64_t)INT64_MAX) {
    rv = -EINVAL;
  }
  if (rv == 0 && ftruncate(t->fd, (off_t)m->size) != 0) {
    rv = -errno;
  }
  if (rv == 0 && geteuid() == 0 &&
      fchown(t->fd, (uid_t)m->uid, (gid_t)m->gid) != 0) {
    rv = -errno;
  }
  if (rv == 0 && fchmod(t->fd, (mode_t)(m->mode & 07777)) != 0) {
    rv = -errno;
  }
  set_times(ts, m);
  if (rv == 0 && futimens(t->fd, ts) != 0) {
    rv = -errno;
  }
  if (rv == 0 && do_fsync && fsync(t->fd) != 0) {
    rv = -errno;
  }
  if (rv == 0 && renameat(t->dirfd, t->name, t->dirfd, t->leaf) != 0) {
    rv = -errno;
  }
  if (rv != 0) {
    jsync_tmp_abort(t);
    return rv;
  }
  if (do_fsync && fsync(t->dirfd) != 0) {
    rv = -errno;
  }
  close(t->fd);
  close(t->dirfd);
  t->fd = t->dirfd = -1;
  t->name[0] = '\0';
  return rv;
}

void jsync_tmp_abort(jsync_tmp *t) {
  struct stat a, b;
  if (!t->name[0]) {
    return;
  }
  /* Unlink the name only while it is still ours. */
  if (fstat(t->fd, &a) == 0 &&
      fstatat(t->dirfd, t->name, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
      same_file(&a, &b)) {
    unlinkat(t->dirfd, t->name, 0);
  }
  close_quietly(t->fd);
  close_quietly(t->dirfd);
  t->fd = t->dirfd = -1;
  t->name[0] = '\0';
}

int jsync_stale_open(int rootfd, const char *rel, int *fds, int max) {
  char prefix[NAME_MAX + 1];
  const char *leaf;
  name_list nl;
  size_t i;
  int dirfd, n = 0, rv;
  if (max <= 0) {
    return 0;
  }
  dirfd = jsync_open_parent(rootfd, rel, &leaf);
  if (dirfd < 0) {
    return dirfd == -ENOENT ? 0 : dirfd;
  }
  tmp_prefix(leaf, prefix, sizeof(prefix));
  rv = names_read(dirfd, &nl, 1);
  for (i = 0; rv == 0 && i < nl.n && n < max; ++i) {
    struct stat st;
    int fd;
    if (!tmp_name_matches(nl.v[i], prefix)) {
      continue;
    }
    /* O_NONBLOCK: a FIFO planted under such a name must not hang us. */
    fd = openat(dirfd, nl.v[i],
                O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
      continue;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
        st.st_uid != geteuid() || flock(fd, LOCK_EX | LOCK_NB) != 0) {
      close(fd);
      continue;
    }
    fds[n++] = fd;
  }
  names_free(&nl);
  close(dirfd);
  if (rv != 0) {
    while (n > 0) {
      close(fds[--n]);
    }
    return rv;
  }
  return n;
}

void jsync_stale_remove(int rootfd, const char *rel, int *fds, int n) {
  char prefix[NAME_MAX + 1];
  const char *leaf;
  name_list nl;
  size_t i;
  int dirfd = n > 0 ? jsync_open_parent(rootfd, rel, &leaf) : -1, k;
  if (dirfd >= 0) {
    tmp_prefix(leaf, prefix, sizeof(prefix));
    if (names_read(dirfd, &nl, 0) == 0) {
      for (i = 0; i < nl.n; ++i) {
        struct stat named, held;
        if (!tmp_name_matches(nl.v[i], prefix) ||
            fstatat(dirfd, nl.v[i], &named, AT_SYMLINK_NOFOLLOW) != 0) {
          continue;
        }
        for (k = 0; k < n; ++k) {
          if (fds[k] >= 0 && fstat(fds[k], &held) == 0 &&
              same_file(&named, &held)) {
            unlinkat(dirfd, nl.v[i], 0);
            break;
          }
        }
      }
      names_free(&nl);
    }
    close(dirfd);
  }
  for (k = 0; k < n; ++k) {
    close_quietly(fds[k]);
    fds[k] = -1;
  }
}

/* ---- symlinks and metadata ----------------------------------------------- */

int jsync_symlink_put(int rootfd, const char *rel, const char *target,
                      const jsync_meta *m) {
  char name[NAME_MAX + 1];
  const char *leaf;
  size_t tlen = target ? strnlen(target, JSYNC_PATH_MAX) : 0;
  int dirfd, rv = -EEXIST, tries, made = 0;
  if (tlen == 0 || tlen >= JSYNC_PATH_MAX ||
      (m && m->mtime_nsec >= 1000000000u)) {
    return -EINVAL;
  }
  dirfd = jsync_open_parent(rootfd, rel, &leaf);
  if (dirfd < 0) {
    return dirfd;
  }
  for (tries = 0; tries < RETRIES; ++tries) {
    rv = tmp_random_name(leaf, name, sizeof(name));
    if (rv != 0) {
      break;
    }
    if (symlinkat(target, dirfd, name) == 0) {
      made = 1;
      break;
    }
    rv = -errno;
    if (rv != -EEXIST) {
      break;
    }
  }
  if (made && m && geteuid() == 0 &&
      fchownat(dirfd, name, (uid_t)m->uid, (gid_t)m->gid,
               AT_SYMLINK_NOFOLLOW) != 0) {
    rv = -errno;
  }
  if (made && rv == 0 && m) {
    struct timespec ts[2];
    set_times(ts, m);
    if (utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW) != 0) {
      rv = -errno;
    }
  }
  if (made && rv == 0 && renameat(dirfd, name, dirfd, leaf) != 0) {
    rv = -errno;
  }
  if (made && rv != 0) {
    unlinkat(dirfd, name, 0);
  }
  close(dirfd);
  return rv;
}

int jsync_meta_apply(int rootfd, const char *rel, const jsync_meta *m) {
  struct timespec ts[2];
  const char *leaf = ".";
  int dirfd = rootfd, rv = 0;
  if (m->mtime_nsec >= 1000000000u) {
    return -EINVAL;
  }
  if (*rel) {
    dirfd = jsync_open_parent(rootfd, rel, &leaf);
    if (dirfd < 0) {
      return dirfd;
    }
  }
  /* Owner first: chown can clear set-id bits the mode then sets.  All
   * three calls act on the leaf itself, never on what it points to. */
  if (geteuid() == 0 && fchownat(dirfd, leaf, (uid_t)m->uid, (gid_t)m->gid,
                                 AT_SYMLINK_NOFOLLOW) != 0) {
    rv = -errno;
  }
  if (rv == 0 && m->type != JSYNC_SYMLINK &&
      fchmodat(dirfd, leaf, (mode_t)(m->mode & 07777), AT_SYMLINK_NOFOLLOW) !=
          0) {
    rv = -errno;
  }
  set_times(ts, m);
  if (rv == 0 && utimensat(dirfd, leaf, ts, AT_SYMLINK_NOFOLLOW) != 0) {
    rv = -errno;
  }
  if (dirfd != rootfd) {
    close(dirfd);
  }
  return rv;
}
