/* test_jsync_fs.c — jsync: confined filesystem access beneath a root. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jsync_fs.h"

/* Each test: /tmp/jsync_fs.XXXXXX/{root,outside}, rootfd open on root. */
static struct {
  char base[64];
  char root[96];
  char out[96];
  int rootfd;
} F;

static void setup(void) {
  snprintf(F.base, sizeof(F.base), "/tmp/jsync_fs.XXXXXX");
  cr_assert_not_null(mkdtemp(F.base));
  snprintf(F.root, sizeof(F.root), "%s/root", F.base);
  snprintf(F.out, sizeof(F.out), "%s/outside", F.base);
  cr_assert_eq(mkdir(F.root, 0755), 0);
  cr_assert_eq(mkdir(F.out, 0755), 0);
  F.rootfd = open(F.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  cr_assert_geq(F.rootfd, 0);
  jsync_fs_use_openat2(1);
}

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw) {
  (void)st;
  (void)ftw;
  if (flag == FTW_DP) {
    chmod(path, 0700);
    return rmdir(path) == 0 ? 0 : -1;
  }
  return unlink(path) == 0 ? 0 : -1;
}

static void teardown(void) {
  if (F.rootfd >= 0) {
    close(F.rootfd);
  }
  nftw(F.base, rm_one, 32, FTW_DEPTH | FTW_PHYS);
}

TestSuite(jsync_fs, .init = setup, .fini = teardown);

/* ---- helpers ------------------------------------------------------------- */

static void put(int dirfd, const char *rel, const char *content) {
  int fd = openat(dirfd, rel, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  size_t len = strlen(content);
  cr_assert_geq(fd, 0, "create %s: %s", rel, strerror(errno));
  cr_assert_eq(write(fd, content, len), (ssize_t)len);
  close(fd);
}

static void outside_path(char *buf, size_t cap, const char *rel) {
  snprintf(buf, cap, "%s/%s", F.out, rel);
}

/* Reads all of fd from offset 0 into a malloc()ed buffer. */
static char *slurp(int fd, size_t *len) {
  struct stat st;
  char *p;
  cr_assert_eq(fstat(fd, &st), 0);
  p = malloc((size_t)st.st_size + 1);
  cr_assert_not_null(p);
  cr_assert_eq(pread(fd, p, (size_t)st.st_size, 0), st.st_size);
  p[st.st_size] = '\0';
  if (len) {
    *len = (size_t)st.st_size;
  }
  return p;
}

static void assert_content(int dirfd, const char *rel, const char *want) {
  int fd = openat(dirfd, rel, O_RDONLY | O_CLOEXEC);
  char *got;
  cr_assert_geq(fd, 0, "open %s: %s", rel, strerror(errno));
  got = slurp(fd, NULL);
  cr_assert_str_eq(got, want);
  free(got);
  close(fd);
}

static int open_rel_rdonly(const char *rel) {
  int fd = openat(F.rootfd, rel, O_RDONLY | O_CLOEXEC);
  cr_assert_geq(fd, 0, "open %s: %s", rel, strerror(errno));
  return fd;
}

/* Number of entries of the directory rel (beneath the root) whose name
 * starts with prefix. */
static int count_prefixed(const char *rel, const char *prefix) {
  int fd = jsync_open_beneath(F.rootfd, rel, O_RDONLY | O_DIRECTORY, 0), n = 0;
  DIR *d;
  struct dirent *de;
  cr_assert_geq(fd, 0);
  d = fdopendir(fd);
  cr_assert_not_null(d);
  while ((de = readdir(d))) {
    if (strncmp(de->d_name, prefix, strlen(prefix)) == 0) {
      ++n;
    }
  }
  closedir(d);
  return n;
}

static uint8_t *pattern_data(size_t n, unsigned seed) {
  uint8_t *p = malloc(n);
  size_t i;
  cr_assert_not_null(p);
  for (i = 0; i < n; ++i) {
    seed = seed * 1103515245u + 12345u;
    p[i] = (uint8_t)((seed >> 16) | 1); /* never zero */
  }
  return p;
}

/* The common escape fixtures: root/sub/file, root/in -> sub (inside),
 * root/etc -> /etc, root/up -> ../outside (outside/secret exists). */
static void escape_fixture(void) {
  char p[256];
  cr_assert_eq(mkdirat(F.rootfd, "sub", 0755), 0);
  put(F.rootfd, "sub/file", "inside");
  cr_assert_eq(symlinkat("sub", F.rootfd, "in"), 0);
  cr_assert_eq(symlinkat("/etc", F.rootfd, "etc"), 0);
  cr_assert_eq(symlinkat("../outside", F.rootfd, "up"), 0);
  outside_path(p, sizeof(p), "secret");
  put(AT_FDCWD, p, "secret");
}

/* ---- paths --------------------------------------------------------------- */

Test(jsync_fs, path_valid_accepts_and_rejects) {
  char longname[300], longpath[JSYNC_PATH_MAX + 10];
  cr_assert(jsync_path_valid("a"));
  cr_assert(jsync_path_valid("a/b/c"));
  cr_assert(jsync_path_valid(".hidden/..x/x.."));
  cr_assert(jsync_path_valid("sp ace/\xff\x01"));
  cr_assert_not(jsync_path_valid(""));
  cr_assert_not(jsync_path_valid("."));
  cr_assert_not(jsync_path_valid(".."));
  cr_assert_not(jsync_path_valid("../x"));
  cr_assert_not(jsync_path_valid("a/../b"));
  cr_assert_not(jsync_path_valid("a/./b"));
  cr_assert_not(jsync_path_valid("a/.."));
  cr_assert_not(jsync_path_valid("/abs"));
  cr_assert_not(jsync_path_valid("a//b"));
  cr_assert_not(jsync_path_valid("a/"));
  cr_assert_not(jsync_path_valid("/"));
  memset(longname, 'n', 255);
  longname[255] = '\0';
  cr_assert(jsync_path_valid(longname));
  memset(longname, 'n', 256);
  longname[256] = '\0';
  cr_assert_not(jsync_path_valid(longname), "component over NAME_MAX");
  memset(longpath, 'a', sizeof(longpath));
  for (size_t i = 100; i < sizeof(longpath); i += 100) {
    longpath[i] = '/';
  }
  longpath[JSYNC_PATH_MAX - 1] = '\0';
  cr_assert(jsync_path_valid(longpath));
  longpath[JSYNC_PATH_MAX - 1] = 'a';
  longpath[JSYNC_PATH_MAX] = '\0';
  cr_assert_not(jsync_path_valid(longpath));
}

Test(jsync_fs, meta_from_stat) {
  struct stat st;
  jsync_meta m;
  memset(&st, 0, sizeof(st));
  st.st_mode = S_IFREG | 04755;
  st.st_size = 1234;
  st.st_uid = 7;
  st.st_gid = 8;
  st.st_mtim.tv_sec = 1700000000;
  st.st_mtim.tv_nsec = 123456789;
  cr_assert_eq(jsync_meta_from_stat(&st, &m), 0);
  cr_assert_eq(m.type, JSYNC_FILE);
  cr_assert_eq(m.mode, 04755);
  cr_assert_eq(m.size, 1234);
  cr_assert_eq(m.uid, 7);
  cr_assert_eq(m.gid, 8);
  cr_assert_eq(m.mtime_sec, 1700000000);
  cr_assert_eq(m.mtime_nsec, 123456789);
  st.st_mode = S_IFDIR | 0755;
  cr_assert_eq(jsync_meta_from_stat(&st, &m), 0);
  cr_assert_eq(m.type, JSYNC_DIR);
  cr_assert_eq(m.size, 0);
  st.st_mode = S_IFIFO | 0644;
  cr_assert_eq(jsync_meta_from_stat(&st, &m), -EINVAL);
}

/* ---- confined opening ---------------------------------------------------- */

Test(jsync_fs, open_beneath_refuses_escapes) {
  int fd;
  escape_fixture();
  cr_assert_eq(jsync_open_beneath(F.rootfd, "../outside/secret", O_RDONLY, 0),
               -EXDEV);
  cr_assert_eq(
      jsync_open_beneath(F.rootfd, "sub/../../outside/secret", O_RDONLY, 0),
      -EXDEV);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "/etc/passwd", O_RDONLY, 0),
               -EXDEV);
  /* Symlinks leading out: as an intermediate component... */
  cr_assert_eq(jsync_open_beneath(F.rootfd, "etc/passwd", O_RDONLY, 0), -EXDEV);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "up/secret", O_RDONLY, 0), -EXDEV);
  /* ...and as the last one, followed or not. */
  cr_assert_eq(jsync_open_beneath(F.rootfd, "etc", O_RDONLY, 0), -EXDEV);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "up", O_RDONLY | O_NOFOLLOW, 0),
               -ELOOP);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "etc", O_RDONLY | O_NOFOLLOW, 0),
               -ELOOP);
  /* Creating through one is refused and makes nothing outside. */
  cr_assert_eq(jsync_open_beneath(F.rootfd, "up/new", O_WRONLY | O_CREAT, 0644),
               -EXDEV);
  cr_assert_eq(count_prefixed("", "new"), 0);
  {
    char p[256];
    outside_path(p, sizeof(p), "new");
    cr_assert_neq(access(p, F_OK), 0);
  }
  /* Inside symlinks and ".." that stay inside are fine. */
  fd = jsync_open_beneath(F.rootfd, "in/file", O_RDONLY, 0);
  cr_assert_geq(fd, 0, "%s", strerror(-fd));
  close(fd);
  fd = jsync_open_beneath(F.rootfd, "sub/../sub/file", O_RDONLY, 0);
  cr_assert_geq(fd, 0);
  close(fd);
}

