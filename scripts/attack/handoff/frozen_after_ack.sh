#!/bin/bash
# The holder's supervisor SIGSTOPped right after it acknowledged a
# --replace request, while its command is still stopping (1 s after
# SIGTERM, holding the witness). The replacer must not run its command
# while the old one holds the witness.
set -u
URL=${1:-postgres://root@127.0.0.1:5432/test}
BIN=$(realpath ${BIN:-$(dirname "$0")/../../../target/debug/onlyone})
DIR=$(mktemp -d); NAME=handoff-ackfrozen-$$; W=$DIR/witness
T=(--heartbeat 100ms --kill-grace 2s --lock-delay 2s)
$BIN -v run --postgres $URL --name $NAME "${T[@]}" -- sh -c "exec flock -n -E 99 $W sh -c 'trap \"sleep 1; exit 7\" TERM; echo ready; while :; do sleep 0.1; done'" >$DIR/h.out 2>$DIR/h.err &
H=$!
for _ in $(seq 50); do grep -q ready $DIR/h.out && break; sleep 0.1; done
$BIN -v run --postgres $URL --name $NAME --heartbeat 100ms --kill-grace 300ms --lock-delay 2s --replace -- sh -c "flock -n -E 99 $W -c 'echo ran' ; echo \"replacer command: \$?\"; ps -eo pid,ppid,pgid,stat,lstart,cmd | grep -v grep | grep -E 'sleep|flock|onlyone run' ; ls -l /proc/*/fd 2>/dev/null | grep -B0 $W" >$DIR/r.out 2>$DIR/r.err &
R=$!
for _ in $(seq 100); do grep -q "stopped by a request" $DIR/h.err && break; sleep 0.02; done
kill -STOP $H; date +%T.%N; echo "frozen supervisor $H"
ps -eo pid,ppid,pgid,stat,cmd | grep -v grep | grep -E "sleep|flock|$H"
wait $R; echo "replacer exit $?"; date +%T.%N; cat $DIR/r.out; cut -c1-200 $DIR/r.err
for p in /proc/[0-9]*; do ls -l $p/fd 2>/dev/null | grep -q $W && echo "holds witness: ${p#/proc/} $(tr '\0' ' ' <$p/cmdline)"; done
kill -CONT $H; wait $H; echo "holder exit $?"; cat $DIR/h.err
