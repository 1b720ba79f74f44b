#!/bin/bash
# The lost-lock path on PostgreSQL: the holder's session is ended
# (pg_terminate_backend); a waiter queues meanwhile. The command must be
# stopped (SIGTERM, then SIGKILL after --kill-grace when it ignores TERM)
# and onlyone exit 74; the waiter must start only after the lock-delay.
# IGNORE=ignore-term makes the command ignore SIGTERM.
. "$(dirname "$0")/lib.sh"
n=a10lost$$; L=$T/$n.log; rm -f $L
$O run --postgres $P --name $n --kill-grace ${GRACE:-2s} -- $W $T/$n.w $L 30 ${IGNORE:-} 2>$T/$n.h1.err &
h1=$!
wait_enter $L
$O run --postgres $P --name $n --wait -- $W $T/$n.w $L 1 2>$T/$n.h2.err &
h2=$!
sleep 1
echo "terminate at $(python3 -c 'import time;print(f"{time.monotonic():.3f}")')"
term_holder $n
wait $h1; echo "H1 exit $? (want 74)"
wait $h2; echo "H2 exit $?"
cat $L; echo "--- H1"; cat $T/$n.h1.err; echo "--- H2"; cat $T/$n.h2.err
verdict $L
