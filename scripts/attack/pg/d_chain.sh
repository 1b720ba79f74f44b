#!/bin/bash
# D: chain of unclean holders with different kill graces; H2 is ended during its delay by $H2END (term|kill|timeout|session)
. "$(dirname "$0")/lib.sh"
L=$T/d.log; rm -f $L $T/d.w
$O run --name d --kill-grace 12s -- $W $T/d.w $L 40 ignore-term 2>$T/d.h1.err &
wait_enter $L
term_holder d; t0=$(date +%s.%N)
sleep 0.3
case $H2END in
 timeout) $O run --name d --kill-grace 1s --lock-delay 4s --timeout 1s -- $W $T/d.w $L 1 2>$T/d.h2.err; echo "H2 exit $?";;
 *) $O run --name d --kill-grace 1s --lock-delay 4s -- $W $T/d.w $L 1 2>$T/d.h2.err & h2=$!; sleep 1.5
    case $H2END in term) kill -TERM $h2;; kill) kill -KILL $h2;; session) term_holder d;; esac; wait $h2; echo "H2 exit $?";;
esac
$O run --name d --kill-grace 1s --lock-delay 4s -- $W $T/d.w $L 1 2>$T/d.h3.err; echo "H3 exit $?"
wait
awk -v t0=$(cat /proc/uptime | cut -d' ' -f1) '{print}' $L; grep -h "lock-delay of" $T/d.h*.err
