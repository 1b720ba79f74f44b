#!/bin/bash
# A --restart always holder whose command exits at once, stopped (files, or
# PG with PG=1) during its restart delay (DELAY, 4s): stop's exit code and
# time, the holder's exit code and time, and whether the command ran again.
. "$(dirname "$0")/lib.sh"
flags=(); [ -n "${PG:-}" ] && flags=(--postgres $P)
n=a10sr$$; L=$T/$n.log; rm -f $L
$O run "${flags[@]}" --name $n --restart always --restart-delay ${DELAY:-4s} -- sh -c "echo \$(date +%s.%N) RAN >> $L" 2>$T/$n.err &
h=$!
for _ in $(seq 100); do [ -s $L ] && break; sleep 0.05; done
s=$(date +%s.%N)
$O stop "${flags[@]}" $n; echo "stop exit $? after $(echo "$(date +%s.%N) - $s" | bc)s"
wait $h; echo "holder exit $? after $(echo "$(date +%s.%N) - $s" | bc)s"
echo "command ran $(grep -c RAN $L) time(s)"; cat $T/$n.err
