# E2: the threading.Lock / filelock idiom: lock.acquire(); work; ... The guard
# returned is dropped at once, and the lock with it.
import os, sys, tempfile, onlyone
d = tempfile.mkdtemp(); 
lock = onlyone.Lock("e2", dir=d)
lock.acquire(timeout=5)                 # as with filelock.FileLock / threading.Lock
print("first: believes it holds; status.held =", onlyone.status("e2", dir=d).held)
other = onlyone.Lock("e2", dir=d).try_acquire()
print("second holder got it too:", other is not None)
if lock.try_acquire():                  # "if I got it, do the work"
    print("inside if: status.held =", onlyone.status("e2", dir=d).held)
