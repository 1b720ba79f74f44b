#!/bin/bash
# K: --max 2 full; W1 heads the queue, W2 behind; W1 is ${ACT:-KILL}ed; then a slot frees.
. "$(dirname "$0")/lib.sh"
L=$T/k.log; rm -f $L
$O run --name k --max 2 -- $W $T/k1.w $L 4 2>/dev/null &
$O run --name k --max 2 -- $W $T/k2.w $L 60 2>/dev/null & s2=$!
wait_enter $L 2
$O run --name k --max 2 --wait -- $W $T/k3.w $L 1 2>$T/k.w1.err & w1=$!
sleep 0.5
$O run --name k --max 2 --wait -- $W $T/k4.w $L 1 2>$T/k.w2.err & w2=$!
sleep 0.5
psql -qAt $U -c "select count(*) from pg_stat_activity where application_name like 'onlyone:k%'"
kill -$ACT $w1; t0=$(date +%s.%N)
wait $w2; echo "W2 exit $? after $(echo "$(date +%s.%N) - $t0" | bc) s (slot 1 frees 3 s after the kill)"
psql -qAt $U -c "select count(*) from pg_stat_activity where application_name like 'onlyone:k%'"
kill -CONT $w1 2>/dev/null; wait $w1; echo "W1 exit $?"; kill $s2; wait
cat $L
