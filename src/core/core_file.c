/* core_file.c — capped reads, no-clobber atomic creation. */
#include "core_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckt/error.h"

int ckt_file_read(const char *path, size_t limit, ckt_buf *out) {
  uint8_t chunk[4096];
  int fd, rv = CKT_OK;
  ssize_t n;

  out->limit = limit;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return errno == ENOENT ? CKT_ERR_NOT_FOUND : CKT_ERR_IO;
  }
  for (;;) {
    n = read(fd, chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      rv = CKT_ERR_IO;
      break;
    }
    if (n == 0) {
      break;
    }
    rv = ckt_buf_append(out, chunk, (size_t)n);
    if (rv != CKT_OK) {
      break;
    }
  }
  if (rv == CKT_ERR_IO) {
    int saved = errno;
    close(fd);
    errno = saved;
  } else {
    close(fd);
  }
  explicit_bzero(chunk, sizeof(chunk));
  return rv;
}

int ckt_path_exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

static int write_all(int fd, const uint8_t *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static void fsync_parent(const char *path) {
  char copy[PATH_MAX];
  int dfd;
  if (strlen(path) >= sizeof(copy)) {
    return;
  }
  strcpy(copy, path);
  dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
}

int ckt_file_create(const char *path, const void *data, size_t len,
                    mode_t mode) {
  char tmp[PATH_MAX];
  int fd, saved;

  if (!path || !*path || (!data && len)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (ckt_path_exists(path)) {
    return CKT_ERR_EXISTS;
  }
  if (snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", path) >= (int)sizeof(tmp)) {
    errno = ENAMETOOLONG;
    return CKT_ERR_IO;
  }
  fd = mkstemp(tmp);
  if (fd < 0) {
    return errno == ENOENT ? CKT_ERR_NOT_FOUND : CKT_ERR_IO;
  }
  if (fchmod(fd, mode) != 0 || write_all(fd, data, len) != 0 ||
      fsync(fd) != 0) {
    goto fail_written;
  }
  if (close(fd) != 0) {
    fd = -1;
    goto fail_written;
  }
  fd = -1;
  /* link() never replaces an existing file: this is the no-clobber step. */
  if (link(tmp, path) != 0) {
    saved = errno;
    unlink(tmp);
    errno = saved;
    return saved == EEXIST ? CKT_ERR_EXISTS : CKT_ERR_IO;
  }
  unlink(tmp);
  fsync_parent(path);
  return CKT_OK;

fail_written:
  saved = errno;
  if (fd >= 0) {
    close(fd);
  }
  unlink(tmp);
  errno = saved;
  return CKT_ERR_IO;
}

int ckt_dir_create(const char *path, mode_t mode) {
  char copy[PATH_MAX];
  size_t i, len = strlen(path);

  if (len == 0) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (len >= sizeof(copy)) {
    errno = ENAMETOOLONG;
    return CKT_ERR_IO;
  }
  memcpy(copy, path, len + 1);
  for (i = 1; i <= len; ++i) {
    if (copy[i] != '/' && copy[i] != 0) {
      continue;
    }
    copy[i] = 0;
    if (mkdir(copy, mode) != 0 && errno != EEXIST) {
      return CKT_ERR_IO;
    }
    if (i < len) {
      copy[i] = '/';
    }
  }
  {
    struct stat st;
    if (stat(path, &st) != 0) {
      return CKT_ERR_IO;
    }
    if (!S_ISDIR(st.st_mode)) {
      errno = ENOTDIR;
      return CKT_ERR_IO;
    }
  }
  return CKT_OK;
}