Test(jsync_fs, open_beneath_empty_path_opens_the_root) {
  struct stat a, b;
  int fd = jsync_open_beneath(F.rootfd, "", O_RDONLY | O_DIRECTORY, 0);
  cr_assert_geq(fd, 0);
  cr_assert_eq(fstat(fd, &a), 0);
  cr_assert_eq(fstat(F.rootfd, &b), 0);
  cr_assert_eq(a.st_ino, b.st_ino);
  cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  close(fd);
}

Test(jsync_fs, open_beneath_fallback_walk_is_stricter) {
  int fd;
  escape_fixture();
  jsync_fs_use_openat2(0);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "../outside/secret", O_RDONLY, 0),
               -EXDEV);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "/etc/passwd", O_RDONLY, 0),
               -EXDEV);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "etc/passwd", O_RDONLY, 0), -ELOOP);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "up/secret", O_RDONLY, 0), -ELOOP);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "up", O_RDONLY, 0), -ELOOP);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "in/file", O_RDONLY, 0), -ELOOP);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "sub/file/x", O_RDONLY, 0),
               -ENOTDIR);
  cr_assert_eq(jsync_open_beneath(F.rootfd, "sub/nope", O_RDONLY, 0), -ENOENT);
  fd = jsync_open_beneath(F.rootfd, "sub/file", O_RDONLY, 0);
  cr_assert_geq(fd, 0);
  close(fd);
  fd = jsync_open_beneath(F.rootfd, "", O_RDONLY | O_DIRECTORY, 0);
  cr_assert_geq(fd, 0);
  close(fd);
  fd = jsync_open_beneath(F.rootfd, "sub/made", O_WRONLY | O_CREAT, 0600);
  cr_assert_geq(fd, 0);
  close(fd);
  assert_content(F.rootfd, "sub/made", "");
  jsync_fs_use_openat2(1);
}

Test(jsync_fs, open_parent_and_lstat) {
  const char *leaf = NULL;
  struct stat st;
  int fd;
  escape_fixture();
  fd = jsync_open_parent(F.rootfd, "sub/file", &leaf);
  cr_assert_geq(fd, 0);
  cr_assert_str_eq(leaf, "file");
  close(fd);
  fd = jsync_open_parent(F.rootfd, "top", &leaf);
  cr_assert_geq(fd, 0);
  cr_assert_str_eq(leaf, "top");
  close(fd);
  cr_assert_eq(jsync_open_parent(F.rootfd, "up/x", &leaf), -EXDEV);
  cr_assert_eq(jsync_open_parent(F.rootfd, "../x", &leaf), -EINVAL);
  cr_assert_eq(jsync_open_parent(F.rootfd, "", &leaf), -EINVAL);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "up", &st), 0);
  cr_assert(S_ISLNK(st.st_mode), "the link itself, not its target");
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "sub/file", &st), 0);
  cr_assert(S_ISREG(st.st_mode));
  cr_assert_eq(st.st_size, 6);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "", &st), 0);
  cr_assert(S_ISDIR(st.st_mode));
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "up/secret", &st), -EXDEV);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "nope", &st), -ENOENT);
}

