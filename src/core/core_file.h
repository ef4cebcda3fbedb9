/*
 * core_file.h — whole-file reads with a size cap, and no-clobber atomic
 * creation of new files.
 */
#ifndef CKT_CORE_FILE_H
#define CKT_CORE_FILE_H

#include <stddef.h>
#include <sys/types.h>

#include "core_buf.h"

/* Reads the whole file into out (initialised by the caller; its limit is
 * raised to `limit`).  CKT_OK, CKT_ERR_NOT_FOUND, CKT_ERR_IO (errno set),
 * CKT_ERR_TOO_LARGE, CKT_ERR_NOMEM. */
int ckt_file_read(const char *path, size_t limit, ckt_buf *out);

/* Creates `path` holding exactly `data`, with permission bits `mode`.
 * The data goes to a temporary file in the same directory, is fsynced, and
 * is then linked into place, which fails if `path` exists: the file either
 * appears complete or not at all, and an existing file is never touched.
 * CKT_OK, CKT_ERR_EXISTS, CKT_ERR_NOT_FOUND (no such directory),
 * CKT_ERR_IO (errno set). */
int ckt_file_create(const char *path, const void *data, size_t len,
                    mode_t mode);

/* Creates a directory and its missing parents; new directories get `mode`.
 * CKT_OK (also when it exists), CKT_ERR_IO (errno set). */
int ckt_dir_create(const char *path, mode_t mode);

/* 1 when path exists (any type, links not followed), 0 otherwise. */
int ckt_path_exists(const char *path);

#endif
