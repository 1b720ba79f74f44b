#!/usr/bin/env bash
# A holder, then at once 6 `run --replace` and 4 `stop` of the same lock,
# ROUNDS times; every command holds a witness flock (99 = two at once).
# Prints the exit codes per round and the overlaps.
#   scripts/attack/portable/replace_stop_storm.sh BINARY [ROUNDS]
set -u
B=$(realpath "$1"); ROUNDS=${2:-20}
T=$(mktemp -d /tmp/a11-storm-XXXX); D=$T/locks
W="flock -n -E 99 $T/witness"
overlaps=0
for r in $(seq "$ROUNDS"); do
  rm -f "$T/h.out"
  "$B" run --dir "$D" --name job -- $W sh -c 'echo ready; exec sleep 1000' > "$T/h.out" 2>/dev/null &
  H=$!
  until grep -q ready "$T/h.out" 2>/dev/null; do sleep 0.01; kill -0 $H 2>/dev/null || break; done
  : > "$T/codes"
  for i in $(seq 6); do
    ( "$B" run --dir "$D" --name job --replace --kill-grace 1s -- $W sleep 0.2 >/dev/null 2>"$T/r$i.err"; c=$?; echo "r$c" >> "$T/codes"; [ $c = 69 ] && sed "s/^/  r69: /" "$T/r$i.err" ) &
  done
  for i in $(seq 4); do
    ( "$B" stop --dir "$D" --timeout 5s job >/dev/null 2>&1; echo "s$?" >> "$T/codes" ) &
  done
  wait $(jobs -p | grep -v "^$H$") 2>/dev/null
  wait "$H"; echo "h$?" >> "$T/codes"
  ov=$(grep -c '99$' "$T/codes")
  overlaps=$((overlaps+ov))
  echo "round $r: $(sort "$T/codes" | uniq -c | tr '\n' ' ')"
done
echo "overlaps: $overlaps"
rm -rf "$T"
