#!/bin/sh
# Integration test of srv, cli and samesame: real processes, real UDP on
# loopback, certificates made by selfy.  Usage: test_tools.sh BUILD_CMD_DIR
set -u
bin=$1
work=$(mktemp -d /tmp/ckt-test-tools-XXXXXX)
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
unset CKT_PASSPHRASE XDG_CONFIG_HOME
export CKT_CONFIG_DIR="$work/a"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() {
  failed=$((failed + 1))
  echo "not ok - $1"
  sed 's/^/#   /' "$work/out"
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

# start_srv LOGFILE ARGS...: starts srv on an ephemeral port, sets $addr.
start_srv() {
  log=$1
  shift
  "$bin/srv/srv" -addr 127.0.0.1:0 "$@" >"$log" 2>&1 &
  pids="$pids $!"
  addr=""
  for _ in $(seq 100); do
    addr=$(sed -n 's/^srv: listening on \([^ ]*\).*/\1/p' "$log")
    [ -n "$addr" ] && return 0
    sleep 0.05
  done
  echo "srv did not start:" >&2
  cat "$log" >&2
  return 1
}

"$bin/selfy/selfy" -k node -nopass >/dev/null
"$bin/selfy/selfy" -k client -nopass >/dev/null
CKT_CONFIG_DIR="$work/b" "$bin/selfy/selfy" -k client -nopass >/dev/null
CKT_CONFIG_DIR="$work/b" "$bin/selfy/selfy" -k node -nopass >/dev/null

start_srv "$work/srv.log" || exit 1
expect "cli calls srv: ChaCha20 suite and Ed25519 server key" 0 \
  "TLS_CHACHA20_POLY1305_SHA256, server key Ed25519 [0-9a-f]\{64\}" \
  "$bin/cli/cli" -addr "$addr" -n 2000 -c 32
expect "cli reports calls/s and latency percentiles with no errors" 0 \
  "calls/s; latency us p50=.* p99=.*; 0 errors" \
  "$bin/cli/cli" -addr "$addr" -n 2000 -c 32
expect "64 KiB payloads echo back intact" 0 "0 errors" \
  "$bin/cli/cli" -addr "$addr" -n 50 -c 4 -size 65536
expect "one-way messages" 0 "sent 5 one-way messages" \
  "$bin/cli/cli" -addr "$addr" -oneway 5
if grep -q "one-way message 5 from 127.0.0.1" "$work/srv.log"; then
  ok "srv received the 5 one-way messages"
else
  cp "$work/srv.log" "$work/out"
  not_ok "srv received the 5 one-way messages"
fi
expect "pushes come back over the client's connection" 0 \
  "received 50 of 50 pushes" "$bin/cli/cli" -addr "$addr" -push 50
expect "an unknown service is a clear error" 1 "no service 'nosuch'" \
  "$bin/cli/cli" -addr "$addr" -service nosuch
expect "a client from another CA is refused (exit 3)" 3 \
  "server's certificate is not signed by our CA" \
  env CKT_CONFIG_DIR="$work/b" "$bin/cli/cli" -addr "$addr"
expect "skip-verify on the client does not get it past the server" 3 \
  "client's certificate is not signed by our CA" \
  env CKT_CONFIG_DIR="$work/b" "$bin/cli/cli" -addr "$addr" -skip-verify
expect "ChaCha20 server, AES client: no common suite (exit 3)" 3 \
  "refused\|handshake" "$bin/cli/cli" -addr "$addr" -aes

start_srv "$work/srv_aes.log" -aes || exit 1
expect "AES-128-GCM when both sides choose it" 0 "TLS_AES_128_GCM_SHA256" \
  "$bin/cli/cli" -addr "$addr" -aes -n 100 -c 8

expect "nobody listening: a network error (exit 4)" 4 "no reply\|stopped\|timed out" \
  "$bin/cli/cli" -addr 127.0.0.1:9 -timeout 300
expect "a missing identity is named (exit 5)" 5 "client.crt\|not found" \
  env CKT_CONFIG_DIR="$work/empty" "$bin/cli/cli" -addr "$addr"
expect "encrypted key without a passphrase source is explained" 3 \
  "CKT_PASSPHRASE" \
  sh -c "CKT_CONFIG_DIR='$work/c' CKT_PASSPHRASE=pw '$bin/selfy/selfy' -k client >/dev/null &&
         CKT_CONFIG_DIR='$work/c' setsid '$bin/cli/cli' -addr '$addr' </dev/null"
expect "cli -n 0 is a usage error" 2 "whole number" "$bin/cli/cli" -n 0
expect "unknown flags are usage errors" 2 "unknown option" "$bin/srv/srv" -bogus
expect "cli -h explains itself" 0 "calls/s" "$bin/cli/cli" -h

"$bin/samesame/samesame" -addr 127.0.0.1:0 >"$work/ss0.log" 2>&1 &
pids="$pids $!"
expect "samesame pair: each calls the other from its one port" 0 \
  "3 of 3 calls to 127.0.0.1:7912 answered, sent from this same port" \
  sh -c "'$bin/samesame/samesame' -addr 127.0.0.1:7911 -peer 127.0.0.1:7912 -wait 1500 &
         '$bin/samesame/samesame' -addr 127.0.0.1:7912 -peer 127.0.0.1:7911 -wait 1500 >'$work/ss2.log' 2>&1;
         wait"
if grep -q "answered a call from 127.0.0.1:7911" "$work/ss2.log"; then
  ok "the second samesame answered calls from the first one's port"
else
  cp "$work/ss2.log" "$work/out"
  not_ok "the second samesame answered calls from the first one's port"
fi

# -- the example peer service ---------------------------------------------------
"$bin/peerecho/peerecho" -serve -addr 127.0.0.1:0 >"$work/pe.log" 2>&1 &
pids="$pids $!"
pe=""
for _ in $(seq 100); do
  pe=$(sed -n 's/^peerecho: serving peer service .echo. on \(.*\)$/\1/p' "$work/pe.log")
  [ -n "$pe" ] && break
  sleep 0.05
done
expect "peerecho: fragments echo over 10 circuits" 0 \
  "2000 fragments of 64 bytes echoed over 10 circuit(s)" \
  "$bin/peerecho/peerecho" -to "$pe" -n 2000 -circuits 10
expect "peerecho: the server-role node opens a circuit to the client's peer" 0 \
  "the server opened a circuit to this client's peer" \
  "$bin/peerecho/peerecho" -to "$pe" -n 10
expect "peerecho needs a side" 2 "give -serve" "$bin/peerecho/peerecho"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
