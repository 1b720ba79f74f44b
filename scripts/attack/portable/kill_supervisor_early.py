#!/usr/bin/env python3
# SIGKILLs the supervisor at a random moment in its first 30 ms (before,
# during and after it locks, binds its socket, forks its guardian and its
# command), ROUNDS times; the command holds a witness flock for 30 s. Counts
# commands left running 1 s later (no guardian killed them), and whether a
# start then ran beside such a command.
#   scripts/attack/portable/kill_supervisor_early.py BINARY [ROUNDS]
import os, random, subprocess, sys, tempfile, time
b = sys.argv[1]; rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 40
root = tempfile.mkdtemp(prefix="a11-kill-"); d = os.path.join(root, "locks"); w = os.path.join(root, "w")
left = beside = 0
for i in range(rounds):
    p = subprocess.Popen([b, "run", "--dir", d, "--name", "job", "--", "flock", "-n", "-E", "99", w, "sleep", "30"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.uniform(0, 0.03))
    p.kill(); p.wait()
    time.sleep(1)
    if subprocess.run(["flock", "-n", w, "true"]).returncode != 0:
        left += 1
        s = subprocess.run([b, "run", "--dir", d, "--name", "job", "--", "flock", "-n", "-E", "99", w, "true"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        beside += s.returncode in (0, 99)
        subprocess.run(["fuser", "-k", "-KILL", w], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"{rounds} supervisors killed early: commands left running 1 s later: {left}; starts that ran beside one: {beside}")
