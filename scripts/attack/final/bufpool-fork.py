# Tries (a-final finding 1): threads of a Python program do MySQL I/O
# without pause (status reads on their own sessions) while the main thread
# forks children that each take a MySQL lock. mysql_async keeps one
# process-wide buffer pool (a crossbeam ArrayQueue behind a static): a fork
# while a thread is midway through a push or pop leaves the child a queue
# whose slot stamp never comes, and the child's first MySQL I/O spins
# forever in ArrayQueue::push (100% CPU, its timeout unheard; stack in
# docs/RELIABILITY.md). Usage: python bufpool-fork.py URL FORKS
import os, sys, threading, time, subprocess
import onlyone
url, forks = sys.argv[1], int(sys.argv[2])
stop = False
def churn(k):
    lock = onlyone.Lock(f"afinal-churn{k}", mysql=url)
    while not stop:
        try:
            lock.status()
        except Exception as e:
            print("churn", e, file=sys.stderr)
for k in range(3):
    threading.Thread(target=churn, args=(k,), daemon=True).start()
time.sleep(0.5)
hung = []
for i in range(forks):
    pid = os.fork()
    if pid == 0:
        try:
            onlyone.Lock(f"afinal-child{os.getpid()}", mysql=url).acquire(timeout=2).release()
            os._exit(0)
        except Exception as e:
            print("child", e, file=sys.stderr)
            os._exit(2)
    deadline = time.monotonic() + 10
    while True:
        p, status = os.waitpid(pid, os.WNOHANG)
        if p:
            if status:
                hung.append((i, f"status {status}"))
            break
        if time.monotonic() > deadline:
            if os.environ.get("AFINAL_GDB"):
                open(f"/tmp/afinal-bufpool-{pid}.txt", "w").write(subprocess.run(
                    ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                    capture_output=True, text=True).stdout)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            hung.append((i, "hung"))
            break
        time.sleep(0.01)
stop = True
print("forks", forks, "hung", hung)
sys.exit(1 if hung else 0)
