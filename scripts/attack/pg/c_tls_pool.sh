#!/bin/bash
# C: a --max 2 waiter over TLS (sslmode=${MODE:-require}); one slot frees; the waiter should run at once.
# TLSU: a server with ssl = on, e.g. postgres://postgres@127.0.0.1:PORT/postgres
U="${TLSU:?set TLSU}?sslmode=${MODE:-require}"
. "$(dirname "$0")/lib.sh"
L=$T/c.log; rm -f $L
$O run --name c --max 2 -- $W $T/c1.w $L 3 2>/dev/null &
$O run --name c --max 2 -- $W $T/c2.w $L 30 2>/dev/null &
wait_enter $L 2
t0=$(date +%s.%N)
$O run --name c --max 2 --wait -- $W $T/c3.w $L 0.1 2>$T/c.w.err
echo "waiter exit $? after $(echo "$(date +%s.%N) - $t0" | bc) s (slot 1 frees at ~3 s, slot 2 at ~30 s)"
cat $T/c.w.err
kill %2 2>/dev/null; wait
