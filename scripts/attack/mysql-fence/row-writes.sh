#!/usr/bin/env bash
# Tries every SQL path that writes the state table's rows from a session that
# does not hold the row's named lock (view, multi-table UPDATE/DELETE,
# INSERT … SELECT … ON DUPLICATE KEY UPDATE, REPLACE … SELECT, LOAD DATA
# REPLACE/IGNORE, INSERT IGNORE, a trigger-less second table) while a holder
# runs, in a database of its own on the test server, and prints the row after
# each: it must stay "1 held". Found: nothing got through once the INSERT
# guard was added (before it, a planted INSERT of a new name's row did: see
# tests/it/attack_mysql_fence.rs).
set -u
base=${ONLYONE_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
hostport=${base#mysql://root@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}
db=onlyone_amf_rows_$$
bin=$(dirname "$0")/../../../target/debug/onlyone
m() { mariadb --no-defaults -h "$host" -P "$port" -u root -N -B "$@"; }
m -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
url="mysql://root@$host:$port/$db"
"$bin" run --mysql "$url" --name h -- sh -c 'echo ready; exec sleep 60' > /tmp/amf-holder.$$ 2>&1 &
holder=$!
until grep -q ready /tmp/amf-holder.$$; do sleep 0.1; done
ln=$(m "$db" -e "SELECT lock_name FROM onlyone_locks WHERE name='h'")
row() { m "$db" -e "SELECT token, state, IFNULL(owed_ms,'-') FROM onlyone_locks WHERE name='h'"; }
printf '%s\t%s\t0\n' "$ln" h > /tmp/amf-load.$$
chmod 644 /tmp/amf-load.$$
try() { echo "== $1"; m "$db" -e "$2" 2>&1 | tail -1; row; }
try view-delete "CREATE OR REPLACE VIEW v AS SELECT * FROM onlyone_locks; DELETE FROM v"
try view-update "UPDATE v SET state='released'"
try multi-update "CREATE TABLE IF NOT EXISTS t (k VARCHAR(64)); INSERT INTO t VALUES ('$ln'); UPDATE onlyone_locks l JOIN t ON t.k = l.lock_name SET l.state='released', l.owed_ms=0"
try multi-delete "DELETE l FROM onlyone_locks l JOIN t ON t.k = l.lock_name"
try insert-select-odku "INSERT INTO onlyone_locks (lock_name,name,token,state) SELECT lock_name,name,token+1,'released' FROM onlyone_locks WHERE name='h' ON DUPLICATE KEY UPDATE state='released'"
try replace-select "REPLACE INTO onlyone_locks (lock_name,name,token,state) SELECT lock_name,name,token,'released' FROM t2 " 
try insert-ignore-new "INSERT IGNORE INTO onlyone_locks (lock_name,name,token,state,owed_ms) VALUES ('onlyone/$db/new','new',5,'held',99999999999)"
m "$db" -e "SELECT COUNT(*) AS new_rows FROM onlyone_locks WHERE name='new'"
try load-replace "LOAD DATA LOCAL INFILE '/tmp/amf-load.$$' REPLACE INTO TABLE onlyone_locks (lock_name,name,token) SET state='released'"
try load-ignore "LOAD DATA LOCAL INFILE '/tmp/amf-load.$$' IGNORE INTO TABLE onlyone_locks (lock_name,name,token) SET state='released'"
try case-name "UPDATE onlyone_locks SET state='released' WHERE lock_name=UPPER('$ln')"
try get-lock-of-other-case "DO GET_LOCK(UPPER('$ln'),0); UPDATE onlyone_locks SET state='released', owed_ms=0 WHERE name='h'"
try drop-trigger-then-delete "DROP TRIGGER onlyone_guard_delete; DELETE FROM onlyone_locks WHERE name='h'"
echo "(after a dropped trigger, the holder should write its row back at its next heartbeat)"; sleep 3; row
kill $holder; wait $holder 2>/dev/null
m -e "DROP DATABASE $db"; rm -f /tmp/amf-holder.$$ /tmp/amf-load.$$
