/* test_core.c — core: cursor, capped buffers, files, errors. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckt/error.h"
#include "core_buf.h"
#include "core_cursor.h"
#include "core_file.h"
#include "core_util.h"

static char tmpdir[] = "/tmp/ckt-test-core-XXXXXX";

static void setup(void) {
  cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void) {
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  cr_assert_eq(system(cmd), 0);
}

Test(core, cursor_reads_big_endian_and_stops_at_the_end) {
  const uint8_t data[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  ckt_cursor c;
  uint8_t u8;
  uint16_t u16;
  uint32_t u32;
  uint64_t u64;

  ckt_cursor_init(&c, data, sizeof(data));
  cr_assert_eq(ckt_cursor_u8(&c, &u8), 0);
  cr_assert_eq(u8, 1);
  cr_assert_eq(ckt_cursor_be16(&c, &u16), 0);
  cr_assert_eq(u16, 0x0203);
  cr_assert_eq(ckt_cursor_be32(&c, &u32), 0);
  cr_assert_eq(u32, 0x04050607u);
  cr_assert_eq(ckt_cursor_be64(&c, &u64), 0);
  cr_assert_eq(u64, 0x08090a0b0c0d0e0full);
  cr_assert_eq(c.left, 0);
  cr_assert_eq(ckt_cursor_u8(&c, &u8), -1);
}

Test(core, cursor_failure_is_sticky_and_consumes_nothing) {
  const uint8_t data[] = {0xaa, 0xbb, 0xcc};
  ckt_cursor c, sub;
  uint32_t u32;
  uint8_t u8;

  ckt_cursor_init(&c, data, sizeof(data));
  cr_assert_eq(ckt_cursor_be32(&c, &u32), -1);
  cr_assert(c.bad);
  cr_assert_eq(c.left, 3, "a short read must not advance");
  cr_assert_eq(ckt_cursor_u8(&c, &u8), -1, "a bad cursor stays bad");

  ckt_cursor_init(&c, data, sizeof(data));
  cr_assert_eq(ckt_cursor_sub(&c, &sub, 2), 0);
  cr_assert_eq(sub.left, 2);
  cr_assert_eq(c.left, 1);
  cr_assert_eq(ckt_cursor_sub(&c, &sub, 2), -1);
  cr_assert(sub.bad);
}

Test(core, cursor_on_null_is_empty) {
  ckt_cursor c;
  uint8_t u8;
  ckt_cursor_init(&c, NULL, 100);
  cr_assert_eq(c.left, 0);
  cr_assert_eq(ckt_cursor_u8(&c, &u8), -1);
}

Test(core, buf_enforces_its_limit_and_keeps_contents) {
  ckt_buf b;
  ckt_buf_init(&b, 8);
  cr_assert_eq(ckt_buf_append(&b, "12345", 5), CKT_OK);
  cr_assert_eq(ckt_buf_append(&b, "6789", 4), CKT_ERR_TOO_LARGE);
  cr_assert_eq(b.len, 5, "a refused append leaves the buffer as it was");
  cr_assert_str_eq((char *)b.data, "12345");
  cr_assert_eq(ckt_buf_printf(&b, "%d", 678), CKT_OK);
  cr_assert_str_eq((char *)b.data, "12345678");
  cr_assert_eq(ckt_buf_printf(&b, "x"), CKT_ERR_TOO_LARGE);
  ckt_buf_free(&b);
  cr_assert_null(b.data);
}

Test(core, buf_grows_past_its_first_block) {
  ckt_buf b;
  size_t i, len;
  uint8_t *d;
  ckt_buf_init(&b, 1 << 20);
  for (i = 0; i < 1000; ++i) {
    cr_assert_eq(ckt_buf_append(&b, "abcdefghij", 10), CKT_OK);
  }
  d = ckt_buf_release(&b, &len);
  cr_assert_eq(len, 10000);
  cr_assert_eq(memcmp(d + 9990, "abcdefghij", 10), 0);
  cr_assert_eq(d[len], 0, "released data is NUL-terminated");
  free(d);
}

Test(core, file_create_writes_mode_and_never_overwrites, .init = setup,
     .fini = teardown) {
  char path[512];
  ckt_buf b;
  struct stat st;

  snprintf(path, sizeof(path), "%s/secret", tmpdir);
  cr_assert_eq(ckt_file_create(path, "first", 5, 0600), CKT_OK);
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_mode & 0777, 0600);
  cr_assert_eq(ckt_file_create(path, "second", 6, 0600), CKT_ERR_EXISTS);

  ckt_buf_init(&b, 100);
  cr_assert_eq(ckt_file_read(path, 100, &b), CKT_OK);
  cr_assert_eq(b.len, 5);
  cr_assert_eq(memcmp(b.data, "first", 5), 0, "the old file is untouched");
  ckt_buf_free(&b);

  {
    /* No temporary file is left behind by either call. */
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "test $(ls -A '%s' | wc -l) -eq 1", tmpdir);
    cr_assert_eq(system(cmd), 0);
  }
}

