#!/bin/bash
# usage: late_release.sh RUNS FDS_BETWEEN   (from the repo root; builds nothing)
# The witness 99 of the `rel` storm, made deterministic. A SIGKILLed process
# frees its files in the kernel's exit path highest descriptor first
# (task_work runs LIFO, with cond_resched between), so a lock held at a LOWER
# descriptor than onlyone's lock file (fd 4) and holder socket (fd 5) -- the
# storm's witness sits at fd 3, the hole left by onlyone's close-on-exec fd --
# is still held for a moment after onlyone's lock is free. Here the window is
# widened: A's command holds the witness at fd 3, moves onlyone's fds to
# 19990/19991 and opens FDS_BETWEEN files between them; its supervisor is
# SIGKILLed (the guardian kills the group); the waiting B acquires and its
# `flock -n -E 99` finds the witness still held by the dying A.
# A: command holding the witness at fd 3, onlyone's lock fd and socket moved to
# fds 19990/19991, 19000 /dev/null fds between: freed highest first on SIGKILL.
O=${ONLYONE:-$PWD/target/release/onlyone}; D=$(mktemp -d); W=$D/w3; touch $W; mkdir -m 700 $D/locks; cd $D
rm -f a.out; hits=0; ok=0
for i in $(seq 1 ${1:-10}); do
$O run --dir locks --name demo -- python3 -c '
import os,fcntl,time,resource,sys
h=resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE,(h,h))
w=os.open(sys.argv[1],os.O_RDWR); assert w==3
fcntl.flock(w,fcntl.LOCK_EX)
os.dup2(4,19990); os.dup2(5,19991); os.close(4); os.close(5)
fill=[os.open("/dev/null",0) for _ in range(int(sys.argv[2]))]
print("ready",flush=True); time.sleep(100)' $W ${2:-19000} > a.out 2>&1 &
sup=$!
while ! grep -q ready a.out 2>/dev/null; do sleep 0.02; done
$O run --dir locks --name demo --wait -- flock -n -E 99 $W true & b=$!
sleep 0.3
kill -9 $sup; wait $sup 2>/dev/null
wait $b; rc=$?; [ $rc = 99 ] && hits=$((hits+1)); [ $rc = 0 ] && ok=$((ok+1))
done
rm -rf "$D"
echo "runs=${1:-10} fds_between=${2:-19000} B_exit_99=$hits B_exit_0=$ok"
