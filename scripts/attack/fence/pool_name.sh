#!/bin/sh
# README snippets fence with (ONLYONE_NAME, ONLYONE_TOKEN); under --max the
# lock is NAME@SLOT, so the current holder is told its token is stale.
U=postgres://root@127.0.0.1:5432/test
T=a14m
OO=${OO:-/work/wt/a14/target/debug/onlyone}
$OO run --postgres $U --table $T --max 2 --name pool -- sh -c '
echo "NAME=$ONLYONE_NAME TOKEN=$ONLYONE_TOKEN FENCE=$ONLYONE_FENCE"
psql -qXAt '$U' -v ON_ERROR_STOP=1 -c "BEGIN" -c "SELECT public.'$T'_fence('"'"'$ONLYONE_NAME'"'"', $ONLYONE_TOKEN)" -c COMMIT'
echo "rc=$? (1 = the holder itself was refused)"
psql -qX $U -c "DROP TABLE IF EXISTS $T; DROP FUNCTION IF EXISTS ${T}_fence(text,bigint)"
