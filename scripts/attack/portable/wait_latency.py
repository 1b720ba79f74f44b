#!/usr/bin/env python3
# How soon `wait` returns after the holder lets go: by exiting (its command
# ends), by SIGKILL of the supervisor alone (its guardian then kills the
# command), and by SIGKILL of supervisor and command at once. ROUNDS each;
# prints median and max in ms, and how many waits returned while the lock
# was still held (the holder SIGSTOPped 300 ms first: a stopped holder must
# not look free).
#   scripts/attack/portable/wait_latency.py BINARY [ROUNDS]
import os, signal, subprocess, sys, tempfile, time
b = sys.argv[1]; rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
root = tempfile.mkdtemp(prefix="a11-wait-"); d = os.path.join(root, "locks")

def children(pid):
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        out += [int(x) for x in open(f"/proc/{pid}/task/{t}/children").read().split()]
    return out

for how in ["exit", "kill-supervisor", "kill-all", "stop-then-exit"]:
    times, early = [], 0
    for i in range(rounds):
        h = subprocess.Popen([b, "run", "--dir", d, "--name", "job", "--", "sh", "-c", "echo ready; read x; exit 0"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        h.stdout.readline()
        w = subprocess.Popen([b, "wait", "--dir", d, "--timeout", "20s", "job"], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        if how == "stop-then-exit":
            h.send_signal(signal.SIGSTOP); time.sleep(0.3)
            early += w.poll() is not None
            h.send_signal(signal.SIGCONT)
        t = time.monotonic()
        if how in ("exit", "stop-then-exit"):
            h.stdin.write(b"\n"); h.stdin.flush()
        elif how == "kill-supervisor":
            h.kill()
        else:
            for c in children(h.pid):
                os.kill(c, signal.SIGKILL)
            h.kill()
        w.wait()
        times.append((time.monotonic() - t) * 1000)
        h.wait()
        time.sleep(0.1)
    times.sort()
    print(f"{how}: wait returned after median {times[len(times)//2]:.1f} ms, max {times[-1]:.1f} ms; returned while held: {early}")
