# Tries: threads churn MySQL (shared server) and file acquisitions,
# status and waits while the main thread forks N children (and each child
# forks a grandchild: double fork); every child and grandchild must take and
# release its own MySQL and file lock within seconds. Found: nothing.
import os, sys, threading, time, tempfile
import onlyone
URL = "mysql://root@127.0.0.1:3306/afork"
top = tempfile.mkdtemp(prefix="afork-")
stop = False
def churn(kind, k):
    i = 0
    while not stop:
        try:
            if kind == "pg":
                onlyone.Lock(f"afork-churn{k}-{i%5}", mysql=URL).acquire(timeout=1).release()
            else:
                onlyone.Lock(f"c{i%7}", dir=os.path.join(top, f"d{i%13}")).acquire().release()
        except Exception as e:
            print("churn", kind, e, file=sys.stderr)
        i += 1
for k in range(2):
    threading.Thread(target=churn, args=("pg", k), daemon=True).start()
threading.Thread(target=churn, args=("file", 0), daemon=True).start()
def take(i):
    onlyone.Lock(f"afork-child{os.getpid()}", mysql=URL).acquire(timeout=5).release()
    onlyone.Lock(f"k{i}", dir=top).acquire().release()
hung = 0
n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
for i in range(n):
    time.sleep(0.005 * (i % 7))
    pid = os.fork()
    if pid == 0:
        take(i)
        g = os.fork()
        if g == 0:
            take(i); os._exit(0)
        os._exit(0 if os.waitpid(g, 0)[1] == 0 else 3)
    deadline = time.monotonic() + 15
    while True:
        p, st = os.waitpid(pid, os.WNOHANG)
        if p:
            if st: print("child status", st); hung += 1
            break
        if time.monotonic() > deadline:
            hung += 1; print("HUNG", pid, "fork", i)
            import subprocess
            for q in [pid] + [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]:
                open(f"/tmp/afork-mysql-{q}.txt","w").write(subprocess.run(["gdb","-p",str(q),"-batch","-ex","thread apply all bt"],capture_output=True,text=True).stdout)
            os.kill(pid, 9); os.waitpid(pid, 0); break
        time.sleep(0.01)
stop = True
print("bad", hung)
