#!/bin/bash
# E: --table pg_temp.locks: a temporary table per session; dies with the holder's session
. "$(dirname "$0")/lib.sh"
L=$T/e.log; rm -f $L $T/e.w
$O run --name e --table ${T:-pg_temp.locks} --kill-grace 8s -- $W $T/e.w $L 20 ignore-term 2>$T/e.h1.err &
wait_enter $L
term_holder e
sleep 0.3
$O run --name e --table ${T:-pg_temp.locks} -- $W $T/e.w $L 1 2>$T/e.h2.err; echo "H2 exit $?"
wait; cat $L $T/e.h*.err
