#!/bin/bash
# Finding 3 on PostgreSQL: the supervisor is SIGKILLed after its command
# started and forked, before the guardian exists (strace delays the
# supervisor's second clone(2), the guardian's fork, by 5 s; the window is
# a few microseconds without it). The command's child lives on; the session
# died with the supervisor, and a --wait starter runs after the lock-delay:
# two at once (the witness says OVERLAP). FILES=1: the file backend (the
# orphan keeps the lock; the starter gives up with 75).
. "$(dirname "$0")/lib.sh"
n=a10gw$$; L=$T/$n.log; rm -f $L
flags=(--postgres $P); [ -n "${FILES:-}" ] && flags=()
strace -qq -o /dev/null -e trace=clone -e inject=clone:delay_enter=5000000:when=2 \
  $O run "${flags[@]}" --name $n -- sh -c "($W $T/$n.w $L 25) & wait" 2>$T/$n.h1.err &
wait_enter $L
sup=$(pgrep -f "^$O run .*--name $n ")
echo "supervisor $sup; SIGKILL"
kill -9 $sup
$O run "${flags[@]}" --name $n --timeout 20s -- $W $T/$n.w $L 1 2>$T/$n.h2.err; echo "second exit $?"
cat $L; echo "--- second"; cat $T/$n.h2.err
verdict $L
pkill -f "$T/$n.w" ; wait
