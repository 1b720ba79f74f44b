#!/usr/bin/env bash
# Tries: finding 2 (frozen-pool-then-plain.sh) on PostgreSQL: a pool member whose
# supervisor is frozen loses its session (idle timeout); does a plain starter honour the
# slot's lock-delay? Witness as there.
# Run: scripts/with-postgres scripts/attack/mybench/frozen-pool-then-plain-pg.sh
set -u
u=$ONLYONE_TEST_POSTGRES_URL; w=$(mktemp); name=frz$$; out=$(mktemp)
target/debug/onlyone run --postgres "$u" -n "$name" --max 2 --heartbeat 200ms --lock-delay 5s -- \
  sh -c "echo ready; exec flock -s -n -E 99 $w sleep 20" >"$out" &
sup=$!
until grep -q ready "$out"; do sleep 0.05; done
kill -STOP $sup
until ! target/debug/onlyone status --postgres "$u" "$name@1" >/dev/null 2>&1; do sleep 0.2; done
echo "slot free at $(date +%T.%N)"
target/debug/onlyone run --postgres "$u" -n "$name" --heartbeat 200ms --lock-delay 5s --timeout 30s -- flock -x -n -E 99 "$w" true
echo "plain rc=$? at $(date +%T.%N)"
kill -CONT $sup; kill $sup; wait
