"""A worker forked by a short-lived thread while the lock is held dies with
that thread (PR_SET_PDEATHSIG fires on the forking thread's exit), though
the holder process is alive. Usage: python e23_pdeathsig_thread.py DIR"""
import os, sys, threading, time
import onlyone

held = onlyone.Lock("e23", sys.argv[1]).acquire()
r, w = os.pipe()
pids = []
def spawn():
    pid = os.fork()
    if pid == 0:
        os.close(r)
        time.sleep(3)
        os.write(w, b"done\n")
        os._exit(0)
    pids.append(pid)
t = threading.Thread(target=spawn)
t.start(); t.join()
os.close(w)
_, status = os.waitpid(pids[0], 0)
out = os.read(r, 100)
print("worker", "finished" if out else f"killed: {os.waitstatus_to_exitcode(status)}")
