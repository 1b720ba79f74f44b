#!/bin/bash
# Many `--replace` and `stop` at once against a holder whose command exits
# by itself at a random moment (so releases land during the replacers'
# looks and marks). Every protected command takes a non-blocking flock on
# one witness (99 = two at once). Tallies exit codes and the first words
# of each replacer's last message.
#   storm.sh [ITERATIONS] [postgres|mysql] [URL]
# Environment: HOLD_EXTRA (more flags for the first holder, e.g.
# "--restart always"), TRAP=1 (every command ignores SIGTERM), GRACE (the
# kill grace of everyone, default 300ms).
set -u
N=${1:-20}
KIND=${2:-postgres}
case $KIND in
  postgres) URL=${3:-postgres://root@127.0.0.1:5432/test} ;;
  mysql) URL=${3:-mysql://root@127.0.0.1:3306/test} ;;
esac
BIN=$(realpath ${BIN:-$(dirname "$0")/../../../target/debug/onlyone})
DIR=$(mktemp -d); W=$DIR/witness
T=(--heartbeat 100ms --kill-grace "${GRACE:-300ms}" --lock-delay 1s)
TR=""; [ "${TRAP:-0}" = 1 ] && TR="trap '' TERM; "
declare -A tally
for i in $(seq "$N"); do
  NAME=settle-storm-$$-$i
  life=$(printf '0.%03d' $((RANDOM % 400)))
  $BIN run --$KIND "$URL" --name "$NAME" "${T[@]}" ${HOLD_EXTRA:-} -- \
    sh -c "${TR}exec flock -n -E 99 $W sh -c '${TR}echo ready; sleep $life'" >"$DIR/h.out" 2>"$DIR/h.err" &
  H=$!
  for _ in $(seq 100); do grep -q ready "$DIR/h.out" && break; sleep 0.01; done
  sleep "$(printf '0.%03d' $((RANDOM % 400)))"
  pids=()
  for r in 1 2 3; do
    $BIN run --$KIND "$URL" --name "$NAME" "${T[@]}" --replace -- \
      sh -c "${TR}exec flock -n -E 99 $W sh -c '${TR}echo ran; sleep 0.2'" >"$DIR/r$r.out" 2>"$DIR/r$r.err" &
    pids+=($!)
  done
  $BIN stop --$KIND "$URL" "$NAME" >"$DIR/s.out" 2>"$DIR/s.err" &
  S=$!
  for r in 1 2 3; do
    wait "${pids[$((r-1))]}"; c=$?
    msg=$(tail -1 "$DIR/r$r.err" | sed -E "s/^onlyone: //; s/'[^']*'/'X'/g; s/:.*//" | cut -c1-70)
    tally["replace $c $msg"]=$(( ${tally["replace $c $msg"]:-0} + 1 ))
    [ $c = 99 ] && echo "TWO AT ONCE: iteration $i replacer $r"
    if [ $c != 0 ] && [ $c != 75 ] && [ $c != 143 ] && [ $c != 137 ]; then echo "iteration $i replacer $r: $c"; cat "$DIR/r$r.err"; fi
  done
  wait $S; c=$?
  msg=$(tail -1 "$DIR/s.err" | sed -E "s/^onlyone: //; s/'[^']*'/'X'/g; s/:.*//" | cut -c1-70)
  tally["stop $c $msg"]=$(( ${tally["stop $c $msg"]:-0} + 1 ))
  if [ $c != 0 ] && [ $c != 3 ]; then echo "iteration $i stop: $c"; cat "$DIR/s.err"; fi
  wait $H; c=$?
  tally["holder $c"]=$(( ${tally["holder $c"]:-0} + 1 ))
  [ $c = 99 ] && echo "TWO AT ONCE: iteration $i holder"
done
for k in "${!tally[@]}"; do echo "${tally[$k]}  $k"; done | sort -k2
rm -rf "$DIR"
