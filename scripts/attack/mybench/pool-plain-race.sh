#!/usr/bin/env bash
# Tries: the pool/plain check (reads only the name's slot rows): plain NAME and
# pool NAME --max 2 started at the same instant, many rounds, fresh names (no rows
# yet: first use) and reused names. Witness: plain takes flock -x, pool members
# flock -s, non-blocking; 99 = plain and pool ran at once.
# PREFIX=... prefixes the names (long: hashed lock names; capitals: hashed too).
# Run: ONLYONE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/amybench scripts/attack/mybench/pool-plain-race.sh ROUNDS
set -u
u=$ONLYONE_TEST_MYSQL_URL; n=${1:-20}; w=$(mktemp); bad=0; declare -A rcs
for i in $(seq "$n"); do
  name=${PREFIX:-}race$((i % 3 == 0 ? 0 : RANDOM))$$
  target/debug/onlyone run --mysql "$u" -n "$name" -- flock -x -n -E 99 "$w" sleep 0.3 2>/dev/null & a=$!
  target/debug/onlyone run --mysql "$u" -n "$name" --max 2 -- flock -s -n -E 99 "$w" sleep 0.3 2>/dev/null & b=$!
  target/debug/onlyone run --mysql "$u" -n "$name" --max 2 -- flock -s -n -E 99 "$w" sleep 0.3 2>/dev/null & c=$!
  wait $a; ra=$?; wait $b; rb=$?; wait $c; rc=$?
  rcs["$ra/$rb/$rc"]=$(( ${rcs["$ra/$rb/$rc"]:-0} + 1 ))
  [[ $ra == 99 || $rb == 99 || $rc == 99 ]] && bad=$((bad+1))
done
for k in "${!rcs[@]}"; do echo "plain/pool/pool rc $k: ${rcs[$k]}"; done
echo "rounds=$n two-at-once=$bad"
