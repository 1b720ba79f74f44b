#!/bin/bash
# The holder's command alone SIGSTOPped (it cannot act on SIGTERM); then
# `--replace`. The supervisor must SIGKILL it after the kill grace and
# release only then; the replacer's command must not overlap (flock witness).
set -u
URL=${1:-postgres://root@127.0.0.1:5432/test}
BIN=${BIN:-$(dirname "$0")/../../../target/debug/onlyone}
DIR=$(mktemp -d); NAME=handoff-stopped-$$; W=$DIR/witness
T=(--heartbeat 100ms --kill-grace 1s --lock-delay 3s)
$BIN -v run --postgres "$URL" --name "$NAME" "${T[@]}" -- flock -n $W sh -c 'echo $$; exec sleep 1000' >$DIR/h.out 2>$DIR/h.err &
H=$!
for _ in $(seq 50); do [ -s $DIR/h.out ] && break; sleep 0.1; done
C=$(head -1 $DIR/h.out); FL=$(ps -o ppid= -p $C | tr -d ' ')
kill -STOP $C $FL
start=$(date +%s.%N)
$BIN -v run --postgres "$URL" --name "$NAME" "${T[@]}" --replace -- flock -n $W -c 'echo new ran' ; rc=$?
end=$(date +%s.%N)
echo "replacer exit $rc after $(echo "$end - $start" | bc)s"
wait $H; echo "holder exit $?"; cat $DIR/h.err
