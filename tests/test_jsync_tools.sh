#!/bin/sh
# Integration test of jcp and jsrv (jsync): real processes, real UDP on
# loopback, certificates made by selfy.  Every jcp and jsrv output is
# searched for sanitizer reports, so the script also serves an ASan build.
# Usage: test_jsync_tools.sh BUILD_CMD_DIR
set -u
work=$(mktemp -d /tmp/ckt-test-jsync-XXXXXX)
pids=""
etc_probe=/etc/ckt-jsync-test-$$
cleanup() {
  for p in $pids; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
  rm -f "$etc_probe"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
# Private copies: a rebuild while this runs must not mix versions.
bin=$work/bin
mkdir -p "$bin/jcp" "$bin/jsrv" "$bin/selfy"
for p in jcp jsrv selfy; do
  cp "$1/$p/$p" "$bin/$p/" || exit 1
done
unset CKT_PASSPHRASE XDG_CONFIG_HOME
export CKT_CONFIG_DIR="$work/cfg"
root=$work/root
mkdir -p "$root"
san='ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error:'

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() {
  failed=$((failed + 1))
  echo "not ok - $1"
  tail -n 40 "$work/out" | sed 's/^/#   /'
}
# check DESCRIPTION COMMAND...: runs COMMAND (mostly a function below) with
# its output in $work/out; passes when it succeeds and no sanitizer spoke.
check() {
  check_d=$1
  shift
  : >"$work/out"
  "$@" >>"$work/out" 2>&1
  check_rc=$?
  if grep -q "$san" "$work/out"; then
    not_ok "$check_d (sanitizer report)"
  elif [ "$check_rc" -ne 0 ]; then
    not_ok "$check_d"
  else
    ok "$check_d"
  fi
}
fail() {
  echo "$*"
  return 1
}

# jc ARGS...: jcp against the server on $port; its output stays in
# $work/last and is shown (so that it lands in check's log).
jc() {
  "$bin/jcp/jcp" -p "$port" "$@" >"$work/last" 2>&1
  jrc=$?
  cat "$work/last"
  return $jrc
}
# jc_want CODE ARGS...: jc, wanting exit status CODE.
jc_want() {
  want=$1
  shift
  jc "$@"
  jrc=$?
  [ "$jrc" -eq "$want" ] || fail "jcp exited $jrc, wanted $want"
}
# stat_val NAME: a field of the last jcp-stats line.
stat_val() {
  sed -n "s/^jcp-stats .*[ ]$1=\([0-9.]*\).*/\1/p" "$work/last" | tail -n 1
}
now() { date +%s.%N; }
# elapsed_ms T0: milliseconds since T0 (from now()).
elapsed_ms() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
# meta DIR: one line per entry beneath DIR, DIR itself included: path,
# type, mode, size (not for directories), mtime to the ns, link target,
# owner.
meta() {
  (cd "$1" && find . \( -type d -printf '%P %y %m - %T@ %l %U:%G\n' \) -o \
    -printf '%P %y %m %s %T@ %l %U:%G\n') | LC_ALL=C sort
}
# same_tree A B: same contents (symlinks as symlinks) and same metadata.
same_tree() {
  diff -r --no-dereference "$1" "$2" || return 1
  meta "$1" >"$work/meta.a"
  meta "$2" >"$work/meta.b"
  diff "$work/meta.a" "$work/meta.b"
}
# snapshot DIR: metadata and checksums of everything beneath DIR.
snapshot() {
  meta "$1"
  (cd "$1" && find . -type f -exec md5sum {} + | LC_ALL=C sort)
}
# start_jsrv LOG ARGS...: a jsrv on an ephemeral port; sets $port, $spid.
start_jsrv() {
  log=$1
  shift
  "$bin/jsrv/jsrv" -addr 127.0.0.1:0 "$@" >"$log" 2>&1 &
  spid=$!
  pids="$pids $spid"
  port=""
  for _ in $(seq 200); do
    port=$(sed -n 's/^jsrv: listening on 127\.0\.0\.1:\([0-9]*\),.*/\1/p' "$log")
    [ -n "$port" ] && return 0
    sleep 0.05
  done
  echo "jsrv did not start:" >&2
  cat "$log" >&2
  return 1
}
# stop_jsrv PID LOG: SIGTERM, wanting exit 0 within 2 s and a clean log.
stop_jsrv() {
  t0=$(now)
  if ! kill -TERM "$1" 2>/dev/null; then
    wait "$1"
    echo "jsrv had already exited ($?):"
    cat "$2"
    return 1
  fi
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.02
  done
  ms=$(elapsed_ms "$t0")
  if kill -0 "$1" 2>/dev/null; then
    kill -9 "$1"
    wait "$1"
    cat "$2"
    fail "jsrv still running ${ms} ms after SIGTERM"
    return 1
  fi
  wait "$1"
  src=$?
  cat "$2"
  [ "$src" -eq 0 ] || fail "jsrv exited $src after SIGTERM" || return 1
  [ "$ms" -lt 2000 ] || fail "jsrv took ${ms} ms to stop"
}

"$bin/selfy/selfy" -k node -nopass -e n@t >/dev/null || exit 1
"$bin/selfy/selfy" -k client -nopass >/dev/null || exit 1
CKT_CONFIG_DIR="$work/other" "$bin/selfy/selfy" -k client -nopass >/dev/null ||
  exit 1
start_jsrv "$work/jsrv.log" -root "$root" || exit 1
main_pid=$spid
main_port=$port

# -- 1. single files -----------------------------------------------------------
mkdir -p "$work/one" "$root/indir" "$work/pulldir"
head -c 300000 /dev/urandom >"$work/one/a.bin"
t_push_new() {
  jc_want 0 "$work/one/a.bin" 127.0.0.1:b.bin && cmp "$work/one/a.bin" "$root/b.bin"
}
t_push_into_dir() {
  jc_want 0 "$work/one/a.bin" 127.0.0.1:indir &&
    cmp "$work/one/a.bin" "$root/indir/a.bin" &&
    { [ ! -e "$root/indir/indir" ] || fail "went one level too deep"; }
}
t_pull_new() {
  jc_want 0 127.0.0.1:b.bin "$work/one/c.bin" && cmp "$root/b.bin" "$work/one/c.bin"
}
t_pull_into_dir() {
  jc_want 0 127.0.0.1:b.bin "$work/pulldir" &&
    cmp "$root/b.bin" "$work/pulldir/b.bin"
}
check "push of a file to a new name" t_push_new
check "push of a file into an existing directory" t_push_into_dir
check "pull of a file to a new name" t_pull_new
check "pull of a file into an existing directory" t_pull_into_dir

# -- 2. trees: structure, symlinks, modes, mtimes, sparse files, owners --------
tree=$work/tree
mkdir -p "$tree/a/b/c" "$tree/a/empty2" "$tree/empty" "$tree/secret"
printf 'deep\n' >"$tree/a/b/c/deep.txt"
head -c 100000 /dev/urandom >"$tree/a/rand.bin"
: >"$tree/a/zero.txt"
printf '#!/bin/sh\necho hi\n' >"$tree/run.sh"
printf 'group readable\n' >"$tree/a/grp.txt"
printf 'private\n' >"$tree/secret/key"
chmod 0755 "$tree/run.sh"
chmod 0640 "$tree/a/grp.txt"
chmod 0600 "$tree/secret/key"
ln -s b/c/deep.txt "$tree/a/rel"
ln -s /etc/hostname "$tree/abs"
ln -s no/such/target "$tree/dangling"
ln -s ../a "$tree/secret/up"
truncate -s 64M "$tree/sparse"
for off in 0 1048576 33554432 67108859; do
  printf 'data' | dd of="$tree/sparse" bs=1 seek=$off conv=notrunc 2>/dev/null
done
if [ "$(id -u)" -eq 0 ]; then
  chown 1234:5678 "$tree/a/grp.txt"
  chown -h 4321:8765 "$tree/a/rel"
fi
find "$tree" -type f -exec touch -d '2020-01-02 03:04:05.123456789' {} +
touch -d '2021-06-07 08:09:10.987654321' "$tree/run.sh"
find "$tree" -type l -exec touch -h -d '2019-05-06 07:08:09.000000007' {} +
find "$tree" -depth -type d -exec touch -d '2018-11-12 13:14:15.555555555' {} +
chmod 0750 "$tree/secret"

t_tree_push() {
  jc_want 0 "$tree/" 127.0.0.1:t && same_tree "$tree" "$root/t"
}
t_tree_pull() {
  jc_want 0 127.0.0.1:t/ "$work/tpull" && same_tree "$tree" "$work/tpull"
}
# The symlinks arrived as symlinks with their targets, none followed.
t_links() {
  for d in "$root/t" "$work/tpull"; do
    for l in a/rel:b/c/deep.txt abs:/etc/hostname dangling:no/such/target \
      secret/up:../a; do
      p=${l%%:*}
      want=${l#*:}
      [ -L "$d/$p" ] || fail "$d/$p is not a symlink" || return 1
      [ "$(readlink "$d/$p")" = "$want" ] ||
        fail "$d/$p -> $(readlink "$d/$p"), wanted $want" || return 1
    done
  done
}
t_modes() {
  for d in "$root/t" "$work/tpull"; do
    [ "$(stat -c %a "$d/secret")" = 750 ] &&
      [ "$(stat -c %a "$d/a/grp.txt")" = 640 ] &&
      [ "$(stat -c %a "$d/run.sh")" = 755 ] &&
      [ "$(stat -c %a "$d/secret/key")" = 600 ] ||
      fail "$d: modes" "$(stat -c '%n %a' "$d/secret" "$d/a/grp.txt" \
        "$d/run.sh" "$d/secret/key")" || return 1
    [ "$(stat -c %y "$d/run.sh")" = "$(stat -c %y "$tree/run.sh")" ] &&
      [ "$(stat -c %y "$d/secret")" = "$(stat -c %y "$tree/secret")" ] ||
      fail "$d: mtimes differ" || return 1
  done
}
t_sparse() {
  for d in "$tree" "$root/t" "$work/tpull"; do
    cmp "$tree/sparse" "$d/sparse" || return 1
    blocks=$(stat -c %b "$d/sparse")
    echo "$d/sparse: $blocks blocks of 512 for $(stat -c %s "$d/sparse") bytes"
    [ $((blocks * 512)) -lt $((4 * 1024 * 1024)) ] ||
      fail "$d/sparse is not sparse" || return 1
  done
}
t_owner() {
  for d in "$root/t" "$work/tpull"; do
    [ "$(stat -c %u:%g "$d/a/grp.txt")" = 1234:5678 ] ||
      fail "$d/a/grp.txt is owned by $(stat -c %u:%g "$d/a/grp.txt")" || return 1
    [ "$(stat -c %u:%g "$d/a/rel")" = 4321:8765 ] ||
      fail "symlink $d/a/rel is owned by $(stat -c %u:%g "$d/a/rel")" || return 1
  done
}
check "push of a tree: contents and metadata identical" t_tree_push
check "pull of a tree: contents and metadata identical" t_tree_pull
check "symlinks (relative, absolute, dangling) arrive as symlinks" t_links
check "modes (0750 dir, 0640, 0755, 0600) and ns mtimes arrive" t_modes
check "a 64 MiB sparse file stays sparse and identical" t_sparse
if [ "$(id -u)" -eq 0 ]; then
  check "owners arrive by number (root)" t_owner
fi

# -- 3. delta transfers --------------------------------------------------------
mkdir -p "$work/d" "$root/delta"
f=$work/d/f
head -c 20M /dev/urandom >"$f"
# delta_sync [small]: pushes $f, wants the same bytes at the server and,
# with "small", literal data under 10% of the file.
delta_sync() {
  jc_want 0 --stats "$f" 127.0.0.1:delta/f || return 1
  cmp "$f" "$root/delta/f" || return 1
  size=$(stat -c %s "$f")
  lit=$(stat_val literal_bytes)
  [ -n "$lit" ] || fail "no jcp-stats line" || return 1
  if [ "${1:-}" = small ] && [ "$lit" -ge $((size / 10)) ]; then
    fail "literal_bytes=$lit of a $size-byte file"
  fi
}
t_d_first() { delta_sync; }
t_d_overwrite() {
  printf 'X' | dd of="$f" bs=1 seek=10000000 conv=notrunc 2>/dev/null
  delta_sync small
}
t_d_insert() {
  { head -c 5000000 "$f" && printf 'Y' && tail -c +5000001 "$f"; } >"$f.new" &&
    mv "$f.new" "$f" && delta_sync small
}
t_d_delete() {
  { head -c 3000000 "$f" && tail -c +3100001 "$f"; } >"$f.new" &&
    mv "$f.new" "$f" && delta_sync small
}
t_d_append() { head -c 12345 /dev/urandom >>"$f" && delta_sync small; }
t_d_truncate() { truncate -s 15000000 "$f" && delta_sync small; }
t_d_pull() {
  printf 'Z' | dd of="$root/delta/f" bs=1 seek=7777777 conv=notrunc 2>/dev/null
  jc_want 0 --stats 127.0.0.1:delta/f "$f" && cmp "$f" "$root/delta/f" || return 1
  lit=$(stat_val literal_bytes)
  [ "$lit" -lt $(($(stat -c %s "$f") / 10)) ] || fail "literal_bytes=$lit"
}
t_d_fresh() {
  head -c 20M /dev/urandom >"$f"
  delta_sync || return 1
  [ "$lit" -ge $((size * 9 / 10)) ] || fail "only $lit literal bytes of $size"
}
t_d_empty_new() {
  : >"$work/d/e"
  jc_want 0 "$work/d/e" 127.0.0.1:delta/e && [ -f "$root/delta/e" ] &&
    [ ! -s "$root/delta/e" ]
}
t_d_becomes_empty() {
  : >"$f"
  delta_sync && [ -f "$root/delta/f" ] && [ ! -s "$root/delta/f" ]
}
check "delta: first sync of a 20 MiB file" t_d_first
check "delta: 1 byte overwritten travels as little data" t_d_overwrite
check "delta: 1 byte inserted travels as little data" t_d_insert
check "delta: a range deleted travels as little data" t_d_delete
check "delta: an append travels as little data" t_d_append
check "delta: a truncated file travels as little data" t_d_truncate
check "delta: a pull of a file changed at the server is a delta too" t_d_pull
check "delta: a file with nothing in common travels whole" t_d_fresh
check "delta: an empty file is created" t_d_empty_new
check "delta: a file that became empty" t_d_becomes_empty

# -- 4. quick check and --checksum ---------------------------------------------
t_q_unchanged_push() {
  jc_want 0 --stats "$tree/" 127.0.0.1:t || return 1
  [ "$(stat_val transferred)" = 0 ] || fail "transferred=$(stat_val transferred)"
}
t_q_unchanged_pull() {
  jc_want 0 --stats 127.0.0.1:t/ "$work/tpull" || return 1
  [ "$(stat_val transferred)" = 0 ] || fail "transferred=$(stat_val transferred)"
}
head -c 1M /dev/urandom >"$work/d/q"
t_q_checksum() {
  jc_want 0 "$work/d/q" 127.0.0.1:delta/q || return 1
  touch -d '2022-02-03 04:05:06.700000008' "$work/d/q"
  jc_want 0 -c --stats "$work/d/q" 127.0.0.1:delta/q || return 1
  [ "$(stat_val literal_bytes)" = 0 ] ||
    fail "literal_bytes=$(stat_val literal_bytes)" || return 1
  cmp "$work/d/q" "$root/delta/q" || return 1
  [ "$(stat -c %y "$root/delta/q")" = "$(stat -c %y "$work/d/q")" ] ||
    fail "mtime $(stat -c %y "$root/delta/q"), wanted $(stat -c %y "$work/d/q")"
}
check "quick check: an unchanged push transfers no file" t_q_unchanged_push
check "quick check: an unchanged pull transfers no file" t_q_unchanged_pull
check "--checksum with an mtime-only change: no literal data, mtime set" t_q_checksum

# -- 5. --delete, --exclude, --dry-run, -v -------------------------------------
ds=$work/ds
mkdir -p "$ds/sub/deeper"
echo one >"$ds/one"
echo two >"$ds/sub/two"
echo three >"$ds/sub/deeper/three"
t_del_push() {
  jc_want 0 "$ds/" 127.0.0.1:del || return 1
  mkdir -p "$root/del/xdir/xsub" && echo x >"$root/del/xdir/xsub/x" &&
    echo x >"$root/del/extra" && echo x >"$root/del/sub/extra2" &&
    ln -s one "$root/del/xlink"
  jc_want 0 "$ds/" 127.0.0.1:del || return 1
  [ -e "$root/del/extra" ] && [ -e "$root/del/xdir/xsub/x" ] &&
    [ -e "$root/del/sub/extra2" ] && [ -L "$root/del/xlink" ] ||
    fail "extraneous files went without --delete" || return 1
  jc_want 0 --delete "$ds/" 127.0.0.1:del || return 1
  same_tree "$ds" "$root/del"
}
t_del_pull() {
  jc_want 0 127.0.0.1:del/ "$work/dp" || return 1
  mkdir -p "$work/dp/xdir/xsub" && echo x >"$work/dp/xdir/xsub/x" &&
    echo x >"$work/dp/extra" && echo x >"$work/dp/sub/deeper/extra2"
  jc_want 0 127.0.0.1:del/ "$work/dp" || return 1
  [ -e "$work/dp/extra" ] && [ -e "$work/dp/xdir/xsub/x" ] &&
    [ -e "$work/dp/sub/deeper/extra2" ] ||
    fail "extraneous files went without --delete" || return 1
  jc_want 0 --delete 127.0.0.1:del/ "$work/dp" || return 1
  same_tree "$root/del" "$work/dp"
}
ex=$work/ex
mkdir -p "$ex/cache/inner" "$ex/a/sub" "$ex/sub"
for p in keep.txt app.log a/deep.log cache/c cache/inner/d sub/skip.txt \
  a/sub/skip.txt a/cache; do
  echo "$p" >"$ex/$p"
done
t_exclude() {
  jc_want 0 --exclude '*.log' --exclude=cache/ --exclude sub/skip.txt \
    "$ex/" 127.0.0.1:ex || return 1
  for p in keep.txt a/sub/skip.txt a/cache; do
    [ -f "$root/ex/$p" ] || fail "$p is missing" || return 1
  done
  for p in app.log a/deep.log cache sub/skip.txt; do
    [ ! -e "$root/ex/$p" ] || fail "$p was not excluded" || return 1
  done
}
t_exclude_protects() {
  echo server >"$root/ex/server.log"
  echo server >"$root/ex/a/more.log"
  echo gone >"$root/ex/unlisted"
  # an excluded directory's contents are spared too, at any depth
  mkdir -p "$root/ex/cache/inner" "$root/ex/sub/cache"
  echo server >"$root/ex/cache/inner/kept"
  echo server >"$root/ex/sub/cache/kept"
  jc_want 0 --delete --exclude '*.log' --exclude=cache/ \
    --exclude sub/skip.txt "$ex/" 127.0.0.1:ex || return 1
  [ -f "$root/ex/server.log" ] && [ -f "$root/ex/a/more.log" ] ||
    fail "--delete removed excluded files" || return 1
  [ -f "$root/ex/cache/inner/kept" ] && [ -f "$root/ex/sub/cache/kept" ] ||
    fail "--delete removed files inside an excluded directory" || return 1
  [ ! -e "$root/ex/unlisted" ] || fail "--delete left an extraneous file"
}
dry=$work/dry
mkdir -p "$dry/d"
echo same >"$dry/same"
echo untouched >"$dry/untouched"
echo old >"$dry/changed"
echo gone >"$dry/d/gone"
chmod 0644 "$dry/same"
t_dry_push() {
  jc_want 0 "$dry/" 127.0.0.1:dry || return 1
  echo newer >"$dry/changed"
  echo new >"$dry/d/new"
  rm "$dry/d/gone"
  chmod 0600 "$dry/same"
  echo extra >"$root/dry/extra"
  snapshot "$root/dry" >"$work/snap.before"
  jc_want 0 -n -v --delete "$dry/" 127.0.0.1:dry || return 1
  snapshot "$root/dry" >"$work/snap.after"
  diff "$work/snap.before" "$work/snap.after" || fail "the dry run changed things" ||
    return 1
  for p in changed d/new d/gone extra; do
    grep -q "$p" "$work/last" || fail "-n -v did not list $p" || return 1
  done
}
t_dry_pull() {
  jc_want 0 127.0.0.1:dry/ "$work/drypull" || return 1
  echo changed-at-server >"$root/dry/changed"
  echo new >"$root/dry/new2"
  echo local >"$work/drypull/local-extra"
  snapshot "$work/drypull" >"$work/snap.before"
  jc_want 0 --dry-run -v --delete 127.0.0.1:dry/ "$work/drypull" || return 1
  snapshot "$work/drypull" >"$work/snap.after"
  diff "$work/snap.before" "$work/snap.after" || fail "the dry run changed things" ||
    return 1
  for p in changed new2 local-extra; do
    grep -q "$p" "$work/last" || fail "--dry-run -v did not list $p" || return 1
  done
}
t_verbose() {
  echo newest >"$dry/changed"
  jc_want 0 -v --delete "$dry/" 127.0.0.1:dry || return 1
  for p in changed d/new d/gone extra; do
    grep -q "$p" "$work/last" || fail "-v did not list $p" || return 1
  done
  ! grep -q "untouched" "$work/last" || fail "-v listed an unchanged file" ||
    return 1
  same_tree "$dry" "$root/dry"
}
check "--delete on a push removes extraneous files and dirs (not without it)" t_del_push
check "--delete on a pull removes extraneous files and dirs (not without it)" t_del_pull
check "--exclude (repeated; names, dirs/, anchored paths) skips files" t_exclude
check "--delete spares excluded files and excluded directories' contents" t_exclude_protects
check "-n -v on a push changes nothing and lists what would change" t_dry_push
check "--dry-run -v on a pull changes nothing and lists what would change" t_dry_pull
check "-v lists the changed paths, not unchanged ones" t_verbose

# -- 6. confinement ------------------------------------------------------------
mkdir -p "$work/outside"
echo secret >"$work/outside/secret"
ln -s /etc "$root/evil"
ln -s ../../outside "$root/indir/out"
snapshot "$work/outside" >"$work/outside.snap"
# nothing_outside: the root's neighbourhood is as it was.
nothing_outside() {
  [ ! -e "$work/x" ] || fail "$work/x appeared outside the root" || return 1
  [ ! -e "$etc_probe" ] || fail "$etc_probe appeared" || return 1
  snapshot "$work/outside" | diff "$work/outside.snap" - ||
    fail "$work/outside changed"
}
t_conf_dotdot() {
  jc_want 5 127.0.0.1:../x "$work/pulldir/dd" &&
    jc_want 5 "$work/one/a.bin" 127.0.0.1:../x && nothing_outside
}
t_conf_abs() {
  jc_want 5 127.0.0.1:/etc/passwd "$work/pulldir/pw" &&
    [ ! -e "$work/pulldir/pw" ] &&
    jc_want 5 "$work/one/a.bin" "127.0.0.1:$work/x" && nothing_outside
}
t_conf_link_pull() {
  jc_want 5 127.0.0.1:evil/hostname "$work/pulldir/h" &&
    [ ! -e "$work/pulldir/h" ] &&
    jc_want 5 127.0.0.1:evil/ "$work/pulldir/etc" &&
    [ ! -e "$work/pulldir/etc/passwd" ] &&
    jc_want 5 127.0.0.1:indir/out/secret "$work/pulldir/s" &&
    [ ! -e "$work/pulldir/s" ]
}
t_conf_link_push() {
  jc_want 5 "$work/one/a.bin" "127.0.0.1:evil/$(basename "$etc_probe")" &&
    jc_want 5 "$work/one/a.bin" 127.0.0.1:indir/out/x &&
    jc_want 5 "$tree/" 127.0.0.1:indir/out/ && nothing_outside
}
t_conf_link_itself() {
  # the symlink itself is fine: it travels as a symlink
  jc_want 0 127.0.0.1:evil "$work/pulldir/evil" &&
    [ "$(readlink "$work/pulldir/evil")" = /etc ]
}
check "'..' is refused both ways (exit 5), nothing outside the root" t_conf_dotdot
check "absolute paths are refused both ways (exit 5)" t_conf_abs
check "pulls through a symlink leading outside the root are refused" t_conf_link_pull
check "pushes through a symlink leading outside the root are refused" t_conf_link_push
check "a symlink leading outside is itself served as a symlink" t_conf_link_itself
start_jsrv "$work/jsrv-ro.log" -ro -root "$root" || exit 1
ro_pid=$spid
t_ro_push() {
  jc_want 5 "$work/one/a.bin" 127.0.0.1:ro-x && [ ! -e "$root/ro-x" ] &&
    grep -q "read-only" "$work/last"
}
t_ro_pull() {
  jc_want 0 127.0.0.1:b.bin "$work/one/ro.bin" && cmp "$root/b.bin" "$work/one/ro.bin"
}
check "jsrv -ro refuses pushes (exit 5)" t_ro_push
check "jsrv -ro serves pulls" t_ro_pull
check "jsrv -ro stops on SIGTERM" stop_jsrv "$ro_pid" "$work/jsrv-ro.log"
port=$main_port

# -- 7. two clients at once ----------------------------------------------------
for c in ca cb; do
  mkdir -p "$work/$c/x/y" "$work/$c/z"
  (cd "$work/$c/x" && head -c 1500k /dev/urandom | split -b 10k - f)
  (cd "$work/$c/x/y" && head -c 1M /dev/urandom | split -b 7k - g)
  head -c 4M /dev/urandom >"$work/$c/z/big"
done
t_two() {
  "$bin/jcp/jcp" -p "$port" "$work/ca/" 127.0.0.1:ca >"$work/ca.log" 2>&1 &
  p1=$!
  "$bin/jcp/jcp" -p "$port" "$work/cb/" 127.0.0.1:cb >"$work/cb.log" 2>&1 &
  p2=$!
  wait $p1
  r1=$?
  wait $p2
  r2=$?
  cat "$work/ca.log" "$work/cb.log"
  [ $r1 -eq 0 ] && [ $r2 -eq 0 ] || fail "exits $r1 and $r2" || return 1
  same_tree "$work/ca" "$root/ca" && same_tree "$work/cb" "$root/cb"
}
check "two clients push different trees at once" t_two

# -- 8. SIGKILL of jcp mid-transfer --------------------------------------------
mkdir -p "$root/kill" "$work/k" "$work/k2"
# The sanitizer build is several times slower: it uses a smaller file.
mib=${JSYNC_KILL_MIB:-200}
# JSYNC_KILLS=100 for the TARGETS.md row; the default run kills 10 times.
kills=${JSYNC_KILLS:-10}
head -c "${mib}M" /dev/urandom >"$root/kill/big"
head -c "${mib}M" /dev/urandom >"$work/big.old"
new=$root/kill/big
old=$work/big.old
t_k_measure() {
  t0=$(now)
  jc_want 0 127.0.0.1:kill/big "$work/k/measure" || return 1
  T=$(elapsed_ms "$t0")
  echo "a $mib MiB pull takes $T ms"
  rm -f "$work/k/measure"
}
T=2000
check "a $mib MiB pull (timing the kills)" t_k_measure
# old_or_new FILE: FILE is the old or the new version, never a mix.
old_or_new() {
  if cmp -s "$1" "$old"; then
    echo old
  elif cmp -s "$1" "$new"; then
    echo new
  else
    echo mix
  fi
}
# kill_after MS ARGS...: starts jcp with ARGS, SIGKILLs it after MS ms.
kill_after() {
  ms=$1
  shift
  "$bin/jcp/jcp" -p "$port" "$@" >>"$work/kill.log" 2>&1 &
  kp=$!
  sleep "$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')"
  kill -9 $kp 2>/dev/null
  wait $kp 2>/dev/null
}
leftovers() { find "$1" -maxdepth 1 -name '.big.jsync-*' | wc -l; }
# kill_at_tmp DIR SIZE ARGS...: starts jcp with ARGS and SIGKILLs it once
# the temporary file it writes in DIR (a new .big.jsync-*) passes SIZE
# (find's -size): mid-transfer, whatever the speed.
kill_at_tmp() {
  dir=$1
  size=$2
  shift 2
  touch "$work/marker"
  "$bin/jcp/jcp" -p "$port" "$@" >>"$work/kill.log" 2>&1 &
  kp=$!
  for _ in $(seq 4000); do
    [ -n "$(find "$dir" -maxdepth 1 -name '.big.jsync-*' -newer "$work/marker" \
      -size "+$size" | head -n 1)" ] && break
    kill -0 $kp 2>/dev/null || break
    sleep 0.005
  done
  kill -9 $kp 2>/dev/null
  wait $kp 2>/dev/null
}
rand_ms() { # rand_ms MAX: a random delay in 0.05*MAX .. 0.9*MAX
  awk -v m="$1" -v s="$(od -An -N2 -tu2 /dev/urandom)" \
    'BEGIN { srand(s); printf "%d", m * (0.05 + rand() * 0.85) }'
}
t_k_loop() {
  : >"$work/kill.log"
  for i in $(seq "$kills"); do
    [ "$(old_or_new "$work/k/big")" = old ] || cp "$old" "$work/k/big"
    ms=$(rand_ms "$T")
    kill_after "$ms" 127.0.0.1:kill/big "$work/k/big"
    v=$(old_or_new "$work/k/big")
    echo "kill $i after $ms ms: $v ($(leftovers "$work/k") leftovers)"
    [ "$v" != mix ] || fail "a mix of old and new after a SIGKILL" || return 1
  done
  cat "$work/kill.log"
}
t_k_rerun() {
  jc_want 0 127.0.0.1:kill/big "$work/k/big" && cmp "$new" "$work/k/big"
}
t_k_leftover() {
  cp "$old" "$work/k2/big"
  kill_at_tmp "$work/k2" "$((mib / 4))M" 127.0.0.1:kill/big "$work/k2/big"
  v=$(old_or_new "$work/k2/big")
  [ "$v" = old ] || fail "the kill found $v" || return 1
  ls -la "$work/k2"
  [ "$(leftovers "$work/k2")" -gt 0 ] ||
    fail "no .big.jsync-* leftover after the kill" || return 1
  jc_want 0 --stats 127.0.0.1:kill/big "$work/k2/big" || return 1
  cmp "$new" "$work/k2/big" || return 1
  ls -la "$work/k2"
  [ "$(leftovers "$work/k2")" -eq 0 ] ||
    fail "the leftover is still there after the re-run" || return 1
  lit=$(stat_val literal_bytes)
  [ "$lit" -lt $((mib * 1024 * 1024 * 9 / 10)) ] ||
    fail "the re-run did not reuse the leftover: literal_bytes=$lit"
}
t_k_many() {
  mkdir -p "$work/k3"
  cp "$old" "$work/k3/big"
  for i in 1 2 3 4 5 6; do
    kill_at_tmp "$work/k3" "$((mib / 10))M" 127.0.0.1:kill/big "$work/k3/big"
  done
  v=$(old_or_new "$work/k3/big")
  n=$(leftovers "$work/k3")
  echo "after 6 kills: $v, $n leftovers"
  [ "$v" = old ] && [ "$n" -ge 5 ] || fail "wanted old and 5 or 6 leftovers" ||
    return 1
  jc_want 0 127.0.0.1:kill/big "$work/k3/big" && cmp "$new" "$work/k3/big" ||
    return 1
  [ "$(leftovers "$work/k3")" -eq 0 ] ||
    fail "$(leftovers "$work/k3") leftovers are still there after the re-run"
}
t_k_push() {
  mkdir -p "$root/kpush"
  cp "$old" "$root/kpush/big"
  kill_at_tmp "$root/kpush" "$((mib / 4))M" "$new" 127.0.0.1:kpush/big
  v=$(old_or_new "$root/kpush/big")
  echo "the server's copy after the kill: $v"
  ls -la "$root/kpush"
  [ "$v" != mix ] || fail "a mix of old and new at the server" || return 1
  jc_want 0 "$new" 127.0.0.1:kpush/big && cmp "$new" "$root/kpush/big"
}
check "SIGKILL of a pull, $kills times: old or new, never a mix" t_k_loop
check "a re-run after the kills completes, identical" t_k_rerun
check "a killed pull leaves a leftover that the re-run reuses and removes" t_k_leftover
check "six killed pulls: the completing run removes all their leftovers" t_k_many
check "SIGKILL of a push: the server has old or new; a re-run completes" t_k_push
rm -rf "$work/k" "$work/k2" "$work/k3" "$root/kpush" "$work/big.old"

# -- 9. exit codes -------------------------------------------------------------
# usage_err ARGS...: exit 2, one sentence on stderr (and the hint), no stdout
usage_err() {
  "$bin/jcp/jcp" "$@" >"$work/so" 2>"$work/se"
  urc=$?
  cat "$work/so" "$work/se"
  [ "$urc" -eq 2 ] || fail "exit $urc, wanted 2" || return 1
  [ ! -s "$work/so" ] || fail "stdout is not empty" || return 1
  [ "$(grep -c . "$work/se")" -le 2 ] || fail "more than a sentence" || return 1
  head -n 1 "$work/se" | grep -q '^jcp: [^ ].*\.$' || fail "not a sentence"
}
t_e_noargs() { usage_err; }
t_e_twolocal() { usage_err "$work/one/a.bin" "$work/one/z.bin"; }
t_e_tworemote() { usage_err 127.0.0.1:a 127.0.0.1:b; }
t_e_nosrv() {
  # no flag bounds the wait itself; -idle does (by default it is ~10 s)
  t0=$(now)
  "$bin/jcp/jcp" -p 9 -idle 1000 "$work/one/a.bin" 127.0.0.1:x >"$work/last" 2>&1
  erc=$?
  ms=$(elapsed_ms "$t0")
  cat "$work/last"
  echo "gave up after $ms ms"
  [ "$erc" -eq 4 ] || fail "exit $erc, wanted 4" || return 1
  [ "$ms" -lt 20000 ] || fail "waited $ms ms"
}
t_e_otherca() {
  (
    CKT_CONFIG_DIR="$work/other"
    jc_want 3 "$work/one/a.bin" 127.0.0.1:x
  ) && [ ! -e "$root/x" ]
}
t_e_missing_local() { jc_want 5 "$work/no/such/file" 127.0.0.1:x; }
t_e_missing_remote() { jc_want 5 127.0.0.1:no/such/file "$work/pulldir/"; }
t_e_dst_not_dir() { jc_want 5 "$work/one/a.bin" 127.0.0.1:b.bin/x; }
check "no arguments: usage (exit 2), one sentence" t_e_noargs
check "two local paths: usage (exit 2), one sentence" t_e_twolocal
check "two remote paths: usage (exit 2), one sentence" t_e_tworemote
check "nobody listening: network (exit 4) within 20 s" t_e_nosrv
check "a client from another CA: authentication (exit 3)" t_e_otherca
check "a missing local source: files (exit 5)" t_e_missing_local
check "a missing remote source: files (exit 5)" t_e_missing_remote
check "a remote destination under a file: files (exit 5)" t_e_dst_not_dir

# -- 10. SIGTERM ---------------------------------------------------------------
start_jsrv "$work/jsrv-idle.log" -root "$root" || exit 1
idle_pid=$spid
sleep 0.3
check "SIGTERM to an idle jsrv: exit 0 within 2 s" \
  stop_jsrv "$idle_pid" "$work/jsrv-idle.log"
check "SIGTERM to the jsrv that served it all: exit 0, clean log" \
  stop_jsrv "$main_pid" "$work/jsrv.log"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
