# E4: a held lock file is deleted (a cleanup script) and restored by the
# holder's watcher; then the holder forks a worker and releases. Does the
# worker keep the lock?
import os, sys, time, tempfile, signal, onlyone
d = tempfile.mkdtemp()
lock = onlyone.Lock("e4", dir=d)
held = lock.acquire()
os.unlink(os.path.join(d, "e4.lock"))          # a cleanup script
time.sleep(0.2)                                 # the watcher restores it (25 ms)
print("restored:", os.path.exists(os.path.join(d, "e4.lock")))
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
held.release()
print("parent released; status:", onlyone.status("e4", dir=d).held)
other = onlyone.Lock("e4", dir=d).try_acquire()
print("a new instance gets it:", other is not None)
st = onlyone.status("e4", dir=d)
print("holder pids:", st.holder.pids if st.holder else None, "child:", child)
os.kill(child, signal.SIGKILL); os.waitpid(child, 0)
