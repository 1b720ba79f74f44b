#!/usr/bin/env bash
# 50 simultaneous starts of one lock on the portable binary, each with
# another spelling of --dir (absolute, relative, trailing slash, through a
# symlinked parent, ./x/../), half of them in a cron-like environment
# (env -i PATH=/usr/bin:/bin); plus a default-dir round (no --dir) from a
# login shell and env -i. A witness flock counts overlaps (exit 99).
#   scripts/attack/portable/fifty_spellings.sh BINARY [ROUNDS]
set -u
B=$(realpath "$1"); ROUNDS=${2:-5}
T=$(mktemp -d /tmp/a11-fifty-XXXX); mkdir -p "$T/real/locks"; ln -s "$T/real" "$T/link"
cd "$T/real"
spell=("$T/real/locks" "$T/real/locks/" "locks" "./locks/" "$T/link/locks" "$T/link/locks/" "../real/locks" "$T/real/./locks" "$T/real/x/../locks")
mkdir -p "$T/real/x"
total_ran=0; total_overlap=0
for r in $(seq "$ROUNDS"); do
  for i in $(seq 50); do
    d=${spell[$((i % ${#spell[@]}))]}
    if ((i % 2)); then pre=(env -i PATH=/usr/bin:/bin); else pre=(); fi
    ( "${pre[@]}" "$B" run --dir "$d" --name bot -- flock -n -E 99 "$T/witness" sleep 0.3 >/dev/null 2>&1; echo $? >> "$T/codes.$r" ) &
  done
  wait
  ran=$(grep -c '^0$' "$T/codes.$r"); ov=$(grep -c '^99$' "$T/codes.$r")
  echo "round $r: ran $ran, overlap $ov, codes: $(sort "$T/codes.$r" | uniq -c | tr '\n' ' ')"
  total_ran=$((total_ran+ran)); total_overlap=$((total_overlap+ov))
done
# The default directory from a login shell and from cron's environment.
for i in $(seq 20); do
  if ((i % 2)); then pre=(env -i PATH=/usr/bin:/bin); else pre=(env HOME="$HOME" TMPDIR=/var/tmp XDG_RUNTIME_DIR=/run/user/$(id -u)); fi
  ( "${pre[@]}" "$B" run --name "a11-default-$$" -- flock -n -E 99 "$T/witness2" sleep 0.3 >/dev/null 2>&1; echo $? >> "$T/dcodes" ) &
done
wait
echo "default dir: codes $(sort "$T/dcodes" | uniq -c | tr '\n' ' ')"
echo "total: ran $total_ran in $ROUNDS rounds (expect $ROUNDS), overlaps $total_overlap"
rm -rf "$T"
