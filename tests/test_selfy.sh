#!/bin/sh
# Integration test of the real selfy binary, checked with the openssl CLI.
# Usage: test_selfy.sh SELFY OPENSSL
set -u
SELFY=$1
OPENSSL=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/ckt-test-selfy-XXXXXX)
trap 'rm -rf "$work"' EXIT
unset CKT_PASSPHRASE XDG_CONFIG_HOME
export CKT_CONFIG_DIR="$work/cfg"
certs="$CKT_CONFIG_DIR/certs"
priv="$CKT_CONFIG_DIR/my-keep-private-dir"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; }
check() { # check DESCRIPTION COMMAND...
  d=$1
  shift
  if "$@" >"$work/out" 2>&1; then ok "$d"; else
    not_ok "$d"
    sed 's/^/#   /' "$work/out"
  fi
}
check_fails() { # check_fails DESCRIPTION EXPECTED_TEXT COMMAND...
  d=$1
  want=$2
  shift 2
  if "$@" >"$work/out" 2>&1; then
    not_ok "$d (succeeded)"
  elif grep -q -- "$want" "$work/out"; then ok "$d"; else
    not_ok "$d (no '$want' in output)"
    sed 's/^/#   /' "$work/out"
  fi
}
mode() { stat -c %a "$1"; }

# -- plain identities in the default layout ---------------------------------
check "selfy -k node -nopass creates CA and identity" \
  "$SELFY" -k node -nopass -e node@example.org
check "files in the default layout" \
  test -f "$certs/node.crt" -a -f "$certs/node.key" -a -f "$priv/ca.crt" -a -f "$priv/ca.key"
check "certs/ca.crt is a copy of the CA certificate" cmp "$certs/ca.crt" "$priv/ca.crt"
check "private key modes are 0600" \
  test "$(mode "$certs/node.key")$(mode "$priv/ca.key")" = 600600
check "directories holding keys are 0700" \
  test "$(mode "$certs")$(mode "$priv")" = 700700
check "openssl verify accepts selfy's chain" \
  "$OPENSSL" verify -CAfile "$priv/ca.crt" "$certs/node.crt"
"$OPENSSL" x509 -in "$certs/node.crt" -noout -text >"$work/x509.txt" 2>&1
check "openssl sees an ED25519 key" grep -q "ED25519" "$work/x509.txt"
check "SAN has DNS:localhost and IP 127.0.0.1" \
  grep -q "DNS:localhost, IP Address:127.0.0.1" "$work/x509.txt"
check "email is in the certificate" grep -q "node@example.org" "$work/x509.txt"
check "client and server usage" \
  grep -q "TLS Web Server Authentication, TLS Web Client Authentication" "$work/x509.txt"
"$OPENSSL" x509 -in "$priv/ca.crt" -noout -text >"$work/ca.txt" 2>&1
check "CA is a CA" grep -q "CA:TRUE" "$work/ca.txt"
check "CA may sign certificates" grep -q "Certificate Sign" "$work/ca.txt"
check "openssl reads selfy's plain key as Ed25519" \
  sh -c "'$OPENSSL' pkey -in '$certs/node.key' -noout -text | grep -q ED25519"
check "selfy -verify accepts its own certificate" "$SELFY" -verify "$certs/node.crt"
check "selfy --verify=FILE form works" "$SELFY" --verify="$certs/node.crt"

"$SELFY" -v "$certs/node.crt" >"$work/view.txt" 2>&1
for field in "subject: .*CN=localhost" "issuer: .*CN=ckt CA" "serial: *[0-9a-f:]\{47\}" \
  "not before: *20" "not after: *20" "key type: *Ed25519" "CA: *no" \
  "SANs: *DNS:localhost, IP:127.0.0.1, email:node@example.org" \
  "email: *node@example.org" "SHA-256: *[0-9a-f:]\{95\}"; do
  check "selfy -v shows '$field'" grep -q "$field" "$work/view.txt"
done
fp_selfy=$(sed -n 's/.*SHA-256: *//p' "$work/view.txt" | tr -d ':' | tr a-f A-F)
fp_ossl=$("$OPENSSL" x509 -in "$certs/node.crt" -noout -fingerprint -sha256 |
  sed 's/.*=//' | tr -d ':')
check "selfy's fingerprint equals openssl's" test "$fp_selfy" = "$fp_ossl"

# -- never overwrite ---------------------------------------------------------
sum_before=$(cat "$certs/node.key" "$certs/node.crt" "$priv/ca.key" | sha256sum)
check_fails "second -k node is refused" "already exists" "$SELFY" -k node -nopass
check_fails "second -ca is refused" "already exists" "$SELFY" -ca -nopass
sum_after=$(cat "$certs/node.key" "$certs/node.crt" "$priv/ca.key" | sha256sum)
check "nothing was overwritten" test "$sum_before" = "$sum_after"

# -- a second identity from the same CA; a foreign CA -------------------------
check "selfy -k client reuses the CA" "$SELFY" -k client -nopass
check "openssl verify accepts client" \
  "$OPENSSL" verify -CAfile "$priv/ca.crt" "$certs/client.crt"
check "default email is NAME@host" \
  sh -c "'$SELFY' -v '$certs/client.crt' | grep -q 'email: *client@'"
check "-ca with -p makes a separate CA" "$SELFY" -ca -nopass -p "$work/other"
check_fails "-verify against a foreign CA fails" "NOT signed" \
  "$SELFY" -verify "$certs/node.crt" -p "$work/other"
