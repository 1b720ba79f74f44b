#!/bin/bash
# `--replace` of a starter that is sitting out a lock-delay (its
# predecessor was SIGKILLed): the starter answers by not starting, but the
# replacer's answer bound (T + G + 1 s) may end before the starter's delay.
set -u
URL=${1:-postgres://root@127.0.0.1:5432/test}
BIN=${BIN:-$(dirname "$0")/../../../target/debug/onlyone}
DIR=$(mktemp -d); NAME=handoff-delay-$$
T=(--heartbeat 100ms --kill-grace 300ms --lock-delay 4s)
$BIN run --postgres "$URL" --name "$NAME" "${T[@]}" -- sh -c 'echo ready; exec sleep 1000' >$DIR/h0.out 2>&1 &
H0=$!
for _ in $(seq 50); do grep -q ready $DIR/h0.out && break; sleep 0.1; done
kill -KILL $H0; wait $H0 2>/dev/null
$BIN -v run --postgres "$URL" --name "$NAME" "${T[@]}" -- sh -c 'echo starter ran' >$DIR/s.out 2>$DIR/s.err &
S=$!
sleep 0.7
start=$(date +%s.%N)
$BIN -v run --postgres "$URL" --name "$NAME" "${T[@]}" --replace -- sh -c 'echo replacer ran' 2>$DIR/r.err; rc=$?
end=$(date +%s.%N)
echo "replacer exit $rc after $(echo "$end - $start" | bc)s"; cat $DIR/r.err
wait $S; echo "starter exit $?"; cat $DIR/s.out $DIR/s.err
