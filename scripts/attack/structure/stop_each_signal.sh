#!/bin/bash
# `onlyone stop NAME --signal S` for every S the help offers and a few
# numbers, on files: what reaches the command (it logs each signal it
# traps), how it ended, and stop's exit code. The supervisor forwards only
# TERM, INT, HUP and QUIT; any other signal hits onlyone itself.
. "$(dirname "$0")/lib.sh"
for s in TERM INT HUP QUIT KILL USR1 USR2 10 12 13 14 17 19 20 28 34 64; do
  n=sig$s; L=$T/$n.log; rm -f $L
  $O run --name $n -- sh -c "for t in TERM INT HUP QUIT USR1 USR2 PIPE ALRM WINCH; do trap \"echo got \$t >> $L; exit 0\" \$t; done; echo ready >> $L; while :; do sleep 0.05; done" 2>$T/$n.err &
  h=$!
  for _ in $(seq 100); do grep -q ready $L 2>/dev/null && break; sleep 0.05; done
  $O stop $n --signal $s --timeout 2s 2>/dev/null; rc=$?
  sleep 0.3
  state=$(ps -o stat= -p $h 2>/dev/null | tr -d ' ')
  kill -CONT $h 2>/dev/null; kill -TERM $h 2>/dev/null; wait $h; hrc=$?
  printf 'signal %-5s stop rc=%-3s supervisor state after=%-3s supervisor rc=%-3s command log: %s\n' "$s" "$rc" "${state:-gone}" "$hrc" "$(grep -v ready $L | tr '\n' ' ')"
done