check_fails "-verify with no CA says so" "no CA certificate" \
  "$SELFY" -verify "$certs/node.crt" -p "$work/nowhere"

# -- encrypted keys ----------------------------------------------------------
enc="$work/enc"
check "encrypted CA + identity with CKT_PASSPHRASE" \
  env CKT_PASSPHRASE=hunter2hunter2 "$SELFY" -k alice -o "$enc/certs" -p "$enc/priv"
check "the key file is sealed" grep -q "BEGIN CKT ENCRYPTED PRIVATE KEY" "$enc/certs/alice.key"
check "the key file holds no plain PKCS#8" \
  sh -c "! grep -q 'BEGIN PRIVATE KEY' '$enc/certs/alice.key' '$enc/priv/ca.key'"
check_fails "openssl cannot use the sealed key" "" \
  "$OPENSSL" pkey -in "$enc/certs/alice.key" -passin pass:hunter2hunter2 -noout
check_fails "wrong CA passphrase is refused" "wrong passphrase" \
  env CKT_PASSPHRASE=wrong "$SELFY" -k bob -o "$enc/certs" -p "$enc/priv"
check "and nothing was written for bob" test ! -e "$enc/certs/bob.key"
check_fails "no passphrase and no terminal is a clear error" "CKT_PASSPHRASE" \
  setsid "$SELFY" -k carol -o "$enc/certs" -p "$enc/priv"
check_fails "-nopass cannot use an encrypted CA" "is encrypted" \
  "$SELFY" -k dave -nopass -o "$enc/certs" -p "$enc/priv"
printf 'hunter2hunter2\n' >"$work/passfile"
check "-passfile unlocks the CA" \
  "$SELFY" -k erin -passfile "$work/passfile" -o "$enc/certs" -p "$enc/priv"
check "erin verifies with openssl" \
  "$OPENSSL" verify -CAfile "$enc/priv/ca.crt" "$enc/certs/erin.crt"

# -- gensym ------------------------------------------------------------------
check "-gensym writes into the -p directory" "$SELFY" -gensym psk.binary
check "psk is 32 bytes, 0600" \
  test "$(stat -c %s "$priv/psk.binary")$(mode "$priv/psk.binary")" = 32600
check_fails "-gensym never overwrites" "already exists" "$SELFY" -gensym psk.binary
check "--gensym with a path" "$SELFY" --gensym "$work/psk2"
check "two keys differ" sh -c "! cmp -s '$priv/psk.binary' '$work/psk2'"

# -- interoperability: openssl-made material in selfy -------------------------
fx="$work/fx"
mkdir -p "$fx"
sh "$here/openssl_fixtures.sh" "$fx"
mkdir -p "$work/ossl-ca"
cp "$fx/ossl_ca.crt" "$work/ossl-ca/ca.crt"
cp "$fx/ossl_ca.key" "$work/ossl-ca/ca.key"
check "selfy -verify accepts an openssl-made Ed25519 chain" \
  "$SELFY" -verify "$fx/ossl_leaf.crt" -p "$work/ossl-ca"
check_fails "selfy -verify reports an expired certificate" "expired" \
  "$SELFY" -verify "$fx/ossl_expired.crt" -p "$work/ossl-ca"
check "selfy signs with an openssl-made CA key" \
  "$SELFY" -k frank -nopass -o "$work/ossl-certs" -p "$work/ossl-ca"
check "openssl verifies what it signed" \
  "$OPENSSL" verify -CAfile "$work/ossl-ca/ca.crt" "$work/ossl-certs/frank.crt"
check_fails "selfy -v flags an RSA certificate" "only Ed25519" \
  sh -c "'$SELFY' -v '$fx/rsa.crt'; exit 1"
check_fails "selfy -verify refuses an RSA certificate" "Ed25519" \
  "$SELFY" -verify "$fx/rsa.crt" -p "$work/ossl-ca"
mkdir -p "$work/rsa-ca"
cp "$fx/rsa.crt" "$work/rsa-ca/ca.crt"
cp "$fx/rsa.key" "$work/rsa-ca/ca.key"
check_fails "selfy refuses an RSA CA key" "not Ed25519" \
  "$SELFY" -k gina -nopass -o "$work/rsa-certs" -p "$work/rsa-ca"

# -- command line -----------------------------------------------------------
check_fails "no action is a usage error" "nothing to do" "$SELFY"
"$SELFY" >/dev/null 2>&1
check "usage errors exit 2" test $? -eq 2
check_fails "unknown flag" "unknown option" "$SELFY" -bogus
check_fails "-days 0 is refused" "whole number" "$SELFY" -k x -days 0 -nopass
check_fails "missing value" "needs a value" "$SELFY" -k
check "--help prints usage" sh -c "'$SELFY' --help | grep -q 'usage: selfy'"
check "-days sets the validity" \
  "$SELFY" -k shortlived -days 2 -nopass -o "$work/short" -p "$work/other"
check "openssl agrees on the end date" sh -c \
  "'$OPENSSL' x509 -in '$work/short/shortlived.crt' -noout -checkend 86400 &&
   ! '$OPENSSL' x509 -in '$work/short/shortlived.crt' -noout -checkend 259200"
check_fails "bad identity name is refused" "invalid argument" \
  "$SELFY" -k ../escape -nopass

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
