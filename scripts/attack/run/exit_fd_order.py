#!/usr/bin/env python3
"""The kernel alone: a SIGKILLed process frees flocks highest fd first.
usage: exit_fd_order.py FDS_BETWEEN TRIALS  (A at a low fd, B above FDS_BETWEEN files;
counts how often B is free while A is still held once the holder is killed)"""
import tempfile
import fcntl, os, signal, sys, time, resource
h=resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
D = tempfile.mkdtemp()
A, B = os.path.join(D, "A"), os.path.join(D, "B")
n = int(sys.argv[1])
res = {"B-first-A-held": 0, "both-free": 0}
for trial in range(int(sys.argv[2])):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        a = os.open(A, os.O_RDWR | os.O_CREAT); fcntl.flock(a, fcntl.LOCK_EX)   # low fd
        fill = [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]           # fds between
        b = os.open(B, os.O_RDWR | os.O_CREAT); fcntl.flock(b, fcntl.LOCK_EX)   # high fd
        os.write(w, b"x"); time.sleep(100); os._exit(0)
    os.read(r, 1); os.close(r); os.close(w)
    fa = os.open(A, os.O_RDWR); fb = os.open(B, os.O_RDWR)
    os.kill(pid, signal.SIGKILL)
    while True:
        try: fcntl.flock(fb, fcntl.LOCK_EX | fcntl.LOCK_NB); break
        except BlockingIOError: pass
    try: fcntl.flock(fa, fcntl.LOCK_EX | fcntl.LOCK_NB); res["both-free"] += 1
    except BlockingIOError: res["B-first-A-held"] += 1
    os.close(fa); os.close(fb); os.waitpid(pid, 0)
print("fds between", n, res)
import shutil; shutil.rmtree(D)
