#!/bin/bash
# L: two --replace at once against a holder that ignores SIGTERM
. "$(dirname "$0")/lib.sh"
L=$T/l.log; rm -f $L $T/l.w
$O run --name l --kill-grace 2s -- $W $T/l.w $L 60 ignore-term 2>/dev/null & h=$!
wait_enter $L
$O run --name l --replace --lock-delay 6s --kill-grace 1s -- $W $T/l.w $L 1 2>$T/l.r1.err & r1=$!
$O run --name l --replace --lock-delay 6s --kill-grace 1s -- $W $T/l.w $L 1 2>$T/l.r2.err & r2=$!
wait $r1; e1=$?; wait $r2; e2=$?; wait $h; eh=$?
echo "H $eh R1 $e1 R2 $e2"; grep -c OVERLAP $L; grep -h "taken by\|error" $T/l.r*.err
