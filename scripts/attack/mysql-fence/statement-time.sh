#!/usr/bin/env bash
# An account with a statement time limit (MariaDB: CREATE USER … WITH
# MAX_STATEMENT_TIME 2) as the next holder while the previous holder's
# fenced transaction stays open: does the next holder's wait for it end
# early (and what does it say), and does its command ever start before the
# transaction ends? Prints the next holder's stderr and whether its command
# ran before the COMMIT.
set -u
base=${ONLYONE_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
hostport=${base#mysql://root@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}
db=onlyone_amf_mst_$$
user=amf_mst_$$
bin=$(dirname "$0")/../../../target/debug/onlyone
m() { mariadb --no-defaults -h "$host" -P "$port" -u root -N -B "$@"; }
m -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db; CREATE USER '$user'@'%' WITH MAX_STATEMENT_TIME 2; GRANT ALL ON $db.* TO '$user'@'%'; GRANT SELECT ON mysql.proc TO '$user'@'%'"
url="mysql://root@$host:$port/$db"
uurl="mysql://$user@$host:$port/$db"
out=/tmp/amf-mst.$$; mkdir -p $out
"$bin" run --mysql "$url" --name j -- sh -c 'echo "$ONLYONE_FENCE"; exec sleep 600' > $out/h1 2>&1 &
h1=$!
until [ -s $out/h1 ]; do sleep 0.1; done
fence=$(head -1 $out/h1)
mkfifo $out/in
m "$db" -n --force < $out/in > $out/prog 2>&1 &
prog=$!
exec 7> $out/in
echo "START TRANSACTION; $fence; SELECT 'fenced';" >&7
until grep -q fenced $out/prog; do sleep 0.1; done
kill -KILL $h1   # the holder dies; its command's sleep and the program do not
conn=$(m -e "SELECT IS_USED_LOCK('onlyone/$db/j')"); [ "$conn" != NULL ] && m -e "KILL $conn" 2>/dev/null
"$bin" run --mysql "$uurl" --name j --wait -- sh -c 'echo "next started $(date +%s.%N)"' > $out/h2 2>$out/h2err &
h2=$!
sleep 12
echo "COMMIT; SELECT 'committed', UNIX_TIMESTAMP(NOW(6));" >&7
wait $h2; echo "next holder exit: $?"
cat $out/h2; echo "-- its stderr:"; cat $out/h2err | cut -c1-300 | sort | uniq -c | head; echo "-- program:"; cat $out/prog
exec 7>&-; kill $prog 2>/dev/null
m -e "DROP DATABASE $db; DROP USER '$user'@'%'"; rm -rf $out
