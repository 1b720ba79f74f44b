#!/usr/bin/env bash
# E3 driver: SHAPE=loop|asyncio
set -u
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PY:-$ROOT/target/py-venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
URL=${PGURL:-postgres://root@127.0.0.1:5432/test}
N=e3-$$-$RANDOM; O=$(mktemp)
$PY $HERE/e3_raise_swallowed.py $N $URL ${SHAPE:-loop} > $O 2>&1 &
P=$!
until grep -q holding $O; do sleep 0.05; done
$ROOT/target/debug/onlyone stop --postgres $URL $N; echo "stopped at $(date +%s.%N)"
# a successor, as cron would start it
timeout 30 $ROOT/target/debug/onlyone run --postgres $URL --name $N -- sh -c 'echo "SUCCESSOR-RUNS $(date +%s.%N)"; sleep 1'
sleep 1
kill $P 2>/dev/null; wait $P
echo "--- bot"; grep -v "^WORKING" $O | head -20; echo "... last WORKING lines:"; grep WORKING $O | tail -3
