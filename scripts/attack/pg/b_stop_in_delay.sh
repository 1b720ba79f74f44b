#!/bin/bash
# B: stop (or --replace) of a holder that is waiting out its lock-delay.
. "$(dirname "$0")/lib.sh"
L=$T/b.log; rm -f $L $T/b.w
$O run --name b --kill-grace 1s -- $W $T/b.w $L 30 2>$T/b.h1.err &
wait_enter $L
term_holder b        # H1 lost uncleanly: the next holder waits the lock-delay
sleep 0.5
$O run --name b ${H2FLAGS:-} -- $W $T/b.w $L 2 2>$T/b.h2.err &
h2=$!
sleep 2              # H2 is in its lock-delay (10 s)
date +%s.%N
if [ -n "$REPLACE" ]; then
  $O run --name b --replace -- $W $T/b.w $L 1; echo "replace exit $?"
else
  $O stop b; echo "stop exit $?"
fi
date +%s.%N
wait $h2; echo "H2 exit $?"
wait
cat $L; echo ---; cat $T/b.h2.err
