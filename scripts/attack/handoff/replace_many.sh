#!/bin/bash
# N concurrent `run --replace` against one PostgreSQL holder; every command
# takes `flock -n` on a witness file, so two at once is proven by the
# kernel. Usage: replace_many.sh [N] [URL]
set -u
N=${1:-5}
URL=${2:-postgres://root@127.0.0.1:5432/test}
BIN=${BIN:-$(dirname "$0")/../../../target/debug/onlyone}
DIR=$(mktemp -d)
NAME=handoff-many-$$
T=(--heartbeat 100ms --kill-grace 300ms --lock-delay 2s)
W=$DIR/witness
CMD="flock -n $W -c 'echo start \$ONLYONE_TOKEN; sleep 3; echo end' || echo OVERLAP"
$BIN -v run --postgres "$URL" --name "$NAME" "${T[@]}" -- sh -c "$CMD; exec sleep 1000" >$DIR/holder.out 2>$DIR/holder.err &
HOLDER=$!
for _ in $(seq 50); do grep -q start $DIR/holder.out 2>/dev/null && break; sleep 0.1; done
for i in $(seq "$N"); do
  $BIN -v run --postgres "$URL" --name "$NAME" "${T[@]}" --replace -- sh -c "$CMD" >$DIR/r$i.out 2>$DIR/r$i.err &
  PIDS[$i]=$!
done
for i in $(seq "$N"); do wait ${PIDS[$i]}; echo "replacer $i: exit $?  $(tr '\n' ' ' <$DIR/r$i.out)"; done
kill $HOLDER 2>/dev/null; wait $HOLDER; echo "holder: exit $?"
grep -h OVERLAP $DIR/*.out && echo "TWO AT ONCE"
for i in $(seq "$N"); do echo "--- r$i"; cat $DIR/r$i.err; done
echo "--- holder"; cat $DIR/holder.err
psql "$URL" -Atc "select token,state,stopped_token from onlyone_locks where name='$NAME'" 2>/dev/null
