#!/usr/bin/env bash
# test_simrun.sh — the simrun tool: runs finish with every fragment
# accounted for, the same seed replays to the same trace, different seeds
# differ, every fault profile passes its checks, a swarm of seeds is
# deterministic, and a broken delivery is caught with a replay command.
#   test_simrun.sh <path to simrun>
set -u
simrun=$1
fails=0
checks=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ok() { checks=$((checks + 1)); echo "ok - $1"; }
bad() { checks=$((checks + 1)); fails=$((fails + 1)); echo "FAIL - $1"; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | tail -1; }

# Usage.
"$simrun" --help >"$tmp/help" 2>&1 && grep -q "faults PROFILE" "$tmp/help" &&
  ok "--help describes the flags" || bad "--help"
"$simrun" --faults bogus >/dev/null 2>"$tmp/err"
[ $? = 2 ] && grep -q "unknown fault profile" "$tmp/err" &&
  ok "an unknown profile is a usage error" || bad "unknown profile"
"$simrun" --nodes 1 >/dev/null 2>&1
[ $? = 2 ] && ok "one node is refused" || bad "--nodes 1"

# No faults: everything arrives; the same seed gives the same trace.
"$simrun" --nodes 4 --fragments 3000 --seed 1 >"$tmp/a" 2>&1; rc=$?
last=$(tail -1 "$tmp/a")
case "$last" in
SIM\ seed=1\ nodes=4\ fragments=3000\ delivered=3000\ trace=*) ok "no faults: 3000 of 3000 delivered" ;;
*) bad "no faults (rc $rc): $last" ;;
esac
[ $rc = 0 ] || bad "no faults: exit $rc"
"$simrun" --nodes 4 --fragments 3000 --seed 1 -q >"$tmp/b" 2>&1
t1=$(field trace <"$tmp/a")
t2=$(field trace <"$tmp/b")
[ -n "$t1" ] && [ "$t1" = "$t2" ] && ok "seed 1 twice: trace $t1 both times" ||
  bad "seed 1 twice: $t1 then $t2"
"$simrun" --nodes 4 --fragments 3000 --seed 2 -q >"$tmp/c" 2>&1
t3=$(field trace <"$tmp/c")
[ -n "$t3" ] && [ "$t3" != "$t1" ] && ok "seed 2 gives another trace" ||
  bad "seed 2: $t3 (seed 1: $t1)"

# The event logs of two runs are identical, line for line.
"$simrun" --nodes 3 --fragments 300 --seed 4 --faults flaky --span 2 --events >"$tmp/e1" 2>&1
"$simrun" --nodes 3 --fragments 300 --seed 4 --faults flaky --span 2 --events >"$tmp/e2" 2>&1
n=$(grep -c '^EV ' "$tmp/e1")
[ "$n" -gt 1000 ] && grep -v wall_s "$tmp/e1" | cmp -s - <(grep -v wall_s "$tmp/e2") &&
  ok "--events: two runs print the same $n events" || bad "--events logs differ ($n events)"

# Every fault profile passes its checks, and replays.
for p in flaky partition chaos; do
  "$simrun" --nodes 4 --fragments 2000 --seed 3 --faults $p --span 15 -v >"$tmp/$p" 2>&1; rc=$?
  line=$(tail -1 "$tmp/$p")
  d=$(echo "$line" | field delivered)
  if [ $rc = 0 ] && [ -n "$d" ] && [ "$d" -gt 0 ]; then
    ok "$p: passes ($d of 2000 delivered; any others lost with circuits faults closed)"
  else
    bad "$p (rc $rc): $(grep -m1 FAIL "$tmp/$p") $line"
  fi
  "$simrun" --nodes 4 --fragments 2000 --seed 3 --faults $p --span 15 -q >"$tmp/$p.2" 2>&1
  [ "$(field trace <"$tmp/$p")" = "$(field trace <"$tmp/$p.2")" ] &&
    ok "$p: the replay gives the same trace" || bad "$p: replay differs"
done
grep -q "fault: cut" "$tmp/partition" && ok "partition: cuts happened" || bad "partition: no cut"
n=$(grep '^sim: ' "$tmp/partition" | field circuits_closed)
[ "${n:-0}" -gt 0 ] &&
  ok "partition: $n circuits closed by cuts that outlived the idle timeout" ||
  bad "partition: no circuit closed"
n=$(grep '^sim: ' "$tmp/flaky" | field circuits_closed)
[ "$n" = 0 ] && ok "flaky: loss, duplication and reordering closed no circuit" ||
  bad "flaky: $n circuits closed"
n=$(grep '^sim: ' "$tmp/chaos" | field restarts)
grep -q "fault: node [0-9] crashes" "$tmp/chaos" && [ "${n:-0}" -gt 0 ] &&
  ok "chaos: nodes crashed and $n restarted" || bad "chaos: no restart"

# A swarm of random-fault seeds, each run twice.
"$simrun" --swarm 24 --twice --seed 100 --nodes 3 --fragments 60 --span 2 >"$tmp/s" 2>&1; rc=$?
line=$(tail -1 "$tmp/s")
case "$line" in
SWARM\ seeds=24\ failed=0\ *) ok "swarm: 24 random-fault seeds pass, each trace replayed" ;;
*) bad "swarm (rc $rc): $(grep -m2 -e FAIL -e replay "$tmp/s") $line" ;;
esac

# The checks can fail: a delivery the receiver ignores is caught, and the
# replay command reproduces the failure.
"$simrun" --nodes 3 --fragments 500 --seed 7 --sabotage 100 >"$tmp/x" 2>&1; rc=$?
if [ $rc = 1 ] && grep -q "^FAIL seed=7: .*a gap: fragments lost" "$tmp/x"; then
  ok "a lost fragment on a live circuit fails the run"
else
  bad "sabotage not caught (rc $rc): $(head -3 "$tmp/x")"
fi
replay=$(sed -n 's/^replay: //p' "$tmp/x")
case "$replay" in
"simrun "*"--seed 7"*"--sabotage 100"*)
  # shellcheck disable=SC2086
  "$(dirname "$simrun")/"$replay >"$tmp/y" 2>&1
  [ $? = 1 ] && [ "$(grep '^FAIL' "$tmp/x")" = "$(grep '^FAIL' "$tmp/y")" ] &&
    ok "the printed replay command fails the same way" || bad "replay: $(head -2 "$tmp/y")"
  ;;
*) bad "no replay command: $replay" ;;
esac
"$simrun" --swarm 3 --seed 7 --faults none --nodes 3 --fragments 500 --sabotage 100 >"$tmp/z" 2>&1
[ "$(grep -c '^replay: simrun ' "$tmp/z")" = 3 ] && tail -1 "$tmp/z" | grep -q "failed=3" &&
  ok "a swarm prints one replay command per failing seed" || bad "swarm replay lines: $(cat "$tmp/z")"

echo "$checks checks, $fails failed"
[ $fails = 0 ]
