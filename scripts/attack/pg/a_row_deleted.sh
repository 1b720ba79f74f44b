#!/bin/bash
# A: the state row is deleted while held (an operator's cleanup), then the holder loses its session.
. "$(dirname "$0")/lib.sh"
L=$T/a.log; rm -f $L $T/a.w
$O run --name a --kill-grace 8s -- $W $T/a.w $L 30 ignore-term 2>$T/a.h1.err &
wait_enter $L
psql -qAt $U -c "${CLEAN:-DELETE FROM public.onlyone_locks WHERE name = 'a'}"
term_holder a
sleep 0.3
$O run --name a -- $W $T/a.w $L 1 2>$T/a.h2.err; echo "H2 exit $?"
wait
cat $L; cat $T/a.h1.err $T/a.h2.err
