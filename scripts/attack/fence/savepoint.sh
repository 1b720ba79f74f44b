#!/bin/sh
# Fence in a savepoint that is rolled back: are its locks (NAME@fence shared,
# row FOR SHARE) still held by the transaction afterwards?
U=postgres://root@127.0.0.1:5432/test; export U
T=a14s
OO=${OO:-/work/wt/a14/target/debug/onlyone}
$OO run --postgres "$U" --table $T --name sp -- sh -c '
psql -qXAt "$U" -c "BEGIN; SAVEPOINT s; $ONLYONE_FENCE; ROLLBACK TO s; SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = '"'advisory'"'; COMMIT;"' 
psql -qX "$U" -c "DROP TABLE IF EXISTS $T; DROP FUNCTION IF EXISTS ${T}_fence(text,bigint)"
