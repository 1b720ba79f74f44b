#!/usr/bin/env python3
"""A thread takes and lets go of file locks in a loop while the main
thread forks children that each take a lock: a fork while that thread
holds one of the library's process-wide mutexes (the kept directory
identities, the mount table, the record's process identity) leaves it
locked in the child, whose acquisition then hangs. Counts the hung.
Usage: fork_while_acquiring.py [CHILDREN] [DIRS]"""
import os, signal, sys, tempfile, threading
import onlyone

children = int(sys.argv[1]) if len(sys.argv) > 1 else 300
dirs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
top = tempfile.mkdtemp()
# More directories than the identity cache keeps: each acquisition works
# an identity out again (the mount table), as a program using many does.
paths = [os.path.join(top, f"d{i}") for i in range(dirs)]
stop = False

def churn():
    i = 0
    while not stop:
        onlyone.Lock("churn", dir=paths[i % len(paths)]).acquire().release()
        i += 1

thread = threading.Thread(target=churn, daemon=True)
thread.start()
hung = 0
for i in range(children):
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)
        onlyone.Lock(f"c{i}", dir=top).acquire().release()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        hung += 1
stop = True
print(f"{hung} of {children} children hung")
