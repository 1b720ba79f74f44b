#!/bin/bash
# A holder, then R concurrent --replace starters and S concurrent stops
# (files, or PG with PG=1), ROUNDS times: the witness must never see two
# commands at once; prints the exit codes seen.
. "$(dirname "$0")/lib.sh"
flags=(); [ -n "${PG:-}" ] && flags=(--postgres $P --heartbeat 200ms --kill-grace 500ms --lock-delay 2s)
declare -A codes
for r in $(seq ${ROUNDS:-5}); do
  n=a10rs$$r$r; L=$T/$n.log; rm -f $L
  $O run "${flags[@]}" --name $n -- $W $T/$n.w $L 30 2>/dev/null &
  wait_enter $L
  for i in $(seq ${R:-3}); do ( $O run "${flags[@]}" --name $n --replace -- $W $T/$n.w $L 2 2>$T/$n.r$i.err; echo "replace $?" >> $T/$n.codes ) & done
  for i in $(seq ${S:-2}); do ( $O stop "${flags[@]}" $n --timeout 3s 2>$T/$n.s$i.err; echo "stop $?" >> $T/$n.codes ) & done
  wait
  while read k c; do codes["$k $c"]=$(( ${codes["$k $c"]:-0} + 1 )); done < $T/$n.codes
  grep -q OVERLAP $L && { echo "round $r:"; verdict $L; }
done
for k in "${!codes[@]}"; do echo "$k: ${codes[$k]}"; done | sort
echo "done (no OVERLAP line above: no two at once)"
