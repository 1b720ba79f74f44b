import os, sys, time, tempfile, threading, signal, onlyone
d = tempfile.mkdtemp()
where = {"postgres": sys.argv[1]} if len(sys.argv) > 1 else {"dir": d}
lock = onlyone.Lock("e8", **where)
g1 = lock.acquire()
print("first:", g1)
try:
    with lock:
        print("BUG: nested with got it too")
except onlyone.Held as h:
    print("nested with -> Held:", h)
print("try_acquire again ->", lock.try_acquire())
t0 = time.monotonic()
try:
    g2 = lock.acquire(timeout=1)
    print("BUG: second acquire got it", g2)
except onlyone.Held as h:
    print(f"acquire(timeout=1) -> Held after {time.monotonic()-t0:.1f}s: {h}")
# acquire() without timeout on a lock this process holds: a self-deadlock.
threading.Timer(3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
t0 = time.monotonic()
try:
    lock.acquire()
except KeyboardInterrupt:
    print(f"acquire() with no timeout blocked {time.monotonic()-t0:.1f}s until Ctrl-C (no message said it waits for itself)")