/* ---- directories --------------------------------------------------------- */

Test(jsync_fs, mkdirs_creates_missing_parents) {
  struct stat st;
  cr_assert_eq(jsync_mkdirs(F.rootfd, "a/b/c", 0755), 0);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "a/b/c", &st), 0);
  cr_assert(S_ISDIR(st.st_mode));
  cr_assert_eq(jsync_mkdirs(F.rootfd, "a/b/c", 0755), 0, "already there");
  cr_assert_eq(jsync_mkdirs(F.rootfd, "a/b/d", 0755), 0);
  put(F.rootfd, "a/file", "x");
  cr_assert_eq(jsync_mkdirs(F.rootfd, "a/file/x", 0755), -ENOTDIR);
  cr_assert_eq(jsync_mkdirs(F.rootfd, "a/file", 0755), -ENOTDIR);
  cr_assert_eq(jsync_mkdirs(F.rootfd, "a/../b", 0755), -EINVAL);
  cr_assert_eq(jsync_mkdirs(F.rootfd, "", 0755), -EINVAL);
}

Test(jsync_fs, mkdirs_follows_only_inside_symlinks) {
  char p[256];
  struct stat st;
  escape_fixture();
  cr_assert_eq(jsync_mkdirs(F.rootfd, "up/evil/deeper", 0755), -EXDEV);
  cr_assert_eq(jsync_mkdirs(F.rootfd, "etc/evil", 0755), -EXDEV);
  outside_path(p, sizeof(p), "evil");
  cr_assert_neq(lstat(p, &st), 0, "nothing made outside");
  cr_assert_neq(lstat("/etc/evil", &st), 0);
  cr_assert_eq(jsync_mkdirs(F.rootfd, "in/x/y", 0755), 0);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "sub/x/y", &st), 0);
  cr_assert(S_ISDIR(st.st_mode));
  jsync_fs_use_openat2(0);
  cr_assert_eq(jsync_mkdirs(F.rootfd, "up/evil2", 0755), -ELOOP);
  jsync_fs_use_openat2(1);
  outside_path(p, sizeof(p), "evil2");
  cr_assert_neq(lstat(p, &st), 0);
}

Test(jsync_fs, remove_does_not_follow_symlinks_out) {
  char p[256];
  struct stat st;
  escape_fixture();
  outside_path(p, sizeof(p), "keep");
  cr_assert_eq(mkdir(p, 0755), 0);
  outside_path(p, sizeof(p), "keep/precious");
  put(AT_FDCWD, p, "precious");
  cr_assert_eq(jsync_mkdirs(F.rootfd, "tree/a/b", 0755), 0);
  put(F.rootfd, "tree/a/b/f", "f");
  put(F.rootfd, "tree/g", "g");
  cr_assert_eq(symlinkat("../../outside/keep", F.rootfd, "tree/link"), 0);
  cr_assert_eq(symlinkat("../../outside/keep", F.rootfd, "tree/a/link2"), 0);
  cr_assert_eq(jsync_remove(F.rootfd, "tree"), 0);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "tree", &st), -ENOENT);
  cr_assert_eq(lstat(p, &st), 0, "outside content survives");
  /* A symlink at the top is unlinked, its target left alone. */
  cr_assert_eq(jsync_remove(F.rootfd, "up"), 0);
  outside_path(p, sizeof(p), "secret");
  cr_assert_eq(lstat(p, &st), 0);
  cr_assert_eq(jsync_remove(F.rootfd, "up/secret"), -ENOENT);
  cr_assert_eq(jsync_remove(F.rootfd, "etc/passwd"), -EXDEV);
  cr_assert_eq(jsync_remove(F.rootfd, "nope"), -ENOENT);
  cr_assert_eq(jsync_remove(F.rootfd, ""), -EINVAL);
  cr_assert_eq(jsync_remove(F.rootfd, "sub/file"), 0);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "sub/file", &st), -ENOENT);
}

/* ---- excludes ------------------------------------------------------------ */

Test(jsync_fs, exclude_patterns_match_like_rsync) {
  jsync_excludes *ex = jsync_excludes_new();
  cr_assert_not_null(ex);
  cr_assert_eq(jsync_excludes_add(ex, ""), -EINVAL);
  cr_assert_eq(jsync_excludes_add(ex, "/"), -EINVAL);
  cr_assert_eq(jsync_excludes_add(ex, "*.o"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "/top"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "src/gen"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "build/"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "doc/**/*.tmp"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "cache/**"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "[Tt]mp[0-9]"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "x?[!a-c]"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "lit\\*"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "[[:upper:]][[:digit:]]"), 0);
  /* Basename patterns, at any depth. */
  cr_assert(jsync_excluded(ex, "a.o", 0));
  cr_assert(jsync_excluded(ex, "deep/er/a.o", 0));
  cr_assert_not(jsync_excluded(ex, "a.oo", 0));
  cr_assert_not(jsync_excluded(ex, "a.o/b", 0));
  /* Anchored. */
  cr_assert(jsync_excluded(ex, "top", 1));
  cr_assert_not(jsync_excluded(ex, "x/top", 1));
  cr_assert(jsync_excluded(ex, "src/gen", 0));
  cr_assert_not(jsync_excluded(ex, "a/src/gen", 0));
  cr_assert_not(jsync_excluded(ex, "src/gen/x", 0));
  /* Directories only. */
  cr_assert(jsync_excluded(ex, "build", 1));
  cr_assert(jsync_excluded(ex, "a/build", 1));
  cr_assert_not(jsync_excluded(ex, "build", 0));
  /* "**". */
  cr_assert(jsync_excluded(ex, "doc/a.tmp", 0));
  cr_assert(jsync_excluded(ex, "doc/x/y/a.tmp", 0));
  cr_assert_not(jsync_excluded(ex, "doc/x/y/a.tmpx", 0));
  cr_assert_not(jsync_excluded(ex, "other/doc/a.tmp", 0));
  cr_assert(jsync_excluded(ex, "cache/a/b/c", 0));
  cr_assert_not(jsync_excluded(ex, "cache", 1));
  /* Classes, '?', escapes. */
  cr_assert(jsync_excluded(ex, "tmp1", 0));
  cr_assert(jsync_excluded(ex, "Tmp9", 0));
  cr_assert_not(jsync_excluded(ex, "tmpx", 0));
  cr_assert(jsync_excluded(ex, "xyz", 0));
  cr_assert_not(jsync_excluded(ex, "xyb", 0));
  cr_assert(jsync_excluded(ex, "lit*", 0));
  cr_assert_not(jsync_excluded(ex, "litx", 0));
  cr_assert(jsync_excluded(ex, "A1", 0));
  cr_assert_not(jsync_excluded(ex, "a1", 0));
  cr_assert_not(jsync_excluded(NULL, "a.o", 0));
  jsync_excludes_free(ex);
  jsync_excludes_free(NULL);
}

