#!/bin/bash
# Finding 11: an operator comments the state table (or disables a guard
# trigger), and has a transaction open that read it; the next start
# migrates the table (LOCK ... ACCESS EXCLUSIVE), waits behind the reader,
# and every running holder's row check queues behind it: each holder
# misses its heartbeat deadline and kills its command (74).
. "$(dirname "$0")/lib.sh"
$O run --name tm1 --heartbeat 200ms -- sh -c 'echo H1 ran; sleep 20; echo H1 done' >$T/t.h1.out 2>$T/t.h1.err & h1=$!
$O run --name tm2 --heartbeat 200ms -- sh -c 'echo H2 ran; sleep 20; echo H2 done' >$T/t.h2.out 2>$T/t.h2.err & h2=$!
sleep 1
psql -qAt "$U" -c "comment on table public.onlyone_locks is 'locks of the nightly jobs'"
psql -qAt "$U" -c "begin" -c "select count(*) from public.onlyone_locks" -c "select pg_sleep(12)" -c "commit" >/dev/null &
sleep 0.5
start=$(date +%s.%N)
$O run --name tm3 --timeout 2s -- echo S ran; echo "starter exit $? after $(echo "$(date +%s.%N) - $start" | bc) s"
wait $h1; echo "H1 exit $?"; wait $h2; echo "H2 exit $?"
cat $T/t.h1.out $T/t.h1.err $T/t.h2.err
