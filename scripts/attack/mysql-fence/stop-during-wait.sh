#!/usr/bin/env bash
# `onlyone stop` (and `status`) while the next holder waits for the previous
# holder's fenced transactions: the named lock is the next holder's session,
# the row still the previous holder's. What do stop/status say and return,
# and does the waiting starter's command start before the fenced
# transaction ends?
set -u
base=${ONLYONE_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
hostport=${base#mysql://root@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}
db=onlyone_amf_sdw_$$
bin=$(dirname "$0")/../../../target/debug/onlyone
m() { mariadb --no-defaults -h "$host" -P "$port" -u root -N -B "$@"; }
m -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
url="mysql://root@$host:$port/$db"
out=/tmp/amf-sdw.$$; mkdir -p $out
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
h1sleep=$(pgrep -P $h1)
kill -KILL $h1
"$bin" run --mysql "$url" --name j --wait -- sh -c 'echo "next started"; exec sleep 600' > $out/h2 2>$out/h2err &
h2=$!
until grep -q "waiting for the fenced" $out/h2err; do sleep 0.1; done
echo "-- status:"; "$bin" status --mysql "$url" j; echo "status exit $?"
echo "-- stop:"; timeout 30 "$bin" stop --mysql "$url" j; echo "stop exit $?"
sleep 1
echo "-- next holder out so far:"; cat $out/h2; kill -0 $h2 2>/dev/null && echo "next holder still running"
echo "COMMIT; SELECT 'committed';" >&7
sleep 2; cat $out/h2; echo "-- h2 stderr:"; cut -c1-250 $out/h2err
kill $h2 2>/dev/null; wait $h2 2>/dev/null; echo "h2 exit $?"
exec 7>&-; kill $prog 2>/dev/null; [ -n "$h1sleep" ] && kill $h1sleep 2>/dev/null
m -e "DROP DATABASE $db"; rm -rf $out
