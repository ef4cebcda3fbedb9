/*
 * jsync_fs.h — the filesystem side of jsync: everything that reads or
 * writes beneath a transfer root, confined to it.
 *
 * A relative path that came from the network can never reach outside the
 * root: resolution goes through openat2(RESOLVE_BENEATH) (or, on kernels
 * without it, a component-by-component walk with O_NOFOLLOW), and every
 * change is made with *at() calls on a directory fd and a single leaf
 * name, so a symlink swapped in by a concurrent process is not followed
 * out of the root either.
 *
 * Threading: no function keeps state between calls except the openat2
 * availability flag (atomic), so any thread may call any function; two
 * threads must not share one jsync_tmp or jsync_excludes being changed.
 *
 * Ownership: every fd returned is O_CLOEXEC and owned by the caller.
 * `rootfd` is always borrowed (an O_PATH directory fd is enough).
 *
 * Errors: negative errno values (-ENOENT, -EXDEV, ...).  Paths that must
 * name something to change (mkdirs, remove, tmp, symlink, meta_apply,
 * open_parent) are checked with jsync_path_valid() first: -EINVAL.
 */
#ifndef JSYNC_FS_H
#define JSYNC_FS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Longest relative path, NUL included. */
#define JSYNC_PATH_MAX 4096
/* Directories deeper than this below a walk or remove give -ELOOP. */
#define JSYNC_MAX_DEPTH 256

typedef enum jsync_type {
  JSYNC_FILE = 1,
  JSYNC_DIR = 2,
  JSYNC_SYMLINK = 3
} jsync_type;

typedef struct jsync_meta {
  jsync_type type;
  uint32_t mode; /* st_mode & 07777 */
  uint32_t uid, gid;
  uint64_t size; /* regular files: bytes; symlinks: target length; dirs: 0 */
  int64_t mtime_sec;
  uint32_t mtime_nsec; /* < 1000000000 */
} jsync_meta;

/* ---- paths and metadata -------------------------------------------------- */

/* 1 if rel is a valid relative path from the wire: non-empty, shorter than
 * JSYNC_PATH_MAX, no leading or trailing '/', and every component
 * non-empty, not "." or "..", and at most NAME_MAX (255) bytes.  Any
 * other byte is allowed.  0 otherwise. */
int jsync_path_valid(const char *rel);

/* Fills m from st.  0, or -EINVAL for types other than file/dir/symlink
 * (m is then left unspecified). */
int jsync_meta_from_stat(const struct stat *st, jsync_meta *m);

/* ---- confined opening -------------------------------------------------- */

/* Opens rel beneath rootfd with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS); O_CLOEXEC is always added.  rel "" opens the
 * root itself.  Symlinks and ".." are followed as long as they stay
 * beneath the root; `flags` & O_NOFOLLOW applies to the last component
 * as usual (-ELOOP on a symlink).  Returns an fd or:
 *   -EXDEV        rel, or a symlink on the way, leads out of the root
 *   -ENAMETOOLONG rel is JSYNC_PATH_MAX bytes or longer
 *   -EAGAIN       a rename kept racing with ".." resolution
 *   other -errno  from the open (-ENOENT, -ENOTDIR, -ELOOP, -EACCES...)
 * Without openat2 (ENOSYS) it walks the components itself, more strictly:
 * a ".." component or an absolute rel gives -EXDEV, and no symlink is
 * followed at all (-ELOOP), not even the last component's. */
int jsync_open_beneath(int rootfd, const char *rel, int flags, mode_t mode);

/* Opens (O_RDONLY | O_DIRECTORY, so read permission is needed: the fd
 * is also read and fsync()ed) the directory that holds rel beneath
 * rootfd and points *leaf at rel's last component (inside rel).  Returns
 * the dirfd, or -EINVAL (!jsync_path_valid(rel)) or an error of
 * jsync_open_beneath(). */
int jsync_open_parent(int rootfd, const char *rel, const char **leaf);

/* lstat() of rel beneath rootfd (rel "" = the root): a final symlink is
 * described, not followed.  0 or an error of jsync_open_beneath(). */
int jsync_lstat_beneath(int rootfd, const char *rel, struct stat *st);

/* Makes rel and any missing parents directories (mode & ~umask, as
 * mkdir(2)); existing directories are left alone.  A symlink on the way
 * is followed only while it stays beneath the root.  0, or:
 *   -EINVAL  rel is not valid;  -ENOTDIR  a component is not a directory;
 *   -EXDEV   a symlink leads out of the root;  other -errno from mkdirat. */
int jsync_mkdirs(int rootfd, const char *rel, mode_t mode);

