#!/bin/bash
# stop during the lock-delay of a pool's slot (--max 2): H1 holds k@1 and
# loses its session uncleanly, S takes k@1 and waits its lock-delay, then
# `stop k --max 2` (SLOT=1: `stop k@1`). S must not run its command, and
# must say it was stopped (74). The tokens of k@1 must grow.
. "$(dirname "$0")/lib.sh"
L=$T/q.log; rm -f $L
F="--max 2 --heartbeat 200ms --kill-grace 1s --lock-delay 3s"
tok() { psql -qAt "$U" -c "select name || ' token ' || token || ' ' || state || ' stopped ' || coalesce(stopped_token::text, '-') from public.onlyone_locks where name like 'k@%' order by name"; }
$O run --name k $F -- sh -c 'echo "H1 $ONLYONE_TOKEN" >> '$L'; exec sleep 60' 2>$T/q.h1.err &
h1=$!
for _ in $(seq 100); do grep -q H1 $L 2>/dev/null && break; sleep 0.05; done
psql -qAt "$U" -c "select pg_terminate_backend(backend_pid) from public.onlyone_locks where name = 'k@1'"; wait $h1; echo "H1 exit $?"
$O run --name k $F -- sh -c 'echo "S RAN $ONLYONE_TOKEN" >> '$L 2>$T/q.s.err &
s=$!
for _ in $(seq 100); do grep -q "did not release" $T/q.s.err 2>/dev/null && break; sleep 0.05; done
tok
if [ -n "${SLOT:-}" ]; then $O stop k@1; else $O stop k; fi; echo "stop exit $?"
wait $s; echo "S exit $?"
tok; cat $L; echo "--- S"; cat $T/q.s.err
