# E7: a wait on a file lock for longer than a few seconds: threads and
# descriptors of this process while it waits (the holder: the command, for
# HOLD seconds). Run with a low `ulimit -n` to see the end sooner.
import os, sys, time, subprocess, tempfile, threading, onlyone
ONLYONE = os.environ.get("ONLYONE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../target/debug/onlyone")
hold = float(sys.argv[1]) if len(sys.argv) > 1 else 15
d = tempfile.mkdtemp(); name = "e7"
holder = subprocess.Popen([ONLYONE, "run", "--dir", d, "--name", name, "--", "sleep", str(hold)])
time.sleep(0.5)
def sample():
    while True:
        fds = len(os.listdir("/proc/self/fd"))
        threads = len(os.listdir("/proc/self/task"))
        print(f"t={time.monotonic()-t0:5.1f}s fds={fds} threads={threads}", flush=True)
        time.sleep(2)
t0 = time.monotonic()
threading.Thread(target=sample, daemon=True).start()
try:
    held = onlyone.Lock(name, dir=d).acquire()      # wait without limit
    print(f"got it after {time.monotonic()-t0:.1f} s, token {held.token}")
except Exception as err:
    print(f"FAILED after {time.monotonic()-t0:.1f} s: {type(err).__name__}: {err}")
holder.kill(); holder.wait()
