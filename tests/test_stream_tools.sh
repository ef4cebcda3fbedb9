#!/bin/sh
# Integration test of streaming calls, cancellation and compression with the
# real srv and cli over real UDP on loopback: uploads with every codec,
# downloads, confinement to srv -dir, a bistream, cancelled and timed-out
# calls.  Usage: test_stream_tools.sh BUILD_CMD_DIR
# STREAM_MIB sets the size of the big test file (default 20; less under
# the sanitizers).
set -u
bin=$1
mib=${STREAM_MIB:-20}
work=$(mktemp -d /tmp/ckt-test-stream-XXXXXX)
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
unset CKT_PASSPHRASE XDG_CONFIG_HOME
export CKT_CONFIG_DIR="$work/certs"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() {
  failed=$((failed + 1))
  echo "not ok - $1"
  sed 's/^/#   /' "$work/out"
}
# check DESCRIPTION COMMAND...: COMMAND must succeed (its output is shown
# on failure only when it wrote to $work/out).
check() {
  d=$1
  shift
  : >"$work/out"
  if "$@" >>"$work/out" 2>&1; then ok "$d"; else not_ok "$d"; fi
}
# expect DESCRIPTION EXIT_CODE TEXT COMMAND...: runs COMMAND, wants that
# exit code and TEXT somewhere in its output.
expect() {
  d=$1 want_rc=$2 want_text=$3
  shift 3
  "$@" >"$work/out" 2>&1
  rc=$?
  if [ "$rc" -ne "$want_rc" ]; then
    not_ok "$d (exit $rc, wanted $want_rc)"
  elif ! grep -q -- "$want_text" "$work/out"; then
    not_ok "$d (no '$want_text')"
  else
    ok "$d"
  fi
}
# wait_log FILE TEXT: waits up to 3 s for TEXT to appear in FILE.
wait_log() {
  for _ in $(seq 60); do
    grep -q -- "$2" "$1" && return 0
    sleep 0.05
  done
  cp "$1" "$work/out"
  return 1
}
stat_of() { sed -n "s/^$1=//p" "$2" | tail -n 1; }
# no_temp DIR: no temporary (dot) file is left in DIR.
no_temp() {
  find "$1" -mindepth 1 -maxdepth 1 -name '.*' >"$work/out"
  [ ! -s "$work/out" ]
}

# start_srv LOGFILE ARGS...: starts srv on an ephemeral port, sets $addr
# and $srv_pid.
start_srv() {
  log=$1
  shift
  "$bin/srv/srv" -addr 127.0.0.1:0 "$@" >"$log" 2>&1 &
  srv_pid=$!
  pids="$pids $srv_pid"
  addr=""
  for _ in $(seq 200); do
    addr=$(sed -n 's/^srv: listening on \([^ ]*\).*/\1/p' "$log")
    [ -n "$addr" ] && return 0
    sleep 0.05
  done
  echo "srv did not start:" >&2
  cat "$log" >&2
  return 1
}
# cli ARGS...: cli against that srv; a call that hangs fails (exit 124)
# instead of holding the test until meson's timeout.
cli() { timeout -k 5 60 "$bin/cli/cli" -addr "$addr" "$@"; }

"$bin/selfy/selfy" -k node -nopass >/dev/null
"$bin/selfy/selfy" -k client -nopass >/dev/null

# -- inputs: half random, half text; random alone; empty --------------------
half=$((mib * 1024 * 1024 / 2))
head -c "$half" /dev/urandom >"$work/mixed"
awk -v n="$half" 'BEGIN {
  while (t < n) {
    l = sprintf("%08d static int ckt_stream_%x(ckt_call *c, size_t len) { return %d; }\n",
                i, (i * 7919) % 65521, (i * 31337) % 1000003)
    printf "%s", l
    t += length(l)
    i++
  }
}' | head -c "$half" >>"$work/mixed"
head -c "$half" /dev/urandom >"$work/random"
: >"$work/empty"
size=$(stat -c %s "$work/mixed")
mkdir "$work/dir" "$work/outside"
echo "secret" >"$work/outside/secret"
ln -s "$work/outside" "$work/dir/outlink"
ln -s "$work/outside/secret" "$work/dir/secretlink"

