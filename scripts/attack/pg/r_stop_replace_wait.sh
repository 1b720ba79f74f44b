#!/bin/bash
# stop, --replace and run --wait at once on one name, N rounds (default 5):
# each round, a holder that ignores SIGTERM loses its session uncleanly (so
# every next start waits a lock-delay), then a replacer, a stopper and two
# waiters race. Witness: OVERLAP lines; tokens (tok=) must only grow.
. "$(dirname "$0")/lib.sh"
L=$T/r.log; rm -f $L $T/r.w $T/r.exits
F="--heartbeat 200ms --kill-grace 1s --lock-delay 2s"
for round in $(seq ${N:-5}); do
  $O run --name r $F --wait -- $W $T/r.w $L 30 ignore-term 2>>$T/r.h.err & h=$!
  for _ in $(seq 200); do [ "$(grep -c ENTER $L 2>/dev/null)" -ge $round ] && break; sleep 0.05; done
  psql -qAt "$U" -c "select pg_terminate_backend(backend_pid) from public.onlyone_locks where name = 'r' and state = 'held'" >/dev/null
  sleep 0.$((RANDOM % 9))
  $O run --name r $F --replace -- $W $T/r.w $L 1 2>>$T/r.rep.err & rp=$!
  $O run --name r $F --wait -- $W $T/r.w $L 1 2>>$T/r.w1.err & w1=$!
  sleep 0.$((RANDOM % 9)); $O stop r 2>>$T/r.stop.err; st=$?
  $O run --name r $F --wait -- $W $T/r.w $L 1 2>>$T/r.w2.err & w2=$!
  wait $h; eh=$?; wait $rp; er=$?; wait $w1; e1=$?; wait $w2; e2=$?
  echo "round $round: holder $eh replace $er stop $st wait1 $e1 wait2 $e2" | tee -a $T/r.exits
done
echo "overlaps: $(grep -c OVERLAP $L)"
grep -o 'tok=[0-9]* ENTER' $L | awk '{split($1,a,"="); if (a[2] <= last) print "TOKEN NOT GROWING: " a[2] " after " last; last = a[2]}'
