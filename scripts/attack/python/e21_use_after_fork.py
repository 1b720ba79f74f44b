# E21: a forked child (a multiprocessing worker, a daemonizing double fork)
# uses onlyone after its parent already did: does the library still work in
# the child (threads and runtimes made before the fork do not exist there)?
import os, sys, time, signal, tempfile, onlyone
url = sys.argv[1]
d = tempfile.mkdtemp()
onlyone.status("e21-pg", postgres=url)                 # parent touched PostgreSQL
g = onlyone.Lock("e21-file", dir=d).acquire(); g.release()   # and a lock file
child = os.fork()
if child == 0:
    signal.alarm(20)
    t0 = time.monotonic()
    try:
        g = onlyone.Lock(f"e21-pg-{os.getpid()}", postgres=url).acquire(timeout=5)
        print(f"child: PostgreSQL lock taken in {time.monotonic()-t0:.2f}s, token {g.token}", flush=True)
        g.release()
    except Exception as err:
        print(f"child: PostgreSQL: {type(err).__name__}: {err}", flush=True)
    g = onlyone.Lock("e21-file", dir=d).acquire(timeout=5)
    path = os.path.join(d, "e21-file.lock")
    os.unlink(path)                                    # a cleanup script
    time.sleep(0.5)
    print("child: lock file restored after deletion:", os.path.exists(path), flush=True)
    os._exit(0)
os.waitpid(child, 0)