Test(jsync_fs, exclude_stars_do_not_cross_slashes) {
  jsync_excludes *ex = jsync_excludes_new();
  cr_assert_eq(jsync_excludes_add(ex, "a/*/c"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "**/deep/*"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "[ab/]x"), 0);
  cr_assert(jsync_excluded(ex, "a/b/c", 0));
  cr_assert_not(jsync_excluded(ex, "a/b/b/c", 0));
  cr_assert(jsync_excluded(ex, "deep/f", 0));
  cr_assert(jsync_excluded(ex, "x/y/deep/f", 0));
  cr_assert_not(jsync_excluded(ex, "x/deep/f/g", 0));
  cr_assert(jsync_excluded(ex, "ax", 0), "anchored class pattern");
  cr_assert_not(jsync_excluded(ex, "q/ax", 0));
  /* No exponential blowup on many stars. */
  cr_assert_eq(jsync_excludes_add(ex, "*a*a*a*a*a*a*a*a*a*a*a*a*b"), 0);
  {
    char s[2000];
    memset(s, 'a', sizeof(s) - 1);
    s[sizeof(s) - 1] = '\0';
    cr_assert_not(jsync_excluded(ex, s, 0));
  }
  jsync_excludes_free(ex);
}

/* ---- walking ------------------------------------------------------------- */

#define MAX_SEEN 64

typedef struct seen {
  int n;
  char path[MAX_SEEN][128];
  jsync_meta meta[MAX_SEEN];
  char target[MAX_SEEN][128];
  int nwarn;
  char warned[MAX_SEEN][128];
  char why[MAX_SEEN][128];
  int stop_after;
} seen;

static int record(const char *path, const jsync_meta *m, const char *target,
                  void *user) {
  seen *s = user;
  cr_assert_lt(s->n, MAX_SEEN);
  snprintf(s->path[s->n], sizeof(s->path[0]), "%s", path);
  s->meta[s->n] = *m;
  snprintf(s->target[s->n], sizeof(s->target[0]), "%s", target ? target : "");
  if (m->type != JSYNC_SYMLINK) {
    cr_assert_null(target);
  }
  s->n++;
  return s->stop_after && s->n == s->stop_after ? 42 : 0;
}

static int record_count_only(const char *path, const jsync_meta *m,
                             const char *target, void *user) {
  seen *s = user;
  (void)path;
  (void)m;
  (void)target;
  s->n++;
  return 0;
}

static void record_warn(const char *path, const char *why, void *user) {
  seen *s = user;
  cr_assert_lt(s->nwarn, MAX_SEEN);
  snprintf(s->warned[s->nwarn], sizeof(s->warned[0]), "%s", path);
  snprintf(s->why[s->nwarn], sizeof(s->why[0]), "%s", why);
  s->nwarn++;
}

static void set_mtime(const char *rel, time_t sec, long nsec) {
  struct timespec ts[2] = {{0, UTIME_OMIT}, {sec, nsec}};
  cr_assert_eq(utimensat(F.rootfd, rel, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static void walk_fixture(void) {
  cr_assert_eq(mkdirat(F.rootfd, "a", 0750), 0);
  cr_assert_eq(mkdirat(F.rootfd, "a/y", 0755), 0);
  put(F.rootfd, "a/z", "zz");
  put(F.rootfd, "b", "hello");
  cr_assert_eq(fchmodat(F.rootfd, "b", 0640, 0), 0);
  cr_assert_eq(symlinkat("a/z", F.rootfd, "c"), 0);
  put(F.rootfd, "B", "upper sorts first");
  set_mtime("b", 1600000000, 123456789);
  set_mtime("c", 1600000001, 987654321);
}

Test(jsync_fs, walk_preorder_sorted_with_metadata) {
  static seen s;
  static const char *want[] = {"", "B", "a", "a/y", "a/z", "b", "c"};
  size_t i;
  walk_fixture();
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "", NULL, record, record_warn, &s), 0);
  cr_assert_eq(s.n, 7);
  for (i = 0; i < 7; ++i) {
    cr_assert_str_eq(s.path[i], want[i]);
  }
  cr_assert_eq(s.nwarn, 0);
  cr_assert_eq(s.meta[0].type, JSYNC_DIR);
  cr_assert_eq(s.meta[2].type, JSYNC_DIR);
  cr_assert_eq(s.meta[2].mode, 0750);
  cr_assert_eq(s.meta[2].size, 0);
  cr_assert_eq(s.meta[5].type, JSYNC_FILE);
  cr_assert_eq(s.meta[5].mode, 0640);
  cr_assert_eq(s.meta[5].size, 5);
  cr_assert_eq(s.meta[5].mtime_sec, 1600000000);
  cr_assert_eq(s.meta[5].mtime_nsec, 123456789);
  cr_assert_eq(s.meta[6].type, JSYNC_SYMLINK);
  cr_assert_str_eq(s.target[6], "a/z");
  cr_assert_eq(s.meta[6].size, 3);
  cr_assert_eq(s.meta[6].mtime_sec, 1600000001);
  cr_assert_eq(s.meta[6].mtime_nsec, 987654321);
}

Test(jsync_fs, walk_below_a_subpath_and_of_single_objects) {
  static seen s;
  walk_fixture();
  cr_assert_eq(jsync_mkdirs(F.rootfd, "x/y/q", 0755), 0);
  put(F.rootfd, "x/y/f", "f");
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "x/y", NULL, record, record_warn, &s), 0);
  cr_assert_eq(s.n, 3);
  cr_assert_str_eq(s.path[0], "x/y");
  cr_assert_str_eq(s.path[1], "x/y/f");
  cr_assert_str_eq(s.path[2], "x/y/q");
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "c", NULL, record, record_warn, &s), 0);
  cr_assert_eq(s.n, 1);
  cr_assert_eq(s.meta[0].type, JSYNC_SYMLINK, "not followed");
  cr_assert_str_eq(s.target[0], "a/z");
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "b", NULL, record, record_warn, &s), 0);
  cr_assert_eq(s.n, 1);
  cr_assert_eq(s.meta[0].type, JSYNC_FILE);
  cr_assert_eq(jsync_walk(F.rootfd, "nope", NULL, record, record_warn, &s),
               -ENOENT);
  cr_assert_eq(jsync_walk(F.rootfd, "../root", NULL, record, record_warn, &s),
               -EINVAL);
}

