#!/usr/bin/env python3
"""Signals to `onlyone run` at random moments (before, during and after the
command's start, and as it exits): after onlyone exits, nothing of the
command may still hold the witness, and the exit code must be the
command's or 128+N.
Usage: signal_storm.py ONLYONE_BINARY [ROUNDS]"""
import fcntl, os, random, signal, subprocess, sys, tempfile, time, collections

binary = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 200
top = tempfile.mkdtemp()
witness = os.path.join(top, "witness")
open(witness, "w").close()
codes = collections.Counter()
bad = []
scripts = {
    "sleep": 'exec 9>>"$W"; flock -n 9 || exit 99; exec sleep 5',
    "quick": 'exec 9>>"$W"; flock -n 9 || exit 99; exit 3',
    "trap": 'exec 9>>"$W"; flock -n 9 || exit 99; trap "" TERM INT HUP; sleep 0.05; exit 4',
    "forky": 'exec 9>>"$W"; flock -n 9 || exit 99; for i in 1 2 3 4 5 6 7 8; do (true) & done; sleep 0.02 & (sleep 3 &) ; wait; exit 5',
}
for i in range(rounds):
    kind = random.choice(list(scripts))
    sig = random.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
    delay = random.choice([0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05])
    storm = random.random() < 0.3
    env = dict(os.environ, W=witness, ONLYONE_DIR=os.path.join(top, "locks"))
    p = subprocess.Popen([binary, "run", "--name", "s", "--kill-grace", "1s", "--", "sh", "-c", scripts[kind]],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(delay)
    try:
        p.send_signal(sig)
        if storm:
            for _ in range(50):
                p.send_signal(random.choice([signal.SIGTERM, signal.SIGCHLD, signal.SIGCONT, signal.SIGHUP]))
    except ProcessLookupError:
        pass
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        bad.append((i, kind, sig, delay, "HANG"))
        p.kill(); p.communicate()
        continue
    code = p.returncode
    # After onlyone exits, nobody may hold the witness.
    with open(witness) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
        except BlockingIOError:
            bad.append((i, kind, sig, delay, "witness still held after exit", code))
    codes[(kind, code)] += 1
    if code == 99 or (code not in (3, 4, 5, 0) and code != 128 + sig and code not in (128+signal.SIGTERM, 128+signal.SIGHUP, 128+signal.SIGINT, 128+signal.SIGQUIT) and code != -sig):
        bad.append((i, kind, sig, delay, storm, "code", code, err.decode()[-300:]))
print(sorted(codes.items()))
for b in bad:
    print("BAD", b)
