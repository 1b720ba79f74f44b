#!/usr/bin/env bash
# Tries: a pool member (--max 2) whose supervisor is frozen (SIGSTOP) loses its session at
# wait_timeout while its command runs on; does a PLAIN starter of the same name honour the
# slot's lock-delay, or start beside the still-running pool command? Witness: pool command
# flock -s, plain flock -x, non-blocking (99 = at once).
# Run: ONLYONE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/amybench scripts/attack/mybench/frozen-pool-then-plain.sh
set -u
u=$ONLYONE_TEST_MYSQL_URL; w=$(mktemp); name=frz$$; out=$(mktemp)
target/debug/onlyone run --mysql "$u" -n "$name" --max 2 --heartbeat 200ms --lock-delay 5s -- \
  sh -c "echo ready; exec flock -s -n -E 99 $w sleep 20" >"$out" &
sup=$!
until grep -q ready "$out"; do sleep 0.05; done
kill -STOP $sup
ln=$(target/debug/onlyone status --mysql "$u" "$name@1" 2>&1 | grep -o "lock '[^']*'" | head -1 | cut -d"'" -f2)
echo "slot lock $ln"
until [[ $(mysql --no-defaults -h127.0.0.1 -P3306 -uroot -N -e "SELECT IS_USED_LOCK('$ln') IS NULL") == 1 ]]; do sleep 0.2; done
echo "slot session ended at $(date +%T.%N)"
target/debug/onlyone run --mysql "$u" -n "$name" --heartbeat 200ms --lock-delay 5s --timeout 30s -- flock -x -n -E 99 "$w" true
echo "plain rc=$? at $(date +%T.%N)"
kill -CONT $sup; kill $sup; wait
