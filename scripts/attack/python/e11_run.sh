#!/usr/bin/env bash
# E11 driver: seconds from `onlyone stop` to the Python holder's exit.
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PY:-$ROOT/target/py-venv/bin/python}; HERE=$(cd "$(dirname "$0")" && pwd)
URL=${PGURL:-postgres://root@127.0.0.1:5432/test}
for busy in ${BUSY:-gil sleep asyncio}; do
  N=e11-$$-$busy; O=$(mktemp)
  $PY $HERE/e11_exit_timing.py $N $URL $busy > $O 2>&1 & P=$!
  until grep -q holding $O; do sleep 0.05; done
  t0=$(date +%s.%N); $ROOT/target/debug/onlyone stop --postgres $URL $N >/dev/null 2>&1
  wait $P; rc=$?; t1=$(date +%s.%N)
  echo "$busy: exit $rc after $(echo "$t1 - $t0" | bc) s (T + G = 3 + 5 s)"
done
