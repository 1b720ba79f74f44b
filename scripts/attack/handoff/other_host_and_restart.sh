#!/bin/bash
# (1) `stop` of a holder whose hostname differs (its own UTS namespace):
# only the database can reach it. (2) a `--restart always` holder asked to
# stop must not start its command again.
set -u
URL=${1:-postgres://root@127.0.0.1:5432/test}
BIN=$(realpath ${BIN:-$(dirname "$0")/../../../target/debug/onlyone})
DIR=$(mktemp -d); NAME=handoff-host-$$
T=(--heartbeat 100ms --kill-grace 300ms --lock-delay 2s)
unshare -u sh -c "hostname otherhost; exec $BIN -v run --postgres $URL --name $NAME ${T[*]} -- sh -c 'echo ready; exec sleep 1000'" >$DIR/h.out 2>$DIR/h.err &
H=$!
for _ in $(seq 50); do grep -q ready $DIR/h.out && break; sleep 0.1; done
$BIN status $NAME --postgres $URL | cut -c1-120
$BIN stop $NAME --postgres $URL --timeout 3s; echo "stop exit $?"
wait $H; echo "holder exit $?"; cat $DIR/h.err
$BIN stop $NAME --postgres $URL; echo "stop of a free lock: exit $?"
NAME=handoff-restart-$$
$BIN -v run --postgres $URL --name $NAME "${T[@]}" --restart always -- sh -c 'echo run >>'$DIR/runs'; sleep 0.5; exit 1' 2>$DIR/r.err &
R=$!
sleep 1.2
$BIN stop $NAME --postgres $URL --timeout 3s; echo "stop exit $?"
wait $R; echo "restarting holder exit $?"; sleep 1; echo "runs: $(wc -l <$DIR/runs)"; cat $DIR/r.err
