#!/bin/bash
# SIGTERM (SIG=) to onlyone 0-40 ms after it starts, ROUNDS times: its
# exit code, and whether anything of the command survives it (a marker
# in the command line of a background child).
. "$(dirname "$0")/lib.sh"
sig=${SIG:-TERM}; flags=(); [ -n "${PG:-}" ] && flags=(--postgres $P)
declare -A codes
for i in $(seq ${ROUNDS:-40}); do
  m=a10mark$$x$i
  $O run "${flags[@]}" --name tas$$ --timeout 5s -- sh -c "(sleep 30; : $m) & (sleep 31; : $m) & wait" 2>/dev/null &
  h=$!
  d=0.0$((RANDOM % 40 / 10))$((RANDOM % 10)); sleep $d
  kill -$sig $h; wait $h; rc=$?
  codes[$rc]=$(( ${codes[$rc]:-0} + 1 ))
  sleep 0.2
  if pgrep -f "$m" >/dev/null; then
    sleep 1
    echo "round $i (signal after ${d}s): SURVIVOR 1.2 s after onlyone exited $rc:"
    for p in $(pgrep -f "$m"); do ps -o pid=,ppid=,pgid=,stat=,etimes=,args= -p $p; ls -l /proc/$p/fd 2>/dev/null | grep -c lock | sed 's/^/  lock fds: /'; done
    pkill -f "$m"
  fi
done
for c in "${!codes[@]}"; do echo "exit $c: ${codes[$c]} times"; done