/* Removes rel: a file or symlink is unlinked, a directory is removed with
 * everything in it.  Symlinks are never followed; the directories below
 * are opened with O_NOFOLLOW one by one from their parent's fd.  0, or:
 *   -EINVAL  rel is not valid (the root itself cannot be removed)
 *   -ENOENT  rel does not exist
 *   -ELOOP   directories nest deeper than JSYNC_MAX_DEPTH
 *   other -errno (-ENOTEMPTY if entries appear meanwhile, -EACCES...);
 * on an error part of the tree may be gone. */
int jsync_remove(int rootfd, const char *rel);

/* ---- excludes ------------------------------------------------------------ */

/* Exclude patterns, rsync-like:
 *  - a pattern without '/' matches the last component, at any depth;
 *  - a pattern containing '/' (other than a trailing one) matches the
 *    whole relative path, anchored; a leading '/' anchors too and is
 *    stripped;
 *  - a trailing '/' makes the pattern match directories only;
 *  - wildcards as fnmatch(3) with FNM_PATHNAME ('*', '?' and [...],
 *    including [!...] and [:class:], never match '/'; '\' escapes);
 *    "**" matches anything, '/' included; a component "**" followed by
 *    '/' matches zero or more whole directories, so "a/" "**" "/b"
 *    (written as one pattern) matches "a/b" and "a/x/y/b".
 * Not thread-safe while patterns are being added; matching is read-only. */
typedef struct jsync_excludes jsync_excludes;

/* NULL when out of memory. */
jsync_excludes *jsync_excludes_new(void);
/* Longest pattern accepted, in bytes. */
#define JSYNC_PATTERN_MAX 1024
/* Adds a copy of pattern to ex (not NULL).  0; -EINVAL if empty (or
 * nothing but '/'), -ENAMETOOLONG above JSYNC_PATTERN_MAX bytes,
 * -ENOMEM. */
int jsync_excludes_add(jsync_excludes *ex, const char *pattern);
/* 1 if rel (a relative path, no leading '/') is excluded, else 0.  ex may
 * be NULL: nothing is excluded. */
int jsync_excluded(const jsync_excludes *ex, const char *rel, int is_dir);
/* NULL is fine. */
void jsync_excludes_free(jsync_excludes *ex);

/* ---- walking ------------------------------------------------------------- */

/* link_target: the symlink's target (m->size bytes) for symlinks, else
 * NULL.  path and link_target are valid only during the call.  Nonzero
 * stops the walk. */
typedef int (*jsync_walk_fn)(const char *path, const jsync_meta *m,
                             const char *link_target, void *user);
typedef void (*jsync_warn_fn)(const char *path, const char *why, void *user);

/* Walks the tree at rel beneath rootfd (rel "" or valid; "" = the root),
 * preorder, each directory's entries sorted by strcmp(), never following
 * symlinks, opening each directory from its parent's fd.  fn gets rel
 * itself first, then every entry below; paths are relative to rootfd:
 * for rel "" the root is "" and the rest "a", "a/b"; for rel "x/y" they
 * are "x/y", "x/y/a"....
 *
 * Excluded entries are skipped with their subtrees; jsync_excluded()
 * sees the path as reported, relative to rootfd, so with rel != "" the
 * caller writes anchored patterns with rel's prefix.  rel itself is never
 * excluded.
 *
 * Reported through warn (if not NULL) and skipped, the walk going on:
 * other file types ("not a regular file, directory or symlink"),
 * directories that cannot be opened or read, entries that vanish or
 * cannot be stat()ed, symlinks that cannot be read or whose target is
 * JSYNC_PATH_MAX or longer, and paths that would be that long.  A caller
 * that deletes on the far side should not do so after a warning.
 *
 * Returns 0; fn's nonzero value; -EINVAL (bad rel); -ELOOP (directories
 * deeper than JSYNC_MAX_DEPTH below rel); -ENOMEM; or the -errno of a
 * failure on rel itself.  rel of another type is warned about: 0. */
int jsync_walk(int rootfd, const char *rel, const jsync_excludes *ex,
               jsync_walk_fn fn, jsync_warn_fn warn, void *user);

/* ---- writing files ------------------------------------------------------- */

/* A new version of a file, written to a temporary file beside it and put
 * in place atomically.  Lifecycle: jsync_tmp_create(), any writes and
 * copies, then jsync_tmp_commit() or jsync_tmp_abort().  On failure
 * jsync_tmp_create() leaves fd = dirfd = -1 and name ""; after commit or
 * abort the same holds.  jsync_tmp_abort() does nothing when name is "",
 * so it is also safe on a memset()-zeroed struct. */
typedef struct jsync_tmp {
  int dirfd;      /* the destination's directory */
  int fd;         /* the temporary file, O_RDWR, flock(LOCK_EX)ed */
  char leaf[256]; /* destination name in dirfd */
  char name[300]; /* temporary name: ".<leaf>.jsync-XXXXXXXX" (leaf cut to
                     239 bytes so the name fits NAME_MAX) */
  uint64_t size;  /* highest offset written (an upper bound of what the
                     file holds; regions at or past it read as zero) */
} jsync_tmp;

