#!/bin/bash
# The holder's write-back. Part 1: a superuser alters the held row past the
# triggers (session_replication_role = replica): ALTER=released|pid|token.
# Part 2: the holder's supervisor is paused (SIGSTOP), its session ended,
# a successor takes the lock and runs; then the paused holder resumes:
# its heartbeat must not write its row over the successor's.
. "$(dirname "$0")/lib.sh"
L=$T/n.log; rm -f $L $T/n.w
F="--heartbeat 200ms --kill-grace 1s --lock-delay 1s"
row() { psql -qAt "$U" -c "select token, state, backend_pid, stopped_token from public.onlyone_locks where name = 'n'"; }
replica() { psql -qAt "$U" -c "set session_replication_role = replica" -c "$1" -c "reset session_replication_role"; }
$O run --name n $F -- $W $T/n.w $L 60 2>$T/n.a.err &
a=$!
wait_enter $L
echo "A holds: $(row)"
case ${ALTER:-released} in
  released) replica "update public.onlyone_locks set state = 'released' where name = 'n'";;
  pid)      replica "update public.onlyone_locks set backend_pid = 1 where name = 'n'";;
  token)    replica "update public.onlyone_locks set token = token + 5 where name = 'n'";;
esac
echo "altered: $(row)"; sleep 0.6; echo "after A's next heartbeat: $(row)"
sup=$(pgrep -P $$ -f "onlyone run --name n" | head -1); sup=${sup:-$a}
kill -STOP $a
term_holder n
$O run --name n --wait $F -- $W $T/n.w $L 3 2>$T/n.b.err &
b=$!
for _ in $(seq 100); do grep -q "tok=.*ENTER" <(tail -n +2 $L) && break; sleep 0.1; done
sleep 0.3; echo "B runs: $(row)"
kill -CONT $a
sleep 1; echo "A resumed, 1 s later: $(row)"
wait $a; echo "A exit $?"; wait $b; echo "B exit $?"
cat $L; echo "--- A"; cat $T/n.a.err; echo "--- B"; cat $T/n.b.err