Test(jsync_fs, walk_skips_excluded_subtrees) {
  static seen s;
  jsync_excludes *ex = jsync_excludes_new();
  size_t i;
  static const char *want[] = {
      "", "a", "a/y", "build", "keep", "keep/build.c", "src", "src/main.c"};
  cr_assert_eq(jsync_mkdirs(F.rootfd, "a/y", 0755), 0);
  put(F.rootfd, "a/z.o", "");
  cr_assert_eq(jsync_mkdirs(F.rootfd, "a/skip/deep", 0755), 0);
  put(F.rootfd, "a/skip/deep/f", "");
  cr_assert_eq(jsync_mkdirs(F.rootfd, "src/build/x", 0755), 0);
  put(F.rootfd, "src/main.c", "");
  put(F.rootfd, "src/main.o", "");
  put(F.rootfd, "build", "a file named build stays");
  cr_assert_eq(jsync_mkdirs(F.rootfd, "keep", 0755), 0);
  put(F.rootfd, "keep/build.c", "");
  cr_assert_eq(jsync_excludes_add(ex, "*.o"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "a/skip"), 0);
  cr_assert_eq(jsync_excludes_add(ex, "build/"), 0);
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "", ex, record, record_warn, &s), 0);
  for (i = 0; i < (size_t)s.n; ++i) {
    cr_assert_lt(i, sizeof(want) / sizeof(want[0]), "extra %s", s.path[i]);
    cr_assert_str_eq(s.path[i], want[i]);
  }
  cr_assert_eq((size_t)s.n, sizeof(want) / sizeof(want[0]));
  /* The walk's own root is never excluded. */
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "a/skip", ex, record, record_warn, &s), 0);
  cr_assert_eq(s.n, 3);
  cr_assert_str_eq(s.path[2], "a/skip/deep/f");
  jsync_excludes_free(ex);
}

Test(jsync_fs, walk_warns_about_fifos_and_stops_on_request) {
  static seen s;
  cr_assert_eq(mkfifoat(F.rootfd, "fifo", 0644), 0);
  put(F.rootfd, "g", "");
  put(F.rootfd, "h", "");
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "", NULL, record, record_warn, &s), 0);
  cr_assert_eq(s.n, 3);
  cr_assert_eq(s.nwarn, 1);
  cr_assert_str_eq(s.warned[0], "fifo");
  cr_assert_str_eq(s.why[0], "not a regular file, directory or symlink");
  /* Without a warn callback it is skipped silently. */
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "", NULL, record, NULL, &s), 0);
  cr_assert_eq(s.n, 3);
  memset(&s, 0, sizeof(s));
  s.stop_after = 2;
  cr_assert_eq(jsync_walk(F.rootfd, "", NULL, record, record_warn, &s), 42);
  cr_assert_eq(s.n, 2);
}

Test(jsync_fs, walk_warns_about_unreadable_directories) {
  static seen s;
  cr_assert_eq(mkdirat(F.rootfd, "locked", 0755), 0);
  put(F.rootfd, "locked/f", "");
  put(F.rootfd, "z", "");
  cr_assert_eq(fchmodat(F.rootfd, "locked", 0, 0), 0);
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "", NULL, record, record_warn, &s), 0);
  cr_assert_eq(fchmodat(F.rootfd, "locked", 0755, 0), 0);
  if (geteuid() == 0) {
    cr_assert_eq(s.n, 4, "root reads it anyway"); /* "", locked, f, z */
    return;
  }
  cr_assert_eq(s.n, 2);
  cr_assert_eq(s.nwarn, 1);
  cr_assert_str_eq(s.warned[0], "locked");
}

Test(jsync_fs, walk_depth_is_capped) {
  char path[JSYNC_PATH_MAX];
  size_t len = 0;
  int i;
  static seen s;
  for (i = 0; i < JSYNC_MAX_DEPTH + 2; ++i) {
    len +=
        (size_t)snprintf(path + len, sizeof(path) - len, "%sd", i ? "/" : "");
  }
  cr_assert_eq(jsync_mkdirs(F.rootfd, path, 0755), 0);
  memset(&s, 0, sizeof(s));
  cr_assert_eq(jsync_walk(F.rootfd, "", NULL, record_count_only, NULL, &s),
               -ELOOP);
  cr_assert_eq(jsync_remove(F.rootfd, "d"), -ELOOP);
}

/* ---- temporary files ----------------------------------------------------- */

static jsync_meta file_meta(uint64_t size, uint32_t mode, int64_t sec,
                            uint32_t nsec) {
  jsync_meta m;
  memset(&m, 0, sizeof(m));
  m.type = JSYNC_FILE;
  m.size = size;
  m.mode = mode;
  m.uid = (uint32_t)getuid();
  m.gid = (uint32_t)getgid();
  m.mtime_sec = sec;
  m.mtime_nsec = nsec;
  return m;
}

#define MIB (1024u * 1024)

Test(jsync_fs, tmp_write_keeps_zero_blocks_as_holes) {
  jsync_tmp t;
  jsync_meta m = file_meta(MIB, 0644, 1700000000, 1);
  uint8_t *want = calloc(1, MIB), *data = pattern_data(4096, 1);
  struct stat st;
  size_t len;
  char *got;
  int fd;
  memcpy(want + 512 * 1024, data, 4096);
  memcpy(want + 5, "head", 4); /* an unaligned bit of data */
  cr_assert_eq(jsync_tmp_create(F.rootfd, "sparse", &t), 0);
  cr_assert_eq(jsync_tmp_write(&t, 0, want, MIB), 0);
  cr_assert_eq(t.size, MIB);
  cr_assert_eq(jsync_tmp_commit(&t, &m, 0), 0);
  cr_assert_eq(t.fd, -1);
  cr_assert_eq(t.dirfd, -1);
  fd = openat(F.rootfd, "sparse", O_RDONLY);
  cr_assert_geq(fd, 0);
  cr_assert_eq(fstat(fd, &st), 0);
  cr_assert_eq(st.st_size, MIB);
  cr_assert_lt(st.st_blocks * 512, 64 * 1024, "%lld bytes allocated",
               (long long)st.st_blocks * 512);
  got = slurp(fd, &len);
  cr_assert_eq(len, MIB);
  cr_assert_eq(memcmp(got, want, MIB), 0);
  free(got);
  free(want);
  free(data);
  close(fd);
}

