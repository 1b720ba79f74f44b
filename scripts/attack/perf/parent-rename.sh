#!/bin/sh
# Finding 1 of the issue-15 attack, by hand: a long-lived Python process
# takes and lets go of a lock in a/locks; the tree is renamed and the old
# path kept with a symlink; another holder runs; its lock file is deleted
# while it is frozen; the long-lived process tries again.
# Usage: scripts/attack/perf/parent-rename.sh  (needs the onlyone Python
# package and CLI on PATH)
set -eu
top=$(mktemp -d)
mkdir -p "$top/a/locks"
: > "$top/witness"
python3 - "$top" <<'PY'
import os, signal, subprocess, sys, time
import onlyone
top = sys.argv[1]
lock = onlyone.Lock("renamed", dir=f"{top}/a/locks")
lock.acquire().release()
os.rename(f"{top}/a", f"{top}/b")
os.symlink("b", f"{top}/a")
holder = subprocess.Popen(
    ["onlyone", "run", "--dir", f"{top}/b/locks", "--name", "renamed", "--",
     "sh", "-c", f'exec 9>>{top}/witness; flock -n 9 || exit 99; echo ready; exec sleep 1000'],
    stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline().strip() == "ready"
os.kill(holder.pid, signal.SIGSTOP)
os.remove(f"{top}/b/locks/renamed.lock")
got = lock.try_acquire()
print("second holder:", "ACQUIRED (two at once)" if got else "refused (held)")
os.kill(holder.pid, signal.SIGCONT)
holder.kill()
PY
rm -rf "$top"
