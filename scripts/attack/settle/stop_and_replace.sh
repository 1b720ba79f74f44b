#!/bin/bash
# `stop` and `--replace` launched at the same moment against one holder
# (its command holds the witness until stopped). PostgreSQL or MySQL.
# Tallies both exit codes with the replacer's last message.
#   stop_and_replace.sh [ITERATIONS] [postgres|mysql] [URL]
set -u
N=${1:-20}
KIND=${2:-postgres}
case $KIND in
  postgres) URL=${3:-postgres://root@127.0.0.1:5432/test} ;;
  mysql) URL=${3:-mysql://root@127.0.0.1:3306/test} ;;
esac
BIN=$(realpath ${BIN:-$(dirname "$0")/../../../target/debug/onlyone})
DIR=$(mktemp -d); W=$DIR/witness
T=(--heartbeat 100ms --kill-grace 300ms --lock-delay 1s)
declare -A tally
for i in $(seq "$N"); do
  NAME=settle-sr-$$-$i
  $BIN run --$KIND "$URL" --name "$NAME" "${T[@]}" -- \
    sh -c "exec flock -n -E 99 $W sh -c 'echo ready; exec sleep 1000'" >"$DIR/h.out" 2>"$DIR/h.err" &
  H=$!
  for _ in $(seq 200); do grep -q ready "$DIR/h.out" && break; sleep 0.01; done
  J=${JITTER:-30}
  ( sleep "$(printf '0.%03d' $((RANDOM % J)))"
    exec $BIN run --$KIND "$URL" --name "$NAME" "${T[@]}" --replace -- \
      sh -c "exec flock -n -E 99 $W sh -c 'echo ran'" ) >"$DIR/r.out" 2>"$DIR/r.err" &
  R=$!
  ( sleep "$(printf '0.%03d' $((RANDOM % J)))"
    exec $BIN stop --$KIND "$URL" "$NAME" ) >"$DIR/s.out" 2>"$DIR/s.err" &
  S=$!
  wait $R; rc=$?; wait $S; sc=$?; wait $H; hc=$?
  msg=$(tail -1 "$DIR/r.err" | sed -E "s/^onlyone: //; s/'[^']*'/'X'/g; s/:.*//" | cut -c1-60)
  k="replace $rc stop $sc holder $hc | $msg"
  tally[$k]=$(( ${tally[$k]:-0} + 1 ))
  { [ $rc = 99 ] || [ $hc = 99 ]; } && echo "TWO AT ONCE: iteration $i"
done
for k in "${!tally[@]}"; do echo "${tally[$k]}  $k"; done | sort -k2
rm -rf "$DIR"