Test(jsync_fs, tmp_write_zeros_over_earlier_data_stay_exact) {
  jsync_tmp t;
  jsync_meta m = file_meta(3 * 4096, 0600, 1700000000, 0);
  uint8_t *data = pattern_data(3 * 4096, 2), *zeros = calloc(1, 4096), *want;
  size_t len;
  char *got;
  int fd;
  cr_assert_eq(jsync_tmp_create(F.rootfd, "over", &t), 0);
  cr_assert_eq(jsync_tmp_write(&t, 0, data, 3 * 4096), 0);
  /* Out of order and overlapping: the middle block becomes zeros. */
  cr_assert_eq(jsync_tmp_write(&t, 4096, zeros, 4096), 0);
  cr_assert_eq(jsync_tmp_write(&t, 100, "x", 1), 0);
  cr_assert_eq(t.size, 3 * 4096);
  cr_assert_eq(jsync_tmp_commit(&t, &m, 1), 0);
  want = malloc(3 * 4096);
  memcpy(want, data, 3 * 4096);
  memset(want + 4096, 0, 4096);
  want[100] = 'x';
  fd = openat(F.rootfd, "over", O_RDONLY);
  got = slurp(fd, &len);
  cr_assert_eq(len, 3 * 4096);
  cr_assert_eq(memcmp(got, want, len), 0);
  free(got);
  free(want);
  free(data);
  free(zeros);
  close(fd);
}

/* A 2 MiB source: data at [0, 8 KiB) and [1 MiB, 1 MiB + 4 KiB), holes
 * elsewhere.  Returns its fd; *content gets the bytes. */
static int sparse_source(int dirfd, const char *name, uint8_t **content) {
  uint8_t *c = calloc(1, 2 * MIB), *d = pattern_data(8192, 3);
  int fd = openat(dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  cr_assert_geq(fd, 0, "%s", strerror(errno));
  memcpy(c, d, 8192);
  memcpy(c + MIB, d, 4096);
  cr_assert_eq(pwrite(fd, c, 8192, 0), 8192);
  cr_assert_eq(pwrite(fd, c + MIB, 4096, MIB), 4096);
  cr_assert_eq(ftruncate(fd, 2 * MIB), 0);
  free(d);
  *content = c;
  return fd;
}

static void check_copy(int src, const uint8_t *content, const char *dst) {
  jsync_tmp t;
  jsync_meta m = file_meta(3 * MIB, 0644, 1700000000, 0);
  struct stat st;
  char *got;
  size_t len;
  int fd;
  cr_assert_eq(jsync_tmp_create(F.rootfd, dst, &t), 0);
  /* The whole source at 0, then a range straddling data and hole at
   * 2 MiB + 100. */
  cr_assert_eq(jsync_tmp_copy(&t, 0, src, 0, 2 * MIB), 0);
  cr_assert_eq(jsync_tmp_copy(&t, 2 * MIB + 100, src, 4096, MIB), 0);
  cr_assert_eq(t.size, 3 * MIB + 100);
  cr_assert_eq(jsync_tmp_copy(&t, 0, src, MIB, MIB + 1), -ENODATA);
  m.size = t.size;
  cr_assert_eq(jsync_tmp_commit(&t, &m, 0), 0);
  fd = openat(F.rootfd, dst, O_RDONLY);
  cr_assert_geq(fd, 0);
  got = slurp(fd, &len);
  cr_assert_eq(len, 3 * MIB + 100);
  cr_assert_eq(memcmp(got, content, 2 * MIB), 0);
  cr_assert_eq(memcmp(got + 2 * MIB + 100, content + 4096, MIB), 0);
  for (size_t i = 2 * MIB; i < 2 * MIB + 100; ++i) {
    cr_assert_eq(got[i], 0);
  }
  cr_assert_eq(fstat(fd, &st), 0);
  cr_assert_lt(st.st_blocks * 512, 256 * 1024, "holes kept: %lld allocated",
               (long long)st.st_blocks * 512);
  free(got);
  close(fd);
}

Test(jsync_fs, tmp_copy_copies_data_segments_keeping_holes) {
  uint8_t *content;
  int src = sparse_source(F.rootfd, "src", &content);
  check_copy(src, content, "dst");
  free(content);
  close(src);
}

Test(jsync_fs, tmp_copy_falls_back_across_filesystems) {
  char dir[] = "/dev/shm/jsync_fs.XXXXXX";
  uint8_t *content;
  int dfd, src;
  if (!mkdtemp(dir)) {
    cr_skip_test("no /dev/shm");
  }
  dfd = open(dir, O_RDONLY | O_DIRECTORY);
  src = sparse_source(dfd, "src", &content);
  check_copy(src, content, "dst");
  free(content);
  close(src);
  unlinkat(dfd, "src", 0);
  close(dfd);
  rmdir(dir);
}

Test(jsync_fs, commit_replaces_atomically_with_metadata) {
  jsync_tmp t;
  jsync_meta m = file_meta(11, 0604, 1650000000, 123456789);
  struct stat before, after, opened;
  int old;
  cr_assert_eq(mkdirat(F.rootfd, "d", 0755), 0);
  put(F.rootfd, "d/f", "old content that is longer");
  old = openat(F.rootfd, "d/f", O_RDONLY);
  cr_assert_eq(fstat(old, &before), 0);
  cr_assert_eq(jsync_tmp_create(F.rootfd, "d/f", &t), 0);
  cr_assert_str_eq(t.leaf, "f");
  cr_assert_eq(strncmp(t.name, ".f.jsync-", 9), 0);
  cr_assert_eq(strlen(t.name), 17);
  cr_assert_eq(count_prefixed("d", ".f.jsync-"), 1);
  cr_assert_eq(jsync_tmp_write(&t, 0, "new content and more", 20), 0);
  cr_assert_eq(jsync_tmp_commit(&t, &m, 1), 0);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "d/f", &after), 0);
  cr_assert_neq(after.st_ino, before.st_ino, "a new inode");
  cr_assert_eq(after.st_mode & 07777, 0604);
  cr_assert_eq(after.st_size, 11, "truncated to m.size");
  cr_assert_eq(after.st_mtim.tv_sec, 1650000000);
  cr_assert_eq(after.st_mtim.tv_nsec, 123456789);
  assert_content(F.rootfd, "d/f", "new content");
  cr_assert_eq(count_prefixed("d", ".f.jsync-"), 0, "no temporary left");
  /* A reader of the old version still sees it whole. */
  cr_assert_eq(fstat(old, &opened), 0);
  cr_assert_eq(opened.st_ino, before.st_ino);
  close(old);
  /* Committing twice, or a failed commit, is refused cleanly. */
  cr_assert_eq(jsync_tmp_commit(&t, &m, 0), -EBADF);
  cr_assert_eq(jsync_tmp_create(F.rootfd, "d/f", &t), 0);
  m.mtime_nsec = 1000000000u;
  cr_assert_eq(jsync_tmp_commit(&t, &m, 0), -EINVAL);
  cr_assert_eq(count_prefixed("d", ".f.jsync-"), 0);
  cr_assert_eq(t.fd, -1);
  /* Over a directory: -EISDIR, temporary removed. */
  cr_assert_eq(mkdirat(F.rootfd, "d/sub", 0755), 0);
  cr_assert_eq(jsync_tmp_create(F.rootfd, "d/sub", &t), 0);
  m.mtime_nsec = 0;
  cr_assert_eq(jsync_tmp_commit(&t, &m, 0), -EISDIR);
  cr_assert_eq(count_prefixed("d", ".sub.jsync-"), 0);
}