start_srv "$work/srv.log" -dir "$work/dir" || exit 1

# -- uploads with every codec ---------------------------------------------------
for codec in none zstd:fast zstd:01 zstd:03 zstd:07 zstd:11; do
  name=mixed-$(echo "$codec" | tr : _)
  expect "upload of $mib MiB with $codec: the server's BLAKE2b matches" 0 \
    "uploaded $size bytes in .* codec $codec, BLAKE2b [0-9a-f]\{64\} verified" \
    cli -upload "$work/mixed" -as "$name" -compress "$codec" -stats
  cp "$work/out" "$work/stats-$name"
  check "upload with $codec: the server's file is identical" \
    cmp "$work/mixed" "$work/dir/$name"
done
check "no temporary file is left in the server's directory" no_temp "$work/dir"
expect "upload of an empty file" 0 "uploaded 0 bytes" \
  cli -upload "$work/empty"
check "the empty file arrived empty" test -f "$work/dir/empty" -a ! -s "$work/dir/empty"
expect "an unknown codec is a usage error that names the valid ones" 2 \
  "unknown codec 'lz4': use none, zstd:fast, zstd:01, zstd:03, zstd:07 or zstd:11" \
  cli -upload "$work/empty" -compress lz4

# -- compression on the wire ------------------------------------------------------
none=$(stat_of BYTES_SENT "$work/stats-mixed-none")
z3=$(stat_of BYTES_SENT "$work/stats-mixed-zstd_03")
echo "# mixed file: $size bytes; sent on the wire: none $none, zstd:03 $z3"
if [ -n "$none" ] && [ -n "$z3" ] && [ $((z3 * 100)) -lt $((none * 70)) ]; then
  ok "zstd:03 sends under 70% of the bytes of none for the mixed file"
else
  echo "none=$none zstd:03=$z3" >"$work/out"
  not_ok "zstd:03 sends under 70% of the bytes of none for the mixed file"
fi
for codec in none zstd:03; do
  cli -upload "$work/random" -as "random-$codec" -compress "$codec" -stats \
    >"$work/stats-random-$codec" 2>&1
done
rn=$(stat_of BYTES_SENT "$work/stats-random-none")
r3=$(stat_of BYTES_SENT "$work/stats-random-zstd:03")
echo "# random file: $half bytes; sent on the wire: none $rn, zstd:03 $r3"
if [ -n "$rn" ] && [ -n "$r3" ] && [ $((r3 * 100)) -le $((rn * 105)) ] &&
  [ $((r3 * 100)) -ge $((rn * 95)) ]; then
  ok "random data with zstd:03 costs the same bytes as none (within 5%)"
else
  cat "$work/stats-random-zstd:03" >"$work/out"
  not_ok "random data with zstd:03 costs the same bytes as none (within 5%)"
fi
check "random data with zstd:03 arrived identical" \
  cmp "$work/random" "$work/dir/random-zstd:03"

# -- confinement of uploads -----------------------------------------------------
expect "upload as ../x is refused" 1 "refused '../x': '..' is not allowed" \
  cli -upload "$work/mixed" -as ../x
check "nothing was written outside the directory" test ! -e "$work/x"
expect "upload to an absolute path is refused" 1 \
  "absolute paths are not allowed" cli -upload "$work/empty" -as "$work/abs"
check "nothing was written at the absolute path" test ! -e "$work/abs"
expect "upload through a symlink to a directory outside is refused" 1 \
  "refused 'outlink/x': it goes through a symlink" \
  cli -upload "$work/empty" -as outlink/x
check "nothing was written through the symlink" test ! -e "$work/outside/x"
check "no temporary file is left after the refusals" no_temp "$work/dir"

# -- downloads --------------------------------------------------------------------
expect "download of the mixed file: BLAKE2b and size verified" 0 \
  "downloaded $size bytes in .* into $work/dl, BLAKE2b [0-9a-f]\{64\} verified" \
  cli -download mixed-zstd_03 -o "$work/dl" -compress zstd:03
check "the downloaded file is identical" cmp "$work/mixed" "$work/dl"
expect "download of the empty file" 0 "downloaded 0 bytes" \
  cli -download empty -o "$work/dl-empty"
