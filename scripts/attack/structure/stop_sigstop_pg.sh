#!/bin/bash
# `onlyone stop NAME --signal N` for a signal whose default action stops
# a process (19 STOP, 20 TSTP, 21 TTIN, 22 TTOU): the supervisor is
# stopped, its command runs on; on PostgreSQL the server ends the silent
# session after T + 2 s and a waiter takes the lock. SIG (19) picks one.
. "$(dirname "$0")/lib.sh"
n=a10sigstop$$; L=$T/$n.log; rm -f $L
$O run --postgres $P --name $n -- $W $T/$n.w $L 40 2>$T/$n.h1.err &
h1=$!
wait_enter $L
$O run --postgres $P --name $n --wait -- $W $T/$n.w $L 1 2>$T/$n.h2.err &
h2=$!
sleep 0.5
s=$(date +%s)
$O stop --postgres $P $n --signal ${SIG:-19}; echo "stop exit $? after $(( $(date +%s) - s ))s"
wait $h2; echo "H2 exit $?"
kill -CONT $h1; wait $h1; echo "H1 exit $?"
cat $L; echo "--- H1"; cat $T/$n.h1.err; echo "--- H2"; cat $T/$n.h2.err
verdict $L