Test(jsync_fs, tmp_create_is_confined_and_handles_long_names) {
  jsync_tmp t;
  jsync_meta m = file_meta(1, 0644, 1, 0);
  char leaf[256];
  escape_fixture();
  cr_assert_eq(jsync_tmp_create(F.rootfd, "up/x", &t), -EXDEV);
  cr_assert_eq(t.fd, -1);
  cr_assert_eq(t.dirfd, -1);
  jsync_tmp_abort(&t);
  cr_assert_eq(jsync_tmp_create(F.rootfd, "../x", &t), -EINVAL);
  cr_assert_eq(jsync_tmp_create(F.rootfd, "nodir/x", &t), -ENOENT);
  memset(leaf, 'L', 255);
  leaf[255] = '\0';
  cr_assert_eq(jsync_tmp_create(F.rootfd, leaf, &t), 0);
  cr_assert_eq(strlen(t.name), 255);
  cr_assert_eq(jsync_tmp_write(&t, 0, "y", 1), 0);
  cr_assert_eq(jsync_tmp_commit(&t, &m, 0), 0);
  assert_content(F.rootfd, leaf, "y");
}

Test(jsync_fs, abort_leaves_nothing) {
  jsync_tmp t;
  memset(&t, 0, sizeof(t));
  jsync_tmp_abort(&t); /* zeroed: nothing, and fd 0 stays open */
  cr_assert_neq(fcntl(0, F_GETFD), -1);
  cr_assert_eq(jsync_tmp_create(F.rootfd, "f", &t), 0);
  cr_assert_eq(jsync_tmp_write(&t, 0, "data", 4), 0);
  cr_assert_eq(count_prefixed("", ".f.jsync-"), 1);
  jsync_tmp_abort(&t);
  jsync_tmp_abort(&t);
  cr_assert_eq(count_prefixed("", ".f"), 0);
  cr_assert_eq(count_prefixed("", "f"), 0);
  cr_assert_eq(t.fd, -1);
  cr_assert_eq(t.dirfd, -1);
}

/* A temporary file as an interrupted run leaves it: fds closed, name
 * left, lock gone. */
static void leave_stale(const char *rel, const char *content, char *name,
                        size_t cap) {
  jsync_tmp t;
  cr_assert_eq(jsync_tmp_create(F.rootfd, rel, &t), 0);
  cr_assert_eq(jsync_tmp_write(&t, 0, content, strlen(content)), 0);
  snprintf(name, cap, "%s", t.name);
  close(t.fd);
  close(t.dirfd);
}

Test(jsync_fs, stale_open_finds_leftovers_not_live_files) {
  jsync_tmp live;
  char stale[300], path[400];
  int fds[8], other, other2, n;
  struct stat st;
  char *got;
  cr_assert_eq(mkdirat(F.rootfd, "d", 0755), 0);
  leave_stale("d/f", "already arrived", stale, sizeof(stale));
  cr_assert_eq(jsync_tmp_create(F.rootfd, "d/f", &live), 0);
  /* Locked through a separate open file description of this process. */
  put(F.rootfd, "d/.f.jsync-0badc0de", "held by another run");
  other = openat(F.rootfd, "d/.f.jsync-0badc0de", O_RDONLY);
  cr_assert_eq(flock(other, LOCK_EX | LOCK_NB), 0);
  /* Not ours to take. */
  put(F.rootfd, "d/.f.jsync-nothex!", "x");
  put(F.rootfd, "d/.g.jsync-00000000", "x");
  cr_assert_eq(symlinkat("/etc/passwd", F.rootfd, "d/.f.jsync-11111111"), 0);
  cr_assert_eq(mkfifoat(F.rootfd, "d/.f.jsync-22222222", 0600), 0);

  n = jsync_stale_open(F.rootfd, "d/f", fds, 8);
  cr_assert_eq(n, 1);
  got = slurp(fds[0], NULL);
  cr_assert_str_eq(got, "already arrived");
  free(got);
  snprintf(path, sizeof(path), "d/%s", stale);
  other2 = open_rel_rdonly(path);
  cr_assert_neq(flock(other2, LOCK_EX | LOCK_NB), 0,
                "the returned fd holds the lock");
  close(other2);
  jsync_stale_remove(F.rootfd, "d/f", fds, n);
  cr_assert_eq(fds[0], -1);
  snprintf(path, sizeof(path), "d/%s", stale);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, path, &st), -ENOENT);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "d/.f.jsync-0badc0de", &st), 0);
  snprintf(path, sizeof(path), "d/%s", live.name);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, path, &st), 0, "live one stays");
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "d/.g.jsync-00000000", &st), 0);
  jsync_tmp_abort(&live);
  close(other);
  cr_assert_eq(jsync_stale_open(F.rootfd, "nodir/f", fds, 8), 0);
  cr_assert_eq(jsync_stale_open(F.rootfd, "d/f", fds, 0), 0);
}

