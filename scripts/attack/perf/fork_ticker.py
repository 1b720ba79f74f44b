#!/usr/bin/env python3
"""A holder of many file locks forks children that each take a lock of
their own: a fork while the watcher thread ticks (under its registry's
mutex) leaves that mutex locked in the child for good, and the child's
acquisition hangs. Counts the children that hang.
Usage: fork_ticker.py [HELD] [CHILDREN]"""
import os, sys, tempfile, time, signal
import onlyone

held_count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
children = int(sys.argv[2]) if len(sys.argv) > 2 else 100
top = tempfile.mkdtemp()
held = [onlyone.Lock(f"h{i}", dir=top).acquire() for i in range(held_count)]
hung = 0
for i in range(children):
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)  # a hung child dies of SIGALRM
        g = onlyone.Lock(f"c{i}", dir=top).acquire()
        g.release()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
        hung += 1
    time.sleep(0.003)
print(f"{hung} of {children} children hung")
