#!/usr/bin/env bash
# Exit codes and first stderr line of every command in awkward cases, for
# two builds side by side: O=path/to/onlyone codes.sh > out; diff the outputs
# of the build before and after a change. Uses the file backend in a
# scratch directory, and PG (shared server, locks only) when P is set.
set -u
O=${O:?onlyone binary}
S=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$S"' EXIT
export ONLYONE_DIR=$S/locks; mkdir -m 700 "$ONLYONE_DIR"
# Prints the case, the exit code and stderr's first line (pids, times and
# paths masked so that two builds compare).
c() {
  local label=$1; shift
  local err rc
  err=$("$@" 2>&1 >/dev/null </dev/null); rc=$?
  err=$(printf '%s' "$err" | head -1 | sed -E "s#$S#S#g; s/pid [0-9]+/pid N/g; s/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z/T/g; s/\([0-9smh ]+ ago\)/(ago)/g; s/token [0-9]+/token N/g; s/port [0-9]+/port N/g")
  printf '%-40s rc=%-3s %s\n' "$label" "$rc" "$err"
}
hold() { # hold NAME [args]: a holder in the background, waits until held
  local name=$1; shift
  "$O" run --name "$name" "$@" -- sleep 60 >/dev/null 2>&1 &
  for _ in $(seq 100); do "$O" status "$name" "$@" >/dev/null 2>&1 && return; sleep 0.05; done
}
c "run true" "$O" run --name a -- true
c "run false" "$O" run --name a -- false
c "run exit 3" "$O" run --name a -- sh -c 'exit 3'
c "run killed by 9" "$O" run --name a -- sh -c 'kill -9 $$'
c "run killed by TERM" "$O" run --name a -- sh -c 'kill -TERM $$'
c "run not found" "$O" run --name a -- /nonexistent/x
c "run not found in PATH" "$O" run --name a -- no-such-command-a10
c "run not executable" "$O" run --name a -- /etc/passwd
c "run a directory" "$O" run --name a -- /etc
c "run no command" "$O" run --name a --
c "run bad name" "$O" run --name .x -- true
c "run bad name slot" "$O" run --name x@1 -- true
c "run bad timeout" "$O" run --name a --timeout 5 -- true
c "run negative timeout" "$O" run --name a --timeout -5s -- true
c "run huge timeout free" "$O" run --name a --timeout 18446744073709551615s -- true
c "run --max 0" "$O" run --name a --max 0 -- true
c "run --max 1 free" "$O" run --name a --max 1 -- true
c "run --wait and --timeout" "$O" run --name a --wait --timeout 1s -- true
c "run --replace --max" "$O" run --name a --replace --max 2 -- true
c "run restart-delay huge false" timeout 5 "$O" run --name rd --restart on-failure --restart-delay 18446744073709551615s -- false
c "run kill-grace -1s" "$O" run --name a --kill-grace -1s -- true
hold h
c "run held" "$O" run --name h -- true
c "run held conflict-exit-code 0" "$O" run --name h --conflict-exit-code 0 -- true
c "run held conflict-exit-code 256" "$O" run --name h --conflict-exit-code 256 -- true
c "run held timeout 0" "$O" run --name h --timeout 0s -- true
c "run held timeout 1ns" "$O" run --name h --timeout 1ns -- true
c "run held timeout 200ms" "$O" run --name h --timeout 200ms -- true
c "run held --max 1" "$O" run --name h --max 1 -- true
c "run held as plain, --max 2" "$O" run --name h --max 2 -- true
c "status held" "$O" status h
c "status held@1" "$O" status h@1
c "status held@0" "$O" status h@0
c "status free" "$O" status free
c "status all" "$O" status
c "status bad name" "$O" status .x
c "wait held 100ms" "$O" wait h --timeout 100ms
c "wait held 0s" "$O" wait h --timeout 0s
c "wait free" "$O" wait free
c "wait free@3" "$O" wait free@3
c "stop free" "$O" stop free
c "stop sig 32" "$O" stop h --signal 32
c "stop sig 33" "$O" stop h --signal 33
c "stop sig 0" "$O" stop h --signal 0
c "stop sig 65" "$O" stop h --signal 65
c "stop sig RTMIN" "$O" stop h --signal RTMIN
c "stop sig SIGTERM" "$O" stop free --signal SIGTERM
c "stop sig kill lowercase" "$O" stop free --signal kill
c "stop held CONT" "$O" stop h --signal CONT
c "stop held 18 (CONT)" "$O" stop h --signal 18 --timeout 200ms
c "stop held 0s" "$O" stop h --timeout 0s
c "status after stop" "$O" status h
hold p --max 2; hold p --max 2
c "run pool full" "$O" run --name p --max 2 -- true
c "run pool full timeout 100ms" "$O" run --name p --max 2 --timeout 100ms -- true
c "run pool as plain" "$O" run --name p -- true
c "run pool --max 3" "$O" run --name p --max 3 -- true
c "status pool" "$O" status p
c "status pool@2" "$O" status p@2
c "wait pool 100ms" "$O" wait p --timeout 100ms
c "stop pool@1" "$O" stop p@1
c "stop pool" "$O" stop p
c "status pool after" "$O" status p
flock -n "$ONLYONE_DIR/f.lock" sleep 60 & sleep 0.2
c "run held by flock(1)" "$O" run --name f -- true
c "status held by flock(1)" "$O" status f
c "stop held by flock(1)" "$O" stop f
c "replace held by flock(1)" "$O" run --name f --replace -- true
ln -s /etc/hostname "$ONLYONE_DIR/sym.lock"
c "run symlink" "$O" run --name sym -- true
c "status symlink" "$O" status sym
mkdir -m 777 "$S/open"
c "run world-writable dir" "$O" run --dir "$S/open" --name a -- true
c "run dir is a file" "$O" run --dir /etc/hostname --name a -- true
c "run dir uncreatable" "$O" run --dir /proc/nope/x --name a -- true
c "status dir uncreatable" "$O" status --dir /proc/nope/x a
c "stop dir uncreatable" "$O" stop --dir /proc/nope/x a
c "wait dir uncreatable" "$O" wait --dir /proc/nope/x a --timeout 1s
if [ -n "${P:-}" ]; then
  n=a10codes$$
  c "pg run true" "$O" run --postgres "$P" --name $n -- true
  c "pg unreachable" "$O" run --postgres postgres://root@127.0.0.1:1/test --name $n -- true
  c "pg status unreachable" "$O" status --postgres postgres://root@127.0.0.1:1/test $n
  c "pg bad url" "$O" run --postgres 'postgres://[' --name $n -- true
  c "pg heartbeat 0" "$O" run --postgres "$P" --heartbeat 0s --name $n -- true
  c "pg heartbeat huge" "$O" run --postgres "$P" --heartbeat 18446744073709551615s --name $n -- true
  c "pg lock-delay huge" "$O" run --postgres "$P" --lock-delay 18446744073709551615s --name $n -- true
  c "pg key with max" "$O" run --postgres "$P" --key 5 --max 2 --name $n -- true
  hold $n --postgres "$P"
  c "pg run held" "$O" run --postgres "$P" --name $n -- true
  c "pg run held timeout 0" "$O" run --postgres "$P" --name $n --timeout 0s -- true
  c "pg run held timeout 1ns" "$O" run --postgres "$P" --name $n --timeout 1ns -- true
  c "pg run held timeout 300ms" "$O" run --postgres "$P" --name $n --timeout 300ms -- true
  c "pg status held" "$O" status --postgres "$P" $n
  c "pg wait held 300ms" "$O" wait --postgres "$P" $n --timeout 300ms
  c "pg stop sig 32" "$O" stop --postgres "$P" $n --signal 32
  c "pg stop held" "$O" stop --postgres "$P" $n
  c "pg status after stop" "$O" status --postgres "$P" $n
  c "pg stop free" "$O" stop --postgres "$P" $n
fi
