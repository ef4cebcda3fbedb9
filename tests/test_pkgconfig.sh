#!/bin/sh
# Installs a build into a scratch root and builds a program against it with
# nothing but `pkg-config libckt`, as a user of the library would.
# Usage: test_pkgconfig.sh BUILD_DIR
set -eu
build=$1
root=$(mktemp -d /tmp/ckt-test-pc-XXXXXX)
trap 'rm -rf "$root"' EXIT
meson install -C "$build" --destdir "$root" --no-rebuild >/dev/null
pcdir=$(dirname "$(find "$root" -name libckt.pc | head -n1)")
prefix=$(sed -n 's/^prefix=//p' "$pcdir/libckt.pc")
flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --define-variable=prefix="$root$prefix" \
  --cflags --libs libckt)
cat >"$root/user.c" <<'C'
#include <ckt/ckt.h>
#include <stdio.h>
#include <string.h>
int main(void) {
  ckt_ed25519_key k;
  char *pem;
  size_t len;
  if (ckt_key_generate(&k) != CKT_OK ||
      ckt_key_to_pem(&k, NULL, 0, &pem, &len) != CKT_OK ||
      strncmp(pem, "-----BEGIN PRIVATE KEY-----", 27) != 0) {
    return 1;
  }
  ckt_free(pem);
  printf("libckt %s: %s\n", CKT_VERSION_STRING, ckt_strerror(CKT_ERR_KEY_TYPE));
  return 0;
}
C
# shellcheck disable=SC2086
cc -std=c11 -Wall -Werror -o "$root/user" "$root/user.c" $flags
"$root/user"
