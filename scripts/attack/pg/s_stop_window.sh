#!/bin/bash
# How long stop's window is: the time from when a queued starter's session
# is granted the lock to when its acquisition is committed in the row. In
# that window `stop` cannot identify the holder (77). A monitor session
# samples pg_locks and the row (each statement a fresh snapshot) while N
# (default 10) `--wait` starters hand the lock to one another (each runs
# 0.2 s and releases cleanly), and prints each window's length.
. "$(dirname "$0")/lib.sh"
N=${N:-10}
key=$($O status --postgres "$U" --json w 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("key",""))' 2>/dev/null)
$O run --name w -- true
key=$(psql -qAt "$U" -c "select key from public.onlyone_locks where name = 'w'")
psql -qAt "$U" >$T/s.mon 2>&1 <<SQL &
DO \$\$
DECLARE
  k bigint := $key; g int; b int; st text; opened timestamptz; until timestamptz := clock_timestamp() + interval '${SECS:-20} s';
BEGIN
  WHILE clock_timestamp() < until LOOP
    SELECT pid INTO g FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND classid::bigint = (k >> 32) & 4294967295 AND objid::bigint = k & 4294967295;
    SELECT backend_pid, state INTO b, st FROM public.onlyone_locks WHERE key = k;
    IF g IS NOT NULL AND (b IS DISTINCT FROM g OR st <> 'held') THEN
      IF opened IS NULL THEN opened := clock_timestamp(); END IF;
    ELSIF opened IS NOT NULL THEN
      RAISE NOTICE 'window %', round(extract(epoch FROM clock_timestamp() - opened) * 1000, 2);
      opened := NULL;
    END IF;
  END LOOP;
END \$\$;
SQL
mon=$!
sleep 0.5
for i in $(seq $N); do $O run --name w --wait -- sleep 0.2 & done
wait $(jobs -p | grep -v "^$mon$") 2>/dev/null
wait $mon
grep -o 'window [0-9.]*' $T/s.mon | awk '{n++; s+=$2; if ($2>m) m=$2; print} END {print n " windows, mean " (n ? s/n : 0) " ms, max " m " ms"}'
