#!/bin/bash
# Upgrade under a running older holder: the state table is created as the
# previous release did (4cdbbef: no guard, no stopped_token), a psql
# session stands for an old holder (takes the key, writes a 'held' row with
# token 5), and a new starter queues with --wait: it migrates the table
# while the old holder holds, then waits. END=release: the old holder
# releases as the old release did (UPDATE to 'released' from its session,
# then unlock); END=crash: its session is terminated. The new starter must
# get token 6, after the lock-delay only for END=crash.
. "$(dirname "$0")/lib.sh"
psql -qAt "$U" -c "drop table if exists public.oldshape" -c "drop table if exists public.keyprobe"
$O run --table public.keyprobe --name up -- true
K=$(psql -qAt "$U" -c "select key from public.keyprobe")
psql -qAt "$U" -c "drop table public.keyprobe"
psql -qAt "$U" -c "CREATE TABLE public.oldshape (key bigint PRIMARY KEY, name text NOT NULL, token bigint NOT NULL CHECK (token > 0), state text NOT NULL CHECK (state IN ('held', 'released')), backend_pid integer, pid integer, host text, start_time bigint, boot_id text, user_name text, uid bigint, command text[], acquired_at timestamptz, stop_within_ms bigint, owed_ms bigint, updated_at timestamptz NOT NULL DEFAULT now()); COMMENT ON TABLE public.oldshape IS 'onlyone state table'"
coproc OLD { psql -qAt "$U"; }
echo "select pg_advisory_lock($K); insert into public.oldshape values ($K, 'up', 5, 'held', pg_backend_pid(), $$, 'old', null, null, 'old', 0, '{old}', now(), 1500, 0, now()); select 'old holds';" >&${OLD[1]}
read -r l1 <&${OLD[0]}; read -r l2 <&${OLD[0]}; echo "old holder: $l2"
$O run --table public.oldshape --name up --wait --lock-delay 3s -- sh -c 'echo "new starter ran, token $ONLYONE_TOKEN"' 2>$T/u.err & s=$!
for _ in $(seq 100); do [ "$(psql -qAt "$U" -c "select count(*) from pg_trigger where tgrelid = 'public.oldshape'::regclass")" = 2 ] && break; sleep 0.1; done
echo "migrated while the old holder holds: $(psql -qAt "$U" -c "select string_agg(tgname, ',') from pg_trigger where tgrelid = 'public.oldshape'::regclass")"
t0=$(date +%s.%N)
if [ "${END:-release}" = release ]; then
  echo "update public.oldshape set state = 'released' where key = $K and token = 5; select pg_advisory_unlock($K); select 'old released';" >&${OLD[1]}
  read -r l <&${OLD[0]}; echo "old holder: $l"
else
  psql -qAt "$U" -c "select pg_terminate_backend(backend_pid) from public.oldshape where key = $K" >/dev/null; echo "old holder's session terminated"
fi
wait $s; echo "new starter exit $? after $(echo "$(date +%s.%N) - $t0" | bc) s"; cat $T/u.err
psql -qAt "$U" -c "select 'row: token ' || token || ' ' || state from public.oldshape"
