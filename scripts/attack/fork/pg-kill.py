# Tries: a PostgreSQL holder forks a worker (which keeps a copy of the
# session's socket) and is SIGKILLed; a new starter must get the lock within
# seconds (the worker must not keep the session, and the lock, alive), and
# the worker must not be taken for the holder.
import os, signal, subprocess, sys, time
import onlyone
URL = os.environ.get("PG", "postgres://root@127.0.0.1:5432/afork")
NAME = f"afork-kill{os.getpid()}"
r, w = os.pipe()
holder = os.fork()
if holder == 0:
    lock = onlyone.Lock(NAME, postgres=URL).acquire(timeout=5)
    worker = os.fork()
    if worker == 0:
        os.write(w, f"{os.getpid()}\n".encode())
        time.sleep(60); os._exit(0)
    time.sleep(60); os._exit(0)
worker = int(os.read(r, 100).split()[0])
time.sleep(0.3)
os.kill(holder, signal.SIGKILL); os.waitpid(holder, 0)
t = time.monotonic()
try:
    onlyone.Lock(NAME, postgres=URL).acquire(timeout=20).release()
    print("took after", round(time.monotonic() - t, 2), "s; worker alive:", os.path.exists(f"/proc/{worker}") and open(f"/proc/{worker}/stat").read().split()[2] != "Z")
except Exception as e:
    print("FAILED", e)
try: os.kill(worker, 9)
except ProcessLookupError: pass
