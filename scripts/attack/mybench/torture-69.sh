#!/usr/bin/env bash
# Tries: repeats the MySQL torture (tests/it/torture.rs mysql_mode_under_chaos_never_overlaps)
# to catch the unexplained "exit 69" a supervisor gave once in a-mybench's run, keeping the
# work dirs (/tmp/amyb-tort-N) so that onlyone.stderr says why.
# Run: scripts/with-mariadb scripts/attack/mybench/torture-69.sh ROUNDS
for i in $(seq "${1:-3}"); do
  rm -rf /tmp/amyb-tort-$i
  target/debug/onlyone-torture --acquisitions=400 --seconds=300 --chaos-ms=4000 --max-hold-ms=50 \
    --chaos=session-termination,holder-supervisor-sigkill,supervisor-sigstop --kill-graces=300ms,1s \
    --witness-ignores-term --mysql "$ONLYONE_TEST_MYSQL_URL" --onlyone-arg=--heartbeat=100ms \
    --onlyone-arg=--lock-delay=2s --onlyone target/debug/onlyone --work /tmp/amyb-tort-$i 2>&1 |
    grep -E "OVERLAPS|supervisor exits|unexpected" | sed "s/^/round $i: /"
done
