# E16: Ctrl-C while `with lock:` (one try) sits in a PostgreSQL lock-delay
# after an unclean loss. README: "Ctrl-C ends it within 50 ms" (for a wait).
import os, sys, time, signal, subprocess, threading, onlyone
ONLYONE = os.environ.get("ONLYONE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../target/debug/onlyone")
url = sys.argv[1]; name = f"e16-{os.getpid()}"
holder = subprocess.Popen([ONLYONE, "run", "--postgres", url, "--name", name, "--", "sleep", "60"])
while not onlyone.status(name, postgres=url).held:
    time.sleep(0.02)
holder.kill(); holder.wait()            # SIGKILL: an unclean end
while onlyone.status(name, postgres=url).held:
    time.sleep(0.02)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
t0 = time.monotonic()
try:
    with onlyone.Lock(name, postgres=url) as held:
        print(f"entered after {time.monotonic()-t0:.1f} s (Ctrl-C at 0.5 s not seen)")
        time.sleep(0.2)
except KeyboardInterrupt:
    print(f"KeyboardInterrupt after {time.monotonic()-t0:.1f} s (Ctrl-C sent at 0.5 s)")
