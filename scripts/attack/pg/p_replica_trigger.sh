#!/bin/bash
# Finding 10: guard triggers set to fire only on replicas (ENABLE REPLICA
# TRIGGER) count as enabled: the next start does not put them back, and a
# DELETE of a used lock's row goes through. DISABLE TRIGGER, for
# comparison, is repaired by the next start.
. "$(dirname "$0")/lib.sh"
psql -qAt "$U" -c "drop table if exists public.p_rep"
$O run --table public.p_rep --name p -- true
psql -qAt "$U" -c "alter table public.p_rep enable replica trigger onlyone_guard_rows" \
  -c "alter table public.p_rep enable replica trigger onlyone_guard_truncate"
$O run --table public.p_rep --name p -- true; echo "second start exit $?"
psql -qAt "$U" -c "select tgname || ' ' || tgenabled::text from pg_trigger where tgrelid = 'public.p_rep'::regclass"
psql -qAt "$U" -c "delete from public.p_rep returning 'DELETED row with token ' || token"
