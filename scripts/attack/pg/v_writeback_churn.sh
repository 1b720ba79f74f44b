#!/bin/bash
# Churn for the write-back: a chain of --wait starters on one lock; every
# ~150 ms a superuser sets the row 'released' with a foreign backend pid past
# the triggers (session_replication_role = replica); every ~1 s the holder's
# session is terminated, but only once its row is written back (a row
# altered and then lost before the next heartbeat is the documented
# exception). A monitor samples the row: its token must never go back; the
# witness must show no OVERLAP. SECS (default 40).
. "$(dirname "$0")/lib.sh"
L=$T/v.log; rm -f $L $T/v.w $T/v.mon
SECS=${SECS:-40}; end=$(( $(date +%s) + SECS ))
F="--heartbeat 100ms --kill-grace 300ms --lock-delay 1s"
( while [ $(date +%s) -lt $end ]; do
    [ "$(jobs -r | wc -l)" -lt 3 ] && { $O run --name v --wait $F -- $W $T/v.w $L 1.5 2>>$T/v.err & }
    sleep 0.3
  done; wait ) &
chain=$!
( while [ $(date +%s) -lt $end ]; do
    psql -qAt "$U" -c "select token from public.onlyone_locks where name = 'v'" >>$T/v.mon 2>/dev/null; sleep 0.05
  done ) &
mon=$!
alters=0; terms=0
while [ $(date +%s) -lt $end ]; do
  psql -qAt "$U" -c "set session_replication_role = replica" -c "update public.onlyone_locks set state = 'released', backend_pid = 0 where name = 'v'" >/dev/null 2>&1 && alters=$((alters+1))
  sleep 0.15
  if [ $((RANDOM % 7)) = 0 ]; then
    r=$(psql -qAt "$U" -c "select pg_terminate_backend(l.pid) from pg_locks l join public.onlyone_locks r on r.backend_pid = l.pid and r.state = 'held' where r.name = 'v' and l.locktype = 'advisory' and l.granted" 2>/dev/null)
    [ "$r" = t ] && terms=$((terms+1))
  fi
done
wait $chain; wait $mon
echo "alters $alters, terminations $terms, acquisitions $(grep -c ENTER $L), overlaps $(grep -c OVERLAP $L)"
awk '$1 < last {print "ROW TOKEN WENT BACK: " $1 " after " last} {last = $1}' $T/v.mon | head
echo "write-backs: $(grep -c 'writing it back' $T/v.err); exits: $(grep -o 'error: [a-z ]*' $T/v.err | sort | uniq -c | tr '\n' ';')"