Test(jsync_fs, stale_remove_spares_a_new_file_under_the_name) {
  char stale[300], path[400];
  int fds[4], n;
  struct stat st;
  leave_stale("f", "one", stale, sizeof(stale));
  n = jsync_stale_open(F.rootfd, "f", fds, 4);
  cr_assert_eq(n, 1);
  cr_assert_eq(unlinkat(F.rootfd, stale, 0), 0);
  put(F.rootfd, stale, "someone else's");
  jsync_stale_remove(F.rootfd, "f", fds, n);
  snprintf(path, sizeof(path), "%s", stale);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, path, &st), 0);
  assert_content(F.rootfd, stale, "someone else's");
}

Test(jsync_fs, stale_open_respects_max) {
  char name[300];
  int fds[2], n, i;
  for (i = 0; i < 3; ++i) {
    leave_stale("f", "x", name, sizeof(name));
  }
  n = jsync_stale_open(F.rootfd, "f", fds, 2);
  cr_assert_eq(n, 2);
  jsync_stale_remove(F.rootfd, "f", fds, n);
  cr_assert_eq(count_prefixed("", ".f.jsync-"), 1);
}

/* ---- symlinks and metadata ----------------------------------------------- */

static void assert_link(const char *rel, const char *target) {
  char buf[256];
  ssize_t n = readlinkat(F.rootfd, rel, buf, sizeof(buf) - 1);
  cr_assert_geq(n, 0, "%s: %s", rel, strerror(errno));
  buf[n] = '\0';
  cr_assert_str_eq(buf, target);
}

Test(jsync_fs, symlink_put_replaces_links_and_files) {
  jsync_meta m;
  struct stat st;
  memset(&m, 0, sizeof(m));
  m.type = JSYNC_SYMLINK;
  m.uid = (uint32_t)getuid();
  m.gid = (uint32_t)getgid();
  m.mtime_sec = 1500000000;
  m.mtime_nsec = 5;
  cr_assert_eq(jsync_symlink_put(F.rootfd, "l", "first", &m), 0);
  assert_link("l", "first");
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "l", &st), 0);
  cr_assert_eq(st.st_mtim.tv_sec, 1500000000);
  cr_assert_eq(st.st_mtim.tv_nsec, 5);
  cr_assert_eq(jsync_symlink_put(F.rootfd, "l", "/somewhere/else", &m), 0);
  assert_link("l", "/somewhere/else");
  put(F.rootfd, "file", "x");
  cr_assert_eq(jsync_symlink_put(F.rootfd, "file", "../../x", NULL), 0);
  assert_link("file", "../../x");
  cr_assert_eq(mkdirat(F.rootfd, "dir", 0755), 0);
  cr_assert_eq(jsync_symlink_put(F.rootfd, "dir", "t", &m), -EISDIR);
  cr_assert_eq(jsync_symlink_put(F.rootfd, "x", "", &m), -EINVAL);
  cr_assert_eq(jsync_symlink_put(F.rootfd, "/x", "t", &m), -EINVAL);
  cr_assert_eq(count_prefixed("", ".l.jsync-"), 0, "no temporary left");
  cr_assert_eq(count_prefixed("", ".file.jsync-"), 0);
  cr_assert_eq(count_prefixed("", ".dir.jsync-"), 0);
  escape_fixture();
  cr_assert_eq(jsync_symlink_put(F.rootfd, "up/l", "t", &m), -EXDEV);
}

Test(jsync_fs, meta_apply_sets_mode_and_times_without_following) {
  jsync_meta m = file_meta(0, 0751, 1400000000, 42);
  struct stat st, target_before, target_after;
  put(F.rootfd, "f", "x");
  cr_assert_eq(jsync_meta_apply(F.rootfd, "f", &m), 0);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "f", &st), 0);
  cr_assert_eq(st.st_mode & 07777, 0751);
  cr_assert_eq(st.st_mtim.tv_sec, 1400000000);
  cr_assert_eq(st.st_mtim.tv_nsec, 42);
  /* A symlink: its own time changes, not its target's mode or time. */
  cr_assert_eq(symlinkat("f", F.rootfd, "l"), 0);
  cr_assert_eq(fstatat(F.rootfd, "f", &target_before, 0), 0);
  m.type = JSYNC_SYMLINK;
  m.mtime_sec = 1300000000;
  cr_assert_eq(jsync_meta_apply(F.rootfd, "l", &m), 0);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "l", &st), 0);
  cr_assert_eq(st.st_mtim.tv_sec, 1300000000);
  cr_assert_eq(fstatat(F.rootfd, "f", &target_after, 0), 0);
  cr_assert_eq(target_after.st_mtim.tv_sec, target_before.st_mtim.tv_sec);
  /* A symlink where a file was expected: no chmod through it. */
  m.type = JSYNC_FILE;
  m.mode = 0600;
  cr_assert_eq(jsync_meta_apply(F.rootfd, "l", &m), -EOPNOTSUPP);
  cr_assert_eq(fstatat(F.rootfd, "f", &target_after, 0), 0);
  cr_assert_eq(target_after.st_mode & 07777, 0751);
  /* Directories, and the root itself. */
  cr_assert_eq(mkdirat(F.rootfd, "d", 0700), 0);
  m.type = JSYNC_DIR;
  m.mode = 0755;
  cr_assert_eq(jsync_meta_apply(F.rootfd, "d", &m), 0);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "d", &st), 0);
  cr_assert_eq(st.st_mode & 07777, 0755);
  m.mode = 0711;
  cr_assert_eq(jsync_meta_apply(F.rootfd, "", &m), 0);
  cr_assert_eq(jsync_lstat_beneath(F.rootfd, "", &st), 0);
  cr_assert_eq(st.st_mode & 07777, 0711);
  cr_assert_eq(st.st_mtim.tv_sec, 1300000000);
  cr_assert_eq(jsync_meta_apply(F.rootfd, "nope", &m), -ENOENT);
  m.mtime_nsec = 1000000000u;
  cr_assert_eq(jsync_meta_apply(F.rootfd, "d", &m), -EINVAL);
}
