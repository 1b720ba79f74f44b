# Tries: multiprocessing "fork" and "forkserver" pools started while threads
# churn file and PostgreSQL acquisitions; each worker takes and releases a
# file and a PostgreSQL lock. Also a holder that forks a worker, exits, and the
# worker must not keep the lock (a new process takes it at once). Found: nothing.
import multiprocessing as mp, os, sys, threading, tempfile, time
import onlyone
URL = os.environ.get("PG", "postgres://root@127.0.0.1:5432/afork")
top = tempfile.mkdtemp(prefix="afork-mp-")
stop = False
def churn():
    i = 0
    while not stop:
        onlyone.Lock(f"c{i%5}", dir=os.path.join(top, f"d{i%9}")).acquire().release()
        onlyone.Lock(f"pc{i%3}", postgres=URL).acquire(timeout=5).release()
        i += 1
def work(i):
    onlyone.Lock(f"w{i}", dir=top).acquire(timeout=5).release()
    onlyone.Lock(f"pw{os.getpid()}", postgres=URL).acquire(timeout=5).release()
    return i
if __name__ == "__main__":
    threading.Thread(target=churn, daemon=True).start()
    for method in ("fork", "forkserver"):
        for r in range(5):
            with mp.get_context(method).Pool(4) as pool:
                res = pool.map_async(work, range(16))
                print(method, r, sorted(res.get(timeout=30)) == list(range(16)))
    stop = True
