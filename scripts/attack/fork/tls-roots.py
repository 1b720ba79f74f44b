# Tries: a fresh process whose thread makes its first PostgreSQL acquisition
# with sslrootcert=system (the platform's CAs read once per process, under a
# OnceLock) while the main thread forks; the child then acquires the same
# way and must come back (with an error: nothing listens) within seconds.
import os, sys, threading, time, random
import onlyone
URL = "postgres://root@127.0.0.1:1/test?sslrootcert=system&connect_timeout=1"
def attempt():
    try:
        onlyone.Lock("t", postgres=URL).acquire(timeout=0)
    except Exception as e:
        return type(e).__name__
delay = float(sys.argv[1])
t = threading.Thread(target=attempt)
t.start()
time.sleep(delay)
pid = os.fork()
if pid == 0:
    attempt()
    os._exit(0)
deadline = time.monotonic() + 8
while time.monotonic() < deadline:
    p, st = os.waitpid(pid, os.WNOHANG)
    if p:
        print("ok"); sys.exit(0)
    time.sleep(0.02)
if os.environ.get("GDB"):
    import subprocess; print(subprocess.run(["gdb","-p",str(pid),"-batch","-ex","thread apply all bt"],capture_output=True,text=True).stdout)
os.kill(pid, 9); os.waitpid(pid, 0)
print("HUNG"); sys.exit(1)
