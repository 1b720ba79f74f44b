#!/bin/bash
# --max N waiters (file backend, or PG with PG=1): K starters with --wait
# (or --timeout), each command holds a witness flock per slot and logs
# ENTER/EXIT; afterwards the log is checked for more than N at once.
. "$(dirname "$0")/lib.sh"
N=${N:-2}; K=${K:-8}; n=a10pool$$; L=$T/$n.log; rm -f $L
flags=(); [ -n "${PG:-}" ] && flags=(--postgres $P)
for i in $(seq $K); do
  $O run "${flags[@]}" --name $n --max $N ${WAITFLAG:---wait} -- sh -c "flock -n -E 99 $T/$n.w.\$ONLYONE_SLOT sh -c 'echo \$(date +%s.%N) ENTER \$ONLYONE_SLOT >> $L; sleep 0.3; echo \$(date +%s.%N) EXIT \$ONLYONE_SLOT >> $L'" 2>/dev/null &
done
rcs=""; for j in $(jobs -p); do wait $j; rcs="$rcs $?"; done
echo "exit codes:$rcs"
sort -n $L | awk -v n=$N '/ENTER/{c++; if(c>m)m=c} /EXIT/{c--} END{print "max concurrent", m, (m>n?"VERDICT: OVER THE LIMIT":"VERDICT: within the limit")}'
