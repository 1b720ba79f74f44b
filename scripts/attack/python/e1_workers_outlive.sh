#!/usr/bin/env bash
# E1: a multiprocessing worker outlives its parent's lock.
# CASE=kill (parent SIGKILLed), CASE=exit (parent's main returns while a
# non-daemon worker still runs), CASE=pglost (PG session terminated).
set -u
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PY:-$ROOT/target/py-venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
S=$(mktemp -d /tmp/a13-e1.XXXX); chmod 700 $S; mkdir -m 700 $S/locks
N=e1-$$-$RANDOM; W=$S/witness; L=$S/log
CASE=${CASE:-kill}
WHERE=$S/locks; [[ $CASE == pglost ]] && WHERE=${PGURL:-postgres://root@127.0.0.1:5432/test}
if [[ $CASE == exit ]]; then
  $PY $HERE/bot_workers.py $N $WHERE $W $L exit > $S/out1 2>&1 &
  sleep 1.5
  $PY $HERE/bot_workers.py $N $WHERE $W $L exit > $S/out2 2>&1; echo "second bot exit $?"
  wait; sleep 4.5
else
  $PY $HERE/bot_workers.py $N $WHERE $W $L forever > $S/out1 2>&1 &
  P1=$!
  until grep -q started $S/out1; do sleep 0.05; done
  if [[ $CASE == kill ]]; then kill -KILL $P1; else $ROOT/target/debug/onlyone stop --postgres $WHERE $N; fi
  wait $P1; echo "first bot exit $?"
  sleep ${AFTER:-0.5}
  $PY $HERE/bot_workers.py $N $WHERE $W $L forever > $S/out2 2>&1 &
  P2=$!
  for i in $(seq 1 300); do grep -q "OVERLAP\|Error\|exit" $L $S/out2 2>/dev/null && break; sleep 0.05; done
  sleep 0.5
  kill $P2 2>/dev/null

fi
echo "--- log"; cat $L; echo "--- out1"; cat $S/out1; echo "--- out2"; cat $S/out2
# kill leftover workers (they are ours: started by these bots)
for pid in $(awk '/WORKER-ENTER/{print $2}' $L); do kill -KILL $pid 2>/dev/null; done
grep -q OVERLAP $L && echo "VERDICT: OVERLAP (two instances' workers at once)" || echo "VERDICT: no overlap"