/* Opens rel's parent beneath rootfd and creates the temporary file there
 * (O_CREAT | O_EXCL, 0600, 8 random hex digits from getrandom()), locked
 * with flock(LOCK_EX) so other runs can tell a live temporary file from a
 * stale one.  0, or -EINVAL (bad rel), an error of jsync_open_parent(),
 * or -errno from creating, locking or getrandom(). */
/* 1 if a directory entry's name is one of jsync's temporary files
 * (".<leaf>.jsync-XXXXXXXX"), live or left by an interrupted run. */
int jsync_is_tmp_name(const char *leaf);

int jsync_tmp_create(int rootfd, const char *rel, jsync_tmp *t);

/* Writes len bytes at off.  4 KiB-aligned all-zero blocks are not
 * written: past t->size they are left as holes, below it they are
 * punched (or written as zeros where punching is unsupported), so sparse
 * files stay sparse and overwrites stay exact.  0, -EFBIG (off + len
 * beyond INT64_MAX) or -errno. */
int jsync_tmp_write(jsync_tmp *t, uint64_t off, const void *buf, size_t len);

/* Copies len bytes of src_fd (a regular file) from src_off to off: only
 * the data segments of the source range (SEEK_DATA/SEEK_HOLE; holes
 * become holes), with copy_file_range(), or pread() + jsync_tmp_write()
 * where that fails with EXDEV, EINVAL, ENOSYS or EOPNOTSUPP.  Moves
 * src_fd's file offset.  0, or:
 *   -ENODATA  the source is (or becomes) shorter than src_off + len
 *   -EINVAL   src_fd is not a regular file;  -EFBIG  offsets overflow
 *   other -errno. */
int jsync_tmp_copy(jsync_tmp *t, uint64_t off, int src_fd, uint64_t src_off,
                   uint64_t len);

/* Finishes: ftruncate() to m->size, fchown() to m->uid/gid (only when
 * geteuid() == 0; before the mode, which it could clear), fchmod() to
 * m->mode, mtime (atime is left), fsync() if do_fsync, renameat() over
 * leaf, and fsync() of the directory if do_fsync; closes the fds.  On
 * failure before the rename the temporary file is removed.  0, or -EBADF
 * (nothing created), -EINVAL (m->mtime_nsec or m->size out of range),
 * -errno (-EISDIR: leaf is a directory).  A failing directory fsync()
 * is reported although the file is already in place. */
int jsync_tmp_commit(jsync_tmp *t, const jsync_meta *m, int do_fsync);

/* Removes the temporary file (only if its name still refers to it) and
 * closes the fds.  Idempotent; see jsync_tmp above. */
void jsync_tmp_abort(jsync_tmp *t);

/* Temporary files that interrupted runs left for rel: names
 * ".<leaf>.jsync-XXXXXXXX" in rel's directory that are regular files
 * with one link, owned by geteuid(), and not flock()ed by anyone (so not
 * being written).  Opens up to max of them read-only, keeps each locked
 * through the returned fd, writes the fds to fds and returns how many
 * (0 when rel's directory does not exist), or an error of
 * jsync_open_parent().  They are extra bases for the new version, so that
 * a re-run reuses what had already arrived. */
int jsync_stale_open(int rootfd, const char *rel, int *fds, int max);

/* After success: unlinks the names in rel's directory that still refer
 * to the files open in fds (compared by st_dev/st_ino, so a new file that
 * took a name is left alone), then closes the fds and sets them to -1.
 * Errors are ignored. */
void jsync_stale_remove(int rootfd, const char *rel, int *fds, int n);

/* ---- symlinks and metadata ----------------------------------------------- */

/* Puts a symlink to target at rel atomically: symlinkat() to a temporary
 * name, owner (when geteuid() == 0) and mtime on the link itself, then
 * renameat() over rel.  m may be NULL: no owner or time.  Replacing a
 * directory is the caller's job: renameat()'s -EISDIR comes back.  0, or
 * -EINVAL (bad rel, empty target or one of JSYNC_PATH_MAX bytes or more,
 * bad mtime_nsec) or -errno. */
int jsync_symlink_put(int rootfd, const char *rel, const char *target,
                      const jsync_meta *m);

/* Applies m's owner (when geteuid() == 0), mode (unless m->type is
 * JSYNC_SYMLINK) and mtime to rel (rel "" = the root), never following a
 * final symlink (fchmodat(AT_SYMLINK_NOFOLLOW) gives -EOPNOTSUPP if rel
 * turned out to be a symlink).  0, or -EINVAL or -errno. */
int jsync_meta_apply(int rootfd, const char *rel, const jsync_meta *m);

/* For tests: 0 makes jsync_open_beneath() use the fallback walk as if
 * the kernel lacked openat2, 1 (the default) tries openat2 again. */
void jsync_fs_use_openat2(int enabled);

#endif
