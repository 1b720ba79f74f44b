# E6: does a wait on a file lock leak descriptors? Holder: the command for
# 3 s; we wait with acquire(timeout=10) in this thread and count our fds.
import os, sys, time, subprocess, tempfile, threading, onlyone
ONLYONE = os.environ.get("ONLYONE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../target/debug/onlyone")
d = tempfile.mkdtemp(); name = "e6"
holder = subprocess.Popen([ONLYONE, "run", "--dir", d, "--name", name, "--", "sleep", "3"])
time.sleep(0.5)
def count():
    n = 0
    for f in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{f}").endswith(".lock")
        except OSError:
            pass
    return n
peak = [0]
stop = False
def watch():
    while not stop:
        peak[0] = max(peak[0], count()); time.sleep(0.01)
t = threading.Thread(target=watch); t.start()
before = count()
held = onlyone.Lock(name, dir=d).acquire(timeout=10)
print("got it; lock-file fds before", before, "peak while waiting", peak[0], "now", count())
held.release()
stop = True; t.join()
print("after release:", count(), "lock-file fds still open")
holder.wait()