Test(core, file_create_in_missing_directory_fails_cleanly, .init = setup,
     .fini = teardown) {
  char path[512];
  snprintf(path, sizeof(path), "%s/no/such/dir/file", tmpdir);
  cr_assert_eq(ckt_file_create(path, "x", 1, 0600), CKT_ERR_NOT_FOUND);
}

Test(core, file_read_respects_limit_and_reports_missing, .init = setup,
     .fini = teardown) {
  char path[512];
  ckt_buf b;
  snprintf(path, sizeof(path), "%s/big", tmpdir);
  cr_assert_eq(ckt_file_create(path, "0123456789", 10, 0644), CKT_OK);
  ckt_buf_init(&b, 0);
  cr_assert_eq(ckt_file_read(path, 9, &b), CKT_ERR_TOO_LARGE);
  ckt_buf_free(&b);
  ckt_buf_init(&b, 0);
  cr_assert_eq(ckt_file_read(path, 10, &b), CKT_OK);
  ckt_buf_free(&b);
  snprintf(path, sizeof(path), "%s/missing", tmpdir);
  ckt_buf_init(&b, 0);
  cr_assert_eq(ckt_file_read(path, 10, &b), CKT_ERR_NOT_FOUND);
  ckt_buf_free(&b);
}

Test(core, dir_create_makes_parents_with_mode, .init = setup,
     .fini = teardown) {
  char path[512];
  struct stat st;
  snprintf(path, sizeof(path), "%s/a/b/c", tmpdir);
  cr_assert_eq(ckt_dir_create(path, 0700), CKT_OK);
  cr_assert_eq(stat(path, &st), 0);
  cr_assert(S_ISDIR(st.st_mode));
  cr_assert_eq(st.st_mode & 0777, 0700);
  cr_assert_eq(ckt_dir_create(path, 0700), CKT_OK, "existing is fine");
  snprintf(path, sizeof(path), "%s/file", tmpdir);
  cr_assert_eq(ckt_file_create(path, "x", 1, 0600), CKT_OK);
  cr_assert_eq(ckt_dir_create(path, 0700), CKT_ERR_IO);
  cr_assert_eq(errno, ENOTDIR);
}

Test(core, hex_and_strerror) {
  const uint8_t in[] = {0x00, 0xab, 0xff};
  char out[16];
  ckt_hex_encode(out, in, 3, 0);
  cr_assert_str_eq(out, "00abff");
  ckt_hex_encode(out, in, 3, ':');
  cr_assert_str_eq(out, "00:ab:ff");
  {
    uint8_t back[3];
    cr_assert(ckt_hex_decode(back, "00AbfF", 3));
    cr_assert(memcmp(back, in, 3) == 0);
    cr_assert_not(ckt_hex_decode(back, "00abfg", 3));
    cr_assert_not(ckt_hex_decode(back, "0", 1));
  }
  cr_assert_str_eq(ckt_strerror(CKT_OK), "success");
  cr_assert_str_eq(ckt_strerror(12345), "unknown error");
  for (int e = CKT_ERR_CANCEL_SENT; e < 0; ++e) {
    cr_assert_str_neq(ckt_strerror(e), "unknown error", "code %d", e);
  }
}

Test(core, random_bytes_differ) {
  uint8_t a[32], b[32];
  cr_assert_eq(ckt_random_bytes(a, sizeof(a)), CKT_OK);
  cr_assert_eq(ckt_random_bytes(b, sizeof(b)), CKT_OK);
  cr_assert_neq(memcmp(a, b, sizeof(a)), 0);
}
