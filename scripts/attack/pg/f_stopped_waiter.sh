#!/bin/bash
# F: a --wait waiter is stopped (Ctrl-Z / SIGSTOP) while queued; the holder releases; a second waiter
. "$(dirname "$0")/lib.sh"
L=$T/f.log; rm -f $L $T/f.w
$O run --name f -- $W $T/f.w $L 3 2>/dev/null &
wait_enter $L
$O run --name f --wait -- $W $T/f.w $L 1 2>/dev/null & w1=$!
sleep 0.5; kill -STOP $w1
$O run --name f --timeout 20s -- $W $T/f.w $L 1 2>$T/f.w2.err; echo "W2 exit $?"
$O status f; echo "status $?"; $O stop f; echo "stop $?"
kill -CONT $w1; wait $w1; echo "W1 exit $?"; wait; cat $T/f.w2.err
