#!/bin/bash
# The lost-lock path on PostgreSQL with a signal to onlyone (SIG, TERM)
# during the kill grace: the command ignores SIGTERM; onlyone must still
# SIGKILL it at the end of the grace and exit 74, and a waiter must not
# start before the command is gone.
. "$(dirname "$0")/lib.sh"
n=a10sg$$; L=$T/$n.log; rm -f $L
$O run --postgres $P --name $n --kill-grace 3s -- $W $T/$n.w $L 60 ignore-term 2>$T/$n.h1.err &
h1=$!
wait_enter $L
$O run --postgres $P --name $n --wait --lock-delay 1s -- $W $T/$n.w $L 1 2>$T/$n.h2.err &
h2=$!
sleep 0.5
term_holder $n >/dev/null
sleep 0.5
kill -${SIG:-TERM} $h1; sleep 0.3; kill -${SIG:-TERM} $h1
wait $h1; echo "H1 exit $? (want 74)"
wait $h2; echo "H2 exit $?"
cat $L; echo "--- H1"; cat $T/$n.h1.err
verdict $L
