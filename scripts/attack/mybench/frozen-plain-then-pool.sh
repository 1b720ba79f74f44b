#!/usr/bin/env bash
# Tries: the reverse of frozen-pool-then-plain.sh: a plain holder whose supervisor is frozen
# loses its session at wait_timeout while its command runs on; does a pool (--max 2) starter
# honour the plain lock's lock-delay? Witness: plain flock -x, pool flock -s (99 = at once).
# Run: ONLYONE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/amybench scripts/attack/mybench/frozen-plain-then-pool.sh
set -u
u=$ONLYONE_TEST_MYSQL_URL; w=$(mktemp); name=frp$$; out=$(mktemp)
target/debug/onlyone run --mysql "$u" -n "$name" --heartbeat 200ms --lock-delay 5s -- \
  sh -c "echo ready; exec flock -x -n -E 99 $w sleep 20" >"$out" &
sup=$!
until grep -q ready "$out"; do sleep 0.05; done
kill -STOP $sup
until ! target/debug/onlyone status --mysql "$u" "$name" >/dev/null 2>&1; do sleep 0.2; done
echo "plain lock free at $(date +%T.%N)"
target/debug/onlyone run --mysql "$u" -n "$name" --max 2 --heartbeat 200ms --lock-delay 5s --timeout 30s -- flock -s -n -E 99 "$w" true
echo "pool rc=$? at $(date +%T.%N)"
kill -CONT $sup; kill $sup; wait
