#!/usr/bin/env python3
# A pool of --max 3: 30 starters at once (half --timeout 10s), ROUNDS times, while
# a thread deletes the slots' lock files (not their socket files) every
# 10 ms. Each command logs its start and end; prints the most commands
# seen running at once (3 at most) and the exit codes.
#   scripts/attack/portable/pool_storm.py BINARY [ROUNDS]
import os, subprocess, sys, tempfile, threading, time
b = sys.argv[1]; rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
root = tempfile.mkdtemp(prefix="a11-pool-"); d = os.path.join(root, "locks"); log = os.path.join(root, "log")
stop = False
def deleter():
    while not stop:
        try:
            for n in os.listdir(d):
                if n.endswith(".lock"):
                    os.unlink(os.path.join(d, n))
        except OSError:
            pass
        time.sleep(0.01)
t = threading.Thread(target=deleter); t.start()
codes = {}
script = f'echo "$(date +%s.%N) +1" >> {log}; sleep 0.2; echo "$(date +%s.%N) -1" >> {log}'
for r in range(rounds):
    ps = [subprocess.Popen([b, "run", "--dir", d, "--name", "pool", "--max", "3"] + (["--timeout", "10s"] if i % 2 else []) +
                           ["--", "sh", "-c", script], stderr=subprocess.DEVNULL) for i in range(30)]
    for p in ps:
        c = p.wait(); codes[c] = codes.get(c, 0) + 1
stop = True; t.join()
events = sorted((float(a), int(b)) for a, b in (l.split() for l in open(log)))
cur = peak = 0
for _, delta in events:
    cur += delta; peak = max(peak, cur)
print(f"{rounds} rounds of 30 starters on --max 3 with slot lock files deleted every 10 ms: most at once {peak}; exit codes {codes}")
