#!/bin/bash
# Findings 8 and 9: kill graces past a bigint of milliseconds and past what
# the clock can add. 8: a holder with --kill-grace 300000000years loses its
# session; every successor then fails 69 "bigint out of range" (the row's
# stop_within_ms is saturated and the guard lets nobody repair it).
# 9: --kill-grace 10000000000000000000s panics (101) once the command ran.
. "$(dirname "$0")/lib.sh"
$O run --name o --kill-grace 300000000years -- sleep 1000 2>$T/o.h.err &
h=$!
for _ in $(seq 100); do [ -n "$(psql -qAt "$U" -c "select 1 from public.onlyone_locks where name = 'o' and state = 'held'")" ] && break; sleep 0.05; done
term_holder o
wait $h; echo "holder exit $? (74 expected)"
psql -qAt "$U" -c "select 'row: token ' || token || ', ' || state || ', stop_within_ms ' || stop_within_ms from public.onlyone_locks where name = 'o'"
$O run --name o -- echo ran; echo "successor exit $?"
$O run --name o --kill-grace 1s --timeout 1s -- echo ran; echo "successor with --timeout exit $?"
$O run --name o9 --kill-grace 10000000000000000000s -- true 2>&1 | head -2; echo "finding 9 exit ${PIPESTATUS[0]}"
