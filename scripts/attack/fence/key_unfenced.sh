#!/bin/sh
# With --key, ONLYONE_FENCE is unset; the README psql snippet then runs an
# empty -c and commits the write unfenced with exit 0 (finding 3).
U=postgres://root@127.0.0.1:5432/test
OO=${OO:-/work/wt/a14/target/debug/onlyone}
$OO run --postgres $U --table a14k --key 4242 --name keyed -- sh -c '
echo "ONLYONE_FENCE=[${ONLYONE_FENCE-unset}]"
psql -qXAt '$U' -v ON_ERROR_STOP=1 -c "BEGIN" -c "$ONLYONE_FENCE" -c "SELECT 1" -c "COMMIT"
echo "snippet rc=$? (0 = the write committed without a fence)"'
psql -qX $U -c "DROP TABLE IF EXISTS a14k; DROP FUNCTION IF EXISTS a14k_fence(text,bigint)"
