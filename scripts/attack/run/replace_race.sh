#!/bin/bash
# Concurrent `--replace` starters (and `stop`) against one holder; the
# command holds a witness flock (exit 99 = two at once). Counts exit codes.
# usage: replace_race.sh ONLYONE ROUNDS REPLACERS
B=$1; N=$2; R=$3
D=$(mktemp -d); W=$D/witness; : > $W
declare -A codes
for i in $(seq 1 $N); do
  $B run -q --dir $D/l --name x -- flock -n -E 99 $W sleep 5 & H=$!
  sleep 0.2
  pids=()
  for j in $(seq 1 $R); do
    if [ $j = 1 ] && [ $((i % 3)) = 0 ]; then
      $B stop --dir $D/l x >/dev/null 2>&1 & pids+=($!)
    else
      $B run -q --dir $D/l --name x --replace --kill-grace 300ms -- flock -n -E 99 $W sleep 0.3 & pids+=($!)
    fi
  done
  for p in "${pids[@]}"; do wait $p; c=$?; codes[r$c]=$(( ${codes[r$c]:-0} + 1 )); done
  wait $H; c=$?; codes[h$c]=$(( ${codes[h$c]:-0} + 1 ))
done
for k in "${!codes[@]}"; do echo "$k ${codes[$k]}"; done | sort
rm -rf $D
