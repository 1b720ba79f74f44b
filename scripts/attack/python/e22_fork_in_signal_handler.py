"""A SIGALRM handler that forks while the main thread is inside a fork's
parent-side wait (child slow to close the lock's descriptors) deadlocks:
_fork_lock is a non-reentrant lock taken by the same thread.
Usage: python e22_fork_in_signal_handler.py DIR  -> prints 'ok' or hangs."""
import os, signal, sys, time
# A hook registered before onlyone's runs first in the child: it keeps the
# child from closing the lock's descriptors for 1 s.
os.register_at_fork(after_in_child=lambda: time.sleep(1))
import onlyone

held = onlyone.Lock("e22", sys.argv[1]).acquire()

def on_alarm(*_):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.3)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("ok", flush=True)