check "the empty download is an empty file" test -f "$work/dl-empty" -a ! -s "$work/dl-empty"
expect "download of a missing file fails with a sentence" 1 \
  "download of nosuch failed: no such file: nosuch" \
  cli -download nosuch -o "$work/dl-missing"
check "a failed download leaves no file and no temporary file" \
  sh -c "test ! -e '$work/dl-missing' &&
         [ -z \"\$(find '$work' -maxdepth 1 -name '.dl-missing.*')\" ]"
expect "download of a symlink pointing outside is refused" 1 \
  "refused 'secretlink': it is a symlink" \
  cli -download secretlink -o "$work/dl-secret"
expect "download through a symlinked directory is refused" 1 \
  "refused 'outlink/secret': it goes through a symlink" \
  cli -download outlink/secret -o "$work/dl-secret"
expect "download of ../ is refused" 1 "'..' is not allowed" \
  cli -download ../outside/secret -o "$work/dl-secret"
check "nothing was downloaded from outside" test ! -e "$work/dl-secret"

# -- bistream ---------------------------------------------------------------------
expect "bistream: 200 parts of 10000 bytes come back in order, intact" 0 \
  "200 parts of 10000 bytes echoed back in order and intact .* the server counted 200" \
  cli -bistream 200 -size 10000
expect "bistream with zstd:fast" 0 "the server counted 50" \
  cli -bistream 50 -size 100000 -compress zstd:fast

# -- cancellation and deadlines -------------------------------------------------
t0=$(date +%s%N)
expect "a call to sleep cancelled after 200 ms ends cancelled (exit 0)" 0 \
  "cli: call cancelled: cancelled; the peer was asked to abandon the call" \
  cli -service sleep -arg ms=5000 -cancel-after 200
ms=$((($(date +%s%N) - t0) / 1000000))
if [ "$ms" -lt 2000 ]; then
  ok "the cancelled call returned in $ms ms"
else
  echo "took $ms ms" >"$work/out"
  not_ok "the cancelled call returned within 2 s"
fi
# (canceled) when the stream's reset arrives first; cli exits at once, so
# the connection's close may overtake it: (connection failed or lost).
check "srv says the call was cancelled" \
  wait_log "$work/srv.log" "srv: call [0-9]* cancelled ("

t0=$(date +%s%N)
expect "a call to sleep past its 300 ms deadline times out (exit 4)" 4 \
  "no reply from .* within the deadline" \
  cli -service sleep -arg ms=5000 -timeout 300
ms=$((($(date +%s%N) - t0) / 1000000))
if [ "$ms" -lt 2000 ]; then
  ok "the timed-out call returned in $ms ms"
else
  echo "took $ms ms" >"$work/out"
  not_ok "the timed-out call returned within 2 s"
fi
check "srv enforced the deadline too: the call was cancelled as timed out" \
  wait_log "$work/srv.log" "srv: call [0-9]* cancelled (timed out)"

# An upload from a pipe that trickles: cancelled half way, the server drops
# its temporary file.
mkfifo "$work/fifo"
(
  head -c 1048576 /dev/urandom
  for _ in $(seq 100); do
    sleep 0.05
    head -c 1000 /dev/urandom || exit 0
  done
) >"$work/fifo" 2>/dev/null &
pids="$pids $!"
expect "an upload cancelled half way ends cancelled (exit 0)" 0 \
  "cli: call cancelled: cancelled; the peer was asked" \
  cli -upload "$work/fifo" -as slow -cancel-after 500
check "srv says the upload was cancelled" \
  wait_log "$work/srv.log" "srv: upload of slow cancelled"
check "the cancelled upload left no file" test ! -e "$work/dir/slow"
check "the cancelled upload left no temporary file" no_temp "$work/dir"

# -- srv stops cleanly (and, under the sanitizers, with no leak) ----------------
kill "$srv_pid"
wait "$srv_pid"
rc=$?
cp "$work/srv.log" "$work/out"
if [ "$rc" -eq 0 ] && ! grep -q "Sanitizer" "$work/srv.log"; then
  ok "srv stops cleanly on SIGTERM"
else
  not_ok "srv stops cleanly on SIGTERM (exit $rc)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
